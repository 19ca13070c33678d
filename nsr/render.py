"""Headless pictures with matplotlib's Agg canvas (no display, no GPU, no pyplot state).

Every function writes a PNG to a temporary name beside ``path`` and renames it, and returns
the path; a failure in rendering is turned into a warning and ``None``, never an exception.
"""

from __future__ import annotations

import functools
import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import trimesh

DEFAULT_VIEW = (35.0, -60.0)  # (elevation, azimuth) in degrees
MAX_RENDER_FACES = 300_000
MAX_POLYGON_EDGES = 10_000  # more polygons than this: their edges would only blacken the shape


def _safe(fn: Callable) -> Callable:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Path | None:
        try:
            return fn(*args, **kwargs)
        except Exception as err:  # a picture is never worth a crash
            warnings.warn(f"{fn.__name__} failed: {type(err).__name__}: {err}", stacklevel=2)
            return None

    return wrapper


def _figure(size: tuple[int, int], dpi: int = 100) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(size[0] / dpi, size[1] / dpi), dpi=dpi)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Any, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}.png")
    try:
        fig.savefig(tmp, dpi=fig.dpi, format="png")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def view_direction(view: tuple[float, float]) -> np.ndarray:
    """Unit vector from the scene towards the camera for matplotlib's ``(elev, azim)``."""
    elev, azim = np.radians(view[0]), np.radians(view[1])
    return np.array([np.cos(elev) * np.cos(azim), np.cos(elev) * np.sin(azim), np.sin(elev)])


def lambert_colors(
    normals: np.ndarray, light: np.ndarray, base: Sequence[float] = (0.55, 0.7, 0.9)
) -> np.ndarray:
    """RGBA per face ``(F, 4)`` from unit normals ``(F, 3)``: ambient + two-sided Lambert."""
    shade = 0.25 + 0.75 * np.abs(normals @ (light / np.linalg.norm(light)))
    rgb = np.clip(shade[:, None] * np.asarray(base)[None], 0, 1)
    return np.hstack([rgb, np.ones((len(rgb), 1))])


def _set_box(ax: Any, points: np.ndarray) -> None:
    lo, hi = points.min(0), points.max(0)
    c, r = (lo + hi) / 2, max(float((hi - lo).max()) / 2, 1e-9)
    ax.set_xlim(c[0] - r, c[0] + r)
    ax.set_ylim(c[1] - r, c[1] + r)
    ax.set_zlim(c[2] - r, c[2] + r)
    ax.set_box_aspect((1, 1, 1))


def _draw_mesh(
    ax: Any,
    mesh: trimesh.Trimesh,
    view: tuple[float, float],
    edges: bool,
    polygons: Sequence[np.ndarray] | None,
) -> None:
    from mpl_toolkits.mplot3d.art3d import Line3DCollection, Poly3DCollection

    ax.view_init(elev=view[0], azim=view[1])
    ax.set_axis_off()
    if len(mesh.faces) == 0:
        ax.text2D(0.5, 0.5, "empty mesh", ha="center", transform=ax.transAxes)
        return
    faces = np.asarray(mesh.faces)
    if len(faces) > MAX_RENDER_FACES:
        faces = faces[:: int(np.ceil(len(faces) / MAX_RENDER_FACES))]
    tris = np.asarray(mesh.vertices)[faces]  # (F, 3, 3)
    eye = view_direction(view)
    normals = np.cross(tris[:, 1] - tris[:, 0], tris[:, 2] - tris[:, 0])
    normals /= np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-300)
    order = np.argsort(tris.mean(1) @ eye)  # painter's order: far faces first
    light = eye + np.array([0.3, 0.3, 0.6])
    colors = lambert_colors(normals[order], light)
    # Edges in the face color hide antialiasing seams between neighbouring triangles.
    coll = Poly3DCollection(
        tris[order], facecolors=colors, edgecolors=colors, linewidths=0.15, zsort="average"
    )
    if edges and polygons is None:
        coll.set_edgecolor((0, 0, 0, 0.35))
        coll.set_linewidth(0.2)
    ax.add_collection3d(coll)
    if polygons is not None and 0 < len(polygons) <= MAX_POLYGON_EDGES:
        segs = polygon_segments(np.asarray(mesh.vertices), polygons, eye)
        if len(segs):
            ax.add_collection3d(Line3DCollection(segs, colors=(0, 0, 0, 0.45), linewidths=0.25))
    _set_box(ax, np.asarray(mesh.vertices))


def polygon_segments(
    vertices: np.ndarray, polygons: Sequence[np.ndarray], eye: np.ndarray | None = None
) -> np.ndarray:
    """Boundary edges ``(K, 2, 3)`` of polygons (vertex cycles into ``vertices`` ``(V, 3)``).

    With ``eye`` (towards the camera) only polygons whose Newell normal faces it are kept:
    matplotlib draws lines over all faces, so back edges would show through.
    """
    lens = np.array([len(p) for p in polygons])
    flat = np.concatenate([np.asarray(p, dtype=np.int64) for p in polygons])
    start = np.repeat(np.cumsum(lens) - lens, lens)
    pos = np.arange(len(flat))
    nxt = flat[start + (pos - start + 1) % np.repeat(lens, lens)]
    a, b = vertices[flat], vertices[nxt]
    keep = np.repeat(lens > 1, lens)
    if eye is not None:
        normals = np.zeros((len(lens), 3))
        np.add.at(normals, np.repeat(np.arange(len(lens)), lens), np.cross(a, b))
        keep &= np.repeat(normals @ eye > 0, lens)
    return np.stack([a[keep], b[keep]], 1)


@_safe
def render_mesh(
    mesh: trimesh.Trimesh,
    path: str | Path,
    size: tuple[int, int] = (512, 512),
    edges: bool = False,
    polygons: Sequence[np.ndarray] | None = None,
    view: tuple[float, float] = DEFAULT_VIEW,
    title: str | None = None,
) -> Path | None:
    """Shaded triangles (Lambert from face normals, painter's sorting, ``Poly3DCollection``).

    ``mesh``: vertices ``(V, 3)``, faces ``(F, 3)``. ``edges`` outlines the triangles;
    ``polygons`` (list of ``(k,)`` vertex cycles, the exact mesh's planar polygons) draws the
    edges of the front-facing polygons instead (up to ``MAX_POLYGON_EDGES`` polygons).
    ``size`` in pixels; ``view`` = ``(elevation, azimuth)`` degrees.
    """
    fig = _figure(size)
    ax = fig.add_axes((0, 0, 1, 0.94 if title else 1), projection="3d")
    _draw_mesh(ax, mesh, view, edges, polygons)
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, path)


@_safe
def render_side_by_side(
    meshes: Sequence[trimesh.Trimesh],
    titles: Sequence[str],
    path: str | Path,
    panel: int = 360,
    view: tuple[float, float] = DEFAULT_VIEW,
    polygons: Sequence[Sequence[np.ndarray] | None] | None = None,
) -> Path | None:
    """One row of shaded meshes with titles; ``panel`` pixels per (square) panel."""
    n = len(meshes)
    fig = _figure((panel * n, panel + 30))
    for i, mesh in enumerate(meshes):
        ax = fig.add_subplot(1, n, i + 1, projection="3d")
        _draw_mesh(ax, mesh, view, False, polygons[i] if polygons else None)
        ax.set_title(titles[i] if i < len(titles) else "", fontsize=9)
    fig.subplots_adjust(left=0, right=1, bottom=0, top=0.92, wspace=0)
    return _save(fig, path)


@_safe
def render_complex_2d(
    vertices: np.ndarray,
    edges: np.ndarray,
    path: str | Path,
    regions: Sequence[np.ndarray] | None = None,
    values: np.ndarray | None = None,
    level_set: np.ndarray | None = None,
    size: tuple[int, int] = (512, 512),
) -> Path | None:
    """A 2D network's polyhedral complex: edges, optional filled regions and level set.

    ``vertices`` ``(V, 2)``, ``edges`` ``(E, 2)`` vertex indices; ``regions`` list of ``(k,)``
    vertex cycles colored by ``values`` ``(R,)`` (e.g. the network at the region centroids,
    diverging colormap centered at 0) or by index; ``level_set`` ``(K, 2, 2)`` segments.
    """
    from matplotlib.collections import LineCollection, PolyCollection
    from matplotlib.colors import TwoSlopeNorm

    v = np.asarray(vertices, dtype=np.float64)
    e = np.asarray(edges, dtype=np.int64).reshape(-1, 2)
    fig = _figure(size)
    ax = fig.add_axes((0.02, 0.02, 0.96, 0.96))
    if regions is not None and len(regions):
        polys = [v[np.asarray(r)] for r in regions]
        coll = PolyCollection(polys, edgecolors="none")
        if values is not None:
            vals = np.asarray(values, dtype=np.float64)
            lim = max(float(np.abs(vals).max()), 1e-12)
            coll.set_array(vals)
            coll.set_cmap("RdBu_r")
            coll.set_norm(TwoSlopeNorm(0.0, -lim, lim))
        else:
            coll.set_array(np.arange(len(polys)) % 20)
            coll.set_cmap("tab20")
        ax.add_collection(coll)
    ax.add_collection(LineCollection(v[e], colors="k", linewidths=0.3))
    if level_set is not None and len(level_set):
        ax.add_collection(LineCollection(np.asarray(level_set), colors="gold", linewidths=2.0))
    if len(v):
        ax.set_xlim(v[:, 0].min(), v[:, 0].max())
        ax.set_ylim(v[:, 1].min(), v[:, 1].max())
    ax.set_aspect("equal")
    ax.set_axis_off()
    return _save(fig, path)


def slice_values(
    net: Any, bounds: np.ndarray, axis: int, value: float, resolution: int = 256
) -> tuple[np.ndarray, tuple[float, float, float, float]]:
    """Network values on a ``(resolution, resolution)`` grid of the plane ``x[axis] = value``.

    Returns the image (rows along the second remaining axis) and its extent.
    """
    import torch

    from nsr.networks import as_network

    pl = as_network(net, dtype=torch.float64, device="cpu")
    a, b = [i for i in range(3) if i != axis]
    u = np.linspace(bounds[a, 0], bounds[a, 1], resolution)
    w = np.linspace(bounds[b, 0], bounds[b, 1], resolution)
    uu, ww = np.meshgrid(u, w)
    pts = np.zeros((uu.size, 3))
    pts[:, a], pts[:, b], pts[:, axis] = uu.ravel(), ww.ravel(), value
    with torch.no_grad():
        img = pl(torch.from_numpy(pts)).numpy().reshape(uu.shape)
    return img, (u[0], u[-1], w[0], w[-1])


@_safe
def render_slice(
    net: Any,
    bounds: Any,
    axis: int,
    value: float,
    path: str | Path,
    segments: np.ndarray | None = None,
    resolution: int = 256,
    size: tuple[int, int] = (512, 512),
) -> Path | None:
    """Field of a 3D network on the plane ``x[axis] = value``, zero contour, complex edges.

    ``bounds`` ``(lo, hi)`` or ``(3, 2)``; ``segments`` ``(K, 2, 2)``: where the complex's
    faces cross the plane, in the plane's coordinates (the two remaining axes, in order).
    """
    from matplotlib.collections import LineCollection
    from matplotlib.colors import TwoSlopeNorm

    from nsr.marching_cubes import as_bounds

    box = as_bounds(bounds, 3)
    img, extent = slice_values(net, box, axis, value, resolution)
    fig = _figure(size)
    ax = fig.add_axes((0.12, 0.08, 0.82, 0.86))
    lim = max(float(np.abs(img).max()), 1e-12)
    ax.imshow(img, origin="lower", extent=extent, cmap="RdBu_r", norm=TwoSlopeNorm(0, -lim, lim))
    if img.min() < 0 < img.max():
        u = np.linspace(extent[0], extent[1], img.shape[1])
        w = np.linspace(extent[2], extent[3], img.shape[0])
        ax.contour(u, w, img, levels=[0.0], colors="k", linewidths=1.5)
    if segments is not None and len(segments):
        lines = LineCollection(np.asarray(segments), colors=(0, 0, 0, 0.5), linewidths=0.4)
        ax.add_collection(lines)
    names = "xyz"
    a, b = [names[i] for i in range(3) if i != axis]
    ax.set_xlabel(a)
    ax.set_ylabel(b)
    ax.set_title(f"{names[axis]} = {value:g}", fontsize=10)
    return _save(fig, path)


@_safe
def plot_series(
    x: Sequence[float],
    series: dict[str, Sequence[float]],
    path: str | Path,
    xlabel: str,
    ylabel: str,
    title: str = "",
    logy: bool = True,
    hlines: dict[str, float] | None = None,
    size: tuple[int, int] = (560, 420),
) -> Path | None:
    """Line plot of named series against ``x``; ``hlines`` draws constants (e.g. the exact mesh)."""
    fig = _figure(size)
    ax = fig.add_subplot(1, 1, 1)
    for name, ys in series.items():
        ax.plot(x, ys, marker="o", label=name)
    for i, (name, y) in enumerate((hlines or {}).items()):
        ax.axhline(y, linestyle="--", color=f"C{len(series) + i}", label=name)
    ax.set_xscale("log", base=2)
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)
