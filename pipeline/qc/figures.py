"""The report's figures: matplotlib (no pyplot, no display) on arrays the report has read.
Every function draws one PNG and returns its path."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

DPI = 80


def _save(fig: Figure, path: Path) -> Path:
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    return path


def slices(path: Path, rows: Sequence[tuple[str, Sequence[tuple[str, np.ndarray, float]]]]) -> Path:
    """One row per position: ``(title, [(panel title, rgb image, aspect), ...])``."""
    ncol = max(len(panels) for _, panels in rows)
    fig = Figure(figsize=(4 * ncol, 3.6 * len(rows)))
    for r, (title, panels) in enumerate(rows):
        for c, (name, rgb, aspect) in enumerate(panels):
            ax = fig.add_subplot(len(rows), ncol, r * ncol + c + 1)
            ax.imshow(rgb, aspect=aspect, interpolation="nearest")
            ax.set_title(f"{title}: {name}" if c == 0 else name, fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
    return _save(fig, path)


def projection(path: Path, raw: np.ndarray | None, rgb: np.ndarray, title: str) -> Path:
    panels = ([("raw, max projection", raw, "gray")] if raw is not None else []) + [("labels over raw, max projection", rgb, None)]
    fig = Figure(figsize=(5 * len(panels), 5))
    for i, (name, image, cmap) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        ax.imshow(image, cmap=cmap, interpolation="nearest")
        ax.set_title(name, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def block_grid(path: Path, rgb: np.ndarray, origin: Sequence[int], write: Sequence[int],
               labels: dict[tuple[int, int], str], skipped: set[tuple[int, int]], title: str) -> Path:
    """``rgb`` (a plane window at ``origin`` (y, x)) with the block borders (every ``write``
    voxels from the volume origin), a text per block and skipped blocks hatched."""
    h, w = rgb.shape[:2]
    fig = Figure(figsize=(7, 7 * h / max(w, 1) + 0.5))
    ax = fig.add_subplot(1, 1, 1)
    ax.imshow(rgb, interpolation="nearest", extent=(origin[1] - 0.5, origin[1] + w - 0.5, origin[0] + h - 0.5, origin[0] - 0.5))
    for a, (lo, n, step) in enumerate(zip(origin, (h, w), write, strict=True)):
        for edge in range(-(-lo // step) * step, lo + n + 1, step):
            (ax.axhline if a == 0 else ax.axvline)(edge - 0.5, color="cyan", lw=1.2)
    for (by, bx), text in labels.items():
        y, x = (by + 0.5) * write[0], (bx + 0.5) * write[1]
        if origin[0] <= y < origin[0] + h and origin[1] <= x < origin[1] + w:
            ax.text(x, y, text, color="white", ha="center", va="center", fontsize=8,
                    bbox={"facecolor": "black", "alpha": 0.5, "lw": 0})
    for by, bx in skipped:
        ax.add_patch(_rect((bx * write[1] - 0.5, by * write[0] - 0.5), write[1], write[0]))
    ax.set_xlim(origin[1] - 0.5, origin[1] + w - 0.5)
    ax.set_ylim(origin[0] + h - 0.5, origin[0] - 0.5)
    ax.set_title(title, fontsize=9)
    return _save(fig, path)


def _rect(xy: tuple[float, float], w: float, h: float) -> Any:
    from matplotlib.patches import Rectangle

    return Rectangle(xy, w, h, fill=False, hatch="//", edgecolor="orange", lw=0)


def objects(path: Path, cols: dict[str, np.ndarray], unit: str) -> Path:
    fig = Figure(figsize=(13, 3.4))
    specs = [("voxels", f"object size ({unit}, log scale)", True), ("elongation", "bounding-box elongation (longest / shortest)", False),
             ("fill", "fill (voxels / bounding-box voxels)", False)]
    for i, (key, label, log) in enumerate(specs):
        ax = fig.add_subplot(1, 3, i + 1)
        v = cols[key][np.isfinite(cols[key])]
        if len(v):
            bins = np.geomspace(max(v.min(), 1), max(v.max(), 2), 30) if log else 30
            ax.hist(v, bins=bins, color="steelblue")
            if log:
                from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

                ax.set_xscale("log")  # labels at 1, 2, 5 x 10^k as plain numbers (matplotlib's overlap)
                ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
                ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}"))
                ax.xaxis.set_minor_formatter(NullFormatter())
            ax.axvline(float(np.median(v)), color="black", ls="--", lw=1)
        ax.set_xlabel(label, fontsize=9)
        ax.set_ylabel("objects", fontsize=9)
    fig.suptitle(f"{len(cols['voxels'])} objects (dashed: median)", fontsize=10)
    return _save(fig, path)


def block_maps(path: Path, maps: Sequence[tuple[str, np.ndarray, str]], note: str) -> Path:
    """Heat maps over the block grid (y, x): ``(title, values, colour map)``."""
    fig = Figure(figsize=(4.5 * len(maps), 4))
    for i, (title, values, cmap) in enumerate(maps):
        ax = fig.add_subplot(1, len(maps), i + 1)
        counts = "skipped" in title
        im = ax.imshow(values, cmap=cmap, interpolation="nearest", vmin=0 if counts else None,
                       vmax=max(1.0, float(values.max())) if counts else None)
        fig.colorbar(im, ax=ax, shrink=0.8)
        ax.set_xticks(range(values.shape[1]))
        ax.set_yticks(range(values.shape[0]))
        if values.size <= 256:
            for (y, x), v in np.ndenumerate(values):
                ax.text(x, y, f"{v:.3g}", ha="center", va="center", fontsize=7, color="white",
                        bbox={"facecolor": "black", "alpha": 0.4, "lw": 0})
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("block x", fontsize=8)
        ax.set_ylabel("block y", fontsize=8)
    fig.suptitle(note, fontsize=9)
    return _save(fig, path)


def seam_audit(path: Path, audit: dict[str, Any]) -> Path:
    """Evidence of the accepted and rejected pairs, and the pairs per face."""
    h = audit["histograms"]
    fig = Figure(figsize=(14, 3.6))
    ax = fig.add_subplot(1, 3, 1)
    edges = np.asarray(h["distance_edges"])
    centres, width = (edges[:-1] + edges[1:]) / 2, np.diff(edges)
    ax.bar(centres, h["accepted"]["distance"], width, color="seagreen", label="accepted")
    ax.bar(centres, h["rejected"]["distance"], width, bottom=h["accepted"]["distance"], color="indianred", label="rejected")
    limit = audit["rule"].get("max_distance") or audit["rule"].get("threshold")
    if limit:
        ax.axvline(limit, color="black", ls="--", lw=1, label="rule's distance")
    ax.set_xlabel("embedding distance across the face", fontsize=9)
    ax.set_ylabel("fragment pairs", fontsize=9)
    ax.legend(fontsize=8)
    ax = fig.add_subplot(1, 3, 2)
    labels = [f"{a}" for a in h["contact_edges"][:-1]]
    x = np.arange(len(labels))
    ax.bar(x, h["accepted"]["contact"], color="seagreen")
    ax.bar(x, h["rejected"]["contact"], bottom=h["accepted"]["contact"], color="indianred")
    ax.set_xticks(x, labels, fontsize=7, rotation=60)
    ax.set_xlabel("contact voxel pairs (at least)", fontsize=9)
    ax = fig.add_subplot(1, 3, 3)
    rows = audit["face_rows"][:60]
    pos = np.arange(len(rows))
    ax.bar(pos, [r["accepted"] for r in rows], color="seagreen")
    ax.bar(pos, [r["rejected"] for r in rows], bottom=[r["accepted"] for r in rows], color="indianred")
    ax.set_xticks(pos, [f"{r['block']}/{'zyx'[r['axis']]}" for r in rows], fontsize=7, rotation=90)
    ax.set_xlabel("face (lower block / axis)", fontsize=9)
    fig.suptitle(f"{audit['faces']} faces: {audit['touching_pairs']} touching pairs, {audit['accepted_pairs']} accepted, "
                 f"{audit['rejected_pairs']} rejected; {audit['objects_spanning_blocks']} objects span more than one block",
                 fontsize=10)
    return _save(fig, path)


def gradient(path: Path, profiles: Sequence[tuple[str, np.ndarray, int]], image: np.ndarray,
             borders: Sequence[tuple[int, int]], title: str) -> Path:
    """Left: gradient magnitude per plane around each seam (``(name, profile, index of the
    plane pair at the seam)``); right: the gradient magnitude image with the block borders."""
    fig = Figure(figsize=(12, 4))
    ax = fig.add_subplot(1, 2, 1)
    for name, prof, at in profiles:
        ax.plot(np.arange(len(prof)) - at, prof, marker=".", label=name)
    ax.axvline(0, color="black", ls="--", lw=1)
    ax.set_xlabel("plane pair relative to the block border (0: across it)", fontsize=9)
    ax.set_ylabel("mean embedding gradient magnitude", fontsize=9)
    if profiles:
        ax.legend(fontsize=8)
    else:  # one block in the region: no border to profile
        ax.text(0.5, 0.5, "no block border in the region", transform=ax.transAxes, ha="center", va="center")
    ax = fig.add_subplot(1, 2, 2)
    im = ax.imshow(image, cmap="magma", interpolation="nearest")
    fig.colorbar(im, ax=ax, shrink=0.8)
    for axis, at in borders:
        (ax.axhline if axis == 0 else ax.axvline)(at - 0.5, color="cyan", lw=0.8, ls=":")
    ax.set_title("gradient magnitude, one plane (dotted: block borders)", fontsize=9)
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def suspects(path: Path, panels: Sequence[dict[str, Any]]) -> Path:
    """One panel per object to check: the plane through its centroid, the object outlined in red,
    other objects in cyan, the model's foreground (when predicted) dashed yellow."""
    from .views import stretch

    ncol = min(4, len(panels))
    nrow = -(-len(panels) // ncol)
    fig = Figure(figsize=(3.4 * ncol, 3.6 * nrow))
    for k, p in enumerate(panels):
        ax = fig.add_subplot(nrow, ncol, k + 1)
        ax.imshow(stretch(p["raw"]), cmap="gray", interpolation="nearest", aspect=p.get("aspect", 1.0))
        if (p["others"] > 0).any():
            ax.contour(p["others"] > 0, levels=[0.5], colors="cyan", linewidths=0.6)
        if p["mine"].any():
            ax.contour(p["mine"], levels=[0.5], colors="red", linewidths=1.2)
        if p.get("foreground") is not None and p["foreground"].any():
            ax.contour(p["foreground"], levels=[0.5], colors="yellow", linewidths=0.8, linestyles="dashed")
        ax.set_title(p["title"], fontsize=7)
        ax.set_xticks([])
        ax.set_yticks([])
    return _save(fig, path)


def series(path: Path, x: np.ndarray, y: np.ndarray, xlabel: str, ylabel: str) -> Path:
    """One line of ``y`` over ``x`` (e.g. objects per time point)."""
    fig = Figure(figsize=(6, 2.6))
    ax = fig.add_subplot()
    from matplotlib.ticker import MaxNLocator

    ax.plot(x, y, marker="o", ms=3)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # time points are whole numbers
    ax.set_ylim(0, max(1.0, float(np.max(y, initial=0)) * 1.1))
    return _save(fig, path)
