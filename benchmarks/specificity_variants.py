"""In which quantity should the specificity test measure removal? The loss saturates on confident examples
(a relabelled group classified at 98-100% loses almost nothing, whatever the unit does), the label's
log-odds does not: the measured comparison of docs/metrics.md (Specificity), on a planted benchmark's runs.

    NEURON_ATLAS_MNIST=../shared/data/mnist python benchmarks/specificity_variants.py --warehouse DIR

Per run (``compute.run.planted.check`` gives its true detectors and the specialization ranking's top 5),
every live unit of the target class is scanned on the class's evaluation examples with the project's scan
(``compute.measure.subsets.scan_units``) once per measured quantity, and tested with the project's test
(``specificity``, margin ``MARGIN``). Printed per quantity: the runs found (a top-5 true detector with
p < 0.01, as the benchmark counts it) with the found or tested unit and its p, per kind; and, over the live
units that are not true detectors and fire on at least 5 examples of the class with 5 other active ones,
the share with p < 0.01 and p < 0.05 (a calibrated test on units with nothing planted: about 1% and 5%,
less with the margin), per layer. ``benchmarks/specificity_null.py --change log-odds`` gives the
untrained networks' rates.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import warehouse  # noqa: E402
from compute.datasets.planted import KINDS  # noqa: E402
from compute.measure.firing import fit  # noqa: E402
from compute.measure.subsets import label_loss, scan_units, specificity  # noqa: E402
from compute.run.planted import ALPHA, check  # noqa: E402
from compute.run.whatif import load_run  # noqa: E402
from warehouse.layout import run_dir  # noqa: E402
from warehouse.planted import class_scores, read_results  # noqa: E402


def neg_log_odds(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Minus the label's log-odds, ``logsumexp(other logits) - logit_y`` (float64): the loss is
    ``softplus(this)``, so it rises where the loss rises but does not flatten on confident examples."""
    z = logits.double()
    other = z.scatter(1, y[:, None], float("-inf"))
    return other.logsumexp(1) - z.gather(1, y[:, None]).squeeze(1)


#: quantity name -> per-example function of (logits, labels) whose change on removal the test measures
CHANGES = {"loss": label_loss, "log-odds": neg_log_odds}


def run_pvalues(root: Path, run_id: str, cls: int) -> dict[str, dict[str, tuple[float, int, int]]]:
    """Per quantity, per live unit ``layer:unit`` of class ``cls``: (specificity p, firing n, other active n)."""
    scores = class_scores(warehouse.connect(root), run_id, cls)
    run = load_run(run_dir(root, run_id))
    data, model = run.data["eval"], run.engine.model
    probes = model.probe_modules()
    rules = fit(model, probes, data)
    sub = data.subset(np.flatnonzero(data.labels.numpy() == cls))
    labels = sub.labels.numpy()
    out: dict[str, dict[str, tuple[float, int, int]]] = {c: {} for c in CHANGES}
    for layer, rows in scores.groupby("layer", sort=False):
        units = rows["unit"].astype(int).tolist()
        for change, fn in CHANGES.items():
            scan = scan_units(model, probes[layer], units, sub, rules[layer].select(units), loss=fn)
            for i, u in enumerate(units):
                t = specificity(scan, i, labels, cls)
                out[change][f"{layer}:{u}"] = (t.p, t.n_fire, t.n_rest)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--warehouse", type=Path, required=True)
    args = ap.parse_args()
    torch.set_num_threads(1)
    started = time.perf_counter()
    found: dict[str, list[tuple[str, int, str]]] = {c: [] for c in CHANGES}
    others: dict[str, list[tuple[str, float]]] = {c: [] for c in CHANGES}
    for row in read_results(args.warehouse):
        kind, seed = row["kind"], int(row["seed"])
        report = check(args.warehouse, row["run_id"], kind, seed)
        ps = run_pvalues(args.warehouse, row["run_id"], KINDS[kind].target)
        truth = {d.name for d in report.detectors}
        line = [f"{row['run_id']}: {report.status} ({report.tested_unit or '-'})"]
        for change in CHANGES:
            tested = [u.name for u in report.top if u.detector]
            passing = [n for n in tested if ps[change][n][0] < ALPHA]
            status = "found" if passing else "not specific" if tested else "missed" if truth else "not isolated"
            unit = (passing or tested or ["-"])[0]
            found[change].append((kind, bool(passing), status))
            line.append(f"{change}: {status} {unit} p={ps[change][unit][0]:.2g}" if unit != "-" else
                        f"{change}: {status}")
            others[change] += [(n.split(":")[0], p) for n, (p, nf, nr) in ps[change].items()
                               if n not in truth and nf >= 5 and nr >= 5]
        print("; ".join(line), flush=True)
    print(f"\n{len(found['loss'])} runs, {time.perf_counter() - started:.0f} s at load {os.getloadavg()[0]:.1f}")
    kinds = list(dict.fromkeys(k for k, _, _ in found["loss"]))
    for change in CHANGES:
        per_kind = ", ".join(f"{k} {sum(f for kk, f, _ in found[change] if kk == k)}/"
                             f"{sum(1 for kk, _, _ in found[change] if kk == k)}" for k in kinds)
        lay = np.array([la for la, _ in others[change]])
        p = np.array([p for _, p in others[change]])
        print(f"  {change:<9} found {sum(f for _, f, _ in found[change])}/{len(found[change])} ({per_kind}); "
              f"non-detectors ({len(p)}): p < .01 {np.mean(p < 0.01):.1%}, p < .05 {np.mean(p < 0.05):.1%}; "
              "p < .01 per layer: " + ", ".join(f"{la} {np.mean(p[lay == la] < 0.01):.1%} of {int((lay == la).sum())}"
                                                for la in dict.fromkeys(lay)))


if __name__ == "__main__":
    main()
