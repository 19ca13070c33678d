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


def _diverging_norm(values: np.ndarray, center: float = 0.0) -> Any:
    """A diverging color norm centered at ``center`` that spans each side's own range: with a
    symmetric range the side with the smaller values (often the inside of an SDF) reads white."""
    from matplotlib.colors import TwoSlopeNorm

    lo, hi = float(np.min(values)), float(np.max(values))
    span = max(hi - lo, 1e-12)
    return TwoSlopeNorm(center, min(lo, center - 1e-3 * span), max(hi, center + 1e-3 * span))


def _value_colorbar(fig: Any, mappable: Any, cax: Any) -> None:
    """Colorbar of a network's value under :func:`_diverging_norm`: each half of the bar is one
    side of the center, so ticks are placed per side (linear ticks would leave the short side bare)."""
    norm = mappable.norm
    lo, mid, hi = norm.vmin, norm.vcenter, norm.vmax
    ticks = np.unique(np.concatenate([np.linspace(lo, mid, 4), np.linspace(mid, hi, 4)]))
    bar = fig.colorbar(mappable, cax=cax, ticks=ticks)
    bar.ax.set_yticklabels([f"{t:.2g}" for t in ticks])
    bar.set_label("f (network output units); negative = inside", fontsize=9)


def _resolution_ticks(ax: Any, x: Sequence[float]) -> None:
    """Tick a log2 x axis at the resolutions themselves, written as plain numbers (64, not 2^6)."""
    from matplotlib.ticker import FixedLocator, NullLocator

    ax.xaxis.set_major_locator(FixedLocator([float(v) for v in x]))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticklabels([f"{v:g}" for v in x])


def view_direction(view: tuple[float, float]) -> np.ndarray:
    """Unit vector from the scene towards the camera for matplotlib's ``(elev, azim)``.

    Parameters
    ----------
    view : (float, float)
        ``(elevation, azimuth)`` in degrees, z up.

    Returns
    -------
    (3,) float ndarray
        The unit vector.

    Examples
    --------
    >>> from nsr.eval.render import view_direction
    >>> view_direction((0.0, 0.0)), view_direction((90.0, 0.0)).round(6)
    (array([1., 0., 0.]), array([0., 0., 1.]))
    """
    elev, azim = np.radians(view[0]), np.radians(view[1])
    return np.array([np.cos(elev) * np.cos(azim), np.cos(elev) * np.sin(azim), np.sin(elev)])


def lambert_colors(
    normals: np.ndarray, light: np.ndarray, base: Sequence[float] = (0.55, 0.7, 0.9)
) -> np.ndarray:
    """RGBA per face from unit normals: ambient + two-sided Lambert.

    Parameters
    ----------
    normals : (F, 3) float ndarray
        Unit face normals.
    light : (3,) float ndarray
        Direction towards the light (any length).
    base : (3,) sequence of float, optional
        RGB of a face lit head-on.

    Returns
    -------
    (F, 4) float ndarray
        RGBA in [0, 1]: ``base`` times ``0.25 + 0.75 |n . l|``, opaque.

    Examples
    --------
    A face towards the light gets ``base``; a face edge-on to it, a quarter of it:

    >>> import numpy as np
    >>> from nsr.eval.render import lambert_colors
    >>> lambert_colors(np.array([[1.0, 0, 0], [0, 1, 0]]), np.array([1.0, 0, 0]), base=(0.4, 0.8, 1.0))
    array([[0.4 , 0.8 , 1.  , 1.  ],
           [0.1 , 0.2 , 0.25, 1.  ]])
    """
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
    """Boundary edges of polygons given as vertex cycles.

    With ``eye`` (towards the camera) only polygons whose Newell normal faces it are kept:
    matplotlib draws lines over all faces, so back edges would show through.

    Parameters
    ----------
    vertices : (V, 3) float ndarray
        Vertex positions.
    polygons : sequence of (k,) int ndarray
        Vertex cycles into ``vertices``.
    eye : (3,) float ndarray, optional
        Direction towards the camera; ``None`` keeps every polygon.

    Returns
    -------
    (K, 2, 3) float ndarray
        One segment (start, end) per polygon side.

    Examples
    --------
    A unit square seen from above (+z), counter-clockwise then clockwise (facing away):

    >>> import numpy as np
    >>> from nsr.eval.render import polygon_segments
    >>> square = np.array([[0.0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0]])
    >>> up = polygon_segments(square, [np.array([0, 1, 2, 3])], eye=np.array([0.0, 0, 1]))
    >>> down = polygon_segments(square, [np.array([3, 2, 1, 0])], eye=np.array([0.0, 0, 1]))
    >>> up.shape, down.shape, np.linalg.norm(up[:, 1] - up[:, 0], axis=1).sum()
    ((4, 2, 3), (0, 2, 3), np.float64(4.0))
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

    Parameters
    ----------
    mesh : trimesh.Trimesh
        The mesh; an empty one is drawn as the words "empty mesh".
    path : str or Path
        The PNG to write.
    size : (int, int), optional
        Width and height in pixels.
    edges : bool, optional
        Outline every triangle.
    polygons : sequence of (k,) int ndarray, optional
        Planar polygons whose front edges are drawn instead.
    view : (float, float), optional
        ``(elevation, azimuth)`` in degrees.
    title : str, optional
        Written above the picture.

    Returns
    -------
    Path or None
        ``path``, or ``None`` (with a warning) when rendering failed.

    Examples
    --------
    >>> import tempfile, trimesh
    >>> from pathlib import Path
    >>> from matplotlib.image import imread
    >>> from nsr.eval.render import render_mesh
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     png = render_mesh(trimesh.creation.icosphere(1), Path(tmp) / "ball.png", size=(120, 100), title="a ball")
    ...     imread(png).shape[:2]
    (100, 120)
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
    captions: Sequence[str] | None = None,
    title: str = "",
) -> Path | None:
    """One row of shaded meshes with titles; ``panel`` pixels per (square) panel.

    ``captions`` (one per mesh, may span lines) are written under the panels, e.g. the
    numbers measured on each mesh; ``title`` above them all.

    Parameters
    ----------
    meshes : sequence of trimesh.Trimesh
        The meshes, left to right.
    titles : sequence of str
        One title per mesh.
    path : str or Path
        The PNG to write.
    panel : int, optional
        Width and height of each mesh's panel, pixels.
    view : (float, float), optional
        ``(elevation, azimuth)`` in degrees.
    polygons : sequence of (sequence of (k,) int ndarray or None), optional
        Per mesh, planar polygons whose front edges are drawn (see :func:`render_mesh`).
    captions : sequence of str, optional
        Text under each panel.
    title : str, optional
        Text above all panels.

    Returns
    -------
    Path or None
        ``path``, or ``None`` (with a warning) when rendering failed.

    Examples
    --------
    >>> import tempfile, trimesh
    >>> from pathlib import Path
    >>> from matplotlib.image import imread
    >>> from nsr.eval.render import render_side_by_side
    >>> ball, cube = trimesh.creation.icosphere(1), trimesh.creation.box()
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     png = render_side_by_side([ball, cube], ["ball", "cube"], Path(tmp) / "two.png", panel=100)
    ...     imread(png).shape[:2]  # (panel + 30 pixels of titles, 2 panels)
    (130, 200)
    """
    n = len(meshes)
    cap_h = 16 * (max(c.count("\n") for c in captions) + 2) if captions else 0
    head = 30 + (24 if title else 0)
    height = panel + head + cap_h
    fig = _figure((panel * n, height))
    for i, mesh in enumerate(meshes):
        ax = fig.add_axes((i / n, cap_h / height, 1 / n, panel / height), projection="3d")
        _draw_mesh(ax, mesh, view, False, polygons[i] if polygons else None)
        ax.set_title(titles[i] if i < len(titles) else "", fontsize=10)
        if captions and i < len(captions):
            fig.text((i + 0.5) / n, (cap_h - 4) / height, captions[i], ha="center", va="top", fontsize=9,
                     family="monospace")  # fmt: skip
    if title:
        fig.suptitle(title, fontsize=11, y=1 - 4 / height, va="top")
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
    title: str = "",
    axis_names: tuple[str, str] = ("x", "y"),
) -> Path | None:
    """A 2D network's polyhedral complex: edges, optional filled regions and level set.

    ``vertices`` ``(V, 2)``, ``edges`` ``(E, 2)`` vertex indices; ``regions`` list of ``(k,)``
    vertex cycles colored by ``values`` ``(R,)`` (e.g. the network at the region centroids,
    diverging colormap centered at 0, with a colorbar) or by index; ``level_set`` ``(K, 2, 2)``
    segments. Axes in the network's input units, and a legend. :func:`render_regions` draws the
    same picture from a complex, with the network's exact values.

    Parameters
    ----------
    vertices : (V, 2) float ndarray
        The complex's vertices.
    edges : (E, 2) int ndarray
        Its edges, as pairs of vertex indices.
    path : str or Path
        The PNG to write.
    regions : sequence of (k,) int ndarray, optional
        Region boundaries as vertex cycles.
    values : (R,) float ndarray, optional
        One value per region.
    level_set : (K, 2, 2) float ndarray, optional
        Segments of the level set, drawn bold.
    size : (int, int), optional
        Width and height in pixels.
    title : str, optional
        Above the plot.
    axis_names : (str, str), optional
        Names of the two input coordinates.

    Returns
    -------
    Path or None
        ``path``, or ``None`` (with a warning) when rendering failed.

    Examples
    --------
    A square cut along its diagonal into two regions:

    >>> import tempfile
    >>> import numpy as np
    >>> from pathlib import Path
    >>> from nsr.eval.render import render_complex_2d
    >>> v = np.array([[0.0, 0], [1, 0], [1, 1], [0, 1]])
    >>> e = np.array([[0, 1], [1, 2], [2, 3], [3, 0], [0, 2]])
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     png = render_complex_2d(v, e, Path(tmp) / "c.png", regions=[np.array([0, 1, 2]), np.array([0, 2, 3])],
    ...                             values=np.array([-1.0, 1.0]), size=(200, 200))
    ...     png.is_file()
    True
    """
    from matplotlib.collections import LineCollection, PolyCollection
    from matplotlib.lines import Line2D

    v = np.asarray(vertices, dtype=np.float64)
    e = np.asarray(edges, dtype=np.int64).reshape(-1, 2)
    fig = _figure(size)
    colorbar = regions is not None and len(regions) and values is not None
    ax = fig.add_axes((0.13, 0.1, 0.64 if colorbar else 0.8, 0.8))
    if regions is not None and len(regions):
        polys = [v[np.asarray(r)] for r in regions]
        coll = PolyCollection(polys, edgecolors="none")
        if values is not None:
            vals = np.asarray(values, dtype=np.float64)
            coll.set_array(vals)
            coll.set_cmap("RdBu_r")
            coll.set_norm(_diverging_norm(vals))
            cax = fig.add_axes((0.82, 0.1, 0.03, 0.8))
            _value_colorbar(fig, coll, cax)
        else:
            coll.set_array(np.arange(len(polys)) % 20)
            coll.set_cmap("tab20")
        ax.add_collection(coll)
    ax.add_collection(LineCollection(v[e], colors="k", linewidths=0.3))
    handles = [Line2D([], [], color="k", lw=0.6, label=f"linear-region boundaries ({len(e)} edges)")]
    if level_set is not None and len(level_set):
        ax.add_collection(LineCollection(np.asarray(level_set), colors="gold", linewidths=2.0))
        handles.append(Line2D([], [], color="gold", lw=2.0, label=f"exact level set f = 0 ({len(level_set)} segments)"))
    if len(v):
        ax.set_xlim(v[:, 0].min(), v[:, 0].max())
        ax.set_ylim(v[:, 1].min(), v[:, 1].max())
    ax.set_aspect("equal")
    ax.set_xlabel(f"{axis_names[0]} (input units of the network)")
    ax.set_ylabel(f"{axis_names[1]} (input units of the network)")
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.1), fontsize=8, ncol=2, frameon=False)
    ax.set_title(title or "the network's linear regions and its level set f = 0", fontsize=10)
    return _save(fig, path)


def slice_values(
    net: Any, bounds: np.ndarray, axis: int, value: float, resolution: int = 256
) -> tuple[np.ndarray, tuple[float, float, float, float]]:
    """Network values on a ``(resolution, resolution)`` grid of the plane ``x[axis] = value``.

    Parameters
    ----------
    net : network
        A 3D network (anything :func:`nsr.networks.as_network` takes); evaluated in float64 on the CPU.
    bounds : (3, 2) float ndarray
        The box; the grid spans the two other axes' ranges.
    axis : {0, 1, 2}
        The axis normal to the plane.
    value : float
        The plane's coordinate on ``axis``.
    resolution : int, optional
        Samples per side.

    Returns
    -------
    image : (resolution, resolution) float ndarray
        Network values; columns along the first remaining axis, rows along the second.
    extent : (float, float, float, float)
        ``(u0, u1, w0, w1)``, the grid's range (matplotlib's ``imshow`` extent).

    Examples
    --------
    ``|x| + |y| + |z| - 0.5`` on the plane z = 0, at x, y in {-1, 0, 1}:

    >>> import numpy as np
    >>> from nsr.networks import octahedron_network
    >>> from nsr.eval.render import slice_values
    >>> img, extent = slice_values(octahedron_network(0.5), np.array([[-1.0, 1]] * 3), 2, 0.0, resolution=3)
    >>> img
    array([[ 1.5,  0.5,  1.5],
           [ 0.5, -0.5,  0.5],
           [ 1.5,  0.5,  1.5]])
    """
    import torch

    from nsr.pl.graph import as_graph

    pl = as_graph(net).to(device="cpu", dtype=torch.float64)  # any network nsr reads; values of g
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
    size: tuple[int, int] = (640, 560),
    true_sdf: Callable[[np.ndarray], np.ndarray] | None = None,
    title: str | None = None,
) -> Path | None:
    """Field of a 3D network on the plane ``x[axis] = value``, with a colorbar and a legend.

    ``bounds`` ``(lo, hi)`` or ``(3, 2)``. Drawn: the network's value (diverging colors,
    network output units), its zero contour from the ``resolution``-square grid, ``segments``
    ``(K, 2, 2)`` (e.g. where the exact mesh crosses the plane, in the plane's coordinates: the
    two remaining axes, in order) and, with ``true_sdf`` (a function ``(N, 3) -> (N,)`` of the
    known shape), the true outline. Axes in box units.

    Parameters
    ----------
    net : network
        A 3D network (anything :func:`nsr.networks.as_network` takes).
    bounds : float pair or (3, 2) float
        The box.
    axis : {0, 1, 2}
        The axis normal to the plane.
    value : float
        The plane's coordinate on ``axis``.
    path : str or Path
        The PNG to write.
    segments : (K, 2, 2) float ndarray, optional
        Segments to overlay, in the plane's coordinates.
    resolution : int, optional
        Samples per side of the value image.
    size : (int, int), optional
        Width and height in pixels.
    true_sdf : callable, optional
        ``(N, 3) ndarray -> (N,)``, the known shape's SDF.
    title : str, optional
        Replaces the default title.

    Returns
    -------
    Path or None
        ``path``, or ``None`` (with a warning) when rendering failed.

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> from nsr.networks import octahedron_network
    >>> from nsr.eval.render import render_slice
    >>> from nsr.training.shapes import Sphere
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     png = render_slice(octahedron_network(0.5), (-1, 1), 2, 0.0, Path(tmp) / "z0.png", resolution=32,
    ...                        true_sdf=Sphere(0.5))
    ...     png.is_file()
    True
    """
    from matplotlib.collections import LineCollection
    from matplotlib.lines import Line2D

    from nsr.eval.marching_cubes import as_bounds

    box = as_bounds(bounds, 3)
    img, extent = slice_values(net, box, axis, value, resolution)
    fig = _figure(size)
    ax = fig.add_axes((0.1, 0.09, 0.68, 0.83))
    im = ax.imshow(img, origin="lower", extent=extent, cmap="RdBu_r", norm=_diverging_norm(img))
    cax = fig.add_axes((0.82, 0.09, 0.03, 0.83))
    _value_colorbar(fig, im, cax)
    u = np.linspace(extent[0], extent[1], img.shape[1])
    w = np.linspace(extent[2], extent[3], img.shape[0])
    handles = []
    if img.min() < 0 < img.max():
        ax.contour(u, w, img, levels=[0.0], colors="k", linewidths=2.6)
        handles.append(Line2D([], [], color="k", lw=2.6, label=f"network f = 0 (contour of {resolution}² samples)"))
    if segments is not None and len(segments):
        ax.add_collection(LineCollection(np.asarray(segments), colors="gold", linewidths=1.0))
        handles.append(Line2D([], [], color="gold", lw=1.0, label="exact mesh cut by the plane"))
    names = "xyz"
    others = [i for i in range(3) if i != axis]
    if true_sdf is not None:
        uu, ww = np.meshgrid(np.linspace(extent[0], extent[1], 2 * resolution),
                             np.linspace(extent[2], extent[3], 2 * resolution))  # fmt: skip
        pts = np.zeros((uu.size, 3))
        pts[:, others[0]], pts[:, others[1]], pts[:, axis] = uu.ravel(), ww.ravel(), value
        d = np.asarray(true_sdf(pts)).reshape(uu.shape)
        if d.min() < 0 < d.max():
            ax.contour(uu, ww, d, levels=[0.0], colors="limegreen", linewidths=1.2, linestyles="--")
            handles.append(Line2D([], [], color="limegreen", lw=1.2, ls="--", label="true shape"))
    ax.set_xlabel(f"{names[others[0]]} (box units)")
    ax.set_ylabel(f"{names[others[1]]} (box units)")
    default = f"The network's value f on the plane {names[axis]} = {value:g} and where it is 0"
    ax.set_title(title if title is not None else default, fontsize=10)
    if handles:
        ax.legend(handles=handles, loc="upper right", fontsize=8, framealpha=0.85)
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
    """Line plot of named series against ``x`` (log2, ticked at ``x``); ``hlines`` draws constants
    (e.g. the exact mesh).

    Parameters
    ----------
    x : sequence of float
        The x values, e.g. resolutions.
    series : dict of str to sequence of float
        Named y values over ``x``.
    path : str or Path
        The PNG to write.
    xlabel, ylabel : str
        Axis labels, with units.
    title : str, optional
        Above the plot.
    logy : bool, optional
        Logarithmic y axis.
    hlines : dict of str to float, optional
        Named constants, drawn dashed.
    size : (int, int), optional
        Width and height in pixels.

    Returns
    -------
    Path or None
        ``path``, or ``None`` (with a warning) when rendering failed.

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> from nsr.eval.render import plot_series
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     png = plot_series([32, 64, 128], {"time": [0.1, 0.5, 3.0]}, Path(tmp) / "t.png",
    ...                       "resolution (samples per axis)", "seconds", hlines={"exact": 1.0})
    ...     png.name
    't.png'
    """
    fig = _figure(size)
    ax = fig.add_subplot(1, 1, 1)
    for name, ys in series.items():
        ax.plot(x, ys, marker="o", label=name)
    for i, (name, y) in enumerate((hlines or {}).items()):
        ax.axhline(y, linestyle="--", color=f"C{len(series) + i}", label=name)
    ax.set_xscale("log", base=2)
    _resolution_ticks(ax, x)
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


# --------------------------------------------------------------------------------------
# Projected drawing: meshes as 2D patches in painter's order (hidden lines removed)
# --------------------------------------------------------------------------------------


def camera_frame(view: tuple[float, float]) -> np.ndarray:
    """Rows ``right``, ``up``, ``eye`` of an orthographic camera for ``(elev, azim)`` degrees
    (matplotlib's convention, z up); ``eye`` points from the scene to the camera.

    Parameters
    ----------
    view : (float, float)
        ``(elevation, azimuth)`` in degrees.

    Returns
    -------
    (3, 3) float ndarray
        Orthonormal rows ``right``, ``up``, ``eye``.

    Examples
    --------
    Looking along -x from the +x side: right is +y, up is +z:

    >>> from nsr.eval.render import camera_frame
    >>> camera_frame((0.0, 0.0)).round(6) + 0.0
    array([[0., 1., 0.],
           [0., 0., 1.],
           [1., 0., 0.]])
    """
    eye = view_direction(view)
    azim = np.radians(view[1])
    right = np.array([-np.sin(azim), np.cos(azim), 0.0])  # (-eye) x z, normalized; defined from above too
    return np.stack([right, np.cross(eye, right), eye])


def _cycles(faces: Any) -> tuple[np.ndarray, np.ndarray]:
    """Flat vertex indices ``(S,)`` and the cycle lengths ``(P,)`` of faces given as a
    ``(P, k)`` array or a list of ``(k_i,)`` vertex cycles."""
    if isinstance(faces, np.ndarray) and faces.ndim == 2:
        return faces.reshape(-1).astype(np.int64), np.full(len(faces), faces.shape[1])
    lens = np.array([len(f) for f in faces], dtype=np.int64)
    flat = np.concatenate([np.asarray(f, dtype=np.int64) for f in faces]) if len(lens) else np.zeros(0, np.int64)
    return flat, lens


def newell_normals(vertices: np.ndarray, flat: np.ndarray, lens: np.ndarray) -> np.ndarray:
    """Unit normals of planar polygons (Newell's method, robust for n-gons).

    Parameters
    ----------
    vertices : (V, 3) float ndarray
        Vertex positions.
    flat : (S,) int ndarray
        The polygons' vertex cycles, concatenated.
    lens : (P,) int ndarray
        The length of each cycle in ``flat``.

    Returns
    -------
    (P, 3) float ndarray
        Unit normals, by the right-hand rule of each cycle.

    Examples
    --------
    >>> import numpy as np
    >>> from nsr.eval.render import newell_normals
    >>> square = np.array([[0.0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0]])
    >>> newell_normals(square, np.array([0, 1, 2, 3, 3, 2, 1, 0]), np.array([4, 4]))
    array([[ 0.,  0.,  1.],
           [ 0.,  0., -1.]])
    """
    start = np.repeat(np.cumsum(lens) - lens, lens)
    nxt = flat[start + (np.arange(len(flat)) - start + 1) % np.repeat(lens, lens)]
    normals = np.zeros((len(lens), 3))
    np.add.at(normals, np.repeat(np.arange(len(lens)), lens), np.cross(vertices[flat], vertices[nxt]))
    return normals / np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-300)


def draw_faces(
    ax: Any,
    vertices: np.ndarray,
    faces: Any,
    view: tuple[float, float] = DEFAULT_VIEW,
    *,
    base: Sequence[float] = (0.62, 0.74, 0.88),
    values: np.ndarray | None = None,
    cmap: Any = None,
    norm: Any = None,
    outline: Sequence[float] | None = None,
    linewidth: float = 0.35,
    cull: bool = True,
    window: tuple[float, float, float, float] | None = None,
) -> Any:
    """Draw a mesh on a 2D axes as projected, shaded patches in painter's order.

    ``vertices`` ``(V, 3)``; ``faces`` ``(F, 3)`` triangles or a list of ``(k,)`` planar vertex
    cycles. Faces are sorted far to near by mean depth and drawn one over the other, so each
    face's ``outline`` (an RGB(A) color; ``None``: no outline) is hidden wherever a nearer face
    covers it: hidden lines removed. ``cull`` skips faces whose normal points away from the
    camera (outward-oriented closed meshes). ``values`` ``(F,)`` color faces through ``cmap``
    and ``norm`` (shaded lightly, so that the color still reads on the colorbar) instead of
    ``base``. ``window`` ``(x0, x1, y0, y1)`` in screen units keeps only faces reaching it.
    Screen coordinates are the camera's ``right`` and ``up`` axes (see :func:`camera_frame`),
    in box units.

    Parameters
    ----------
    ax : matplotlib Axes
        A 2D axes to draw on.
    vertices : (V, 3) float ndarray
        Vertex positions.
    faces : (F, 3) int ndarray or sequence of (k,) int ndarray
        Triangles or planar vertex cycles.
    view : (float, float), optional
        ``(elevation, azimuth)`` in degrees.
    base : (3,) sequence of float, optional
        RGB of a face lit head-on (without ``values``).
    values : (F,) float ndarray, optional
        Per-face values colored through ``cmap`` and ``norm``.
    cmap, norm : matplotlib colormap and norm, optional
        Needed with ``values``.
    outline : RGB(A) sequence of float, optional
        Color of the faces' outlines; ``None``: none.
    linewidth : float, optional
        Outline width, points.
    cull : bool, optional
        Skip faces facing away from the camera.
    window : (float, float, float, float), optional
        ``(x0, x1, y0, y1)`` screen window; faces outside it are skipped.

    Returns
    -------
    matplotlib.collections.PolyCollection or None
        The drawn faces, far to near, or ``None`` when nothing is drawn.

    Examples
    --------
    A cube seen from a corner shows three of its six sides (six triangles):

    >>> import trimesh
    >>> from matplotlib.figure import Figure
    >>> from nsr.eval.render import draw_faces
    >>> cube = trimesh.creation.box()
    >>> ax = Figure().add_subplot()
    >>> len(draw_faces(ax, cube.vertices, cube.faces, (35.0, -60.0)).get_paths())
    6
    """
    from matplotlib.collections import PolyCollection

    v = np.asarray(vertices, dtype=np.float64)
    flat, lens = _cycles(faces)
    if len(lens) == 0:
        return None
    frame = camera_frame(view)
    normals = newell_normals(v, flat, lens)
    proj = v @ frame.T  # (V, 3): right, up, depth
    owner = np.repeat(np.arange(len(lens)), lens)
    depth = np.bincount(owner, proj[flat, 2], len(lens)) / lens
    keep = normals @ frame[2] > 0 if cull else np.ones(len(lens), dtype=bool)
    if window is not None:
        x, y = proj[flat, 0], proj[flat, 1]
        lo_x = np.full(len(lens), np.inf)
        np.minimum.at(lo_x, owner, x)
        hi_x = np.full(len(lens), -np.inf)
        np.maximum.at(hi_x, owner, x)
        lo_y = np.full(len(lens), np.inf)
        np.minimum.at(lo_y, owner, y)
        hi_y = np.full(len(lens), -np.inf)
        np.maximum.at(hi_y, owner, y)
        keep &= (hi_x >= window[0]) & (lo_x <= window[1]) & (hi_y >= window[2]) & (lo_y <= window[3])
    idx = np.nonzero(keep)[0]
    if len(idx) == 0:
        return None
    idx = idx[np.argsort(depth[idx], kind="stable")]  # far first
    light = frame[2] + 0.5 * frame[1] + 0.3 * frame[0]
    shade = np.abs(normals[idx] @ (light / np.linalg.norm(light)))
    if values is None:
        rgb = np.clip((0.3 + 0.7 * shade)[:, None] * np.asarray(base)[None], 0, 1)
    else:
        rgb = np.asarray(cmap(norm(np.asarray(values)[idx])))[:, :3] * (0.75 + 0.25 * shade)[:, None]
    starts = np.cumsum(lens) - lens
    polys = [proj[flat[starts[i] : starts[i] + lens[i]], :2] for i in idx]
    edge = rgb if outline is None else np.broadcast_to(np.asarray(outline, dtype=float), (len(idx), len(outline)))
    coll = PolyCollection(polys, facecolors=rgb, edgecolors=edge, linewidths=linewidth if outline else 0.25)
    ax.add_collection(coll)
    return coll


def screen_box(vertices: np.ndarray, view: tuple[float, float], pad: float = 0.04) -> tuple[float, ...]:
    """Square screen window around projected vertices, padded by ``pad`` of its half-width.

    Parameters
    ----------
    vertices : (V, 3) float ndarray
        Points.
    view : (float, float)
        ``(elevation, azimuth)`` in degrees.
    pad : float, optional
        Relative margin.

    Returns
    -------
    (float, float, float, float)
        ``(x0, x1, y0, y1)`` in screen coordinates (see :func:`camera_frame`).

    Examples
    --------
    The unit cube seen along x: its y-z square, 4% wider:

    >>> import trimesh
    >>> from nsr.eval.render import screen_box
    >>> [round(float(c), 6) for c in screen_box(trimesh.creation.box().vertices, (0.0, 0.0))]
    [-0.52, 0.52, -0.52, 0.52]
    """
    p = np.asarray(vertices) @ camera_frame(view)[:2].T
    lo, hi = p.min(0), p.max(0)
    c, r = (lo + hi) / 2, float((hi - lo).max()) / 2 * (1 + pad)
    return (c[0] - r, c[0] + r, c[1] - r, c[1] + r)


def screen_point(point: Sequence[float], view: tuple[float, float]) -> np.ndarray:
    """Screen coordinates of a 3D point for :func:`draw_faces`' camera.

    Parameters
    ----------
    point : (3,) sequence of float
        The point.
    view : (float, float)
        ``(elevation, azimuth)`` in degrees.

    Returns
    -------
    (2,) float ndarray
        ``(right, up)`` coordinates.

    Examples
    --------
    >>> from nsr.eval.render import screen_point
    >>> screen_point((1.0, 2.0, 3.0), (0.0, 0.0)).round(6)
    array([2., 3.])
    """
    return camera_frame(view)[:2] @ np.asarray(point, dtype=np.float64)


def _frame_axes(ax: Any, window: Sequence[float]) -> None:
    ax.set_xlim(window[0], window[1])
    ax.set_ylim(window[2], window[3])
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])
    for s in ax.spines.values():
        s.set_visible(False)


def _mark_window(ax: Any, window: Sequence[float], label: str = "") -> None:
    from matplotlib.patches import Rectangle

    x0, x1, y0, y1 = window
    ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ec="crimson", lw=1.2))
    if label:
        ax.text(x1, y1, label, color="crimson", fontsize=9, ha="right", va="bottom",
                bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.8, "pad": 1})  # fmt: skip


@_safe
def render_polygons(
    vertices: np.ndarray,
    polygons: Sequence[np.ndarray],
    path: str | Path,
    view: tuple[float, float] = DEFAULT_VIEW,
    title: str = "",
    size: tuple[int, int] | None = None,
    zoom: tuple[Sequence[float], float] | None = None,
) -> Path | None:
    """The exact mesh's planar polygons, each outlined, with hidden lines removed.

    ``vertices`` ``(V, 3)``, ``polygons`` list of ``(k,)`` outward vertex cycles. ``zoom``
    ``(center (3,), half_width)`` adds a close-up panel of the window around ``center`` (box
    units, on screen). Outlines are drawn with their faces in painter's order (see
    :func:`draw_faces`): a polygon edge shows only where its polygon is visible. ``size`` in
    pixels, default 700 wide per panel.

    Parameters
    ----------
    vertices : (V, 3) float ndarray
        Vertex positions.
    polygons : sequence of (k,) int ndarray
        Outward vertex cycles.
    path : str or Path
        The PNG to write.
    view : (float, float), optional
        ``(elevation, azimuth)`` in degrees.
    title : str, optional
        Above the picture.
    size : (int, int), optional
        Width and height in pixels.
    zoom : ((3,) sequence of float, float), optional
        ``(center, half_width)`` of a close-up panel.

    Returns
    -------
    Path or None
        ``path``, or ``None`` (with a warning) when rendering failed.

    Examples
    --------
    The unit cube as six squares, with a close-up of one corner:

    >>> import tempfile, trimesh
    >>> from pathlib import Path
    >>> from nsr.eval.render import render_polygons
    >>> cube = trimesh.creation.box()
    >>> squares = [f for f in cube.facets_boundary]  # edges of each side, as vertex pairs
    >>> squares = [trimesh.graph.traversals(e, mode="dfs")[0] for e in squares]
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     png = render_polygons(cube.vertices, squares, Path(tmp) / "p.png", size=(300, 160),
    ...                           zoom=((0.5, 0.5, 0.5), 0.2))
    ...     png.is_file()
    True
    """
    n = 2 if zoom else 1
    fig = _figure(size or (700 * n, 760))
    full = screen_box(vertices, view)
    axes = [fig.add_axes((i / n, 0.0, 1 / n, 0.89 if title else 0.95)) for i in range(n)]  # room for the titles
    draw_faces(axes[0], vertices, polygons, view, outline=(0.1, 0.1, 0.1), linewidth=0.3)
    _frame_axes(axes[0], full)
    if zoom:
        c, w = screen_point(zoom[0], view), float(zoom[1])
        win = (c[0] - w, c[0] + w, c[1] - w, c[1] + w)
        draw_faces(axes[1], vertices, polygons, view, outline=(0.1, 0.1, 0.1), linewidth=0.6, window=win)
        _frame_axes(axes[1], win)
        for spine in axes[1].spines.values():
            spine.set_visible(True)
            spine.set_color("crimson")
        axes[1].set_title("close-up of the red box", fontsize=10, color="crimson")
        _mark_window(axes[0], win)
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, path)


@_safe
def render_colored_mesh(
    mesh: trimesh.Trimesh,
    values: np.ndarray,
    path: str | Path,
    label: str,
    view: tuple[float, float] = DEFAULT_VIEW,
    title: str = "",
    size: tuple[int, int] = (900, 760),
    log: bool = True,
    vmax: float | None = None,
) -> Path | None:
    """A triangle mesh with faces colored by ``values`` ``(F,)``, and a labelled colorbar.

    ``label`` names the quantity and its unit (e.g. "distance to the exact surface (box
    units)"). ``log`` uses a logarithmic color scale from the 5th percentile of the positive
    values to ``vmax`` (default: the maximum).

    Parameters
    ----------
    mesh : trimesh.Trimesh
        The mesh, faces ``(F, 3)``.
    values : (F,) float ndarray
        One value per face.
    path : str or Path
        The PNG to write.
    label : str
        The colorbar's label: the quantity and its unit.
    view : (float, float), optional
        ``(elevation, azimuth)`` in degrees.
    title : str, optional
        Above the picture.
    size : (int, int), optional
        Width and height in pixels.
    log : bool, optional
        Logarithmic color scale.
    vmax : float, optional
        Top of the color scale.

    Returns
    -------
    Path or None
        ``path``, or ``None`` (with a warning) when rendering failed.

    Examples
    --------
    >>> import tempfile, trimesh
    >>> from pathlib import Path
    >>> from nsr.eval.render import render_colored_mesh
    >>> ball = trimesh.creation.icosphere(1)
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     png = render_colored_mesh(ball, ball.triangles_center[:, 2] + 1.0, Path(tmp) / "h.png",
    ...                               "height above z = -1 (units)", size=(300, 250), log=False)
    ...     png.is_file()
    True
    """
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import LogNorm, Normalize

    vals = np.asarray(values, dtype=np.float64)
    top = float(vmax if vmax is not None else np.nanmax(vals))
    if log:
        pos = vals[vals > 0]
        low = float(np.percentile(pos, 5)) if len(pos) else top * 1e-3  # the bulk, not the rare near-zero
        norm = LogNorm(vmin=max(min(low, top / 10), 1e-300), vmax=max(top, 1e-300), clip=True)
    else:
        norm = Normalize(vmin=0.0, vmax=max(top, 1e-300), clip=True)
    cmap = colormaps["magma_r"]
    fig = _figure(size)
    ax = fig.add_axes((0.0, 0.02, 0.84, 0.9 if title else 0.96))
    draw_faces(ax, np.asarray(mesh.vertices), np.asarray(mesh.faces), view, values=vals, cmap=cmap, norm=norm,
               cull=False)  # fmt: skip
    _frame_axes(ax, screen_box(np.asarray(mesh.vertices), view))
    cax = fig.add_axes((0.86, 0.12, 0.03, 0.7))
    fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), cax=cax).set_label(label, fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, path)


# --------------------------------------------------------------------------------------
# 2D networks: linear regions, the function, the level set
# --------------------------------------------------------------------------------------


def complex_regions(cx: Any) -> tuple[np.ndarray, list[np.ndarray]]:
    """Vertices ``(V, 2)`` and the regions (2-cells) of a 2D complex as vertex cycles.

    Regions are convex, so each cycle is its vertices sorted by angle around their mean
    (counter-clockwise).

    Parameters
    ----------
    cx : nsr.extraction.complex.PolyhedralComplex
        The complex of a 2D network.

    Returns
    -------
    vertices : (V, 2) float64 ndarray
        The complex's vertices.
    regions : list of (k,) int ndarray
        One counter-clockwise vertex cycle per region (2-cell).

    Raises
    ------
    ValueError
        If the complex is not 2D.

    Examples
    --------
    ``|x| + |y| - 0.5`` (the octahedron network on the plane z = 0) is affine on each quadrant
    of the box [-1, 1]^2:

    >>> from nsr.extraction.complex import extract_complex
    >>> from nsr.networks import octahedron_network
    >>> from nsr.eval.render import complex_regions, plane_network
    >>> cx = extract_complex(plane_network(octahedron_network(0.5), 2, 0.0), (-1, 1), progress=False)
    >>> v, regions = complex_regions(cx)
    >>> len(regions), sorted(len(r) for r in regions)
    (4, [4, 4, 4, 4])
    """
    if cx.dim != 2:
        raise ValueError(f"complex_regions needs a 2D complex, got dimension {cx.dim}")
    v = cx.vertices.detach().cpu().double().numpy()
    inc = cx.incidence(2).cpu().numpy()  # (M, 2): edge i is a side of region j
    ends = cx.edges.cpu().numpy().astype(np.int64)[inc[:, 0]]  # (M, 2)
    pairs = np.unique(np.stack([np.repeat(inc[:, 1], 2), ends.reshape(-1)], 1), axis=0)  # (region, vertex)
    region, vert = pairs[:, 0], pairs[:, 1]
    n_regions = int(region.max()) + 1 if len(region) else 0
    counts = np.bincount(region, minlength=n_regions)
    centre = np.stack([np.bincount(region, v[vert, i], n_regions) for i in range(2)], 1)
    centre /= np.maximum(counts, 1)[:, None]
    d = v[vert] - centre[region]
    order = np.lexsort((np.arctan2(d[:, 1], d[:, 0]), region))
    cycles = np.split(vert[order], np.cumsum(counts)[:-1])
    return v, [c for c in cycles if len(c) >= 3]


def level_set_segments(cx: Any, level: float = 0.0) -> np.ndarray:
    """Segments of a 2D complex's level set ``f = level`` (exact vertices).

    Parameters
    ----------
    cx : nsr.extraction.complex.PolyhedralComplex
        The complex of a 2D network.
    level : float, optional
        The level.

    Returns
    -------
    (K, 2, 2) float64 ndarray
        One segment (start, end) per level-set edge.

    Examples
    --------
    The diamond ``|x| + |y| = 0.5``: four segments, perimeter ``4 * sqrt(2) * 0.5``:

    >>> import numpy as np
    >>> from nsr.extraction.complex import extract_complex
    >>> from nsr.networks import octahedron_network
    >>> from nsr.eval.render import level_set_segments, plane_network
    >>> cx = extract_complex(plane_network(octahedron_network(0.5), 2, 0.0), (-1, 1), progress=False)
    >>> seg = level_set_segments(cx)
    >>> len(seg), bool(np.isclose(np.linalg.norm(seg[:, 1] - seg[:, 0], axis=1).sum(), 2 * 2**0.5))
    (4, True)
    """
    ls = cx.level_set(level)
    v = ls.vertices.detach().cpu().double().numpy()
    e = ls.edges.cpu().numpy().astype(np.int64)
    return v[e] if len(e) else np.zeros((0, 2, 2))


def _field_2d(net: Any, bounds: np.ndarray, resolution: int) -> tuple[np.ndarray, tuple[float, ...]]:
    """A 2D network's values at the centers of a ``(resolution, resolution)`` pixel grid of
    ``bounds`` ``(2, 2)`` (rows along the second axis), and the grid's ``imshow`` extent."""
    import torch

    from nsr.pl.graph import as_graph

    u = bounds[0, 0] + (np.arange(resolution) + 0.5) * (bounds[0, 1] - bounds[0, 0]) / resolution
    w = bounds[1, 0] + (np.arange(resolution) + 0.5) * (bounds[1, 1] - bounds[1, 0]) / resolution
    uu, ww = np.meshgrid(u, w)
    pl = as_graph(net).to(device="cpu", dtype=torch.float64)  # skips, residuals, transforms: values of g
    pts = torch.from_numpy(np.stack([uu.ravel(), ww.ravel()], 1))
    with torch.no_grad():  # in chunks: a wide network's activations for every pixel at once take GBs
        img = torch.cat([pl(chunk) for chunk in pts.split(65536)]).numpy().reshape(uu.shape)
    return img, (bounds[0, 0], bounds[0, 1], bounds[1, 0], bounds[1, 1])


@_safe
def render_regions(
    cx: Any,
    path: str | Path,
    level: float = 0.0,
    color_by: str = "value",
    title: str = "",
    axis_names: tuple[str, str] = ("x", "y"),
    true_sdf: Callable[[np.ndarray], np.ndarray] | None = None,
    size: tuple[int, int] = (760, 640),
) -> Path | None:
    """The classic picture of a 2D ReLU network: its linear regions, its function, its level set.

    ``cx``: the :class:`~nsr.extraction.complex.PolyhedralComplex` of a 2D network. ``color_by="value"``
    colors by the network's value, evaluated at every pixel, with a colorbar in network output
    units (each side of 0 spans its own range); ``"region"`` gives every linear region its own color. Region
    boundaries are thin lines, the level set ``f = level`` bold black. ``true_sdf``, a function
    ``(N, 2) -> (N,)`` of a known shape, adds its zero contour (dashed). Axes in box units.

    Parameters
    ----------
    cx : nsr.extraction.complex.PolyhedralComplex
        The complex of a 2D network.
    path : str or Path
        The PNG to write.
    level : float, optional
        The level set drawn, and the center of the colormap.
    color_by : {"value", "region"}, optional
        What the colors show.
    title : str, optional
        Above the plot.
    axis_names : (str, str), optional
        Names of the two input coordinates.
    true_sdf : callable, optional
        ``(N, 2) ndarray -> (N,)``, the known shape's SDF.
    size : (int, int), optional
        Width and height in pixels.

    Returns
    -------
    Path or None
        ``path``, or ``None`` (with a warning) when rendering failed.

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> from nsr.extraction.complex import extract_complex
    >>> from nsr.networks import octahedron_network
    >>> from nsr.eval.render import plane_network, render_regions
    >>> from nsr.training.shapes import Polygon
    >>> cx = extract_complex(plane_network(octahedron_network(0.5), 2, 0.0), (-1, 1), progress=False)
    >>> diamond = Polygon([[0.5, 0], [0, 0.5], [-0.5, 0], [0, -0.5]])
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     png = render_regions(cx, Path(tmp) / "r.png", title="|x| + |y| - 0.5", true_sdf=diamond, size=(300, 260))
    ...     png.is_file()
    True
    """
    from matplotlib import colormaps
    from matplotlib.collections import LineCollection, PolyCollection
    from matplotlib.lines import Line2D

    if color_by not in ("value", "region"):
        raise ValueError(f"color_by must be 'value' or 'region', got {color_by!r}")
    v, cycles = complex_regions(cx)
    fig = _figure(size)
    ax = fig.add_axes((0.1, 0.1, 0.7, 0.8))
    if color_by == "value":
        # The network evaluated at every pixel. (Gouraud shading of the exact vertex values would
        # interpolate colors, not values: across f = 0 it drew dark purple where f is 0.)
        img, extent = _field_2d(cx.net, np.asarray(cx.bounds, dtype=np.float64), int(0.75 * max(size)))  # ~1 per pixel
        im = ax.imshow(img, origin="lower", extent=extent, cmap="RdBu_r", norm=_diverging_norm(img, level),
                       interpolation="nearest")  # fmt: skip
        cax = fig.add_axes((0.83, 0.1, 0.03, 0.8))
        _value_colorbar(fig, im, cax)
        ax.add_collection(PolyCollection([v[c] for c in cycles], facecolors="none", edgecolors=(0, 0, 0, 0.35),
                                         linewidths=0.3))  # fmt: skip
    else:
        rng = np.random.default_rng(0)  # neighbours rarely share a color when shuffled
        colors = colormaps["tab20"](rng.permutation(len(cycles)) % 20)
        ax.add_collection(PolyCollection([v[c] for c in cycles], facecolors=colors, edgecolors="white",
                                         linewidths=0.3))  # fmt: skip
    seg = level_set_segments(cx, level)
    ax.add_collection(LineCollection(seg, colors="k", linewidths=2.2))
    handles = [Line2D([], [], color="k", lw=2.2, label=f"exact level set f = {level:g} ({len(seg)} segments)"),
               Line2D([], [], color=(0, 0, 0, 0.5), lw=0.6, label=f"linear-region boundaries ({len(cycles)} regions)")]
    lo, hi = cx.bounds[:, 0], cx.bounds[:, 1]
    if true_sdf is not None:
        u, w = np.linspace(lo[0], hi[0], 400), np.linspace(lo[1], hi[1], 400)
        uu, ww = np.meshgrid(u, w)
        d = np.asarray(true_sdf(np.stack([uu.ravel(), ww.ravel()], 1))).reshape(uu.shape)
        if d.min() < 0 < d.max():
            ax.contour(u, w, d, levels=[0.0], colors="limegreen", linewidths=1.4, linestyles="--")
            handles.append(Line2D([], [], color="limegreen", lw=1.4, ls="--", label="true shape"))
    ax.set_xlim(lo[0], hi[0])
    ax.set_ylim(lo[1], hi[1])
    ax.set_aspect("equal")
    ax.set_xlabel(f"{axis_names[0]} (box units)")
    ax.set_ylabel(f"{axis_names[1]} (box units)")
    ax.legend(handles=handles, loc="upper right", fontsize=8, framealpha=0.85)
    ax.set_title(title, fontsize=10)
    return _save(fig, path)


def plane_network(net: Any, axis: int, value: float) -> Any:
    """The 2D network ``(u, w) -> f(x)`` of a 3D network on the plane ``x[axis] = value``.

    The plane's map is affine, so composing it with the first layer gives a ReLU network of
    the same depth: weights ``W[:, others]``, bias ``b + value * W[:, axis]``; ``u``, ``w`` are
    the two other coordinates in increasing order. Its complex is the 3D complex cut by the plane.

    Parameters
    ----------
    net : network
        A 3D network (anything :func:`nsr.networks.as_network` takes).
    axis : {0, 1, 2}
        The axis normal to the plane.
    value : float
        The plane's coordinate on ``axis``.

    Returns
    -------
    nsr.networks.PLNetwork or nsr.pl.PLGraph
        The 2D network, float64: a PLNetwork for a plain ReLU MLP, else the PLGraph with the
        plane folded into every block that reads the input (and a grid encoder cut by the plane:
        :class:`nsr.pl.encoding.PlaneSection`).

    Raises
    ------
    ValueError
        If ``net`` is not 3D or ``axis`` is not 0, 1 or 2.

    Examples
    --------
    ``|x| + |y| + |z| - 0.5`` on the plane z = 0.2 is ``|x| + |y| - 0.3``:

    >>> import torch
    >>> from nsr.networks import octahedron_network
    >>> from nsr.eval.render import plane_network
    >>> plane_network(octahedron_network(0.5), 2, 0.2)(torch.tensor([[0.1, -0.2], [0.0, 0.0]], dtype=torch.float64))
    tensor([ 0.0000, -0.3000], dtype=torch.float64)
    """
    import torch

    from nsr.networks import PLNetwork, as_network
    from nsr.pl.encoding import PlaneSection
    from nsr.pl.graph import INPUT, Affine, Layer, PLGraph, as_graph

    if isinstance(net, PLNetwork) or not isinstance(net, (PLGraph, torch.nn.Module)):
        pl = as_network(net, dtype=torch.float64)
        if pl.in_dim != 3 or axis not in (0, 1, 2):
            raise ValueError(f"plane_network needs a 3D network and axis 0, 1 or 2 (got {pl.in_dim}D, axis {axis})")
        others = [i for i in range(3) if i != axis]
        w0, b0 = pl.weights[0], pl.biases[0]
        return PLNetwork([w0[:, others].clone(), *pl.weights[1:]], [b0 + value * w0[:, axis], *pl.biases[1:]])
    g = as_graph(net).to(dtype=torch.float64)
    if g.in_dim != 3 or axis not in (0, 1, 2):
        raise ValueError(f"plane_network needs a 3D network and axis 0, 1 or 2 (got {g.in_dim}D, axis {axis})")
    others = [i for i in range(3) if i != axis]

    def fix(aff: Affine) -> tuple[dict, torch.Tensor]:
        # every block that reads the input (skip connections too) gets the plane's coordinate folded in
        blocks, bias = dict(aff.blocks), aff.bias
        if INPUT in blocks:
            w = blocks[INPUT]
            blocks[INPUT], bias = w[:, others].clone(), bias + value * w[:, axis]
        return blocks, bias

    layers = [Layer(*fix(layer), neg=layer.neg, pos=layer.pos) for layer in g.layers]
    # a grid encoder is cut by the same plane: its features on the plane, its planes' traces
    encoder = PlaneSection(g.encoder, axis, value) if g.encoder is not None else None
    return PLGraph(2, layers, Affine(*fix(g.output)), g.transform, encoder=encoder)


def render_slice_regions(
    net: Any,
    bounds: Any,
    axis: int,
    value: float,
    path: str | Path,
    true_sdf: Callable[[np.ndarray], np.ndarray] | None = None,
    color_by: str = "value",
    title: str | None = None,
) -> Path | None:
    """:func:`render_regions` of a 3D network's complex cut by the plane ``x[axis] = value``.

    ``true_sdf``: a 3D function ``(N, 3) -> (N,)`` of the known shape (its cut is drawn).

    Parameters
    ----------
    net : network
        A 3D network (anything :func:`nsr.networks.as_network` takes).
    bounds : float pair or (3, 2) float
        The box.
    axis : {0, 1, 2}
        The axis normal to the plane.
    value : float
        The plane's coordinate on ``axis``.
    path : str or Path
        The PNG to write.
    true_sdf : callable, optional
        ``(N, 3) ndarray -> (N,)``, the known shape's SDF.
    color_by : {"value", "region"}, optional
        See :func:`render_regions`.
    title : str, optional
        Replaces the default title.

    Returns
    -------
    Path or None
        ``path``, or ``None`` (with a warning) when rendering failed.

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> from nsr.networks import octahedron_network
    >>> from nsr.eval.render import render_slice_regions
    >>> from nsr.training.shapes import Sphere
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     png = render_slice_regions(octahedron_network(0.5), (-1, 1), 2, 0.2, Path(tmp) / "r.png",
    ...                                true_sdf=Sphere(0.5))
    ...     png.is_file()
    True
    """
    from nsr.eval.marching_cubes import as_bounds
    from nsr.extraction.complex import extract_complex

    names = "xyz"
    others = [i for i in range(3) if i != axis]
    box = as_bounds(bounds, 3)
    cx = extract_complex(plane_network(net, axis, value), box[others], progress=False)

    def cut(p: np.ndarray) -> np.ndarray:
        q = np.zeros((len(p), 3))
        q[:, others], q[:, axis] = p, value
        return np.asarray(true_sdf(q))

    if title is None:
        title = f"linear regions of the network on the plane {names[axis]} = {value:g}"
    return render_regions(cx, path, color_by=color_by, title=title, axis_names=(names[others[0]], names[others[1]]),
                          true_sdf=cut if true_sdf is not None else None)  # fmt: skip


@_safe
def plot_errors(
    x: Sequence[float],
    distances: dict[str, Sequence[float]],
    residuals: dict[str, Sequence[float]],
    path: str | Path,
    title: str = "",
    distance_lines: dict[str, float] | None = None,
    residual_lines: dict[str, float] | None = None,
    distance_label: str = "distance (box units)",
    xlabel: str = "marching-cubes resolution (samples per axis)",
    size: tuple[int, int] = (960, 420),
) -> Path | None:
    """Errors against resolution in two panels, one per unit: geometric distances (box units)
    and network values |f| (network output units), which are not lengths.

    ``distances`` / ``residuals``: named series over ``x``; ``*_lines``: constants drawn
    dashed (e.g. the exact mesh). Log-log axes, ticked at ``x``.

    Parameters
    ----------
    x : sequence of float
        Resolutions.
    distances : dict of str to sequence of float
        Named distance series over ``x``, box units.
    residuals : dict of str to sequence of float
        Named ``|f|`` series over ``x``, network output units.
    path : str or Path
        The PNG to write.
    title : str, optional
        Above both panels.
    distance_lines, residual_lines : dict of str to float, optional
        Named constants per panel, drawn dashed; NaN, None and values <= 0 are skipped.
    distance_label : str, optional
        The distance panel's y label.
    xlabel : str, optional
        The x label of both panels.
    size : (int, int), optional
        Width and height in pixels.

    Returns
    -------
    Path or None
        ``path``, or ``None`` (with a warning) when rendering failed.

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> from nsr.eval.render import plot_errors
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     png = plot_errors([32, 64], {"CD-L1": [3e-3, 8e-4]}, {"max |f|": [1e-2, 5e-3]}, Path(tmp) / "e.png",
    ...                       residual_lines={"exact mesh: max |f|": 3e-16})
    ...     png.is_file()
    True
    """
    fig = _figure(size)
    panels = [(distances, distance_lines or {}, distance_label, "distance between surfaces (lower is closer)"),
              (residuals, residual_lines or {}, "|f| (network output units)",
               "|f| on the mesh (0 = on the network's surface)")]  # fmt: skip
    for i, (series, lines, ylabel, what) in enumerate(panels):
        ax = fig.add_subplot(1, 2, i + 1)
        for j, (name, ys) in enumerate(series.items()):
            ax.plot(x, ys, marker="o", color=f"C{j}", label=name)
        for j, (name, y) in enumerate(lines.items()):
            if y is not None and np.isfinite(y) and y > 0:
                ax.axhline(y, linestyle="--", color=f"C{len(series) + j}", label=name)
        ax.set_xscale("log", base=2)
        _resolution_ticks(ax, x)
        ax.set_yscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_title(what, fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


@_safe
def render_overview(
    meshes: Sequence[tuple[np.ndarray, Any]],
    titles: Sequence[str],
    captions: Sequence[str],
    path: str | Path,
    zoom: tuple[Sequence[float], float],
    view: tuple[float, float] = DEFAULT_VIEW,
    title: str = "",
    outlines: Sequence[bool] | None = None,
    panel: int = 520,
    footnote: str = "",
) -> Path | None:
    """Meshes side by side (top) and the same close-up window of each (bottom), with captions.

    ``meshes``: ``(vertices (V, 3), faces)`` pairs, faces ``(F, 3)`` or a list of ``(k,)``
    outward cycles; all share the framing of the first. ``zoom``: ``(center (3,), half_width)``,
    the close-up window around ``center`` (box units on screen), marked on the top row.
    ``outlines[i]`` outlines mesh ``i``'s faces (hidden lines removed). ``captions`` (under
    each column) carry the numbers; ``footnote`` (under everything) says what they mean.

    Parameters
    ----------
    meshes : sequence of ((V, 3) float ndarray, faces)
        The meshes, left to right.
    titles, captions : sequence of str
        One each per mesh, above and under its column.
    path : str or Path
        The PNG to write.
    zoom : ((3,) sequence of float, float)
        ``(center, half_width)`` of the close-up window.
    view : (float, float), optional
        ``(elevation, azimuth)`` in degrees.
    title : str, optional
        Above everything.
    outlines : sequence of bool, optional
        Per mesh, outline its faces.
    panel : int, optional
        Width of a column, pixels.
    footnote : str, optional
        Under everything.

    Returns
    -------
    Path or None
        ``path``, or ``None`` (with a warning) when rendering failed.

    Examples
    --------
    >>> import tempfile, trimesh
    >>> from pathlib import Path
    >>> from nsr.eval.render import render_overview
    >>> ball, cube = trimesh.creation.icosphere(1), trimesh.creation.box()
    >>> meshes = [(ball.vertices, ball.faces), (cube.vertices, cube.faces)]
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     png = render_overview(meshes, ["ball", "cube"], ["20 faces", "12 faces"], Path(tmp) / "o.png",
    ...                           zoom=((0.5, 0.5, 0.5), 0.3), panel=150, footnote="faces: triangles")
    ...     png.is_file()
    True
    """
    n = len(meshes)
    top_h, cap_h, head = panel, 0.3 * panel + 20 * (footnote.count("\n") + 1 if footnote else 0), 60 if title else 30
    height = int(2 * top_h + cap_h + head)
    fig = _figure((panel * n, height))
    full = screen_box(np.vstack([np.asarray(v) for v, _ in meshes]), view)
    c, w = screen_point(zoom[0], view), float(zoom[1])
    win = (c[0] - w, c[0] + w, c[1] - w, c[1] + w)
    for i, (verts, faces) in enumerate(meshes):
        edge = (0.1, 0.1, 0.1) if outlines and outlines[i] else None
        x0 = i / n
        ax = fig.add_axes((x0, (top_h + cap_h) / height, 1 / n, (top_h - 10) / height))
        draw_faces(ax, verts, faces, view, outline=edge, linewidth=0.2)
        _frame_axes(ax, full)
        _mark_window(ax, win)
        ax.set_title(titles[i], fontsize=11)
        zx = fig.add_axes((x0 + 0.01, cap_h / height, 1 / n - 0.02, (top_h - 12) / height))
        draw_faces(zx, verts, faces, view, outline=edge, linewidth=0.6, window=win)
        _frame_axes(zx, win)
        for s in zx.spines.values():
            s.set_visible(True)
            s.set_color("crimson")
        fig.text(x0 + 0.5 / n, cap_h / height - 0.01, captions[i], ha="center", va="top", fontsize=11,
                 family="monospace")  # fmt: skip
    if footnote:
        fig.text(0.01, 6 / height, footnote, ha="left", va="bottom", fontsize=11, color="0.25")
    if title:
        fig.suptitle(title, fontsize=12, y=1 - 6 / height, va="top")
    return _save(fig, path)


def compact_png(src: str | Path, dst: str | Path, width: int = 900, colors: int = 128) -> Path:
    """A smaller copy of a PNG for documentation: at most ``width`` pixels wide, ``colors``-color
    palette (adaptive, dithered). Written to a temporary name and renamed.

    Parameters
    ----------
    src : str or Path
        The PNG to copy.
    dst : str or Path
        Where the copy goes (folders are created).
    width : int, optional
        Largest width, pixels; the height keeps the aspect ratio.
    colors : int, optional
        Palette size.

    Returns
    -------
    Path
        ``dst``.

    Examples
    --------
    >>> import tempfile, trimesh
    >>> from pathlib import Path
    >>> from PIL import Image
    >>> from nsr.eval.render import compact_png, render_mesh
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     big = render_mesh(trimesh.creation.icosphere(1), Path(tmp) / "big.png", size=(400, 300))
    ...     Image.open(compact_png(big, Path(tmp) / "docs" / "small.png", width=200)).size
    (200, 150)
    """
    from PIL import Image

    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    img = Image.open(src).convert("RGB")
    if img.width > width:
        img = img.resize((width, round(img.height * width / img.width)), Image.LANCZOS)
    tmp = dst.with_name(f".{dst.stem}.tmp{os.getpid()}.png")
    try:
        img.quantize(colors, method=Image.Quantize.MEDIANCUT).save(tmp, format="PNG", optimize=True)
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)
    return dst
