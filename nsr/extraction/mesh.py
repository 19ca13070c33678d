"""The exact mesh: :class:`ExactMesh` (vertices, convex polygons, their triangles or 2-D polylines,
the combinatorics differentiable geometry reads) and its export to OBJ/PLY, trimesh and open3d.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nsr.extraction.bits import unpack_bits
from nsr.extraction.memory import _chunks
from nsr.files import MESH_SUFFIXES, write_mesh
from nsr.pl.graph import PLGraph

EXPORT_SUFFIXES = MESH_SUFFIXES


@dataclass(frozen=True)
class PackedPatterns:
    """Activation patterns kept as bits, as extraction packs them: pattern bit ``k`` of row ``m``
    is bit ``start + k`` of ``words[m]`` (bit ``i`` is bit ``i % 64`` of word ``i // 64``), for
    ``k < count``. A wide network's exact mesh keeps its patterns this way, 8x smaller than bool
    (2,048 neurons and 1.4 M polygons: ~8 GB of bool); :class:`ExactMesh` unpacks them when read.

    Parameters
    ----------
    words : (M, W) int64 ndarray
        The packed sets (:func:`nsr.extraction.bits.pack_bits`).
    start : int
        The bit of the first pattern entry (the constraints numbered before the neurons).
    count : int
        Pattern entries per row (the number of neurons).

    Examples
    --------
    >>> import numpy as np
    >>> words = np.array([[0b1011], [-(1 << 63)]], dtype=np.int64)  # the second: bit 63 alone
    >>> PackedPatterns(words, start=1, count=3).unpack().tolist()
    [[True, False, True], [False, False, False]]
    >>> PackedPatterns(words, start=60, count=4).unpack()[1].tolist()
    [False, False, False, True]
    """

    words: np.ndarray
    start: int
    count: int

    def __len__(self) -> int:
        return len(self.words)

    def unpack(self) -> np.ndarray:
        """The patterns as a ``(M, count)`` bool array.

        Returns
        -------
        (M, count) bool ndarray
        """
        ids = torch.arange(self.start, self.start + self.count)
        return unpack_bits(torch.from_numpy(np.ascontiguousarray(self.words, dtype=np.int64)), ids).numpy()


class _Patterns:
    """An :class:`ExactMesh` field of activation patterns: set as a bool array or as
    :class:`PackedPatterns`, read as a bool array (unpacked on the first read, then kept)."""

    def __set_name__(self, owner: type, name: str) -> None:
        self._slot = "_" + name

    def __get__(self, obj: Any, objtype: type | None = None) -> Any:
        if obj is None:
            return None  # the dataclass default: no patterns
        value = obj.__dict__.get(self._slot)
        if value is None:
            return np.zeros((0, 0), dtype=bool)
        if isinstance(value, PackedPatterns):
            value = obj.__dict__[self._slot] = value.unpack()
        return value

    def __set__(self, obj: Any, value: Any) -> None:
        obj.__dict__[self._slot] = value


@dataclass
class ExactMesh:
    """An exact level-set mesh.

    The level set is that of the network's piecewise-affine output ``g`` (before any output
    transform ``T`` such as tanh): ``level`` is the level of ``g`` (``graph.level(t)`` for a
    module level ``t``, kept in ``stats["module_level"]``), and ``stats["max_abs_f"]`` and
    ``stats["mean_abs_f"]`` measure ``|g - level|`` at the vertices (for the identity transform,
    ``|f - level|`` of the module itself).

    ``vertices`` ``(V, D)`` float64; for D = 3 ``polygons`` (vertex cycles, oriented so that
    normals point from negative to positive, i.e. outward for an SDF negative inside),
    ``triangles`` ``(T, 3)`` (fan triangulation of the convex polygons) and
    ``triangle_polygon`` ``(T,)``; for D = 2 ``polylines`` (ordered vertex paths; closed loops
    repeat their first vertex at the end).

    Combinatorics, for differentiable geometry: ``vertex_constraints`` ``(V, D)`` int64, the
    constraints each vertex lies on (numbered by :class:`nsr.pl.layout.ConstraintLayout`:
    ``2d``/``2d+1``: box facet ``x_d = lo_d``/``hi_d``; ``2D + p``: encoder plane ``p``, if
    any; then the hidden neurons in layer order; last the level set);
    ``vertex_patterns`` ``(V, N)`` bool, an activation pattern valid at the vertex (zero
    neurons inactive); ``polygon_patterns`` ``(P, N)`` bool, the pattern of each polygon's
    linear region; ``polygon_is_cap`` ``(P,)`` bool for box caps (``close=True``).

    Parameters
    ----------
    vertices : (V, D) float64 ndarray
        Vertex positions.
    bounds : (D, 2) float64 ndarray
        The box; ``D`` is the mesh's :attr:`dim`.
    level : float
        The level of ``g``.
    polygons : list of (n_i,) int64 ndarray
        D = 3: oriented vertex cycles of the convex planar polygons.
    triangles : (T, 3) int64 ndarray
        D = 3: their fan triangulation.
    triangle_polygon : (T,) int64 ndarray
        The polygon of each triangle.
    polylines : list of (n_i,) int64 ndarray
        D = 2: vertex paths; a closed loop repeats its first vertex.
    vertex_constraints : (V, D) int64 ndarray
        The constraints each vertex lies on.
    vertex_patterns : (V, N) bool ndarray or PackedPatterns
        An activation pattern valid at each vertex (read as a bool array; extraction stores them
        packed, unpacked on the first read).
    polygon_patterns : (P, N) bool ndarray or PackedPatterns
        The activation pattern of each polygon's linear region (as ``vertex_patterns``).
    polygon_is_cap : (P,) bool ndarray
        Polygons on the box faces (``close=True``).
    stats : dict
        Counts, timings and the measured ``max_abs_f`` / ``mean_abs_f``.

    Examples
    --------
    Made by :func:`extract_mesh`; the octahedron network's level set is the octahedron itself:
    6 vertices, 8 triangles, on the surface exactly:

    >>> from nsr.extraction.surface import extract_mesh
    >>> from nsr.networks import octahedron_network
    >>> mesh = extract_mesh(octahedron_network(), (-1, 1), progress=False)
    >>> len(mesh.vertices), len(mesh.polygons), mesh.triangles.shape, mesh.stats["max_abs_f"]
    (6, 8, (8, 3), 0.0)
    """

    vertices: np.ndarray
    bounds: np.ndarray
    level: float = 0.0
    polygons: list[np.ndarray] = field(default_factory=list)
    triangles: np.ndarray = field(default_factory=lambda: np.zeros((0, 3), dtype=np.int64))
    triangle_polygon: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    polylines: list[np.ndarray] = field(default_factory=list)
    vertex_constraints: np.ndarray = field(default_factory=lambda: np.zeros((0, 3), dtype=np.int64))
    vertex_patterns: np.ndarray = _Patterns()  # type: ignore[assignment]
    polygon_patterns: np.ndarray = _Patterns()  # type: ignore[assignment]
    polygon_is_cap: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))
    stats: dict[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:
        # counts, not arrays: printing a mesh should not unpack gigabytes of patterns
        parts = [f"dim={self.dim}", f"vertices={len(self.vertices):,}"]
        parts += [f"polygons={len(self.polygons):,}", f"triangles={len(self.triangles):,}"] if self.dim == 3 else \
            [f"polylines={len(self.polylines):,}"]
        parts.append(f"level={self.level!r}")
        if "mode" in self.stats:
            parts.append(f"mode={self.stats['mode']!r}")
        return f"ExactMesh({', '.join(parts)})"

    @property
    def dim(self) -> int:
        return int(self.bounds.shape[0])

    @property
    def is_empty(self) -> bool:
        return len(self.vertices) == 0

    @property
    def faces(self) -> np.ndarray:
        return self.triangles

    def to_trimesh(self) -> Any:
        """A ``trimesh.Trimesh`` of the triangles (vertices kept as they are, no merging).

        Returns
        -------
        trimesh.Trimesh

        Raises
        ------
        ValueError
            For a 2-D level set (polylines).

        Examples
        --------
        The octahedron ``|x| + |y| + |z| <= 0.5`` has volume ``4/3 * 0.5**3``:

        >>> from nsr.extraction.surface import extract_mesh
        >>> from nsr.networks import octahedron_network
        >>> mesh = extract_mesh(octahedron_network(), (-1, 1), progress=False)  # |x| + |y| + |z| = 0.5
        >>> tm = mesh.to_trimesh()
        >>> tm.is_watertight, tm.euler_number, round(float(tm.volume), 12) == round(4 / 3 * 0.5**3, 12)
        (True, 2, True)
        """
        import trimesh

        self._require_3d("to_trimesh")
        return trimesh.Trimesh(self.vertices, self.triangles, process=False)

    def to_open3d(self) -> Any:
        """An ``open3d.geometry.TriangleMesh`` of the triangles.

        Returns
        -------
        open3d.geometry.TriangleMesh
            With triangle normals computed.

        Raises
        ------
        ImportError
            Where open3d cannot be imported (a missing system library).
        ValueError
            For a 2-D level set.

        Examples
        --------
        open3d takes seconds to import, so this example is not run:

        >>> from nsr.extraction.surface import extract_mesh
        >>> from nsr.networks import octahedron_network
        >>> mesh = extract_mesh(octahedron_network(), (-1, 1), progress=False)  # |x| + |y| + |z| = 0.5
        >>> len(mesh.to_open3d().triangles)  # doctest: +SKIP
        8
        """
        self._require_3d("to_open3d")
        try:
            import open3d as o3d
        except (ImportError, OSError) as err:
            raise ImportError(f"open3d is not usable here ({err}); install libusb-1.0-0") from err
        m = o3d.geometry.TriangleMesh(
            o3d.utility.Vector3dVector(self.vertices), o3d.utility.Vector3iVector(self.triangles.astype(np.int32))
        )
        m.compute_triangle_normals()
        return m

    def _require_3d(self, what: str) -> None:
        if self.dim != 3:
            raise ValueError(f"{what} needs a 3-D mesh; this level set is {self.dim - 1}-dimensional")

    def export(self, path: str | Path, *, polygons: bool = False, binary: bool | None = None) -> Path:
        """Write the mesh; the format follows the suffix (``.obj``, ``.ply``, ``.off``, ``.stl``;
        a 2-D level set: ``.ply`` with edges, ``.obj`` with ``l`` line elements or ``.svg``, see
        :mod:`nsr.polylines`).

        ``polygons=True`` writes the true planar n-gons (OBJ and PLY) instead of triangles.
        ``binary`` selects binary or ASCII PLY; by default triangles are binary and polygons
        ASCII, because trimesh's binary PLY reader needs faces of one size. Every file nsr
        writes is read back by trimesh and open3d (tests/test_surface.py, tests/hostile):
        n-gon OBJ through ``trimesh.load`` and ``open3d.io.read_triangle_model``
        (``open3d.io.read_triangle_mesh`` keeps only the OBJ faces that are triangles), n-gon
        PLY through ``trimesh.load`` and ``open3d.io.read_triangle_mesh``; both readers
        triangulate n-gons. Coordinates are written exactly (``%.17g`` or float64), except STL,
        whose format stores float32. Polygon files keep every vertex, but a polygon refers
        to bit-identical positions through one vertex and skips the zero-length edges that
        degenerate networks give (readers' ear clipping fails on them); polygons left with
        fewer than 3 vertices have zero area and are not written.

        The file is written to a temporary name in the same folder and renamed
        (:func:`nsr.files.atomic_write`): a failure or Ctrl-C leaves no half-written file.

        Parameters
        ----------
        path : str or Path
            Destination; its folder must exist.
        polygons : bool
            Write the planar polygons (OBJ, PLY) instead of triangles.
        binary : bool, optional
            Binary or ASCII PLY; default binary for triangles, ASCII for polygons.

        Returns
        -------
        Path
            The path written.

        Raises
        ------
        ValueError
            For an unknown suffix, ``polygons`` with another format than OBJ or PLY, or binary polygon PLY.
        FileNotFoundError
            When the folder does not exist.

        Examples
        --------
        The octahedron's 8 triangles as polygons in an OBJ, read back by trimesh:

        >>> import tempfile, trimesh
        >>> from pathlib import Path
        >>> from nsr.extraction.surface import extract_mesh
        >>> from nsr.networks import octahedron_network
        >>> mesh = extract_mesh(octahedron_network(), (-1, 1), progress=False)  # |x| + |y| + |z| = 0.5
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     path = mesh.export(Path(tmp) / "octahedron.obj", polygons=True)
        ...     n_faces = sum(line.startswith("f ") for line in path.read_text().splitlines())
        ...     loaded = trimesh.load(path)
        >>> n_faces, loaded.is_watertight
        (8, True)
        """
        if self.dim == 2:  # a 2-D level set is polylines: PLY edges, OBJ lines or SVG (nsr.polylines)
            from nsr.polylines import export_polylines

            return export_polylines(self.vertices, self.polylines, path, self.bounds)
        self._require_3d("export")
        path = Path(path)
        suffix = path.suffix.lower()
        if suffix not in EXPORT_SUFFIXES:
            raise ValueError(f"cannot export to '{path.name}': unknown suffix, use one of {EXPORT_SUFFIXES}")
        if polygons and suffix not in (".obj", ".ply"):
            raise ValueError("polygons=True is supported for .obj and .ply only")
        if polygons and suffix == ".ply" and binary:
            raise ValueError("binary PLY with polygons of different sizes cannot be read by trimesh: "
                             "use binary=False (the default for polygons) or a .obj file")
        if not path.parent.is_dir():
            raise FileNotFoundError(f"cannot export to {path}: folder {path.parent} does not exist")
        vertices = np.ascontiguousarray(self.vertices, dtype=np.float64)
        if polygons:
            sizes, flat = _polygon_faces(vertices, self.polygons)
        else:
            tri = np.asarray(self.triangles, dtype=np.int64).reshape(-1, 3)
            sizes, flat = np.full(len(tri), 3, dtype=np.int64), tri.reshape(-1)
        return write_mesh(path, vertices, sizes, flat, binary=not polygons if binary is None else binary)


def _polygon_faces(vertices: np.ndarray, polygons: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Polygons as ``sizes (F,)`` and concatenated vertex indices ``flat (sum(sizes),)`` int64.

    Vertices at bit-identical positions are referred to through the first of them, and the
    zero-length edges this leaves are skipped; polygons left with fewer than 3 vertices are dropped.
    """
    if not polygons:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    sizes = np.array([len(p) for p in polygons], dtype=np.int64)
    _, first, inverse = np.unique(vertices, axis=0, return_index=True, return_inverse=True)
    flat = first[inverse.reshape(-1)][np.concatenate(polygons).astype(np.int64)]
    starts = np.cumsum(sizes) - sizes
    nxt = np.arange(1, len(flat) + 1)
    nxt[starts + sizes - 1] = starts  # each cycle closes on its first vertex
    keep = flat != flat[nxt]
    face = np.repeat(np.arange(len(sizes)), sizes)
    new_sizes = np.bincount(face[keep], minlength=len(sizes))
    keep &= (new_sizes >= 3)[face]
    return new_sizes[new_sizes >= 3], flat[keep]


# --------------------------------------------------------------------------------------
# Vertex cycles of faces
# --------------------------------------------------------------------------------------



def edges_paired(triangles: np.ndarray, n_vertices: int) -> bool:
    """Whether every undirected edge of ``triangles`` ``(T, 3)`` is used by exactly two of them
    (what ``trimesh.Trimesh.is_watertight`` answers), by one sort of int64 edge keys: a third
    of trimesh's time on a 1.3 M-triangle sphere (0.49 s against 1.36 s, one thread), which
    every large extraction pays once.

    Parameters
    ----------
    triangles : (T, 3) int ndarray
        Vertex indices, each below ``n_vertices``.
    n_vertices : int
        Number of vertices.

    Returns
    -------
    bool
        False for no triangles.

    Examples
    --------
    >>> import numpy as np
    >>> tetrahedron = np.array([[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]])
    >>> edges_paired(tetrahedron, 4), edges_paired(tetrahedron[:3], 4)
    (True, False)
    """
    t = np.asarray(triangles, dtype=np.int64)
    if len(t) == 0:
        return False
    e = np.sort(np.concatenate([t[:, [0, 1]], t[:, [1, 2]], t[:, [2, 0]]]), axis=1)
    key = np.sort(e[:, 0] * int(n_vertices) + e[:, 1])
    starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
    return bool((np.diff(np.r_[starts, len(key)]) == 2).all())


def _measure(mesh: ExactMesh, net: PLGraph) -> None:
    """Record counts and the measured ``|g - level|`` at the vertices (float64 evaluation of the
    piecewise-affine output ``g``, before any output transform: see :class:`ExactMesh`)."""
    s = mesh.stats
    s["n_vertices"] = len(mesh.vertices)
    s["n_polygons"] = len(mesh.polygons)
    s["n_triangles"] = len(mesh.triangles)
    s["n_polylines"] = len(mesh.polylines)
    if mesh.is_empty:
        s["max_abs_f"] = s["mean_abs_f"] = 0.0
        return
    n64 = net.to(device="cpu", dtype=torch.float64)
    x = torch.as_tensor(mesh.vertices)
    # in blocks: a wide network's layer over a million vertices would take gigabytes at once
    row = 8 * 3 * max(net.widths, default=1)
    with torch.no_grad():
        f = torch.cat([n64(x[sl]).reshape(-1) for sl in _chunks(len(x), row, x.device)])
        f = (f - mesh.level).abs()
    if mesh.dim == 3 and mesh.polygon_is_cap.any():
        # cap-only vertices are not on the level set; measure those of surface polygons
        surf = np.unique(np.concatenate([p for p, c in zip(mesh.polygons, mesh.polygon_is_cap) if not c]
                                        or [np.zeros(0, np.int64)]))
        f = f[torch.as_tensor(surf)]
    s["max_abs_f"] = float(f.max()) if len(f) else 0.0
    s["mean_abs_f"] = float(f.mean()) if len(f) else 0.0
    if mesh.dim == 3 and len(mesh.triangles):
        s["watertight"] = edges_paired(mesh.triangles, len(mesh.vertices))
