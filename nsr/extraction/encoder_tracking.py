"""Track mode on networks with an encoder (a simplex grid): walks over the cells of its planes.

A region is a cell of the arrangement of the encoder's planes (on which the features are affine)
together with the MLP's activation pattern. The planes come in families of parallel planes (for a
simplex grid: x_i = const and x_i - x_j = const, all levels merged), so a cell is the intersection
of one slab per family: its key is the slab index of every family, and its encoder constraints are
the two planes bounding each slab (2 per family, whatever the number of levels). A walk that
crosses an encoder plane moves to the next slab of that family. :func:`nsr.extraction.tracking.track_surface`
hands encoder networks to :func:`_track_encoder_surface`; the walk itself reuses that module's
region constraints, vertices and polygon walks.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from nsr.extraction.bits import bit_values, group_equal_rows, hash_rows, n_words, pack_bits, unpack_bits
from nsr.extraction.memory import WALK_CHUNK_BYTES, _check_track_memory, _chunks, default_memory_limit, tensors_bytes
from nsr.extraction.tracking import (
    _FIRST_WIDTH,
    D,
    _bar,
    _columns,
    _first_hit,
    _normal_lengths,
    _pad,
    _rates,
    _slacks,
    _unique_rows,
    _vertex,
    _Visited,
    activation_patterns,
)
from nsr.pl.graph import PLGraph
from nsr.pl.layout import FACET, NEURON, ConstraintLayout

# ---- networks with an encoder --------------------------------------------------------------------
#
# A region is a cell of the arrangement of the encoder's planes (on which the features are affine)
# together with the MLP's activation pattern. The planes come in families of parallel planes (for a
# simplex grid: x_i = const and x_i - x_j = const, all levels merged), so a cell is the intersection
# of one slab per family: its key is the slab index of every family, and its encoder constraints are
# the two planes bounding each slab (2 per family, whatever the number of levels). A walk that
# crosses an encoder plane moves to the next slab of that family.
#
# Simplex-grid arrangements are not in general position: three planes meet in every grid line
# (x_i = a, x_j = b, x_i - x_j = a - b), and on a box face a diagonal plane and an axis plane cut the
# same line. Walks on encoder networks therefore resolve such vertices: the outgoing edge is the
# line, among those through the vertex, that keeps every other one satisfied (the polygon is
# convex), an edge may lie on two constraints (its "companion"), and a vertex is named by the whole
# set of constraints through it, so that every polygon around it names it alike.


class EncoderCells:
    """The encoder's planes over a box, grouped into families of parallel planes.

    Plane ``p`` of ``encoder.planes(lo, hi)`` (constraint id ``2D + p``) is plane ``rank[p]`` of
    family ``family[p]`` in increasing offset. A cell of the arrangement is given by its slab in
    every family, ``(F,)`` int64: slab ``s`` lies between the family's planes ``s - 1`` and ``s``
    (``0`` and ``count`` reach the box).

    Parameters
    ----------
    encoder : object
        The graph's encoder (PROTOCOL: ``planes(lo, hi)``).
    bounds : (D, 2) float Tensor
        The box; its dtype and device are used throughout.

    Raises
    ------
    TypeError
        If the encoder lacks ``planes`` or ``feature_maps``.
    ValueError
        If two planes of the encoder coincide.

    Examples
    --------
    >>> import torch
    >>> from nsr.pl.encoding import SimplexGridEncoder, SimplexGridEncoding
    >>> from nsr.extraction.encoder_tracking import EncoderCells
    >>> enc = SimplexGridEncoder(SimplexGridEncoding(in_dim=3, n_levels=1, min_resolution=2, max_resolution=2))
    >>> cells = EncoderCells(enc, torch.tensor([[-1.0, 1.0]] * 3, dtype=torch.float64))
    >>> cells.n_planes, cells.n_families  # x, y, z = 0 and x - y, x - z, y - z = -1, 0, 1
    (12, 6)
    >>> cells.slabs(torch.tensor([[0.5, -0.5, 0.1]], dtype=torch.float64)).tolist()
    [[1, 1, 0, 2, 2, 1]]
    """

    def __init__(self, encoder: Any, bounds: Tensor) -> None:
        dt, dev = bounds.dtype, bounds.device
        missing = [m for m in ("planes", "feature_maps") if not callable(getattr(encoder, m, None))]
        if missing:
            raise TypeError(f"the graph's encoder ({type(encoder).__name__}) lacks {' and '.join(missing)} of the "
                            "encoder protocol (PROTOCOL.md): track mode reads its planes and its affine maps on cells")
        normals, offsets = encoder.planes(bounds[:, 0], bounds[:, 1])
        normals, offsets = normals.to(device=dev, dtype=dt), offsets.to(device=dev, dtype=dt)
        self.n_planes = len(offsets)
        d = bounds.shape[0]
        if self.n_planes == 0:
            fam_normal = torch.zeros(0, d, dtype=dt, device=dev)
            family = torch.zeros(0, dtype=torch.int64, device=dev)
        else:
            fam_normal, family = torch.unique(normals, dim=0, return_inverse=True)
        n_fam = len(fam_normal)
        order = torch.argsort(offsets, stable=True)
        order = order[torch.argsort(family[order], stable=True)]
        count = torch.bincount(family, minlength=n_fam)
        start = torch.cumsum(count, 0) - count
        rank = torch.empty_like(family)
        rank[order] = torch.arange(self.n_planes, device=dev) - start[family[order]]
        width = int(count.max()) if n_fam else 0
        self.offsets = torch.full((n_fam, width), float("inf"), dtype=dt, device=dev)
        self.offsets[family, rank] = offsets
        if bool(((self.offsets[:, 1:] <= self.offsets[:, :-1]) & torch.isfinite(self.offsets[:, 1:])).any()):
            raise ValueError("the encoder lists the same plane twice; its planes(lo, hi) must be distinct")
        self.ids = torch.full((n_fam, width), -1, dtype=torch.int64, device=dev)
        self.ids[family, rank] = torch.arange(self.n_planes, device=dev)
        self.normals, self.family, self.rank, self.count = fam_normal, family, rank, count
        self.n_families = n_fam

    def slabs(self, x: Tensor) -> Tensor:
        """The cells of points.

        Parameters
        ----------
        x : (N, D) float Tensor
            Points.

        Returns
        -------
        (N, F) int64 Tensor
            The slab of every family (a point on a plane counts as below it).
        """
        if self.n_families == 0:
            return torch.zeros(len(x), 0, dtype=torch.int64, device=x.device)
        vals = (x @ self.normals.T).T.contiguous()  # (F, N)
        return torch.searchsorted(self.offsets, vals).T

    def columns(self, slabs: Tensor) -> tuple[Tensor, Tensor]:
        """The planes bounding cells, as oriented constraints.

        Parameters
        ----------
        slabs : (B, F) int64 Tensor
            Cells.

        Returns
        -------
        g : (B, D + 1, 2F) float Tensor
            ``a . x + b >= 0`` inside; column ``2f`` is the plane below in family ``f``, ``2f + 1``
            the one above, ``(0, 1)`` (never met) where the slab reaches the box.
        ids : (B, 2F) int64 Tensor
            Plane index of every column (-1 for those).
        """
        bsz, n_fam = slabs.shape
        d = self.normals.shape[1]
        fam = torch.arange(n_fam, device=slabs.device).expand(bsz, -1)
        below, above = slabs - 1, slabs
        has_below, has_above = below >= 0, above < self.count
        off_b = self.offsets[fam, below.clamp(min=0)]
        off_a = self.offsets[fam, above.clamp(max=self.offsets.shape[1] - 1)]
        ids = torch.stack([torch.where(has_below, self.ids[fam, below.clamp(min=0)], -1),
                           torch.where(has_above, self.ids[fam, above.clamp(max=self.offsets.shape[1] - 1)], -1)],
                          2).reshape(bsz, 2 * n_fam)
        g = torch.zeros(bsz, d + 1, n_fam, 2, dtype=self.normals.dtype, device=slabs.device)
        nrm = self.normals.T[None]  # (1, D, F)
        g[:, :d, :, 0] = torch.where(has_below[:, None], nrm, 0.0)
        g[:, d, :, 0] = torch.where(has_below, -off_b, 1.0)
        g[:, :d, :, 1] = torch.where(has_above[:, None], -nrm, 0.0)
        g[:, d, :, 1] = torch.where(has_above, off_a, 1.0)
        return g.reshape(bsz, d + 1, 2 * n_fam), ids

    def margin(self, x: Tensor, slabs: Tensor, columns: Tensor | None = None) -> Tensor:
        """Distance from points to the nearest plane bounding given cells.

        Parameters
        ----------
        x : (N, D) float Tensor
            Points.
        slabs : (N, F) int64 Tensor
            A cell per point.
        columns : (N, D + 1, 2F) float Tensor, optional
            :meth:`columns` of ``slabs``, where the caller has them already.

        Returns
        -------
        (N,) float Tensor
            Negative where a point lies outside its cell; inf without planes.
        """
        if self.n_families == 0:
            return torch.full((len(x),), float("inf"), dtype=x.dtype, device=x.device)
        g = self.columns(slabs)[0] if columns is None else columns
        val = _slacks(g, x)
        return (val / g[:, :-1].square().sum(1).sqrt().clamp(min=1e-300)).min(1).values


class _EncoderRegions:
    """Constraint columns of regions (cell, pattern) of a graph with an encoder.

    Local columns (those of ``g``): ``2D`` box facets, ``2F`` cell planes (:meth:`EncoderCells.columns`),
    ``N`` neurons, the level set. Global ids follow :class:`ConstraintLayout` with ``P`` encoder
    planes; :meth:`to_global` and :meth:`to_local` translate, given the cells' plane indices.
    """

    def __init__(self, graph: PLGraph, bounds: Tensor, level: float) -> None:
        self.graph, self.bounds, self.level = graph, bounds, level
        self.cells = EncoderCells(graph.encoder, bounds)
        self.layout = ConstraintLayout(D, graph.widths, self.cells.n_planes)
        self.n_box = 2 * D
        self.n_enc = 2 * self.cells.n_families
        self.shift = self.cells.n_planes - self.n_enc  # global - local for neurons and the output
        self.n_local = self.n_box + self.n_enc + graph.n_neurons + 1

    def constraints(self, patterns: Tensor, slabs: Tensor, anchors: Tensor) -> tuple[Tensor, Tensor]:
        """``g`` ``(B, D+1, C)`` (as :func:`region_constraints`, local columns) and the plane
        index ``(B, 2F)`` of every cell column; ``anchors`` ``(B, D)`` lie inside the cells."""
        graph, lay = self.graph, self.layout
        bsz = patterns.shape[0]
        dt, dev = graph.dtype, graph.device
        lo, hi = self.bounds[:, 0], self.bounds[:, 1]
        g = torch.empty(bsz, D + 1, self.n_local, dtype=dt, device=dev)
        ax = torch.arange(D, device=dev)
        box = torch.zeros(D + 1, 2 * D, dtype=dt, device=dev)
        box[ax, 2 * ax] = 1.0
        box[ax, 2 * ax + 1] = -1.0
        box[D, 0::2] = -lo
        box[D, 1::2] = hi
        g[:, :, :self.n_box] = box
        cols, ids = self.cells.columns(slabs)
        g[:, :, self.n_box:self.n_box + self.n_enc] = cols
        maps = graph.region_maps(list(torch.split(patterns, graph.widths, 1)), points=anchors, augmented=True)
        sign = patterns.to(dt) * 2 - 1
        n0 = self.n_box + self.n_enc
        for l, z in enumerate(maps[:-1]):
            c0 = lay.neuron(l) - lay.neuron_offset
            c1 = lay.neuron(l + 1) - lay.neuron_offset
            torch.mul(z, sign[:, None, c0:c1], out=g[:, :, n0 + c0:n0 + c1])
        g[:, :, -1] = -maps[-1][:, :, 0]
        g[:, D, -1] += self.level
        return g, ids

    def to_global(self, c: Tensor, ids: Tensor) -> Tensor:
        """Local columns ``c`` ``(B, ...)`` (-1 kept) of cells with plane indices ``ids`` ``(B, 2F)``."""
        flat = c.reshape(len(c), -1)
        enc = (flat >= self.n_box) & (flat < self.n_box + self.n_enc)
        plane = torch.gather(ids, 1, (flat - self.n_box).clamp(0, max(self.n_enc - 1, 0))) if self.n_enc else flat
        rest = torch.where(flat >= self.n_box + self.n_enc, flat + self.shift, flat)
        out = torch.where(enc, plane + self.n_box, rest)
        return torch.where(flat < 0, flat, out).reshape(c.shape)

    def to_local(self, c: Tensor, ids: Tensor) -> Tensor:
        """Global ids ``c`` ``(B,)`` to local columns of cells ``ids`` ``(B, 2F)``; -1 where a plane
        does not bound the cell."""
        enc = (c >= self.n_box) & (c < self.layout.neuron_offset)
        hit = ids == (c - self.n_box)[:, None]
        col = torch.where(hit.any(1), hit.to(torch.int8).argmax(1) + self.n_box, -1) if self.n_enc else c * 0 - 1
        return torch.where(enc, col, torch.where(c >= self.layout.neuron_offset, c - self.shift, c))

    def global_ids(self, ids: Tensor) -> Tensor:
        """Global id ``(B, C)`` of every local column (a large number for the unused cell columns,
        so that a minimum over ids picks real constraints)."""
        bsz = ids.shape[0]
        dev = ids.device
        big = torch.iinfo(torch.int64).max
        box = torch.arange(self.n_box, device=dev).expand(bsz, -1)
        enc = torch.where(ids >= 0, ids + self.n_box, big)
        rest = torch.arange(self.n_box + self.n_enc, self.n_local, device=dev).expand(bsz, -1) + self.shift
        return torch.cat([box, enc, rest], 1)


def _outgoing(g: Tensor, gid: Tensor, near: Tensor, v: Tensor, s: Tensor, p: Tensor, n_global: int, n_extra: int
              ) -> dict[str, Tensor]:
    """At vertices ``v`` ``(B, D)`` of polygons on ``s``, entered along ``p``: the outgoing edge's
    constraint ``q`` (among the lines through the vertex, the one whose direction away from ``p``
    keeps every other one satisfied; the smallest global id of equal lines), its companion (a
    second constraint on the same line, or -1), the minimum global id of the lines equal to
    ``p``'s, the slack ``val`` ``(B, C)`` and set ``zero`` ``(B, C)`` of constraints through the vertex,
    the other constraints through it (``extra`` ``(B, n_extra)``, -1 padded), ``degenerate``
    (a neuron or the level set through the vertex beyond its edges, or no unique outgoing
    line) and ``fail`` (no candidate)."""
    bsz, _, n_c = g.shape
    dev = g.device
    ar = torch.arange(bsz, device=dev)
    val = _slacks(g, v)
    zero = val < near
    zero[ar, s] = True
    zero[ar, p] = True
    cand = zero.clone()
    cand[ar, s] = False
    cand[ar, p] = False
    count = cand.sum(1)
    q = cand.to(torch.int8).argmax(1)
    comp = torch.full((bsz,), -1, dtype=torch.int64, device=dev)
    pmin = gid[ar, p]
    degenerate = torch.zeros(bsz, dtype=torch.bool, device=dev)
    fail = count == 0
    multi = torch.nonzero(count > 1).squeeze(1)
    if len(multi):
        rq, rc, rp, deg = _resolve(g[multi], gid[multi], cand[multi], s[multi], p[multi])
        q[multi], comp[multi], pmin[multi] = rq, rc, torch.minimum(pmin[multi], rp)
        degenerate[multi] = deg
    others = zero.clone()
    others[ar, s] = False
    others[ar, p] = False
    others[ar, q] = False
    cols = torch.arange(n_c, device=dev)
    degenerate |= (others & (cols >= n_global)).any(1)
    n_other = others.sum(1)
    degenerate |= n_other > n_extra
    k = max(min(int(n_other.max()) if bsz else 0, n_extra), 0)
    extra = torch.full((bsz, k), -1, dtype=torch.int64, device=dev)
    if k:  # only the few corners on further planes pay for the sort
        rows = torch.nonzero(n_other > 0).squeeze(1)
        first = torch.argsort((~others[rows]).to(torch.int8), dim=1, stable=True)[:, :k]
        extra[rows] = torch.where(torch.arange(k, device=dev) < n_other[rows, None], first, -1)
    return {"q": q, "comp": comp, "pmin": pmin, "val": val, "zero": zero, "extra": extra,
            "degenerate": degenerate, "fail": fail}


def _resolve(g: Tensor, gid: Tensor, cand: Tensor, s: Tensor, p: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """:func:`_outgoing` where several constraints pass through a vertex: ``(q, companion, pmin,
    degenerate)`` ``(R,)`` each."""
    r, _, _ = g.shape
    dev, dt = g.device, g.dtype
    eps = 64 * torch.finfo(dt).eps
    big = torch.iinfo(torch.int64).max
    ar = torch.arange(r, device=dev)
    n_cand = cand.sum(1)
    k = int(n_cand.max())
    cols = torch.argsort((~cand).to(torch.int8), dim=1, stable=True)[:, :k]  # candidates first
    ok = torch.arange(k, device=dev) < n_cand[:, None]
    n_s, n_p = _columns(g, s)[:, :D], _columns(g, p)[:, :D]
    n_c = torch.gather(g[:, :D], 2, cols[:, None, :].expand(-1, D, -1)).transpose(1, 2)  # (R, K, D)
    dirs = torch.cross(n_s[:, None].expand_as(n_c), n_c, dim=2)  # the line of each candidate in the plane
    d_p = torch.cross(n_s, n_p, dim=1)
    len_d, len_p = dirs.norm(dim=2), d_p.norm(dim=1)
    len_c = n_c.norm(dim=2)
    flat = len_d <= eps * len_c * n_s.norm(dim=1)[:, None]
    with_p = torch.cross(dirs, d_p[:, None].expand_as(dirs), dim=2).norm(dim=2) <= eps * len_d * len_p[:, None]
    live = ok & ~flat & ~with_p
    side = (dirs * n_p[:, None]).sum(2)
    dirs = dirs * torch.where(side < 0, -1.0, 1.0).to(dt)[:, :, None]
    rate = torch.einsum("rkd,rjd->rkj", dirs, n_c)  # rate of candidate j along candidate k's line
    same = torch.cross(dirs[:, :, None].expand(-1, -1, k, -1), dirs[:, None].expand(-1, k, -1, -1), dim=3
                       ).norm(dim=3) <= eps * len_d[:, :, None] * len_d[:, None, :]
    leaves = (rate < -eps * len_d[:, :, None] * len_c[:, None, :]) & live[:, None, :] & ~same
    valid = live & ~leaves.any(2)
    ids = torch.gather(gid, 1, cols)
    pick = torch.where(valid, ids, big).argmin(1)
    q = cols[ar, pick]
    group = same[ar, pick] & valid
    others = group.clone()
    others[ar, pick] = False
    comp = torch.where(others.any(1), cols[ar, others.to(torch.int8).argmax(1)], -1)
    degenerate = ~valid.any(1) | (valid & ~group).any(1) | (others.sum(1) > 1)
    pmin = torch.where(with_p & ok, ids, big).min(1).values
    return q, comp, pmin, degenerate


def _walk_encoder_polygons(g: Tensor, gid: Tensor, support: Tensor, prev: Tensor, cur: Tensor, n_global: int,
                          tol: float = 0.0, max_edges: int = 256, n_extra: int = 4) -> dict[str, Tensor]:
    """:func:`walk_polygons` for regions of a graph with an encoder, whose planes meet in lines.

    At every vertex the outgoing edge is chosen among all constraints through it
    (:func:`_outgoing`); constraints through a vertex besides its edges are returned per corner
    (``extra``), and an edge's second constraint on the same line (``companion``). ``cur`` only
    places the first vertex, on ``support``, ``prev`` and ``cur``; ``prev`` must be an edge.

    Parameters
    ----------
    g : (B, D+1, C) float Tensor
        Oriented constraints, local columns.
    gid : (B, C) int64 Tensor
        Global id of every column (:meth:`_EncoderRegions.global_ids`): equal lines are named by
        their smallest.
    support, prev, cur : (B,) int64 Tensor
        Local columns.
    n_global : int
        Columns below this are planes of the input space (box facets and encoder planes): through a
        vertex they are resolved; a neuron or the level set through it is a degeneracy.
    tol : float
        Distance under which a plane passes through a vertex.
    max_edges : int
        Longest polygon walked.
    n_extra : int
        Most further constraints through one vertex.

    Returns
    -------
    dict of str to Tensor
        ``edges``, ``companion`` ``(B, L)``, ``extra`` ``(B, L, X)`` (local, -1 padded),
        ``vertices`` ``(B, L, D)``, ``length`` ``(B,)`` (0 where the walk did not close),
        ``degenerate`` ``(B,)``.
    """
    bsz = g.shape[0]
    dev, dt = g.device, g.dtype
    width = min(max_edges, _FIRST_WIDTH)
    edges = torch.full((bsz, width), -1, dtype=torch.int64, device=dev)
    comps = torch.full((bsz, width), -1, dtype=torch.int64, device=dev)
    extras = torch.full((bsz, width, n_extra), -1, dtype=torch.int64, device=dev)
    verts = torch.zeros(bsz, width, D, dtype=dt, device=dev)
    length = torch.zeros(bsz, dtype=torch.int64, device=dev)
    degenerate = torch.zeros(bsz, dtype=torch.bool, device=dev)
    n_x = 0
    idx = torch.arange(bsz, device=dev)
    near = (g[:, 0] * g[:, 0] + g[:, 1] * g[:, 1] + g[:, 2] * g[:, 2]).sqrt_().mul_(tol)
    s, p = support, prev
    ga, gi = g, gid
    rs, rp = _columns(ga, s), _columns(ga, p)
    v = _vertex(rs, rp, _columns(ga, cur))
    end = None
    for step in range(max_edges):
        o = _outgoing(ga, gi, near, v, s, p, n_global, n_extra)
        q = o["q"]
        if end is None:
            end = o["pmin"]
        degenerate[idx[o["degenerate"]]] = True
        if step + 1 > width:
            width = min(2 * width, max_edges)
            edges, comps = _pad(edges, width, -1), _pad(comps, width, -1)
            extras, verts = _pad(extras, width, -1), _pad(verts, width, 0.0)
        edges[idx, step] = q
        comps[idx, step] = o["comp"]
        verts[idx, step] = v
        kx = o["extra"].shape[1]
        if kx:
            extras[idx, step, :kx] = o["extra"]
            n_x = max(n_x, kx)
        closed = (gi[torch.arange(len(q), device=dev), q] == end) & (step > 0)
        if bool(closed.any()):
            length[idx[closed]] = step + 1
        rq = _columns(ga, q)
        d = torch.cross(rs[:, :D], rq[:, :D], dim=1)
        d = torch.where(((rp[:, :D] * d).sum(1) < 0)[:, None], -d, d)
        rate = _rates(ga, d)
        rate.masked_fill_(o["zero"], 0.0)
        speed = rate.neg_().clamp_(min=0).div_(o["val"].clamp(min=torch.finfo(dt).tiny))
        smax, r = speed.max(1)
        go = ~closed & ~o["fail"] & (smax > 0)
        if not bool(go.any()) or step == max_edges - 1:
            break
        keep = torch.nonzero(go).squeeze(1)
        v = _vertex(rs[keep], rq[keep], _columns(ga[keep], r[keep]))
        idx, s, p, end = idx[keep], s[keep], q[keep], end[keep]
        rs, rp, ga, gi, near = rs[keep], rq[keep], ga[keep], gi[keep], near[keep]
    edges[length == 0] = -1
    return {"edges": edges, "companion": comps, "extra": extras[:, :, :n_x], "vertices": verts,
            "length": length, "degenerate": degenerate}


def _jitter(x: Tensor, bounds: Tensor) -> Tensor:
    """Seed points moved off the encoder's planes and the box: seeds on a grid's edges lie on grid
    planes (x_i = k / N and their diagonals), and on a box face such planes cut the same line; a
    step of distinct sizes along the axes (1e-6 of the box) leaves them all."""
    size = bounds[:, 1] - bounds[:, 0]
    step = torch.tensor([0.6180339887, 0.3247179572, 0.8793852416], dtype=x.dtype, device=x.device)[:D] * 1e-6
    return _inside(x + size * step, bounds)


def _inside(x: Tensor, bounds: Tensor) -> Tensor:
    """Points clamped into the box shrunk by 1e-6 of its size."""
    size = bounds[:, 1] - bounds[:, 0]
    return torch.minimum(torch.maximum(x, bounds[:, 0] + 1e-6 * size), bounds[:, 1] - 1e-6 * size)


def _encoder_seed_starts(reg: _EncoderRegions, points: Tensor, tol: float
                         ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """:func:`_seed_starts` for a graph with an encoder: patterns ``(S, N)``, slabs ``(S, F)``,
    anchors ``(S, D)`` (inside the cells) and the first vertex's ``prev``/``cur`` ``(S,)`` (global).

    Seeds are tried region by region: one per region, then a second where the first failed, and
    so on (a fine seed grid puts hundreds of seeds in one region, and building a region's
    constraints with an encoder is the costly step)."""
    net, bounds = reg.graph, reg.bounds
    x0 = _jitter(points, bounds)
    slabs = reg.cells.slabs(x0)
    diag = float((bounds[:, 1] - bounds[:, 0]).norm())
    off = reg.cells.margin(x0, slabs) > 1e-9 * diag
    x0, slabs = x0[off], slabs[off]
    pats = activation_patterns(net, x0)
    dev = points.device
    z = torch.zeros(0, dtype=torch.int64, device=dev)
    if len(x0) == 0:
        return pats, slabs, x0, z, z
    order, group = group_equal_rows(torch.cat([pats.long(), slabs], 1))
    n_groups = int(group.max()) + 1
    start = torch.zeros(n_groups, dtype=torch.int64, device=dev).scatter_reduce_(
        0, group, torch.arange(len(group), device=dev), "amin", include_self=False)
    rank = torch.arange(len(group), device=dev) - start[group]  # position within its region, in seed order
    done = torch.zeros(n_groups, dtype=torch.bool, device=dev)
    q_of = torch.zeros(n_groups, dtype=torch.int64, device=dev)
    r_of, point_of = q_of.clone(), q_of.clone()
    for rnd in range(int(rank.max()) + 1):
        sel = (rank == rnd) & ~done[group]
        if not bool(sel.any()):
            break
        pts = order[sel]
        ok, q, r = _try_seeds(reg, x0[pts], slabs[pts], pats[pts], tol)
        grp = group[sel][ok]
        done[grp] = True
        q_of[grp], r_of[grp], point_of[grp] = q[ok], r[ok], pts[ok]
    keep = point_of[done]
    return pats[keep], slabs[keep], x0[keep], q_of[done], r_of[done]


def _try_seeds(reg: _EncoderRegions, x0: Tensor, slabs: Tensor, pats: Tensor, tol: float
               ) -> tuple[Tensor, Tensor, Tensor]:
    """Seeds whose region's polygon is found from them (``(M,)`` bool) and the first vertex's
    ``prev``/``cur`` (global ids): the point projected onto its region's plane, a ray in the plane
    to the first edge, along it to the next."""
    bounds = reg.bounds
    out = reg.n_local - 1
    oks, qs, rs_ = [], [], []
    row = (D + 1) * reg.n_local * x0.element_size() * 4
    for sl in _chunks(len(pats), row, x0.device):
        g, ids = reg.constraints(pats[sl], slabs[sl], x0[sl])
        x = x0[sl]
        bsz = len(x)
        s = torch.full((bsz,), out, dtype=torch.int64, device=x.device)
        rs = _columns(g, s)
        nrm = rs[:, :D]
        val = (nrm * x).sum(1, keepdim=True) + rs[:, D:]
        x = _inside(x - val / (nrm * nrm).sum(1, keepdim=True) * nrm, bounds)
        inside = (_slacks(g, x)[:, :out] >= 0).all(1)
        axis = nrm.abs().argmin(1)
        d1 = torch.cross(nrm, torch.nn.functional.one_hot(axis, D).to(x.dtype), dim=1)
        q, t1, _ = _first_hit(g, x, d1, s[:, None])
        y = x + t1[:, None] * d1
        # q must be an edge of the polygon: the ray must meet its boundary inside an edge, not at a
        # vertex (where planes of the encoder meet, more than one line passes)
        near = (g[:, 0] * g[:, 0] + g[:, 1] * g[:, 1] + g[:, 2] * g[:, 2]).sqrt_().mul_(tol)
        through = _slacks(g, y).abs() < near
        through[:, out] = False
        d2 = torch.cross(nrm, _columns(g, q)[:, :D], dim=1)
        r, t2, _ = _first_hit(g, y, d2, torch.stack([s, q], 1))
        oks.append(inside & torch.isfinite(t1) & torch.isfinite(t2) & (through.sum(1) <= 1))
        qs.append(reg.to_global(q, ids))
        rs_.append(reg.to_global(r, ids))
    return torch.cat(oks), torch.cat(qs), torch.cat(rs_)


def _encoder_neighbours(reg: _EncoderRegions, g: Tensor, ids: Tensor, key: Tensor, walked: dict[str, Tensor],
                        anchors: Tensor, words: int, close: bool, visited: _Visited | None = None
                        ) -> tuple[Tensor, Tensor, Tensor, int]:
    """:func:`_neighbours` for a graph with an encoder: keys ``[pattern words, slabs, support]``
    (global support), start pairs (global) and anchors of the polygons across every edge, and the
    number of neighbours dropped because no anchor inside their cell was found.

    Across a neuron: its bit flipped. Across an encoder plane (and an edge's companion plane):
    the next slab of its family; the new cell's anchor is the edge's midpoint moved off the edge,
    in the polygon's plane, half way to the nearest other plane. Across a box facet or the level
    set (caps): the support changes as for plain networks. ``walked`` is the walk's output
    (:func:`_walk_encoder_polygons`) with the global ids of its edges and companions added
    (``edges_global``, ``companion_global``)."""
    lay, n_fam = reg.layout, reg.cells.n_families
    dev = key.device
    e, length, verts = walked["edges"], walked["length"], walked["vertices"]
    lmax = e.shape[1]
    ar = torch.arange(lmax, device=dev)
    nxt_i = (ar[None] + 1) % length.clamp(min=1)[:, None]
    f, i = torch.nonzero(ar[None] < length[:, None], as_tuple=True)
    e_g, comp_g = walked["edges_global"], walked["companion_global"]  # global ids, once per polygon
    c_l = e[f, i]
    c, c2, c_next = e_g[f, i], comp_g[f, i], e_g[f, nxt_i[f, i]]
    s_g = key[f, -1]
    kind = lay.kind(c)
    is_neuron = kind == NEURON
    is_facet = kind == FACET
    with_comp = (c2 >= 0) & (lay.kind(c2) == FACET)
    k = key[f].clone()
    wd, mk = bit_values(lay.neuron_index(c).clamp(min=0))
    flip = torch.nonzero(is_neuron).squeeze(1)
    k[flip, wd[flip]] ^= mk[flip]
    for plane, sel in ((c, is_facet), (c2, with_comp)):
        rows = torch.nonzero(sel).squeeze(1)
        pid = plane[rows] - reg.n_box
        fam, rank = reg.cells.family[pid], reg.cells.rank[pid]
        slab = k[rows, words + fam]
        k[rows, words + fam] = torch.where(slab == rank, rank + 1, rank)
    change = ~is_neuron & ~is_facet & close & ((s_g != lay.output) | (c < lay.n_box))
    k[:, -1] = torch.where(change, c, s_g)
    prev = torch.where(change, s_g, c)
    take = is_neuron | is_facet | change
    # regions already walked, and all but one of equal keys, need no anchor (the costly part)
    if visited is not None and bool(take.any()):
        rows = torch.nonzero(take).squeeze(1)
        _, first = _unique_rows(k[rows])
        fresh = torch.zeros_like(take)
        fresh[rows[first]] = True
        r2 = torch.nonzero(fresh).squeeze(1)
        fresh[r2[visited.contains(k[r2], hash_rows(k[r2]))]] = False
        take &= fresh
    anchor = anchors[f].clone()
    moved = torch.nonzero(take & (is_facet | with_comp)).squeeze(1)
    lost = 0
    if len(moved):
        fm, im = f[moved], i[moved]
        mid = (verts[fm, im] + verts[fm, nxt_i[fm, im]]) / 2
        # single columns gathered from g directly (g[fm] would copy every column of every row)
        n_s = g[fm, :D, _local_support(reg, key[fm], ids[fm])]
        n_c = g[fm, :D, c_l[moved]]
        # within the new polygon's plane, away from the edge: across the edge's plane (same support),
        # or into the new face (a cap moving to the neighbouring box facet)
        same = ~change[moved]
        plane_n = torch.where(same[:, None], n_s, n_c)
        w = torch.where(same[:, None], -n_c, n_s)
        u = w - (w * plane_n).sum(1, keepdim=True) / (plane_n * plane_n).sum(1, keepdim=True) * plane_n
        u = u / u.norm(dim=1, keepdim=True)
        slabs = k[moved, words:words + n_fam]
        cell_cols, _ = reg.cells.columns(slabs)
        cols = torch.cat([g[:1, :, :reg.n_box].expand(len(fm), -1, -1), cell_cols], 2)  # box columns: alike in all
        val, rate = _slacks(cols, mid), _rates(cols, u)
        eps = 64 * torch.finfo(u.dtype).eps * _normal_lengths(cols)
        reach = torch.where(rate < -eps, val.clamp(min=0) / (-rate), float("inf")).min(1).values
        reach = torch.minimum(reach, (reg.bounds[:, 1] - reg.bounds[:, 0]).norm())
        a = mid + 0.5 * reach[:, None] * u
        diag = float((reg.bounds[:, 1] - reg.bounds[:, 0]).norm())
        good = (reg.cells.slabs(a) == slabs).all(1) & (reg.cells.margin(a, slabs, cell_cols) > 1e-12 * diag)
        anchor[moved] = a
        bad = moved[~good]
        take[bad] = False
        lost = len(bad)
    return k[take], torch.stack([prev, c_next], 1)[take], anchor[take], lost


def _local_support(reg: _EncoderRegions, key: Tensor, ids: Tensor) -> Tensor:
    """Local column ``(B,)`` of the support stored (globally) in the last column of keys."""
    return reg.to_local(key[:, -1], ids)


def _track_encoder_surface(net: PLGraph, bounds: Tensor, seeds: Tensor, level: float, close: bool, progress: bool,
                           max_edges: int, memory_limit: float | None = None) -> dict[str, Any]:
    """:func:`track_surface` for a graph with an encoder (regions: cell and pattern)."""
    reg = _EncoderRegions(net, bounds, level)
    lay = reg.layout
    n, n_fam = net.n_neurons, reg.cells.n_families
    dev = net.device
    words = n_words(max(n, 1))
    width = words + n_fam + 1
    tol = 256 * torch.finfo(net.dtype).eps * float((bounds[:, 1] - bounds[:, 0]).norm())
    pats, slabs, anchors, prev, cur = _encoder_seed_starts(reg, seeds, tol)
    n_seed_regions = len(pats)
    front_key = torch.cat([pack_bits(pats, words), slabs, torch.full((len(pats), 1), lay.output, device=dev)], 1)
    front_pc = torch.stack([prev, cur], 1)
    front_anchor = anchors
    visited = _Visited(width, dev)
    names = ("key", "edges", "companion", "extra", "vertices", "length", "normal")
    found: dict[str, list[Tensor]] = {k: [] for k in names}
    # constraints and their temporaries, and the walk's per-edge arrays (vertices, ids, extras)
    row = (D + 1) * reg.n_local * net.dtype.itemsize * 4 + _FIRST_WIDTH * (D * net.dtype.itemsize + 8 * 6)
    rounds, failed, walked, degenerate = 0, 0, 0, 0
    n_global = reg.n_box + reg.n_enc
    limit = memory_limit if memory_limit is not None else default_memory_limit()
    kept, need, batch = 0, 0, 0  # bytes of the polygons found so far, expected in all, of a batch's temporaries
    bar = _bar(progress)
    while len(front_key):
        rounds += 1
        front_key, first = _unique_rows(front_key)
        front_pc, front_anchor = front_pc[first], front_anchor[first]
        h = hash_rows(front_key)
        new = ~visited.contains(front_key, h)
        front_key, front_pc, front_anchor, h = front_key[new], front_pc[new], front_anchor[new], h[new]
        if not len(front_key):
            break
        visited.add(front_key, h)
        next_key, next_pc, next_anchor = [], [], []
        for sl in _chunks(len(front_key), row, dev, WALK_CHUNK_BYTES):
            key = front_key[sl]
            patterns = unpack_bits(key[:, :words], torch.arange(n, device=dev))
            g, ids = reg.constraints(patterns, key[:, words:words + n_fam], front_anchor[sl])
            gid = reg.global_ids(ids)
            support = _local_support(reg, key, ids)
            p_l = reg.to_local(front_pc[sl, 0], ids)
            c_l = reg.to_local(front_pc[sl, 1], ids)
            start = (support >= 0) & (p_l >= 0) & (c_l >= 0)
            failed += int((~start).sum())
            key, g, ids, gid, support, p_l, c_l = (t[start] for t in (key, g, ids, gid, support, p_l, c_l))
            anchor = front_anchor[sl][start]
            w = _walk_encoder_polygons(g, gid, support, p_l, c_l, n_global, tol, max_edges)
            degenerate += int(w["degenerate"].sum())
            ok = w["length"] > 0
            failed += int((~ok).sum())
            found["normal"].append(-_columns(g, support)[ok, :D])
            lmax = int(w["length"].max()) if len(key) else 0
            w = {k: (v[:, :lmax] if v.ndim > 1 else v)[ok] for k, v in w.items()}
            key, g, ids, anchor = key[ok], g[ok], ids[ok], anchor[ok]
            found["key"].append(key)
            for name in ("edges", "companion", "extra"):
                w[f"{name}_global"] = reg.to_global(w[name], ids)
                found[name].append(w[f"{name}_global"])
            found["vertices"].append(w["vertices"])
            found["length"].append(w["length"])
            kept += tensors_bytes([found[k][-1] for k in names])
            nk, npc, na, lost = _encoder_neighbours(reg, g, ids, key, w, anchor, words, close, visited)
            failed += lost
            next_key.append(nk)
            next_pc.append(npc)
            next_anchor.append(na)
        walked_now = len(front_key)
        walked += walked_now
        if degenerate or failed:  # the caller falls back to a method that resolves degeneracies
            break
        if bar is not None:
            bar.update(len(front_key))
        front_key, front_pc, front_anchor = torch.cat(next_key), torch.cat(next_pc), torch.cat(next_anchor)
        if len(front_key):
            seen = visited.contains(front_key, hash_rows(front_key))
            front_key, front_pc, front_anchor = front_key[~seen], front_pc[~seen], front_anchor[~seen]
        batch = max(batch, min(WALK_CHUNK_BYTES, row * walked_now))
        need = _check_track_memory(kept + visited.bytes + tensors_bytes((front_key, front_pc, front_anchor)), walked, n,
                                   batch, limit)
    if bar is not None:
        bar.close()
    lmax = max((int(e.shape[1]) for e in found["edges"]), default=0)
    n_x = max((int(e.shape[2]) for e in found["extra"]), default=0)

    def cat(name: str, empty: Tensor, fill: float) -> Tensor:
        parts = found[name]
        if not parts:
            return empty
        if name in ("edges", "companion", "vertices"):
            parts = [_pad(t, lmax, fill) for t in parts]
        if name == "extra":
            parts = [torch.nn.functional.pad(_pad(t, lmax, fill), (0, n_x - t.shape[2]), value=-1) for t in parts]
        return torch.cat(parts)

    i64 = torch.int64
    key = cat("key", torch.zeros(0, width, dtype=i64, device=dev), 0)
    return {
        "key": key,
        "n_neurons": n,
        "slabs": key[:, words:words + n_fam],
        "support": key[:, -1],
        "edges": cat("edges", torch.zeros(0, 0, dtype=i64, device=dev), -1),
        "companion": cat("companion", torch.zeros(0, 0, dtype=i64, device=dev), -1),
        "extra": cat("extra", torch.zeros(0, 0, 0, dtype=i64, device=dev), -1),
        "vertices": cat("vertices", torch.zeros(0, 0, D, dtype=net.dtype, device=dev), 0.0),
        "length": cat("length", torch.zeros(0, dtype=i64, device=dev), 0),
        "normal": cat("normal", torch.zeros(0, D, dtype=net.dtype, device=dev), 0.0),
        "layout": lay,
        "cells": reg.cells,
        "stats": {"seeds": len(seeds), "seed_regions": n_seed_regions, "rounds": rounds,
                  "regions_walked": walked, "failed_walks": failed, "degenerate_polygons": degenerate,
                  "memory_estimate_mb": need / 2**20,
                  "encoder_planes": reg.cells.n_planes},
    }


def _corner_identities(tr: dict[str, Any]) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Vertex names of the corners of polygons walked on a graph with an encoder.

    A corner lies on its polygon's support, on its two edges' constraints and on the polygon's
    ``extra`` constraints there (all the constraints through it); the regions around it differ
    only in those, so the sorted set, the pattern with their neurons' bits cleared and the cell
    with their families' slabs cleared name it alike from every polygon around it.

    Parameters
    ----------
    tr : dict
        :func:`track_surface` of a graph with an encoder.

    Returns
    -------
    polygon, corner : (K,) int64 Tensor
        The corners.
    rows : (K, W) int64 Tensor
        Equal rows name the same vertex.
    constraints : (K, 3) int64 Tensor
        Three constraints through each corner whose planes meet in it alone
        (:func:`_independent_triple`).
    pattern_words : (K, words) int64 Tensor
        The packed pattern with the bits of the neurons through the corner cleared.
    """
    lay: ConstraintLayout = tr["layout"]
    cells: EncoderCells = tr["cells"]
    key, e, m, support, extra = tr["key"], tr["edges"], tr["length"], tr["support"], tr["extra"]
    dev = key.device
    words = n_words(max(lay.n_neurons, 1))
    lmax = e.shape[1]
    ar = torch.arange(lmax, device=dev)
    before = torch.gather(e, 1, (ar[None] - 1) % m.clamp(min=1)[:, None])
    f, i = torch.nonzero(ar[None] < m[:, None], as_tuple=True)
    zs = torch.cat([support[f, None], before[f, i, None], e[f, i, None], extra[f, i]], 1)
    big = torch.iinfo(torch.int64).max
    zs = torch.sort(torch.where(zs < 0, big, zs), 1).values
    pk = key[f, :words].clone()
    sl = key[f, words:words + cells.n_families].clone()
    for col in range(zs.shape[1]):
        c = zs[:, col]
        kind = lay.kind(torch.where(c == big, -1, c))
        rows = torch.nonzero((kind == NEURON) & (c != big)).squeeze(1)
        wd, mk = bit_values(lay.neuron_index(c[rows]))
        pk[rows, wd] &= ~mk
        rows = torch.nonzero((kind == FACET) & (c != big) & (c >= lay.n_box)).squeeze(1)
        sl[rows, cells.family[c[rows] - lay.n_box]] = -1
    return f, i, torch.cat([pk, sl, zs], 1), _independent_triple(zs, lay, cells), pk


def _independent_triple(zs: Tensor, lay: ConstraintLayout, cells: EncoderCells) -> Tensor:
    """Of each row of sorted constraint ids through a vertex ``(K, W)`` (padded with the int64
    maximum), the first three whose planes meet in a point, sorted ``(K, 3)``: a box facet or
    encoder plane is skipped where its normal depends on those already taken (three grid planes
    share a line), neurons and the level set are in general position. Where vertices lie on more
    than three planes this names them as subdivision does (the first independent ids)."""
    big = torch.iinfo(torch.int64).max
    out = zs[:, :3].clone()  # a corner on at most three planes (most of them) is named by those
    if zs.shape[1] > 3:
        many = torch.nonzero(zs[:, 3] != big).squeeze(1)
        if len(many):
            rows = zs[many]
            out[many] = _first_independent(rows[:, :int((rows != big).sum(1).max())], lay, cells)
    return out


def _first_independent(zs: Tensor, lay: ConstraintLayout, cells: EncoderCells) -> Tensor:
    """:func:`_independent_triple` of rows that hold more than three constraints."""
    k, w = zs.shape
    dev = zs.device
    big = torch.iinfo(torch.int64).max
    dt = cells.normals.dtype
    eps = 1e-9
    chosen = torch.full((k, 3), big, dtype=torch.int64, device=dev)
    count = torch.zeros(k, dtype=torch.int64, device=dev)
    n_glob = torch.zeros(k, dtype=torch.int64, device=dev)
    taken = torch.zeros(k, 2, D, dtype=dt, device=dev)
    eye = torch.eye(D, dtype=dt, device=dev)
    for j in range(w):
        c = zs[:, j]
        valid = c != big
        cc = torch.where(valid, c, 0)
        is_box = valid & (cc < lay.n_box)
        is_enc = valid & (cc >= lay.n_box) & (cc < lay.neuron_offset)
        nrm = torch.zeros(k, D, dtype=dt, device=dev)
        nrm = torch.where(is_box[:, None], eye[torch.div(cc.clamp(max=lay.n_box - 1), 2, rounding_mode="floor")], nrm)
        if cells.n_planes:
            pid = (cc - lay.n_box).clamp(0, cells.n_planes - 1)
            nrm = torch.where(is_enc[:, None], cells.normals[cells.family[pid]], nrm)
        glob = is_box | is_enc
        c1 = torch.linalg.cross(taken[:, 0], nrm).norm(dim=1) > eps * nrm.norm(dim=1) * taken[:, 0].norm(dim=1)
        c2 = torch.linalg.det(torch.stack([taken[:, 0], taken[:, 1], nrm], 1)).abs() > eps
        indep = torch.where(n_glob == 0, True, torch.where(n_glob == 1, c1, c2))
        take = valid & (count < 3) & (~glob | indep)
        rows = torch.nonzero(take).squeeze(1)
        chosen[rows, count[rows]] = c[rows]
        g_rows = torch.nonzero(take & glob & (n_glob < 2)).squeeze(1)
        taken[g_rows, n_glob[g_rows]] = nrm[g_rows]
        n_glob = n_glob + (take & glob).long()
        count = count + take.long()
    short = count < 3  # not expected: keep the smallest ids
    chosen[short] = zs[short, :3]
    return torch.sort(chosen, 1).values
