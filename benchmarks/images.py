"""Time of the images stage for LeNet-5 on the embedded default (mnist-5k, 12 epochs), per stage,
and how fast one unit's images are read from the row-grouped table versus one big row group.

    .venv/bin/python benchmarks/images.py [--epochs N]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from compute.run.config import RunConfig  # noqa: E402
from compute.run.pipeline import compute_run  # noqa: E402
from compute.images.table import ROW_GROUP_ROWS  # noqa: E402
from warehouse.publish import COMPRESSION  # noqa: E402


def _read_unit(path: Path, layer: str, unit: int, repeat: int = 20) -> float:
    """Median seconds to read one unit's rows (all columns) with a pushed-down filter."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        pq.read_table(path, filters=[("layer", "=", layer), ("unit", "=", unit)])
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--epochs", type=int, default=12)
    args = ap.parse_args()
    os.environ.setdefault("NEURON_ATLAS_QUIET", "1")
    with tempfile.TemporaryDirectory() as tmp:
        summary = compute_run(RunConfig(epochs=args.epochs, run_id="bench-images"), Path(tmp))
        f = summary.figures
        stages = {k.split("/", 1)[1]: v for k, v in f.items() if k.startswith("images_s/")}
        images_total = sum(stages.values())
        print(f"LeNet-5 on mnist-5k, {args.epochs} epochs: test acc {f['test_acc']:.4f}, "
              f"{int(f['units'])} units, {int(f['images'])} images")
        print(f"{'stage':<30} {'seconds':>8} {'share':>7}")
        for name, sec in stages.items():
            print(f"{name:<30} {sec:8.2f} {sec / images_total:7.1%}")
        print(f"{'images stage total':<30} {images_total:8.2f}")
        rest = f["duration_s"] - images_total
        print(f"{'rest of the run (train, stats, ablation)':<30} {rest:8.2f}")
        print(f"images stage / rest of the run: {images_total / rest:.2f}x")

        table_path = summary.path / "unit_images.parquet"
        table = pq.read_table(table_path)
        one_group = Path(tmp) / "one_group.parquet"
        pq.write_table(table, one_group, compression=COMPRESSION, row_group_size=len(table) + 1)
        size = table_path.stat().st_size
        print(f"unit_images: {len(table)} rows, {size / 2**20:.1f} MiB on disk, "
              f"{pq.ParquetFile(table_path).metadata.num_row_groups} row groups of <= {ROW_GROUP_ROWS} rows")
        grouped, single = _read_unit(table_path, "fc1", 60), _read_unit(one_group, "fc1", 60)
        print(f"read one unit's images: {grouped * 1e3:.1f} ms (row groups of {ROW_GROUP_ROWS}) vs "
              f"{single * 1e3:.1f} ms (one row group): {single / grouped:.1f}x faster")


if __name__ == "__main__":
    main()
