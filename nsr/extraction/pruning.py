"""Pruning tiles and regions that the level set cannot reach: exact ranges at vertices, then bounds."""

from __future__ import annotations

import math
import sys
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from nsr.extraction.bits import bit_values
from nsr.extraction.evaluate import _evaluate, _source_values
from nsr.extraction.memory import _chunks
from nsr.extraction.skeleton import _index_reduce, _keep, wall_sides
from nsr.extraction.tolerances import sign_tolerances
from nsr.networks import PLNetwork
from nsr.pl import bounds as _bounds
from nsr.pl.bounds import frontier, region_bounds
from nsr.pl.graph import ENCODED, INPUT, PLGraph, as_graph

if TYPE_CHECKING:
    from nsr.extraction.skeleton import _Skeleton


def output_bounds(net: PLGraph | PLNetwork, lo: Tensor, hi: Tensor,
                  known: list[tuple[Tensor, Tensor]] | None = None, crown_hidden: bool = True
                  ) -> tuple[Tensor, Tensor]:
    """Bounds ``(K,)`` of the output over boxes ``(K, D)``: :func:`nsr.pl.bounds.output_bounds`
    of the network's graph (kept here for callers that hold a :class:`PLNetwork`).

    Parameters
    ----------
    net : PLGraph or PLNetwork
        The network.
    lo, hi : (K, D) float Tensor
        Corners of ``K`` boxes.
    known : list of (lower, upper), optional
        Known bounds ``(K, n_l)`` on the pre-activations of the first layers.
    crown_hidden : bool
        Also use linear bounds on hidden layers (tighter, slower).

    Returns
    -------
    lower, upper : (K,) float Tensor
        Sound bounds on the output over each box.

    Examples
    --------
    The octahedron network ``|x| + |y| + |z| - 0.5`` is affine on ``[0.1, 0.2]^3``, where the
    bounds are its exact range ``[-0.2, 0.1]``; on ``[-1, 1]^3`` the upper bound 2.5 is its maximum:

    >>> import torch
    >>> from nsr.networks import octahedron_network
    >>> lo = torch.tensor([[0.1, 0.1, 0.1], [-1, -1, -1]], dtype=torch.float64)
    >>> hi = torch.tensor([[0.2, 0.2, 0.2], [1, 1, 1]], dtype=torch.float64)
    >>> [b.round(decimals=12).tolist() for b in output_bounds(octahedron_network(), lo, hi)]
    [[-0.2, -3.5], [0.1, 2.5]]
    """
    return _bounds.output_bounds(as_graph(net), lo, hi, known, crown_hidden)


class Band:
    """Cells of a ``res^D`` grid over a box that may contain the level set; the complement
    provably does not (linear bound propagation on each cell). Queried by boxes through a
    summed-area table.

    Parameters
    ----------
    occupied : (res,)*D bool Tensor
        The cells that may contain the level set (:func:`band_cells`).
    lo, hi : (D,) float Tensor
        Corners of the box the grid covers.

    Examples
    --------
    A 4x4 grid over the unit square with only its corner cell ``[0, 0.25]^2`` occupied:

    >>> import torch
    >>> occupied = torch.zeros(4, 4, dtype=torch.bool)
    >>> occupied[0, 0] = True
    >>> band = Band(occupied, torch.zeros(2), torch.ones(2))
    >>> band.n_occupied
    1
    >>> band.hits(torch.tensor([[0.9, 0.9], [0.3, 0.3]]), torch.tensor([[1.0, 1.0], [0.4, 0.4]])).tolist()
    [False, True]

    (the second box misses the cell but lies within one cell of it: the query is dilated).
    """

    def __init__(self, occupied: Tensor, lo: Tensor, hi: Tensor) -> None:
        self.res = occupied.shape[0]
        self.dim = occupied.dim()
        self.lo, self.cell = lo, (hi - lo) / self.res
        sat = occupied.to(torch.int32)
        for axis in range(self.dim):
            sat = torch.nn.functional.pad(sat.cumsum(axis).to(torch.int32), (0, 0) * (self.dim - 1 - axis) + (1, 0))
        self.sat = sat  # (res+1)^D, sat[i...] = number of occupied cells below index i
        self.n_occupied = int(occupied.sum())

    def hits(self, box_lo: Tensor, box_hi: Tensor) -> Tensor:
        """Whether each box ``(M, D)`` meets an occupied cell (dilated by one cell, so that
        rounding at cell borders cannot lose one).

        Parameters
        ----------
        box_lo, box_hi : (M, D) float Tensor
            Corners of the boxes.

        Returns
        -------
        (M,) bool Tensor
            True where an occupied cell lies within one cell of the box.
        """
        i0 = torch.floor((box_lo - self.lo) / self.cell).long() - 1
        i1 = torch.floor((box_hi - self.lo) / self.cell).long() + 2  # exclusive
        i0, i1 = i0.clamp(0, self.res), i1.clamp(0, self.res)
        total = torch.zeros(len(box_lo), dtype=torch.int64, device=box_lo.device)
        for corner in range(1 << self.dim):
            idx, sign = [], 1
            for axis in range(self.dim):
                if corner >> axis & 1:
                    idx.append(i1[:, axis])
                else:
                    idx.append(i0[:, axis])
                    sign = -sign
            total += sign * self.sat[tuple(idx)].long()
        return total > 0


_ZOBRIST_SEED = 0x5EED


def _zobrist_tables(n_words_: int, n_tiles: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """Random 64-bit values of every constraint bit ``(64 W,)`` and tile ``(K,)``, and the byte
    table ``(8 W, 256)``: the sum of the bit values set in each byte at each byte position."""
    gen = torch.Generator().manual_seed(_ZOBRIST_SEED)
    bits = torch.randint(-(2**63), 2**63 - 1, (64 * n_words_,), generator=gen, dtype=torch.int64)
    tiles = torch.randint(-(2**63), 2**63 - 1, (max(1, n_tiles),), generator=gen, dtype=torch.int64)
    has = ((torch.arange(256)[:, None] >> torch.arange(8)[None]) & 1).bool()  # (256, 8)
    per_byte = bits.view(-1, 1, 8)  # (8W, 1, 8): bit k of byte p is constraint 8p + k (little endian)
    table = torch.where(has[None], per_byte, 0).sum(-1)  # int64 sums wrap: addition mod 2^64
    return bits.to(device), tiles.to(device), table.to(device)


def _vertex_hashes(vpos: Tensor, vtile: Tensor, table: Tensor, tiles: Tensor) -> Tensor:
    """Zobrist hash ``(V,)`` of each vertex's tile and sign vector ``vpos`` ``(V, W)``: the sum of
    the random values of its tile and of its set bits, read a byte at a time."""
    m = vpos.shape[0]
    if vpos.device.type == "cpu" and sys.byteorder == "little":
        by = vpos.contiguous().view(torch.uint8).long()
    else:
        by = torch.stack([(vpos >> (8 * k)) & 255 for k in range(8)], 2).reshape(m, -1)
    offs = torch.arange(0, by.shape[1] * 256, 256, device=vpos.device)
    return table.view(-1)[by + offs].sum(1) + tiles[vtile.long()]


def _region_hashes(sk: _Skeleton) -> tuple[Tensor, Tensor]:
    """Hashes ``(2^D, V)`` int64 of the regions (D-cells) around every vertex, and whether each
    combination of signs on the vertex's zeros stays in the box ``(2^D, V)`` bool.

    A region's key is its tile and sign vector: the vertex's with some of its zeros made
    positive. Keys are grouped by a 64-bit Zobrist hash without comparing them: the sum of a
    random value per set bit (and per tile), so that the ``2^D`` keys around a vertex cost one
    addition each over the vertex's own hash. Two different keys collide with probability
    2^-64 (their hashes differ by a sum of random values with coefficients +-1: uniform);
    a collision (odds ~1e-5 for 10^7 keys) would merge two regions, which only widens the bounds
    computed on them, so pruning stays sound."""
    d = sk.dim
    v = sk.n_vertices
    dev = sk.x.data.device
    n_w = sk.vpos.data.shape[1]
    n_tiles = int(sk.vtile.t.max()) + 1 if v else 1
    bits, tiles, table = _zobrist_tables(n_w, n_tiles, dev)
    hashes = torch.empty(1 << d, v, dtype=torch.int64, device=dev)
    valid = torch.empty(1 << d, v, dtype=torch.bool, device=dev)
    for sl in _chunks(v, 8 * (8 * n_w + 4 * d), dev):
        vz = sk.vzeros.t[sl].long()
        vpos = sk.vpos.t[sl]
        h0 = _vertex_hashes(vpos, sk.vtile.t[sl], table, tiles)
        word, mask = bit_values(vz)
        # a zero's own bit is clear (split_by_constraint clears it on the new vertex), but add
        # its value only where it is, so that a key never counts a bit twice
        clear = (vpos.gather(1, word) & mask) == 0
        flip = torch.where(clear, bits[vz], 0)  # (n, D)
        # a wall (box facet, simplex tile facet) has no outside
        wall, inside = wall_sides(vz, sk.vtile.t[sl].long()[:, None].expand_as(vz), d, sk.walls, sk.tile_bits)
        for combo in range(1 << d):
            h = h0.clone()
            ok = torch.ones(vz.shape[0], dtype=torch.bool, device=dev)
            for i in range(d):
                if combo >> i & 1:
                    h += flip[:, i]
                    ok &= ~wall[:, i] | inside[:, i]
                else:
                    ok &= ~wall[:, i] | ~inside[:, i]
            hashes[combo, sl] = h
            valid[combo, sl] = ok
    return hashes, valid


def _region_ids(sk: _Skeleton) -> tuple[Tensor, int]:
    """Region (D-cell) ids around every vertex: ``(2^D, V)``, -1 where the combination of
    signs on the vertex's zeros leaves the box; and the number of regions
    (:func:`_region_hashes` grouped)."""
    hashes, valid = _region_hashes(sk)
    uniq, inv = torch.unique(hashes[valid], return_inverse=True)
    region = torch.full(hashes.shape, -1, dtype=torch.int64, device=hashes.device)
    region[valid] = inv
    return region, len(uniq)


def _group_equal(h: Tensor, payload: Tensor) -> tuple[Tensor, Tensor]:
    """``payload`` ``(P,)`` (non-negative int64) reordered so that equal hashes ``h`` ``(P,)``
    int64 come together, and ``(P,)`` bool marking where each run starts in that order.

    On CPU one numpy sort of ``(top 63 - b bits of the hash, payload in the b low bits)`` does
    it: numpy sorts plain int64 keys several times faster than ``torch.sort`` returns a
    permutation, and the payload comes out sorted without a gather (the 8x32 bunny's 10.4 M
    pairs at layer 5, one thread: 1.4-1.8 s for all of :func:`_region_members` against 2.2-2.6 s). Dropping
    the hash's low ``b + 1`` bits (``2^b`` > the largest payload) can merge two regions whose
    hashes agree above them (expected merges ``R^2 / 2^(64 - b)``: 2 of the 8x32's 1.3 M
    regions), which only widens their bounds, as a full collision would (:func:`_region_hashes`)."""
    n = len(h)
    b = max(1, int(payload.max()).bit_length()) if n else 1
    if h.device.type != "cpu" or b > 30:
        s, order = torch.sort(h)
        first = torch.ones(n, dtype=torch.bool, device=h.device)
        first[1:] = s[1:] != s[:-1]
        return payload[order], first
    key = ((h >> (b + 1)) << b) | payload  # arithmetic shifts: no overflow, low b bits free
    s = torch.from_numpy(np.sort(key.numpy()))
    top = s >> b
    first = torch.ones(n, dtype=torch.bool)
    first[1:] = top[1:] != top[:-1]
    return s & ((1 << b) - 1), first


def _region_members(sk: _Skeleton) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Regions around every vertex, and every region's vertices.

    Returns ``region`` ``(2^D, V)`` (as :func:`_region_ids`); ``members`` ``(P,)``, the vertices
    of region 0, then of region 1, ...; ``starts``, ``counts`` ``(R,)``, where each region's run
    begins and how long it is; and ``by_count`` ``(R,)``, the regions ordered by increasing
    count, so that runs of regions of equal count read as dense ``(m, count)`` blocks
    (:func:`_region_blocks`). One sort of the ``P`` (vertex, region) pairs by hash groups them."""
    hashes, valid = _region_hashes(sk)
    n_combos, v = hashes.shape
    dev = hashes.device
    flat = torch.nonzero(valid.view(-1)).squeeze(1)  # pair = combo * V + vertex
    h = hashes.view(-1)[flat]
    del hashes, valid
    flat, first = _group_equal(h, flat)
    del h
    rid = torch.cumsum(first, 0) - 1
    n = int(rid[-1]) + 1 if len(rid) else 0
    counts = torch.bincount(rid, minlength=n)
    starts = torch.cumsum(counts, 0) - counts
    region = torch.full((n_combos, v), -1, dtype=torch.int64, device=dev)
    region.view(-1)[flat] = rid
    return region, flat % v, starts, counts, torch.argsort(counts, stable=True)


def _region_blocks(counts: Tensor, row_bytes: int) -> list[tuple[int, int, int]]:
    """``(r0, r1, count)``: runs of regions of one vertex count (``counts`` ``(R,)``
    non-decreasing), each cut so that its ``(r1 - r0, count)`` block of rows of ``row_bytes``
    stays under :data:`nsr.extraction.memory.CHUNK_BYTES`."""
    if len(counts) == 0:
        return []
    values, sizes = torch.unique_consecutive(counts, return_counts=True)
    out, r0 = [], 0
    for c, m in zip(values.tolist(), sizes.tolist()):
        for sl in _chunks(m, max(1, c) * row_bytes, counts.device):
            out.append((r0 + sl.start, r0 + sl.stop, c))
        r0 += m
    return out


def _prune_regions(sk: _Skeleton, band: Band) -> int:
    """Drop the regions whose bounding box misses the band, and every edge and vertex that
    bounds no remaining region. Returns the number of regions kept."""
    d = sk.dim
    x = sk.x.t
    region, n_regions = _region_ids(sk)
    sink = torch.where(region < 0, n_regions, region)  # row n_regions: a sink
    rlo = torch.full((n_regions + 1, d), math.inf, dtype=x.dtype, device=x.device)
    rhi = torch.full((n_regions + 1, d), -math.inf, dtype=x.dtype, device=x.device)
    for combo in range(1 << d):
        _index_reduce(rlo, sink[combo], x, "amin")
        _index_reduce(rhi, sink[combo], x, "amax")
    alive = torch.cat([band.hits(rlo[:n_regions], rhi[:n_regions]),
                       torch.zeros(1, dtype=torch.bool, device=x.device)])
    _keep_live_regions(sk, region, alive, n_regions)
    return int(alive.sum())


def _keep_live_regions(sk: _Skeleton, region: Tensor, alive: Tensor, n_regions: int) -> None:
    """Keep the edges (and their vertices) that bound a live region. ``region`` ``(2^D, V)``
    are the region ids around each vertex (-1: outside the box); ``alive`` ``(R + 1,)``
    with a last False entry for the outside."""
    d = sk.dim
    dev = sk.x.data.device
    v = sk.n_vertices
    n_combos = 1 << d
    # bit k of live[v]: the region of combination k around v is live
    live = torch.zeros(v, dtype=torch.int64, device=dev)
    for combo in range(n_combos):
        ids = region[combo]
        live |= alive[torch.where(ids < 0, n_regions, ids)].long() << combo
    # want[slot, sign]: the combinations whose sign on zero ``slot`` is ``sign``
    combos = torch.arange(n_combos, device=dev)
    slots = torch.arange(d, device=dev)
    on = ((combos[None, :] >> slots[:, None]) & 1).long() << combos[None, :]  # (D, 2^D)
    want = torch.stack([((1 - (combos[None, :] >> slots[:, None] & 1)) << combos[None, :]).sum(1),
                        on.sum(1)], 1)  # (D, 2)
    n_w = sk.vpos.data.shape[1]
    vpos_flat = sk.vpos.t.reshape(-1)
    keep_e = torch.empty(sk.n_edges, dtype=torch.bool, device=dev)
    for sl in _chunks(sk.n_edges, 16 * (2 * d + d * d + 8), dev):
        e = sk.edges.t[sl]
        a, b = e[:, 0].long(), e[:, 1].long()
        # An edge (a, b) lies in the regions of a whose sign on a's extra zero (the one b
        # does not share) is b's sign there.
        za = sk.vzeros.t.index_select(0, a)
        zb = sk.vzeros.t.index_select(0, b)
        extra = ~(za[:, :, None] == zb[:, None, :]).any(2)  # (e, D), one True per row
        slot = extra.long().argmax(1)
        w, m = bit_values(za.gather(1, slot[:, None]).squeeze(1).long())
        sign = (vpos_flat.index_select(0, b * n_w + w) & m) != 0
        keep_e[sl] = (live.index_select(0, a) & want[slot, sign.long()]) != 0
    keep_v = torch.zeros(v, dtype=torch.bool, device=dev)
    keep_v[sk.edges.t[keep_e].reshape(-1).long()] = True
    if not bool(keep_e.all()):
        _keep(sk, keep_v, keep_e)
        sk.partial = True


def may_reach(lo: Tensor, hi: Tensor, level: float, tol: float) -> Tensor:
    """Whether a range ``[lo, hi]`` of the output, bounded in floating point, may hold a cut of
    the level set under the sign rule of :func:`split_by_constraint` (``f - level`` within
    ``tol`` of zero counts as zero, and zero as positive). A cut needs a vertex below
    ``level - tol`` and one at or above it; the test accepts ``lo <= level + tol`` and
    ``hi >= level - 2 tol``, a margin of at least ``tol`` on each side for the rounding of the
    bounds themselves, so that pruning never drops a cell that subdivision would cut.

    Parameters
    ----------
    lo, hi : (...,) float Tensor
        Bounds on the output.
    level : float
        The level set.
    tol : float
        The output's sign tolerance (:func:`nsr.extraction.tolerances.sign_tolerances`).

    Returns
    -------
    (...,) bool Tensor
        ``lo <= level + tol`` and ``hi >= level - 2 tol``.

    Examples
    --------
    >>> import torch
    >>> may_reach(torch.tensor([-1.0, 0.5, 0.0]), torch.tensor([1.0, 2.0, 0.0]), 0.0, 0.0).tolist()
    [True, False, True]
    >>> may_reach(torch.tensor([0.5]), torch.tensor([2.0]), 0.0, 0.5).tolist()  # within the tolerance
    [True]
    """
    return (lo <= level + tol) & (hi >= level - 2 * tol)


def _region_columns(graph: PLGraph, sk: _Skeleton, layer: int, front: list[int], sl: slice) -> Tensor:
    """The columns ``u`` ``(V_sl, n_u)`` of :func:`nsr.pl.bounds.region_bounds` at the vertices
    ``sl``: the pre-activations of ``layer`` (carried ones, else evaluated), then the values of
    the frontier sources (none for a plain MLP)."""
    if sk.values is not None:
        z = sk.values.t[sl]
    else:
        z = _evaluate(graph, sk.x.t[sl], layer, 0, graph.layers[layer].n, 0.0)
    if not front:
        return z
    return torch.cat([z, _source_values(graph, sk.x.t[sl], front, layer)], 1)


def _all_columns(graph: PLGraph, sk: _Skeleton, layer: int, front: list[int]) -> Tensor:
    """The columns ``u`` ``(V, n_u)`` of :func:`_region_columns` at every vertex: the carried
    pre-activations themselves (no copy) for a plain MLP whose values are carried."""
    if sk.values is not None and not front:
        return sk.values.t
    n_u = graph.layers[layer].n + sum(_source_widths(graph, front).values())
    x = sk.x.t
    out = torch.empty(x.shape[0], n_u, dtype=x.dtype, device=x.device)
    for sl in _chunks(x.shape[0], x.element_size() * max(graph.live_width, n_u), x.device):
        out[sl] = _region_columns(graph, sk, layer, front, sl)
    return out


def _source_widths(graph: PLGraph, front: list[int]) -> dict[int, int]:
    return {k: graph.in_dim if k == INPUT else int(graph.encoder.out_dim) if k == ENCODED else graph.widths[k]
            for k in front}


def _prune_regions_bounded(graph: PLGraph, sk: _Skeleton, layer: int, level: float, tol: float = 0.0) -> int:
    """Drop the regions whose output provably cannot reach ``level``. On a region the
    pre-activations ``z`` of ``layer``, and the sources later layers read besides it (earlier
    layers, the input, the features: :func:`nsr.pl.bounds.frontier`), are affine, so their exact
    range is their min/max over the region's vertices. From it, interval arithmetic bounds the
    output, and so do linear bounds ``a u + c`` in those columns ``u`` (CROWN back-substitution
    with interval bounds on the later layers), which are affine on the region too and so exact at
    its vertices; a region is kept while both allow the level. Returns the number of regions kept.

    Regions are read as dense blocks of their vertices' columns (:func:`_region_members`): one
    gather per block serves the range, both bounds and the linear bounds' minimum over the
    vertices, where scattering every (vertex, region) pair into per-region minima twice cost
    several times more on CPU."""
    region, members, starts, counts, by_count = _region_members(sk)
    n_regions = len(counts)
    front = frontier(graph, layer)
    width = graph.layers[layer].n
    u = _all_columns(graph, sk, layer, front)
    n_u = u.shape[1]
    dev = u.device
    offsets = torch.tensor([width, *_source_widths(graph, front).values()]).cumsum(0).tolist()
    alive = torch.zeros(n_regions + 1, dtype=torch.bool, device=dev)  # last: outside the box
    for r0, r1, c in _region_blocks(counts[by_count], u.element_size() * max(n_u, graph.live_width)):
        ids = by_count[r0:r1]
        rows = (starts[ids, None] + torch.arange(c, device=dev)).view(-1)
        block = u.index_select(0, members[rows]).view(r1 - r0, c, n_u)  # (m, c, n_u)
        lo, hi = block.amin(1), block.amax(1)
        sources = {k: (lo[:, a:b], hi[:, a:b]) for k, a, b in zip(front, offsets[:-1], offsets[1:])}
        _, keep, (a_lo, c_lo, a_up, c_up) = region_bounds(
            graph, layer, (lo[:, :width], hi[:, :width]), sources,
            keep=lambda olo, ohi: may_reach(olo, ohi, level, tol))
        if bool(keep.any()):
            cand = block[keep]  # (S, c, n_u): the linear bounds are affine on the region, extreme at vertices
            fmin = torch.bmm(cand, a_lo[:, :, None]).amin(1)[:, 0] + c_lo
            fmax = torch.bmm(cand, a_up[:, :, None]).amax(1)[:, 0] + c_up
            keep[keep.clone()] = may_reach(fmin, fmax, level, tol)
        alive[ids] = keep
    _keep_live_regions(sk, region, alive, n_regions)
    return int(alive.sum())


def band_cells(net: PLGraph | PLNetwork, bounds: Tensor, res: int, level: float, close: bool = False,
               crown_hidden: bool = True) -> Tensor:
    """Occupancy ``(res,)*D`` bool of the grid cells where the output may reach ``level``
    (or, with ``close``, be below it on a cell touching the box boundary), refined
    coarse-to-fine so that only cells near the surface are ever bounded. ``res`` is a power
    of two.

    Parameters
    ----------
    net : PLGraph or PLNetwork
        The network.
    bounds : (D, 2) float Tensor
        The box, in the network's dtype and on its device.
    res : int
        Cells per axis, a power of two.
    level : float
        The level set.
    close : bool
        Also keep the cells on the box's boundary where the output may be below the level
        (the faces that close the surface).
    crown_hidden : bool
        Also use linear bounds on hidden layers.

    Returns
    -------
    (res,)*D bool Tensor
        True on cells that may hold the level set; the others provably do not.

    Examples
    --------
    Every cell of an 8^3 grid that holds a point of the octahedron ``|x| + |y| + |z| = 0.5`` is kept:

    >>> import torch
    >>> from nsr.networks import octahedron_network
    >>> box = torch.tensor([[-1.0, 1.0]] * 3, dtype=torch.float64)
    >>> occupied = band_cells(octahedron_network(), box, 8, 0.0)
    >>> p = torch.randn(1000, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    >>> p = 0.5 * p / p.abs().sum(1, keepdim=True)  # points on the surface
    >>> cell = ((p + 1) / 2 * 8).floor().long().clamp(0, 7)
    >>> bool(occupied[tuple(cell.T)].all()), int(occupied.sum()) < 8**3 // 4
    (True, True)
    """
    net = as_graph(net)
    d = bounds.shape[0]
    dev, dt = net.device, net.dtype
    lo, hi = bounds[:, 0], bounds[:, 1]
    tol = float(sign_tolerances(net, lo, hi, level)[-1][0])
    offsets = torch.cartesian_prod(*[torch.arange(2, device=dev)] * d).reshape(-1, d)
    idx = torch.zeros(1, d, dtype=torch.int64, device=dev)
    g = 1
    while True:
        cell = (hi - lo) / g
        keep = torch.zeros(len(idx), dtype=torch.bool, device=dev)
        for s in range(0, len(idx), 4096):  # bounded memory for the linear relaxations
            blo = lo + idx[s : s + 4096].to(dt) * cell
            bhi = torch.minimum(blo + cell, hi)
            olo, ohi = output_bounds(net, blo, bhi, crown_hidden=crown_hidden)
            k = may_reach(olo, ohi, level, tol)
            if close:
                k |= ((idx[s : s + 4096] == 0) | (idx[s : s + 4096] == g - 1)).any(1) & (ohi < level + tol)
            keep[s : s + 4096] = k
        idx = idx[keep]
        if g >= res:
            break
        idx = (idx[:, None, :] * 2 + offsets[None]).reshape(-1, d)
        g *= 2
    occ = torch.zeros((res,) * d, dtype=torch.bool, device=dev)
    if len(idx):
        occ[tuple(idx.T)] = True
    return occ


class TileBounds:
    """Bounds ``(K, n_m)`` of every layer's pre-activations (and ``(K, 1)`` of the output) over
    ``K`` tiles, tightened layer by layer as subdivision makes each layer affine.

    The first :meth:`update` bounds every layer as :func:`nsr.pl.bounds.layer_bounds` does, from
    the exact ranges given. Later updates, one layer further on, replace that layer's bounds by
    its exact range and push only interval arithmetic forward through the later layers,
    intersected with the bounds already held, then bound the output by linear bound propagation
    from the input on them: ``O(L)`` work per layer instead of ``O(L^2)`` (linear bounds of every
    later hidden layer recomputed from scratch), which made tile pruning cubic in depth (99.5 % of
    the time on a 64-layer net of width 4). Every bound held is valid over its whole tile, so the
    intersections are valid; with intervals only (``crown_hidden=False``) an update gives
    exactly the bounds that a fresh :func:`layer_bounds` from all exact ranges would give.

    Parameters
    ----------
    net : PLGraph
        The network.
    tile_lo, tile_hi : (K, D) float Tensor
        The tiles' corners.
    crown_hidden : bool, optional
        Bound the hidden layers by linear bound propagation on the first update (default) rather
        than by intervals only.
    sources : dict of int to (lower, upper), optional
        Ranges ``(K, n)`` of the input and the features over each tile, where tighter than the
        tile's box gives (:func:`nsr.pl.bounds.source_ranges`, default): a simplex's features range
        over its corners' values.

    Examples
    --------
    Layer 0 is affine over a box, so its exact range is its range over the corners; the output's
    bounds then contain every sampled value:

    >>> import torch
    >>> from nsr.networks import random_network
    >>> from nsr.pl import as_graph
    >>> g = as_graph(random_network(2, [4, 4], seed=0)).to(dtype=torch.float64)
    >>> lo, hi = torch.full((1, 2), -1.0, dtype=torch.float64), torch.ones(1, 2, dtype=torch.float64)
    >>> corners = torch.tensor([[-1.0, -1], [-1, 1], [1, -1], [1, 1]], dtype=torch.float64)
    >>> z0 = g.preactivations(corners, 0)
    >>> blo, bhi = TileBounds(g, lo, hi).update(0, [(z0.min(0).values[None], z0.max(0).values[None])])
    >>> f = g(torch.rand(10_000, 2, dtype=torch.float64) * 2 - 1)
    >>> bool(blo[0] <= f.min()) and bool(f.max() <= bhi[0])
    True
    """

    def __init__(self, net: PLGraph, tile_lo: Tensor, tile_hi: Tensor, crown_hidden: bool = True,
                 sources: dict[int, tuple[Tensor, Tensor]] | None = None) -> None:
        self.net, self.lo, self.hi, self.crown_hidden = net, tile_lo, tile_hi, crown_hidden
        self.sources = sources
        self.pre: list[tuple[Tensor, Tensor]] | None = None  # per layer, then the output
        self.layer = -1  # the last layer whose exact range was given

    def update(self, layer: int, exact: list[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
        """Take the exact ranges of layers ``0..layer`` over the tiles; bound the output.

        Parameters
        ----------
        layer : int
            The last layer whose exact range is given (one more than at the previous update, or
            the bounds are rebuilt from scratch).
        exact : list of (Tensor, Tensor)
            ``exact[k]``: lower and upper ``(K, n_k)`` range of layer ``k``'s pre-activations
            over each tile, for ``k = 0..layer``.

        Returns
        -------
        lower, upper : (K,) float Tensor
            Bounds of the output over each tile.
        """
        net = self.net
        if self.pre is None or layer != self.layer + 1:
            self.pre = _bounds.layer_bounds(net, self.lo, self.hi, exact[: layer + 1], self.crown_hidden,
                                            self.sources)
        else:
            pre = self.pre
            ranges = dict(self.sources) if self.sources is not None else _bounds.source_ranges(net, self.lo, self.hi)
            for k in range(layer + 1):
                pre[k] = exact[k]
                ranges[k] = _bounds.activation_range(net.layers[k], *pre[k])
            for m in range(layer + 1, net.n_layers + 1):
                zlo, zhi = _bounds._affine_interval(net.affine(m), ranges)
                z = (torch.maximum(zlo, pre[m][0]), torch.minimum(zhi, pre[m][1]))
                if m == net.n_layers:
                    c_lo, c_hi = _bounds.concretize(*_bounds.linear_bounds(net, m, pre), self.lo, self.hi,
                                                    ranges.get(ENCODED))
                    z = (torch.maximum(z[0], c_lo), torch.minimum(z[1], c_hi))
                pre[m] = z
                if m < net.n_layers:
                    ranges[m] = _bounds.activation_range(net.layers[m], *z)
        self.layer = layer
        return self.pre[-1][0][:, 0], self.pre[-1][1][:, 0]


def _tiles_reaching(net: PLGraph, sk: _Skeleton, layer: int, tile_bounds: TileBounds, level: float,
                    keep_negative: Tensor | None, ranges: list[tuple[Tensor, Tensor]], tol: float = 0.0,
                    bound: bool = True) -> Tensor:
    """Tiles whose output may reach ``level``. The pre-activations of layers ``0..layer`` are
    affine on every current cell, so their exact range over a tile is their min/max over the
    tile's vertices; later layers and the output are bounded by ``tile_bounds``
    (:class:`TileBounds`, updated here).

    ``ranges`` holds the ranges of earlier layers from earlier calls and gets this layer's:
    subdivision adds vertices only inside cells where those layers are affine and pruning
    only removes vertices, so an earlier range stays a valid bound. ``bound=False`` only records
    the range (the tiles holding vertices are returned)."""
    n_tiles = tile_bounds.lo.shape[0]
    x = sk.x.t
    width = net.layers[layer].n
    lo = torch.full((n_tiles, width), math.inf, dtype=x.dtype, device=x.device)
    hi = torch.full((n_tiles, width), -math.inf, dtype=x.dtype, device=x.device)
    for sl in _chunks(x.shape[0], x.element_size() * net.live_width, x.device):
        z = _region_columns(net, sk, layer, [], sl)
        idx = sk.vtile.t[sl].long()
        _index_reduce(lo, idx, z, "amin")
        _index_reduce(hi, idx, z, "amax")
    ranges.append((lo, hi))
    has = torch.isfinite(lo[:, 0])
    if not bound:
        return has
    known = [(torch.where(has[:, None], lo, 0.0), torch.where(has[:, None], hi, 0.0)) for lo, hi in ranges]
    olo, ohi = tile_bounds.update(layer, known)
    reach = has & may_reach(olo, ohi, level, tol)
    if keep_negative is not None:
        reach |= has & keep_negative & (ohi < level + tol)
    return reach
