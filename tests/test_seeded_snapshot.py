"""Seeded results recorded before the package was reorganised (issue 13) stay the same bits after it.

``tests/data/seeded_snapshot.json`` holds, per backend, the exact bits of a fixed set of public calls
(``tools/seeded_snapshot.py``). Where this machine's fingerprint (torch version, CPU capability, thread count)
equals the recorded one the comparison is bitwise; elsewhere BLAS may round differently and the check is a
1e-6 relative one (float32 results are among them), so a moved line of arithmetic still shows.
"""
from __future__ import annotations

import importlib.util
import json
import math
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location("seeded_snapshot",
                                               os.path.join(ROOT, "tools", "seeded_snapshot.py"))
snapshot = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(snapshot)  # type: ignore[union-attr]


@pytest.fixture(scope="module")
def recorded() -> dict:
    with open(snapshot.PATH) as f:
        stored = json.load(f)
    fp = snapshot.fingerprint()
    if fp["backend"] not in stored:
        pytest.skip(f"no snapshot recorded for backend {fp['backend']!r}")
    return stored[fp["backend"]]


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_seeded_results_unchanged(recorded: dict) -> None:
    now = snapshot.compute()
    assert set(now) == set(recorded["results"])
    exact = recorded["fingerprint"] == snapshot.fingerprint()
    for key, ref in recorded["results"].items():
        if exact:
            assert now[key] == ref, f"{key}: bits differ from the recorded snapshot"
        else:
            a = [float.fromhex(x) for x in now[key]]
            b = [float.fromhex(x) for x in ref]
            close = all(math.isclose(x, y, rel_tol=1e-6, abs_tol=1e-9) for x, y in zip(a, b))
            assert len(a) == len(b) and close, key
