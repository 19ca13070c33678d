"""Pruning tiles and regions that the level set cannot reach: exact ranges at vertices, then bounds."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from nsr.extraction.bits import _C3, _mix, bit_values
from nsr.extraction.evaluate import _evaluate, _source_values
from nsr.extraction.memory import _chunks
from nsr.extraction.skeleton import _index_reduce, _keep
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
    of the network's graph (kept here for callers that hold a :class:`PLNetwork`)."""
    return _bounds.output_bounds(as_graph(net), lo, hi, known, crown_hidden)


class Band:
    """Cells of a ``res^D`` grid over a box that may contain the level set; the complement
    provably does not (linear bound propagation on each cell). Queried by boxes through a
    summed-area table."""

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
        rounding at cell borders cannot lose one)."""
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


def _region_ids(sk: _Skeleton) -> tuple[Tensor, int]:
    """Region (D-cell) ids around every vertex: ``(2^D, V)``, -1 where the combination of
    signs on the vertex's zeros leaves the box; and the number of regions.

    A region's key is its tile and sign vector: the vertex's with some of its zeros made
    positive. Keys are grouped by a 64-bit hash without comparing them: a collision (odds
    ~1e-5 for 10^7 keys) would merge two regions, which only widens the bounds computed on
    them, so pruning stays sound. The hash is a sum of salted per-word mixes, so a
    combination updates only the words it changes instead of rehashing the key."""
    d = sk.dim
    v = sk.n_vertices
    dev = sk.x.data.device
    hashes = torch.empty(1 << d, v, dtype=torch.int64, device=dev)
    valid = torch.empty(1 << d, v, dtype=torch.bool, device=dev)
    n_cols = sk.vpos.data.shape[1] + 1
    salt = _mix(torch.arange(1, n_cols + 1, device=dev, dtype=torch.int64) * _C3)
    for sl in _chunks(v, 16 * n_cols * 2, dev):
        vz = sk.vzeros.t[sl].long()
        base = torch.cat([sk.vtile.t[sl].long()[:, None], sk.vpos.t[sl]], 1)
        terms = _mix(base ^ salt)
        total = terms.sum(1)
        words, masks = bit_values(vz)
        words = words + 1  # column 0 is the tile
        old_w = base.gather(1, words)
        old_t = terms.gather(1, words)
        box_facet = vz < 2 * d  # a box facet has no outside
        for combo in range(1 << d):
            sel = [i for i in range(d) if combo >> i & 1]
            h = total.clone()
            ok = torch.ones(vz.shape[0], dtype=torch.bool, device=dev)
            for i in range(d):
                if i not in sel:
                    ok &= ~box_facet[:, i]
            for i in sel:
                new = old_w[:, i] | masks[:, i]
                first = torch.ones_like(ok)
                for j in sel:
                    if j != i:
                        same = words[:, j] == words[:, i]
                        new = new | torch.where(same, masks[:, j], 0)
                        if j < i:
                            first &= ~same
                delta = _mix(new ^ salt[words[:, i]]) - old_t[:, i]
                h += torch.where(first, delta, 0)
            hashes[combo, sl] = h
            valid[combo, sl] = ok
    uniq, inv = torch.unique(hashes[valid], return_inverse=True)
    region = torch.full((1 << d, v), -1, dtype=torch.int64, device=dev)
    region[valid] = inv
    return region, len(uniq)


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
    combos = torch.arange(1 << d, device=dev)
    keep_e = torch.empty(sk.n_edges, dtype=torch.bool, device=dev)
    for sl in _chunks(sk.n_edges, 64 * (d + 1) * (1 << d), dev):
        e = sk.edges.t[sl]
        a = e[:, 0]
        # An edge (a, b) lies in the regions of a whose sign on a's extra zero (the one b
        # does not share) is b's sign there.
        za = sk.vzeros.t.index_select(0, a).long()
        zb = sk.vzeros.t.index_select(0, e[:, 1]).long()
        extra = ~(za[:, :, None] == zb[:, None, :]).any(2)  # (e, D), one True per row
        slot = extra.long().argmax(1)
        w, m = bit_values(za.gather(1, slot[:, None]).squeeze(1))
        sign = (sk.vpos.t.index_select(0, e[:, 1]).gather(1, w[:, None]).squeeze(1) & m) != 0
        want = ((combos[None, :] >> slot[:, None]) & 1).bool() == sign[:, None]  # (e, 2^D)
        ids = region[:, a.long()].T  # (e, 2^D)
        live = alive[torch.where(ids < 0, n_regions, ids)]
        keep_e[sl] = (live & want).any(1)
    keep_v = torch.zeros(v, dtype=torch.bool, device=dev)
    keep_v[sk.edges.t[keep_e].reshape(-1).long()] = True
    if not bool(keep_e.all()):
        _keep(sk, keep_v, keep_e)
        sk.partial = True


def may_reach(lo: Tensor, hi: Tensor, level: float, tol: float) -> Tensor:
    """Whether a range ``[lo, hi]`` of the output, bounded in floating point, may hold a cut of
    the level set under the sign rule of :func:`split_by_constraint` (``f - level`` within
    ``tol`` of zero counts as zero, and zero as positive): the range is widened by the
    tolerance on both sides, so that pruning never drops a cell that subdivision would cut."""
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


REGION_ROW_FACTOR = 8


def _prune_regions_bounded(graph: PLGraph, sk: _Skeleton, layer: int, level: float, tol: float = 0.0) -> int:
    """Drop the regions whose output provably cannot reach ``level``. On a region the
    pre-activations ``z`` of ``layer``, and the sources later layers read besides it (earlier
    layers, the input, the features: :func:`nsr.pl.bounds.frontier`), are affine, so their exact
    range is their min/max over the region's vertices. From it, interval arithmetic bounds the
    output, and so do linear bounds ``a u + c`` in those columns ``u`` (CROWN back-substitution
    with interval bounds on the later layers), which are affine on the region too and so exact at
    its vertices; a region is kept while both allow the level. Returns the number of regions kept."""
    d = sk.dim
    x = sk.x.t
    dev = x.device
    region, n_regions = _region_ids(sk)
    sink = torch.where(region < 0, n_regions, region)  # (2^D, V); row n_regions: a sink
    width = graph.layers[layer].n
    front = frontier(graph, layer)
    src_widths = {k: graph.in_dim if k == INPUT else int(graph.encoder.out_dim) if k == ENCODED else graph.widths[k]
                  for k in front}
    n_u = width + sum(src_widths.values())
    lo = torch.full((n_regions + 1, n_u), math.inf, dtype=x.dtype, device=dev)
    hi = torch.full((n_regions + 1, n_u), -math.inf, dtype=x.dtype, device=dev)
    row = x.element_size() * max(graph.live_width, n_u)
    for sl in _chunks(x.shape[0], row, dev):
        u = _region_columns(graph, sk, layer, front, sl)
        for combo in range(1 << d):
            _index_reduce(lo, sink[combo, sl], u, "amin")
            _index_reduce(hi, sink[combo, sl], u, "amax")
    # Intervals on every region; linear bounds only on the regions that intervals keep,
    # numbered 0..n-1 in region order (n: a sink).
    alive = torch.zeros(n_regions + 1, dtype=torch.bool, device=dev)  # last: the sink
    parts = []
    offsets = torch.tensor([width, *src_widths.values()]).cumsum(0).tolist()
    for sl in _chunks(n_regions, REGION_ROW_FACTOR * row, dev):
        sources = {k: (lo[sl, a:b], hi[sl, a:b]) for k, a, b in zip(front, offsets[:-1], offsets[1:])}
        _, keep, lin = region_bounds(graph, layer, (lo[sl, :width], hi[sl, :width]), sources,
                                     keep=lambda olo, ohi: may_reach(olo, ohi, level, tol))
        alive[sl] = keep
        parts.append(lin)
    cand = torch.nonzero(alive).squeeze(1)
    n = len(cand)
    compact = torch.full((n_regions + 1,), n, dtype=torch.int64, device=dev)
    compact[cand] = torch.arange(n, device=dev)

    def gather(i: int, row: tuple[int, ...]) -> Tensor:  # the candidates' bounds and a zero sink row
        return torch.cat([p[i] for p in parts] + [torch.zeros(row, dtype=x.dtype, device=dev)])

    a_lo, c_lo, a_up, c_up = gather(0, (1, n_u)), gather(1, (1,)), gather(2, (1, n_u)), gather(3, (1,))
    del lo, hi
    fmin = torch.full((n + 1,), math.inf, dtype=x.dtype, device=dev)
    fmax = torch.full((n + 1,), -math.inf, dtype=x.dtype, device=dev)
    for sl in _chunks(x.shape[0], 3 * row, dev):
        u = _region_columns(graph, sk, layer, front, sl)
        for combo in range(1 << d):
            r = compact[sink[combo, sl]]
            pick = torch.nonzero(r < n).squeeze(1)
            r, uc = r[pick], u[pick]
            fmin.scatter_reduce_(0, r, (a_lo.index_select(0, r) * uc).sum(1), "amin")
            fmax.scatter_reduce_(0, r, (a_up.index_select(0, r) * uc).sum(1), "amax")
    alive[cand] = may_reach(fmin[:n] + c_lo[:n], fmax[:n] + c_up[:n], level, tol)
    _keep_live_regions(sk, region, alive, n_regions)
    return int(alive.sum())


def band_cells(net: PLGraph | PLNetwork, bounds: Tensor, res: int, level: float, close: bool = False,
               crown_hidden: bool = True) -> Tensor:
    """Occupancy ``(res,)*D`` bool of the grid cells where the output may reach ``level``
    (or, with ``close``, be below it on a cell touching the box boundary), refined
    coarse-to-fine so that only cells near the surface are ever bounded. ``res`` is a power
    of two."""
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
    exactly the bounds that a fresh :func:`layer_bounds` from all exact ranges would give."""

    def __init__(self, net: PLGraph, tile_lo: Tensor, tile_hi: Tensor, crown_hidden: bool = True) -> None:
        self.net, self.lo, self.hi, self.crown_hidden = net, tile_lo, tile_hi, crown_hidden
        self.pre: list[tuple[Tensor, Tensor]] | None = None  # per layer, then the output
        self.layer = -1  # the last layer whose exact range was given

    def update(self, layer: int, exact: list[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
        """Take the exact ranges ``exact[k]`` ``(K, n_k)`` of layers ``0..layer`` over the tiles
        and return bounds ``(K,)`` of the output."""
        net = self.net
        if self.pre is None or layer != self.layer + 1:
            self.pre = _bounds.layer_bounds(net, self.lo, self.hi, exact[: layer + 1], self.crown_hidden)
        else:
            pre = self.pre
            ranges = _bounds.source_ranges(net, self.lo, self.hi)
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
                    keep_negative: Tensor | None, ranges: list[tuple[Tensor, Tensor]], tol: float = 0.0) -> Tensor:
    """Tiles whose output may reach ``level``. The pre-activations of layers ``0..layer`` are
    affine on every current cell, so their exact range over a tile is their min/max over the
    tile's vertices; later layers and the output are bounded by ``tile_bounds``
    (:class:`TileBounds`, updated here).

    ``ranges`` holds the ranges of earlier layers from earlier calls and gets this layer's:
    subdivision adds vertices only inside cells where those layers are affine and pruning
    only removes vertices, so an earlier range stays a valid bound."""
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
    known = [(torch.where(has[:, None], lo, 0.0), torch.where(has[:, None], hi, 0.0)) for lo, hi in ranges]
    olo, ohi = tile_bounds.update(layer, known)
    reach = has & may_reach(olo, ohi, level, tol)
    if keep_negative is not None:
        reach |= has & keep_negative & (ohi < level + tol)
    return reach
