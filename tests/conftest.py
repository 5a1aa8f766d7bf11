"""pytest configuration: the repository on sys.path, and the dashboard tests' shared fixtures."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.dashboard_fixtures import broken_root, con, tables, warehouse_root  # noqa: E402, F401
