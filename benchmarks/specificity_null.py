"""Is the specificity test's null right? Its rejection rates on untrained LeNet-5s, where no unit knows a
part of a class: the calibration table of docs/metrics.md (Specificity).

    python benchmarks/specificity_null.py [--dataset mnist-5k] [--split test] [--digits 1000] [--inits 0,1,2]
    python benchmarks/specificity_null.py --dataset idx:../shared/data/mnist --split train --digits 8000 --inits 5
    python benchmarks/specificity_null.py --change log-odds     # removal measured in the label's log-odds

For every live (unit, class) with at least 5 firing and 5 other active examples, the share of p-values
below 0.01, 0.05 and 0.5 for the test (``compute.measure.subsets.specificity``, margin ``MARGIN``), the
same without the margin, and raw loss changes (firing vs other active, no per-activation scaling); then
the test's p < 0.01 share per layer. A calibrated test gives about 1%, 5% and 50% (less with the margin:
an untrained network is inside its null). Prints the load average beside the time.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import mannwhitneyu

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from compute.datasets.sources import load_dataset  # noqa: E402
from compute.measure.firing import fit  # noqa: E402
from compute.measure.subsets import MARGIN, scan_units, specificity  # noqa: E402
from compute.nets.models import ModelSpec, build_model  # noqa: E402
from specificity_variants import CHANGES  # noqa: E402


def pvalues(data, init: int, change: str = "loss") -> tuple[dict[str, list[float]], list[str]]:
    torch.manual_seed(init)
    model = build_model(ModelSpec("lenet5", data.shape, data.n_classes))
    probes = model.probe_modules()
    rules = fit(model, probes, data)
    labels = data.labels.numpy()
    out: dict[str, list[float]] = {"test": [], "no margin": [], "raw": []}
    layers: list[str] = []
    for name, probe in probes.items():
        scan = scan_units(model, probe, list(range(len(rules[name].threshold))), data, rules[name],
                          loss=CHANGES[change])
        for u in range(len(scan.units)):
            for c in range(data.n_classes):
                active = (labels == c) & (scan.mass[u] > 0)
                f, rest = active & scan.fires[u], active & ~scan.fires[u]
                if f.sum() < 5 or rest.sum() < 5:
                    continue
                per_mass = scan.loss_delta[u] / np.where(active, scan.mass[u], 1.0)
                out["test"].append(specificity(scan, u, labels, c).p)
                out["no margin"].append(mannwhitneyu(per_mass[f], per_mass[rest], alternative="greater").pvalue)
                out["raw"].append(mannwhitneyu(scan.loss_delta[u, f], scan.loss_delta[u, rest],
                                               alternative="greater").pvalue)
                layers.append(name)
    return out, layers


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="mnist-5k")
    ap.add_argument("--split", choices=("train", "test"), default="test")
    ap.add_argument("--digits", type=int, default=1000)
    ap.add_argument("--inits", default="0,1,2", help="torch seeds of the untrained networks")
    ap.add_argument("--change", choices=list(CHANGES), default="loss", help="what removal is measured in")
    args = ap.parse_args()
    torch.set_num_threads(1)
    splits = load_dataset(args.dataset)
    data = splits.train if args.split == "train" else splits.test
    data = data.subset(np.arange(min(args.digits, len(data))))
    started = time.perf_counter()
    p: dict[str, list[float]] = {"test": [], "no margin": [], "raw": []}
    layers: list[str] = []
    for init in (int(s) for s in args.inits.split(",")):
        got, lay = pvalues(data, init, args.change)
        for k in p:
            p[k] += got[k]
        layers += lay
    print(f"{args.dataset} {args.split}, {len(data)} digits, inits {args.inits}, change in {args.change}: "
          f"{len(layers)} (unit, class) pairs; "
          f"{time.perf_counter() - started:.0f} s at load {os.getloadavg()[0]:.1f}")
    for k, v in p.items():
        a = np.array(v)
        label = f"{k} (margin {MARGIN})" if k == "test" else k
        print(f"  {label:<18} p < .01 {np.mean(a < 0.01):6.1%}   p < .05 {np.mean(a < 0.05):6.1%}   p < .5 {np.mean(a < 0.5):6.1%}")
    lay, t = np.array(layers), np.array(p["test"])
    print("  test p < .01 per layer: " + ", ".join(f"{la} {np.mean(t[lay == la] < 0.01):.1%} of {int((lay == la).sum())}"
                                                   for la in dict.fromkeys(layers)))


if __name__ == "__main__":
    main()
