"""The level set of a 2D network as polylines: counts, and files that other tools read.

A 2D network's level set ``f = level`` is a set of polylines (:attr:`nsr.extraction.mesh.ExactMesh.polylines`:
ordered vertex paths; a closed loop repeats its first vertex at the end). They are written as

* PLY with ``vertex`` and ``edge`` elements (``z = 0``): trimesh loads it as a ``Path3D``
  (``.to_planar()`` for 2D), open3d as a ``LineSet`` (``open3d.io.read_line_set``);
* OBJ with ``l`` line elements (``z = 0``): Blender and MeshLab read the lines as edges
  (trimesh 4 reads only the vertices of such a file);
* SVG ``<polyline>`` elements in the box's coordinates (y up, as in the plots): browsers,
  Inkscape, and trimesh (``trimesh.load_path``, with ``lxml`` installed) read it.

Each is written atomically (:func:`nsr.files.atomic_write`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from nsr.files import atomic_write

POLYLINE_SUFFIXES = (".ply", ".obj", ".svg")


def polyline_stats(vertices: np.ndarray, polylines: Sequence[np.ndarray]) -> dict[str, int]:
    """Counts of a 2D level set: ``n_vertices``, ``n_segments`` (distinct vertex pairs joined),
    ``n_polylines``, ``n_closed_loops`` (first vertex = last) and ``n_components`` (connected
    components of the vertex graph, by union-find; a polyline broken at a shared vertex is one
    component).

    Parameters
    ----------
    vertices : (V, 2) float ndarray
        Vertices of the level set.
    polylines : sequence of (n_i,) int ndarray
        Vertex paths; a closed loop repeats its first vertex at the end.

    Returns
    -------
    dict of str to int
        ``n_vertices`` (all of ``vertices``, used or not), ``n_segments``, ``n_polylines``,
        ``n_closed_loops`` and ``n_components`` (of the vertices the polylines use).

    Examples
    --------
    >>> import numpy as np
    >>> square = np.array([[0, 0], [1, 0], [1, 1], [0, 1], [2, 2], [3, 3]], dtype=float)
    >>> lines = [np.array([0, 1, 2, 3, 0]), np.array([4, 5])]  # a closed unit square and an open segment
    >>> polyline_stats(square, lines)
    {'n_vertices': 6, 'n_segments': 5, 'n_polylines': 2, 'n_closed_loops': 1, 'n_components': 2}
    """
    n_v = len(vertices)
    seg = _segments(polylines)
    parent = np.arange(n_v)

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for a, b in seg:
        ra, rb = find(int(a)), find(int(b))
        if ra != rb:
            parent[ra] = rb
    used = np.unique(np.concatenate([np.asarray(p, dtype=np.int64) for p in polylines])) if polylines else []
    return {
        "n_vertices": int(n_v),
        "n_segments": int(len(seg)),
        "n_polylines": len(polylines),
        "n_closed_loops": sum(1 for p in polylines if len(p) > 2 and p[0] == p[-1]),
        "n_components": len({find(int(i)) for i in used}),
    }


def _segments(polylines: Sequence[np.ndarray]) -> np.ndarray:
    """Distinct undirected segments ``(S, 2)`` (smaller index first) of the polylines."""
    pairs = [np.stack([p[:-1], p[1:]], 1) for p in (np.asarray(q, dtype=np.int64) for q in polylines) if len(p) > 1]
    if not pairs:
        return np.zeros((0, 2), dtype=np.int64)
    seg = np.sort(np.concatenate(pairs), axis=1)
    seg = seg[seg[:, 0] != seg[:, 1]]
    return np.unique(seg, axis=0)


def obj_lines_bytes(vertices: np.ndarray, polylines: Sequence[np.ndarray]) -> bytes:
    """OBJ text: ``v x y 0`` per vertex (17 significant digits: float64 round trip), one ``l``
    element per polyline (1-based indices).

    Parameters
    ----------
    vertices : (V, 2) float ndarray
        Vertices of the level set.
    polylines : sequence of (n_i,) int ndarray
        Vertex paths (0-based); paths of fewer than 2 vertices are left out.

    Returns
    -------
    bytes
        The file's content: a comment line, ``V`` ``v`` lines (``z = 0``), one ``l`` line per polyline.

    Examples
    --------
    >>> import numpy as np
    >>> square = np.array([[0, 0], [1, 0], [1, 1], [0, 1], [2, 2], [3, 3]], dtype=float)
    >>> lines = [np.array([0, 1, 2, 3, 0]), np.array([4, 5])]  # a closed unit square and an open segment
    >>> text = obj_lines_bytes(square, lines).decode().splitlines()
    >>> text[1], text[-2], text[-1]
    ('v 0 0 0', 'l 1 2 3 4 1', 'l 5 6')
    """
    v = np.asarray(vertices, dtype=np.float64).reshape(-1, 2)
    rows = [f"# nsr level set: {len(v)} vertices, {len(polylines)} polylines"]
    rows += [f"v {x:.17g} {y:.17g} 0" for x, y in v]
    rows += ["l " + " ".join(str(int(i) + 1) for i in p) for p in polylines if len(p) > 1]
    return ("\n".join(rows) + "\n").encode()


def ply_lines_bytes(vertices: np.ndarray, polylines: Sequence[np.ndarray]) -> bytes:
    """ASCII PLY text: ``vertex`` (x, y, z = 0; 17 significant digits) and ``edge`` (vertex1,
    vertex2) elements, one edge per distinct segment.

    Parameters
    ----------
    vertices : (V, 2) float ndarray
        Vertices of the level set.
    polylines : sequence of (n_i,) int ndarray
        Vertex paths (0-based).

    Returns
    -------
    bytes
        The file's content; edges are 0-based, smaller index first, each segment once.

    Examples
    --------
    >>> import numpy as np
    >>> square = np.array([[0, 0], [1, 0], [1, 1], [0, 1], [2, 2], [3, 3]], dtype=float)
    >>> lines = [np.array([0, 1, 2, 3, 0]), np.array([4, 5])]  # a closed unit square and an open segment
    >>> text = ply_lines_bytes(square, lines).decode().splitlines()
    >>> text[3], text[7], text[-1]
    ('element vertex 6', 'element edge 5', '4 5')
    """
    v = np.asarray(vertices, dtype=np.float64).reshape(-1, 2)
    seg = _segments(polylines)
    head = ["ply", "format ascii 1.0", "comment nsr level set (polylines as edges)",
            f"element vertex {len(v)}", "property double x", "property double y", "property double z",
            f"element edge {len(seg)}", "property int vertex1", "property int vertex2", "end_header"]
    rows = [f"{x:.17g} {y:.17g} 0" for x, y in v] + [f"{a} {b}" for a, b in seg]
    return ("\n".join(head + rows) + "\n").encode()


def svg_bytes(vertices: np.ndarray, polylines: Sequence[np.ndarray], bounds: np.ndarray,
              size: float = 512.0) -> bytes:
    """SVG text: the box as the view box (``y`` flipped so that up is up), one ``<polyline>`` per
    polyline, stroke width 1/256 of the box side.

    Parameters
    ----------
    vertices : (V, 2) float ndarray
        Vertices of the level set.
    polylines : sequence of (n_i,) int ndarray
        Vertex paths (0-based); paths of fewer than 2 vertices are left out.
    bounds : (2, 2) float ndarray
        The box ``[[x0, x1], [y0, y1]]``, drawn as a grey rectangle and used as the view box.
    size : float
        Width of the picture in pixels; its height keeps the box's aspect ratio.

    Returns
    -------
    bytes
        The SVG document.

    Examples
    --------
    >>> import numpy as np
    >>> square = np.array([[0, 0], [1, 0], [1, 1], [0, 1], [2, 2], [3, 3]], dtype=float)
    >>> lines = [np.array([0, 1, 2, 3, 0]), np.array([4, 5])]  # a closed unit square and an open segment
    >>> text = svg_bytes(square, lines, np.array([[0, 4], [0, 2]])).decode()
    >>> 'height="256"' in text, text.count("<polyline ")
    (True, 2)
    """
    b = np.asarray(bounds, dtype=np.float64)
    (x0, x1), (y0, y1) = b[0], b[1]
    w, h = x1 - x0, y1 - y0
    stroke = max(w, h) / 256
    v = np.asarray(vertices, dtype=np.float64).reshape(-1, 2)
    head = (f'<svg xmlns="http://www.w3.org/2000/svg" width="{size:g}" height="{size * h / w:g}" '
            f'viewBox="{x0:.17g} {-y1:.17g} {w:.17g} {h:.17g}">')
    body = [f'<g transform="scale(1,-1)" fill="none" stroke="black" stroke-width="{stroke:.6g}">',
            f'<rect x="{x0:.17g}" y="{y0:.17g}" width="{w:.17g}" height="{h:.17g}" stroke="#bbbbbb"/>']
    for p in polylines:
        if len(p) > 1:
            pts = " ".join(f"{v[i, 0]:.17g},{v[i, 1]:.17g}" for i in p)
            body.append(f'<polyline points="{pts}"/>')
    return ("\n".join([head, *body, "</g>", "</svg>"]) + "\n").encode()


def export_polylines(vertices: np.ndarray, polylines: Sequence[np.ndarray], path: str | Path,
                     bounds: np.ndarray | None = None) -> Path:
    """Write the polylines to ``path`` (``.ply``, ``.obj`` or ``.svg``, by suffix) through a temporary
    file and a rename. ``bounds`` ``(2, 2)`` sets the SVG's view box (default: the vertices'
    bounding box).

    Parameters
    ----------
    vertices : (V, 2) float ndarray
        Vertices of the level set.
    polylines : sequence of (n_i,) int ndarray
        Vertex paths (0-based).
    path : str or Path
        Destination; its suffix (``.ply``, ``.obj`` or ``.svg``, any case) picks the format.
    bounds : (2, 2) float ndarray, optional
        The SVG's view box; ignored for PLY and OBJ.

    Returns
    -------
    Path
        ``path``, written.

    Raises
    ------
    ValueError
        For another suffix.
    FileNotFoundError
        When the folder of ``path`` does not exist.

    Examples
    --------
    trimesh reads the PLY back as a path of two entities:

    >>> import tempfile, trimesh
    >>> from pathlib import Path
    >>> import numpy as np
    >>> square = np.array([[0, 0], [1, 0], [1, 1], [0, 1], [2, 2], [3, 3]], dtype=float)
    >>> lines = [np.array([0, 1, 2, 3, 0]), np.array([4, 5])]  # a closed unit square and an open segment
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     path = export_polylines(square, lines, Path(tmp) / "level_set.ply")
    ...     loaded = trimesh.load(path)
    >>> path.name, len(loaded.entities), loaded.vertices.shape
    ('level_set.ply', 2, (6, 3))
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in POLYLINE_SUFFIXES:
        raise ValueError(f"cannot export a 2D level set to '{path.name}': use one of {POLYLINE_SUFFIXES}")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"cannot export to {path}: folder {path.parent} does not exist")
    if suffix == ".obj":
        data = obj_lines_bytes(vertices, polylines)
    elif suffix == ".ply":
        data = ply_lines_bytes(vertices, polylines)
    else:
        v = np.asarray(vertices, dtype=np.float64).reshape(-1, 2)
        if bounds is None:
            bounds = np.stack([v.min(0), v.max(0)], 1) if len(v) else np.array([[0.0, 1.0], [0.0, 1.0]])
        data = svg_bytes(v, polylines, np.asarray(bounds, dtype=np.float64))
    return atomic_write(path, data)


def level_set_segments(vertices: np.ndarray, polylines: Sequence[np.ndarray]) -> np.ndarray:
    """The polylines as segments ``(S, 2, 2)`` (for :func:`nsr.eval.render.render_complex_2d`).

    Parameters
    ----------
    vertices : (V, 2) float ndarray
        Vertices of the level set.
    polylines : sequence of (n_i,) int ndarray
        Vertex paths (0-based).

    Returns
    -------
    (S, 2, 2) float64 ndarray
        The endpoints of each distinct segment.

    Examples
    --------
    >>> import numpy as np
    >>> square = np.array([[0, 0], [1, 0], [1, 1], [0, 1], [2, 2], [3, 3]], dtype=float)
    >>> lines = [np.array([0, 1, 2, 3, 0]), np.array([4, 5])]  # a closed unit square and an open segment
    >>> seg = level_set_segments(square, lines)
    >>> seg.shape, float(np.linalg.norm(seg[:, 1] - seg[:, 0], axis=1).sum().round(6))  # 4 + sqrt(2)
    ((5, 2, 2), 5.414214)
    """
    v = np.asarray(vertices, dtype=np.float64).reshape(-1, 2)
    seg = _segments(polylines)
    return v[seg] if len(seg) else np.zeros((0, 2, 2))
