"""ParamLayout: the map between a model's analysed parameters and one flat vector of length n.

Every operator and algorithm in hessext works on flat vectors ``v ∈ R^n`` with

    v = concat(vec(p_1), vec(p_2), ..., vec(p_P)),    n = Σ_i numel(p_i),

parameters in the order of ``model.named_parameters()`` (shared parameters once), each flattened in
row-major (C) order. Parameter ``i`` occupies the half-open index range
``[offsets[i], offsets[i] + numels[i])``.

Index sets for a subset of the parameters (components such as "the attention weights", or the query third
of a packed ``in_proj_weight``) are described by a *spec*: a sequence whose items are

- ``"name"``: the whole parameter;
- ``("name", rows)``: the rows ``rows`` (a ``slice`` or an ``int``) of the parameter along dim 0. In row-major
  order these are contiguous: rows ``r0:r1`` of a ``[R, *rest]`` parameter are the flat range
  ``[off + r0·r, off + r1·r)`` with ``r = numel(rest)``. For ``in_proj_weight`` of shape ``[3d, d]``,
  ``("…in_proj_weight", slice(0, d))`` is the query block, ``slice(d, 2d)`` the key and
  ``slice(2d, 3d)`` the value.

``indices(spec)`` returns the flat indices of the spec, in the order of the spec; ``ranges(spec)`` the same
set as a list of half-open ``(start, stop)`` ranges (adjacent ranges merged).
"""
from __future__ import annotations

import difflib
import hashlib
import math
from typing import Iterable, Mapping, Sequence, Union

import torch
from torch import Tensor, nn

__all__ = ["ParamLayout", "SliceSpec", "close_names"]

#: One item of an index spec: a parameter name, or ``(name, rows)`` with rows a slice/int along dim 0.
SliceSpec = Union[str, "tuple[str, slice | int]"]


def close_names(name: str, candidates: Sequence[str], n: int = 5) -> list[str]:
    """Up to ``n`` names of ``candidates`` close to ``name`` (difflib ratio, then substring matches)."""
    out = difflib.get_close_matches(name, list(candidates), n=n, cutoff=0.5)
    for c in candidates:
        if len(out) >= n:
            break
        if c not in out and (name in c or c in name):
            out.append(c)
    return out


class ParamLayout:
    """Names, shapes and flat offsets of the analysed parameters.

    Attributes:
        names: parameter names, in flat order.
        shapes: their shapes (``torch.Size``).
        numels: their element counts.
        offsets: start index of each parameter in the flat vector.
        dtypes: their dtypes (as seen when the layout was built; part of :meth:`fingerprint`).
        n: total number of elements, ``Σ numels``.
    """

    def __init__(self, names: Sequence[str], shapes: Sequence[Sequence[int]],
                 dtypes: Sequence[torch.dtype] | None = None) -> None:
        names = list(names)
        shapes = [torch.Size(s) for s in shapes]
        if len(names) != len(shapes):
            raise ValueError(f"names and shapes must have the same length, got {len(names)} and "
                             f"{len(shapes)}")
        if len(set(names)) != len(names):
            dup = sorted({k for k in names if names.count(k) > 1})
            raise ValueError(f"names must be unique, got duplicates {dup}")
        if dtypes is None:
            dtypes = [torch.get_default_dtype()] * len(names)
        dtypes = list(dtypes)
        if len(dtypes) != len(names):
            raise ValueError(f"dtypes must have one entry per name, got {len(dtypes)} for {len(names)} names")
        self.names: list[str] = names
        self.shapes: list[torch.Size] = shapes
        self.dtypes: list[torch.dtype] = dtypes
        self.numels: list[int] = [math.prod(s) for s in shapes]
        self.offsets: list[int] = []
        off = 0
        for k in self.numels:
            self.offsets.append(off)
            off += k
        self.n: int = off
        self._index = {k: i for i, k in enumerate(names)}

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_named_parameters(cls, named: Iterable[tuple[str, Tensor]]) -> "ParamLayout":
        """Layout of ``(name, tensor)`` pairs, in the given order."""
        pairs = list(named)
        for item in pairs:
            if not (isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[0], str)
                    and isinstance(item[1], Tensor)):
                raise TypeError(f"named must yield (str, Tensor) pairs, got {type(item).__name__}: "
                                f"{item!r:.80}")
        return cls([k for k, _ in pairs], [t.shape for _, t in pairs], [t.dtype for _, t in pairs])

    @classmethod
    def from_module(cls, model: nn.Module, names: Iterable[str] | None = None) -> "ParamLayout":
        """Layout of a module's parameters.

        Args:
            model: the module.
            names: parameter names to analyse; ``None`` means every parameter with ``requires_grad``.
                The layout always follows the order of ``model.named_parameters()``, whatever the order of
                ``names``, so that equal subsets give equal layouts.

        Raises:
            ValueError: a name is not a parameter of the model (the message lists close names), a name is
                repeated, or the selection is empty.
        """
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        named = list(model.named_parameters())
        if names is None:
            chosen = [(k, p) for k, p in named if p.requires_grad]
            if not chosen:
                raise ValueError("model has no trainable parameters (none with requires_grad=True)")
            return cls.from_named_parameters(chosen)
        if isinstance(names, str):
            names = [names]
        wanted = list(names)
        for k in wanted:
            if not isinstance(k, str):
                raise TypeError(f"names must be parameter names (str), got {type(k).__name__}")
        if not wanted:
            raise ValueError("names is empty: select at least one parameter")
        if len(set(wanted)) != len(wanted):
            dup = sorted({k for k in wanted if wanted.count(k) > 1})
            raise ValueError(f"names contains duplicates: {dup}")
        available = [k for k, _ in named]
        missing = [k for k in wanted if k not in set(available)]
        if missing:
            hints = {k: close_names(k, available) for k in missing}
            msg = "; ".join(f"{k!r} (close: {h})" if h else f"{k!r}" for k, h in hints.items())
            raise ValueError(f"names contains names that are not parameters of the model: {msg}")
        keep = set(wanted)
        return cls.from_named_parameters([(k, p) for k, p in named if k in keep])

    # ------------------------------------------------------------------ lookup
    def __len__(self) -> int:
        return len(self.names)

    def __contains__(self, name: object) -> bool:
        return name in self._index

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ParamLayout):
            return NotImplemented
        return (self.names, self.shapes, self.dtypes) == (other.names, other.shapes, other.dtypes)

    def __hash__(self) -> int:
        return hash(self.fingerprint())

    def __repr__(self) -> str:
        return f"ParamLayout(n={self.n}, params={len(self.names)}, fingerprint={self.fingerprint()[:12]})"

    def position(self, name: str) -> int:
        """Index of parameter ``name`` in :attr:`names`."""
        try:
            return self._index[name]
        except KeyError:
            hint = close_names(name, self.names)
            more = f"; close names: {hint}" if hint else ""
            raise ValueError(f"{name!r} is not in the layout{more}") from None

    def range_of(self, name: str) -> tuple[int, int]:
        """Half-open flat range ``(start, stop)`` of parameter ``name``."""
        i = self.position(name)
        return self.offsets[i], self.offsets[i] + self.numels[i]

    def fingerprint(self) -> str:
        """SHA-256 hex digest of the names, shapes and dtypes: equal on every process that analyses the same
        parameters of the same architecture, different as soon as any of them differs."""
        h = hashlib.sha256()
        for k, s, d in zip(self.names, self.shapes, self.dtypes):
            h.update(f"{k}|{tuple(s)}|{d};".encode())
        return h.hexdigest()

    # ------------------------------------------------------------------ flatten / unflatten
    def _tensors_in_order(self, tensors: Sequence[Tensor] | Mapping[str, Tensor]) -> list[Tensor]:
        if isinstance(tensors, Mapping):
            missing = [k for k in self.names if k not in tensors]
            if missing:
                raise ValueError(f"tensors is missing entries for {missing}")
            return [tensors[k] for k in self.names]
        out = list(tensors)
        if len(out) != len(self.names):
            raise ValueError(f"tensors must have one entry per parameter ({len(self.names)}), got {len(out)}")
        return out

    def flatten(self, tensors: Sequence[Tensor] | Mapping[str, Tensor]) -> Tensor:
        """Concatenate per-parameter tensors into one flat vector (always a new tensor).

        Args:
            tensors: a list in layout order or a dict name → tensor. Either every tensor has its parameter's
                shape (result ``[n]``), or every tensor has shape ``[*shape, m]`` (result ``[n, m]``).

        Returns:
            ``[n]`` or ``[n, m]``.
        """
        ts = self._tensors_in_order(tensors)
        if all(t.shape == s for t, s in zip(ts, self.shapes)):
            return torch.cat([t.reshape(-1) for t in ts]) if ts else torch.empty(0)
        m = ts[0].shape[-1] if ts and ts[0].dim() > 0 else None
        for k, t, s in zip(self.names, ts, self.shapes):
            if m is None or t.shape != (*s, m):
                raise ValueError(f"tensor for {k!r} must have shape {tuple(s)} or {(*tuple(s), m)}, got "
                                 f"{tuple(t.shape)}")
        return torch.cat([t.reshape(-1, m) for t in ts], dim=0)

    def flatten_batched(self, tensors: Sequence[Tensor] | Mapping[str, Tensor]) -> Tensor:
        """Concatenate per-parameter blocks shaped ``[m, *shape]`` (batch first) into ``[m, n]`` rows."""
        ts = self._tensors_in_order(tensors)
        if not ts:
            raise ValueError("layout is empty")
        m = ts[0].shape[0] if ts[0].dim() > 0 else None
        for k, t, s in zip(self.names, ts, self.shapes):
            if m is None or t.shape != (m, *s):
                raise ValueError(f"tensor for {k!r} must have shape {(m, *tuple(s))}, got {tuple(t.shape)}")
        return torch.cat([t.reshape(m, -1) for t in ts], dim=1)

    def _check_vec(self, vec: Tensor, what: str = "vec") -> None:
        if not isinstance(vec, Tensor):
            raise TypeError(f"{what} must be a Tensor, got {type(vec).__name__}")
        if vec.dim() not in (1, 2) or vec.shape[0] != self.n:
            raise ValueError(f"{what} must have shape [n] or [n, m] with n={self.n}, got {tuple(vec.shape)}")

    def unflatten(self, vec: Tensor) -> list[Tensor]:
        """Split a flat vector into per-parameter **views** (no copy).

        Args:
            vec: ``[n]`` → views shaped like the parameters; ``[n, m]`` → views shaped ``[*shape, m]`` (the
                trailing dimension indexes the m vectors, as the columns of ``vec``). A view needs ``vec``'s
                rows to be viewable, which holds for contiguous tensors; otherwise ``reshape`` copies.
        """
        self._check_vec(vec)
        tail = tuple(vec.shape[1:])
        return [vec[o:o + k].reshape(*s, *tail) for o, k, s in zip(self.offsets, self.numels, self.shapes)]

    def unflatten_batched(self, X: Tensor) -> list[Tensor]:
        """Split an ``[n, m]`` block into per-parameter tensors shaped ``[m, *shape]`` (batch first, the form
        ``vmap`` and ``is_grads_batched`` want). Views of ``X.T`` when ``X`` is column-major (``X.T``
        contiguous); otherwise ``X`` is transposed into one contiguous ``[m, n]`` copy first."""
        self._check_vec(X, "X")
        if X.dim() != 2:
            raise ValueError(f"X must be [n, m], got {tuple(X.shape)}")
        Xt = X.T if X.T.is_contiguous() else X.T.contiguous()
        m = Xt.shape[0]
        return [Xt[:, o:o + k].reshape(m, *s) for o, k, s in zip(self.offsets, self.numels, self.shapes)]

    def as_dict(self, vec: Tensor) -> dict[str, Tensor]:
        """:meth:`unflatten` as a dict name → view."""
        return dict(zip(self.names, self.unflatten(vec)))

    # ------------------------------------------------------------------ index sets
    def _item_range(self, item: SliceSpec) -> list[tuple[int, int]]:
        if isinstance(item, str):
            return [self.range_of(item)]
        if isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[0], str):
            name, rows = item
            i = self.position(name)
            shape = self.shapes[i]
            if len(shape) == 0:
                raise ValueError(f"parameter {name!r} is a scalar; a row slice needs at least 1 dimension")
            nrows = shape[0]
            row = self.numels[i] // nrows if nrows else 0
            off = self.offsets[i]
            if isinstance(rows, bool) or not isinstance(rows, (slice, int)):
                raise TypeError(f"rows of {name!r} must be a slice or an int, got {type(rows).__name__}")
            if isinstance(rows, int):
                r = rows + nrows if rows < 0 else rows
                if not 0 <= r < nrows:
                    raise ValueError(f"row {rows} out of range for {name!r} with {nrows} rows")
                return [(off + r * row, off + (r + 1) * row)]
            start, stop, step = rows.indices(nrows)
            rs = range(start, stop, step)
            if len(rs) == 0:
                raise ValueError(f"slice {rows} of {name!r} (with {nrows} rows) is empty")
            if step == 1:
                return [(off + start * row, off + stop * row)]
            return [(off + r * row, off + (r + 1) * row) for r in rs]
        raise TypeError(f"an index spec item must be a name or (name, slice), got {item!r:.80}")

    def _spec_items(self, spec: SliceSpec | Iterable[SliceSpec]) -> list[SliceSpec]:
        if isinstance(spec, str):
            return [spec]
        if (isinstance(spec, tuple) and len(spec) == 2 and isinstance(spec[0], str)
                and isinstance(spec[1], (slice, int))):
            return [spec]
        items = list(spec)
        if not items:
            raise ValueError("the index spec is empty")
        return items

    def ranges(self, spec: SliceSpec | Iterable[SliceSpec]) -> list[tuple[int, int]]:
        """Half-open flat ranges ``(start, stop)`` of a spec, in spec order, adjacent ranges merged.

        Raises:
            ValueError: unknown name, empty slice, or overlapping items.
        """
        out: list[tuple[int, int]] = []
        for item in self._spec_items(spec):
            for a, b in self._item_range(item):
                if out and out[-1][1] == a:
                    out[-1] = (out[-1][0], b)
                else:
                    out.append((a, b))
        ordered = sorted(out)
        for (a0, b0), (a1, b1) in zip(ordered, ordered[1:]):
            if a1 < b0:
                raise ValueError(f"the index spec selects overlapping ranges [{a0}, {b0}) and [{a1}, {b1})")
        return out

    def indices(self, spec: SliceSpec | Iterable[SliceSpec],
                device: torch.device | str | None = None) -> Tensor:
        """Flat indices (int64) of a spec, in spec order; see the module docstring for the spec format."""
        rs = self.ranges(spec)
        return torch.cat([torch.arange(a, b, dtype=torch.long, device=device) for a, b in rs])
