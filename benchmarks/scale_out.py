"""Single-unit ablation in process versus on Ray with 1 and 2 workers, the share of Ray's fixed
costs in each, and a projection to ResNet-50 on ImageNet's 50,000 validation images for N workers;
with ``--whole-run``, every stage after training of a whole run instead.

    .venv/bin/python benchmarks/scale_out.py [--eval-size 10000] [--repeat 20] [--rounds 3] [--cpus 2]
                                             [--device cpu|cuda] [--projection-images 4]
                                             [--sequential-share 0.58] [--no-projection]
    .venv/bin/python benchmarks/scale_out.py --whole-run [--run-dataset fashion-mnist]
                                             [--run-train-size N] [--run-eval-size N] [--run-epochs 2]

1. LeNet-5 (untrained weights: the cost of an ablation does not depend on them) on the real MNIST
   test set (``../shared/data/mnist``; mnist-5k's 1,000 test digits when absent), repeated
   ``--repeat`` times so that the sweep dwarfs the fixed costs (under 10% at the default): every unit
   ablated alone, through the same work items and merge in every case (``compute.distributed.work``),
   with each item's result saved as a run does. Results are checked equal.
   Each case runs once per round, ``--rounds`` rounds in turn, and every speed-up is paired within its
   round: what two busy cores of this VM give drifts over minutes (its neighbours: two plain processes
   measured 1.65x in one run and 1.84-1.89x ten minutes later), so one case measured minutes after
   another can be off by more than the effect. Medians and ranges are printed.
   The machine's own ceiling is measured in every round too: the same sweep in two plain processes at
   once (no Ray), each on half the shards, started together. In-process over the slower half is what
   a 2-worker executor with no costs of its own would reach: two busy cores share this VM's caches,
   memory and clock (on the 2-core EPYC of these notes even two pure-Python loops run at 1.69-1.77x
   together, not 2x).
2. Ray's fixed costs, per worker count and round: starting the actors, broadcasting the worker state
   (the model once, the data per shard, plus each actor's first fetch), and the round trip of an
   empty item times the sweep's items over the workers; their share of the whole (start and
   broadcast + sweep) is printed beside units/s, and the speed-up against in-process, whole and for
   the sweep alone (the sweep includes each actor's first fetch of the state and tracing the model,
   as in-process includes tracing). Starting Ray itself (once per cluster, not per run) is printed apart.
3. Projection: per-unit-per-image cost measured on ResNet-50 at 224x224 (a few units of an early and
   a late layer, so the throughput of small and large suffixes both count), scaled by every layer's
   suffix multiply-accumulates and unit count to the full single-unit sweep on 50,000 images, then
   divided over N workers plus the measured fixed costs; and the same with the sequential budget
   (``--ablation-budget sequential``), at ``--sequential-share`` of the full sweep's unit-examples
   (default: the ResNet-18 slice's measured share at width 0, benchmarks/sequential_ablation.py).
4. ``--whole-run``: LeNet-5 trained once in process (``--run-epochs``) on ``--run-dataset`` (default
   Debian's full Fashion-MNIST, 60,000 training and 10,000 test images), then the same run from its
   checkpoint (every stage after training: evaluation, statistics, ablation, both curves, images,
   publish) in process and on Ray with 1 and 2 workers, in seconds with the speed-up against in-process.
   Fixed costs as in 2 (starting the actors, broadcasting that run's model and data, each item's round
   trip times the run's items over the workers), measured apart on the same state; the driver's own
   work (merging, sorting, writing the tables) is not counted as fixed but stays serial. Every run's
   ``units`` table is checked equal to in-process. In rounds, as in 1 (``--rounds``).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from compute.ablation.engine import AblationEngine  # noqa: E402
from compute.datasets.sources import ImageSet, load_dataset, load_eval_set, stratified_subset  # noqa: E402
from compute.distributed import work  # noqa: E402
from compute.distributed.executor import InProcessExecutor, Item, Worker, run_items  # noqa: E402
from compute.nets.models import ModelSpec, build_model  # noqa: E402
from compute.run.stage_store import StageStore  # noqa: E402

SHARED_MNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"
IMAGENET_VAL = 50_000


def _noop(worker: Worker, i: int) -> int:
    return i


def _digits(n: int, mnist: Path, repeat: int) -> ImageSet:
    mnist5k = load_dataset("mnist-5k")
    if (mnist / "t10k-images-idx3-ubyte.gz").exists():
        data = load_eval_set(f"idx:{mnist}", None, mnist5k.train.class_names)
    else:
        data = mnist5k.test
    data = stratified_subset(data, min(n, len(data))) if n < len(data) else data
    return ImageSet(data.images.repeat(repeat, 1, 1, 1), data.labels.repeat(repeat), data.class_names, data.name)


def _timed(fn):  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def sweep(executor, worker: Worker, counts: dict[str, int], tmp: Path, name: str):  # type: ignore[no-untyped-def]
    """(result, seconds) of one sweep, tracing and splitting the model on each worker included."""
    return _timed(lambda: work.single_unit(executor, worker, StageStore(tmp / name), counts))


def _half_sweep(data: ImageSet, counts: dict[str, int], start, seconds) -> None:  # type: ignore[no-untyped-def]
    """A child process's share of the ceiling: the sweep on ``data``, timed from the common start."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    worker = Worker(build_model(ModelSpec("lenet5", (1, 28, 28), 10, {})).eval(), {"eval": data})
    with tempfile.TemporaryDirectory() as d:
        start.wait()
        _, t = sweep(InProcessExecutor(), worker, counts, Path(d), "half")
    seconds.put(t)


def ceiling(data: ImageSet, counts: dict[str, int]) -> float:
    """Seconds of the slower of two plain processes sweeping half the shards each, started together."""
    ctx = mp.get_context("spawn")  # a fresh interpreter, as a Ray worker is
    half = len(work.shards(len(data))) // 2 * work.SHARD_EXAMPLES
    parts = [ImageSet(data.images[a:b], data.labels[a:b], data.class_names, data.name)
             for a, b in ((0, half), (half, len(data)))]
    start, seconds = ctx.Barrier(3), ctx.Queue()
    procs = [ctx.Process(target=_half_sweep, args=(part, counts, start, seconds)) for part in parts]
    for proc in procs:
        proc.start()
    start.wait()
    times = [seconds.get() for _ in procs]
    for proc in procs:
        proc.join()
    return max(times)


def ray_fixed_costs(ex, worker: Worker, tmp: Path, n_items: int = 200) -> dict[str, float]:
    """Seconds to start the actors, to broadcast the worker state, and per empty item."""
    import ray

    _, t_actors = _timed(lambda: ray.get([a.__ray_ready__.remote() for a in ex.actors()]))
    items = [Item(f"b{i}", _noop, (i,)) for i in range(2 * len(ex.actors()))]  # every actor's first item fetches
    _, t_broadcast = _timed(lambda: run_items(ex, worker, items, StageStore(tmp / "broadcast"), "broadcast"))
    items = [Item(f"n{i}", _noop, (i,)) for i in range(n_items)]
    _, t_items = _timed(lambda: run_items(ex, worker, items, StageStore(tmp / "noop"), "noop"))
    return {"actors": t_actors, "broadcast": t_broadcast, "item": t_items / n_items}


def resnet50_projection(device: str, images: int) -> tuple[float, int, int]:
    """(seconds per unit-image-MAC measured, total suffix MACs of a full single-unit sweep per image,
    units), on ResNet-50 at 224x224 with 1,000 classes."""
    torch.manual_seed(0)
    model = build_model(ModelSpec("torchvision:resnet50", (3, 224, 224), 1000, {})).eval().to(device)
    x = (torch.rand(images, 3, 224, 224) * 255).to(torch.uint8)
    data = ImageSet(x, torch.arange(images) % 1000, tuple(str(i) for i in range(1000)), "random")
    engine = AblationEngine(model, device=device)
    counts = engine.unit_counts(data)
    macs = engine.suffix_macs(data)
    total = sum(counts[n] * macs[n] for n in counts)
    layers = list(counts)
    measured_s, measured_macs = 0.0, 0
    for layer in (layers[len(layers) // 4], layers[-3]):  # an early (large suffix) and a late (small) layer
        k = 8
        masks = 1 - torch.eye(counts[layer])[:k]
        engine.evaluate_jobs(data, [{layer: masks[:1]}])  # split and warm up
        _, t = _timed(lambda: engine.evaluate_jobs(data, [{layer: masks}]))
        measured_s += t
        measured_macs += k * images * macs[layer]
    return measured_s / measured_macs, total, sum(counts.values())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--eval-size", type=int, default=10_000, help="MNIST test digits ablated (default 10000)")
    ap.add_argument("--repeat", type=int, default=20,
                    help="the digits repeated this many times (default 20: fixed costs under 10%%)")
    ap.add_argument("--rounds", type=int, default=3, help="times each case is measured, in turn (default 3)")
    ap.add_argument("--mnist", type=Path, default=SHARED_MNIST, help=f"MNIST IDX files (default {SHARED_MNIST})")
    ap.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray (default 2)")
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="device of the projection's measurement")
    ap.add_argument("--projection-images", type=int, default=4, help="ResNet-50 images timed (default 4)")
    ap.add_argument("--sequential-share", type=float, default=0.58,
                    help="unit-examples of a sequential sweep / the full sweep's, for the projection (default 0.58)")
    ap.add_argument("--no-projection", action="store_true", help="skip the ResNet-50 measurement")
    ap.add_argument("--projection-only", action="store_true", help="only the ResNet-50 measurement (no Ray)")
    ap.add_argument("--whole-run", action="store_true", help="time every stage after training of a whole run instead")
    ap.add_argument("--run-dataset", default="fashion-mnist", help="--whole-run's dataset (default fashion-mnist)")
    ap.add_argument("--run-train-size", type=int, default=None, help="--whole-run's training subset (default: all)")
    ap.add_argument("--run-eval-size", type=int, default=None, help="--whole-run's evaluation subset (default: all)")
    ap.add_argument("--run-epochs", type=int, default=2, help="--whole-run's training epochs, done once (default 2)")
    args = ap.parse_args()
    os.environ.setdefault("NEURON_ATLAS_QUIET", "1")
    torch.set_num_threads(1)

    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: torch sees no CUDA device")
    print(f"load average before: {' '.join(f'{x:.1f}' for x in os.getloadavg())} on {os.cpu_count()} CPUs")
    if args.whole_run:
        whole_run(args.run_dataset, args.run_train_size, args.run_eval_size, args.run_epochs, args.cpus, args.rounds)
    elif not args.projection_only:
        fixed = scale_out(_digits(args.eval_size, args.mnist, args.repeat), args.cpus, args.rounds)
    else:
        fixed = {"actors": 0.0, "broadcast": 0.0, "item": 0.0}
    if not (args.no_projection or args.whole_run):
        projection(args.device, args.projection_images, fixed, args.sequential_share)
    print(f"load average after: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")


def _spread(values: list[float], fmt: str = "{:.1f}") -> str:
    """The median, and the range when there is more than one value."""
    mid = fmt.format(float(np.median(values)))
    return mid if len(values) == 1 else f"{mid} ({fmt.format(min(values))}-{fmt.format(max(values))})"


def scale_out(data: ImageSet, cpus: int, rounds: int) -> dict[str, float]:
    """LeNet-5's sweep in process, in two plain processes and on Ray with 1 and 2 workers, measured in turn
    ``rounds`` times (so a change of the machine's speed during the benchmark hits every case alike); the
    speed-ups are paired per round. Returns the median fixed costs with 2 workers."""
    import ray

    from compute.distributed.ray_executor import RayExecutor

    torch.manual_seed(0)
    model = build_model(ModelSpec("lenet5", (1, 28, 28), 10, {})).eval()
    worker = Worker(model, {"eval": data})
    counts = AblationEngine(model).unit_counts(data)
    units = sum(counts.values())
    chunks = [(k, u0, min(u0 + work.UNIT_CHUNK, k)) for k in counts.values() for u0 in range(0, k, work.UNIT_CHUNK)]
    n_items = len(work.packed(chunks, lambda c: c[2] - c[1], work.UNIT_CHUNK)) * len(work.shards(len(data)))
    print(f"LeNet-5, {units} units x {len(data):,} MNIST test digits = {units * len(data):,} unit-image "
          f"ablations in {n_items} items (shards of {work.SHARD_EXAMPLES}, up to {work.UNIT_CHUNK} units per item); "
          f"torch threads 1 per worker; {rounds} rounds, each case once per round")
    _, t_start = _timed(lambda: ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False,
                                         object_store_memory=500_000_000))
    t_in: list[float] = []
    t_two: list[float] = []
    sweeps: dict[int, list[float]] = {1: [], 2: []}
    fixed: dict[int, list[dict[str, float]]] = {1: [], 2: []}
    equal = True
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        for r in range(rounds):
            ref, t = sweep(InProcessExecutor(), worker, counts, tmp, f"in{r}")
            t_in.append(t)
            t_two.append(ceiling(data, counts))
            line = f"  round {r + 1}: in-process {t:.1f} s, two plain processes {t_two[-1]:.1f} s"
            for n in (1, 2):
                ex = RayExecutor(workers=n)
                fixed[n].append(ray_fixed_costs(ex, worker, tmp / f"fixed{n}-{r}"))
                got, t = sweep(ex, worker, counts, tmp, f"ray{n}-{r}")
                ex.close()
                sweeps[n].append(t)
                equal &= all(np.array_equal(ref[1][k].loss_delta, got[1][k].loss_delta) for k in counts)
                line += f", Ray {n} worker{'s' if n > 1 else ''} {t:.1f} s (sweep)"
            print(line, flush=True)
    ray.shutdown()
    ratio = [i / t for i, t in zip(t_in, t_two)]
    print(f"\n  {'':<22}{'seconds (whole)':<22}{'units/s':<12}{'speed-up, whole / sweep alone':<44}"
          "fixed costs (start, broadcast, per item)")
    print(f"  {'in-process':<22}{_spread(t_in):<22}{units / np.median(t_in):<12.2f}{'1':<44}-")
    print(f"  {'two plain processes':<22}{_spread(t_two):<22}{units / np.median(t_two):<12.2f}"
          f"{_spread(ratio, '{:.2f}') + 'x (the ceiling)':<44}- (no Ray: half the shards each)")
    for n in (1, 2):
        f = fixed[n]
        costs = [x["actors"] + x["broadcast"] + n_items * x["item"] / n for x in f]
        start = [x["actors"] + x["broadcast"] for x in f]
        whole = [a + t for a, t in zip(start, sweeps[n])]
        speed = _spread([i / w for i, w in zip(t_in, whole)], "{:.2f}")
        alone = _spread([i / t for i, t in zip(t_in, sweeps[n])], "{:.2f}")
        share = _spread([100 * c / w for c, w in zip(costs, whole)], "{:.1f}")
        print(f"  {'Ray, %d worker%s' % (n, 's' if n > 1 else ''):<22}{_spread(whole):<22}"
              f"{units / np.median(whole):<12.2f}{speed + 'x / ' + alone + 'x':<44}{share}% (actors "
              f"{_spread([x['actors'] for x in f])} s, broadcast {_spread([x['broadcast'] for x in f])} s, "
              f"{_spread([1000 * x['item'] for x in f])} ms x {n_items} items / {n})")
    print(f"  medians (ranges) of {rounds} rounds; speed-ups paired per round; every Ray sweep bit-equal to "
          f"in-process: {equal}")
    print(f"Starting a local Ray (once per cluster): {t_start:.1f} s")
    return {k: float(np.median([x[k] for x in fixed[2]])) for k in ("actors", "broadcast", "item")}


class Counting:
    """An executor that counts the items it is given (the whole run's, for its fixed costs)."""

    def __init__(self, inner) -> None:  # type: ignore[no-untyped-def]
        self.inner, self.name, self.items = inner, inner.name, 0

    def map(self, worker: Worker, items):  # type: ignore[no-untyped-def]
        self.items += len(items)
        return self.inner.map(worker, items)

    def share(self, value):  # type: ignore[no-untyped-def]
        return self.inner.share(value)

    def close(self) -> None:
        self.inner.close()


def whole_run(dataset: str, train_size: int | None, eval_size: int | None, epochs: int, cpus: int,
              rounds: int) -> None:
    """Every stage after training of one LeNet-5 run, in process and on Ray with 1 and 2 workers, in turn
    ``rounds`` times (as ``scale_out``)."""
    import pyarrow.parquet as pq
    import ray

    from compute.distributed.ray_executor import RayExecutor
    from compute.run.config import RunConfig
    from compute.run.data import load_data
    from compute.run.pipeline import compute_run
    from warehouse.layout import CHECKPOINT

    base = RunConfig(model="lenet5", dataset=dataset, train_size=train_size, eval_size=eval_size, seed=0, threads=1)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        trained, t_train = _timed(lambda: compute_run(replace(base, epochs=epochs, run_id="trained"), tmp / "w"))
        splits, eval_set = load_data(base)
        print(f"LeNet-5 on {dataset}: {len(splits.train):,} training and {len(eval_set):,} evaluation images; "
              f"trained {epochs} epochs once ({t_train:.1f} s with its own stages); every stage after training "
              "timed from its checkpoint; torch threads 1 per worker")
        cfg = replace(base, epochs=0, checkpoint=str(trained.path / CHECKPOINT))

        def run(name: str, executor) -> tuple[float, int, Any]:  # type: ignore[no-untyped-def]
            counting = Counting(executor)
            summary, t = _timed(lambda: compute_run(replace(cfg, run_id=name), tmp / "w", executor=counting))
            return t, counting.items, pq.read_table(summary.path / "units.parquet").drop(["run_id"])

        _, t_start = _timed(lambda: ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False,
                                             object_store_memory=1_000_000_000))
        state = Worker(build_model(ModelSpec("lenet5", splits.train.shape, splits.train.n_classes, {})),
                       {"eval": eval_set, "train": splits.train, "test": splits.test})
        t_in: list[float] = []
        runs: dict[int, list[float]] = {1: [], 2: []}
        fixed: dict[int, list[float]] = {1: [], 2: []}
        costs: dict[int, list[dict[str, float]]] = {1: [], 2: []}
        equal = True
        for r in range(rounds):
            t, n_items, ref = run(f"in{r}", InProcessExecutor())
            t_in.append(t)
            line = f"  round {r + 1}: in-process {t:.1f} s"
            for n in (1, 2):
                ex = RayExecutor(workers=n)
                f = ray_fixed_costs(ex, state, tmp / f"fixed{n}-{r}")
                ex.close()
                t, items, got = run(f"ray{n}-{r}", RayExecutor(workers=n))
                runs[n].append(t)
                costs[n].append(f)
                fixed[n].append(f["actors"] + f["broadcast"] + items * f["item"] / n)
                equal &= got.equals(ref)
                line += f", Ray {n} worker{'s' if n > 1 else ''} {t:.1f} s"
            print(line, flush=True)
    ray.shutdown()
    print(f"\n  in-process       {_spread(t_in)} s   {n_items} items")
    for n in (1, 2):
        f = costs[n]
        print(f"  Ray, {n} worker{'s' if n > 1 else ' '}    {_spread(runs[n])} s   speed-up "
              f"{_spread([i / t for i, t in zip(t_in, runs[n])], '{:.2f}')}x; fixed costs "
              f"{_spread([100 * c / t for c, t in zip(fixed[n], runs[n])])}% (actors {_spread([x['actors'] for x in f])} s, "
              f"broadcast {_spread([x['broadcast'] for x in f])} s, {_spread([1000 * x['item'] for x in f])} ms x "
              f"{n_items} items / {n})")
    print(f"  medians (ranges) of {rounds} rounds; speed-ups paired per round; every run's units table equal to "
          f"in-process: {equal}")
    print(f"Starting a local Ray (once per cluster): {t_start:.1f} s")


def projection(device: str, images: int, f: dict[str, float], share: float) -> None:
    s_per_mac, total_macs, units = resnet50_projection(device, images)
    one = s_per_mac * total_macs * IMAGENET_VAL
    print(f"ResNet-50 at 224x224 ({device}): {units:,} units, full single-unit sweep "
          f"{total_macs / 1e12:.2f} TMAC per image, measured {1e-9 / s_per_mac:.1f} GMAC/s per worker")
    items = units / work.UNIT_CHUNK * IMAGENET_VAL / work.SHARD_EXAMPLES  # about: packs of up to UNIT_CHUNK units
    for n in (1, 8, 64, 256):
        t = one / n + f["actors"] + f["broadcast"] + items * f["item"] / n
        ts = share * one / n + f["actors"] + f["broadcast"] + items * f["item"] / n
        print(f"  projection, {n:>3} worker{'s' if n > 1 else ' '}: full {t / 86400:9.2f} days, "
              f"sequential (x{share:g} of the passes) {ts / 86400:9.2f} days")


if __name__ == "__main__":
    main()
