"""Shared test configuration.

pytest loads this file first and, in its default ``prepend`` import mode, puts this folder on
``sys.path``: the shared helpers (``_models``: tiny models with dense float64 Hessians, the ground
truth; ``_redteam``: thread and global-state probes) import as plain modules, with no ``sys.path``
edits in the test files.
"""
from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session")
def repo_root() -> str:
    """The repository's root folder (for tests that read docs, tools or sources)."""
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
