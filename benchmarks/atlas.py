"""The whole atlas on Fashion-MNIST: seconds per stage and the ratios that say where the time goes.

    .venv/bin/python benchmarks/atlas.py [--train-size N] [--eval-size N] [--epochs N] [--device cpu|cuda]
        [--threads 1,0] [--before DIR] [--sections run,trace,actmax,contention]

Prints ``name=value`` lines (ratios measured side by side in one process, so a busy machine
slows both sides alike; the load average is printed with them):

- ``after_training_over_training``: seconds of every stage after training (evaluate, statistics,
  ablation, curves, class curves, images, publish) / seconds of training, one whole run
  (``compute_run``); wall-clock seconds, and beside it the same ratio of this process's CPU
  seconds (``after_training_over_training_cpu``), which other processes on a shared machine
  disturb less;
- ``trace_overhead``: one training epoch with the per-class trace / the same loop without it;
- ``actmax_step_over_fwd_bwd``: one activation-maximization step / one plain forward+backward of
  the same stack through the same layers (input gradient, no regularizers), summed over layers;
- ``contention_keep``: each stage's speed with one competing busy process (a Python spin loop) /
  its speed without, the worst stage, per thread setting (a fair share on 2 cores is 0.5).

``--before DIR`` runs the same sections on the code in DIR (an older checkout, e.g. a git worktree
of main) in a subprocess, section by section after this checkout's, so both see about the same load.
Features the older code lacks (thread policy, early stop) are skipped there. Dataset: Debian's
``/usr/share/datasets/fashion-mnist`` (``apt-get install dataset-fashion-mnist``) or ``--dataset``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, Iterator

ROOT = Path(__file__).resolve().parent.parent
AFTER_TRAINING = ("evaluate", "statistics", "ablation", "curves", "class_curves", "images", "publish")


# ---------------------------------------------------------------- worker: measures the importable `compute`

def _threads(n: int | None):
    """The code's thread policy for ``n`` threads; older code has none (torch's default)."""
    try:
        from compute.threads import torch_threads
    except ImportError:
        return nullcontext()
    return torch_threads(n)


def _config(args: argparse.Namespace, threads: int | None, **kw: Any):
    from compute.images.config import ImageConfig
    from compute.run.config import RunConfig

    names = {f.name for f in dataclasses.fields(RunConfig)}
    if "threads" in names and threads is not None:
        kw["threads"] = threads
    if args.actmax_steps or args.top_k:
        default = ImageConfig()
        kw["images"] = ImageConfig(top_k=args.top_k or default.top_k,
                                   actmax=_actmax_config(steps=args.actmax_steps) if args.actmax_steps else default.actmax)
    return RunConfig(model=args.model, dataset=args.dataset, data_dir=args.data_dir, epochs=args.epochs,
                     train_size=args.train_size, eval_size=args.eval_size, device=args.device, seed=0, **kw)


def _actmax_config(**kw: Any):
    """An ActMaxConfig with the settings this code knows (older code has no early stop)."""
    from compute.images.config import ActMaxConfig

    names = {f.name for f in dataclasses.fields(ActMaxConfig)}
    return ActMaxConfig(**{k: v for k, v in kw.items() if k in names})


def run_section(args: argparse.Namespace, threads: int | None) -> dict[str, Any]:
    """One whole run through ``compute_run``, each stage function timed where the pipeline calls it."""
    from compute.run import pipeline

    seconds: dict[str, float] = {}
    cpu: dict[str, float] = {}
    contexts: list[Any] = []
    original = dict(pipeline.STAGE_FUNCTIONS)

    def timed(name: str):
        def call(ctx):
            contexts.append(ctx)
            start, start_cpu = time.perf_counter(), time.process_time()
            try:
                return original[name](ctx)
            finally:
                seconds[name] = time.perf_counter() - start
                cpu[name] = time.process_time() - start_cpu
        return call

    pipeline.STAGE_FUNCTIONS.update({name: timed(name) for name in original})
    try:
        with tempfile.TemporaryDirectory() as tmp:
            start_cpu = time.process_time()
            summary = pipeline.compute_run(_config(args, threads, run_id="bench-atlas"), Path(tmp))
            total_cpu = time.process_time() - start_cpu
    finally:
        pipeline.STAGE_FUNCTIONS.update(original)
    f = summary.figures
    seconds["publish"] = f["duration_s"] - sum(seconds.values())  # loading data and building the model too
    cpu["publish"] = total_cpu - sum(cpu.values())
    after = sum(seconds.get(s, 0.0) for s in AFTER_TRAINING)
    after_cpu = sum(cpu.get(s, 0.0) for s in AFTER_TRAINING)
    return {"seconds": seconds, "cpu": cpu,
            "images": {k.split("/", 1)[1]: v for k, v in f.items() if k.startswith("images_s/")},
            "total": f["duration_s"], "test_acc": f["test_acc"], "units": f["units"],
            "after_training_over_training": after / seconds["train"],
            "after_training_over_training_cpu": after_cpu / cpu["train"]}


def _data(args: argparse.Namespace):
    from compute.run.data import load_data

    splits, eval_set = load_data(_config(args, None))
    return splits, eval_set


def _plain_epoch(model, data, device: str, batch_size: int = 64, seed: int = 0) -> None:
    """compute.measure.train's loop without the trace: same batches, Adam, loss and accuracy sums."""
    import torch
    import torch.nn.functional as F

    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    images, labels = data.images.to(device), data.labels.to(device)
    order = torch.randperm(len(data), generator=gen).to(device)
    loss_sum, correct = torch.zeros((), dtype=torch.float64, device=device), torch.zeros((), device=device)
    for b in range(math.ceil(len(data) / batch_size)):
        idx = order[b * batch_size:(b + 1) * batch_size]
        x, y = images[idx].to(torch.float32).div_(255.0), labels[idx]
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        if not torch.isfinite(loss):
            raise RuntimeError("diverged")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        loss_sum += loss.detach().double() * len(idx)
        correct += (logits.argmax(1) == y).sum()
    float(loss_sum)


def _model(args: argparse.Namespace, data):
    import torch

    from compute.nets.models import ModelSpec, build_model

    torch.manual_seed(0)
    return build_model(ModelSpec(args.model, data.shape, data.n_classes)).to(args.device)


def trace_section(args: argparse.Namespace, threads: int | None) -> dict[str, Any]:
    """One epoch with the trace (``train``) and without (the same loop, no probes), alternated 3 times."""
    from compute.datasets.sources import stratified_subset
    from compute.measure.train import TrainConfig, train

    splits, _ = _data(args)
    data = stratified_subset(splits.train, args.probe_size)
    test = stratified_subset(splits.test, 100)
    times: dict[str, list[float]] = {"plain": [], "trace": []}
    with _threads(threads):
        for _ in range(3):
            for kind in times:
                model = _model(args, data)
                start = time.perf_counter()
                if kind == "plain":
                    _plain_epoch(model, data, args.device)
                else:
                    train(model, model.probe_modules(), data, test, TrainConfig(epochs=1, seed=0), args.device)
                _sync(args.device)
                times[kind].append(time.perf_counter() - start)
    # train() also evaluates on 100 test images once; negligible beside an epoch.
    return {"plain_s": min(times["plain"]), "trace_s": min(times["trace"]),
            "trace_overhead": min(times["trace"]) / min(times["plain"])}


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def _trained(args: argparse.Namespace):
    """A model trained for 2 epochs on the probe subset: activation maximization needs trained units."""
    from compute.datasets.sources import stratified_subset
    from compute.measure.train import TrainConfig, train

    splits, eval_set = _data(args)
    data = stratified_subset(splits.train, args.probe_size)
    model = _model(args, data)
    train(model, model.probe_modules(), data, stratified_subset(splits.test, 100), TrainConfig(epochs=2, seed=0),
          args.device)
    return model.eval(), data, eval_set


def actmax_section(args: argparse.Namespace, threads: int | None) -> dict[str, Any]:
    """Per layer: seconds per actmax step (the difference of a 2k- and a k-step run, so set-up and the
    final evaluation cancel) beside one plain forward+backward of the same stack; and the figure of
    how much images and activations still change after N steps (early-stopping code only)."""
    import numpy as np
    import torch

    from compute.images.actmax import activation_maps
    from compute.nets.forward import run_to
    from compute.nets.probe import by_position

    model, data, _ = _trained(args)
    mean = torch.tensor([float(data.images.float().mean() / 255.0)] * data.shape[0])
    k, restarts = args.ratio_steps, 3
    layers: dict[str, Any] = {}
    figure: dict[str, Any] = {}
    with _threads(threads):
        for layer, module in model.probe_modules().items():
            with torch.no_grad():
                n = int(run_to(model, module, torch.zeros(1, *data.shape, device=args.device))[1].shape[1])
            units = list(range(n))

            def maps(steps: int) -> float:
                start = time.perf_counter()
                activation_maps(model, module, units, data.shape, mean,
                                _actmax_config(steps=steps, restarts=restarts, tol=0.0), args.device)
                _sync(args.device)
                return time.perf_counter() - start

            stack = torch.rand(2 * restarts * n, *data.shape, device=args.device)
            unit_idx = torch.arange(n, device=args.device).repeat(2 * restarts)

            def fwd_bwd() -> float:
                start = time.perf_counter()
                for _ in range(k):
                    x = stack.clone().requires_grad_()
                    pre, _ = run_to(model, module, x)
                    act = by_position(pre)[torch.arange(len(x), device=x.device), unit_idx].mean(1)
                    torch.autograd.grad(act.sum(), x)
                _sync(args.device)
                return (time.perf_counter() - start) / k

            steps_t, plain_t = [], []
            for _ in range(3):  # interleaved: both sides see the same load
                steps_t.append((maps(2 * k) - maps(k)) / k)
                plain_t.append(fwd_bwd())
            step, plain = max(min(steps_t), 1e-9), min(plain_t)
            layers[layer] = {"images": 2 * restarts * n, "step_s": step, "fwd_bwd_s": plain, "ratio": step / plain}
            if args.figure_steps:
                figure[layer] = _convergence(model, module, units, data.shape, mean, args)
    total = sum(v["step_s"] for v in layers.values()) / sum(v["fwd_bwd_s"] for v in layers.values())
    return {"layers": layers, "actmax_step_over_fwd_bwd": total, "figure": figure}


def _convergence(model, module, units: list[int], shape, mean, args: argparse.Namespace) -> dict[str, Any]:
    """How much images and objectives still change after N steps, and what the default early stop keeps."""
    import inspect

    import numpy as np
    import torch

    from compute.images.actmax import activation_maps

    if "on_window" not in inspect.signature(activation_maps).parameters:
        return {}
    units = units[::max(1, len(units) // 40)]  # at most ~40 units: the figure, not the stage
    cap = args.figure_steps
    windows: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    ref = activation_maps(model, module, units, shape, mean, _actmax_config(steps=cap, tol=0.0), args.device,
                          on_window=lambda s, change, obj: windows.__setitem__(s, (change, obj)))
    final = windows[max(windows)][1]
    rows = {s: {"change_median": float(c.median()),
                "objective_median": float(np.median((o / final).numpy())),
                "objective_p10": float(np.quantile((o / final).numpy(), 0.1))} for s, (c, o) in windows.items()}
    default = _actmax_config()
    happy, sad = activation_maps(model, module, units, shape, mean,
                                 dataclasses.replace(default, steps=min(default.steps, cap)), args.device)
    steps = np.concatenate([happy.steps.ravel(), sad.steps.ravel()])
    kept = np.concatenate([happy.values[:, 0] / ref[0].values[:, 0], sad.values[:, 0] / ref[1].values[:, 0]])
    return {"windows": rows, "default_mean_steps": float(steps.mean()),
            "default_value_median": float(np.median(kept)), "default_value_p10": float(np.quantile(kept, 0.1))}


@contextmanager
def busy_process() -> Iterator[None]:
    """One competing CPU-bound process (a Python spin loop) while the block runs."""
    p = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    time.sleep(0.2)
    try:
        yield
    finally:
        p.kill()
        p.wait()


def contention_section(args: argparse.Namespace, threads: int | None) -> dict[str, Any]:
    """Each stage's seconds on a fixed small workload, alone and beside one busy process, alternated."""
    import torch

    from compute.ablation.engine import AblationEngine
    from compute.datasets.sources import stratified_subset
    from compute.images.actmax import activation_maps
    from compute.measure.stats import evaluation_stats
    from compute.measure.train import TrainConfig, train

    model, data, eval_set = _trained(args)
    eval_small = stratified_subset(eval_set, min(args.probe_size, 1000))
    probes = model.probe_modules()
    last = list(probes)[-1]  # the images stage's time is activation maximization's, mostly
    mean = torch.full((data.shape[0],), 0.3)
    from compute.nets.forward import run_to

    with torch.no_grad():
        n_last = int(run_to(model, probes[last], data.floats(0, 1, args.device))[1].shape[1])

    def train_epoch() -> None:
        m = _model(args, data)
        train(m, m.probe_modules(), data, stratified_subset(eval_set, 100), TrainConfig(epochs=1, seed=0), args.device)

    work = {
        "train": train_epoch,
        "statistics": lambda: evaluation_stats(model, probes, eval_small, device=args.device),
        "ablation": lambda: AblationEngine(model, device=args.device).single_unit(eval_small),
        "images (actmax)": lambda: activation_maps(model, probes[last], range(n_last), data.shape, mean,
                                                   _actmax_config(steps=4, tol=0.0), args.device),
    }
    out: dict[str, Any] = {}
    with _threads(threads):
        for name, fn in work.items():
            idle, busy = [], []
            for _ in range(2):
                for sink, ctx in ((idle, nullcontext()), (busy, busy_process())):
                    with ctx:
                        start = time.perf_counter()
                        fn()
                        _sync(args.device)
                        sink.append(time.perf_counter() - start)
            out[name] = {"idle_s": min(idle), "busy_s": min(busy), "keep": min(idle) / min(busy)}
    return {"stages": out, "contention_keep": min(v["keep"] for v in out.values())}


SECTIONS = {"run": run_section, "trace": trace_section, "actmax": actmax_section, "contention": contention_section}


def _measure(args: argparse.Namespace, section: str, setting: str) -> dict[str, Any]:
    import torch

    os.environ.setdefault("NEURON_ATLAS_QUIET", "1")
    threads = None if setting == "default" else int(setting)
    load = os.getloadavg()
    with _threads(threads):
        n_threads = torch.get_num_threads()
    result = SECTIONS[section](args, threads)
    return result | {"load_before": load, "load_after": os.getloadavg(), "torch_threads": n_threads}


def worker(args: argparse.Namespace) -> None:
    print("RESULT " + json.dumps(_measure(args, args.worker, args.worker_threads)))


# ---------------------------------------------------------------- driver: runs workers, prints side by side

def _run_worker(code: Path, section: str, threads: str, argv: list[str]) -> dict[str, Any] | None:
    """One section on ``code``'s compute package: in this process for this checkout, else in a subprocess."""
    if code == ROOT:
        return _measure(parser().parse_args(argv), section, threads)
    env = {**os.environ, "NEURON_ATLAS_QUIET": "1", "PYTHONPATH": str(code)}
    cmd = [sys.executable, str(Path(__file__).resolve()), *argv, "--worker", section, "--worker-threads", threads]
    r = subprocess.run(cmd, cwd=code, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        print(f"{section} on {code} failed:\n{r.stderr[-3000:]}", file=sys.stderr)
        return None
    line = next(x for x in r.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


def _load(r: dict[str, Any]) -> str:
    return f"load average {r['load_before'][0]:.1f} -> {r['load_after'][0]:.1f}"


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="lenet5")
    ap.add_argument("--dataset", default="fashion-mnist")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--train-size", type=int, default=None, help="stratified training subset (default: all)")
    ap.add_argument("--eval-size", type=int, default=None, help="stratified evaluation subset (default: all)")
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--actmax-steps", type=int, default=None, help="cap of the run's actmax steps (default: the code's)")
    ap.add_argument("--top-k", type=int, default=None, help="the run's top/bottom examples per unit (default: the code's)")
    ap.add_argument("--threads", default="1,0",
                    help="thread settings to measure, comma-separated (0 = every CPU); the first one runs the "
                         "whole run, contention is measured for each")
    ap.add_argument("--probe-size", type=int, default=3000,
                    help="training examples for the trace, actmax and contention measurements")
    ap.add_argument("--ratio-steps", type=int, default=8, help="actmax steps timed per layer for the step ratio")
    ap.add_argument("--figure-steps", type=int, default=128,
                    help="steps of the convergence figure (0: skip it)")
    ap.add_argument("--sections", default="run,trace,actmax,contention")
    ap.add_argument("--before", type=Path, default=None, help="also measure the code of this checkout (before)")
    ap.add_argument("--worker", choices=tuple(SECTIONS), help=argparse.SUPPRESS)
    ap.add_argument("--worker-threads", default="default", help=argparse.SUPPRESS)
    return ap


def main() -> None:
    args = parser().parse_args()
    if args.worker:
        return worker(args)
    sys.path.insert(0, str(ROOT))  # this checkout's sections run in this process

    argv = [a for a in sys.argv[1:]]
    for flag in ("--before",):
        if flag in argv:
            i = argv.index(flag)
            del argv[i:i + 2]
    settings = [s.strip() for s in args.threads.split(",")]
    codes = [("after", ROOT)] + ([("before", args.before.resolve())] if args.before else [])
    sections = [s.strip() for s in args.sections.split(",")]
    size = f"train {args.train_size or 'all'}, eval {args.eval_size or 'all'}, {args.epochs} epochs"
    print(f"{args.model} on {args.dataset} ({size}), device {args.device}, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f}")
    failed: list[tuple[str, str, str]] = []
    for section in sections:
        # The whole run, the trace and the actmax ratio under the default (first) setting; before's
        # code has its own (torch's default). Contention under every setting.
        todo = [(label, code, settings[0] if label == "after" else "default") for label, code in codes]
        if section == "contention":
            todo = [(label, code, s) for s in settings for label, code in codes[:1]] + \
                   [(label, code, "default") for label, code in codes[1:]]
        runs = {(section, label, threads): _run_worker(code, section, threads, argv) for label, code, threads in todo}
        failed += [k for k, r in runs.items() if r is None]
        _report({k: r for k, r in runs.items() if r is not None}, settings)
        sys.stdout.flush()
    if failed:
        raise SystemExit(f"failed: {failed}")


def _ratio(name: str, r: dict[str, Any], label: str, headline: bool = True) -> None:
    """``name=value`` for the code measured now under its default; other settings as plain text."""
    if label == "after" and headline:
        print(f"{name}={r[name]:.3f}")
    else:
        print(f"{name} ({label}{'' if headline else ', threads ' + str(r['torch_threads'])}): {r[name]:.3f}")


def _report(results: dict[tuple[str, str, str], dict[str, Any]], settings: list[str]) -> None:
    def pick(section: str, label: str) -> list[tuple[str, dict[str, Any]]]:
        return [(t, r) for (s, lab, t), r in results.items() if s == section and lab == label]

    for label in ("before", "after"):
        for threads, r in pick("run", label):
            print(f"\n[{label}] whole run, threads {threads} ({_load(r)}): {r['total']:.1f} s, "
                  f"test acc {r['test_acc']:.4f}, {int(r['units'])} units")
            for name, sec in r["seconds"].items():
                cpu = r.get("cpu", {}).get(name)
                print(f"  {name:<12} {sec:8.2f} s" + ("" if cpu is None else f"  (CPU {cpu:8.2f} s)"))
            for name, sec in r["images"].items():
                print(f"    images: {name:<28} {sec:7.2f} s")
            _ratio("after_training_over_training", r, label)
            if "after_training_over_training_cpu" in r:
                _ratio("after_training_over_training_cpu", r, label)
        for threads, r in pick("trace", label):
            print(f"\n[{label}] trace, threads {threads} ({_load(r)}): epoch {r['trace_s']:.2f} s with the trace, "
                  f"{r['plain_s']:.2f} s without")
            _ratio("trace_overhead", r, label)
        for threads, r in pick("actmax", label):
            print(f"\n[{label}] activation maximization, threads {threads} ({_load(r)})")
            for layer, v in r["layers"].items():
                print(f"  {layer:<10} {v['images']:>5} images: step {v['step_s'] * 1e3:8.1f} ms, "
                      f"forward+backward {v['fwd_bwd_s'] * 1e3:8.1f} ms, ratio {v['ratio']:.2f}")
            _ratio("actmax_step_over_fwd_bwd", r, label)
            for layer, fig in r["figure"].items():
                if not fig:
                    continue
                print(f"  convergence figure, {layer}: after N steps (tol=0), median relative image change over "
                      f"the last window | objective reached vs the last window, median / p10")
                for s, row in fig["windows"].items():
                    print(f"    N={int(s):>4}  change {row['change_median']:.3f}  objective {row['objective_median']:.3f}"
                          f" / {row['objective_p10']:.3f}")
                print(f"    default (early stop): {fig['default_mean_steps']:.1f} steps on average, best restart's "
                      f"activation {fig['default_value_median']:.3f} (median) / {fig['default_value_p10']:.3f} (p10) "
                      f"of the {max(int(s) for s in fig['windows'])}-step one")
        for threads, r in pick("contention", label):
            print(f"\n[{label}] contention, threads {threads} ({_load(r)}, torch threads {r['torch_threads']})")
            for name, v in r["stages"].items():
                print(f"  {name:<16} idle {v['idle_s']:7.2f} s, beside a busy process {v['busy_s']:7.2f} s, "
                      f"keep {v['keep']:.2f}")
            _ratio("contention_keep", r, label, threads == settings[0])


if __name__ == "__main__":
    main()
