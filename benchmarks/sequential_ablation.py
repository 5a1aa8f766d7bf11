"""Sequential single-unit ablation against the full sweep: forward passes saved at equal conclusions.

    .venv/bin/python benchmarks/sequential_ablation.py [--eval-size 10000] [--widths 0.002,0.001]
                                                       [--resnet-size 2000] [--no-resnet]

1. LeNet-5 trained 2 epochs on the bundled mnist-5k digits, every unit ablated on the real MNIST
   test set (``../shared/data/mnist``, 10,000 digits; mnist-5k's 1,000 test digits when absent).
2. A ResNet-18 slice (its last block, ``layer4.1.*``, 1,024 units), trained 1 epoch on the mnist-5k
   digits (the conclusions of untrained weights are mostly "no effect").

For each, the full sweep (``compute.distributed.work.single_unit``) and the sequential one
(``sequential_unit``, ``compute.ablation.sequential``) at each ``--widths``: unit-example ablations
(one unit ablated on one example: what the suffix passes cost), seconds, and the significant units
(``abl_loss_q <= 0.05`` and interval above 0, as the "removal significantly hurts" preset) of each,
with their overlap. Both on the same items and executor (in process, 1 thread).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from compute.ablation.engine import AblationEngine  # noqa: E402
from compute.ablation.outcome import LayerAblation, fdr  # noqa: E402
from compute.datasets.sources import ImageSet, load_dataset, load_eval_set, stratified_subset  # noqa: E402
from compute.distributed import work  # noqa: E402
from compute.distributed.executor import InProcessExecutor, Worker  # noqa: E402
from compute.measure.train import TrainConfig, train  # noqa: E402
from compute.nets.discover import select_layers  # noqa: E402
from compute.nets.models import ModelSpec, build_model  # noqa: E402
from compute.run.stage_store import StageStore  # noqa: E402

SHARED_MNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"


def significant(layers: dict[str, LayerAblation]) -> set[tuple[str, int]]:
    """Units whose removal significantly raises the loss, as the dashboard's preset selects them."""
    out = set()
    for name, ab in layers.items():
        lo, _, p = ab.paired.loss_test()  # type: ignore[union-attr]
        keep = (fdr(p) <= 0.05) & (lo >= 0)
        out |= {(name, int(u)) for u in np.flatnonzero(keep)}
    return out


def unit_examples(layers: dict[str, LayerAblation]) -> float:
    return float(sum(np.sum(np.broadcast_to(a.paired.n, a.loss_delta.shape)) for a in layers.values()))  # type: ignore[union-attr]


def compare(title: str, model: torch.nn.Module, data: ImageSet, widths: list[float]) -> None:
    counts = AblationEngine(model).unit_counts(data)
    order = np.random.default_rng([0, 104729]).permutation(len(data))
    worker = Worker(model, {"eval": data, "eval-seq": data.subset(order)})
    ex = InProcessExecutor()
    print(f"{title}: {sum(counts.values()):,} units x {len(data):,} examples")
    with tempfile.TemporaryDirectory() as d:
        start = time.perf_counter()
        _, full = work.single_unit(ex, worker, StageStore(Path(d) / "full"), counts)
        t_full = time.perf_counter() - start
        sig_full, n_full = significant(full), unit_examples(full)
        print(f"  {'full':<22} {n_full:>13,.0f} unit-examples  {t_full:7.1f} s   significant {len(sig_full)}")
        for w in widths:
            start = time.perf_counter()
            _, seq = work.sequential_unit(ex, worker, StageStore(Path(d) / f"seq{w}"), counts, order, w,
                                          data="eval-seq")
            t = time.perf_counter() - start
            sig, n = significant(seq), unit_examples(seq)
            print(f"  {f'sequential, width {w:g}':<22} {n:>13,.0f} unit-examples  {t:7.1f} s   significant {len(sig)}"
                  f" (both {len(sig & sig_full)}, full only {len(sig_full - sig)}, sequential only "
                  f"{len(sig - sig_full)}); passes {n / n_full:.2f} of full, time {t / t_full:.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--eval-size", type=int, default=10_000, help="MNIST test digits for LeNet-5 (default 10000)")
    ap.add_argument("--widths", default="0.002,0.001", help="interval widths to try (default 0.002,0.001)")
    ap.add_argument("--resnet-size", type=int, default=2000, help="MNIST test digits for the ResNet-18 slice")
    ap.add_argument("--no-resnet", action="store_true", help="skip the ResNet-18 slice")
    ap.add_argument("--mnist", type=Path, default=SHARED_MNIST, help=f"the MNIST IDX files (default {SHARED_MNIST})")
    args = ap.parse_args()
    os.environ.setdefault("NEURON_ATLAS_QUIET", "1")
    torch.set_num_threads(1)
    widths = [float(w) for w in args.widths.split(",")]
    digits = load_dataset("mnist-5k")
    test = (load_eval_set(f"idx:{args.mnist}", None, digits.train.class_names)
            if (args.mnist / "t10k-images-idx3-ubyte.gz").exists() else digits.test)
    torch.manual_seed(0)
    lenet = build_model(ModelSpec("lenet5", digits.train.shape, 10, {}))
    train(lenet, lenet.probe_modules(), digits.train, digits.test, TrainConfig(epochs=2, seed=0))
    compare("LeNet-5", lenet.eval(), stratified_subset(test, args.eval_size), widths)
    if not args.no_resnet:
        torch.manual_seed(0)
        resnet = build_model(ModelSpec("torchvision:resnet18", digits.train.shape, 10, {}))
        train(resnet, resnet.probe_modules(), stratified_subset(digits.train, 2000), digits.test,
              TrainConfig(epochs=1, seed=0))
        resnet.probes = select_layers(resnet.probes, ["layer4.1.*"])
        compare("ResNet-18 slice (layer4.1.*)", resnet.eval(), stratified_subset(test, args.resnet_size), widths)


if __name__ == "__main__":
    main()
