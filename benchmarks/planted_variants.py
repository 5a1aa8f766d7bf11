"""Which subset-specialization score recovers planted subgroups best: the variant table of docs/metrics.md
(Subset specialization), measured on the published runs of a planted benchmark (benchmarks/planted.py).

    NEURON_ATLAS_MNIST=../shared/data/mnist python benchmarks/planted_variants.py --warehouse DIR

Per run, every live unit of the target class is checked against the plant as the benchmark does
(``compute.run.planted.check``: its true detectors), each variant ranks the same units, and the table
gives per variant the runs *found* (a true detector in its top 5 passes the specificity test, as the
benchmark counts it), the runs with a true detector in its top 5, mean precision@5 and mean recall@10,
over the runs that have a true detector, over all kinds and per kind. The powers of the chosen score were
picked on seeds 0-1 and checked on seeds 2-4: ``--seeds 0,1`` prints the choosing half alone. Every variant uses the same firing rule (``compute.measure.firing``),
the first-order removal effect ``e_n`` and the correctly classified examples of the class.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from compute.datasets.planted import KINDS  # noqa: E402
from compute.measure.firing import fit  # noqa: E402
from compute.nets.probe import Probe, units_of  # noqa: E402
from compute.run.planted import ALPHA, MIN_FIRING, TOP_RANK, PlantedReport, check  # noqa: E402
from compute.run.whatif import load_run  # noqa: E402
from warehouse.layout import run_dir  # noqa: E402
from warehouse.planted import read_results  # noqa: E402


def per_example(root: Path, run_id: str, cls: int) -> dict[str, dict[str, np.ndarray]]:
    """Per layer, over the class's correctly classified examples: e (N, U), fires (N, U); and frac_fire (U,)
    over all of the class's examples."""
    run = load_run(run_dir(root, run_id))
    data, model = run.data["eval"], run.engine.model
    probes = model.probe_modules()
    rules = fit(model, probes, data)
    sub = data.subset(np.flatnonzero(data.labels.numpy() == cls))
    out: dict[str, dict[str, list]] = {n: {"e": [], "fires": [], "ok": []} for n in probes}
    with Probe(probes) as probe:
        for start in range(0, len(sub), 500):
            x, y = sub.floats(start, start + 500), sub.labels[start:start + 500]
            logits = model(x)
            posts = [probe.post[n] for n in probes]
            grads = torch.autograd.grad(F.cross_entropy(logits, y, reduction="sum"), posts)
            for n, post, g in zip(probes, posts, grads):
                a = units_of(probes[n], post.detach())
                out[n]["e"].append((-units_of(probes[n], g) * a).sum(2).double().numpy())
                out[n]["fires"].append(rules[n].fires(rules[n].value(probes[n], post)).numpy())
                out[n]["ok"].append((logits.argmax(1) == y).numpy())
    res = {}
    for n, d in out.items():
        ok = np.concatenate(d["ok"])
        fires = np.concatenate(d["fires"])
        res[n] = {"e": np.concatenate(d["e"])[ok], "fires": fires[ok], "frac": fires.mean(0)}
    return res


def _share(e, f, frac):
    cost = np.clip(e, 0, None)
    return (cost * f).sum(0) / np.where(cost.sum(0) > 0, cost.sum(0), np.nan)


def _weighted(e, f, frac, cost_power, subset_power):
    """The share times ``(1 - frac_fire)^subset_power`` times the class's mean removal cost to ``cost_power``
    (the stored score divides that cost by the run's largest for the class, a constant that leaves the
    class's ranking as it is)."""
    return _share(e, f, frac) * (1 - frac) ** subset_power * np.clip(e, 0, None).mean(0) ** cost_power


def _median_fire(e, f, frac):
    return np.array([np.median(e[f[:, u], u]) if f[:, u].any() else np.nan for u in range(e.shape[1])])


VARIANTS = {
    "chosen (schema 5): share x (1 - frac_fire)^2 x (mean removal cost)^0.25":
        lambda e, f, frac: _weighted(e, f, frac, 0.25, 2),
    "schema 4: share x (1 - frac_fire)": lambda e, f, frac: _weighted(e, f, frac, 0.0, 1),
    "share x (1 - frac_fire) x (mean removal cost)^0.25": lambda e, f, frac: _weighted(e, f, frac, 0.25, 1),
    "share x (1 - frac_fire)^1.5 x (mean removal cost)^0.25": lambda e, f, frac: _weighted(e, f, frac, 0.25, 1.5),
    "share x (1 - frac_fire)^3 x (mean removal cost)^0.25": lambda e, f, frac: _weighted(e, f, frac, 0.25, 3),
    "share x (1 - frac_fire)^2 (no cost weight)": lambda e, f, frac: _weighted(e, f, frac, 0.0, 2),
    "share x (1 - frac_fire)^2 x (mean removal cost)^0.5": lambda e, f, frac: _weighted(e, f, frac, 0.5, 2),
    "share x (1 - frac_fire) x mean removal cost (power 1)": lambda e, f, frac: _weighted(e, f, frac, 1.0, 1),
    "the share alone": _share,
    "share - frac_fire (cost beyond the share of examples)": lambda e, f, frac: _share(e, f, frac) - frac,
    "schema 3: sum of e_n on the firing examples / correct examples x (1 - frac_fire)":
        lambda e, f, frac: (e * f).sum(0) / len(e) * (1 - frac),
    "median of e_n on the firing examples x (1 - frac_fire)": lambda e, f, frac: _median_fire(e, f, frac) * (1 - frac),
}
#: one variant result: (kind, a true detector in the top 5, precision@5, recall@10, rank of the best true
#: detector, found: a top-5 true detector passes the specificity test)
Result = tuple[str, bool, float, float, int, bool]


def variant_scores(root: Path, report: PlantedReport) -> dict[str, Result]:
    """Per variant, on the checked run ``report``: its ``Result``."""
    truth = {d.name for d in report.detectors}
    ex = per_example(root, report.run_id, KINDS[report.kind].target)
    out = {}
    for name, score in VARIANTS.items():
        units, values = [], []
        for layer, d in ex.items():
            s = score(d["e"], d["fires"], d["frac"])
            enough = d["fires"].sum(0) >= MIN_FIRING
            for u in range(len(s)):
                if enough[u] and np.isfinite(s[u]) and np.abs(d["e"][:, u]).sum() > 0:
                    units.append(f"{layer}:{u}")
                    values.append(s[u])
        order = [units[i] for i in np.argsort(-np.array(values), kind="stable")]
        hits = np.array([u in truth for u in order])
        found = any(report.detector_p[u] < ALPHA for u in order[:TOP_RANK] if u in truth)
        out[name] = (report.kind, bool(hits[:TOP_RANK].any()), float(hits[:TOP_RANK].mean()),
                     float(hits[:10].sum() / len(truth)), int(np.argmax(hits)) + 1, found)
    return out


def variant_table(per_run: list[dict[str, Result]]) -> list[str]:
    """The markdown table: per variant, over all runs and per kind (found; top-5 hits, precision@5, recall@10)."""
    kinds = list(dict.fromkeys(r[0] for run in per_run for r in run.values()))
    out = ["| score for (unit, class) | all: found; top-5 hits, precision@5, recall@10 | " + " | ".join(kinds) + " |",
           "|---" * (2 + len(kinds)) + "|"]
    for name in VARIANTS:
        rs = [run[name] for run in per_run]
        cells = [_cell(rs)] + [_cell([r for r in rs if r[0] == k]) for k in kinds]
        out.append(f"| {name} | " + " | ".join(cells) + " |")
    return out


def _cell(rs: list[Result]) -> str:
    return (f"{sum(r[5] for r in rs)}/{len(rs)}; {sum(r[1] for r in rs)}/{len(rs)}, {np.mean([r[2] for r in rs]):.2f}, "
            f"{np.mean([r[3] for r in rs]):.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--warehouse", type=Path, required=True)
    ap.add_argument("--seeds", help="only these seeds, e.g. 0,1 (default: every run of the warehouse)")
    args = ap.parse_args()
    seeds = None if args.seeds is None else {int(s) for s in args.seeds.split(",")}
    torch.set_num_threads(1)
    per_run = []
    for row in read_results(args.warehouse):
        if seeds is not None and int(row["seed"]) not in seeds:
            continue
        report = check(args.warehouse, row["run_id"], row["kind"], int(row["seed"]))
        if report.detectors:
            per_run.append(variant_scores(args.warehouse, report))
            print(f"{report.run_id}: {len(report.detectors)} true detectors; best detector rank per variant: "
                  + ", ".join(str(r[4]) for r in per_run[-1].values()), flush=True)
    print("\n".join(variant_table(per_run)))


if __name__ == "__main__":
    main()
