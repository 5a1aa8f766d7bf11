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
    Stage("statistics", ("train",), "per-unit, per-class activation and gradient statistics on the evaluation set "
          "(units, unit_classes)"),
    Stage("ablation", ("train",), "single-unit zero-ablation deltas, overall and per class (units, unit_classes)"),
    Stage("curves", ("statistics", "ablation"), "cumulative ablation curves and their areas (ablation_curves, "
          "ablation_auc)"),
    Stage("images", ("train",), "visual evidence per unit as PNG rows (unit_images)"),
    Stage("publish", tuple(n for n in ("train", "evaluate", "statistics", "ablation", "curves", "images")),
          "every table, the checkpoint and the manifest, renamed into the warehouse at once", resumable=False),
)
STAGE_NAMES = tuple(s.name for s in STAGES)
