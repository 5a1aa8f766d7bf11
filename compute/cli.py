"""``python -m compute``: run the compute step and list the runs of a warehouse."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from compute.data import DATASETS
from compute.errors import AtlasError
from compute.models import MODELS
from warehouse.store import ENV_VAR, WarehouseError, default_path, list_runs


def _widths(text: str) -> tuple[int, ...]:
    try:
        widths = tuple(int(w) for w in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"widths must be comma-separated integers, got {text!r}") from None
    if not widths or min(widths) < 1:
        raise argparse.ArgumentTypeError(f"widths must be positive, got {text!r}")
    return widths


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _add_warehouse(p: argparse.ArgumentParser) -> None:
    p.add_argument("--warehouse", type=Path, default=None,
                   help=f"warehouse folder (default: ${ENV_VAR} or {default_path()})")


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m compute", description=__doc__)
    sub = ap.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="train a model, probe every unit and publish a run")
    run.add_argument("--model", default="lenet5", choices=MODELS)
    run.add_argument("--dataset", default="mnist-5k", metavar="NAME", help=f"one of {', '.join(DATASETS)}")
    run.add_argument("--data-dir", default=None, help="folder holding the dataset's files (else download)")
    run.add_argument("--eval-dataset", default=None, metavar="NAME",
                     help="compute statistics and ablations on this dataset's test split instead, "
                          "e.g. idx:../shared/data/mnist")
    run.add_argument("--epochs", type=_positive, default=12)
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--batch-size", type=_positive, default=64)
    run.add_argument("--lr", type=float, default=1e-3)
    run.add_argument("--train-size", type=_positive, default=None, help="train on a stratified subset of N examples")
    run.add_argument("--eval-size", type=_positive, default=None, help="evaluate on a stratified subset of N examples")
    run.add_argument("--widths", type=_widths, default=(128, 128), help="mlp hidden widths, e.g. 128,128")
    run.add_argument("--width", type=float, default=0.25, help="cifar-convnet width multiplier")
    run.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    run.add_argument("--run-id", default=None, help="default: <model>-<dataset>-s<seed>-<UTC time>")
    run.add_argument("--train-curves", action="store_true",
                     help="also draw the cumulative ablation curves on the training set (split 'train')")
    _add_warehouse(run)

    ls = sub.add_parser("list", help="list the runs of a warehouse")
    _add_warehouse(ls)
    return ap


def _run(args: argparse.Namespace, root: Path) -> int:
    from compute.pipeline import RunConfig, compute_run  # torch loads only for this command

    cfg = RunConfig(
        model=args.model, dataset=args.dataset, epochs=args.epochs, seed=args.seed, batch_size=args.batch_size,
        lr=args.lr, data_dir=args.data_dir, eval_dataset=args.eval_dataset, train_size=args.train_size,
        eval_size=args.eval_size, widths=args.widths, width=args.width, device=args.device, run_id=args.run_id,
        train_curves=args.train_curves,
    )
    summary = compute_run(cfg, root)
    f = summary.figures
    print(f"published run {summary.run_id} -> {summary.path}")
    print(f"  train acc {f['train_acc']:.4f}   test acc {f['test_acc']:.4f}   "
          f"eval acc {f['eval_acc']:.4f} (loss {f['eval_loss']:.4f})")
    print(f"  {int(f['units'])} units probed in {f['duration_s']:.1f} s")
    return 0


def _list(root: Path) -> int:
    runs = list_runs(root)
    if not runs:
        print(f"no runs in {root}. Compute one: python -m compute run --warehouse {root}")
        return 0
    print(f"{'run_id':<48} {'model':<14} {'dataset':<16} status")
    for r in runs:
        m = r.manifest or {}
        status = "ok" if r.ok else f"BROKEN: {r.error}"
        print(f"{r.run_id:<48} {str(m.get('model', '?')):<14} {str(m.get('dataset', '?')):<16} {status}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    root = args.warehouse or default_path()
    try:
        if args.command == "run":
            return _run(args, root)
        return _list(root)
    except (AtlasError, WarehouseError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: nothing was published.", file=sys.stderr)
        return 130
