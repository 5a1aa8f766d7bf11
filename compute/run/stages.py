"""The declared stages of a run, in order: the one list the pipeline runs, the CLI's and the
dashboard's progress number ("stage i of N"), and ``docs/stages.md`` describes.

Each stage reads the results of the stages it ``needs`` and produces one value; resumable stages are
saved when finished (``compute.run.stage_store``) so ``--resume`` skips them. No torch here: the
dashboard reads this list.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Stage:
    name: str
    needs: tuple[str, ...]
    produces: str
    resumable: bool = True  # saved when finished, so --resume skips it


STAGES: tuple[Stage, ...] = (
    Stage("train", (), "trained weights and the per-epoch, per-class training trace (train_trace, epochs); "
          "each epoch is also saved, so a killed run loses one epoch at most"),
    Stage("evaluate", ("train",), "loss and accuracy on the training set and the test split (runs)"),
    Stage("statistics", ("train",), "per-unit, per-class activation and gradient statistics on the evaluation set, "
          "then firing thresholds and subset specialization (a second pass) (units, unit_classes)"),
    Stage("ablation", ("train",), "single-unit zero-ablation deltas, overall and per class (units, unit_classes)"),
    Stage("curves", ("statistics", "ablation"), "cumulative ablation curves and their areas (ablation_curves, "
          "ablation_auc)"),
    Stage("class_curves", ("statistics", "ablation", "curves"), "per class, units removed in the order of their "
          "importance for that class: that class's accuracy against the others' (class_curves, class_removal); masks "
          "the curves evaluated are not evaluated again"),
    Stage("images", ("train",), "visual evidence per unit as PNG rows (unit_images)"),
    Stage("publish", ("train", "evaluate", "statistics", "ablation", "curves", "class_curves", "images"),
          "every table, the checkpoint and the manifest, renamed into the warehouse at once", resumable=False),
)
STAGE_NAMES = tuple(s.name for s in STAGES)


def markdown() -> str:
    """docs/stages.md: the stage list as a table (``make docs`` writes it; a test checks it is current)."""
    lines = ["# The stages of a run", "",
             "Generated from `compute/run/stages.py` by `make docs`; do not edit by hand.", "",
             "A run executes these stages in order (`compute/run/pipeline.py`). Each resumable stage's result is "
             "saved under `<warehouse>/.staging/<run_id>.stages/` when it finishes, so `--resume` continues "
             "an interrupted run from the first unfinished stage. The dashboard's compute button shows "
             "\"stage i of N\" from this list.", "",
             "| # | stage | needs | produces | resumable |", "|---|---|---|---|---|"]
    for i, s in enumerate(STAGES, 1):
        lines.append(f"| {i} | `{s.name}` | {', '.join(f'`{n}`' for n in s.needs) or '-'} | {s.produces} | "
                     f"{'yes' if s.resumable else 'no'} |")
    return "\n".join(lines) + "\n"
