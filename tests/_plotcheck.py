"""Independent checks of figures for the picture tests (no hessext code involved)."""
from __future__ import annotations

import numpy as np
from matplotlib.collections import PathCollection
from matplotlib.patches import Rectangle


def legend_hits(ax, leg):
    """True if ``leg`` lies on a data point or a data line of ``ax`` or its twins (reference lines aside),
    checked independently of hessext: line vertices and points sampled along every segment."""
    box = leg.get_window_extent()
    siblings = [a for a in ax.figure.axes if a.bbox.bounds == ax.bbox.bounds]
    for a in siblings:
        for ln in a.get_lines():
            if ln.get_gid() == "hessext-guide" or ln.get_label() == "equal curvature":
                continue
            xy = ln.get_transform().transform(np.asarray(ln.get_xydata(), float))
            pts = [xy]
            if ln.get_linestyle() not in ("None", "none", ""):
                t = np.linspace(0, 1, 40)[None, :, None]
                pts.append((xy[:-1, None, :] + t * (xy[1:] - xy[:-1])[:, None, :]).reshape(-1, 2))
            for p in pts:
                p = p[np.all(np.isfinite(p), axis=1)]
                if np.any((p[:, 0] > box.x0) & (p[:, 0] < box.x1) & (p[:, 1] > box.y0) & (p[:, 1] < box.y1)):
                    return True
        for col in a.collections:  # scatter points (Ritz values)
            if isinstance(col, PathCollection) and len(col.get_offsets()):
                p = col.get_offset_transform().transform(np.asarray(col.get_offsets(), float))
                if np.any((p[:, 0] > box.x0) & (p[:, 0] < box.x1) & (p[:, 1] > box.y0) & (p[:, 1] < box.y1)):
                    return True
        for patch in a.patches:  # bars
            if isinstance(patch, Rectangle) and patch.get_window_extent().overlaps(box):
                return True
    return False
