"""``python -m compute``: run the compute step and list the runs of a warehouse."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from compute.ablation.sequential import DEFAULT_WIDTH
from compute.datasets.names import DATASETS
from compute.errors import AtlasError, ConfigError
from compute.images.config import ActMaxConfig, ImageConfig
from compute.nets.catalog import MODEL_NAMES, MODEL_OPTIONS, known_model, model_options
from compute.threads import DEFAULT_THREADS
from warehouse import INTERRUPTED_AT_START, publish
from warehouse.cleanup import remove_leftover, staging_leftovers
from warehouse.layout import ENV_VAR, check_run_id, default_path, staging_dir
from warehouse.parse import INT32_MAX, SEED_MAX, ParseError, bounded_int, finite_float
from warehouse.text import term
from warehouse.validate import list_runs


#: Largest count or size accepted (epochs, batch size, widths, ...): beyond it nothing sensible runs.
MAX_COUNT = INT32_MAX


def _int(text: str, lo: int, hi: int, what: str) -> int:
    """``warehouse.parse.bounded_int`` as an argparse type: its message becomes the usage error."""
    try:
        return bounded_int(text, lo, hi, what)
    except ParseError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _float(text: str, lo: float, hi: float, what: str, open_lo: bool = False) -> float:
    """A finite number in [lo, hi] (or (lo, hi]): no nan, no inf."""
    try:
        return finite_float(text, lo, hi, what, open_lo)
    except ParseError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _positive(text: str) -> int:
    return _int(text, 1, MAX_COUNT, "a positive integer")


def _count(text: str) -> int:
    """A non-negative integer."""
    return _int(text, 0, MAX_COUNT, "a non-negative integer")


def _seed(text: str) -> int:
    return _int(text, 0, SEED_MAX, "a seed")


def _lr(text: str) -> float:
    return _float(text, 0.0, 1e3, "a learning rate", open_lo=True)


def _weight(text: str) -> float:
    return _float(text, 0.0, 1e6, "a non-negative number")


def _width(text: str) -> float:
    return _float(text, 0.0, 64.0, "a width multiplier", open_lo=True)


def _interval_width(text: str) -> float:
    return _float(text, 0.0, 100.0, "an interval width in loss units", open_lo=True)


def _model_name(text: str) -> str:
    if known_model(text):
        return text
    raise argparse.ArgumentTypeError(f"unknown model {text!r}; choose one of: {', '.join(MODEL_NAMES)}")


def _add_model_options(p: argparse.ArgumentParser) -> None:
    """``--model`` and every built-in model's own options, from the model registry."""
    p.add_argument("--model", default="lenet5", type=_model_name, help=f"one of {', '.join(MODEL_NAMES)}")
    for option in MODEL_OPTIONS:  # None, not the default: argparse would parse a text default (torch, seconds)
        p.add_argument(f"--{option.name}", type=_argparse_type(option.parse), default=None, help=option.help)


def _fill_model_options(args: argparse.Namespace) -> None:
    """The model options left out of a command line, set to their defaults."""
    for option in MODEL_OPTIONS:
        if getattr(args, option.name, False) is None:
            setattr(args, option.name, option.default)


def _argparse_type(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """A model option's parser, its ConfigError turned into argparse's usage error."""
    def convert(text: str) -> Any:
        try:
            return parse(text)
        except ConfigError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    return convert


def _patterns(text: str) -> tuple[str, ...]:
    patterns = tuple(p.strip() for p in text.split(",") if p.strip())
    if not patterns:
        raise argparse.ArgumentTypeError("--layers needs at least one name or pattern")
    return patterns


def _shape(text: str) -> tuple[int, int, int]:
    parts = text.split(",")
    if len(parts) != 3:
        raise argparse.ArgumentTypeError(f"expected C,H,W such as 1,28,28, got {text!r}")
    c, h, w = (_int(v, 1, 65_536, "C,H,W of positive integers such as 1,28,28") for v in parts)
    return c, h, w


def _fraction(text: str) -> float:
    return _float(text, 0.0, 1.0, "a fraction")


def _gpus(text: str) -> float:
    return _float(text, 0.0, 1.0, "a fraction of a GPU", open_lo=True)


def _fractions(text: str) -> tuple[float, ...]:
    return tuple(_fraction(v) for v in text.split(","))


def _kinds(text: str) -> tuple[str, ...]:
    from compute.datasets.planted import KINDS

    kinds = tuple(k.strip() for k in text.split(",") if k.strip())
    bad = [k for k in kinds if k not in KINDS]
    if not kinds or bad:
        raise argparse.ArgumentTypeError(f"unknown kind(s) {', '.join(bad) or repr(text)}; choose from {', '.join(KINDS)}")
    return tuple(dict.fromkeys(kinds))


def _seeds(text: str) -> tuple[int, ...]:
    return tuple(_seed(v) for v in text.split(","))


def _run_id(text: str) -> str:
    try:
        return check_run_id(text)
    except AtlasError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _add_run_options(p: argparse.ArgumentParser) -> None:
    """The options shared by `run` and `sweep`."""
    _add_model_options(p)
    p.add_argument("--dataset", default="mnist-5k", metavar="NAME", help=f"one of {', '.join(DATASETS)}")
    p.add_argument("--data-dir", default=None,
                   help="folder holding the files of mnist, fashion-mnist or cifar10 (an error if they are not there); "
                        "without it: Debian's Fashion-MNIST, else a download")
    p.add_argument("--eval-dataset", default=None, metavar="NAME",
                   help="compute statistics and ablations on this dataset's test split instead, "
                        "e.g. idx:../shared/data/mnist")
    p.add_argument("--epochs", type=_count, default=12,
                   help="epochs (the cap, with --until-train-acc); 0 with --checkpoint: analyze without training")
    p.add_argument("--until-train-acc", type=_fraction, default=None,
                   help="stop training once an epoch's training accuracy reaches this (e.g. 0.99)")
    p.add_argument("--checkpoint", default=None, help="load these trained weights (a state dict) first")
    p.add_argument("--layers", type=_patterns, default=None,
                   help="probe only these layers: comma-separated names or glob patterns (e.g. 'layer4.*,fc'); "
                        "'!PATTERN' leaves layers out (e.g. '!*.se.*')")
    p.add_argument("--ablate", default="zero", choices=("zero", "mean"),
                   help="what an ablated unit's output is set to: zero (default, Morcos et al.) or its mean output on "
                        "the evaluation set (docs/metrics.md, Non-rectified activations)")
    p.add_argument("--batch-size", type=_positive, default=64)
    p.add_argument("--lr", type=_lr, default=1e-3)
    p.add_argument("--train-size", type=_positive, default=None, help="train on a stratified subset of N examples")
    p.add_argument("--eval-size", type=_positive, default=None, help="evaluate on a stratified subset of N examples")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--threads", type=_count, default=DEFAULT_THREADS,
                   help=f"torch threads for every stage, 0 = every CPU (default {DEFAULT_THREADS}: keeps its "
                        "speed on a machine shared with other busy processes; README.md, Threads)")
    p.add_argument("--train-curves", action="store_true",
                   help="also draw the cumulative ablation curves on the training set, with its training labels "
                        "(always on for sweeps)")
    p.add_argument("--ablation-budget", default="full", choices=("full", "sequential"),
                   help="full: every unit ablated on every evaluation example (default); sequential: each unit "
                        "stops once its loss-change interval excludes zero or is narrower than --ablation-width "
                        "(docs/metrics.md, Sequential ablation)")
    p.add_argument("--ablation-width", type=_interval_width, default=DEFAULT_WIDTH, metavar="W",
                   help=f"with --ablation-budget sequential: interval width that settles a unit (default {DEFAULT_WIDTH})")
    _add_image_options(p)
    _add_executor_options(p)
    _add_warehouse(p)


def _add_executor_options(p: argparse.ArgumentParser) -> None:
    ex = p.add_argument_group("executor", "where evaluation, statistics, ablation and both curves stages run (same "
                                           "results either way)")
    ex.add_argument("--executor", default="in-process", choices=("in-process", "ray"),
                    help="in-process (default) or ray: work items on a Ray cluster's workers")
    ex.add_argument("--ray-address", default=None, metavar="ADDR",
                    help="join this Ray cluster (auto, ray://host:port); default: start Ray on this machine")
    ex.add_argument("--ray-workers", type=_positive, default=None, metavar="N",
                    help="Ray actors to start (default: one per CPU of the cluster, or per GPU with --device cuda)")
    ex.add_argument("--ray-gpus", type=_gpus, default=1.0, metavar="FRACTION",
                    help="GPUs each Ray actor reserves with --device cuda, fractions allowed (default 1)")


def _executor(args: argparse.Namespace):
    from compute.distributed.executor import make_executor

    if args.executor != "ray" and (args.ray_address or args.ray_workers):
        raise ConfigError("--ray-address and --ray-workers need --executor ray.")
    return make_executor(args.executor, args.ray_address, args.ray_workers, args.ray_gpus, args.device)


def _add_image_options(p: argparse.ArgumentParser) -> None:
    img = p.add_argument_group("images", "visual evidence per unit (table unit_images, docs/metrics.md)")
    img.add_argument("--no-images", action="store_true", help="skip the images stage (unit_images stays empty)")
    img.add_argument("--top-k", type=_positive, default=9, help="top and bottom examples per unit (default 9)")
    am = ActMaxConfig()
    img.add_argument("--actmax-steps", type=_positive, default=am.steps,
                     help=f"gradient steps at most (default {am.steps})")
    img.add_argument("--actmax-tol", type=_fraction, default=am.tol,
                     help=f"stop an image once its activation rises by less than this fraction over {am.window} "
                          f"steps (default {am.tol}; 0: never stop early)")
    img.add_argument("--actmax-restarts", type=_positive, default=am.restarts,
                     help=f"restarts from different noise (default {am.restarts})")
    img.add_argument("--actmax-lr", type=_lr, default=am.lr, help=f"Adam step size (default {am.lr})")
    img.add_argument("--actmax-l2", type=_weight, default=am.l2, help=f"L2 decay weight (default {am.l2})")
    img.add_argument("--actmax-tv", type=_weight, default=am.tv, help=f"total-variation weight (default {am.tv})")
    img.add_argument("--actmax-jitter", type=_count, default=am.jitter, help=f"jitter in pixels (default {am.jitter})")
    img.add_argument("--actmax-blur-every", type=_positive, default=am.blur_every,
                     help=f"blur every N steps (default {am.blur_every})")
    img.add_argument("--actmax-blur-sigma", type=_width, default=am.blur_sigma,
                     help=f"blur sigma in pixels (default {am.blur_sigma})")


def _image_config(args: argparse.Namespace, seed: int) -> ImageConfig | None:
    if args.no_images:
        return None
    return ImageConfig(args.top_k, ActMaxConfig(
        steps=args.actmax_steps, restarts=args.actmax_restarts, lr=args.actmax_lr, l2=args.actmax_l2,
        tv=args.actmax_tv, jitter=args.actmax_jitter, blur_every=args.actmax_blur_every,
        blur_sigma=args.actmax_blur_sigma, tol=args.actmax_tol, seed=seed))


def _add_warehouse(p: argparse.ArgumentParser) -> None:
    p.add_argument("--warehouse", type=Path, default=None,
                   help=f"warehouse folder (default: ${ENV_VAR} or {default_path()})")


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m compute", description=__doc__)
    sub = ap.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="train a model, probe every unit and publish a run")
    _add_run_options(run)
    run.add_argument("--seed", type=_seed, default=0)
    run.add_argument("--label-noise", type=_fraction, default=0.0,
                     help="fraction of training labels replaced by random labels (memorization experiments)")
    run.add_argument("--run-id", type=_run_id, default=None,
                     help="1-128 letters, digits, '.', '_' or '-' (default: <model>-<dataset>-s<seed>-<UTC time>)")
    run.add_argument("--resume", action="store_true",
                     help="continue the interrupted run --run-id from its last finished stage, "
                          "with its saved settings (other flags are ignored)")

    sweep = sub.add_parser("sweep", help="one run per label-noise level and seed, grouped as an experiment")
    _add_run_options(sweep)
    sweep.add_argument("--label-noise", type=_fractions, default=(0.0, 0.5, 1.0), help="e.g. 0,0.5,1.0")
    sweep.add_argument("--seeds", type=_seeds, default=(0,), help="e.g. 0,1")
    sweep.add_argument("--experiment", type=_run_id, default=None,
                       help="experiment name, also the run-id prefix (default: <model>-<dataset>-sweep)")

    exp = sub.add_parser("experiment", help="a planted-ground-truth experiment: train, publish, and check that "
                                            "the tool recovers the planted subgroup")
    exp.add_argument("name", choices=["planted", "crossed-sevens"],
                     help="planted: the benchmark over --kinds and --seeds; crossed-sevens: that kind, one --seed")
    _add_warehouse(exp)
    exp.add_argument("--seed", type=_seed, default=0, help=f"crossed-sevens: the seed, 0 to {SEED_MAX:,} (default 0)")
    exp.add_argument("--kinds", type=_kinds, default=("crossed-sevens", "corner-mark", "thick-strokes"),
                     help="planted: comma-separated kinds (crossed-sevens, corner-mark, thick-strokes)")
    exp.add_argument("--seeds", type=_seeds, default=(0, 1, 2, 3, 4), help="planted: e.g. 0,1,2,3,4")
    exp.add_argument("--epochs", type=_positive, default=12)
    exp.add_argument("--eval-size", type=_positive, default=None,
                     help="stratified subset of the evaluation set (default: all of it)")
    exp.add_argument("--run-id", type=_run_id, default=None, help="crossed-sevens: default crossed-sevens-s<seed>")

    ls = sub.add_parser("list", help="list the runs of a warehouse (broken ones with the reason)")
    _add_warehouse(ls)

    gc = sub.add_parser("gc", help="list (and with --remove delete) staging left by killed or interrupted runs")
    gc.add_argument("--remove", action="store_true", help="delete them (runs being computed are never touched)")
    _add_warehouse(gc)

    lay = sub.add_parser("layers", help="list a model's probe-able layers with unit counts and receptive fields")
    _add_model_options(lay)
    lay.add_argument("--input-shape", type=_shape, default=(1, 28, 28), help="C,H,W of one image (default 1,28,28)")
    lay.add_argument("--classes", type=_positive, default=10)
    return ap


def _config(args: argparse.Namespace, **overrides: object):
    from compute.datasets.names import check_data_dir, check_spec
    from compute.run.config import RunConfig  # no torch: a mistake here is named before torch loads

    check_spec(args.dataset)
    if args.eval_dataset is not None:
        check_spec(args.eval_dataset, "--eval-dataset")
    # Here, not in load_data: the what-if of a stored run that once passed an unread --data-dir still loads.
    check_data_dir(args.data_dir, args.dataset, args.eval_dataset)
    return RunConfig(
        model=args.model, dataset=args.dataset, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
        data_dir=args.data_dir, eval_dataset=args.eval_dataset, train_size=args.train_size,
        eval_size=args.eval_size, device=args.device, layers=args.layers,
        checkpoint=args.checkpoint, until_train_acc=args.until_train_acc, train_curves=args.train_curves,
        threads=args.threads, ablate=args.ablate, ablation_budget=args.ablation_budget,
        ablation_width=args.ablation_width,
        images=_image_config(args, int(overrides.get("seed", 0))),
        **{o.name: getattr(args, o.name) for o in MODEL_OPTIONS}, **overrides,  # type: ignore[arg-type]
    )


def _print_summary(summary) -> None:
    f = summary.figures
    print(f"published run {summary.run_id} -> {summary.path}")
    print(f"  train acc {f['train_acc']:.4f}   test acc {f['test_acc']:.4f}   "
          f"eval acc {f['eval_acc']:.4f} (loss {f['eval_loss']:.4f})")
    print(f"  {int(f['units'])} units probed, {int(f['images'])} images, in {f['duration_s']:.1f} s")


def _run(args: argparse.Namespace, root: Path) -> int:
    if args.resume and not args.run_id:
        raise ConfigError("--resume needs the --run-id of the interrupted run (see the folders in "
                          f"{staging_dir(root)}).")
    cfg = _config(args, seed=args.seed, label_noise=args.label_noise, run_id=args.run_id)
    if not args.resume:  # a resumed run is checked on its saved configuration
        cfg.require_weights()
    from compute.run.pipeline import compute_run  # torch: after the settings are checked

    executor = _executor(args)
    try:
        _print_summary(compute_run(cfg, root, resume=args.resume, executor=executor))
    finally:
        executor.close()
    return 0


def _sweep(args: argparse.Namespace, root: Path) -> int:
    """Every (label noise, seed) pair; runs already published are kept, so a sweep can be completed."""
    experiment = args.experiment or f"{args.model}-{args.dataset.split(':')[0]}-sweep"
    published = {r.run_id for r in list_runs(root) if r.ok}
    executor = _executor(args)
    try:
        _sweep_runs(args, root, experiment, published, executor)
    finally:
        executor.close()
    print(f"experiment {experiment}: {len(args.label_noise) * len(args.seeds)} runs in {root}")
    return 0


def _sweep_runs(args: argparse.Namespace, root: Path, experiment: str, published: set[str], executor) -> None:
    from compute.run.pipeline import compute_run

    for noise in args.label_noise:
        for seed in args.seeds:
            run_id = f"{experiment}-noise{noise:g}-s{seed}"
            if run_id in published:
                print(f"run {run_id} already published; skipping")
                continue
            print(f"== {run_id}", flush=True)
            args.train_curves = True  # memorization shows on the training labels (Morcos et al.)
            cfg = _config(args, seed=seed, label_noise=noise, run_id=run_id, experiment=experiment)
            _print_summary(compute_run(cfg, root, executor=executor))


def _experiment(args: argparse.Namespace, root: Path) -> int:
    """Train on planted subgroups, publish, check. crossed-sevens exits 1 when the subgroup is not found;
    planted prints and stores the benchmark's table (runs already in the warehouse are only checked)."""
    from dataclasses import replace

    from compute.run.planted import SHARED_MNIST, default_config, run_experiment, table
    from warehouse.planted import write_results

    if args.name == "crossed-sevens":
        jobs = [("crossed-sevens", args.seed)]
    else:
        jobs = [(kind, seed) for seed in args.seeds for kind in args.kinds]  # every kind early, when stopped
    reports = []
    for kind, seed in jobs:
        cfg = default_config(kind, seed, args.epochs, args.eval_size)
        if args.run_id and args.name == "crossed-sevens":
            cfg = replace(cfg, run_id=args.run_id)
        if cfg.eval_dataset is None and not reports:
            print(f"note: the real MNIST test set is not at {SHARED_MNIST} (set $NEURON_ATLAS_MNIST); evaluating on "
                  "mnist-5k's test split (fewer planted examples, less power).", file=sys.stderr)
        summary, report = run_experiment(root, cfg, kind)
        if summary is not None:
            _print_summary(summary)
        print("\n".join(report.lines()), flush=True)
        reports.append(report)
        write_results(root, [report.row()])
    if args.name == "crossed-sevens":
        return 0 if reports[0].found else 1
    print("\n".join(table(reports)))
    print(f"results: {root / 'experiments' / 'planted.csv'}")
    return 0


def _cell(value: object, limit: int = 80) -> str:
    """A manifest value for one cell of the listing: escaped, and cut (a manifest may hold any JSON there)."""
    text = term(value)
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _list(root: Path, explicit: bool) -> int:
    """The runs of the warehouse at ``root``; a folder given with --warehouse must exist (a typo there
    would otherwise read as an empty warehouse)."""
    root = Path(root)
    if explicit and not root.exists():
        raise ConfigError(f"no warehouse at {root}: the folder does not exist. Check the path, or compute a run "
                          f"into it first: python -m compute run --warehouse {root}")
    runs = list_runs(root)
    if not runs:
        print(f"no runs in {root}. Compute one: python -m compute run --warehouse {root}")
        return 0
    print(f"{'run_id':<48} {'model':<14} {'dataset':<16} status")
    for r in runs:  # every stored value through term(): escape codes and line breaks are shown, never obeyed
        m = r.manifest or {}
        status = "ok" if r.ok else f"BROKEN: {term(r.error)}"
        model, dataset = (_cell(m.get(k, "?")) for k in ("model", "dataset"))
        print(f"{term(r.run_id):<48} {model:<14} {dataset:<16} {status}")
    try:
        leftovers = staging_leftovers(root)
    except AtlasError as e:  # the runs are listed; the staging problem is a note beside them
        print(f"note: {term(e)}")
        return 0
    if leftovers:
        print(f"{len(leftovers)} run id(s) left staging files behind (killed or interrupted); "
              f"see python -m compute gc --warehouse {root}")
    return 0


def _gc(root: Path, remove: bool) -> int:
    """Staging no computation is using: leftovers of published runs and abandoned interrupted runs."""
    leftovers = staging_leftovers(root)
    if not leftovers:
        print(f"no staging leftovers in {root}")
        return 0
    for lo in leftovers:
        if lo.published:
            what = "leftovers of the published run (safe to remove)"
        elif lo.stages:
            what = f"interrupted run with {lo.stages} finished stage(s): continue with --resume --run-id {lo.run_id}"
        else:
            what = "abandoned staging without finished stages"
        print(f"{term(lo.run_id)}: {what}\n  " + "\n  ".join(term(p) for p in lo.paths))
        if remove:
            remove_leftover(root, lo)
            print("  removed")
    if not remove:
        print("remove them with --remove")
    return 0


def _layers(args: argparse.Namespace) -> int:
    import torch

    from compute.nets.models import ModelSpec, build_model
    from compute.nets.models import input_error, layer_shapes
    from compute.nets.receptive_field import centre_field

    options = model_options(args.model, vars(args))
    model = build_model(ModelSpec(args.model, args.input_shape, args.classes, options))
    try:
        shapes = layer_shapes(model, args.input_shape)
    except RuntimeError as e:
        raise input_error(args.model, args.input_shape, e) from None
    from compute.nets.activations import point_kind, unit_dim
    from compute.nets.receptive_field import token_boxes

    image = tuple(args.input_shape[1:])
    modules = model.probe_modules()
    print(f"{'layer':<28} {'kind':<7} {'activation':<11} {'layout':<7} {'units':>6}  {'shape':<14} "
          f"receptive field (centre unit)")
    for name, shape in shapes.items():
        last = unit_dim(modules[name]) != 1
        kind, layout = {1: ("linear", "NC"), 2: ("tokens", "NTC") if last else ("conv1d", "NCL"),
                        3: ("conv", "NHWC" if last else "NCHW")}.get(len(shape), ("other", f"{len(shape) + 1}-d"))
        if kind == "conv":
            field = centre_field(model, name, args.input_shape)
            rf = "x".join(map(str, field)) + (" (whole image)" if field == image else "")
        elif kind == "tokens":
            boxes = token_boxes(model, name, args.input_shape)
            rf = "whole input" if boxes is None else \
                f"one {boxes[-1, 0, 2] - boxes[-1, 0, 0]}x{boxes[-1, 0, 3] - boxes[-1, 0, 1]} patch per token"
        else:
            rf = "whole input"
        print(f"{name:<28} {kind:<7} {point_kind(modules[name]).name:<11} {layout:<7} {shape[0]:>6}  "
              f"{'x'.join(map(str, shape)):<14} {rf}")
    for name, why in getattr(model, "skipped", {}).items():
        print(f"{name:<28} not probed: {why}")  # after the table: the summary line stays last
    print(f"{len(shapes)} layers, {sum(s[0] for s in shapes.values())} units "
          f"(input {'x'.join(map(str, args.input_shape))}, torch {torch.__version__})")
    return 0


def main(argv: list[str] | None = None) -> int:
    try:
        args = parser().parse_args(argv)  # a model option's parser may import torch (seconds)
        _fill_model_options(args)
    except KeyboardInterrupt:
        print(INTERRUPTED_AT_START, file=sys.stderr)
        return 130
    root = getattr(args, "warehouse", None) or default_path()
    published_before = len(publish.PUBLISHED)
    try:
        if args.command == "run":
            return _run(args, root)
        if args.command == "sweep":
            return _sweep(args, root)
        if args.command == "experiment":
            return _experiment(args, root)
        if args.command == "layers":
            return _layers(args)
        if args.command == "gc":
            return _gc(root, args.remove)
        return _list(root, getattr(args, "warehouse", None) is not None)
    except AtlasError as e:
        print(f"error: {term(e, lines=True)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(_interrupted(published_before, root), file=sys.stderr)
        return 130


def _interrupted(published_before: int, root: Path) -> str:
    """What is true after Ctrl-C: which runs this command published (whole), and what is left to resume."""
    done = publish.PUBLISHED[published_before:]
    lines = [f"interrupted. Published and complete: {', '.join(p.name for p in done)}." if done
             else "interrupted: nothing was published by this command."]
    try:
        leftovers = staging_leftovers(root)
    except AtlasError as e:
        return " ".join([*lines, str(e)])
    if any(not lo.published and lo.stages for lo in leftovers):
        lines.append("Finished stages of the interrupted run are kept; continue with --resume --run-id "
                     + ", ".join(lo.run_id for lo in leftovers if not lo.published and lo.stages) + ".")
    if any(lo.published for lo in leftovers):
        lines.append(f"Staging leftovers of published runs remain; remove them with python -m compute gc --remove "
                     f"--warehouse {root}.")
    return " ".join(lines)
