"""Exact zero-level meshes of ReLU networks: polygons, triangles, polylines, export.

The level set ``f = level`` of a ReLU network is piecewise planar: every linear region the
surface crosses contributes one convex planar polygon, and polygons meet exactly along
shared edges. Vertices are welded by their combinatorial identity (sign-vector), never by
a distance tolerance.

Two modes give the same polygons:

* ``mode="complex"`` builds the whole complex over the box, then refines it by the level set.
* ``mode="surface"`` splits the box into a grid of tiles, drops tiles whose output provably
  cannot reach the level (interval bounds, tightened before every layer from the exact
  range of that layer's pre-activations over the tile), subdivides all remaining tiles in
  one batch, and stitches them: vertices by global identity, polygon pieces that only a
  tile plane split by the identity of their linear region. Vertices that only a tile plane
  created are removed, so the result equals complex mode.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from nsr import limits
from nsr.extraction.bits import bit_values, group_equal_rows, unpack_bits
from nsr.extraction.complex import PolyhedralComplex, extract_complex
from nsr.extraction.encoder_split import tile_batches
from nsr.extraction.guards import as_bounds, check_box, no_tf32, resolve_dtype
from nsr.extraction.memory import peak_memory_mb
from nsr.extraction.progress import _progress
from nsr.extraction.pruning import Band, band_cells, may_reach
from nsr.extraction.subdivide import encoder_facets, subdivide
from nsr.extraction.tolerances import facet_tolerances, sign_tolerances, warn_unpaired
from nsr.files import MESH_SUFFIXES, write_mesh
from nsr.geometry import fan_triangles
from nsr.networks import PLNetwork
from nsr.pl.bounds import output_bounds
from nsr.pl.graph import PLGraph, as_graph
from nsr.pl.layout import NEURON, ConstraintLayout

EXPORT_SUFFIXES = MESH_SUFFIXES


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
    vertex_patterns : (V, N) bool ndarray
        An activation pattern valid at each vertex.
    polygon_patterns : (P, N) bool ndarray
        The activation pattern of each polygon's linear region.
    polygon_is_cap : (P,) bool ndarray
        Polygons on the box faces (``close=True``).
    stats : dict
        Counts, timings and the measured ``max_abs_f`` / ``mean_abs_f``.

    Examples
    --------
    Made by :func:`extract_mesh`; the octahedron network's level set is the octahedron itself:
    6 vertices, 8 triangles, on the surface exactly:

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
    vertex_patterns: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), dtype=bool))
    polygon_patterns: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), dtype=bool))
    polygon_is_cap: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))
    stats: dict[str, Any] = field(default_factory=dict)

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


def order_cycles(face: Tensor, u: Tensor, v: Tensor, n_faces: int) -> tuple[Tensor, Tensor]:
    """Order the edges of each face into a vertex cycle.

    ``face``, ``u``, ``v`` ``(M,)``: undirected edge ``(u, v)`` bounds face ``face``. Returns
    ``cycles`` ``(F, L)`` padded with -1 and ``valid`` ``(F,)`` (every vertex of the face has
    exactly two of its edges, and one walk visits them all).

    Parameters
    ----------
    face : (M,) int64 Tensor
        The face each edge bounds.
    u, v : (M,) int64 Tensor
        The edge's endpoints.
    n_faces : int
        Number of faces ``F``.

    Returns
    -------
    cycles : (F, L) int64 Tensor
        Each valid face's vertices in walk order, ``L`` the most edges of a face; -1 padding
        (a whole row of -1 for an invalid face).
    valid : (F,) bool Tensor
        Whether the face's edges form one closed cycle.

    Examples
    --------
    A square given by its edges out of order, a triangle, and an open path (not a face):

    >>> import torch
    >>> face = torch.tensor([0, 0, 0, 0, 1, 1, 1, 2, 2])
    >>> u = torch.tensor([0, 2, 1, 3, 4, 5, 6, 7, 8])
    >>> v = torch.tensor([1, 3, 2, 0, 5, 6, 4, 8, 9])
    >>> cycles, valid = order_cycles(face, u, v, 3)
    >>> cycles.tolist(), valid.tolist()
    ([[0, 1, 2, 3], [4, 5, 6, -1], [-1, -1, -1, -1]], [True, True, False])
    """
    dev = face.device
    if face.numel() == 0:
        empty = torch.zeros(n_faces, 0, dtype=torch.int64, device=dev)
        return empty, torch.zeros(n_faces, dtype=torch.bool, device=dev)
    f2 = torch.cat([face, face])
    src = torch.cat([u, v])
    dst = torch.cat([v, u])
    nv = int(torch.maximum(u.max(), v.max())) + 1
    key = f2 * nv + src
    key_sorted, order = torch.sort(key)
    f2, src, dst = f2[order], src[order], dst[order]
    # each (face, vertex) must appear exactly twice
    uniq, counts = torch.unique_consecutive(key_sorted, return_counts=True)
    bad_key = uniq[counts != 2]
    bad_face = torch.zeros(n_faces, dtype=torch.bool, device=dev)
    bad_face[torch.div(bad_key, nv, rounding_mode="floor")] = True
    # successor of half-edge h = (f, s -> d): the other half-edge leaving d in f
    tgt = torch.searchsorted(key_sorted, f2 * nv + dst)
    tgt = tgt.clamp(max=len(key_sorted) - 2)
    alt = torch.where(dst[tgt] == src, tgt + 1, tgt)
    ok = (key_sorted[alt] == f2 * nv + dst)
    nxt = torch.where(ok, alt, torch.full_like(alt, -1))
    n_edges = torch.bincount(face, minlength=n_faces)
    # start at the first half-edge of each face
    first = torch.full((n_faces,), -1, dtype=torch.int64, device=dev)
    idx = torch.arange(len(f2), device=dev)
    first.scatter_reduce_(0, f2, idx, "amax", include_self=False)
    first.scatter_reduce_(0, f2, idx, "amin", include_self=False)
    lmax = int(n_edges.max())
    cycles = torch.full((n_faces, lmax), -1, dtype=torch.int64, device=dev)
    has = first >= 0
    cur = first.clamp(min=0)
    start_vertex = src[cur]
    alive = has & ~bad_face
    length = torch.zeros(n_faces, dtype=torch.int64, device=dev)
    for step in range(lmax):
        cycles[:, step] = torch.where(alive, src[cur], torch.full_like(cur, -1))
        length += alive.long()
        nx = nxt[cur]
        broken = alive & (nx < 0)
        bad_face |= broken
        cur = nx.clamp(min=0)
        alive = alive & ~broken & (src[cur] != start_vertex)
    valid = has & ~bad_face & (length == n_edges) & ~alive
    return cycles, valid


def _orient(cycles: Tensor, x: Tensor, normal: Tensor) -> Tensor:
    """Reverse cycles whose Newell normal points against ``normal`` ``(F, D)``."""
    length = (cycles >= 0).sum(1)
    lmax = cycles.shape[1]
    if lmax == 0:
        return cycles
    ar = torch.arange(lmax, device=cycles.device)
    nxt_idx = (ar[None] + 1) % length.clamp(min=1)[:, None]
    p = x[cycles.clamp(min=0)]
    q = x[torch.gather(cycles, 1, nxt_idx).clamp(min=0)]
    valid = (cycles >= 0).unsqueeze(-1)
    newell = (torch.cross(p, q, dim=-1) * valid).sum(1)
    flip = (newell * normal).sum(1) < 0
    rev_idx = (length[:, None] - ar[None]) % length.clamp(min=1)[:, None]
    rev = torch.gather(cycles, 1, rev_idx)
    rev = torch.where(ar[None] < length[:, None], rev, torch.full_like(rev, -1))
    return torch.where(flip[:, None], rev, cycles)


def _compact_rows(cycles: Tensor, keep: Tensor) -> Tensor:
    """Drop entries where ``keep`` is False from each padded row, keeping order."""
    keep = keep & (cycles >= 0)
    order = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)
    out = torch.gather(cycles, 1, order)
    return torch.where(torch.gather(keep, 1, order), out, torch.full_like(out, -1))


# --------------------------------------------------------------------------------------
# From a subdivided skeleton to a mesh
# --------------------------------------------------------------------------------------


@dataclass
class _Arrays:
    """Vertices/edges of a level-set-refined complex over a grid of tiles."""

    x: Tensor
    vzeros: Tensor
    vpos: Tensor
    vtile: Tensor
    edges: Tensor
    ezeros: Tensor
    tile_index: Tensor  # (K, D) grid index of each tile
    grid: int  # tiles per axis
    n_facets: int = 0  # encoder planes (constraint ids 2D..2D+P-1)


def _global_zeros(zeros: Tensor, tile: Tensor, arr: _Arrays, d: int) -> tuple[Tensor, Tensor]:
    """Map local tile-facet ids to global plane ids ``-(1 + axis*(T+1) + k)``; also return
    whether each entry is an internal tile plane (not on the box boundary)."""
    is_facet = zeros < 2 * d
    axis = torch.div(zeros, 2, rounding_mode="floor").clamp(max=d - 1)
    k = arr.tile_index[tile][:, None, :].expand(-1, zeros.shape[1], -1)
    k = torch.gather(k, 2, axis.unsqueeze(-1)).squeeze(-1) + zeros % 2
    plane = -(1 + axis * (arr.grid + 1) + k)
    internal = is_facet & (k > 0) & (k < arr.grid)
    return torch.where(is_facet, plane, zeros), internal


def _plane_to_constraint(g: Tensor, grid: int) -> Tensor:
    """Global ids back to constraint ids (boundary planes -> box facets ``2d``/``2d+1``)."""
    p = -g - 1
    axis = torch.div(p, grid + 1, rounding_mode="floor")
    k = p - axis * (grid + 1)
    return torch.where(g < 0, 2 * axis + (k == grid).long(), g)


def _mesh_from_arrays(net: PLGraph, arr: _Arrays, bounds: np.ndarray, level: float, close: bool) -> ExactMesh:
    arr = _Arrays(arr.x, arr.vzeros.long(), arr.vpos, arr.vtile.long(), arr.edges.long(), arr.ezeros.long(),
                  arr.tile_index, arr.grid, arr.n_facets)
    d = arr.x.shape[1]
    n = net.n_neurons
    layout = ConstraintLayout(d, net.widths, arr.n_facets)
    out = layout.output
    w = arr.vpos.shape[1]
    dev = arr.x.device
    # bits past the box facets: encoder planes, neurons and output (tile-facet bits differ
    # between tiles for one vertex; the others are global)
    ids = torch.arange(w * 64, device=dev)
    keep_bits = (ids >= layout.n_box) & (ids < out + 1)
    wd, mk = bit_values(ids[keep_bits])
    mask = torch.zeros(w, dtype=torch.int64, device=dev).index_put_((wd,), mk, accumulate=True)

    gz, internal = _global_zeros(arr.vzeros, arr.vtile, arr, d)
    gz = torch.sort(gz, 1).values
    e = arr.edges
    ge, e_internal = _global_zeros(arr.ezeros, arr.vtile[e[:, 0]], arr, d)
    epos = (arr.vpos[e[:, 0]] | arr.vpos[e[:, 1]]) & mask

    if d == 2:
        return _polylines(net, arr, bounds, level, gz, internal, ge, e_internal, mask, layout)

    faces_support, faces_pos, inc_edge = [], [], []

    def add(edge_idx: Tensor, support: Tensor, other: Tensor, sides: tuple[int, ...], need_neg: bool) -> None:
        for side in sides:
            sel = edge_idx
            pk = epos[sel].clone()
            oth = other
            is_neuron = (oth >= layout.n_box) & (oth < out)  # a neuron or an encoder plane: two sides
            if side == 1:  # the positive side of a neuron; the inside of a box plane
                wi, mi = bit_values(oth.clamp(min=0))
                rows = torch.nonzero(is_neuron).squeeze(1)
                pk[rows, wi[rows]] |= mi[rows]
                keep = is_neuron | (oth < 0)
            else:  # the negative side of a neuron or of the level set
                keep = is_neuron | (oth == out)
            if need_neg:
                wo, mo = bit_values(torch.tensor(out, device=dev))
                keep = keep & ((pk[:, wo] & mo) == 0)
            r = torch.nonzero(keep).squeeze(1)
            faces_support.append(support[r])
            faces_pos.append(pk[r])
            inc_edge.append(sel[r])

    # surface: edges on the level set whose other zero is not an internal tile plane
    on_ls = arr.ezeros[:, -1] == out
    s_edges = torch.nonzero(on_ls & ~e_internal[:, 0]).squeeze(1)
    add(s_edges, torch.full((len(s_edges),), out, device=dev), ge[s_edges, 0], (0, 1), need_neg=False)
    if close:
        for slot in range(2):
            g = ge[:, slot]
            on_boundary = (g < 0) & ~e_internal[:, slot]
            other = ge[:, 1 - slot]
            sel = torch.nonzero(on_boundary & ~e_internal[:, 1 - slot]).squeeze(1)
            add(sel, g[sel], other[sel], (0, 1), need_neg=True)

    support = torch.cat(faces_support)
    fpos = torch.cat(faces_pos)
    inc = torch.cat(inc_edge)
    if len(inc) == 0:
        return _empty(bounds, level, d, n)
    order, fid = group_equal_rows(torch.cat([support[:, None], fpos], 1))
    n_faces = int(fid.max()) + 1
    face_of_inc = torch.empty_like(fid)
    face_of_inc[order] = fid
    rep = torch.zeros(n_faces, dtype=torch.int64, device=dev)
    rep[fid] = order
    f_support, f_pos = support[rep], fpos[rep]

    # weld vertices of the incident edges by (neuron/output signs, global zero ids)
    used = torch.unique(e[inc].reshape(-1))
    vkey = torch.cat([arr.vpos[used] & mask, gz[used]], 1)
    vorder, vid = group_equal_rows(vkey)
    weld = torch.full((len(arr.x),), -1, dtype=torch.int64, device=dev)
    weld[used[vorder]] = vid
    n_w = int(vid.max()) + 1
    wrep = torch.zeros(n_w, dtype=torch.int64, device=dev)
    wrep[vid] = used[vorder]
    wx = arr.x[wrep].double()

    cycles, valid = order_cycles(face_of_inc, weld[e[inc, 0]], weld[e[inc, 1]], n_faces)
    n_invalid = int((~valid).sum())
    cycles, f_support, f_pos = cycles[valid], f_support[valid], f_pos[valid]
    if net.encoder is not None and arr.n_facets:
        # Three grid planes meet in every grid line (x_i = a, x_j = b, x_i - x_j = a - b): the sign
        # rule resolves a surface crossing such a line into vertices at one point joined by
        # zero-length edges. Weld them by every plane through the point, drop the zero-length edges
        # and the polygons left with fewer than three corners.
        mid, n_m = _weld_on_grid_lines(net, arr, bounds, wrep, gz, internal, mask, layout)
        cycles = torch.where(cycles >= 0, mid[cycles.clamp(min=0)], cycles)
        # a point is a tile plane's artefact only if none of its vertices is named without a tile plane
        real = torch.zeros(n_m, dtype=torch.bool, device=dev)
        real[mid[~internal[wrep].any(1)]] = True
        # the first of a point's vertices stands for it (deterministic: its copies differ in the last bit)
        mrep = torch.full((n_m,), n_w, dtype=torch.int64, device=dev)
        mrep.scatter_reduce_(0, mid, torch.arange(n_w, device=dev), "amin")
        wrep, wx, n_w = wrep[mrep], wx[mrep], n_m
    else:
        real = ~internal[wrep].any(1)
    # remove vertices that only a tile plane created (they lie inside polygon edges)
    cycles = _compact_rows(cycles, real[cycles.clamp(min=0)])
    if net.encoder is not None and arr.n_facets:
        cycles, kept = _drop_repeated_corners(cycles)
        f_support, f_pos = f_support[kept], f_pos[kept]
    # orientation: surface polygons along the gradient, caps along the outward facet normal
    is_cap = f_support != out
    patterns = unpack_bits(f_pos, torch.arange(layout.neuron_offset, out, device=dev))
    netd = net.to(device=dev, dtype=torch.float64)
    if n and netd.encoder is None:
        normal = netd.local_gradients(list(torch.split(patterns, net.widths, dim=1)))
    else:  # the gradient inside each polygon's region, at the polygon's centroid
        normal = _gradients_at(netd, _centroids(cycles, wx))
    cap_c = _plane_to_constraint(f_support[is_cap], arr.grid)
    cap_n = torch.zeros(int(is_cap.sum()), d, dtype=torch.float64, device=dev)
    cap_n[torch.arange(len(cap_c)), torch.div(cap_c, 2, rounding_mode="floor")] = (cap_c % 2).double() * 2 - 1
    normal[is_cap] = cap_n
    cycles = _orient(cycles, wx, normal)

    # compact vertices to those used by polygons
    usedv = torch.unique(cycles[cycles >= 0])
    remap = torch.full((n_w,), -1, dtype=torch.int64, device=dev)
    remap[usedv] = torch.arange(len(usedv), device=dev)
    cycles = torch.where(cycles >= 0, remap[cycles.clamp(min=0)], cycles)
    verts = wx[usedv]
    vcons = _plane_to_constraint(gz[wrep[usedv]], arr.grid)
    vpat = unpack_bits(arr.vpos[wrep[usedv]], torch.arange(layout.neuron_offset, out, device=dev))
    return _polygon_mesh(verts, cycles, bounds, level, vcons, vpat, patterns, is_cap, n_invalid)


def _weld_on_grid_lines(net: PLGraph, arr: _Arrays, bounds: np.ndarray, wrep: Tensor, gz: Tensor, internal: Tensor,
                        mask: Tensor, layout: ConstraintLayout) -> tuple[Tensor, int]:
    """Weld vertices of an encoder network that are one point on several concurrent encoder planes.

    A vertex is named by its zero constraints other than encoder planes, every encoder plane
    through it (one per family of parallel planes, within that plane's sign tolerance, and those
    it was cut by), and its signs on every other constraint, as track mode names them: the
    vertices of one point differ only in the sides of the planes through it. Returns the new id
    ``(n_w,)`` of each welded vertex ``wrep`` and their number."""
    from nsr.extraction.encoder_tracking import EncoderCells

    dev, dt = arr.x.device, arr.x.dtype
    bt = torch.as_tensor(bounds, dtype=dt, device=dev)
    cells = EncoderCells(net.encoder, bt)
    normals, offsets = net.encoder.planes(bt[:, 0], bt[:, 1])
    tol = facet_tolerances(normals.to(bt), offsets.to(bt), bt[:, 0], bt[:, 1])
    x = arr.x[wrep]
    vals = (x @ cells.normals.T).T.contiguous()  # (F, V)
    above = torch.searchsorted(cells.offsets, vals)
    through = torch.full_like(above, -1)
    for cand in (above - 1, above):  # the nearest plane of each family lies on one side or the other
        c = cand.clamp(0, cells.offsets.shape[1] - 1)
        ids = torch.gather(cells.ids, 1, c)
        off = torch.gather(cells.offsets, 1, c)
        ok = (cand >= 0) & (ids >= 0) & ((vals - off).abs() <= tol[ids.clamp(min=0)])
        through = torch.where(ok, ids, through)
    through = through.T.contiguous()  # (V, F)
    z = gz[wrep]
    p0 = layout.n_box
    is_enc = (z >= p0) & (z < p0 + arr.n_facets)
    plane = (z - p0).clamp(0, max(arr.n_facets - 1, 0))
    rows = torch.arange(len(z), device=dev)[:, None].expand_as(z)
    through[rows[is_enc], cells.family[plane[is_enc]]] = plane[is_enc]  # the planes it was cut by
    # the sides of the planes through the point differ between its vertices; every other sign is the point's
    on = through >= 0
    wd, mk = bit_values(p0 + through[on])
    clear = torch.zeros(len(z), mask.shape[0], dtype=torch.int64, device=dev)
    clear.index_put_((rows[:, :1].expand_as(through)[on], wd), mk, accumulate=True)  # distinct bits: sum = or
    # box facets through the point (coordinates on them are copied exactly, never interpolated)
    on_box = torch.cat([x == bt[:, 0], x == bt[:, 1]], 1).long()
    drop = is_enc | (z < 0) & ~internal[wrep]  # encoder planes and box facets: named by the columns above
    other = torch.sort(torch.where(drop, torch.full_like(z, -(2**62)), z), 1).values
    key = torch.cat([arr.vpos[wrep] & mask & ~clear, other, through, on_box], 1)
    order, gid = group_equal_rows(key)
    out = torch.empty_like(gid)
    out[order] = gid
    return out, int(gid.max()) + 1 if len(gid) else 0


def _drop_repeated_corners(cycles: Tensor) -> tuple[Tensor, Tensor]:
    """Remove corners equal to the previous one (cyclically) from padded cycles ``(F, L)`` and
    drop the cycles left with fewer than three; returns them and the kept rows ``(F,)`` bool."""
    length = (cycles >= 0).sum(1)
    ar = torch.arange(cycles.shape[1], device=cycles.device)
    prev = torch.gather(cycles, 1, (ar[None] - 1) % length.clamp(min=1)[:, None])
    cycles = _compact_rows(cycles, cycles != prev)
    kept = (cycles >= 0).sum(1) >= 3
    return cycles[kept], kept


def _centroids(cycles: Tensor, x: Tensor) -> Tensor:
    """Mean ``(F, D)`` of each padded vertex cycle ``(F, L)`` (-1 padded) of positions ``x``."""
    valid = (cycles >= 0).unsqueeze(-1)
    return (x[cycles.clamp(min=0)] * valid).sum(1) / valid.sum(1).clamp(min=1)


def _gradients_at(graph: PLGraph, x: Tensor) -> Tensor:
    """Gradient ``(M, D)`` of ``g`` at points ``x`` ``(M, D)`` inside regions (autograd)."""
    with torch.enable_grad():
        xg = x.detach().clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(graph(xg).sum(), xg)
    return grad


def _rows_to_list(rows: np.ndarray) -> list[np.ndarray]:
    """The non-negative entries of each row of ``rows`` ``(P, L)`` (-1 padded), as views of one
    array: slicing is ~5x faster than masking row by row (a million polygons: 0.5 s against 3 s)."""
    keep = rows >= 0
    flat = rows[keep]
    ends = np.cumsum(keep.sum(1)).tolist()
    return [flat[a:b] for a, b in zip([0, *ends[:-1]], ends)]


def _polygon_mesh(x: Tensor, cycles: Tensor, bounds: np.ndarray, level: float, vertex_constraints: Tensor,
                  vertex_patterns: Tensor, polygon_patterns: Tensor, is_cap: Tensor, n_invalid: int) -> ExactMesh:
    """An :class:`ExactMesh` of oriented vertex cycles ``(P, L)`` (-1 padded), fan-triangulated."""
    tris, owner = fan_triangles(cycles)
    mesh = ExactMesh(
        vertices=x.cpu().numpy(),
        bounds=bounds,
        level=level,
        polygons=_rows_to_list(cycles.cpu().numpy()),
        triangles=tris.cpu().numpy(),
        triangle_polygon=owner.cpu().numpy(),
        vertex_constraints=vertex_constraints.cpu().numpy(),
        vertex_patterns=vertex_patterns.cpu().numpy(),
        polygon_patterns=polygon_patterns.cpu().numpy(),
        polygon_is_cap=is_cap.cpu().numpy(),
    )
    mesh.stats["invalid_faces"] = n_invalid
    return mesh


def _polylines(
    net: PLGraph, arr: _Arrays, bounds: np.ndarray, level: float, gz: Tensor, internal: Tensor,
    ge: Tensor, e_internal: Tensor, mask: Tensor, layout: ConstraintLayout,
) -> ExactMesh:
    d, n = 2, net.n_neurons
    out = layout.output
    e = arr.edges
    sel = torch.nonzero(arr.ezeros[:, 0] == out).squeeze(1)
    if len(sel) == 0:
        return _empty(bounds, level, d, n)
    used = torch.unique(e[sel].reshape(-1))
    vkey = torch.cat([arr.vpos[used] & mask, gz[used]], 1)
    vorder, vid = group_equal_rows(vkey)
    weld = torch.full((len(arr.x),), -1, dtype=torch.int64)
    weld[used[vorder]] = vid
    n_w = int(vid.max()) + 1
    wrep = torch.zeros(n_w, dtype=torch.int64)
    wrep[vid] = used[vorder]
    split = internal[wrep].any(1).numpy()
    ends = weld[e[sel]].numpy()
    # Walk the graph (degree <= 2); 2-D level sets are small, plain Python is fine here.
    adj: dict[int, list[int]] = {}
    for a, b in ends:
        adj.setdefault(int(a), []).append(int(b))
        adj.setdefault(int(b), []).append(int(a))
    seen: set[tuple[int, int]] = set()
    lines = []
    starts = [v for v, nb in adj.items() if len(nb) == 1] + list(adj)
    for s in starts:
        for nb in adj[s]:
            if (s, nb) in seen:
                continue
            path, prev, cur = [s], s, nb
            seen.update({(s, nb), (nb, s)})
            while True:
                path.append(cur)
                nxt = [w for w in adj[cur] if w != prev]
                if not nxt or cur == s:
                    break
                prev, cur = cur, nxt[0]
                if (prev, cur) in seen:
                    path.append(cur)
                    break
                seen.update({(prev, cur), (cur, prev)})
            if path[0] == path[-1]:  # closed loop: drop tile-plane vertices, re-close
                loop = [v for v in path[:-1] if not split[v]]
                lines.append(loop + loop[:1])
            else:  # open paths end on the box boundary, never on a tile-plane vertex
                lines.append([v for v in path if not split[v]])
    usedv = np.unique(np.concatenate([np.asarray(p) for p in lines]))
    remap = -np.ones(n_w, dtype=np.int64)
    remap[usedv] = np.arange(len(usedv))
    x = arr.x[wrep].double().numpy()
    return ExactMesh(
        vertices=x[usedv],
        bounds=bounds,
        level=level,
        polylines=[remap[np.asarray(p)] for p in lines],
        vertex_constraints=_plane_to_constraint(gz[wrep[torch.as_tensor(usedv)]], arr.grid).numpy(),
        vertex_patterns=unpack_bits(arr.vpos[wrep[torch.as_tensor(usedv)]],
                                    torch.arange(layout.neuron_offset, out)).numpy(),
    )


def _mesh_from_tracks(net: PLGraph | PLNetwork, tr: dict[str, Any], bounds: np.ndarray, level: float) -> ExactMesh:
    """Weld walked polygons (:func:`nsr.extraction.tracking.track_surface`) into an :class:`ExactMesh`."""
    if len(tr["key"]) == 0:
        return _empty(bounds, level, 3, net.n_neurons)
    w = weld_tracks(net, tr)
    layout = tr.get("layout") or ConstraintLayout.of(net)  # with an encoder: its planes are numbered too
    return _polygon_mesh(w["vertices"], w["cycles"], bounds, level, w["vertex_constraints"],
                         w["vertex_patterns"], tr["patterns"], tr["support"] != layout.output,
                         tr["stats"]["failed_walks"])


def weld_tracks(net: PLGraph | PLNetwork, tr: dict[str, Any]) -> dict[str, Tensor]:
    """Weld the polygons walked by :func:`nsr.extraction.tracking.track_surface` into shared vertices.

    Vertex ``i`` of a polygon lies on its support and on the constraints of edges ``i - 1``
    and ``i``; with the bits of those neurons cleared from the region's pattern (the regions
    around the vertex differ only there), the three ids and the pattern identify it exactly.
    Returns tensors: ``vertices`` ``(V, 3)`` float64, ``cycles`` ``(P, L)`` long (-1 padded,
    oriented along each polygon's ``normal``), ``vertex_constraints`` ``(V, 3)`` long and
    ``vertex_patterns`` ``(V, N)`` bool.

    Parameters
    ----------
    net : PLGraph or PLNetwork
        The network that was tracked (for its constraint layout).
    tr : dict
        The output of :func:`track_polygons` (:func:`nsr.extraction.tracking.track_surface`):
        ``key``, ``edges``, ``length``, ``support``, ``vertices``, ``normal``.

    Returns
    -------
    dict of str to Tensor
        ``vertices``, ``cycles``, ``vertex_constraints``, ``vertex_patterns``.

    Examples
    --------
    The octahedron's 8 walked triangles share 6 vertices:

    >>> import numpy as np
    >>> from nsr.networks import octahedron_network
    >>> tr, why = track_polygons(octahedron_network(), np.array([[-1.0, 1.0]] * 3), seeds=8)
    >>> welded = weld_tracks(octahedron_network(), tr)
    >>> tuple(welded["vertices"].shape), tuple(welded["cycles"].shape)
    ((6, 3), (8, 3))
    """
    from nsr.extraction.encoder_tracking import _corner_identities

    n = net.n_neurons
    layout = ConstraintLayout.of(net)
    key, e, m, support = tr["key"], tr["edges"], tr["length"], tr["support"]
    dev = key.device
    words = key.shape[1] - 1
    lmax = e.shape[1]
    ar = torch.arange(lmax, device=dev)
    if "cells" in tr:  # a graph with an encoder: a corner is named by every constraint through it
        f, i, rows, trip, pk = _corner_identities(tr)
    else:
        before = torch.gather(e, 1, (ar[None] - 1) % m.clamp(min=1)[:, None])
        f, i = torch.nonzero(ar[None] < m[:, None], as_tuple=True)
        trip = torch.sort(torch.stack([support[f], before[f, i], e[f, i]], 1), 1).values
        pk = key[f, :words].clone()
        for col in range(3):
            c = trip[:, col]
            rows = torch.nonzero(layout.kind(c) == NEURON).squeeze(1)
            wd, mk = bit_values(layout.neuron_index(c[rows]))
            pk[rows, wd] &= ~mk
        rows = torch.cat([pk, trip], 1)
    order, vid = group_equal_rows(rows)
    n_v = int(vid.max()) + 1
    entry_vertex = torch.empty_like(vid)
    entry_vertex[order] = vid
    rep = torch.zeros(n_v, dtype=torch.int64, device=dev)
    rep[vid] = order
    x = tr["vertices"][f, i][rep].double()
    cycles = torch.full((len(key), lmax), -1, dtype=torch.int64, device=dev)
    cycles[f, i] = entry_vertex
    cycles = _orient(cycles, x, tr["normal"].double())
    return {"vertices": x, "cycles": cycles, "vertex_constraints": trip[rep],
            "vertex_patterns": unpack_bits(pk[rep], torch.arange(n, device=dev))}


def _empty(bounds: np.ndarray, level: float, d: int, n: int) -> ExactMesh:
    return ExactMesh(
        vertices=np.zeros((0, d)),
        bounds=bounds,
        level=level,
        vertex_constraints=np.zeros((0, d), dtype=np.int64),
        vertex_patterns=np.zeros((0, n), dtype=bool),
        polygon_patterns=np.zeros((0, n), dtype=bool),
    )


def tile_grid(bounds: np.ndarray, grid: int, dtype: torch.dtype, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """The ``grid^D`` tiles of the box: ``(lo, hi, index)``, each ``(K, D)``. Tile planes are
    computed once per grid line, so neighbouring tiles share them bitwise.

    Parameters
    ----------
    bounds : (D, 2) float ndarray
        The box.
    grid : int
        Tiles per axis.
    dtype : torch.dtype
        Dtype of the corners.
    device : torch.device
        Device of the corners.

    Returns
    -------
    lo, hi : (grid^D, D) Tensor
        Corners of each tile; the last tick of every axis is the box's ``hi`` exactly.
    index : (grid^D, D) int64 Tensor
        Grid index of each tile (last axis fastest).

    Examples
    --------
    >>> import numpy as np, torch
    >>> lo, hi, index = tile_grid(np.array([[-1.0, 1.0], [0.0, 1.0]]), 2, torch.float64, torch.device("cpu"))
    >>> lo.tolist()
    [[-1.0, 0.0], [-1.0, 0.5], [0.0, 0.0], [0.0, 0.5]]
    >>> hi.tolist()
    [[0.0, 0.5], [0.0, 1.0], [1.0, 0.5], [1.0, 1.0]]
    >>> index.tolist()
    [[0, 0], [0, 1], [1, 0], [1, 1]]
    """
    d = bounds.shape[0]
    lo_b = torch.as_tensor(bounds[:, 0], dtype=dtype, device=device)
    hi_b = torch.as_tensor(bounds[:, 1], dtype=dtype, device=device)
    ticks = [lo_b[a] + (hi_b[a] - lo_b[a]) * torch.arange(grid + 1, device=device, dtype=dtype) / grid
             for a in range(d)]
    for a in range(d):
        ticks[a][-1] = hi_b[a]
    idx = torch.cartesian_prod(*[torch.arange(grid, device=device)] * d).reshape(-1, d)
    tlo = torch.stack([ticks[a][idx[:, a]] for a in range(d)], 1)
    thi = torch.stack([ticks[a][idx[:, a] + 1] for a in range(d)], 1)
    return tlo, thi, idx


def default_tiles(net: PLGraph | PLNetwork) -> int:
    """Tiles per axis for surface mode. Tiles are the unit of independent work; every tile
    also adds the vertices its faces cut from the complex, so a few suffice: the pruning of
    regions, not of tiles, does most of the work. Plain networks get 2 per axis: small ones
    are dominated by per-tile overhead (a 32x3 network: 0.31 s with 2^3 tiles, 0.53 s with
    8^3), and since region pruning got cheaper (issue 16) large ones are too: one process,
    CPU time, 2^3 / 4^3 / 8^3 tiles, a trained 4x64 bunny 21.7-19.2 / 25.8-23.5 / 26.8-25.3 s,
    the shared 8x32 bunny 51.3 / 51.8 / 54.0 s, the same polygons. A simplex-grid encoder gets
    about one tile per 6 cells of its finest level (2 to 32 per axis).

    Parameters
    ----------
    net : PLGraph or PLNetwork
        The network.

    Returns
    -------
    int
        For a simplex-grid encoder, its finest resolution over 6 (2 to 32); otherwise 2.

    Examples
    --------
    >>> from nsr.networks import random_network
    >>> default_tiles(random_network(3, [8, 8])), default_tiles(random_network(3, [64, 64, 64]))
    (2, 2)
    """
    net = as_graph(net)
    resolutions = getattr(getattr(net.encoder, "encoding", None), "resolutions", None)
    if resolutions:
        # A simplex grid: every tile is cut by all the planes crossing it before cells are pruned, so a tile's
        # cost grows with the cube of its side; tiles of about 6 cells of the finest level were the fastest on
        # a trained bunny grid (6 levels 8..96, a surface sub-box: 16.1 s with tiles of 1/16 of the box, 18.4 s
        # with 1/32, 22.7 s with 1/64, 20.4 s with 1/8).
        return int(min(32, max(2, max(resolutions) // 6)))
    return 2


def default_band(net: PLGraph | PLNetwork) -> int:
    """Cells per axis of the grid on which surface mode bounds the output (a power of two).

    Parameters
    ----------
    net : PLGraph or PLNetwork
        The network (not read: the default is the same for every network).

    Returns
    -------
    int
        0 (off): region pruning by linear bounds does the band's work.

    Examples
    --------
    >>> from nsr.networks import random_network
    >>> default_band(random_network(3, [8]))
    0
    """
    return 0


def extract_mesh(
    net: Any,
    bounds: Any,
    *,
    mode: str = "surface",
    close: bool = False,
    level: float = 0.0,
    tiles: int | None = None,
    band: int | None = None,
    dtype: torch.dtype | str | None = None,
    device: torch.device | str | None = None,
    progress: bool = True,
    memory_limit: float | None = None,
    workers: int = 1,
    seeds: Any = None,
) -> ExactMesh:
    """The exact level set ``f = level`` of a piecewise-affine network over a box.

    Parameters
    ----------
    net : a :class:`~nsr.pl.PLGraph`, a :class:`~nsr.networks.PLNetwork`, an ``nn.Module``
        (traced by :func:`nsr.pl.trace`: skip and residual blocks, LeakyReLU/PReLU/abs/clamp,
        folded normalizations, latent codes) or anything :func:`nsr.pl.as_graph` reads; input
        dimension 2 or 3.
    level : a level of the module's output. A monotone output transform ``T`` (tanh,
        sigmoid, positive scalings) is undone: the mesh is the level set of the
        piecewise-affine ``g`` at ``graph.level(level)`` (``mesh.level``), the same set.
    bounds : ``(lo, hi)`` for every axis or a ``(D, 2)`` array.
    mode : ``"surface"`` (tiles, pruning; default), ``"complex"`` (the whole complex),
        ``"track"`` (grow the surface polygon by polygon from seed points, D = 3: work
        proportional to the surface, but a component of the level set that holds no seed is
        missed; see :mod:`nsr.extraction.tracking`) or ``"auto"`` (:func:`default_mode`: track
        for 3-D networks with an input encoder, surface otherwise; what the apps use).
    close : cap the surface with the box faces where the network is below ``level`` (D = 3).
    tiles : tiles per axis in surface mode (default: :func:`default_tiles`).
    band : cells per axis of the grid on which surface mode bounds the output by linear
        bound propagation (default: :func:`default_band`); regions whose bounding box misses
        every cell that may hold the surface are dropped before each layer.
    dtype, device, progress, memory_limit : as for :func:`nsr.extract_complex`.
    workers : surface mode: subdivide the tiles in this many processes (one torch thread
        each; CPU only); tiles are independent and are stitched by identity afterwards. The
        processes are spawned, so a calling script needs the ``if __name__ == "__main__":``
        guard, and ``stats["peak_memory_mb"]`` counts the calling process only.
    seeds : track mode: an int ``R`` (default 64), seeding wherever the network changes
        sign along the edges of an ``R``-per-axis grid, or ``(M, D)`` points near the level set
        (e.g. the polygon centroids of an earlier mesh). Without any seed whose region crosses
        the level set, track mode falls back to surface mode.

    A network with no crossing in the box gives an empty mesh and a warning.

    Returns
    -------
    ExactMesh
        Polygons and triangles (D = 3) or polylines (D = 2), with ``stats`` (counts, timings,
        ``max_abs_f`` measured at the vertices, ``unpaired_face_keys`` 0 on healthy extractions).

    Raises
    ------
    ValueError
        For another input dimension, bad arguments (:class:`nsr.limits.ArgumentError`), or a
        box the dtype cannot answer on.

    Examples
    --------
    The octahedron network ``|x| + |y| + |z| - 0.5``, closed by the box ``[-0.3, 0.3]^3`` that
    cuts off its six tips (each a pyramid of volume ``0.08 * 0.2 / 3``):

    >>> from nsr.networks import octahedron_network
    >>> mesh = extract_mesh(octahedron_network(), (-0.3, 0.3), close=True, progress=False)
    >>> len(mesh.polygons), int(mesh.polygon_is_cap.sum()), mesh.stats["max_abs_f"]
    (32, 24, 0.0)
    >>> volume = mesh.to_trimesh().volume
    >>> round(float(volume), 12) == round(4 / 3 * 0.5**3 - 6 * 0.08 * 0.2 / 3, 12)
    True

    A 2-D network ``|x| + |y| - 0.5`` gives a closed polyline, the diamond:

    >>> import torch
    >>> from nsr.networks import PLNetwork
    >>> eye = torch.eye(2, dtype=torch.float64)
    >>> net = PLNetwork([torch.cat([eye, -eye]), torch.tensor([[2.0, 2.0, 1.0, 1.0]], dtype=torch.float64)],
    ...                 [torch.tensor([0.0, 0.0, 10.0, 10.0], dtype=torch.float64),
    ...                  torch.tensor([-20.5], dtype=torch.float64)])
    >>> diamond = extract_mesh(net, (-1, 1), progress=False)
    >>> len(diamond.vertices), [len(p) for p in diamond.polylines], diamond.stats["max_abs_f"]
    (4, [5], 0.0)
    """
    net = as_graph(net)
    d = net.in_dim
    if d not in (2, 3):
        raise ValueError(
            f"extract_mesh needs a 2-D or 3-D network (polylines or a triangle mesh), got {d}-D; "
            "use nsr.extract_complex(net, bounds).level_set() for the level-set complex in any dimension"
        )
    requested = mode
    if mode == "auto":
        mode = default_mode(net)
    dt = resolve_dtype(dtype)
    args = limits.check_extract_arguments(
        dim=d, n_neurons=net.n_neurons, max_width=max(net.widths, default=1), itemsize=dt.itemsize, mode=mode,
        level=level, tiles=tiles, band=band, workers=workers, seeds=seeds, memory_limit=memory_limit, close=close,
        progress=progress)
    module_level, memory_limit = args["level"], args["memory_limit"]
    level = net.level(module_level)  # the level of g with the same level set (identity: the same number)
    if mode == "track" and d != 3:
        raise ValueError(f"mode='track' needs a 3-D network, got {d}-D; use mode='surface'")
    if seeds is not None and mode != "track":
        raise ValueError("seeds are for mode='track'")
    if close and d != 3:
        raise ValueError("close=True needs a 3-D network")
    b = as_bounds(bounds, d)
    check_box(net, b, dt, level)
    dev = limits.check_device(device) if device is not None else net.device
    netd = net.to(device=dev, dtype=dt)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    t0 = time.perf_counter()
    with torch.no_grad(), no_tf32():
        mesh = None
        if mode == "track":
            mesh, why = _track_mesh(netd, b, level, close, seeds, progress)
            if mesh is None:
                warnings.warn(f"track mode {why}; falling back to mode='surface'", stacklevel=2)
                mode = "surface"
        if mesh is None:
            mesh = _subdivided_mesh(netd, b, mode, level, close, tiles, band, progress, memory_limit, workers)
    mesh.stats.update(mode=mode, dtype=str(dt), device=str(dev), time_s=time.perf_counter() - t0,
                      peak_memory_mb=peak_memory_mb(dev))
    if requested != mode:
        mesh.stats["mode_requested"] = requested
    if not netd.transform.is_identity:
        mesh.stats.update(module_level=module_level, output_transform=netd.transform.describe())
    _measure(mesh, netd)
    if mesh.is_empty:
        warnings.warn(limits.empty_level_set_message(netd, b, level), stacklevel=2)
    return mesh


def default_mode(net: Any) -> str:
    """The extraction mode ``mode="auto"`` picks: ``"track"`` for a 3-D network with an input
    encoder (a simplex grid), ``"surface"`` otherwise.

    Surface mode is complete, but on an encoder network it first cuts the box by every plane
    of the grid: on the ``grid_cpu`` networks (finest resolution 96) that took over an hour on
    a 2-core CPU, where track mode takes about a minute (``experiments/RESULTS.md``). Track mode
    misses only components that no seed reaches; pass ``mode="surface"`` for the complete answer.

    Parameters
    ----------
    net : anything :func:`nsr.pl.as_graph` reads

    Returns
    -------
    str

    Examples
    --------
    >>> from nsr.extraction.surface import default_mode
    >>> from nsr.networks import octahedron_network
    >>> from nsr.pl.encoding import GridMLP
    >>> grid = GridMLP(in_dim=3, width=4, depth=1, n_levels=1, min_resolution=2, max_resolution=2)
    >>> default_mode(octahedron_network()), default_mode(grid)
    ('surface', 'track')
    """
    graph = as_graph(net)
    return "track" if graph.encoder is not None and graph.in_dim == 3 else "surface"


def _subdivided_mesh(netd: PLGraph, b: np.ndarray, mode: str, level: float, close: bool, tiles: int | None,
                     band: int | None, progress: bool, memory_limit: float | None, workers: int) -> ExactMesh:
    """Complex and surface modes of :func:`extract_mesh` (edge subdivision), with their stats."""
    t0 = time.perf_counter()
    d, dt, dev = netd.in_dim, netd.dtype, netd.device
    if mode == "complex":
        cx = extract_complex(netd, b, dtype=dt, device=dev, progress=progress,
                             memory_limit=memory_limit).refine(level)
        arr = _complex_arrays(cx)
        n_tiles, kept, unpaired = 1, 1, cx.stats["unpaired_face_keys"]
        n_facets = cx.layout.n_facets
    else:
        grid = tiles if tiles is not None else default_tiles(netd)
        if grid < 1:
            raise ValueError(f"tiles must be >= 1, got {grid}")
        res = band if band is not None else default_band(netd)
        if res < 0 or res & (res - 1):
            raise ValueError(f"band must be 0 (off) or a power of two, got {res}")
        t_band = time.perf_counter()
        tlo, thi, tidx = tile_grid(b, grid, dt, dev)
        bt = torch.as_tensor(b, dtype=dt, device=dev)
        # one tolerance per neuron for the whole box, whichever tiles or workers see it
        tols = sign_tolerances(netd, bt[:, 0], bt[:, 1], level)
        facets = encoder_facets(netd, bt[:, 0], bt[:, 1])
        n_facets = len(facets[1])
        tol_out = float(tols[-1][0])
        cells = None
        if res:
            cells = Band(band_cells(netd, bt, res, level, close), bt[:, 0], bt[:, 1])
            sel = cells.hits(tlo, thi)
        else:
            olo, ohi = output_bounds(netd, tlo, thi)
            sel = may_reach(olo, ohi, level, tol_out)
            if close:
                sel |= ((tidx == 0) | (tidx == grid - 1)).any(1) & (ohi < level + tol_out)
        t_band = time.perf_counter() - t_band
        tlo, thi, tidx = tlo[sel], thi[sel], tidx[sel]
        on_boundary = ((tidx == 0) | (tidx == grid - 1)).any(1)
        n_tiles = grid**d
        keep_neg = on_boundary if close else None
        region_stats: dict[str, Any] = {}
        if workers > 1 and len(tlo) > 1:
            arr, kept, unpaired = _subdivide_in_workers(netd, tlo, thi, tidx, grid, level, keep_neg,
                                                        workers, memory_limit, tols, facets)
            warn_unpaired(unpaired, dt)  # the workers' own warnings stay in their processes
        elif n_facets and len(batches := tile_batches(tlo, thi, facets)) > 1:
            arr, kept, unpaired, region_stats = _subdivide_in_batches(netd, tlo, thi, tidx, grid, level, keep_neg,
                                                                      cells, batches, progress, memory_limit,
                                                                      tols, facets)
            warn_unpaired(unpaired, dt)
        else:
            sk, alive = subdivide(netd, tlo, thi, level=level, prune=True, keep_negative=keep_neg,
                                  band=cells, progress=progress, desc="surface", memory_limit=memory_limit,
                                  tolerances=tols, facets=facets)
            arr = _Arrays(sk.x.t, sk.vzeros.t, sk.vpos.t, sk.vtile.t, sk.edges.t, sk.ezeros.t, tidx, grid)
            kept, unpaired = sk.stats["tiles_alive"], sk.unpaired
            region_stats = _subdivision_stats(sk.stats)
    t_sub = time.perf_counter() - t0
    arr.n_facets = n_facets
    mesh = _mesh_from_arrays(netd, arr, b, level, close)
    if mode == "surface":
        mesh.stats.update(band=res, band_cells=cells.n_occupied if cells else None, bounds_s=t_band,
                          workers=workers, **region_stats)
    mesh.stats.update(tiles=n_tiles, tiles_kept=kept, unpaired_face_keys=unpaired, subdivision_s=t_sub)
    return mesh


def _track_mesh(net: PLGraph, b: np.ndarray, level: float, close: bool, seeds: Any, progress: bool
                ) -> tuple[ExactMesh | None, str]:
    """Track mode of :func:`extract_mesh`; ``(None, why)`` where it cannot answer (see
    :func:`track_polygons`)."""
    t0 = time.perf_counter()
    tr, why = track_polygons(net, b, level, close, seeds, progress)
    if tr is None:
        return None, why
    mesh = _mesh_from_tracks(net, tr, b, level)
    mesh.stats.update(tracking_s=time.perf_counter() - t0, **tr["stats"])
    return mesh, ""


def track_polygons(net: PLGraph | PLNetwork, b: np.ndarray, level: float = 0.0, close: bool = False,
                   seeds: Any = None, progress: bool = False) -> tuple[dict[str, Any] | None, str]:
    """The polygons of :func:`nsr.extraction.tracking.track_surface` grown from ``seeds`` (a grid
    resolution, default 64, or ``(M, 3)`` points; those outside the box ``b`` are dropped),
    or ``(None, why)`` where track mode cannot answer: no seed region crosses the level set,
    a vertex is degenerate (a fourth plane through it), or a walk did not close.

    Parameters
    ----------
    net : PLGraph or PLNetwork
        A 3-D network, in the dtype and on the device to track in.
    b : (3, 2) float ndarray
        The box.
    level : float
        The level of ``g``.
    close : bool
        Also walk the box faces where the output is below the level.
    seeds : int or (M, 3) array_like, optional
        A seed-grid resolution (default 64) or points near the level set.
    progress : bool
        A progress bar.

    Returns
    -------
    tracks : dict or None
        The walked polygons (``key``, ``edges``, ``length``, ``support``, ``vertices``,
        ``normal``, ``patterns``, ``stats``), for :func:`weld_tracks`.
    why : str
        Empty, or why track mode cannot answer.

    Raises
    ------
    ValueError
        For seed points that are not ``(M, 3)``.

    Examples
    --------
    One seed point in the positive octant grows the whole octahedron, a triangle per octant;
    a seed outside the box is dropped:

    >>> import numpy as np
    >>> from nsr.networks import octahedron_network
    >>> box = np.array([[-1.0, 1.0]] * 3)
    >>> tracks, why = track_polygons(octahedron_network(), box, seeds=[[0.9, 0.9, 0.9]])
    >>> why, tracks["stats"]["regions_walked"], tracks["stats"]["failed_walks"]
    ('', 8, 0)
    >>> track_polygons(octahedron_network(), box, seeds=[[2.0, 2.0, 2.0]])
    (None, 'found no seed on the level set')
    """
    from nsr.extraction.tracking import grid_seeds, track_surface

    net = _tracking_network(net)
    bt = torch.as_tensor(b, dtype=net.dtype, device=net.device)
    if seeds is None or isinstance(seeds, (int, np.integer)):
        res = 64 if seeds is None else limits.check_seed_grid(seeds, net.in_dim, net.dtype.itemsize)
        pts = grid_seeds(net, bt, res, level)
    else:
        pts = torch.as_tensor(np.asarray(seeds), dtype=net.dtype, device=net.device)
        if pts.ndim != 2 or pts.shape[1] != 3:
            raise ValueError(f"seed points must be (M, 3), got shape {tuple(pts.shape)}")
        inside = ((pts >= bt[:, 0]) & (pts <= bt[:, 1])).all(1)
        pts = pts[inside]
    tr = track_surface(net, bt, pts, level=level, close=close, progress=progress)
    if tr["stats"]["seed_regions"] == 0:
        return None, "found no seed on the level set"
    if tr["stats"]["degenerate_polygons"]:
        near = "a fourth plane through it" if net.dtype == torch.float64 else \
            f"a fourth plane within {str(net.dtype).removeprefix('torch.')} rounding of it; float64 avoids most"
        return None, f"met a degenerate vertex ({near})"
    if tr["stats"]["failed_walks"]:
        return None, f"could not close {tr['stats']['failed_walks']} polygons"
    return tr, ""


def _tracking_network(net: PLGraph | PLNetwork) -> PLGraph | PLNetwork:
    """What :mod:`nsr.extraction.tracking` is handed: a plain ReLU MLP as the :class:`PLNetwork` of ``g``
    (as it has always been), any other graph (skip/residual blocks, other slopes, an encoder) as
    the graph itself."""
    if isinstance(net, PLGraph) and net.is_mlp and net.is_relu and net.encoder is None:
        return net.to_plnetwork(pre_transform=True)
    return net


def _subdivision_stats(stats: dict[str, Any]) -> dict[str, Any]:
    """The stats of :func:`subdivide` that surface mode reports (region pruning, the encoder split)."""
    return {k: v for k, v in stats.items() if k.startswith(("regions_", "encoder_")) or k == "uncertain_signs"}


def _subdivide_in_batches(net: PLGraph, tlo: Tensor, thi: Tensor, tidx: Tensor, grid: int, level: float,
                          keep_negative: Tensor | None, cells: Band | None, batches: list[Tensor], progress: bool,
                          memory_limit: float | None, tolerances: list[Tensor], facets: tuple[Tensor, Tensor, Tensor]
                          ) -> tuple[_Arrays, int, int, dict[str, Any]]:
    """Subdivide the tiles batch by batch (:func:`nsr.extraction.encoder_split.tile_batches`), so that one
    batch's encoder split, not the whole box's, is held before pruning; concatenate the skeletons (vertex
    indices offset; tiles keep their numbers). Tiles are independent and stitched by identity, so the
    polygons are the same."""
    cols: list[list[Tensor]] = [[] for _ in range(6)]
    v_off, kept, unpaired = 0, 0, 0
    stats: dict[str, Any] = {}
    bar = _progress(len(batches), "surface (batches of tiles)", progress)
    try:
        for idx in batches:
            active = torch.zeros(len(tlo), dtype=torch.bool, device=tlo.device)
            active[idx] = True
            sk, _ = subdivide(net, tlo, thi, level=level, prune=True, keep_negative=keep_negative, band=cells,
                              progress=False, desc="surface", memory_limit=memory_limit, tolerances=tolerances,
                              facets=facets, active=active)
            for i, t in enumerate((sk.x.t, sk.vzeros.t, sk.vpos.t, sk.vtile.t, sk.edges.t + v_off, sk.ezeros.t)):
                cols[i].append(t)
            v_off += sk.n_vertices
            kept += sk.stats["tiles_alive"]
            unpaired += sk.unpaired
            for k, v in _subdivision_stats(sk.stats).items():
                stats[k] = stats.get(k, 0) + (int(v) if isinstance(v, Tensor) else v)
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    stats["encoder_batches"] = len(batches)
    return _Arrays(*[torch.cat(c) for c in cols], tidx, grid), kept, unpaired, stats


def _subdivide_tiles(state: dict[str, np.ndarray], encoder: Any, tlo: np.ndarray, thi: np.ndarray,
                     level: float, keep_negative: np.ndarray | None, memory_limit: float | None,
                     tolerances: list[np.ndarray], facets: list[np.ndarray]) -> tuple[list[np.ndarray], int, int]:
    """Worker: subdivide a batch of tiles; the graph's state (:meth:`PLGraph.layer_state`) and
    plain arrays in and out (picklable)."""
    torch.set_num_threads(1)
    net = PLGraph.from_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, encoder)
    with torch.no_grad(), no_tf32():
        sk, _ = subdivide(net, torch.from_numpy(tlo), torch.from_numpy(thi), level=level, prune=True,
                          keep_negative=None if keep_negative is None else torch.from_numpy(keep_negative),
                          progress=False, memory_limit=memory_limit,
                          tolerances=[torch.from_numpy(t) for t in tolerances],
                          facets=tuple(torch.from_numpy(f) for f in facets))  # type: ignore[arg-type]
    arrays = [b.t.numpy() for b in (sk.x, sk.vzeros, sk.vpos, sk.vtile, sk.edges, sk.ezeros)]
    return arrays, sk.stats["tiles_alive"], sk.unpaired


def _subdivide_in_workers(net: PLGraph, tlo: Tensor, thi: Tensor, tidx: Tensor, grid: int, level: float,
                          keep_negative: Tensor | None, workers: int, memory_limit: float | None,
                          tolerances: list[Tensor], facets: tuple[Tensor, Tensor, Tensor]
                          ) -> tuple[_Arrays, int, int]:
    """Split the tiles into ``workers`` batches, subdivide them in separate processes, and
    concatenate the skeletons (vertex and tile indices offset)."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    if net.device.type != "cpu":
        raise ValueError("workers > 1 runs on the CPU; use one process per GPU instead")
    parts = np.array_split(np.arange(len(tlo)), min(workers, len(tlo)))
    state = {k: v.numpy() for k, v in net.layer_state().items()}
    limit = None if memory_limit is None else memory_limit / len(parts)
    with ProcessPoolExecutor(len(parts), mp_context=mp.get_context("spawn")) as pool:
        futures = [pool.submit(_subdivide_tiles, state, net.encoder, tlo[p].numpy(), thi[p].numpy(), level,
                               None if keep_negative is None else keep_negative[p].numpy(), limit,
                               [t.numpy() for t in tolerances], [f.numpy() for f in facets]) for p in parts]
        results = [f.result() for f in futures]
    cols: list[list[Tensor]] = [[] for _ in range(6)]
    v_off, t_off = 0, 0
    for (arrays, _, _), p in zip(results, parts):
        x, vz, vp, vt, e, ez = (torch.from_numpy(a) for a in arrays)
        for i, t in enumerate((x, vz, vp, vt + t_off, e + v_off, ez)):
            cols[i].append(t)
        v_off += len(x)
        t_off += len(p)
    merged = [torch.cat(c) for c in cols]
    order = torch.from_numpy(np.concatenate(parts))
    return (_Arrays(*merged, tidx[order], grid), sum(r[1] for r in results), sum(r[2] for r in results))


def _complex_arrays(cx: PolyhedralComplex) -> _Arrays:
    dev = cx.vertices.device
    return _Arrays(cx.vertices, cx.vertex_zeros, cx.vertex_signs,
                   torch.zeros(len(cx.vertices), dtype=torch.int64, device=dev),
                   cx.edges, cx.edge_zeros, torch.zeros(1, cx.dim, dtype=torch.int64, device=dev), 1,
                   cx.layout.n_facets)


def mesh_from_complex(cx: PolyhedralComplex, level: float = 0.0, *, close: bool = False) -> ExactMesh:
    """The exact level-set mesh of an already extracted complex (no second extraction); ``level``
    is a level of the module's output, mapped through the network's output transform as in
    :func:`extract_mesh`.

    Parameters
    ----------
    cx : PolyhedralComplex
        A 2-D or 3-D complex (:func:`nsr.extraction.complex.extract_complex`).
    level : float
        A level of the module's output.
    close : bool
        3-D: cap the surface with the box faces where the network is below the level.

    Returns
    -------
    ExactMesh
        The same polygons as :func:`extract_mesh` in complex mode.

    Raises
    ------
    ValueError
        For a complex of another dimension, or ``close`` in 2-D.

    Examples
    --------
    >>> from nsr.extraction.complex import extract_complex
    >>> from nsr.networks import octahedron_network
    >>> cplx = extract_complex(octahedron_network(), (-1, 1), progress=False)
    >>> mesh = mesh_from_complex(cplx)
    >>> len(mesh.vertices), len(mesh.polygons), mesh.stats["max_abs_f"]
    (6, 8, 0.0)
    """
    if cx.dim not in (2, 3):
        raise ValueError(f"a mesh needs a 2-D or 3-D complex, got {cx.dim}-D; use cx.level_set()")
    if close and cx.dim != 3:
        raise ValueError("close=True needs a 3-D network")
    t0 = time.perf_counter()
    level = cx.net.level(level)  # a module level; the complex is g's (see extract_mesh)
    with torch.no_grad(), no_tf32():
        ref = cx.refine(level)
        net = cx.net.to(device=cx.vertices.device, dtype=cx.vertices.dtype)
        mesh = _mesh_from_arrays(net, _complex_arrays(ref), cx.bounds, level, close)
    mesh.stats.update(mode="complex", dtype=str(cx.vertices.dtype), device=str(cx.vertices.device), tiles=1,
                      tiles_kept=1, unpaired_face_keys=ref.stats.get("unpaired_face_keys", 0),
                      time_s=time.perf_counter() - t0)
    _measure(mesh, net)
    return mesh


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
    with torch.no_grad():
        f = (n64(torch.as_tensor(mesh.vertices)) - mesh.level).abs()
    if mesh.dim == 3 and mesh.polygon_is_cap.any():
        # cap-only vertices are not on the level set; measure those of surface polygons
        surf = np.unique(np.concatenate([p for p, c in zip(mesh.polygons, mesh.polygon_is_cap) if not c]
                                        or [np.zeros(0, np.int64)]))
        f = f[torch.as_tensor(surf)]
    s["max_abs_f"] = float(f.max()) if len(f) else 0.0
    s["mean_abs_f"] = float(f.mean()) if len(f) else 0.0
    if mesh.dim == 3 and len(mesh.triangles):
        s["watertight"] = edges_paired(mesh.triangles, len(mesh.vertices))
