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

from nsr.extraction.bits import bit_values, group_equal_rows, pack_bits
from nsr.extraction.memory import _check_memory, _chunks
from nsr.extraction.skeleton import positive_side, snap_to_zero
from nsr.pl.layout import ConstraintLayout

if TYPE_CHECKING:
    from nsr.extraction.skeleton import _Skeleton


def plane_ranges(tile_lo: Tensor, tile_hi: Tensor, normals: Tensor) -> tuple[Tensor, Tensor]:
    """Range of ``normals[p] . x`` over every tile: ``(K, P)`` minimum and maximum (at corners).

    ``tile_lo, tile_hi`` ``(K, D)``; ``normals`` ``(P, D)``."""
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
    positive : (K, P) bool Tensor
        The tile is on the positive side (``normals . x - offsets > 0``) of a plane it does not cross.
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
    facets : normals ``(P, D)``, offsets ``(P,)``, tolerances ``(P,)`` of the encoder's planes.
    n_words : words of a packed sign vector.
    first_id : constraint id of plane 0 (``ConstraintLayout.facet(0)``).

    Returns
    -------
    slots : (K, S) int64 Tensor
        ``slots[t, k]``: the ``k``-th crossing plane of tile ``t`` in increasing order, ``-1`` past its last.
    bits : (K, W) int64 Tensor
        The bits of the planes tile ``t`` lies on the positive side of (constraint ids).
    n_pairs : () int64 Tensor
        Crossing (tile, plane) pairs.
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

    ``tile_lo, tile_hi`` ``(K, D)`` are all the tiles of ``sk`` (``sk.vtile`` indexes them), ``alive``
    ``(K,)`` bool the ones still holding vertices. Records ``encoder_pairs`` (crossing (tile, plane)
    pairs cut), ``encoder_slots`` and ``encoder_vertices`` in ``sk.stats``. Mutates ``sk``."""
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
    as in :func:`nsr.extraction.skeleton.split_by_constraint`; ``c`` ``(n,)`` each one's constraint."""
    d = sk.dim
    n = ez.shape[0]
    dev = ez.device
    # Keys hold only the bits of constraints before c, as in the all-planes loop at c (the constant bits of
    # later planes are already set here): equal keys either way, but also the same hash order, so the new
    # edges get the same orientation and every later interpolation rounds the same way.
    word_c, mask_c = bit_values(c)
    words = torch.arange(pe.shape[1], device=dev)
    below = torch.where(words[None] < word_c[:, None], -1, torch.where(words[None] == word_c[:, None],
                                                                       (mask_c - 1)[:, None], 0))
    pe = pe & below
    keys, owners = [], []
    tile = tile_a.long().unsqueeze(1)
    for i in range(d - 1):
        zi = ez[:, i]
        rest = torch.cat([ez[:, :i], ez[:, i + 1 :]], 1)
        wi, mi = bit_values(zi)
        for side in (0, 1):
            pk = pe.clone()
            if side:
                rows = torch.arange(n, device=dev)
                pk[rows, wi] |= mi
                sel = rows
            else:
                sel = torch.nonzero(zi >= 2 * d).squeeze(1)
            keys.append(torch.cat([tile[sel], pk[sel], rest[sel]], 1))
            owners.append(sel)
    key = torch.cat(keys)
    owner = torch.cat(owners)
    order, gid = group_equal_rows(key)
    counts = torch.bincount(gid)
    first = torch.ones_like(gid, dtype=torch.bool)
    first[1:] = gid[1:] != gid[:-1]
    starts = torch.nonzero(first).squeeze(1)
    pair_groups = torch.nonzero(counts == 2).squeeze(1)
    sk.unpaired += int((counts > 2).sum()) + (0 if sk.partial else int((counts == 1).sum()))
    p = order[starts[pair_groups]]
    q = order[starts[pair_groups] + 1]
    new_edges = torch.stack([new_ids[owner[p]], new_ids[owner[q]]], 1)
    zrest = key[p][:, key.shape[1] - (d - 2) :] if d > 2 else key.new_zeros(len(p), 0)
    sk.edges.append(new_edges)
    sk.ezeros.append(torch.cat([zrest, c[owner[p]].unsqueeze(1)], 1).int())


# Estimated vertices of the encoder split per batch of tiles in surface mode (see :func:`tile_batches`): a batch
# is split, pruned and cut by the neurons before the next one starts, so peak memory follows one batch.
ENCODER_BATCH_VERTICES = 2**20


def tile_batches(tile_lo: Tensor, tile_hi: Tensor, facets: tuple[Tensor, Tensor, Tensor],
                 max_vertices: int | None = None) -> list[Tensor]:
    """Consecutive batches of tile indices whose encoder splits hold about ``max_vertices`` vertices each
    (default :data:`ENCODER_BATCH_VERTICES`).

    A tile crossed by ``s`` planes holds about ``s^D / 32`` vertices after the split (measured on a trained
    bunny grid network: ``s^3 / 36`` for tiles crossed by 111 planes, ``s^3 / 51`` for 74), so the estimate is
    conservative. ``tile_lo, tile_hi`` ``(K, D)``; returns index tensors covering ``range(K)`` in order."""
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
