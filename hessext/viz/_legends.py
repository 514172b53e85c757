"""Legends that never cover data, with matplotlib's public API only.

A legend inside an axes is placed by matplotlib (``loc="best"``, which avoids the lines, bars, points and
texts of that axes, or a place the figure chose on purpose, e.g. headroom made above the data). Before a
figure is saved, :func:`keep_legends_off_data` lays it out as it will be written and checks every legend
inside its axes against the data of the axes *and of its twins* (``twinx``/``twiny``: "best" does not see
them), filled areas and a margin of 2 pixels included ("best" accepts a legend whose corner grazes a line).
A legend that covers data goes to the first of matplotlib's corner and edge locations where it covers
nothing; if there is none, outside its axes, below the tick labels and the x label, where the constrained
layout makes room for it in the saved figure.

Reference lines (``y = 0``, ``y = 1``: marked with :func:`guide`) are not data: a legend may lie over them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure
    from matplotlib.legend import Legend

#: gid of reference lines (y = 0, y = 1, …): a legend may lie over them.
GUIDE = "hessext-guide"
#: Points sampled along each line segment when testing whether a legend lies on the segment.
_SAMPLES = 24
#: Rounds of "lay out, move the legends that cover data": moving one changes the layout of the others.
_ROUNDS = 3
#: The locations inside the axes tried, in this order, for a legend that covers data where it is.
_INSIDE = ("upper left", "upper right", "lower left", "lower right", "upper center", "lower center",
           "center left", "center right")
#: Margin (pixels) kept between a legend and the data.
_MARGIN = 2.0


def guide(artist: Any) -> Any:
    """Mark a reference line as a guide (not data) for the legend check; returns the artist."""
    artist.set_gid(GUIDE)
    return artist


@dataclass
class DataGeometry:
    """What the data of some axes cover, in display coordinates (pixels)."""

    points: list[np.ndarray] = field(default_factory=list)  # [m, 2] arrays: vertices, samples, offsets
    fills: list[Any] = field(default_factory=list)          # display-space Paths of filled areas
    boxes: list[Any] = field(default_factory=list)          # Bboxes of bars

    def add_polyline(self, xy: np.ndarray) -> None:
        """A polyline's vertices and points sampled along every segment whose ends are both finite."""
        xy = np.asarray(xy, dtype=float).reshape(-1, 2)
        good = np.all(np.isfinite(xy), axis=1)
        self.points.append(xy[good])
        if xy.shape[0] > 1:
            seg = good[:-1] & good[1:]
            a, b = xy[:-1][seg], xy[1:][seg]
            if a.size:
                t = np.linspace(0.0, 1.0, _SAMPLES)[None, :, None]
                self.points.append((a[:, None, :] + t * (b - a)[:, None, :]).reshape(-1, 2))

    def add_points(self, xy: np.ndarray) -> None:
        xy = np.asarray(xy, dtype=float).reshape(-1, 2)
        self.points.append(xy[np.all(np.isfinite(xy), axis=1)])

    def covered_by(self, bbox: Any) -> bool:
        """Whether the display box ``bbox`` lies on a data point, line, filled area or bar."""
        pts = np.concatenate(self.points) if self.points else np.zeros((0, 2))
        if pts.size and np.any((pts[:, 0] >= bbox.x0) & (pts[:, 0] <= bbox.x1)
                               & (pts[:, 1] >= bbox.y0) & (pts[:, 1] <= bbox.y1)):
            return True
        gx, gy = np.meshgrid(np.linspace(bbox.x0, bbox.x1, 7), np.linspace(bbox.y0, bbox.y1, 5))
        probe = np.column_stack([gx.ravel(), gy.ravel()])
        for path in self.fills:
            if np.any(path.contains_points(probe)):
                return True
            v = path.vertices
            if v.size and np.any((v[:, 0] > bbox.x0) & (v[:, 0] < bbox.x1) & (v[:, 1] > bbox.y0)
                                 & (v[:, 1] < bbox.y1)):
                return True
        return any(b.width > 0 and b.height > 0 and b.overlaps(bbox) for b in self.boxes)


def _is_data(artist: Any) -> bool:
    return artist.get_visible() and artist.get_gid() != GUIDE


def data_geometry(axes: Sequence[Any]) -> DataGeometry:
    """The display-space geometry of the data drawn on ``axes``: lines (vertices and segments), markers
    without lines, scatter offsets, line collections (error bars), filled areas and bars."""
    from matplotlib.collections import LineCollection, PathCollection, PolyCollection
    from matplotlib.patches import Rectangle

    geom = DataGeometry()
    for ax in axes:
        for ln in filter(_is_data, ax.get_lines()):
            xy = ln.get_transform().transform(np.asarray(ln.get_xydata(), dtype=float))
            if ln.get_linestyle() in ("None", "none", "", " "):
                geom.add_points(xy)
            else:
                geom.add_polyline(xy)
        for col in filter(_is_data, ax.collections):
            if isinstance(col, PathCollection) and len(col.get_offsets()):
                geom.add_points(col.get_offset_transform().transform(np.asarray(col.get_offsets(), float)))
            elif isinstance(col, LineCollection):
                for seg in col.get_segments():
                    geom.add_polyline(col.get_transform().transform(np.asarray(seg, dtype=float)))
            elif isinstance(col, PolyCollection):
                tr = col.get_transform()
                geom.fills.extend(tr.transform_path(p) for p in col.get_paths())
        geom.boxes.extend(p.get_window_extent() for p in ax.patches
                          if isinstance(p, Rectangle) and _is_data(p))
    return geom


def axes_group(ax: Any) -> list[Any]:
    """``ax`` and its twins (``twinx`` shares x, ``twiny`` shares y, and both share the position, so the
    twins' data share the area of the legend)."""
    siblings = list(ax.get_shared_x_axes().get_siblings(ax)) + list(ax.get_shared_y_axes().get_siblings(ax))
    pos = ax.get_position().bounds
    group = [ax]
    for other in siblings:
        if other not in group and other.get_position().bounds == pos:
            group.append(other)
    return group


def _inside(leg: Any, ax: Any) -> bool:
    lb, ab = leg.get_window_extent(), ax.get_window_extent()
    return lb.x0 >= ab.x0 - 1 and lb.x1 <= ab.x1 + 1 and lb.y0 >= ab.y0 - 1 and lb.y1 <= ab.y1 + 1


def legends_on_data(fig: Figure) -> list[tuple[Any, Legend]]:
    """``(axes, legend)`` pairs whose legend lies inside its axes and covers data (figure laid out first)."""
    out = []
    for ax in fig.axes:
        leg = ax.get_legend()
        if leg is None or not leg.get_visible() or not _inside(leg, ax):
            continue  # no legend, or one placed outside the axes on purpose
        if data_geometry(axes_group(ax)).covered_by(leg.get_window_extent().padded(_MARGIN)):
            out.append((ax, leg))
    return out


def move_inside(ax: Any, leg: Legend) -> bool:
    """Move ``leg`` to the first location of :data:`_INSIDE` where it covers no data of ``ax`` or its
    twins; False if there is none (the legend is then left at the last location tried)."""
    geom = data_geometry(axes_group(ax))
    for loc in _INSIDE:
        leg.set_loc(loc)
        if not geom.covered_by(leg.get_window_extent().padded(_MARGIN)):
            return True
    return False


def move_below(ax: Any, leg: Legend) -> Legend:
    """Replace ``leg`` by a legend of the same entries below ``ax``, under its tick labels and x label."""
    import matplotlib.transforms as mtransforms

    fig = ax.get_figure()
    texts = leg.get_texts()
    below = ax.get_window_extent().y0 - min(ax.xaxis.get_tightbbox().y0, ax.get_window_extent().y0)
    shift = mtransforms.ScaledTranslation(0.0, -(below + 4.0) / fig.dpi, fig.dpi_scale_trans)
    title = leg.get_title().get_text()
    return ax.legend(leg.legend_handles, [t.get_text() for t in texts], loc="upper center",
                     bbox_to_anchor=(0.5, 0.0), bbox_transform=ax.transAxes + shift,
                     ncols=min(len(texts), 2), frameon=False, title=title or None,
                     fontsize=texts[0].get_fontsize() if texts else None)


def _lay_out(fig: Figure) -> bool:
    """Run the figure's layout engine (the positions of the axes as they will be saved)."""
    engine = fig.get_layout_engine()
    try:
        if engine is not None:
            engine.execute(fig)
        return True
    except Exception:  # noqa: BLE001 - a figure that cannot be laid out is saved as it is
        return False


def keep_legends_off_data(fig: Figure) -> None:
    """Move every legend inside an axes that covers data (its axes' or a twin's) below that axes."""
    if not any(ax.get_legend() is not None for ax in fig.axes):
        return
    for _ in range(_ROUNDS):
        if not _lay_out(fig):
            return
        bad = legends_on_data(fig)
        if not bad:
            return
        for ax, leg in bad:
            if not move_inside(ax, leg):
                move_below(ax, leg)
