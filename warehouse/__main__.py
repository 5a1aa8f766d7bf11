"""``python -m warehouse``: ``schema-doc`` prints docs/schema.md; ``export`` writes filtered units to a file."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from warehouse import INTERRUPTED_AT_START

try:  # Ctrl-C while the modules load: one line, exit code 130
    from warehouse.connect import connect
    from warehouse.export import FORMATS, table_bytes
    from warehouse.errors import AtlasError, WarehouseError
    from warehouse.filters import UnitFilter, add_arguments, from_cli
    from warehouse.queries import PRESETS, QueryError, class_names, filter_units_arrow, layer_names
    from warehouse.safe_write import STDOUT, check_target, is_stream, write_output
    from warehouse.schema import markdown
    from warehouse.text import term
    from warehouse.layout import ENV_VAR, RUNS_DIR, STAGING_DIR, default_path
    from warehouse import run_fit
    from warehouse.validate import list_runs
except KeyboardInterrupt:
    print(INTERRUPTED_AT_START, file=sys.stderr)
    raise SystemExit(130) from None



def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m warehouse", description=__doc__)
    sub = ap.add_subparsers(dest="command", required=True)
    sub.add_parser("schema-doc", help="print the schema documentation (docs/schema.md)")
    ex = sub.add_parser("export", help="write the units matching a filter as CSV or Parquet",
                        description="Filters are those of the dashboard's unit explorer; a preset is applied "
                                    "first and the other options are added to it.")
    ex.add_argument("--warehouse", type=Path, default=None,
                    help=f"warehouse folder (default: ${ENV_VAR} or {default_path()})")
    ex.add_argument("--run", required=True, help="run id (see python -m compute list)")
    ex.add_argument("--preset", choices=list(PRESETS), default=None)
    add_arguments(ex)
    ex.add_argument("--format", choices=FORMATS, default=None, help="default: from the output file's suffix")
    ex.add_argument("-o", "--output", type=Path, required=True,
                    help="output file, or - for standard output (never inside the warehouse; an existing file "
                         "only with --force; never through a symbolic link to a file)")
    ex.add_argument("--force", action="store_true", help="replace the output file if it exists")
    return ap


def build_filter(args: argparse.Namespace) -> UnitFilter:
    return from_cli(args, args.run, PRESETS[args.preset] if args.preset else None)


def check_output(out: Path, root: Path, force: bool) -> None:
    """Refuse to write inside the warehouse's runs or staging, or where ``safe_write`` would refuse."""
    if str(out) != STDOUT:
        target = out.expanduser().resolve()
        for inside in (RUNS_DIR, STAGING_DIR):
            folder = (Path(root) / inside).resolve()
            if target == folder or folder in target.parents:
                raise WarehouseError(f"{out} is inside the warehouse's {inside}/ folder, whose files belong to the "
                                     f"published runs; write the export somewhere else.")
    check_target(out, force)


def export(args: argparse.Namespace) -> int:
    root = args.warehouse or default_path()
    runs = {r.run_id: r for r in list_runs(root)}
    if args.run not in runs:
        known = ", ".join(runs) or ("none" if Path(root).is_dir() else "none: the folder does not exist")
        raise WarehouseError(f"no run {args.run!r} in warehouse {root} (runs: {known}).")
    if not runs[args.run].ok:
        raise WarehouseError(f"run {args.run!r} is broken: {runs[args.run].error}")
    check_output(args.output, root, args.force)
    fmt = args.format or args.output.suffix.lstrip(".").lower()
    if fmt not in FORMATS:
        raise QueryError(f"cannot tell the format from {args.output.name!r}; pass --format csv or --format parquet.")
    f = build_filter(args)
    con = connect(root)
    run_fit.check(f, layer_names(con, args.run), class_names(con, args.run))
    table = filter_units_arrow(con, f)
    data = table_bytes(table, fmt)
    write_output(args.output, lambda f: f.write(data), args.force)
    print(f"wrote {table.num_rows} units of run {args.run} to {term(args.output)} ({fmt}, {len(data):,} bytes)",
          file=sys.stderr if is_stream(args.output) else sys.stdout)  # never into the data written to stdout
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        if args.command == "schema-doc":
            sys.stdout.write(markdown())
            return 0
        return export(args)
    except AtlasError as e:
        print(f"error: {term(e, lines=True)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: no output file was written.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
