"""The model-state guard: every public hessext call leaves the user's model exactly as it found it.

Model-mode policy
-----------------
Analysis runs in **eval mode** by default (dropout off, BatchNorm on its running statistics), so that the
Hessian is that of a deterministic function. ``eval_mode=False`` analyses in train mode instead; ``None``
keeps whatever modes the modules are in. Either way, on exit (normal or by exception) the following are
restored:

- the ``training`` flag of every submodule (set one by one, not through ``model.train()``, so mixed modes
  survive);
- every parameter's ``requires_grad`` flag;
- every parameter's ``.grad``: the same tensor object (or ``None``), with its values copied back if they
  were modified in place;
- the global RNG states: torch CPU, CUDA (only if CUDA is already initialised: we never initialise it),
  numpy and Python's ``random``.

Parameters and buffers are never written by hessext (the HVP is functional: it evaluates the model through
``torch.func.functional_call`` on detached aliases or copies). As a debug check, the guard compares the
autograd version counters of all parameters and buffers on exit; a change means something wrote to them in
place (a bug, or a model that mutates its own state in ``forward``). It warns, or raises with
``strict=True`` / ``HESSEXT_DEBUG=1``.
"""
from __future__ import annotations

import contextlib
import os
import random
import warnings
from typing import Iterator

import numpy as np
import torch
from torch import nn

__all__ = ["preserve_model_state", "ModelStructure", "rng_state", "restore_rng_state"]


def rng_state() -> dict:
    """Snapshot of the global RNG states (torch CPU, initialised CUDA devices, numpy, ``random``)."""
    state = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "random": random.getstate(),
        "cuda": None,
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict) -> None:
    """Restore a snapshot taken by :func:`rng_state`."""
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["random"])
    if state["cuda"] is not None:
        torch.cuda.set_rng_state_all(state["cuda"])


class ModelStructure:
    """The parts of a module tree the guard walks: its modules, parameters and named parameters + buffers.

    Walking ``model.modules()`` / ``named_parameters()`` costs ~0.1 ms per call on a small model; an operator
    that guards every product takes this snapshot once (the tree does not change under an analysis)."""

    __slots__ = ("modules", "params", "named_tensors")

    def __init__(self, model: nn.Module) -> None:
        self.modules = list(model.modules())
        self.params = list(model.parameters())
        self.named_tensors = list(model.named_parameters()) + list(model.named_buffers())


@contextlib.contextmanager
def preserve_model_state(model: nn.Module, eval_mode: bool | None = True,
                         strict: bool | None = None,
                         structure: ModelStructure | None = None) -> Iterator[nn.Module]:
    """Context manager: snapshot the model's mutable state, set the analysis mode, restore on exit.

    Args:
        model: the user's module.
        eval_mode: ``True`` → ``model.eval()`` inside the block, ``False`` → ``model.train()``, ``None`` →
            leave the modes as they are.
        strict: raise ``RuntimeError`` (instead of warning) if a parameter or buffer was written in place.
            Default: the environment variable ``HESSEXT_DEBUG=1``.
        structure: a :class:`ModelStructure` of ``model`` taken earlier (saves walking the tree).

    Yields:
        The model.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if strict is None:
        strict = os.environ.get("HESSEXT_DEBUG", "") not in ("", "0")
    if structure is None:
        structure = ModelStructure(model)
    modes = [(m, m.training) for m in structure.modules]
    params = structure.params
    requires = [(p, p.requires_grad) for p in params]
    grads = []
    for p in params:
        g = p.grad
        grads.append((p, g, None if g is None else g._version, None if g is None else g.detach().clone()))
    versions = [(k, t, t._version) for k, t in structure.named_tensors]
    rng = rng_state()
    failed = False
    try:
        if eval_mode is True:
            if any(flag for _, flag in modes):       # already all in eval mode: nothing to switch
                model.eval()
        elif eval_mode is False:
            model.train()
        elif eval_mode is not None:
            raise TypeError(f"eval_mode must be True, False or None, got {eval_mode!r}")
        yield model
    except BaseException:
        failed = True
        raise
    finally:
        for m, flag in modes:
            if m.training != flag:
                m.training = flag
        for p, flag in requires:
            if p.requires_grad != flag:
                p.requires_grad_(flag)
        with torch.no_grad():
            for p, g, ver, values in grads:
                if p.grad is not g:
                    p.grad = g
                if g is not None and g._version != ver:
                    g.copy_(values)
        restore_rng_state(rng)
        changed = [k for k, t, v in versions if t._version != v]
        if changed and not failed:
            msg = (f"parameters/buffers {changed} were modified in place during a hessext call; hessext "
                   "never writes them, so the model (or a loss function) did")
            if strict:
                raise RuntimeError(msg)
            warnings.warn(msg, RuntimeWarning, stacklevel=3)
