"""Export a set of units with their images as one zip: the table, the PNGs and a manifest.

Layout inside the zip::

    units.csv                       the units' rows of the ``units`` table
    images.csv                      one row per image: its metadata and file name
    images/<layer>/<unit>/<kind>_r<rank>[_c<class>].png
    manifest.json                   run, units, file list with SHA-256

Layer names come from the warehouse, so they are sanitised before they become path parts: a
name like ``../../x`` cannot place a file outside the zip root. The zip is written by
``warehouse.safe_write`` (a temporary file renamed over nothing or a regular file, or streamed into
a device or FIFO; never through a link to a file), so a failed export leaves nothing behind.
"""

from __future__ import annotations

import hashlib
import json
import re
import zipfile
from pathlib import Path
from typing import BinaryIO

import duckdb
import pandas as pd

from warehouse.images import META_COLUMNS
from warehouse.safe_write import write_output
from warehouse.schema import IMAGE_KINDS
from warehouse.errors import WarehouseError

_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def safe_part(name: str) -> str:
    """``name`` as one harmless path component: only letters, digits, '_', '.', '-', never '.' or '..'."""
    part = _UNSAFE.sub("_", str(name)).strip(".") or "_"
    return part[:100]


def image_name(layer: str, unit: int, kind: str, rank: int, cls: int | None) -> str:
    suffix = "" if cls is None or pd.isna(cls) else f"_c{int(cls)}"
    return f"images/{safe_part(layer)}/{int(unit)}/{safe_part(kind)}_r{int(rank)}{suffix}.png"


def export_bundle(con: duckdb.DuckDBPyConnection, run_id: str, units: list[tuple[str, int]], out: Path | str,
                  kinds: tuple[str, ...] = IMAGE_KINDS) -> Path:
    """Write the zip bundle of ``units`` ((layer, unit) pairs) of ``run_id`` to ``out``."""
    out = Path(out)
    if not units:
        raise WarehouseError("nothing to export: the unit list is empty.")
    if not con.execute("SELECT count(*) FROM runs WHERE run_id = ?", [run_id]).fetchall()[0][0]:
        raise WarehouseError(f"run {run_id!r} is not in the warehouse.")
    keys = pd.DataFrame({"layer": [str(layer) for layer, _ in units], "unit": [int(u) for _, u in units]})
    con.register("_bundle_keys", keys)
    try:
        table = con.execute("SELECT u.* FROM units u JOIN _bundle_keys k USING (layer, unit) WHERE u.run_id = ?"
                            " ORDER BY u.layer_index, u.unit", [run_id]).df()
        images = con.execute(
            "SELECT i.* FROM unit_images i JOIN _bundle_keys k USING (layer, unit)"
            " WHERE i.run_id = ? AND list_contains(?, i.kind)", [run_id, list(kinds)]).df()
    finally:
        con.unregister("_bundle_keys")
    found = set(zip(table["layer"], table["unit"]))
    missing = [f"{layer}/{unit}" for layer, unit in zip(keys["layer"], keys["unit"]) if (layer, unit) not in found]
    if missing:
        raise WarehouseError(f"run {run_id!r} has no units {', '.join(missing[:10])}.")
    keys_of_images = images[["layer", "unit", "kind", "rank", "class"]].itertuples(index=False)
    images["file"] = [image_name(*r) for r in keys_of_images]
    images = images.sort_values("file").reset_index(drop=True)
    files: dict[str, str] = {}
    out.parent.mkdir(parents=True, exist_ok=True)

    def write(f: BinaryIO) -> None:
        with zipfile.ZipFile(f, "w", zipfile.ZIP_DEFLATED) as z:
            for name, data in (("units.csv", table.to_csv(index=False).encode()),
                               ("images.csv", images[[*META_COLUMNS, "file"]].to_csv(index=False).encode())):
                z.writestr(name, data)
                files[name] = hashlib.sha256(data).hexdigest()
            for name, png in zip(images["file"], images["png"]):
                data = bytes(png)
                z.writestr(zipfile.ZipInfo(name), data, compress_type=zipfile.ZIP_STORED)  # PNG is compressed
                files[name] = hashlib.sha256(data).hexdigest()
            manifest = {"run_id": run_id, "units": [[layer, unit] for layer, unit in zip(keys["layer"], keys["unit"])],
                        "kinds": list(kinds), "n_images": len(images), "sha256": files}
            z.writestr("manifest.json", json.dumps(manifest, indent=2))

    write_output(out, write, force=True)
    return out
