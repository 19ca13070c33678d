"""Cells of every dimension of a polyhedral complex, from the sign-vectors of its faces.

A ``k``-cell is named by its sign-vector: the constraints it lies on (its *zeros*, ``D - k``
of them in a generic complex) and the constraints it is strictly positive on. Every
``(k-1)``-cell with zeros ``Z`` is a facet of the ``k``-cells obtained by making one entry
``z`` of ``Z`` positive or negative (a box facet only positive: the box has no outside), so
the ``k``-cells are the distinct keys ``(positive set [+ z], Z - z)`` over all ``(k-1)``-cells
and all ``z``, and the incidences are the pairs (facet, key).

On a large complex those keys do not fit in memory as rows (the 8x32 bunny network has
~10^8 of them, ``W + D - k`` int64 each), so they are grouped by a 64-bit hash alone: the
hash is a sum of salted mixes, one per word of the positive set and one per zero, so each
key's hash is its facet's hash with two terms replaced, and only ``(K,)`` hashes and their
sort order are held. Keys are then rebuilt in chunks, in sorted order, to check that equal
hashes really are equal keys; a collision (odds about ``K^2 / 2^65``) is resolved by
regrouping its run of equal hashes on the keys themselves, so the cells are exact.
"""

from __future__ import annotations

import torch
from torch import Tensor

from nsr.extraction.bits import _C3, _mix, bit_values, group_equal_rows
from nsr.extraction.memory import CHUNK_BYTES


def _salts(n: int, offset: int, device: torch.device) -> Tensor:
    return _mix((torch.arange(n, device=device, dtype=torch.int64) + offset) * _C3)


_INVALID = torch.iinfo(torch.int64).max  # hash of a negative side of a box facet: sorts last


class _Keys:
    """The ``(k-1)``-cells' keys for their ``k``-cells, addressed by a flat entry index
    ``e = 2 nz * facet + 2 slot + side``: zero ``slot`` of ``facet`` made positive (side 0)
    or negative (side 1). A box facet's negative side is no key; its hash is :data:`_INVALID`.
    """

    def __init__(self, pos: Tensor, zeros: Tensor, dim: int) -> None:
        self.pos, self.zeros, self.dim = pos, zeros, dim
        self.nz = zeros.shape[1]
        self.n = 2 * self.nz * zeros.shape[0]
        self.n_invalid = int((zeros < 2 * dim).sum())
        self.word_salt = _salts(pos.shape[1], 1, pos.device)
        self.zero_salt = _salts(1, 1 << 40, pos.device)[0]
        self.step = max(1024, CHUNK_BYTES // (8 * (pos.shape[1] + self.nz)))  # facets per chunk
        # others[i]: the zero slots other than i, in order (a key's remaining zeros stay sorted)
        ar = torch.arange(self.nz, device=pos.device)
        self.others = torch.stack([ar[ar != i] for i in range(self.nz)]) if self.nz > 1 else ar[:, None][:, :0]

    def _zero_term(self, z: Tensor) -> Tensor:
        return _mix(z ^ self.zero_salt)

    def _word_term(self, words: Tensor, w: Tensor) -> Tensor:
        return _mix(words ^ self.word_salt[w])

    def hashes(self) -> Tensor:
        """``(K,)`` int64: the hash of every entry's key, :data:`_INVALID` for non-keys."""
        m = self.zeros.shape[0]
        out = torch.empty(m, self.nz, 2, dtype=torch.int64, device=self.pos.device)
        cols = torch.arange(self.pos.shape[1], device=self.pos.device)[None]
        for s in range(0, m, self.step):
            sl = slice(s, min(m, s + self.step))
            p, z = self.pos[sl], self.zeros[sl]
            zt = self._zero_term(z)
            base = self._word_term(p, cols).sum(1, keepdim=True) + zt.sum(1, keepdim=True) - zt  # (n, nz)
            w, mask = bit_values(z)
            old = p.gather(1, w)
            h_neg = base.clamp(max=_INVALID - 1)  # a real key never takes the invalid hash
            out[sl, :, 1] = torch.where(z < 2 * self.dim, _INVALID, h_neg)
            out[sl, :, 0] = (base - self._word_term(old, w) + self._word_term(old | mask, w)).clamp(max=_INVALID - 1)
        return out.view(-1)

    def rows(self, entries: Tensor) -> tuple[Tensor, Tensor]:
        """The keys of ``entries``: positive sets ``(n, W)`` and zeros ``(n, nz-1)``."""
        owner = torch.div(entries, 2 * self.nz, rounding_mode="floor")
        slot = torch.div(entries, 2, rounding_mode="floor") % self.nz
        positive = entries % 2 == 0
        p, z = self.pos[owner], self.zeros[owner]
        zi = z.gather(1, slot[:, None]).squeeze(1)
        w, mask = bit_values(zi)
        cols = torch.arange(p.shape[1], device=p.device)[None]
        p |= torch.where((cols == w[:, None]) & positive[:, None], mask[:, None], 0)
        return p, z.gather(1, self.others[slot])


def cofaces(pos: Tensor, zeros: Tensor, dim: int) -> tuple[Tensor, Tensor, Tensor]:
    """The ``k``-cells of a complex from its ``(k-1)``-cells, ``1 <= k - 1 < D``.

    Parameters
    ----------
    pos : ``(M, W)`` int64, the packed positive sets of the ``(k-1)``-cells.
    zeros : ``(M, D-k+1)`` int64, their sorted zero constraint ids.
    dim : ``D``; constraint ids below ``2D`` are box facets.

    Returns
    -------
    cell_pos : ``(C, W)`` int64 and ``cell_zeros`` ``(C, D-k)`` int64, the ``k``-cells;
    incidence : ``(K, 2)`` int32 pairs (``(k-1)``-cell, ``k``-cell), grouped by ``k``-cell.

    Examples
    --------
    The square ``[0, 1]^2`` (box facets 0: ``x > 0``, 1: ``x < 1``, 2: ``y > 0``, 3: ``y < 1``)
    cut by the line ``x = 0.5`` (constraint 4): its 7 edges bound 2 faces of 4 edges each.

    >>> import torch
    >>> from nsr.extraction.cells import cofaces
    >>> bits = lambda *ids: sum(1 << i for i in ids)  # a positive set packed into one int64 word
    >>> pos = torch.tensor([[bits(0, 1, 3)], [bits(0, 1, 3, 4)], [bits(0, 1, 2)], [bits(0, 1, 2, 4)],
    ...                     [bits(1, 2, 3)], [bits(0, 2, 3, 4)], [bits(0, 1, 2, 3)]])
    >>> zeros = torch.tensor([[2], [2], [3], [3], [0], [1], [4]])
    >>> cell_pos, cell_zeros, incidence = cofaces(pos, zeros, dim=2)
    >>> {int(p): sorted(incidence[incidence[:, 1] == c, 0].tolist()) for c, p in enumerate(cell_pos[:, 0])}
    {31: [1, 3, 5, 6], 15: [0, 2, 4, 6]}
    """
    keys = _Keys(pos, zeros, dim)
    dev = pos.device
    n = keys.n - keys.n_invalid
    if n == 0:
        return pos[:0], zeros[:0, 1:], torch.zeros(0, 2, dtype=torch.int32, device=dev)
    h, order = torch.sort(keys.hashes())
    order = order[:n]  # the non-keys sort last
    new = torch.ones(n, dtype=torch.bool, device=dev)
    torch.ne(h[1:n], h[: n - 1], out=new[1:])
    del h
    _verify_runs(keys, order, new)
    # Peak memory matters here (the 8x32 bunny: 1.2e8 entries): outputs are filled in place,
    # and group ids are int32 like the incidences they end up in.
    firsts = torch.nonzero(new).squeeze(1)
    cell_pos = torch.empty(len(firsts), pos.shape[1], dtype=pos.dtype, device=dev)
    cell_zeros = torch.empty(len(firsts), zeros.shape[1] - 1, dtype=zeros.dtype, device=dev)
    for s in range(0, len(firsts), keys.step):
        sl = slice(s, s + keys.step)
        cell_pos[sl], cell_zeros[sl] = keys.rows(order[firsts[sl]])
    del firsts
    incidence = torch.empty(n, 2, dtype=torch.int32, device=dev)
    incidence[:, 1] = torch.cumsum(new, 0, dtype=torch.int32)
    incidence[:, 1] -= 1
    del new
    incidence[:, 0] = torch.div(order, 2 * keys.nz, rounding_mode="floor", out=order)  # entries -> facets
    return cell_pos, cell_zeros, incidence


def _verify_runs(keys: _Keys, order: Tensor, new: Tensor) -> None:
    """Check, in chunks, that entries with equal hashes have equal keys; where a run of equal
    hashes holds different keys, reorder that run by its keys and mark its true groups.
    Mutates ``order`` and ``new``."""
    n = len(order)
    bad: list[Tensor] = []
    for s in range(1, n, keys.step):
        e = min(n, s + keys.step)
        if bool(new[s:e].all()):
            continue
        p, z = keys.rows(order[s - 1 : e])  # each entry and its predecessor
        differ = (p[1:] != p[:-1]).any(1) | (z[1:] != z[:-1]).any(1)
        bad_here = torch.nonzero(differ & ~new[s:e]).squeeze(1)
        if len(bad_here):
            bad.append(bad_here + s)
    if not bad:
        return
    # Runs of equal hashes that hold more than one key: regroup each on the keys themselves.
    run = torch.cumsum(new, 0) - 1
    bad_runs = torch.unique(run[torch.cat(bad)])
    members = torch.nonzero(torch.isin(run, bad_runs)).squeeze(1)  # positions, run-contiguous
    p, z = keys.rows(order[members])
    rows = torch.cat([run[members][:, None], p, z], 1)
    sub_order, sub_gid = group_equal_rows(rows)
    # group_equal_rows orders by hash; keep each run's positions but put its keys together
    by_run = torch.argsort(run[members][sub_order] * (len(members) + 1) + sub_gid, stable=True)
    sub_order, sub_gid = sub_order[by_run], sub_gid[by_run]
    order[members] = order[members][sub_order]
    first = torch.ones(len(members), dtype=torch.bool, device=order.device)
    first[1:] = sub_gid[1:] != sub_gid[:-1]
    new[members] = first
