"""Polygons of the level set from what an extraction mode leaves: cycles ordered and oriented,
vertices welded by their combinatorial identity (never by a distance tolerance), tile planes removed.

Surface mode's tiles (:func:`_mesh_from_arrays`), complex mode's complex (:func:`mesh_from_complex`)
and track mode's walks (:func:`weld_tracks`, :func:`_mesh_from_tracks`) all end here, which is why
the three modes give the same polygons.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from nsr.extraction.bits import bit_values, group_equal_rows, hash_rows, n_words, unpack_bits
from nsr.extraction.complex import PolyhedralComplex
from nsr.extraction.guards import no_tf32
from nsr.extraction.mesh import ExactMesh, PackedPatterns, _measure
from nsr.extraction.skeleton import wall_sides
from nsr.extraction.tolerances import facet_tolerances
from nsr.geometry import fan_triangles
from nsr.networks import PLNetwork
from nsr.pl.graph import PLGraph
from nsr.pl.layout import NEURON, ConstraintLayout


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
    walls: int = 0  # ids below it bound their tile (0: the box facets), on the side in tile_bits
    tile_bits: Tensor | None = None  # (K, W) simplex tiles' sides (nsr.extraction.kuhn)
    word0: int = 0  # vpos holds words word0.. of the sign vectors (3-D simplex tiles: the first neuron's on)


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
                  arr.tile_index, arr.grid, arr.n_facets, arr.walls, arr.tile_bits, arr.word0)
    d = arr.x.shape[1]
    n = net.n_neurons
    layout = ConstraintLayout(d, net.widths, arr.n_facets)
    out = layout.output
    w = arr.vpos.shape[1] + arr.word0
    dev = arr.x.device
    # bits past the box facets: encoder planes, neurons and output (tile-facet bits differ
    # between tiles for one vertex; the others are global)
    ids = torch.arange(w * 64, device=dev)
    keep_bits = (ids >= layout.n_box) & (ids < out + 1)
    wd, mk = bit_values(ids[keep_bits])
    mask = torch.zeros(w, dtype=torch.int64, device=dev).index_put_((wd,), mk, accumulate=True)

    gz, internal = _global_zeros(arr.vzeros, arr.vtile, arr, d)
    gz = torch.sort(gz, 1).values
    e, ez = arr.edges, arr.ezeros
    if d == 3 and not close:  # only the level set's own edges bound polygons: name those alone
        on = torch.nonzero(ez[:, -1] == out).squeeze(1)
        e, ez = e[on], ez[on]
    ge, e_internal = _global_zeros(ez, arr.vtile[e[:, 0]], arr, d)

    if d == 2:
        if arr.word0:
            raise ValueError("polylines weld by every word of the sign vectors: word0 must be 0 in 2-D")
        return _polylines(net, arr, bounds, level, gz, internal, ge, e_internal, mask, layout)

    # A simplex tile holds its polygons whole, and its sides of the encoder's planes are its own: its
    # number and the neurons' words name a face as all the words do. Faces then carry the words from the
    # neurons' first on only (``base``; the bunny's grid: 2 of 15, a 256-grid's 2 of 27).
    simplex_tiles = arr.walls > 0 and arr.tile_bits is not None
    base = layout.neuron_offset // 64 if simplex_tiles else 0
    if arr.word0 > base:
        raise ValueError(f"the arrays hold sign words from {arr.word0} on; faces need them from {base} on")
    vpos = arr.vpos[:, base - arr.word0:]  # words base..
    epos = (vpos[e[:, 0]] | vpos[e[:, 1]]) & mask[base:]

    faces_support, faces_pos, inc_edge = [], [], []

    def add(edge_idx: Tensor, support: Tensor, other: Tensor, sides: tuple[int, ...], need_neg: bool) -> None:
        # a simplex tile's facet (an encoder plane) is a wall: the edge's polygon is on the tile's side only,
        # the other side's polygon has its own copy of the edge in its own tile
        wall, inside = wall_sides(other.clamp(min=0), arr.vtile[e[edge_idx, 0]], d, arr.walls, arr.tile_bits)
        wall &= other >= layout.n_box
        for side in sides:
            sel = edge_idx
            pk = epos[sel].clone()
            oth = other
            is_neuron = (oth >= layout.n_box) & (oth < out)  # a neuron or an encoder plane: two sides
            if side == 1:  # the positive side of a neuron; the inside of a box plane
                wi, mi = bit_values(oth.clamp(min=0))
                rows = torch.nonzero(is_neuron & (wi >= base)).squeeze(1)  # (a wall's bit is its tile's)
                pk[rows, wi[rows] - base] |= mi[rows]
                keep = is_neuron & (~wall | inside) | (oth < 0)
            else:  # the negative side of a neuron or of the level set
                keep = is_neuron & (~wall | ~inside) | (oth == out)
            if need_neg:
                wo, mo = bit_values(torch.tensor(out, device=dev))
                keep = keep & ((pk[:, wo - base] & mo) == 0)
            r = torch.nonzero(keep).squeeze(1)
            faces_support.append(support[r])
            faces_pos.append(pk[r])
            inc_edge.append(sel[r])

    # surface: edges on the level set whose other zero is not an internal tile plane
    on_ls = ez[:, -1] == out
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
    if simplex_tiles:
        order, fid = group_equal_rows(torch.cat([support[:, None], arr.vtile[e[inc, 0]][:, None], fpos], 1))
    else:
        order, fid = group_equal_rows(torch.cat([support[:, None], fpos], 1))
    n_faces = int(fid.max()) + 1
    face_of_inc = torch.empty_like(fid)
    face_of_inc[order] = fid
    rep = torch.zeros(n_faces, dtype=torch.int64, device=dev)
    rep[fid] = order
    f_support, f_pos = support[rep], fpos[rep]

    # weld vertices of the incident edges by (neuron/output signs, global zero ids)
    used = torch.unique(e[inc].reshape(-1))
    if simplex_tiles and net.encoder is not None and arr.n_facets:
        # one vertex per point in each simplex, and each polygon within one: the polygons need no weld
        # before the grid lines' (which names the points across simplices)
        vorder = vid = torch.arange(len(used), device=dev)
    else:
        vorder, vid = group_equal_rows(torch.cat([vpos[used] & mask[base:], gz[used]], 1))  # (base 0)
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
    netd = net.to(device=dev, dtype=torch.float64)
    if n and netd.encoder is None:  # (base 0)
        patterns = unpack_bits(f_pos, torch.arange(layout.neuron_offset, out, device=dev))
        normal = netd.local_gradients(list(torch.split(patterns, net.widths, dim=1)))
        del patterns  # the mesh keeps them packed
    else:  # the gradient inside each polygon's region, at the polygon's centroid
        normal = _gradients_at(netd, _centroids(cycles, wx))
    cap_c = _plane_to_constraint(f_support[is_cap], arr.grid)
    cap_n = torch.zeros(int(is_cap.sum()), d, dtype=torch.float64, device=dev)
    rows = torch.arange(len(cap_c), device=dev)
    cap_n[rows, torch.div(cap_c, 2, rounding_mode="floor")] = (cap_c % 2).double() * 2 - 1
    normal[is_cap] = cap_n
    cycles = _orient(cycles, wx, normal)

    # compact vertices to those used by polygons
    usedv = torch.unique(cycles[cycles >= 0])
    remap = torch.full((n_w,), -1, dtype=torch.int64, device=dev)
    remap[usedv] = torch.arange(len(usedv), device=dev)
    cycles = torch.where(cycles >= 0, remap[cycles.clamp(min=0)], cycles)
    verts = wx[usedv]
    vcons = _plane_to_constraint(gz[wrep[usedv]], arr.grid)
    n_pat = out - layout.neuron_offset
    first = layout.neuron_offset - 64 * base  # the first neuron's bit in the words kept
    vpat = _packed(vpos[wrep[usedv]], first, n_pat)
    return _polygon_mesh(verts, cycles, bounds, level, vcons, vpat, _packed(f_pos, first, n_pat), is_cap, n_invalid)


def _weld_on_grid_lines(net: PLGraph, arr: _Arrays, bounds: np.ndarray, wrep: Tensor, gz: Tensor, internal: Tensor,
                        mask: Tensor, layout: ConstraintLayout) -> tuple[Tensor, int]:
    """Weld vertices of an encoder network that are one point on several concurrent encoder planes.

    A vertex is named by its zero constraints other than encoder planes, every encoder plane
    through it (one per family of parallel planes, within that plane's sign tolerance, and those
    it was cut by), its signs on the neurons and the output, and its slab of every family it is
    on no plane of, as track mode names them: the vertices of one point differ only in the sides
    of the planes through it. (A plane farther than its tolerance from a vertex is on the side
    that the vertex's sign bit says, so the slab, one number, stands for the family's bits.)
    Returns the new id ``(n_w,)`` of each welded vertex ``wrep`` and their number."""
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
    # the sides of the planes through the point differ between its vertices; every other side is the point's:
    # its slab in the families it is on no plane of
    slab = torch.where(through >= 0, -1, above.T)
    later = torch.arange(layout.neuron_offset, layout.n_constraints, device=dev)
    wd, mk = bit_values(later)
    neurons = torch.zeros(mask.shape[0], dtype=torch.int64, device=dev).index_put_((wd,), mk, accumulate=True)
    words = torch.nonzero(neurons).squeeze(1)
    # box facets through the point (coordinates on them are copied exactly, never interpolated)
    on_box = torch.cat([x == bt[:, 0], x == bt[:, 1]], 1).long()
    drop = is_enc | (z < 0) & ~internal[wrep]  # encoder planes and box facets: named by the columns above
    other = torch.sort(torch.where(drop, torch.full_like(z, -(2**62)), z), 1).values
    key = torch.cat([arr.vpos[wrep][:, words - arr.word0] & neurons[words], other, through, slab, on_box], 1)
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


def _packed(words: Tensor, start: int, count: int) -> PackedPatterns:
    """Patterns packed in ``words`` ``(M, W)`` (bits ``start .. start + count - 1``) for an :class:`ExactMesh`."""
    return PackedPatterns(words.cpu().numpy(), start, count)


def _polygon_mesh(x: Tensor, cycles: Tensor, bounds: np.ndarray, level: float, vertex_constraints: Tensor,
                  vertex_patterns: PackedPatterns, polygon_patterns: PackedPatterns, is_cap: Tensor,
                  n_invalid: int) -> ExactMesh:
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
        vertex_patterns=vertex_patterns,
        polygon_patterns=polygon_patterns,
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
    weld = torch.full((len(arr.x),), -1, dtype=torch.int64, device=e.device)
    weld[used[vorder]] = vid
    n_w = int(vid.max()) + 1
    wrep = torch.zeros(n_w, dtype=torch.int64, device=e.device)
    wrep[vid] = used[vorder]
    split = internal[wrep].any(1).cpu().numpy()  # 2-D level sets are small: walked on the CPU
    ends = weld[e[sel]].cpu().numpy()
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
    x = arr.x[wrep].double().cpu().numpy()
    rows = wrep[torch.as_tensor(usedv, device=wrep.device)]
    return ExactMesh(
        vertices=x[usedv],
        bounds=bounds,
        level=level,
        polylines=[remap[np.asarray(p)] for p in lines],
        vertex_constraints=_plane_to_constraint(gz[rows], arr.grid).cpu().numpy(),
        vertex_patterns=_packed(arr.vpos[rows], layout.neuron_offset,
                                out - layout.neuron_offset),
    )


def _mesh_from_tracks(net: PLGraph | PLNetwork, tr: dict[str, Any], bounds: np.ndarray, level: float) -> ExactMesh:
    """Weld walked polygons (:func:`nsr.extraction.tracking.track_surface`) into an :class:`ExactMesh`."""
    if len(tr["key"]) == 0:
        return _empty(bounds, level, 3, net.n_neurons)
    w = weld_tracks(net, tr, unpack=False)
    layout = tr.get("layout") or ConstraintLayout.of(net)  # with an encoder: its planes are numbered too
    n, words = net.n_neurons, n_words(max(net.n_neurons, 1))
    return _polygon_mesh(w["vertices"], w["cycles"], bounds, level, w["vertex_constraints"],
                         _packed(w["vertex_pattern_words"], 0, n), _packed(tr["key"][:, :words], 0, n),
                         tr["support"] != layout.output, tr["stats"]["failed_walks"])


def weld_tracks(net: PLGraph | PLNetwork, tr: dict[str, Any], unpack: bool = True) -> dict[str, Tensor]:
    """Weld the polygons walked by :func:`nsr.extraction.tracking.track_surface` into shared vertices.

    Vertex ``i`` of a polygon lies on its support and on the constraints of edges ``i - 1``
    and ``i``; with the bits of those neurons cleared from the region's pattern (the regions
    around the vertex differ only there), the three ids and the pattern identify it exactly.
    Returns tensors: ``vertices`` ``(V, 3)`` float64, ``cycles`` ``(P, L)`` long (-1 padded,
    oriented along each polygon's ``normal``), ``vertex_constraints`` ``(V, 3)`` long,
    ``vertex_pattern_words`` ``(V, W)`` int64 (packed) and ``vertex_patterns`` ``(V, N)`` bool.

    Parameters
    ----------
    net : PLGraph or PLNetwork
        The network that was tracked (for its constraint layout).
    tr : dict
        The output of :func:`track_polygons` (:func:`nsr.extraction.tracking.track_surface`):
        ``key``, ``edges``, ``length``, ``support``, ``vertices``, ``normal``.
    unpack : bool
        Also return ``vertex_patterns`` unpacked (bool); without it, only the packed words.

    Returns
    -------
    dict of str to Tensor
        ``vertices``, ``cycles``, ``vertex_constraints``, ``vertex_pattern_words`` and, with
        ``unpack``, ``vertex_patterns``.

    Examples
    --------
    The octahedron's 8 walked triangles share 6 vertices:

    >>> import numpy as np
    >>> from nsr.extraction.surface import track_polygons
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
        # a corner's name: its region's pattern with the bits of its three constraints cleared, then
        # the three ids, written in place (a wide network's corner patterns are most of the memory)
        rows = torch.empty(len(f), words + 3, dtype=key.dtype, device=dev)
        pk = rows[:, :words]
        pk.copy_(key[f, :words])
        rows[:, words:] = trip
        for col in range(3):
            c = trip[:, col]
            at = torch.nonzero(layout.kind(c) == NEURON).squeeze(1)
            wd, mk = bit_values(layout.neuron_index(c[at]))
            pk[at, wd] &= ~mk
    order, vid = group_equal_rows(rows)
    n_v = int(vid.max()) + 1
    entry_vertex = torch.empty_like(vid)
    entry_vertex[order] = vid
    # Each polygon computed the corner from its own region's planes (equal to rounding); take
    # the copy of the polygon with the smallest key hash, so that the mesh does not depend on
    # the order in which the polygons were walked.
    h = hash_rows(key)[f]
    best = torch.full((n_v,), torch.iinfo(torch.int64).max, dtype=torch.int64, device=dev)
    best.scatter_reduce_(0, entry_vertex, h, "amin")
    pick = torch.nonzero(h == best[entry_vertex]).squeeze(1)
    rep = torch.zeros(n_v, dtype=torch.int64, device=dev)
    rep[entry_vertex[pick]] = pick
    x = tr["vertices"][f, i][rep].double()
    cycles = torch.full((len(key), lmax), -1, dtype=torch.int64, device=dev)
    cycles[f, i] = entry_vertex
    cycles = _orient(cycles, x, tr["normal"].double())
    out = {"vertices": x, "cycles": cycles, "vertex_constraints": trip[rep], "vertex_pattern_words": pk[rep]}
    if unpack:
        out["vertex_patterns"] = unpack_bits(out["vertex_pattern_words"], torch.arange(n, device=dev))
    return out


def _empty(bounds: np.ndarray, level: float, d: int, n: int) -> ExactMesh:
    return ExactMesh(
        vertices=np.zeros((0, d)),
        bounds=bounds,
        level=level,
        vertex_constraints=np.zeros((0, d), dtype=np.int64),
        vertex_patterns=np.zeros((0, n), dtype=bool),
        polygon_patterns=np.zeros((0, n), dtype=bool),
    )



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
