"""Splitting tiles by an encoder's planes, each tile only by the planes that cross it.

An encoder (a simplex grid) has thousands of planes over the box, but a small tile is crossed by a
few of them. Cutting every plane through every vertex of every tile, as a neuron is cut, costs
``planes x vertices``; here each tile is cut only by the planes that meet it (within their sign
tolerance), and the others set the tile's sign bits once, as constants.

The result is the skeleton the all-planes loop builds, bitwise: tiles are independent (every
vertex, edge and face key belongs to one tile), each tile is cut by its crossing planes in
increasing constraint id (the order the all-planes loop uses, which the consistent perturbation of
degenerate positions depends on), with the same plane values, and a plane that misses a tile is on
one side of all of the tile's vertices, which is the bit the all-planes loop would have written.

The tiles' crossing planes are laid out as *slots*: slot ``k`` holds the ``k``-th crossing plane
of every tile (in constraint order), so one pass of the split kernel cuts one plane per tile, each
tile by its own plane (a per-vertex plane, constraint id and tolerance).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from nsr.extraction.bits import bit_values, pack_bits
from nsr.extraction.memory import _check_memory, _chunks, skeleton_bytes
from nsr.extraction.skeleton import _pair_new_vertices, box_skeleton, positive_side, snap_to_zero
from nsr.pl.layout import ConstraintLayout

if TYPE_CHECKING:
    from nsr.extraction.skeleton import _Skeleton


def plane_ranges(tile_lo: Tensor, tile_hi: Tensor, normals: Tensor) -> tuple[Tensor, Tensor]:
    """Range of ``normals[p] . x`` over every tile: ``(K, P)`` minimum and maximum (at corners).

    A linear function is extreme at a corner of a box: the minimum takes ``lo`` where the normal is
    positive and ``hi`` where it is negative, the maximum the opposite.

    Parameters
    ----------
    tile_lo, tile_hi : (K, D) float Tensor
        Corners of ``K`` tiles.
    normals : (P, D) float Tensor
        Normals of ``P`` planes.

    Returns
    -------
    lo : (K, P) float Tensor
        ``lo[t, p]``: the minimum of ``normals[p] . x`` over tile ``t``.
    hi : (K, P) float Tensor
        Its maximum.

    Examples
    --------
    On ``[0.25, 0.875] x [-0.625, 0.375]``, ``x - y`` runs from ``0.25 - 0.375`` to ``0.875 + 0.625``:

    >>> import torch
    >>> normals = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, -1.0]], dtype=torch.float64)
    >>> lo, hi = plane_ranges(torch.tensor([[0.25, -0.625]]).double(), torch.tensor([[0.875, 0.375]]).double(), normals)
    >>> lo.tolist(), hi.tolist()
    ([[0.25, -0.625, -0.125]], [[0.875, 0.375, 1.5]])
    """
    pos, neg = normals.clamp(min=0).T, normals.clamp(max=0).T  # (D, P)
    return tile_lo @ pos + tile_hi @ neg, tile_hi @ pos + tile_lo @ neg


def crossing_planes(tile_lo: Tensor, tile_hi: Tensor, normals: Tensor, offsets: Tensor, tol: Tensor
                    ) -> tuple[Tensor, Tensor]:
    """Which planes each tile must be cut by, and on which side of the others it lies.

    A plane is *crossing* a tile unless the tile is beyond twice the plane's sign tolerance on one
    side: then every vertex in the tile (corners and their rounded convex combinations) gets the
    same sign from the sign rule, so the split would cut nothing. Planes through a tile facet count
    as crossing on both sides (the all-planes loop cuts degenerate edges there, and so must we).

    Parameters
    ----------
    tile_lo, tile_hi : (K, D) float Tensor
    normals : (P, D) float Tensor
    offsets, tol : (P,) float Tensor
        Plane ``p`` is ``normals[p] . x = offsets[p]``; ``tol`` its sign tolerances.

    Returns
    -------
    cross : (K, P) bool Tensor
        ``cross[t, p]``: plane ``p`` must cut tile ``t``.
    positive : (K, P) bool Tensor
        The tile is on the positive side (``normals . x - offsets > 0``) of a plane it does not cross.

    Examples
    --------
    The lines of a resolution 2 grid on ``[-1, 1]^2``: they all meet the quadrant ``[0, 1]^2`` (``x = 0``
    and ``y = 0`` on its facets, ``x - y = -1`` and ``1`` at its corners ``(0, 1)``, ``(1, 0)``), while
    ``[0.25, 0.875] x [-0.625, 0.375]`` (``x - y`` from ``-0.125`` to ``1.5``) is crossed by ``y = 0``,
    ``x - y = 0`` and ``x - y = 1`` and lies on the positive side of ``x = 0`` and ``x - y = -1``:

    >>> import torch
    >>> from nsr.extraction.tolerances import facet_tolerances
    >>> from nsr.pl.encoding import SimplexGridEncoder, SimplexGridEncoding
    >>> enc = SimplexGridEncoder(SimplexGridEncoding(in_dim=2, n_levels=1, min_resolution=2, max_resolution=2))
    >>> lo, hi = -torch.ones(2, dtype=torch.float64), torch.ones(2, dtype=torch.float64)
    >>> normals, offsets = (t.double() for t in enc.planes(lo, hi))  # x = 0, y = 0, x - y = -1, 0, 1
    >>> facets = (normals, offsets, facet_tolerances(normals, offsets, lo, hi))
    >>> tile_lo = torch.tensor([[0.0, 0.0], [0.25, -0.625]], dtype=torch.float64)
    >>> tile_hi = torch.tensor([[1.0, 1.0], [0.875, 0.375]], dtype=torch.float64)
    >>> cross, positive = crossing_planes(tile_lo, tile_hi, *facets)
    >>> cross.tolist()
    [[True, True, True, True, True], [False, True, False, True, True]]
    >>> positive.tolist()
    [[False, False, False, False, False], [True, False, True, False, False]]
    """
    rlo, rhi = plane_ranges(tile_lo, tile_hi, normals)
    margin = 2 * tol
    positive = rlo - offsets >= margin
    negative = rhi - offsets <= -margin
    return ~(positive | negative), positive


def tile_slots(tile_lo: Tensor, tile_hi: Tensor, facets: tuple[Tensor, Tensor, Tensor], n_words: int,
               first_id: int) -> tuple[Tensor, Tensor, Tensor]:
    """The crossing planes of every tile as slots, and the tile's constant sign bits.

    Parameters
    ----------
    tile_lo, tile_hi : (K, D) float Tensor
        Corners of ``K`` tiles.
    facets : tuple of Tensor
        Normals ``(P, D)``, offsets ``(P,)`` and sign tolerances ``(P,)`` of the encoder's planes
        (:func:`nsr.extraction.subdivide.encoder_facets`).
    n_words : int
        Words ``W`` of a packed sign vector.
    first_id : int
        Constraint id of plane 0 (``ConstraintLayout.facet(0)``, ``2D``).

    Returns
    -------
    slots : (K, S) int64 Tensor
        ``slots[t, k]``: the ``k``-th crossing plane of tile ``t`` in increasing order, ``-1`` past its last;
        ``S`` is the most planes crossing one tile.
    bits : (K, W) int64 Tensor
        The bits of the planes tile ``t`` lies on the positive side of (constraint ids), packed as
        :func:`nsr.extraction.bits.pack_bits` does.
    n_pairs : () int64 Tensor
        Crossing (tile, plane) pairs.

    Examples
    --------
    The tiles of :func:`crossing_planes`: the quadrant is crossed by all 5 lines, the other tile by lines
    1, 3 and 4 and positive on lines 0 and 2, constraint ids ``4 + 0`` and ``4 + 2`` after the 4 box facets
    of the square, so its bits are ``2^4 + 2^6 = 80``; ``5 + 3 = 8`` pairs in all:

    >>> import torch
    >>> from nsr.extraction.tolerances import facet_tolerances
    >>> from nsr.pl.encoding import SimplexGridEncoder, SimplexGridEncoding
    >>> enc = SimplexGridEncoder(SimplexGridEncoding(in_dim=2, n_levels=1, min_resolution=2, max_resolution=2))
    >>> lo, hi = -torch.ones(2, dtype=torch.float64), torch.ones(2, dtype=torch.float64)
    >>> normals, offsets = (t.double() for t in enc.planes(lo, hi))  # x = 0, y = 0, x - y = -1, 0, 1
    >>> facets = (normals, offsets, facet_tolerances(normals, offsets, lo, hi))
    >>> tile_lo = torch.tensor([[0.0, 0.0], [0.25, -0.625]], dtype=torch.float64)
    >>> tile_hi = torch.tensor([[1.0, 1.0], [0.875, 0.375]], dtype=torch.float64)
    >>> slots, bits, n_pairs = tile_slots(tile_lo, tile_hi, facets, n_words=1, first_id=4)
    >>> slots.tolist(), bits.tolist(), int(n_pairs)
    ([[0, 1, 2, 3, 4], [1, 3, 4, -1, -1]], [[0], [80]], 8)
    """
    normals, offsets, tol = facets
    k, p = tile_lo.shape[0], offsets.shape[0]
    dev = tile_lo.device
    bits = torch.zeros(k, n_words, dtype=torch.int64, device=dev)
    plane_ids = torch.arange(p, device=dev)
    lists, counts = [], []
    # (K, P) bool masks at a time: bounded by chunks of tiles
    for sl in _chunks(k, 4 * p + 8, dev):
        cross, positive = crossing_planes(tile_lo[sl], tile_hi[sl], normals, offsets, tol)
        flags = torch.zeros(cross.shape[0], first_id + p, dtype=torch.bool, device=dev)
        flags[:, first_id:] = positive
        bits[sl] = pack_bits(flags, n_words)
        count = cross.sum(1)
        counts.append(count)
        ids = torch.where(cross, plane_ids, p).sort(1).values  # missing planes sort last
        lists.append(ids[:, : int(count.max()) if len(count) else 0])  # (k, S_chunk), not (k, P)
    count = torch.cat(counts) if counts else torch.zeros(0, dtype=torch.int64, device=dev)
    n_slots = int(count.max()) if k else 0
    slots = torch.full((k, n_slots), p, dtype=torch.int64, device=dev)
    row = 0
    for ids in lists:
        slots[row : row + ids.shape[0], : ids.shape[1]] = ids
        row += ids.shape[0]
    slots = torch.where(slots == p, -1, slots)
    return slots, bits, count.sum()


def split_by_encoder(sk: _Skeleton, tile_lo: Tensor, tile_hi: Tensor, alive: Tensor, layout: ConstraintLayout,
                     facets: tuple[Tensor, Tensor, Tensor], limit: float | None, n_neurons: int, desc: str,
                     bar: Any = None) -> None:
    """Cut every live tile of ``sk`` by the encoder's planes that cross it (see the module docstring).

    The planes a tile lies wholly on the positive side of set their sign bits on all its vertices at
    once; then the crossing planes are cut slot by slot (:func:`tile_slots`), each tile by its own plane
    of the slot. Records ``encoder_pairs`` (crossing (tile, plane) pairs cut), ``encoder_slots`` and
    ``encoder_vertices`` in ``sk.stats``. Mutates ``sk``.

    Parameters
    ----------
    sk : _Skeleton
        The skeleton of the tiles (:func:`nsr.extraction.skeleton.box_skeleton`), sign vectors sized for
        ``layout.n_constraints``.
    tile_lo, tile_hi : (K, D) float Tensor
        All the tiles of ``sk`` (``sk.vtile`` indexes them).
    alive : (K,) bool Tensor
        The tiles still holding vertices; the others are not cut.
    layout : ConstraintLayout
        Constraint ids; plane ``p`` is constraint ``layout.facet(p)``.
    facets : tuple of Tensor
        Normals ``(P, D)``, offsets ``(P,)`` and sign tolerances ``(P,)`` of the encoder's planes
        (:func:`nsr.extraction.subdivide.encoder_facets`), ``P = layout.n_facets``.
    limit : float, optional
        Bytes the skeleton may hold before a ``MemoryError`` (None: no limit).
    n_neurons : int
        Hidden neurons of the network, for the memory guard's message.
    desc : str
        The mode named by the memory guard.
    bar : tqdm-like, optional
        A progress bar counting planes, advanced by ``P`` in all.

    Examples
    --------
    In ``[0.25, 0.875] x [-0.625, 0.375]`` the lines ``y = 0``, ``x - y = 0`` and ``x - y = 1`` of a
    resolution 2 grid do not meet, so each adds 2 vertices on the boundary and one face: ``4 + 6 = 10``
    vertices, and ``10 + 4 - 1 = 13`` edges (Euler: ``V - E + F = 1``); only those 3 planes are cut:

    >>> import torch
    >>> from nsr.extraction.tolerances import facet_tolerances
    >>> from nsr.pl.encoding import SimplexGridEncoder, SimplexGridEncoding
    >>> enc = SimplexGridEncoder(SimplexGridEncoding(in_dim=2, n_levels=1, min_resolution=2, max_resolution=2))
    >>> lo, hi = -torch.ones(2, dtype=torch.float64), torch.ones(2, dtype=torch.float64)
    >>> normals, offsets = (t.double() for t in enc.planes(lo, hi))  # x = 0, y = 0, x - y = -1, 0, 1
    >>> facets = (normals, offsets, facet_tolerances(normals, offsets, lo, hi))
    >>> from nsr.extraction.skeleton import box_skeleton
    >>> from nsr.pl.layout import ConstraintLayout
    >>> tile_lo, tile_hi = torch.tensor([[0.25, -0.625]]).double(), torch.tensor([[0.875, 0.375]]).double()
    >>> layout = ConstraintLayout(2, (1,), n_facets=5)
    >>> sk = box_skeleton(tile_lo, tile_hi, layout.n_constraints)
    >>> split_by_encoder(sk, tile_lo, tile_hi, torch.ones(1, dtype=torch.bool), layout, facets, None, 1, "doc")
    >>> sk.n_vertices, sk.n_edges, sk.stats["encoder_pairs"]
    (10, 13, 3)
    """
    normals, offsets, tol = facets
    k, p = tile_lo.shape[0], layout.n_facets
    dev = tile_lo.device
    live = torch.nonzero(alive).squeeze(1)
    slots_live, bits_live, n_pairs = tile_slots(tile_lo[live], tile_hi[live], facets, sk.vpos.t.shape[1],
                                                layout.facet(0) if p else 0)
    n_slots = slots_live.shape[1]
    slots = torch.full((k, n_slots), -1, dtype=torch.int64, device=dev)
    slots[live] = slots_live
    bits = torch.zeros(k, bits_live.shape[1], dtype=torch.int64, device=dev)
    bits[live] = bits_live
    # planes the tile lies wholly on the positive side of: every vertex has the bit, so every
    # vertex cut from them inherits it (the split ORs its endpoints' bits)
    sk.vpos.t[:] |= bits.index_select(0, sk.vtile.t.long())
    done = 0
    for s in range(n_slots):
        _split_slot(sk, slots[:, s], normals, offsets, tol, layout.facet(0))
        _check_memory(sk, None, limit, 0, n_neurons, desc)
        if bar is not None:  # the bar counts planes: advance it in proportion
            target = (s + 1) * p // n_slots
            bar.update(target - done)
            done = target
    if bar is not None and done < p:
        bar.update(p - done)
    sk.stats["encoder_pairs"] = int(n_pairs)
    sk.stats["encoder_slots"] = n_slots
    sk.stats["encoder_vertices"] = sk.n_vertices


def _split_slot(sk: _Skeleton, plane_of_tile: Tensor, normals: Tensor, offsets: Tensor, tol: Tensor,
                first_id: int) -> None:
    """One slot: cut every tile by its own plane ``plane_of_tile`` ``(K,)`` (``-1``: none).

    :func:`nsr.extraction.skeleton.split_by_constraint` with a plane, constraint id and tolerance
    per vertex (its tile's), restricted to the vertices of the tiles that have a plane here."""
    plane_v = plane_of_tile.index_select(0, sk.vtile.t.long())  # (V,)
    valid = plane_v >= 0
    if not bool(valid.any()):
        return
    pv = plane_v.clamp(min=0)
    x = sk.x.t
    # the all-planes loop's value (x @ n - b); with normals of 0 and +-1 entries the sum is exact
    # in any order, so the two agree bitwise
    z = (x * normals.index_select(0, pv)).sum(1) - offsets.index_select(0, pv)
    tv = tol.index_select(0, pv)
    s = positive_side(z, tv) | ~valid  # tiles without a plane here: never cut
    a = z.abs()
    sk.uncertain = sk.uncertain + ((a <= tv) & (a > tv / 8) & valid).sum()
    word_v, mask_v = bit_values(first_id + pv)
    vpos = sk.vpos.t
    n_v = sk.n_vertices
    flat, at = vpos.view(-1), torch.arange(n_v, device=x.device) * vpos.shape[1] + word_v
    flat[at] = flat.index_select(0, at) | (s & valid).long() * mask_v
    e = sk.edges.t
    se = s.index_select(0, e.reshape(-1)).view(-1, 2)
    cut = torch.nonzero(se[:, 0] != se[:, 1]).squeeze(1)
    n = cut.numel()
    if n == 0:
        return
    ce = e.index_select(0, cut)
    ca, cb = ce[:, 0].contiguous(), ce[:, 1].contiguous()
    tc = tv.index_select(0, ca)
    za_, zb_ = snap_to_zero(z.index_select(0, ca), tc), snap_to_zero(z.index_select(0, cb), tc)
    t = (za_ / (za_ - zb_)).unsqueeze(1)
    x0 = x.index_select(0, ca)
    xn = x0 + t * (x.index_select(0, cb) - x0)
    ez = sk.ezeros.t.index_select(0, cut).long()  # (n, D-1)
    c = first_id + plane_v.index_select(0, ca)  # (n,) the cut edge's tile's plane
    word, mask = bit_values(c)
    rows = torch.arange(n, device=x.device)
    pe = vpos.index_select(0, ca) | vpos.index_select(0, cb)
    pe[rows, word] &= ~mask  # the new vertices are zero on c
    new_ids = torch.arange(n_v, n_v + n, device=x.device, dtype=torch.int32)
    cz = c.unsqueeze(1)
    sk.x.append(xn)
    sk.vzeros.append(torch.cat([ez, cz], 1).int())
    sk.vpos.append(pe)
    tile_a = sk.vtile.t.index_select(0, ca)
    sk.vtile.append(tile_a)
    sk.edges.t[cut, 1] = new_ids
    sk.edges.append(torch.stack([new_ids, cb], 1))
    sk.ezeros.append(ez.int())
    d = sk.dim
    if d < 2:
        return
    _pair_face_keys(sk, ez, pe, tile_a, new_ids, c)


def _pair_face_keys(sk: _Skeleton, ez: Tensor, pe: Tensor, tile_a: Tensor, new_ids: Tensor, c: Tensor) -> None:
    """The new edges of a split: new vertices paired by the 2-face they cut (tile, signs, zeros),
    by the kernel of :func:`nsr.extraction.skeleton.split_by_constraint`; ``c`` ``(n,)`` each one's constraint."""
    dev = ez.device
    # Keys hold only the bits of constraints before c, as in the all-planes loop at c (the constant bits of
    # later planes are already set here): equal keys either way, but also the same hash order, so the new
    # edges get the same orientation and every later interpolation rounds the same way.
    word_c, mask_c = bit_values(c)
    words = torch.arange(pe.shape[1], device=dev)
    below = torch.where(words[None] < word_c[:, None], -1, torch.where(words[None] == word_c[:, None],
                                                                       (mask_c - 1)[:, None], 0))
    pe = pe & below
    _pair_new_vertices(sk, ez, pe, tile_a, new_ids, c)


# Estimated vertices of the encoder split per batch of tiles in surface mode (see :func:`tile_batches`): a batch
# is split, pruned and cut by the neurons before the next one starts, so peak memory follows one batch.
ENCODER_BATCH_VERTICES = 2**20


def tile_batches(tile_lo: Tensor, tile_hi: Tensor, facets: tuple[Tensor, Tensor, Tensor],
                 max_vertices: int | None = None) -> list[Tensor]:
    """Consecutive batches of tile indices whose encoder splits hold about ``max_vertices`` vertices each
    (default :data:`ENCODER_BATCH_VERTICES`).

    A tile crossed by ``s`` planes holds about ``s^D / 32`` vertices after the split (measured on a trained
    bunny grid network: ``s^3 / 36`` for tiles crossed by 111 planes, ``s^3 / 51`` for 74), so the estimate is
    conservative; it counts at least 1 per tile. Batch ``b`` holds the tiles whose running total before them
    falls in ``[b, b + 1) * max_vertices``, so it may exceed ``max_vertices`` by its last tile's estimate.

    Parameters
    ----------
    tile_lo, tile_hi : (K, D) float Tensor
        Corners of ``K`` tiles.
    facets : tuple of Tensor
        Normals ``(P, D)``, offsets ``(P,)`` and sign tolerances ``(P,)`` of the encoder's planes
        (:func:`nsr.extraction.subdivide.encoder_facets`).
    max_vertices : int, optional
        Estimated vertices per batch; default :data:`ENCODER_BATCH_VERTICES`.

    Returns
    -------
    list of (B_i,) int64 Tensor
        Tile indices, covering ``range(K)`` in order.

    Examples
    --------
    The tiles of :func:`crossing_planes`, crossed by 5 and 3 lines, are estimated at
    ``max(5^2 / 32, 1) = max(3^2 / 32, 1) = 1`` vertex each: one batch by default, two of at most 1 vertex:

    >>> import torch
    >>> from nsr.extraction.tolerances import facet_tolerances
    >>> from nsr.pl.encoding import SimplexGridEncoder, SimplexGridEncoding
    >>> enc = SimplexGridEncoder(SimplexGridEncoding(in_dim=2, n_levels=1, min_resolution=2, max_resolution=2))
    >>> lo, hi = -torch.ones(2, dtype=torch.float64), torch.ones(2, dtype=torch.float64)
    >>> normals, offsets = (t.double() for t in enc.planes(lo, hi))  # x = 0, y = 0, x - y = -1, 0, 1
    >>> facets = (normals, offsets, facet_tolerances(normals, offsets, lo, hi))
    >>> tile_lo = torch.tensor([[0.0, 0.0], [0.25, -0.625]], dtype=torch.float64)
    >>> tile_hi = torch.tensor([[1.0, 1.0], [0.875, 0.375]], dtype=torch.float64)
    >>> [b.tolist() for b in tile_batches(tile_lo, tile_hi, facets)]
    [[0, 1]]
    >>> [b.tolist() for b in tile_batches(tile_lo, tile_hi, facets, max_vertices=1)]
    [[0], [1]]
    """
    budget = ENCODER_BATCH_VERTICES if max_vertices is None else max_vertices
    k, d = tile_lo.shape
    normals, offsets, tol = facets
    counts = torch.cat([crossing_planes(tile_lo[sl], tile_hi[sl], normals, offsets, tol)[0].sum(1)
                        for sl in _chunks(k, 4 * len(offsets) + 8, tile_lo.device)]) if k else torch.zeros(0)
    est = (counts.double() ** d / 32).clamp(min=1)
    # batch b holds the tiles whose running total falls in [b * budget, (b + 1) * budget)
    batch = torch.div(torch.cumsum(est, 0) - est, budget, rounding_mode="floor").long()
    _, sizes = torch.unique_consecutive(batch, return_counts=True)
    return list(torch.arange(k, device=tile_lo.device).split(sizes.tolist()))


def encoder_arrangement_size(lo: Tensor, hi: Tensor, facets: tuple[Tensor, Tensor, Tensor], layout: ConstraintLayout,
                             tiles: int = 16, sample: int = 8, seed: int = 0) -> tuple[float, float]:
    """Estimated vertices, and skeleton bytes, of the arrangement of an encoder's planes over a box, which
    the complex holds before any neuron cuts it (0.9-1.9x the count on the grids of the tests).

    The box is tiled ``tiles^D``; a tile crossed by ``s`` planes holds about ``s^D`` times a constant
    (see :func:`tile_batches`), and that constant is measured by cutting ``sample`` random tiles
    (:func:`split_by_encoder`) and counting the vertices inside them (not on their facets):
    ``sum(s^D + 1) * sampled inside vertices / sampled sum(s^D + 1)``. Bytes are the sample's skeleton
    bytes per vertex (sign vectors sized for every constraint of ``layout``) times that.

    Parameters
    ----------
    lo, hi : (D,) float Tensor
        The box.
    facets : tuple of Tensor
        Normals ``(P, D)``, offsets ``(P,)`` and tolerances ``(P,)``
        (:func:`nsr.extraction.subdivide.encoder_facets`).
    layout : ConstraintLayout
        The network's constraint ids (sizes the sign vectors).
    tiles, sample, seed : int
        Tiles per axis, tiles cut, random seed of the sample.

    Returns
    -------
    vertices : float
        Estimated vertices of the arrangement (tile copies of shared vertices included, as the
        subdivision holds them).
    bytes : float
        Estimated bytes of its skeleton (vertices and edges).

    Examples
    --------
    A resolution 4 grid on the square (13 lines): with one tile, sampled, the estimate is the count of
    vertices inside the box, 33 for its 9 interior grid points (three lines meet at each, and
    degenerate positions are perturbed into coincident vertices, which the skeleton holds):

    >>> import torch
    >>> from nsr.extraction.tolerances import facet_tolerances
    >>> from nsr.pl.encoding import SimplexGridEncoder, SimplexGridEncoding
    >>> from nsr.pl.layout import ConstraintLayout
    >>> enc = SimplexGridEncoder(SimplexGridEncoding(in_dim=2, n_levels=1, min_resolution=4, max_resolution=4))
    >>> lo, hi = -torch.ones(2, dtype=torch.float64), torch.ones(2, dtype=torch.float64)
    >>> normals, offsets = (t.double() for t in enc.planes(lo, hi))
    >>> facets = (normals, offsets, facet_tolerances(normals, offsets, lo, hi))
    >>> encoder_arrangement_size(lo, hi, facets, ConstraintLayout(2, [8], len(offsets)), tiles=1, sample=1)[0]
    33.0
    """
    from nsr.extraction.tiles import tile_grid  # not at the top: tiles -> polygons -> complex -> this module

    d = lo.shape[0]
    box = torch.stack([lo, hi], 1).cpu().double().numpy()
    tile_lo, tile_hi, _ = tile_grid(box, tiles, lo.dtype, lo.device)
    normals, offsets, tol = facets
    cross = torch.cat([crossing_planes(tile_lo[sl], tile_hi[sl], normals, offsets, tol)[0].sum(1)
                       for sl in _chunks(len(tile_lo), 4 * len(offsets) + 8, lo.device)])
    weight = cross.double() ** d + 1.0
    gen = torch.Generator().manual_seed(seed)
    pick = torch.randperm(len(tile_lo), generator=gen)[:sample].to(lo.device)
    sk = box_skeleton(tile_lo[pick], tile_hi[pick], layout.n_constraints)
    split_by_encoder(sk, tile_lo[pick], tile_hi[pick], torch.ones(len(pick), dtype=torch.bool, device=lo.device),
                     layout, facets, None, 0, "complex")
    # vertices inside the tiles only: those on a tile's facets are copies the tiling makes, which the
    # whole box (one tile in complex mode) does not hold
    inside = int((sk.vzeros.t >= 2 * d).all(1).sum())
    vertices = float(weight.sum()) * inside / float(weight[pick].sum())
    return max(vertices, 1.0), max(vertices, 1.0) * skeleton_bytes(sk, None) / max(sk.n_vertices, 1)
