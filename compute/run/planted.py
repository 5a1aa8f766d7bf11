"""The planted-ground-truth experiment: train on crossed sevens, publish, and check that the tool finds
the planted subgroup (``python -m compute experiment crossed-sevens``).

The dataset (``compute.datasets.crossed``) plants a crossbar through about half of the 7s and through
about a quarter of the 1s, which are relabelled 7. The check reads the published run like a user
would: the class-7 anomaly ranking from ``unit_classes``, then, on the evaluation set's class-7
examples and the run's checkpoint, which examples each top-ranked unit fires on and what removing it
does to each group. The tool *finds the planted subgroup* when a live unit among the top
``TOP_RANK`` of the ranking (all layers) fires on 7s of which at least ``MIN_SHARE`` carry the bar,
and removing it raises the loss of the crossed 1s more than that of the plain 7s (Welch's t-test,
p < ``ALPHA``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from compute.datasets import crossed
from compute.errors import ConfigError
from compute.measure.subsets import ExampleScan, SubsetEffect, hurts_more, scan_units
from compute.run.config import RunConfig, RunSummary
from compute.run.whatif import load_run
from warehouse.layout import run_dir

TOP_RANK = 5
MIN_SHARE = 0.8
ALPHA = 0.01
GROUPS = (crossed.CROSSED, crossed.PLAIN, crossed.CROSSED_ONE)
#: The real MNIST test set beside the checkout (10,000 images), when present.
SHARED_MNIST = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "mnist"


def default_config(seed: int = 0, epochs: int = 12, eval_size: int | None = None,
                   eval_dir: Path | None = None) -> RunConfig:
    """LeNet-5 trained on crossed mnist-5k; evaluated on the crossed real MNIST test set when it is
    found (``eval_dir``, default ``../shared/data/mnist``), else on mnist-5k's crossed test split."""
    d = eval_dir if eval_dir is not None else SHARED_MNIST
    eval_spec = f"{crossed.PREFIX}idx:{d}" if (d / "t10k-images-idx3-ubyte.gz").exists() else None
    return RunConfig(model="lenet5", dataset=f"{crossed.PREFIX}mnist-5k", epochs=epochs, seed=seed,
                     eval_dataset=eval_spec, eval_size=eval_size, run_id=f"crossed-sevens-s{seed}",
                     experiment="crossed-sevens", images=None)


@dataclass
class UnitFinding:
    """One unit of the class-7 anomaly ranking, checked against the planted groups."""

    rank: int  # 1 = highest class-7 anomaly of the run
    layer: str
    unit: int
    anomaly: float
    n_active_7: int  # class-7 evaluation examples it fires on
    share_crossed: float  # of those, the fraction with a crossbar (crossed 7 or crossed 1)
    share: dict[str, float]  # per group, fraction of the active 7s
    effect: dict[str, SubsetEffect]  # per group, removal effect
    p_crossed1_vs_plain: float
    p_crossed7_vs_plain: float

    @property
    def found(self) -> bool:
        return (self.rank <= TOP_RANK and self.share_crossed >= MIN_SHARE
                and self.p_crossed1_vs_plain < ALPHA)


@dataclass
class PlantedReport:
    run_id: str
    group_sizes: dict[str, int]
    group_accuracy: dict[str, float]
    ranking: list[UnitFinding]
    together_units: list[str] = field(default_factory=list)
    together: dict[str, SubsetEffect] = field(default_factory=dict)

    @property
    def found(self) -> UnitFinding | None:
        return next((u for u in self.ranking if u.found), None)

    def lines(self) -> list[str]:
        """The report as text lines (the command prints them)."""
        out = [f"run {self.run_id}: class-7 evaluation examples by group " + ", ".join(
            f"{g} {self.group_sizes[g]} (accuracy {self.group_accuracy[g]:.3f})" for g in GROUPS)]
        out.append(f"top {len(self.ranking)} units of the class-7 anomaly ranking:")
        for u in self.ranking:
            eff = "; ".join(f"{g}: loss {u.effect[g].loss_delta:+.4f}, acc {u.effect[g].acc_delta:+.3f}" for g in GROUPS)
            out.append(f"  #{u.rank} {u.layer}:{u.unit} anomaly {u.anomaly:.2f}, fires on {u.n_active_7} 7s, "
                       f"{u.share_crossed:.0%} crossed ({u.share[crossed.CROSSED]:.0%} crossed 7, "
                       f"{u.share[crossed.CROSSED_ONE]:.0%} crossed 1); removal: {eff}; "
                       f"p(crossed 1 hurt more than plain 7) = {u.p_crossed1_vs_plain:.2g}, "
                       f"p(crossed 7 hurt more than plain 7) = {u.p_crossed7_vs_plain:.2g}")
        if self.together_units:
            eff = "; ".join(f"{g}: loss {e.loss_delta:+.4f}, acc {e.acc_delta:+.3f}" for g, e in self.together.items())
            out.append(f"removing the crossbar units {', '.join(self.together_units)} together: {eff}")
        f = self.found
        out.append(f"FOUND: {f.layer}:{f.unit} (rank {f.rank})" if f else
                   f"NOT FOUND: no unit in the top {TOP_RANK} meets the criteria")
        return out

    def to_dict(self) -> dict:
        return asdict(self)


def _groups(groups: np.ndarray) -> dict[str, np.ndarray]:
    return {g: groups == g for g in GROUPS}


def check(root: Path, run_id: str, top: int = 10) -> PlantedReport:
    """Read the published run ``run_id`` and check it against the planted groups."""
    import warehouse

    con = warehouse.connect(root)
    ranking = con.execute(
        'SELECT layer, unit, anomaly FROM unit_classes WHERE run_id = ? AND "class" = ? AND anomaly IS NOT NULL '
        "ORDER BY anomaly DESC, layer, unit LIMIT ?", [run_id, crossed.SEVEN, top]).fetchall()
    run = load_run(run_dir(root, run_id))
    data = run.data["eval"]
    if data.groups is None:
        raise ConfigError(f"run {run_id} was not computed on a {crossed.PREFIX} dataset: it has no planted groups.")
    sevens = data.subset(np.flatnonzero(data.labels.numpy() == crossed.SEVEN))
    members = _groups(sevens.groups)
    model = run.engine.model
    probes = model.probe_modules()
    scans: dict[str, ExampleScan] = {}
    for layer in dict.fromkeys(r[0] for r in ranking):
        scans[layer] = scan_units(model, probes[layer], [int(r[1]) for r in ranking if r[0] == layer], sevens)
    findings = []
    base_hit = next(iter(scans.values())).base_hit if scans else np.zeros(0, bool)
    for rank, (layer, unit, anom) in enumerate(ranking, 1):
        scan = scans[layer]
        row = scan.units.index(int(unit))
        fires = scan.fires[row]
        bar = members[crossed.CROSSED] | members[crossed.CROSSED_ONE]
        n = int(fires.sum())
        findings.append(UnitFinding(
            rank, layer, int(unit), float(anom), n, float(bar[fires].mean()) if n else float("nan"),
            {g: float(m[fires].mean()) if n else float("nan") for g, m in members.items()},
            {g: SubsetEffect.of(scan, row, m) for g, m in members.items()},
            hurts_more(scan, row, members[crossed.CROSSED_ONE], members[crossed.PLAIN]),
            hurts_more(scan, row, members[crossed.CROSSED], members[crossed.PLAIN])))
    report = PlantedReport(run_id, {g: int(m.sum()) for g, m in members.items()},
                           {g: float(base_hit[m].mean()) for g, m in members.items()}, findings)
    detectors = [u for u in findings if u.share_crossed >= MIN_SHARE]
    by_layer: dict[str, list[int]] = {}
    for u in detectors:
        by_layer.setdefault(u.layer, []).append(u.unit)
    if by_layer:  # the layer with the most crossbar units, removed together
        layer, units = max(by_layer.items(), key=lambda kv: len(kv[1]))
        scan = scan_units(model, probes[layer], units, sevens, together=True)
        report.together_units = [f"{layer}:{u}" for u in units]
        report.together = {g: SubsetEffect.of(scan, 0, m) for g, m in members.items()}
    return report


def crossed_sevens(root: Path, cfg: RunConfig) -> tuple[RunSummary, PlantedReport]:
    """Compute and publish the run, then check it."""
    from compute.run.pipeline import compute_run

    summary = compute_run(cfg, root)
    return summary, check(root, summary.run_id)
