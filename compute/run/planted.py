"""The planted-subgroup benchmark: train on digits with a planted subgroup, publish, and check that
the tool's class ranking finds the units that carry it (``python -m compute experiment planted``;
``experiment crossed-sevens`` is its crossed-sevens kind on one seed).

The datasets (``compute.datasets.planted``) mark some *source* digits and relabel them *target*
(crossed 1s -> 7, corner-marked 3s -> 8, thick 2s -> 5) and mark half of the targets. The check reads
the published run like a user would. A live unit is a **true detector** of the planted subgroup when,
on the evaluation set's target-class examples,

- it fires (``compute.measure.firing``) on at least ``MIN_FIRING`` of them, of which at least
  ``MIN_SHARE`` carry the mark (marked targets or relabelled sources),
- it fires on at least ``MIN_COVER`` of the relabelled group, and
- removing it *hurts* the relabelled group: raises its mean loss (``UnitCheck.hurts_relabelled``), and
  more than the rest of the label's (Welch's t-test on the per-example loss changes, p < ``ALPHA``).
  Both are needed: a unit whose removal lowers the relabelled group's loss can pass Welch when it
  lowers the rest of the label's even more (corner-mark seed 4: conv2:3, fc2:24).

Each ranking of the target class's live units (the tool's ``specialization``, the old ``anomaly``,
and the baselines: class selectivity, mean activation, Taylor, |ablation loss|, random) is scored by
the rank of its best true detector, precision@5 and recall@10. The planted subgroup is **found**
when a true detector among the top ``TOP_RANK`` of the specialization ranking passes the tool's
specificity test (``compute.measure.subsets.specificity``, p < ``ALPHA``; the best-ranked one that
does is the found unit); **not specific** when true detectors are in the top ``TOP_RANK`` but none
passes; a **miss** when none is in the top ``TOP_RANK``; a run with no true detector at all is **not
isolated** (LeNet-5 has no unit for it), counted apart from a miss.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from compute.datasets.planted import KINDS, Kind
from compute.errors import ConfigError
from compute.measure.firing import fit
from compute.measure.subsets import ExampleScan, SubsetEffect, hurts_more, scan_units, specificity
from compute.run.config import RunConfig, RunSummary
from compute.run.whatif import load_run
from warehouse.layout import run_dir

TOP_RANK = 5
MIN_SHARE = 0.8
MIN_COVER = 0.2
MIN_FIRING = 5
ALPHA = 0.01
EXPERIMENT = "planted"
#: ranking name -> column of ``warehouse.planted.class_scores`` (None: a seeded random order)
RANKINGS: dict[str, str | None] = {
    "specialization": "specialization", "anomaly (old)": "anomaly", "selectivity": "class_selectivity",
    "mean activation": "mean_rect", "taylor": "taylor", "|ablation loss|": "abl_loss_abs", "random": None}
#: The real MNIST test set beside the checkout (10,000 images), when present; $NEURON_ATLAS_MNIST overrides.
SHARED_MNIST = Path(os.environ.get("NEURON_ATLAS_MNIST",
                                   Path(__file__).resolve().parents[2].parent / "shared" / "data" / "mnist"))


def kind_named(name: str) -> Kind:
    if name not in KINDS:
        raise ConfigError(f"unknown planted kind {name!r}; choose from {', '.join(KINDS)}.")
    return KINDS[name]


def default_config(kind: str = "crossed-sevens", seed: int = 0, epochs: int = 12, eval_size: int | None = None,
                   eval_dir: Path | None = None) -> RunConfig:
    """LeNet-5 trained on the kind's mnist-5k; evaluated on the same kind of the real MNIST test set when
    it is found (``eval_dir``, default ``SHARED_MNIST``), else on mnist-5k's test split."""
    k = kind_named(kind)
    d = eval_dir if eval_dir is not None else SHARED_MNIST
    eval_spec = f"{k.prefix}idx:{d}" if (d / "t10k-images-idx3-ubyte.gz").exists() else None
    return RunConfig(model="lenet5", dataset=f"{k.prefix}mnist-5k", epochs=epochs, seed=seed,
                     eval_dataset=eval_spec, eval_size=eval_size, run_id=f"{kind}-s{seed}",
                     experiment=EXPERIMENT, images=None)


@dataclass
class UnitCheck:
    """One live unit against the planted groups, on the target class's evaluation examples."""

    layer: str
    unit: int
    n_fire: int  # target-class examples it fires on
    share_marked: float  # of those, the fraction carrying the mark
    cover: float  # fraction of the relabelled group it fires on
    effect: dict[str, SubsetEffect]  # per group, removal effect
    relabelled: str  # the relabelled group (a key of ``effect``)
    p_relabelled_vs_rest: float  # Welch: removal raises the relabelled group's loss more than the rest of the label's

    @property
    def name(self) -> str:
        return f"{self.layer}:{self.unit}"

    @property
    def hurts_relabelled(self) -> bool:
        """Removal raises the relabelled group's mean loss (False when the group is empty)."""
        return bool(self.effect[self.relabelled].loss_delta > 0)

    @property
    def detector(self) -> bool:
        return (self.n_fire >= MIN_FIRING and self.share_marked >= MIN_SHARE and self.cover >= MIN_COVER
                and self.hurts_relabelled and self.p_relabelled_vs_rest < ALPHA)

    @staticmethod
    def of(scan: ExampleScan, row: int, layer: str, kind: Kind, groups: np.ndarray) -> UnitCheck:
        """Row ``row`` of a ``scan`` of target-class examples, whose planted groups are ``groups``."""
        members = {g: groups == g for g in kind.groups}
        marked, rel = members[kind.marked_target] | members[kind.relabelled], members[kind.relabelled]
        f = scan.fires[row]
        n = int(f.sum())
        return UnitCheck(layer, scan.units[row], n, float(marked[f].mean()) if n else float("nan"),
                         float(f[rel].mean()) if rel.any() else float("nan"),
                         {g: SubsetEffect.of(scan, row, m) for g, m in members.items()}, kind.relabelled,
                         hurts_more(scan, row, rel, ~rel))


@dataclass
class Ranking:
    name: str
    best_rank: int | None  # rank of the best true detector (1 = top); None when there is none
    precision5: float
    recall10: float
    top: list[str]
    # a true detector in its top TOP_RANK passes the tool's specificity test (p < ALPHA), as "found" asks
    # of the specialization ranking; None until ``check`` has tested them
    found: bool | None = None


@dataclass
class PlantedReport:
    kind: str
    seed: int
    run_id: str
    group_sizes: dict[str, int]
    group_accuracy: dict[str, float]
    n_live: int
    detectors: list[UnitCheck]
    top: list[UnitCheck]  # the specialization ranking's top TOP_RANK units
    rankings: dict[str, Ranking]
    specificity_p: float | None = None  # the tool's specificity test of the found unit (else of the best-ranked
    found_unit: str | None = None  # top-TOP_RANK true detector, which is then ``tested_unit``)
    tested_unit: str | None = None
    notes: list[str] = field(default_factory=list)
    detector_p: dict[str, float] = field(default_factory=dict)  # the specificity test's p of every true detector

    @property
    def status(self) -> str:
        if not self.detectors:
            return "not isolated"
        if self.found_unit:
            return "found"
        return "not specific" if self.tested_unit else "missed"

    @property
    def found(self) -> bool:
        return self.status == "found"

    def lines(self) -> list[str]:
        """The report as text lines (the command prints them)."""
        k = KINDS[self.kind]
        out = [f"run {self.run_id}: class-{k.target} evaluation examples by group " + ", ".join(
            f"{g} {self.group_sizes[g]} (accuracy {self.group_accuracy[g]:.3f})" for g in k.groups),
            f"{len(self.detectors)} of {self.n_live} live units are true detectors of '{k.relabelled}'"
            + (f": {', '.join(d.name for d in self.detectors[:12])}{' ...' if len(self.detectors) > 12 else ''}"
               if self.detectors else "")]
        out.append(f"top {len(self.top)} of the class-{k.target} specialization ranking:")
        for i, u in enumerate(self.top, 1):
            eff = "; ".join(f"{g}: loss {u.effect[g].loss_delta:+.4f}" for g in k.groups)
            out.append(f"  #{i} {u.name} fires on {u.n_fire} {k.target}s, {u.share_marked:.0%} marked, on "
                       f"{u.cover:.0%} of '{k.relabelled}'; removal: {eff}; raises the relabelled loss: "
                       f"{'yes' if u.hurts_relabelled else 'no'}; p(raises it more than the rest of the label) = "
                       f"{u.p_relabelled_vs_rest:.2g}{'  <- true detector' if u.detector else ''}")
        for r in self.rankings.values():
            out.append(f"  {r.name:<16} best detector rank {r.best_rank if r.best_rank else '-':>4}, "
                       f"precision@5 {r.precision5:.2f}, recall@10 {r.recall10:.2f}; top 5: {', '.join(r.top)}")
        out += self.notes
        if self.status == "found":
            out.append(f"FOUND: {self.found_unit} (specificity test p = {self.specificity_p:.2g})")
        elif self.status == "not specific":
            out.append(f"NOT SPECIFIC: true detectors are in the top {TOP_RANK} but fail the specificity test "
                       f"({self.tested_unit}: p = {self.specificity_p:.2g})")
        elif self.status == "missed":
            out.append(f"MISSED: true detectors exist but none is in the top {TOP_RANK}")
        else:
            out.append("NOT ISOLATED: no unit of the run is a true detector")
        return out

    def row(self) -> dict[str, object]:
        """One row of the results table."""
        row: dict[str, object] = {"kind": self.kind, "seed": self.seed, "run_id": self.run_id, "status": self.status,
                                  "n_detectors": len(self.detectors), "n_live": self.n_live,
                                  "found_unit": self.found_unit or "", "tested_unit": self.tested_unit or "",
                                  "specificity_p": self.specificity_p}
        for r in self.rankings.values():
            key = r.name.split(" ")[0].strip("|")
            row.update({f"{key}_best_rank": r.best_rank or "", f"{key}_p5": round(r.precision5, 3),
                        f"{key}_r10": round(r.recall10, 3), f"{key}_found": r.found})
        return row

    def to_dict(self) -> dict:
        return asdict(self)


def _order(scores: pd.DataFrame, column: str | None, seed: int) -> np.ndarray:
    """Row order of a ranking: descending score, NaN last, ties by layer then unit."""
    if column is None:
        return np.random.default_rng(seed).permutation(len(scores))
    key = scores[column].to_numpy(dtype=np.float64)
    # lexsort's last key is primary: NaN last, then descending score, then layer, then unit.
    return np.lexsort((scores["unit"].to_numpy(), scores["layer_index"].to_numpy(), -np.nan_to_num(key, nan=0.0),
                       np.isnan(key)))


def _ranking(name: str, order: np.ndarray, names: list[str], detector: np.ndarray) -> Ranking:
    hits = detector[order]
    ranks = np.flatnonzero(hits) + 1
    n = int(detector.sum())
    return Ranking(name, int(ranks[0]) if len(ranks) else None, float(hits[:TOP_RANK].mean()),
                   float(hits[:10].sum() / n) if n else float("nan"), [names[i] for i in order[:TOP_RANK]])


def check(root: Path, run_id: str, kind: str, seed: int = 0) -> PlantedReport:
    """Read the published run ``run_id`` (of planted ``kind``) and check its rankings against the plant."""
    import warehouse
    from warehouse.planted import class_scores

    k = kind_named(kind)
    scores = class_scores(warehouse.connect(root), run_id, k.target)
    key = scores["specialization"].to_numpy(dtype=np.float64)
    run = load_run(run_dir(root, run_id))
    data = run.data["eval"]
    if data.groups is None:
        raise ConfigError(f"run {run_id} was not computed on a planted dataset: it has no planted groups.")
    labels = data.labels.numpy()
    sub = data.subset(np.flatnonzero(labels == k.target))
    members = {g: sub.groups == g for g in k.groups}
    model = run.engine.model
    probes = model.probe_modules()
    rules = fit(model, probes, data)  # as the statistics stage fit them: units.fire_threshold is their threshold
    checks: list[UnitCheck] = []
    base_hit = np.zeros(0, bool)
    for layer, rows in scores.groupby("layer", sort=False):
        units = rows["unit"].astype(int).tolist()
        scan = scan_units(model, probes[layer], units, sub, rules[layer].select(units))
        base_hit = scan.base_hit
        checks += [UnitCheck.of(scan, i, layer, k, sub.groups) for i in range(len(units))]
    by_name = {c.name: c for c in checks}
    names = [f"{la}:{u}" for la, u in zip(scores["layer"], scores["unit"])]
    detector = np.array([by_name[n].detector for n in names], dtype=bool)
    rankings = {name: _ranking(name, _order(scores, col, seed), names, detector) for name, col in RANKINGS.items()}
    spec_order = _order(scores, "specialization", seed)
    top = [by_name[names[i]] for i in spec_order[:TOP_RANK] if not np.isnan(key[i])]
    report = PlantedReport(kind, seed, run_id, {g: int(m.sum()) for g, m in members.items()},
                           {g: float(base_hit[m].mean()) for g, m in members.items()}, len(scores),
                           [by_name[names[i]] for i in spec_order if detector[i]], top, rankings)
    for layer in dict.fromkeys(d.layer for d in report.detectors):  # one scan of the whole set per layer
        units = [d.unit for d in report.detectors if d.layer == layer]
        scan = scan_units(model, probes[layer], units, data, rules[layer].select(units))
        report.detector_p.update({f"{layer}:{u}": specificity(scan, i, labels, k.target).p for i, u in enumerate(units)})
    for u in (u for u in top if u.detector):
        p = report.detector_p[u.name]
        if report.tested_unit is None or p < ALPHA:
            report.tested_unit, report.specificity_p = u.name, p
        if p < ALPHA:
            report.found_unit = u.name
            break
    for r in rankings.values():  # the baselines judged as the specialization ranking is
        r.found = any(report.detector_p[n] < ALPHA for n in r.top if n in report.detector_p)
    return report


def run_experiment(root: Path, cfg: RunConfig, kind: str) -> tuple[RunSummary | None, PlantedReport]:
    """Compute and publish the run unless the warehouse already holds it, then check it."""
    from compute.run.pipeline import compute_run
    from warehouse.validate import list_runs

    assert cfg.run_id is not None
    done = {r.run_id for r in list_runs(root) if r.ok}
    summary = None if cfg.run_id in done else compute_run(cfg, root)
    return summary, check(root, cfg.run_id, kind, cfg.seed)


def table(reports: list[PlantedReport]) -> list[str]:
    """The benchmark's summary: per kind, how often each ranking puts a true detector in its top 5
    (over the seeds where one exists), mean precision@5 and recall@10, and how often the subgroup is found
    (a top-5 detector of the specialization ranking that passes the specificity test); per run, the status."""
    out = [f"{'kind':<15} {'seed':>4} {'status':<13} {'detectors':>9}  " + "  ".join(
        f"{n[:14]:>14}" for n in RANKINGS) + "   (best detector rank per ranking)"]
    for r in reports:
        out.append(f"{r.kind:<15} {r.seed:>4} {r.status:<13} {len(r.detectors):>9}  " + "  ".join(
            f"{(r.rankings[n].best_rank or '-')!s:>14}" for n in RANKINGS))
    out.append("")
    out.append(f"{'kind':<15} {'isolated':>8} {'found':>6}  " + "  ".join(f"{n[:14]:>14}" for n in RANKINGS)
               + "   (top-5 hits / isolated seeds; mean precision@5; mean recall@10)")
    found_rows = ["", f"{'kind':<15} {'isolated':>8}  " + "  ".join(f"{n[:14]:>14}" for n in RANKINGS)
                  + "   (found: a top-5 true detector passes the specificity test, p < 0.01)"]
    for kind in dict.fromkeys(r.kind for r in reports):
        rs = [r for r in reports if r.kind == kind and r.detectors]
        n_all = sum(1 for r in reports if r.kind == kind)
        cells = []
        for n in RANKINGS:
            hits = sum(1 for r in rs if r.rankings[n].best_rank and r.rankings[n].best_rank <= TOP_RANK)
            p5 = np.mean([r.rankings[n].precision5 for r in rs]) if rs else float("nan")
            r10 = np.mean([r.rankings[n].recall10 for r in rs]) if rs else float("nan")
            cells.append(f"{hits}/{len(rs)} {p5:.2f} {r10:.2f}")
        found = f"{sum(r.found for r in rs)}/{len(rs)}"
        out.append(f"{kind:<15} {len(rs)}/{n_all:<6} {found:>6}  " + "  ".join(f"{c:>14}" for c in cells))
        found_rows.append(f"{kind:<15} {len(rs):>8}  " + "  ".join(
            f"{f'{sum(bool(r.rankings[n].found) for r in rs)}/{len(rs)}':>14}" for n in RANKINGS))
    return out + found_rows
