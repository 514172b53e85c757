"""The package version (one home: ``hessext.__version__`` and the HTML report read it from here)."""
from __future__ import annotations

__version__ = "0.1.0"
