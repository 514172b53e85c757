"""Figures and their files: making a figure (through pyplot or on a bare Agg canvas), checking formats,
writing ``{model_name}_{quantity}.{fmt}`` files, and the types of the plot functions' signatures."""
from __future__ import annotations

import os
import re
import sys
from typing import TYPE_CHECKING, Any, Optional, Sequence, Union

from .._checks import ArgumentTypeError
from ._legends import keep_legends_off_data

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure
else:  # matplotlib is an optional dependency, imported with the first figure: the annotation's name only
    Figure = Any

#: ``None``: use pyplot only if it is already imported; ``True``/``False``: always/never. Set it as
#: ``hessext.viz.USE_PYPLOT`` (the package forwards the attribute here).
USE_PYPLOT: Optional[bool] = None
#: Default raster resolution.
DPI = 130
#: The file formats a figure can be written in.
FORMATS = ("png", "svg", "pdf", "jpg", "jpeg", "eps")

FormatsLike = Union[str, Sequence[str]]
PathLike = Union[str, os.PathLike]


def require_mpl() -> None:
    """Raise ``ImportError`` (with the install hint) when matplotlib is missing. matplotlib is an optional
    dependency (extra ``plot``): it is imported when the first figure is made, not with ``hessext.viz``."""
    try:
        import matplotlib  # noqa: F401
    except ImportError as exc:  # pragma: no cover - exercised only without matplotlib
        raise ImportError("hessext.viz needs matplotlib: pip install 'hessext[plot]'") from exc


def _use_pyplot() -> bool:
    if USE_PYPLOT is not None:
        return bool(USE_PYPLOT)
    return "matplotlib.pyplot" in sys.modules


def new_figure(figsize: tuple[float, float]) -> Figure:
    """A figure with constrained layout, through pyplot if it is in use, else a bare Agg figure."""
    require_mpl()
    if _use_pyplot():
        import matplotlib.pyplot as plt
        return plt.figure(figsize=figsize, layout="constrained")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def close_figure(fig: Figure) -> None:
    """Release a figure made by :func:`new_figure` (pyplot ones must leave pyplot's registry)."""
    if "matplotlib.pyplot" in sys.modules:
        import matplotlib.pyplot as plt
        if fig.canvas.manager is not None:
            plt.close(fig)


def safe_name(text: str) -> str:
    """``text`` as a file-name stem (runs of other characters become ``_``; ``"model"`` if nothing is
    left)."""
    out = re.sub(r"[^A-Za-z0-9._-]+", "_", str(text)).strip("._")
    return out or "model"


def check_formats(formats: FormatsLike) -> tuple[str, ...]:
    """The figure formats ``formats`` (a name or a sequence of names, e.g. ``("png", "svg")``) as lower-case
    names without dots; every one must be among :data:`FORMATS`."""
    if isinstance(formats, str):
        formats = (formats,)
    try:
        fmts = tuple(str(f).lower().lstrip(".") for f in formats)
    except TypeError:
        raise ArgumentTypeError(f"formats must be a string or a sequence of strings, got "
                                f"{type(formats).__name__} {formats!r}") from None
    if not fmts:
        raise ValueError(f"formats is empty ({formats!r}); pass e.g. ('png',) or ('png', 'svg')")
    bad = [f for f in fmts if f not in FORMATS]
    if bad:
        raise ValueError(f"formats must be among {FORMATS}, got {bad}")
    return fmts


def write_figure(fig: Figure, save_path: Optional[PathLike], model_name: str, quantity: str,
                 formats: FormatsLike = ("png",), dpi: int = DPI) -> list[str]:
    """Keep the legends off the data (:mod:`hessext.viz._legends`), then write
    ``{model_name}_{quantity}.{fmt}`` files into ``save_path`` (created; None: nothing is written); record
    the paths as ``fig.hessext_files`` and return them."""
    fmts = check_formats(formats)
    keep_legends_off_data(fig)
    paths: list[str] = []
    if save_path is not None:
        if not isinstance(save_path, (str, os.PathLike)):
            raise ArgumentTypeError(f"save_path must be a str, a path or None, got "
                                    f"{type(save_path).__name__} {save_path!r}")
        os.makedirs(save_path, exist_ok=True)
        stem = f"{safe_name(model_name)}_{quantity}"
        for fmt in fmts:
            path = os.path.join(os.fspath(save_path), f"{stem}.{fmt}")
            fig.savefig(path, dpi=dpi, format=fmt, facecolor="white")
            paths.append(path)
    fig.hessext_files = paths  # type: ignore[attr-defined]
    return paths
