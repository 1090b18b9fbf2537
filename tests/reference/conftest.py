"""Puts `tests/clip` on the path: the twin's tests reuse its random reference CLIPs."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "clip"))
