"""Single-unit ablation sweep, three ways, side by side in one run: naive hooks, captum, this engine.

For each model, every probed unit is zeroed alone and the loss delta on the evaluation set is
measured by:

1. the naive hook loop (``compute.ablation.naive``: one full evaluation pass per unit);
2. captum's ``LayerFeatureAblation`` (per-example loss as the forward function, one feature group
   per unit), at its best ``perturbations_per_eval`` of those tried;
3. ``compute.ablation.engine.AblationEngine`` (suffix only, many ablations per pass).

Models and data:
- LeNet-5 and the MLP trained for 2 epochs on the bundled mnist-5k digits, evaluated on the real
  MNIST test set (10,000 images, ``../shared/data/mnist``);
- the CIFAR conv net with random initial weights on random 32x32x3 inputs (``--cifar-n``): for
  throughput only, its accuracies mean nothing.

Methods 1 and 2 cost the same per unit of a layer (one pass of the whole model per unit or per
group of units), so by default they are timed on up to ``--sample`` units per layer and scaled to
the layer's unit count; ``--full`` times every unit. The engine always sweeps every unit. The
agreement columns compare the engine's loss deltas with theirs on the units they ran.

Throughput: suffix multiply-accumulates per second (sum over units of the MACs after the unit's
layer, times examples, divided by the engine's wall time, everything included) against a plain
batched forward pass of the whole model (batch 1000; best of 3 before and 3 after the engine, whose own
time is the better of 2 runs, as the machine may be shared). Peak memory: the process's peak
resident set (VmHWM), reset before each method (Linux ``clear_refs``), minus the resident set just
before it: what the method itself added at its peak (memory freed earlier and kept by the allocator
is reused without showing). The engine's sweep is also measured in fresh processes on the 10,000
test images and on them repeated 4 times: streaming in chunks, its peak must not grow.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from captum.attr import LayerFeatureAblation
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from compute.ablation.outcome import outcome  # noqa: E402
from compute.datasets.sources import DIGITS, ImageSet, load_dataset, load_eval_set  # noqa: E402
from compute.ablation.engine import AblationEngine  # noqa: E402
from compute.nets.models import ModelSpec, ProbedModel, build_model  # noqa: E402
from compute.nets.probe import ZeroUnit  # noqa: E402
from compute.measure.train import TrainConfig, train  # noqa: E402

MNIST_TEST = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"
CAPTUM_BATCH = 500


def reset_peak() -> None:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def peak_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def timed(fn: Callable[[], object]) -> tuple[object, float, float]:
    """(result, seconds, peak resident MB during the call above the resident size before it)."""
    reset_peak()
    before = rss_mb()
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t, peak_mb() - before


def sample_units(n: int, k: int) -> list[int]:
    return list(range(n)) if n <= k else sorted({int(round(i)) for i in np.linspace(0, n - 1, k)})


@torch.inference_mode()
def naive(model: ProbedModel, data: ImageSet, units: dict[str, list[int]]) -> dict[str, np.ndarray]:
    """Loss delta of each listed unit by one full hooked evaluation pass per unit."""
    base = outcome(model, data).loss
    mods = model.probe_modules()
    out = {}
    for name, us in units.items():
        deltas = []
        for u in us:
            with ZeroUnit(mods[name], [u]):
                deltas.append(outcome(model, data).loss - base)
        out[name] = np.array(deltas)
    return out


def captum_sweep(model: ProbedModel, data: ImageSet, units: dict[str, list[int]], n_units: dict[str, int],
                 per_eval: int) -> dict[str, np.ndarray]:
    """Loss delta of each listed unit with captum; unlisted units of a layer form one extra group."""
    def loss_fn(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(model(x), y, reduction="none")

    mods = model.probe_modules()
    out = {}
    for name, us in units.items():
        n = n_units[name]
        group = torch.full((n,), len(us), dtype=torch.long)
        group[torch.tensor(us)] = torch.arange(len(us))
        shape = _layer_shape(model, mods[name], data.floats(0, 1))
        mask = group.view(1, n, *([1] * (len(shape) - 1)))  # one group per unit, all its positions
        lfa = LayerFeatureAblation(loss_fn, mods[name])
        total = torch.zeros(len(us), dtype=torch.float64)
        for start in range(0, len(data), CAPTUM_BATCH):
            x = data.floats(start, start + CAPTUM_BATCH)
            y = data.labels[start:start + CAPTUM_BATCH]
            attr = lfa.attribute(x, additional_forward_args=(y,), layer_mask=mask, perturbations_per_eval=per_eval)
            first = attr.reshape(len(x), n, -1)[:, :, 0]  # same value at every position of a unit
            total -= first[:, torch.tensor(us)].double().sum(0)  # attribution = intact - ablated
        out[name] = (total / len(data)).numpy()
    return out


def _layer_shape(model: ProbedModel, module: torch.nn.Module, x: torch.Tensor) -> tuple[int, ...]:
    shape: list[tuple[int, ...]] = []
    h = module.register_forward_hook(lambda _m, _i, o: shape.append(tuple(o.shape[1:])))
    with torch.no_grad():
        model(x)
    h.remove()
    return shape[0]


def forward_rate(model: ProbedModel, data: ImageSet, macs: int) -> float:
    """MACs per second of plain batched inference over the whole set (batch 1000, best of 3)."""
    best = math.inf
    with torch.inference_mode():
        for _ in range(3):
            t = time.perf_counter()
            for start in range(0, len(data), 1000):
                model(data.floats(start, start + 1000))
            best = min(best, time.perf_counter() - t)
    return macs * len(data) / best


def model_macs(model: ProbedModel, data: ImageSet) -> int:
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(data.floats(0, 1))
    return counter.get_total_flops() // 2


def bench(label: str, model: ProbedModel, data: ImageSet, args: argparse.Namespace) -> dict[str, float]:
    model.eval()
    engine = AblationEngine(model)
    n_units = engine.unit_counts(data)
    suffix = engine.suffix_macs(data)
    work = sum(n_units[k] * suffix[k] for k in n_units) * len(data)
    macs = model_macs(model, data)
    fwd = forward_rate(model, data, macs)
    # Best of two engine runs, the forward rate best of three before and three after: the machine is shared.
    (_, abl), t_engine, m_engine = timed(lambda: engine.single_unit(data))
    t_engine = min(t_engine, timed(lambda: engine.single_unit(data))[1])
    fwd = max(fwd, forward_rate(model, data, macs))
    eng_loss = {k: v.loss_delta for k, v in abl.items()}

    units = {k: list(range(n)) if args.full else sample_units(n, args.sample) for k, n in n_units.items()}
    ran = sum(len(u) for u in units.values())
    nv, t_naive_s, m_naive = timed(lambda: naive(model, data, units))
    t_naive = t_naive_s * sum(n_units.values()) / ran  # per-unit cost is the same within a model

    # captum: try each perturbations_per_eval on the sample, keep the fastest, scale to all units.
    cap_times, cap_out, cap_mem = {}, {}, {}
    for p in args.per_eval:
        cap_out[p], t, cap_mem[p] = timed(lambda p=p: captum_sweep(model, data, units, n_units, p))
        # Evaluations per chunk: 1 intact + ceil(groups / p) of p stacked copies; groups = listed
        # units + 1 for the rest of the layer (if any).
        done = sum(1 + math.ceil((len(u) + (len(u) < n_units[k])) / p) for k, u in units.items())
        full = sum(1 + math.ceil(n_units[k] / p) for k in units)
        cap_times[p] = t * full / done
    best_p = min(cap_times, key=cap_times.get)
    t_captum = cap_times[best_p]

    def agree(other: dict[str, np.ndarray]) -> float:
        return max(float(np.abs(eng_loss[k][units[k]] - other[k]).max()) for k in units)

    scaled = "" if args.full else f" (timed on {ran} of {sum(n_units.values())} units, scaled)"
    print(f"\n## {label}: {len(data)} examples, {sum(n_units.values())} units in {len(n_units)} layers")
    print(f"captum perturbations_per_eval tried: " + ", ".join(f"{p}: {t:.1f} s" for p, t in cap_times.items())
          + f" -> best {best_p}")
    print(f"{'method':<28}{'wall s':>10}{'engine x':>10}{'+peak MB':>10}  max |loss delta - engine|")
    print(f"{'naive hook loop' + ('' if args.full else '*'):<28}{t_naive:>10.2f}{t_naive / t_engine:>10.1f}"
          f"{m_naive:>10.0f}  {agree(nv):.2e}")
    print(f"{f'captum LFA ppe={best_p}' + ('' if args.full else '*'):<28}{t_captum:>10.2f}"
          f"{t_captum / t_engine:>10.1f}{cap_mem[best_p]:>10.0f}  {agree(cap_out[best_p]):.2e}")
    print(f"{'engine (all units)':<28}{t_engine:>10.2f}{1.0:>10.1f}{m_engine:>10.0f}  0")
    if scaled:
        print(f"* {scaled.strip(' ()')}")
    rate = work / t_engine
    print(f"engine: {work / 1e9:.1f} G suffix MACs in {t_engine:.2f} s = {rate / 1e9:.2f} GMAC/s; plain forward "
          f"{fwd / 1e9:.2f} GMAC/s; engine/forward = {rate / fwd:.0%}")
    return {"naive_x": t_naive / t_engine, "captum_x": t_captum / t_engine, "limit": rate / fwd}


def trained(name: str, epochs: int) -> ProbedModel:
    splits = load_dataset("mnist-5k")
    torch.manual_seed(0)
    model = build_model(ModelSpec(name, splits.train.shape, splits.train.n_classes))
    train(model, model.probe_modules(), splits.train, splits.test, TrainConfig(epochs=epochs, seed=0))
    return model.eval()


def memory_child(repeat: int) -> None:
    """In a fresh process: the engine's peak resident MB above the loaded data, LeNet-5 (initial
    weights) on the MNIST test set repeated ``repeat`` times; printed as JSON for the parent."""
    torch.set_num_threads(1)
    mnist = load_eval_set(f"idx:{MNIST_TEST}", None, DIGITS)
    data = ImageSet(mnist.images.repeat(repeat, 1, 1, 1), mnist.labels.repeat(repeat), DIGITS, "repeated")
    torch.manual_seed(0)
    engine = AblationEngine(build_model(ModelSpec("lenet5", (1, 28, 28), 10)))
    engine.single_unit(mnist.subset(range(10)))  # trace and split first: not part of the sweep's memory
    _, seconds, peak = timed(lambda: engine.single_unit(data))
    print(json.dumps({"n": len(data), "seconds": seconds, "peak_mb": peak}))


def memory_report() -> None:
    """Peak memory of the engine's sweep does not grow with the evaluation set (fresh process each)."""
    print("\n## engine memory: LeNet-5 full sweep, peak resident MB above the loaded data (fresh process)")
    for repeat in (1, 4):
        out = subprocess.run([sys.executable, __file__, "--memory-child", str(repeat)], capture_output=True,
                             text=True, check=True, env={**os.environ, "NEURON_ATLAS_QUIET": "1"})
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{r['n']:>7} examples: +{r['peak_mb']:.0f} MB peak, {r['seconds']:.1f} s")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sample", type=int, default=7,
                    help="units per layer timed for naive and captum (captum ablates the rest as one more group)")
    ap.add_argument("--full", action="store_true", help="time naive and captum on every unit (slow)")
    ap.add_argument("--per-eval", type=int, nargs="+", default=[1, 4, 8],
                    help="captum perturbations_per_eval values to try (the default sample makes 8 groups per layer)")
    ap.add_argument("--cifar-n", type=int, default=128, help="random 32x32x3 inputs for the CIFAR conv net")
    ap.add_argument("--epochs", type=int, default=2, help="training epochs of LeNet-5 and the MLP on mnist-5k")
    ap.add_argument("--models", nargs="+", default=["lenet5", "mlp", "cifar-convnet"])
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads for every method (default 1: stable figures on a shared machine)")
    ap.add_argument("--memory-child", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.memory_child is not None:
        memory_child(args.memory_child)
        return 0
    os.environ.setdefault("NEURON_ATLAS_QUIET", "1")
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average "
          f"{os.getloadavg()[0]:.1f} at start")
    mnist = load_eval_set(f"idx:{MNIST_TEST}", None, DIGITS)
    results = {}
    for name in args.models:
        if name == "cifar-convnet":
            torch.manual_seed(0)
            model = build_model(ModelSpec(name, (3, 32, 32), 10))
            g = torch.Generator().manual_seed(0)
            data = ImageSet(torch.randint(0, 256, (args.cifar_n, 3, 32, 32), dtype=torch.uint8, generator=g),
                            torch.randint(0, 10, (args.cifar_n,), generator=g), DIGITS, "random32")
            label = "cifar-convnet (random weights, random inputs)"
        else:
            model, data = trained(name, args.epochs), mnist
            label = f"{name} (trained {args.epochs} epochs on mnist-5k, real MNIST test set)"
        results[name] = bench(label, model, data, args)
    memory_report()
    print("\n## summary (targets: >= 10x naive, >= 3x captum, >= 60% of plain forward throughput)")
    for name, r in results.items():
        print(f"{name:<16} {r['naive_x']:>6.1f}x naive  {r['captum_x']:>6.1f}x captum  {r['limit']:>5.0%} of forward")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
