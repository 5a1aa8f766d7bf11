"""The planted-subgroup benchmark's reads (per-class scores of a run) and its results table.

Results are kept as ``<warehouse>/experiments/planted.csv``, one row per kind and seed (a later run of
the same kind and seed replaces its row), written atomically beside ``runs/``.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import duckdb
import pandas as pd

from warehouse.publish import write_file

RESULTS = Path("experiments") / "planted.csv"


def class_scores(con: duckdb.DuckDBPyConnection, run_id: str, cls: int) -> pd.DataFrame:
    """Every live unit's scores for class ``cls``: the per-class columns the rankings use, plus the
    class selectivity from the post-ReLU class means (mu_c - mean of the others) / (sum + 1e-7)."""
    return con.execute(
        """
        WITH c AS (SELECT layer, unit, "class", mean_rect FROM unit_classes WHERE run_id = ?),
        rest AS (SELECT layer, unit, avg(mean_rect) AS mu_rest FROM c WHERE "class" <> ? GROUP BY layer, unit)
        SELECT uc.layer, uc.unit, u.layer_index, uc.specialization, uc.anomaly, uc.mean_rect,
               uc.taylor, abs(uc.abl_loss_delta) AS abl_loss_abs, uc.frac_fire,
               (uc.mean_rect - rest.mu_rest) / (uc.mean_rect + rest.mu_rest + 1e-7) AS class_selectivity
        FROM unit_classes uc
        JOIN units u ON u.run_id = uc.run_id AND u.layer = uc.layer AND u.unit = uc.unit
        JOIN rest ON rest.layer = uc.layer AND rest.unit = uc.unit
        WHERE uc.run_id = ? AND uc."class" = ? AND NOT u.dead
        ORDER BY u.layer_index, uc.unit
        """, [run_id, cls, run_id, cls]).df()


def read_results(root: Path) -> list[dict[str, str]]:
    path = root / RESULTS
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def write_results(root: Path, rows: list[dict[str, object]]) -> Path:
    """Merge ``rows`` into the results table by (kind, seed) and write it atomically; returns its path."""
    kept = {(r["kind"], str(r["seed"])): r for r in read_results(root)}
    for r in rows:
        kept[(str(r["kind"]), str(r["seed"]))] = {k: "" if v is None else str(v) for k, v in r.items()}
    path = root / RESULTS
    path.parent.mkdir(parents=True, exist_ok=True)
    out = io.StringIO()
    fields = list(rows[0]) if rows else list(next(iter(kept.values()), {}))
    writer = csv.DictWriter(out, fieldnames=fields, extrasaction="ignore")
    writer.writeheader()
    for key in sorted(kept):
        writer.writerow(kept[key])
    write_file(path, out.getvalue().encode(), "the planted benchmark's results")
    return path
