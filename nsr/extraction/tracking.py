"""Surface tracking: the exact level set grown polygon by polygon from seed points.

Every linear region ``R`` of a ReLU network is a convex polyhedron ``{x : G_R [x, 1] >= 0}``
(its neurons on their side of zero, inside the box), and on ``R`` the output is affine, so
the level set inside ``R`` is one convex polygon in the plane ``f_R(x) = level``. The polygon
is walked edge by edge: from a vertex, along the line of its current constraint, to the first
other constraint the line meets. Crossing an edge on neuron ``j``'s hyperplane leads into the
region whose activation pattern differs in ``j`` alone (the other neurons are continuous
there), so the surface is grown breadth-first from polygon to neighbouring polygon and no
region away from the surface is ever touched. With ``close=True`` box caps (the parts of the
box faces where ``f < level``) are grown the same way: a cap polygon lies on a box facet, and
its edges lead to other caps (across neurons and box edges) and to the surface (across the
level set).

The work is linear in the number of polygons, but completeness rests on the seeds: every
connected component of the level set that holds a seed is found, and one without a seed is
missed. :func:`grid_seeds` places seeds where the network changes sign along the edges of a
grid, so a component is found whenever it separates two neighbouring grid points.
``mode="surface"`` of :func:`nsr.extract_mesh` is complete without seeds.

Every function takes a :class:`nsr.pl.PLGraph` (or anything :func:`nsr.pl.as_graph` reads, such
as a :class:`~nsr.networks.PLNetwork`): skip and residual blocks, LeakyReLU/PReLU/``abs``/clamp
neurons (a region's maps multiply each neuron by its slope on the region's side) and output
transforms (track ``g`` at ``graph.level(t)``) work as for plain ReLU MLPs.

Graphs with an encoder (a simplex-grid encoding, issue 14) are walked too: a region is then a cell
of the arrangement of the encoder's planes (at every level, the Kuhn simplex) together with the
pattern, bounded by the box, the planes next to the cell in every family of parallel planes
(:class:`nsr.extraction.encoder_tracking.EncoderCells`) and the neurons; crossing an encoder
plane leads to the neighbouring cell. Grid planes meet three at a time in lines, so those walks
resolve vertices that several planes pass through and name each vertex by all of them (see
:mod:`nsr.extraction.encoder_tracking`).

Constraint ids follow :class:`nsr.pl.layout.ConstraintLayout` (as :class:`nsr.extraction.mesh.ExactMesh`):
``2a``/``2a+1`` box facets ``x_a >= lo_a``/``x_a <= hi_a``, the encoder's planes in the order of
``encoder.planes(lo, hi)`` of the box, then the neurons layer by layer, then the level set.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor

from nsr.extraction.bits import bit_values, group_equal_rows, hash_rows, n_words, pack_bits, unpack_bits
from nsr.extraction.memory import WALK_CHUNK_BYTES, _check_track_memory, _chunks, default_memory_limit, tensors_bytes
from nsr.extraction.progress import _progress
from nsr.pl.graph import PLGraph, as_graph
from nsr.pl.layout import ConstraintLayout

D = 3


def track_graph(net: object) -> PLGraph:
    """The :class:`PLGraph` track mode reads (``net`` itself when it is one).

    Parameters
    ----------
    net : PLGraph, PLNetwork or network
        Anything :func:`nsr.pl.as_graph` reads.

    Returns
    -------
    PLGraph

    Examples
    --------
    >>> from nsr.networks import octahedron_network
    >>> from nsr.extraction.tracking import track_graph
    >>> track_graph(octahedron_network(0.5)).widths
    [6]
    """
    return as_graph(net)


def activation_patterns(net: PLGraph, x: Tensor) -> Tensor:
    """Activation pattern (neuron > 0) of every hidden neuron at points.

    Parameters
    ----------
    net : PLGraph or PLNetwork
        The network, ``N`` hidden neurons.
    x : (M, D) float Tensor
        Points, in the network's dtype and on its device.

    Returns
    -------
    (M, N) bool Tensor
        Layers in order.

    Examples
    --------
    >>> import torch
    >>> from nsr.networks import octahedron_network
    >>> net = octahedron_network(0.5)  # |x| + |y| + |z| - 0.5, hidden neurons x, y, z, 10 - x, 10 - y, 10 - z
    >>> box = torch.tensor([[-1.0, 1.0]] * 3, dtype=torch.float64)
    >>> from nsr.extraction.tracking import activation_patterns
    >>> activation_patterns(net, torch.tensor([[0.1, -0.2, 0.3]], dtype=torch.float64))
    tensor([[ True, False,  True,  True,  True,  True]])
    """
    out = as_graph(net).patterns(x)
    return torch.cat(out, 1) if out else torch.zeros(len(x), 0, dtype=torch.bool, device=x.device)


def region_constraints(net: PLGraph, patterns: Tensor, bounds: Tensor, level: float) -> Tensor:
    """Oriented constraints of linear regions, ``(B, D + 1, C)`` with ``C = 2D + N + 1``.

    ``patterns`` ``(B, N)`` bool. Column ``c`` (numbered by :class:`ConstraintLayout`) holds
    ``(a, b)`` with ``a . x + b >= 0`` on the region: box facets, neurons on their side (``z``
    if active, ``-z`` if not) and the level set as ``level - g`` (the side a cap lies on; a
    surface polygon lies on it). The neurons' maps come from :meth:`PLGraph.region_maps`: every
    block of every source, each neuron times its slope on the region's side.

    Parameters
    ----------
    net : PLGraph or PLNetwork
        The network (3 inputs), ``N`` hidden neurons, no encoder.
    patterns : (B, N) bool Tensor
        Activation patterns of ``B`` regions.
    bounds : (D, 2) float Tensor
        The box.
    level : float
        The level set.

    Returns
    -------
    (B, D + 1, C) float Tensor
        Columns: ``2D`` box facets (``x_i - lo_i``, ``hi_i - x_i``), ``N`` neurons, then the level set.

    Examples
    --------
    >>> import torch
    >>> from nsr.networks import octahedron_network
    >>> net = octahedron_network(0.5)  # |x| + |y| + |z| - 0.5, hidden neurons x, y, z, 10 - x, 10 - y, 10 - z
    >>> box = torch.tensor([[-1.0, 1.0]] * 3, dtype=torch.float64)
    >>> from nsr.extraction.tracking import activation_patterns, region_constraints
    >>> x = torch.tensor([[0.1, -0.2, 0.3]], dtype=torch.float64)
    >>> g = region_constraints(net, activation_patterns(net, x), box, 0.0)
    >>> g.shape
    torch.Size([1, 4, 13])
    >>> slack = (torch.cat([x, torch.ones(1, 1, dtype=torch.float64)], 1) @ g[0])
    >>> bool((slack[0, :12] > 0).all()), round(float(slack[0, 12]), 6)  # inside its region; level - f = -0.1
    (True, -0.1)
    """
    graph = track_graph(net)
    if graph.encoder is not None:
        raise ValueError("region_constraints reads regions of networks without an encoder; a region of a network "
                         "with one is a cell of the encoder's planes and a pattern (track_surface reads those)")
    lay = ConstraintLayout.of(graph)
    bsz = patterns.shape[0]
    dt, dev = graph.dtype, graph.device
    lo, hi = bounds[:, 0], bounds[:, 1]
    facets = torch.zeros(D + 1, 2 * D, dtype=dt, device=dev)
    ax = torch.arange(D, device=dev)
    facets[ax, 2 * ax] = 1.0
    facets[ax, 2 * ax + 1] = -1.0
    facets[D, 0::2] = -lo
    facets[D, 1::2] = hi
    g = torch.empty(bsz, D + 1, lay.n_constraints, dtype=dt, device=dev)
    g[:, :, :lay.n_box] = facets
    # (B, D+1, n_l) per layer (per group of regions on wide networks), then the output; the maps
    # multiply by the slopes (0/1 for ReLU), never by (sign + 1) / 2, which would round
    per_layer = list(torch.split(patterns, graph.widths, 1))
    groups = _prefix_groups(graph, per_layer)
    maps = graph.region_maps(per_layer, augmented=True, groups=groups)
    sign = patterns.to(dt) * 2 - 1  # (B, N): +1 active, -1 inactive
    for l, z in enumerate(maps):
        if groups is not None:
            z = z.index_select(0, groups[l][1]) if len(z) > 1 else z.expand(bsz, -1, -1)
        if l == len(maps) - 1:  # the output (broadcast from one row when there is no hidden layer)
            g[:, :, lay.output:lay.output + 1] = -z
        else:
            c0, c1 = lay.neuron(l), lay.neuron(l + 1)
            torch.mul(z, sign[:, None, c0 - lay.neuron_offset:c1 - lay.neuron_offset], out=g[:, :, c0:c1])
    g[:, D, lay.output] += level
    return g


# A layer's maps are shared by regions with equal earlier patterns when its GEMM costs at least
# this many multiply-adds per region (grouping costs a hash and a sort of the patterns).
_GROUP_MIN_MACS = 128 * 128


def _shares_maps(graph: PLGraph) -> bool:
    """Whether some layer's GEMM is worth sharing among regions (:func:`_prefix_groups`)."""
    n_in = [sum(graph.widths[k] for k in graph.affine(l).sources if k >= 0) for l in range(graph.n_layers + 1)]
    return max((n * w for n, w in zip(n_in[1:], (graph.widths + [1])[1:], strict=True)), default=0) >= _GROUP_MIN_MACS


def _prefix_groups(graph: PLGraph, patterns: list[Tensor]) -> list[tuple[Tensor, Tensor]] | None:
    """For each map of :meth:`PLGraph.region_maps`, the groups of regions that share the
    patterns of every earlier layer: ``(rep, inv)`` per entry (see its ``groups``), or ``None``
    where no layer's GEMM is worth sharing (narrow networks)."""
    if not patterns or not _shares_maps(graph):
        return None
    dev = patterns[0].device
    bsz = patterns[0].shape[0]
    inv = torch.zeros(bsz, dtype=torch.int64, device=dev)
    groups = [(inv[:1], inv)]
    for l in range(graph.n_layers - 1):
        rows = torch.cat([inv[:, None], pack_bits(patterns[l], n_words(max(graph.widths[l], 1)))], 1)
        order, gid = group_equal_rows(rows)
        inv = torch.empty_like(gid).scatter_(0, order, gid)
        first = torch.ones(len(gid), dtype=torch.bool, device=dev)
        first[1:] = gid[1:] != gid[:-1]
        groups.append((order[first], inv))
    every = torch.arange(bsz, device=dev)  # the output's map: regions differ in some earlier layer
    groups.append((every, every))
    return groups


def _columns(g: Tensor, c: Tensor) -> Tensor:
    """``g`` ``(B, D+1, C)``, ``c`` ``(B,)`` -> ``(B, D+1)``."""
    return torch.gather(g, 2, c[:, None, None].expand(-1, D + 1, 1)).squeeze(2)


def _vertex(a: Tensor, b: Tensor, c: Tensor) -> Tensor:
    """Intersection of three planes ``n . x + o = 0`` given as ``(B, D+1)`` rows: Cramer's
    rule and one step of iterative refinement on the residuals (which brings |f| at the
    vertices of ill-conditioned triples from ~4e-15 down to rounding of the residual)."""
    na, nb, nc = a[:, :D], b[:, :D], c[:, :D]
    bc, ca, ab = torch.cross(nb, nc, dim=1), torch.cross(nc, na, dim=1), torch.cross(na, nb, dim=1)
    det = (na * bc).sum(1, keepdim=True)
    x = -(a[:, D:] * bc + b[:, D:] * ca + c[:, D:] * ab) / det
    ra = (na * x).sum(1, keepdim=True) + a[:, D:]
    rb = (nb * x).sum(1, keepdim=True) + b[:, D:]
    rc = (nc * x).sum(1, keepdim=True) + c[:, D:]
    return x - (ra * bc + rb * ca + rc * ab) / det


def _rates(g: Tensor, d: Tensor) -> Tensor:
    """``d . a_c`` of every constraint ``(B, C)`` for directions ``d`` ``(B, D)``: three fused
    row updates, about twice as fast on CPU as a batched (1 x D+1) @ (D+1 x C) product (which
    costs as much as a (2 x D+1) one: where two rows are needed, bmm wins)."""
    out = g[:, 0] * d[:, 0:1]
    for k in range(1, D):
        out.addcmul_(g[:, k], d[:, k:k + 1])
    return out


def _normal_lengths(g: Tensor) -> Tensor:
    """``|a_c|`` of every constraint ``(B, C)``: by fused row updates, because a norm over dim 1
    of ``(B, D+1, C)`` (not the innermost) is ~14x slower on CPU (20,000 x 150 columns: 1.45 s
    against 0.10 s)."""
    out = g[:, 0] * g[:, 0]
    for k in range(1, D):
        out.addcmul_(g[:, k], g[:, k])
    return out.sqrt_()


def _slacks(g: Tensor, x: Tensor) -> Tensor:
    """``a_c . x + b_c`` of every constraint ``(B, C)`` at points ``x`` ``(B, D)``."""
    return _rates(g, x).add_(g[:, D])


def _first_hit(g: Tensor, x: Tensor, d: Tensor, exclude: Tensor, near: Tensor | None = None
               ) -> tuple[Tensor, Tensor, Tensor]:
    """First constraint met by the ray ``x + t d``, ``t > 0``: ``(index, t, degenerate)``;
    ``t`` is inf where the ray meets none. ``exclude`` ``(B, K)``: constraints the ray lies
    on. ``near`` ``(B, C)``: slack below which a constraint counts as passing through ``x``;
    ``degenerate`` ``(B,)`` flags points where one that is not excluded does."""
    one = torch.ones(len(x), 1, dtype=x.dtype, device=x.device)
    pts = torch.stack([torch.cat([x, one], 1), torch.cat([d, 0 * one], 1)], 1)  # (B, 2, D+1)
    vr = torch.bmm(pts, g)  # (B, 2, C): reading g once for both rows
    val, rate = vr[:, 0], vr[:, 1]
    if near is None:
        degenerate = torch.zeros(len(x), dtype=torch.bool, device=x.device)
    else:
        degenerate = (val < near).scatter_(1, exclude, False).any(1)
    rate.scatter_(1, exclude, 0.0)
    # the largest closing speed per unit of slack is the first hit (no inf/where temporaries)
    speed = rate.neg_().clamp_(min=0).div_(val.clamp_(min=torch.finfo(val.dtype).tiny))
    smax, idx = speed.max(1)
    return idx, 1.0 / smax, degenerate


# Walks go first among this many constraints nearest to their start (see _walk_nearest).
CANDIDATES = 64

# Per-edge outputs of the walks start this wide and double as polygons grow: most polygons have a
# handful of edges, and buffers max_edges wide would dominate a batch's memory (and so shrink it).
_FIRST_WIDTH = 16


def walk_polygons(g: Tensor, support: Tensor, prev: Tensor, cur: Tensor, tol: float = 0.0, max_edges: int = 256,
                  candidates: int | None = CANDIDATES) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Walk the polygons of regions around their boundary.

    ``g`` ``(B, D+1, C)`` oriented constraints; the polygon lies on constraint ``support``
    ``(B,)`` and has a vertex where the lines of ``prev`` and ``cur`` ``(B,)`` meet. The walk
    goes along ``cur`` away from ``prev`` and ends on ``prev``. Returns ``edges`` ``(B, L)``
    (the constraint of each edge, -1 padded), ``vertices`` ``(B, L, D)`` (vertex ``i`` starts
    edge ``i``), ``length`` ``(B,)`` (0 where the walk did not close) and ``degenerate``
    ``(B,)``: a vertex lies within ``tol`` of a fourth constraint's plane, so its identity
    by three constraints is ambiguous.

    Parameters
    ----------
    g : (B, D+1, C) float Tensor
        Oriented constraints (:func:`region_constraints`).
    support : (B,) int64 Tensor
        The constraint the polygon lies on.
    prev, cur : (B,) int64 Tensor
        Two constraints whose lines meet at a vertex of the polygon.
    tol : float
        Distance under which a fourth plane makes a vertex degenerate.
    max_edges : int
        Longest polygon walked.
    candidates : int, optional
        Walk first among the ``candidates`` constraints nearest to the start vertex only, and
        keep that walk where it provably equals the full one (see :func:`_walk_nearest`); the
        others, and every walk when ``None`` or when ``C`` is not much larger, go over all ``C``.

    Returns
    -------
    edges : (B, L) int64 Tensor
    vertices : (B, L, D) float Tensor
    length : (B,) int64 Tensor
    degenerate : (B,) bool Tensor

    Examples
    --------
    The octant ``x, z > 0 > y`` holds one triangle of the octahedron's surface:

    >>> import torch
    >>> from nsr.networks import octahedron_network
    >>> net = octahedron_network(0.5)  # |x| + |y| + |z| - 0.5, hidden neurons x, y, z, 10 - x, 10 - y, 10 - z
    >>> box = torch.tensor([[-1.0, 1.0]] * 3, dtype=torch.float64)
    >>> from nsr.extraction.tracking import activation_patterns, region_constraints, walk_polygons
    >>> g = region_constraints(net, activation_patterns(net, torch.tensor([[0.1, -0.2, 0.3]], dtype=torch.float64)),
    ...                        box, 0.0)
    >>> one = lambda i: torch.tensor([i])
    >>> edges, vertices, length, degenerate = walk_polygons(g, one(12), one(7), one(8), max_edges=8)
    >>> length, edges[0, :3], degenerate  # the edges lie on z = 0, x = 0, y = 0 (columns 8, 6, 7)
    (tensor([3]), tensor([8, 6, 7]), tensor([False]))
    >>> vertices[0, :3] + 0.0
    tensor([[ 0.5000,  0.0000,  0.0000],
            [ 0.0000, -0.5000,  0.0000],
            [ 0.0000,  0.0000,  0.5000]], dtype=torch.float64)
    """
    if candidates is not None and g.shape[2] > 2 * candidates and g.shape[0]:
        return _walk_nearest(g, support, prev, cur, tol, max_edges, candidates)
    return _walk_all(g, support, prev, cur, tol, max_edges)


def _walk_all(g: Tensor, support: Tensor, prev: Tensor, cur: Tensor, tol: float, max_edges: int
              ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """:func:`walk_polygons` over every constraint."""
    bsz = g.shape[0]
    dev, dt = g.device, g.dtype
    width = min(max_edges, _FIRST_WIDTH)
    edges = torch.full((bsz, width), -1, dtype=torch.int64, device=dev)
    verts = torch.zeros(bsz, width, D, dtype=dt, device=dev)
    length = torch.zeros(bsz, dtype=torch.int64, device=dev)
    degenerate = torch.zeros(bsz, dtype=torch.bool, device=dev)
    idx = torch.arange(bsz, device=dev)
    end, s, p, q = prev, support, prev, cur
    ga = g
    # (B, C): slack of a plane at distance tol (summed by hand: a strided norm is slow)
    near = (g[:, 0] * g[:, 0] + g[:, 1] * g[:, 1] + g[:, 2] * g[:, 2]).sqrt_().mul_(tol)
    rs, rp, rq = _columns(ga, s), _columns(ga, p), _columns(ga, q)
    v = _vertex(rs, rp, rq)
    for step in range(max_edges - 1):
        if step + 2 > width:
            width = min(2 * width, max_edges)
            edges, verts = _pad(edges, width, -1), _pad(verts, width, 0.0)
        edges[idx, step] = q
        verts[idx, step] = v
        d = torch.cross(rs[:, :D], rq[:, :D], dim=1)
        d = torch.where(((rp[:, :D] * d).sum(1) < 0)[:, None], -d, d)
        r, t, deg = _first_hit(ga, v, d, torch.stack([s, p, q], 1), near)
        degenerate[idx[deg]] = True
        rr = _columns(ga, r)
        v = _vertex(rs, rq, rr)
        closed = (r == end) & torch.isfinite(t)  # no hit: argmax is 0, which may be end
        if bool(closed.any()):
            fin = idx[closed]
            edges[fin, step + 1] = end[closed]
            verts[fin, step + 1] = v[closed]
            length[fin] = step + 2
            # the closing vertex is not the start of a step: check its slack here
            c = torch.nonzero(closed).squeeze(1)
            _, _, deg = _first_hit(ga[c], v[c], d[c], torch.stack([s[c], q[c], r[c]], 1), near[c])
            degenerate[fin[deg]] = True
        go = ~closed & torch.isfinite(t)
        if not bool(go.any()):
            break
        p, q, rp, rq = q, r, rq, rr
        if not bool(go.all()):
            keep = torch.nonzero(go).squeeze(1)
            idx, end, s, p, q, v = idx[keep], end[keep], s[keep], p[keep], q[keep], v[keep]
            rs, rp, rq, ga, near = rs[keep], rp[keep], rq[keep], ga[keep], near[keep]
    edges[length == 0] = -1
    return edges, verts, length, degenerate


def _nearest(dist: Tensor, k: int, partition: bool | None = None) -> tuple[Tensor, Tensor]:
    """The ``k`` smallest entries of each row of ``dist`` ``(B, C)``, ``C > k``: their columns
    ``(B, k)`` in increasing order of column, and the smallest entry left out ``(B,)``. Every
    column left out is at least that entry (ties at it may go either way). A selection, not a
    sort: on CPU numpy's ``argpartition`` (about 3x faster than a sorted ``topk`` on 263 columns),
    elsewhere an unsorted ``topk`` of ``k + 1`` whose largest is the one left out (``partition``
    picks one: ``None`` by the device).

    Examples
    --------
    >>> import torch
    >>> sel, cut = _nearest(torch.tensor([[5.0, 1.0, 4.0, 2.0, 3.0]], dtype=torch.float64), 3)
    >>> sel.tolist(), cut.tolist()
    ([[1, 3, 4]], [4.0])
    """
    if partition is None:
        partition = dist.device.type == "cpu"
    if partition:
        part = torch.from_numpy(np.argpartition(dist.detach().numpy(), k, axis=1))
        sel, out = part[:, :k], part[:, k:k + 1]
    else:
        vals, idx = torch.topk(dist, k + 1, dim=1, largest=False, sorted=False)
        drop = vals.argmax(1, keepdim=True)
        out = idx.gather(1, drop)
        keep = torch.ones_like(idx, dtype=torch.bool).scatter_(1, drop, False)
        sel = idx[keep].view(-1, k)
    return torch.sort(sel, 1)[0], dist.gather(1, out).squeeze(1)


def _walk_nearest(g: Tensor, support: Tensor, prev: Tensor, cur: Tensor, tol: float, max_edges: int, k: int
                  ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """:func:`walk_polygons` among the ``k`` constraints nearest to each start vertex ``v0``.

    A wide network's region has one constraint per neuron, but its polygon meets a handful: on
    a trained 4x256 (1,031 constraints) the planes within reach of a polygon (closer to ``v0``
    than its farthest vertex) number 8 at the median and 49 at most. The walk among the nearest
    ``k`` gives a polygon ``P_k`` that contains the true one; it *is* the true one when every
    plane left out lies farther from ``v0`` than ``R + tol``, ``R`` the largest distance from
    ``v0`` to a vertex of ``P_k``: such a plane misses the ball that holds ``P_k`` (``v0`` is on
    its inner side), so it cuts nothing, and no vertex lies within ``tol`` of it (the
    degeneracy test sees what the full walk sees). Constraints keep their order, so ties break
    as in the full walk. Rows where the test fails (or the walk does not close) are walked
    again over all constraints.
    """
    dt = g.dtype
    ids = torch.stack([support, prev, cur], 1)
    rows = [_columns(g, c) for c in (support, prev, cur)]
    v0 = _vertex(*rows)
    # distance of v0 to every plane (negative: v0 outside, which the selection keeps)
    dist = _slacks(g, v0).div_(_normal_lengths(g).clamp_(min=torch.finfo(dt).tiny))
    dist.scatter_(1, ids, -math.inf)
    sel, cut = _nearest(dist, k)
    sub = torch.gather(g, 2, sel[:, None, :].expand(-1, g.shape[1], -1))
    local = torch.searchsorted(sel, ids)
    edges, verts, length, degenerate = _walk_all(sub, local[:, 0], local[:, 1], local[:, 2], tol, max_edges)
    edges = torch.where(edges >= 0, torch.gather(sel, 1, edges.clamp(min=0)), edges)
    valid = torch.arange(edges.shape[1], device=g.device)[None] < length[:, None]
    reach = ((verts - v0[:, None]).square().sum(2).sqrt() * valid).amax(1) if edges.shape[1] else cut * 0
    # relative slack for the rounding of the distances themselves
    scale = torch.finfo(dt).eps * 64 * (1.0 + v0.abs().amax(1))
    redo = torch.nonzero((length == 0) | ~(cut > reach + tol + scale)).squeeze(1)
    if len(redo):
        e2, v2, m2, d2 = _walk_all(g[redo], support[redo], prev[redo], cur[redo], tol, max_edges)
        width = max(edges.shape[1], e2.shape[1])
        edges, e2 = _pad(edges, width, -1), _pad(e2, width, -1)
        verts, v2 = _pad(verts, width, 0.0), _pad(v2, width, 0.0)
        edges[redo], verts[redo], length[redo], degenerate[redo] = e2, v2, m2, d2
    return edges, verts, length, degenerate


def grid_seeds(net: PLGraph, bounds: Tensor, resolution: int, level: float = 0.0, iterations: int = 40
               ) -> Tensor:
    """Seed points on the level set: on every edge of a ``resolution``-cells-per-axis grid
    whose end values straddle ``level``, a crossing point. ``(M, D)``.

    The crossing is found by regula falsi (Illinois) along the edge: ``f`` is piecewise
    linear there, so once the bracket lies in one linear piece the next step lands on the
    level set. A linearly interpolated point would often lie in a region that the surface
    does not cross (a different piece of the edge), and its seed would be lost.

    Parameters
    ----------
    net : PLGraph or PLNetwork
        The network (3 inputs); its piecewise-affine output ``g`` is seeded.
    bounds : (D, 2) float Tensor
        The box, in the network's dtype and on its device.
    resolution : int
        Grid cells per axis.
    level : float
        The level set.
    iterations : int
        Regula falsi steps per edge.

    Returns
    -------
    (M, D) float Tensor
        One point per crossing grid edge.

    Examples
    --------
    >>> import torch
    >>> from nsr.networks import octahedron_network
    >>> net = octahedron_network(0.5)  # |x| + |y| + |z| - 0.5, hidden neurons x, y, z, 10 - x, 10 - y, 10 - z
    >>> box = torch.tensor([[-1.0, 1.0]] * 3, dtype=torch.float64)
    >>> from nsr.extraction.tracking import grid_seeds
    >>> seeds = grid_seeds(net, box, resolution=4)
    >>> seeds.shape, float(net(seeds).abs().max()) < 1e-12
    (torch.Size([30, 3]), True)
    """
    net = as_graph(net)
    n = resolution + 1
    axes = [torch.linspace(float(bounds[a, 0]), float(bounds[a, 1]), n, dtype=net.dtype, device=net.device)
            for a in range(D)]
    pts = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(-1, D)
    f = _values(net, pts, level).reshape(n, n, n)
    pts = pts.reshape(n, n, n, D)
    a_pts, b_pts, fa, fb = [], [], [], []
    for ax in range(D):
        f0, f1 = f.narrow(ax, 0, n - 1), f.narrow(ax, 1, n - 1)
        cross = (f0 > 0) != (f1 > 0)
        a_pts.append(pts.narrow(ax, 0, n - 1)[cross])
        b_pts.append(pts.narrow(ax, 1, n - 1)[cross])
        fa.append(f0[cross])
        fb.append(f1[cross])
    a, b, va, vb = torch.cat(a_pts), torch.cat(b_pts), torch.cat(fa), torch.cat(fb)
    tol = 16 * torch.finfo(f.dtype).eps * float(f.abs().max()) if f.numel() else 0.0
    out = (a + b) / 2
    idx = torch.arange(len(a), device=a.device)
    side = torch.zeros(len(a), dtype=torch.int8, device=a.device)  # end replaced last: -1 a, +1 b
    for _ in range(iterations):
        t = (va / (va - vb)).clamp(0.0, 1.0)[:, None]
        x = a + t * (b - a)
        vx = _values(net, x, level)
        out[idx] = x
        go = vx.abs() > tol
        if not bool(go.any()):
            break
        with_a = (vx > 0) == (va > 0)  # x replaces the end of its own sign
        # Illinois: halve the value kept at the other end when one end is replaced twice
        vb = torch.where(with_a & (side == -1), vb / 2, vb)
        va = torch.where(~with_a & (side == 1), va / 2, va)
        a = torch.where(with_a[:, None], x, a)
        va = torch.where(with_a, vx, va)
        b = torch.where(with_a[:, None], b, x)
        vb = torch.where(with_a, vb, vx)
        side = torch.where(with_a, -1, 1).to(torch.int8)
        idx, a, b, va, vb, side = idx[go], a[go], b[go], va[go], vb[go], side[go]
    return out


def _values(graph: PLGraph, x: Tensor, level: float) -> Tensor:
    """``g(x) - level`` ``(M,)``, in chunks of the widest layer's temporaries."""
    out = torch.empty(x.shape[0], dtype=x.dtype, device=x.device)
    for sl in _chunks(x.shape[0], x.element_size() * max(graph.widths, default=1), x.device):
        out[sl] = graph(x[sl])
    if level:
        out -= level
    return out


def _seed_starts(net: PLGraph, points: Tensor, bounds: Tensor, level: float
                 ) -> tuple[Tensor, Tensor, Tensor]:
    """Regions of seed points whose polygon is not empty, and a vertex of it.

    Each point is projected onto its region's plane (and back into the box); if the
    projection lies in the region, a ray in the plane meets some constraint ``q`` and the
    line of ``q`` meets another, ``r``: the polygon has the vertex ``(q, r)``. Every point is
    tried, and only then are regions made unique: a region's first seed may fail (e.g. a
    point on a box face projected just outside) where another succeeds. Returns patterns
    ``(S, N)`` bool and ``prev``/``cur`` ``(S,)``.
    """
    out = ConstraintLayout.of(net).output
    pats = activation_patterns(net, points)
    keep_p = [pats[:0]]
    keep_q = [torch.zeros(0, dtype=torch.int64, device=points.device)]
    keep_r = [keep_q[0]]
    row = (D + 1) * (out + 1) * points.element_size()
    for sl in _chunks(len(pats), row, points.device):
        g = region_constraints(net, pats[sl], bounds, level)
        x = points[sl]
        bsz = len(x)
        s = torch.full((bsz,), out, dtype=torch.int64, device=x.device)
        rs = _columns(g, s)
        nrm = rs[:, :D]
        val = (nrm * x).sum(1, keepdim=True) + rs[:, D:]
        x = x - val / (nrm * nrm).sum(1, keepdim=True) * nrm
        x = torch.minimum(torch.maximum(x, bounds[:, 0]), bounds[:, 1])
        inside = (_slacks(g, x).index_fill(1, torch.tensor([out], device=x.device), 0.0) >= 0).all(1)
        axis = nrm.abs().argmin(1)
        d1 = torch.cross(nrm, torch.nn.functional.one_hot(axis, D).to(x.dtype), dim=1)
        q, t1, _ = _first_hit(g, x, d1, s[:, None])
        y = x + t1[:, None] * d1
        d2 = torch.cross(nrm, _columns(g, q)[:, :D], dim=1)
        r, t2, _ = _first_hit(g, y, d2, torch.stack([s, q], 1))
        ok = inside & torch.isfinite(t1) & torch.isfinite(t2)
        keep_p.append(pats[sl][ok])
        keep_q.append(q[ok])
        keep_r.append(r[ok])
    pats, first = _unique_rows(torch.cat(keep_p))
    return pats, torch.cat(keep_q)[first], torch.cat(keep_r)[first]


def _unique_rows(rows: Tensor) -> tuple[Tensor, Tensor]:
    """Distinct rows and the index of a first occurrence of each."""
    if len(rows) == 0:
        return rows, torch.zeros(0, dtype=torch.int64, device=rows.device)
    order, gid = group_equal_rows(rows.long() if rows.dtype == torch.bool else rows)
    first = torch.ones(len(gid), dtype=torch.bool, device=rows.device)
    first[1:] = gid[1:] != gid[:-1]
    idx = order[first]
    return rows[idx], idx


class _Visited:
    """Set of polygon keys (packed pattern words + support), exact: hashes index the rows
    and equal hashes are confirmed on the rows themselves."""

    def __init__(self, width: int, device: torch.device) -> None:
        self.h = torch.zeros(0, dtype=torch.int64, device=device)
        self.rows = torch.zeros(0, width, dtype=torch.int64, device=device)

    def contains(self, rows: Tensor, h: Tensor) -> Tensor:
        if len(self.h) == 0:
            return torch.zeros(len(rows), dtype=torch.bool, device=rows.device)
        pos = torch.searchsorted(self.h, h).clamp(max=len(self.h) - 1)
        hit = self.h[pos] == h
        same = hit & (self.rows[pos] == rows).all(1)
        if bool((hit & ~same).any()):
            raise RuntimeError("64-bit hash collision between two polygon keys; rerun with mode='surface'")
        return same

    @property
    def bytes(self) -> int:
        return tensors_bytes((self.h, self.rows))

    def add(self, rows: Tensor, h: Tensor) -> None:
        allh = torch.cat([self.h, h])
        order = torch.argsort(allh)
        self.h = allh[order]
        self.rows = torch.cat([self.rows, rows])[order]


def track_surface(net: PLGraph, bounds: Tensor, seeds: Tensor, *, level: float = 0.0, close: bool = False,
                  progress: bool = False, max_edges: int = 256, memory_limit: float | None = None
                  ) -> dict[str, Any]:
    """Grow the polygons of the level set (and, with ``close``, the box caps) from seed points.

    ``net`` and ``bounds`` ``(D, 2)`` share dtype and device; ``seeds`` ``(M, D)``. Returns a
    dict of tensors: ``key`` ``(P, W + 1)`` (the region's pattern packed in ``W`` words, read by
    :func:`track_patterns`, and the support), ``support`` ``(P,)`` (the level-set
    constraint for surface polygons, a box facet for caps), ``edges`` ``(P, L)`` constraint per
    edge, ``vertices`` ``(P, L, D)``, ``length`` ``(P,)`` and ``normal`` ``(P, D)`` (the plane's
    normal pointing from ``f < level`` to ``f > level``, outward for caps), plus counts in
    ``stats``.

    Parameters
    ----------
    net : PLGraph or PLNetwork
        The network (3 inputs), ``N`` hidden neurons; its piecewise-affine output ``g`` is tracked
        (for a graph with an output transform, pass ``level=graph.level(t)``). With an encoder
        the result also holds ``slabs`` ``(P, F)`` (each polygon's cell), ``companion`` ``(P, L)``
        (a second constraint on an edge's line, -1 if none), ``extra`` ``(P, L, X)`` (further
        constraints through each vertex), ``layout`` and ``cells``.
    bounds : (D, 2) float Tensor
        The box.
    seeds : (M, D) float Tensor
        Points on the level set (e.g. :func:`grid_seeds`).
    level : float
        The level set.
    close : bool
        Also grow the caps where the surface leaves the box.
    progress : bool
        Show a progress bar.
    max_edges : int
        Longest polygon walked.

    Returns
    -------
    dict of str to Any
        The tensors above and ``stats``.

    Examples
    --------
    The octahedron's surface is 8 triangles, one per octant:

    >>> import torch
    >>> from nsr.networks import octahedron_network
    >>> net = octahedron_network(0.5)  # |x| + |y| + |z| - 0.5, hidden neurons x, y, z, 10 - x, 10 - y, 10 - z
    >>> box = torch.tensor([[-1.0, 1.0]] * 3, dtype=torch.float64)
    >>> from nsr.extraction.tracking import grid_seeds, track_surface
    >>> found = track_surface(net, box, grid_seeds(net, box, resolution=4))
    >>> found["length"].tolist(), found["stats"]["failed_walks"]
    ([3, 3, 3, 3, 3, 3, 3, 3], 0)
    >>> sorted(map(tuple, found["normal"].sign().int().tolist())) == sorted(
    ...     (a, b, c) for a in (-1, 1) for b in (-1, 1) for c in (-1, 1))
    True
    """
    net = track_graph(net)
    if net.encoder is not None:
        from nsr.extraction.encoder_tracking import _track_encoder_surface  # it builds on this module

        return _track_encoder_surface(net, bounds, seeds, level, close, progress, max_edges, memory_limit)
    n = net.n_neurons
    lay = ConstraintLayout.of(net)
    out = lay.output
    dev = net.device
    words = n_words(max(n, 1))
    width = words + 1
    pats, prev, cur = _seed_starts(net, seeds, bounds, level)
    n_seed_regions = len(pats)
    front_key = torch.cat([pack_bits(pats, words), torch.full((len(pats), 1), out, device=dev)], 1)
    front_pc = torch.stack([prev, cur], 1)
    visited = _Visited(width, dev)
    shares = _shares_maps(net)
    found: dict[str, list[Tensor]] = {"key": [], "edges": [], "vertices": [], "length": [], "normal": []}
    # g, its maps, and the walk's (B, C) temporaries (distances, normal lengths, candidates)
    row = (2 * (D + 1) + 3) * (out + 1) * net.dtype.itemsize
    rounds, failed, walked, degenerate = 0, 0, 0, 0
    # a fourth plane this close to a vertex makes its identity ambiguous
    tol = 256 * torch.finfo(net.dtype).eps * float((bounds[:, 1] - bounds[:, 0]).norm())
    limit = memory_limit if memory_limit is not None else default_memory_limit()
    kept, need, batch = 0, 0, 0  # bytes of the polygons found so far, expected in all, of a batch's temporaries
    bar = _bar(progress)
    while len(front_key):
        rounds += 1
        # one walk per key: keep the first of equal keys (exactly, collisions split), drop
        # those already walked
        front_key, first = _unique_rows(front_key)
        front_pc = front_pc[first]
        h = hash_rows(front_key)
        new = ~visited.contains(front_key, h)
        front_key, front_pc, h = front_key[new], front_pc[new], h[new]
        if not len(front_key):
            break
        visited.add(front_key, h)
        if shares:  # regions with equal first layers next to each other: a batch shares their maps
            order = _lexicographic_order(front_key[:, :min(words, _SORT_WORDS)])
            front_key, front_pc = front_key[order], front_pc[order]
        next_key, next_pc = [], []
        for sl in _chunks(len(front_key), row, dev, WALK_CHUNK_BYTES):
            key = front_key[sl]
            patterns = unpack_bits(key[:, :words], torch.arange(n, device=dev))
            g = region_constraints(net, patterns, bounds, level)
            support = key[:, words]
            e, v, m, deg = walk_polygons(g, support, front_pc[sl, 0], front_pc[sl, 1], tol, max_edges)
            degenerate += int(deg.sum())
            ok = m > 0
            failed += int((~ok).sum())
            # outward normal of the polygon's plane: minus the support's constraint normal
            # (the level set is stored as level - f, box facets point inwards)
            found["normal"].append(-_columns(g, support)[ok, :D])
            key, e, v, m, support = key[ok], e[ok], v[ok], m[ok], support[ok]
            lmax = int(m.max()) if len(m) else 0
            e, v = e[:, :lmax], v[:, :lmax]
            found["key"].append(key)
            found["edges"].append(e)
            found["vertices"].append(v)
            found["length"].append(m)
            kept += tensors_bytes((key, e, v, m)) + found["normal"][-1].numel() * v.element_size()
            nk, npc = _neighbours(key, e, m, support, words, lay, close)
            next_key.append(nk)
            next_pc.append(npc)
        walked_now = len(front_key)
        walked += walked_now
        if degenerate:  # the caller falls back to a method that resolves degeneracies
            break
        if bar is not None:
            bar.update(len(front_key))
        front_key = torch.cat(next_key)
        front_pc = torch.cat(next_pc)
        if len(front_key):
            hk = hash_rows(front_key)
            seen = visited.contains(front_key, hk)
            front_key, front_pc = front_key[~seen], front_pc[~seen]
        batch = max(batch, min(WALK_CHUNK_BYTES, row * walked_now))
        need = _check_track_memory(kept + visited.bytes + tensors_bytes((front_key, front_pc)), walked, n, batch,
                                   limit)
    if bar is not None:
        bar.close()
    lmax = max((int(e.shape[1]) for e in found["edges"]), default=0)
    edges = torch.cat([_pad(e, lmax, -1) for e in found["edges"]]) if found["edges"] else \
        torch.zeros(0, 0, dtype=torch.int64, device=dev)
    verts = torch.cat([_pad(v, lmax, 0.0) for v in found["vertices"]]) if found["vertices"] else \
        torch.zeros(0, 0, D, dtype=net.dtype, device=dev)
    key = torch.cat(found["key"]) if found["key"] else torch.zeros(0, width, dtype=torch.int64, device=dev)
    length = torch.cat(found["length"]) if found["length"] else torch.zeros(0, dtype=torch.int64, device=dev)
    normal = torch.cat(found["normal"]) if found["normal"] else torch.zeros(0, D, dtype=net.dtype, device=dev)
    return {
        "key": key,
        "n_neurons": n,
        "support": key[:, words],
        "edges": edges,
        "vertices": verts,
        "length": length,
        "normal": normal,
        "stats": {"seeds": len(seeds), "seed_regions": n_seed_regions, "rounds": rounds,
                  "regions_walked": walked, "failed_walks": failed, "degenerate_polygons": degenerate,
                  "memory_estimate_mb": need / 2**20},
    }


# Words of a key sorted on before a round's walks (the first layers' neurons).
_SORT_WORDS = 8


def _lexicographic_order(rows: Tensor) -> Tensor:
    """Order of ``rows`` ``(M, K)`` int64 sorted lexicographically (stable sorts, last column first)."""
    order = torch.arange(len(rows), device=rows.device)
    for k in range(rows.shape[1] - 1, -1, -1):
        order = order[torch.sort(rows[order, k], stable=True)[1]]
    return order


def track_patterns(tr: dict[str, Any]) -> Tensor:
    """The activation pattern of each polygon of :func:`track_surface` ``(P, N)`` bool, unpacked
    from its key (the walks keep them packed: a wide network's patterns unpacked are several
    gigabytes).

    Parameters
    ----------
    tr : dict
        The output of :func:`track_surface` (``key``, ``n_neurons``).

    Returns
    -------
    (P, N) bool Tensor

    Examples
    --------
    >>> import torch
    >>> from nsr.networks import octahedron_network
    >>> net = octahedron_network()
    >>> box = torch.tensor([[-1.0, 1.0]] * 3, dtype=torch.float64)
    >>> tr = track_surface(net, box, grid_seeds(net, box, resolution=4))
    >>> bool((track_patterns(tr) == activation_patterns(net, tr["vertices"][:, :3].mean(1))).all())
    True
    """
    n = tr["n_neurons"]
    return unpack_bits(tr["key"][:, :n_words(max(n, 1))], torch.arange(n, device=tr["key"].device))


def _bar(enabled: bool) -> Any:
    """A progress bar on a terminal, plain lines in a log (see :func:`nsr.extraction.progress._progress`)."""
    return _progress(None, "track", enabled, unit="polygon")


def _pad(t: Tensor, lmax: int, fill: float) -> Tensor:
    """``t`` ``(B, L, ...)`` padded along dim 1 to ``lmax`` with ``fill``."""
    if t.shape[1] == lmax:
        return t
    shape = (t.shape[0], lmax - t.shape[1]) + tuple(t.shape[2:])
    return torch.cat([t, torch.full(shape, fill, dtype=t.dtype, device=t.device)], 1)


def _neighbours(key: Tensor, edges: Tensor, length: Tensor, support: Tensor, words: int, lay: ConstraintLayout,
                close: bool) -> tuple[Tensor, Tensor]:
    """Keys and start vertices of the polygons across every edge of walked polygons.

    Across neuron ``j``: the same support, pattern bit ``j`` flipped, entered on ``j``. Across a
    box facet or the level set (caps only, ``close``): the same region, that constraint as the
    support, entered on the old support.
    """
    dev = key.device
    out = lay.output
    lmax = edges.shape[1]
    ar = torch.arange(lmax, device=dev)
    valid = ar[None] < length[:, None]
    nxt = torch.gather(edges, 1, (ar[None] + 1) % length.clamp(min=1)[:, None])
    f, i = torch.nonzero(valid, as_tuple=True)
    c, c_next = edges[f, i], nxt[f, i]
    s = support[f]
    is_neuron = (c >= lay.neuron_offset) & (c < out)
    k = key[f].clone()
    wd, mk = bit_values(lay.neuron_index(c).clamp(min=0))
    flip = torch.nonzero(is_neuron).squeeze(1)
    k[flip, wd[flip]] ^= mk[flip]
    change = ~is_neuron & close & ((s != out) | (c < lay.n_box))  # surface -> cap on a facet; cap -> cap/surface
    k[:, words] = torch.where(change, c, s)
    prev = torch.where(change, s, c)
    take = is_neuron | change
    return k[take], torch.stack([prev, c_next], 1)[take]
