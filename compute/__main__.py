"""``python -m compute``; a Ctrl-C while its modules load (torch: seconds) ends in one line, exit code 130."""

import sys

try:
    from compute.cli import main
except KeyboardInterrupt:  # warehouse.INTERRUPTED_AT_START, written here: the package may be half-imported
    print("interrupted while starting; nothing was done.", file=sys.stderr)
    sys.exit(130)

sys.exit(main())
