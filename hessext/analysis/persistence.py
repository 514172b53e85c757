"""Saving API B results: one step's JSON and NPZ files, written as one unit.

A save of :meth:`hessext.analysis.analyzer.HessianAnalyzer.save_hessian_data` is two files that describe the
same analysis: ``{model_name}_step{step}.json`` (every section, non-finite floats as ``null``) and
``{model_name}_step{step}.npz`` (eigenvalue arrays, and the top eigenvectors when asked). They are written
together by :func:`write_together`: either both new files are in place, or neither changed.
"""
from __future__ import annotations

import io
import json
import os
import shutil
import uuid
from typing import Any, Mapping, Optional

import numpy as np
from torch import Tensor

from .._checks import json_safe, work_dtype
from .._io import atomic_write

__all__ = ["write_together", "save_results"]


def _sibling(path: str, tag: str) -> str:
    """A fresh hidden name in ``path``'s directory (same file system, so that a rename is atomic)."""
    head, tail = os.path.split(path)
    return os.path.join(head, f".{tail}.{uuid.uuid4().hex[:12]}.{tag}")


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _keep_old(path: str) -> Optional[str]:
    """A copy of an existing file ``path`` under a temporary name (a hard link where the file system has
    them), to put back if the save fails after ``path`` was replaced; None when there is no file."""
    if not os.path.isfile(path):
        return None
    backup = _sibling(path, "old")
    try:
        os.link(path, backup)
    except OSError:
        shutil.copy2(path, backup)
    return backup


def write_together(files: Mapping[str, bytes | str]) -> None:
    """Write several files as one unit: afterwards every file holds its new data, or (on any error, including
    ``KeyboardInterrupt``) every file is as it was before and no temporary file is left.

    Two phases: each file's data first goes to a temporary name in its target's directory (with
    :func:`hessext._io.atomic_write`, so each is complete and flushed to disk); then the temporaries are
    renamed over the targets (``os.replace``, atomic per file). If a rename fails, the targets renamed
    before it are restored from links to their old contents (or removed when they did not exist) and the
    temporaries are deleted. A reader of one file always sees a complete file, old or new; a reader of both
    may, during the renames, see one new and one old file (as with any two files), never after the call
    returns.

    Raises:
        OSError (or whatever the failing step raised), after the clean-up.
    """
    targets = {os.fspath(p): data for p, data in files.items()}
    pending: dict[str, str] = {}
    backups: dict[str, str] = {}
    placed: list[str] = []
    try:
        for target, data in targets.items():
            pending[target] = _sibling(target, "new")
            atomic_write(pending[target], data)
        for target, tmp in pending.items():
            old = _keep_old(target)
            if old is not None:
                backups[target] = old
            os.replace(tmp, target)
            placed.append(target)
    except BaseException:
        for target in placed:
            if target in backups:
                os.replace(backups.pop(target), target)
            else:
                _remove(target)
        for tmp in [*pending.values(), *backups.values()]:
            _remove(tmp)
        raise
    for old in backups.values():
        _remove(old)


def _npz_bytes(results: Mapping[str, Any], eigenvectors: Optional[Tensor]) -> bytes:
    """The NPZ file of ``results``: eigenvalue arrays as float64; ``eigenvectors`` ``[k, n]`` (when given)
    in the dtype of the analysis (float64 stays float64; float32 and narrower dtypes are stored as
    float32)."""
    arrays: dict[str, np.ndarray] = {}
    hs = results.get("hessian", {})
    for key in ("top_eigenvalues", "bottom_eigenvalues", "residuals"):
        if key in hs:
            arrays[key] = np.asarray(hs[key], dtype=np.float64)
    for comp, entry in (results.get("components") or {}).items():
        if "top_eigenvalues" in entry:
            arrays[f"components/{comp}/top_eigenvalues"] = np.asarray(entry["top_eigenvalues"], np.float64)
    if eigenvectors is not None:
        vecs = eigenvectors.detach()
        arrays["top_eigenvectors"] = vecs.to("cpu", work_dtype(vecs.dtype)).numpy()
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def save_results(results: Mapping[str, Any], config: Mapping[str, Any], base: str,
                 eigenvectors: Optional[Tensor] = None) -> dict[str, str]:
    """Write ``results`` (with ``config``, a dict, under ``"config"``) to ``base + ".json"`` and
    ``base + ".npz"`` as one unit (:func:`write_together`). No pickle.

    Returns:
        ``{"json": path, "npz": path}``.
    """
    payload = {"config": dict(config), **results}
    paths = {"json": base + ".json", "npz": base + ".npz"}
    write_together({
        paths["json"]: json.dumps(json_safe(payload), indent=1, allow_nan=False).encode(),
        paths["npz"]: _npz_bytes(results, eigenvectors),
    })
    return paths
