"""Copies of a published run under another run id, and manifests refreshed after a deliberate edit.

A published run is identified three ways (folder name, manifest ``run_id``, the tables' ``run_id``)
and its manifest records every file's size and SHA-256; ``list_runs`` checks them all. Tests that
need a second healthy run, or that edit a table on purpose, use these helpers so the copy is a
genuine run rather than one the warehouse rightly rejects.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from warehouse.schema import TABLES
from warehouse.layout import MANIFEST
from warehouse.publish import COMPRESSION


def refresh_manifest(run_dir: Path, run_id: str | None = None) -> None:
    """Re-record every file's size and SHA-256 (and the run id) in ``run_dir``'s manifest."""
    manifest = json.loads((run_dir / MANIFEST).read_text())
    manifest["files"] = {p.name: {"bytes": p.stat().st_size, "sha256": hashlib.sha256(p.read_bytes()).hexdigest()}
                         for p in sorted(run_dir.iterdir()) if p.name != MANIFEST}
    if run_id is not None:
        manifest["run_id"] = run_id
    (run_dir / MANIFEST).write_text(json.dumps(manifest, indent=2))


def clone_run(src: Path, root: Path, run_id: str) -> Path:
    """A copy of the run at ``src`` published as ``run_id`` under ``root``: every table's ``run_id`` rewritten."""
    dst = Path(root) / "runs" / run_id
    shutil.copytree(src, dst)
    for name in TABLES:
        f = dst / f"{name}.parquet"
        table = pq.read_table(f)
        i = table.schema.get_field_index("run_id")
        table = table.set_column(i, table.schema.field(i), pa.array([run_id] * table.num_rows, pa.string()))
        pq.write_table(table, f, compression=COMPRESSION)
    refresh_manifest(dst, run_id)
    return dst
