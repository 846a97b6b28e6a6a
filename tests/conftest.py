"""Lets test modules import the helper modules beside them (results_store, ddp_helpers):
pytest's importlib mode does not put the tests folder on sys.path."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
