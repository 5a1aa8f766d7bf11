"""The README's crossed-sevens figures and picture, from a warehouse holding the experiment's run.

    python -m compute experiment crossed-sevens --warehouse /tmp/cs --seed 0
    python benchmarks/crossed_sevens.py /tmp/cs crossed-sevens-s0     # writes docs/img/crossed-sevens.png

The picture: planted examples of each group (evaluation set), then for the unit the check found, the
mean image of the class-7 examples it fires on beside those it is silent on.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from compute.datasets import crossed
from compute.run.planted import check
from compute.run.unit_evidence import firing_split
from compute.run.whatif import load_run
from warehouse.layout import run_dir as run_folder

OUT = Path(__file__).resolve().parents[1] / "docs" / "img" / "crossed-sevens.png"
SCALE, PER_GROUP = 3, 8


def _tile(images: list[np.ndarray]) -> np.ndarray:
    return np.concatenate([np.kron(im, np.ones((SCALE, SCALE))) for im in images], 1)


def main(root: Path, run_id: str) -> None:
    report = check(root, run_id)
    print("\n".join(report.lines()))
    run_dir = run_folder(root, run_id)
    data = load_run(run_dir).data["eval"]
    rows, labels = [], []
    for g in (crossed.CROSSED, crossed.CROSSED_ONE, crossed.PLAIN):
        idx = np.flatnonzero(data.groups == g)[:PER_GROUP]
        rows.append(_tile([data.images[i, 0].numpy() / 255.0 for i in idx]))
        labels.append(g)
    found = report.found or report.ranking[0]
    split = firing_split(run_dir, found.layer, found.unit, crossed.SEVEN)
    means = [m[..., 0] if m is not None else np.zeros((28, 28)) for m in (split.mean_fires, split.mean_silent)]
    rows.append(_tile(means + [np.zeros((28, 28))] * (PER_GROUP - 2)))
    labels.append(f"{found.layer}:{found.unit} fires / silent (7s)")
    width = rows[0].shape[1]
    canvas = np.concatenate([np.pad(r, ((4, 4), (0, width - r.shape[1]))) for r in rows], 0)
    img = Image.fromarray((np.clip(canvas, 0, 1) * 255).astype(np.uint8)).convert("RGB")
    label_w = 260
    out = Image.new("RGB", (img.width + label_w, img.height), "white")
    out.paste(img, (label_w, 0))
    draw = ImageDraw.Draw(out)
    h = img.height // len(rows)
    for i, text in enumerate(labels):
        draw.text((6, i * h + h // 2 - 6), text, fill="black")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    out.save(OUT)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2])
