"""The planted-subgroup benchmark: every kind x seed trained, published and checked, its table printed,
and the README's picture drawn (docs/img/planted.png).

    NEURON_ATLAS_MNIST=../shared/data/mnist python benchmarks/planted.py --warehouse /tmp/planted \\
        [--kinds crossed-sevens,corner-mark,thick-strokes] [--seeds 0,1,2,3,4] [--epochs 12]

Runs already in the warehouse are only checked, so a stopped benchmark continues where it was;
``--picture-only`` draws the picture from the stored results table. The picture: per kind, marked and relabelled examples from the evaluation set, then for the found unit of
the first seed where the subgroup was found, the mean image of the target-class examples it fires on
beside the class's mean.
"""

from __future__ import annotations

import argparse
import tempfile
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from compute.datasets.planted import KINDS
from compute.run.planted import default_config, run_experiment, table
from compute.run.unit_evidence import firing_split
from compute.run.whatif import load_run
from warehouse.planted import read_results, write_results
from warehouse.layout import run_dir as run_folder

OUT = Path(__file__).resolve().parents[1] / "docs" / "img" / "planted.png"
SCALE, PER_GROUP = 3, 6


def _tile(images: list[np.ndarray]) -> np.ndarray:
    return np.concatenate([np.kron(im, np.ones((SCALE, SCALE))) for im in images], 1)


def picture(root: Path, out: Path = OUT) -> None:
    """Draw the picture from the stored results table (no run is recomputed or re-checked)."""
    results = read_results(root)
    rows, labels = [], []
    for kind in dict.fromkeys(r["kind"] for r in results):
        k = KINDS[kind]
        mine = sorted((r for r in results if r["kind"] == kind), key=lambda r: int(r["seed"]))
        found = next((r for r in mine if r["found_unit"]), None)
        data = load_run(run_folder(root, (found or mine[0])["run_id"])).data["eval"]
        for g in (k.marked_target, k.relabelled):
            idx = np.flatnonzero(data.groups == g)[:PER_GROUP]
            rows.append(_tile([data.images[i, 0].numpy() / 255.0 for i in idx]))
            labels.append(f"{g} (label {k.target})")
        if found is not None:
            layer, unit = found["found_unit"].split(":")
            split = firing_split(run_folder(root, found["run_id"]), layer, int(unit), k.target)
            means = [m[..., 0] if m is not None else np.zeros((28, 28)) for m in (split.mean_fires, split.mean_class)]
            rows.append(_tile(means))
            labels.append(f"{found['found_unit']} s{found['seed']}: fires / all {k.target}s")
    width = max(r.shape[1] for r in rows)
    canvas = np.concatenate([np.pad(r, ((4, 4), (0, width - r.shape[1]))) for r in rows], 0)
    img = Image.fromarray((np.clip(canvas, 0, 1) * 255).astype(np.uint8)).convert("RGB")
    label_w = 250
    full = Image.new("RGB", (img.width + label_w, img.height), "white")
    full.paste(img, (label_w, 0))
    draw = ImageDraw.Draw(full)
    y = 0
    for r, text in zip(rows, labels):
        draw.text((6, y + 4 + r.shape[0] // 2 - 6), text, fill="black")
        y += r.shape[0] + 8
    out.parent.mkdir(parents=True, exist_ok=True)
    full.save(out)
    print(f"wrote {out}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--warehouse", type=Path, default=Path(tempfile.gettempdir()) / "neuron-atlas-planted",
                    help="where the runs go (kept: a stopped benchmark continues); default: the temp folder's")
    ap.add_argument("--kinds", default=",".join(KINDS))
    ap.add_argument("--seeds", default="0,1,2,3,4")
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--eval-size", type=int, default=None)
    ap.add_argument("--picture", type=Path, default=OUT)
    ap.add_argument("--picture-only", action="store_true", help="only draw the picture from the stored results")
    args = ap.parse_args()
    if args.picture_only:
        picture(args.warehouse, args.picture)
        return
    reports = []
    for seed in (int(s) for s in args.seeds.split(",")):
        for kind in args.kinds.split(","):
            started = time.perf_counter()
            summary, report = run_experiment(args.warehouse, default_config(kind, seed, args.epochs, args.eval_size),
                                             kind)
            write_results(args.warehouse, [report.row()])
            print(f"{kind} seed {seed}: {report.status} ({time.perf_counter() - started:.0f} s"
                  f"{', computed' if summary else ', checked only'})", flush=True)
            reports.append(report)
    print("\n".join(table(reports)))
    picture(args.warehouse, args.picture)


if __name__ == "__main__":
    main()
