"""``python -m warehouse schema-doc``: print the schema documentation (docs/schema.md)."""

import sys

from warehouse.schema import markdown

if sys.argv[1:] != ["schema-doc"]:
    print("usage: python -m warehouse schema-doc", file=sys.stderr)
    sys.exit(2)
sys.stdout.write(markdown())
