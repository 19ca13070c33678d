"""Bit sets of constraint ids and row hashing: how sign vectors and face keys are stored and grouped."""

from __future__ import annotations

import math
import sys

import torch
from torch import Tensor

_BITS = 64
# Temporaries of one block of rows in unpack_bits.
_UNPACK_BYTES = 2**23


def n_words(n_constraints: int) -> int:
    """Number of 64-bit words that hold a bit set over ``n_constraints`` constraint ids.

    Parameters
    ----------
    n_constraints : int
        Number of constraint ids, ``0..n_constraints-1``.

    Returns
    -------
    int
        ``ceil(n_constraints / 64)``, at least 1 (an empty set still takes one word).

    Examples
    --------
    >>> n_words(0), n_words(64), n_words(65)
    (1, 1, 2)
    """
    return max(1, math.ceil(n_constraints / _BITS))


def bit_values(ids: Tensor) -> tuple[Tensor, Tensor]:
    """Word index and single-bit mask of constraint ids, ``(...,)`` each.

    Parameters
    ----------
    ids : (...,) int64 Tensor
        Constraint ids (non-negative).

    Returns
    -------
    word : (...,) int64 Tensor
        ``ids // 64``: the word of a packed set that holds each id.
    mask : (...,) int64 Tensor
        ``1 << (ids % 64)``: the id's bit within its word (id 63 gives the sign bit, a negative int64).

    Examples
    --------
    >>> import torch
    >>> word, mask = bit_values(torch.tensor([0, 3, 64, 130]))
    >>> word.tolist(), mask.tolist()
    ([0, 0, 1, 2], [1, 8, 1, 4])
    """
    word = torch.div(ids, _BITS, rounding_mode="floor")
    mask = torch.ones_like(ids) << (ids - word * _BITS)
    return word, mask


def unpack_bits(pos: Tensor, ids: Tensor) -> Tensor:
    """Bits ``ids`` of packed sets ``pos`` ``(M, W)`` -> ``(M, len(ids))`` bool.

    Parameters
    ----------
    pos : (M, W) int64 Tensor
        Packed bit sets, as :func:`pack_bits` writes them: bit ``i`` is bit ``i % 64`` of word ``i // 64``.
    ids : (K,) int64 Tensor
        The bits to read, each in ``0..64 W - 1``.

    Returns
    -------
    (M, K) bool Tensor
        ``out[m, k]`` is bit ``ids[k]`` of set ``m``.

    Examples
    --------
    >>> import torch
    >>> flags = torch.zeros(2, 70, dtype=torch.bool)
    >>> flags[0, 3] = flags[1, 69] = True
    >>> packed = pack_bits(flags, 2)
    >>> unpack_bits(packed, torch.tensor([3, 69])).tolist()
    [[True, False], [False, True]]
    >>> bool((unpack_bits(packed, torch.arange(70)) == flags).all())
    True
    """
    # Unpack bytes, not words: bit j of a word is bit j % 8 of its byte j // 8 (little
    # endian), so (M, 8W, 8) uint8 shifts replace one int64 gather and shift per bit
    # (10x faster for the 256-bit patterns of an 8x32 network). Rows go in blocks of at most
    # _UNPACK_BYTES of those temporaries: unpacked whole, the patterns of a wide network's mesh
    # (a million vertices, 2,048 neurons) took several times the bool result in temporaries.
    m, w = pos.shape
    k = len(ids)
    # a run of consecutive bits (a mesh's neurons, after the box's and the encoder's ids) is a slice
    first = int(ids[0]) if k else 0
    run = first + k <= _BITS * w and bool((ids == torch.arange(first, first + k, device=ids.device)).all())
    out = torch.empty(m, k, dtype=torch.bool, device=pos.device)
    shifts = torch.arange(8, dtype=torch.uint8, device=pos.device)
    step = m if pos.device.type != "cpu" else max(1, _UNPACK_BYTES // max(1, _BITS * w))
    for s in range(0, m, max(1, step)):
        p = pos[s:s + step]
        if pos.device.type == "cpu" and sys.byteorder == "little":
            by = p.contiguous().view(torch.uint8)
        else:
            by = torch.stack([(p >> (8 * j)) & 255 for j in range(8)], 2).to(torch.uint8).reshape(len(p), -1)
        bits = (by[..., None] >> shifts).bitwise_and_(1).view(len(p), _BITS * w)
        out[s:s + step] = bits[:, first:first + k] if run else bits[:, ids]
    return out


def pack_bits(flags: Tensor, n_words_: int) -> Tensor:
    """``(M, C)`` bool over constraints ``0..C-1`` -> ``(M, W)`` int64.

    Parameters
    ----------
    flags : (M, C) bool Tensor
        Membership of constraints ``0..C-1`` in each of ``M`` sets.
    n_words_ : int
        Words per set ``W``, at least :func:`n_words` ``(C)``.

    Returns
    -------
    (M, W) int64 Tensor
        The sets packed: constraint ``c`` is bit ``c % 64`` of word ``c // 64``; :func:`unpack_bits` reads them back.

    Examples
    --------
    >>> import torch
    >>> pack_bits(torch.tensor([[True, False, True], [False, False, True]]), 1).tolist()
    [[5], [4]]
    >>> flags = torch.zeros(1, 70, dtype=torch.bool)
    >>> flags[0, 69] = True
    >>> pack_bits(flags, 2).tolist()  # bit 69 = bit 5 of word 1
    [[0, 32]]
    """
    m, c = flags.shape
    out = torch.zeros(m, n_words_, dtype=torch.int64, device=flags.device)
    ids = torch.arange(c, device=flags.device)
    word, mask = bit_values(ids)
    for w in range(n_words_):
        sel = word == w
        if sel.any():
            out[:, w] = (flags[:, sel].long() * mask[sel]).sum(1)  # distinct bits: sum == or
    return out


def _to_int64(c: int) -> int:
    return c - (1 << 64) if c >= 1 << 63 else c


_C1, _C2, _C3 = _to_int64(0xBF58476D1CE4E5B9), _to_int64(0x94D049BB133111EB), _to_int64(0x9E3779B97F4A7C15)


def _mix(x: Tensor) -> Tensor:
    """splitmix64 finalizer on int64 (logical shifts emulated by masking the sign fill):
    a linear hash would collide on keys that differ only in high bits."""
    x = x ^ ((x >> 30) & ((1 << 34) - 1))
    x = x * _C1
    x = x ^ ((x >> 27) & ((1 << 37) - 1))
    x = x * _C2
    return x ^ ((x >> 31) & ((1 << 33) - 1))


def hash_rows(rows: Tensor) -> Tensor:
    """Hash ``(M, K)`` int64 rows into ``(M,)`` int64.

    Each column is folded in by a splitmix64 finalizer, so rows that differ only in high bits
    still hash apart; different rows may collide (:func:`group_equal_rows` checks).

    Parameters
    ----------
    rows : (M, K) int64 Tensor
        Rows to hash (packed sign vectors, face keys).

    Returns
    -------
    (M,) int64 Tensor
        One hash per row; equal rows hash equal.

    Examples
    --------
    >>> import torch
    >>> h = hash_rows(torch.tensor([[1, 2], [3, 4], [1, 2], [2, 1]]))
    >>> bool(h[0] == h[2]), bool(h[0] == h[1]), bool(h[0] == h[3])
    (True, False, False)
    """
    h = torch.full((rows.shape[0],), _C3, dtype=torch.int64, device=rows.device)
    for k in range(rows.shape[1]):
        h = _mix(h * _C3 + rows[:, k])
    return h


def group_equal_rows(rows: Tensor) -> tuple[Tensor, Tensor]:
    """Group identical rows: returns ``(order, group_id)`` where ``rows[order]`` is sorted
    by hash with equal rows adjacent and ``group_id[k]`` numbers the group of ``rows[order[k]]``.

    Hash collisions between different rows are split into separate groups.

    Parameters
    ----------
    rows : (M, K) int64 Tensor
        Rows to group.

    Returns
    -------
    order : (M,) int64 Tensor
        A permutation of ``range(M)`` that puts equal rows next to each other.
    group_id : (M,) int64 Tensor
        Non-decreasing group numbers ``0..G-1`` of ``rows[order]``; ``G`` is the number of distinct rows.

    Examples
    --------
    >>> import torch
    >>> rows = torch.tensor([[1, 2], [3, 4], [1, 2]])
    >>> order, group_id = group_equal_rows(rows)
    >>> int(group_id[-1]) + 1  # distinct rows
    2
    >>> groups = {}
    >>> for k, g in zip(order.tolist(), group_id.tolist()):
    ...     groups.setdefault(g, []).append(k)
    >>> sorted(groups.values())
    [[0, 2], [1]]
    """
    if rows.shape[0] == 0:
        e = torch.zeros(0, dtype=torch.int64, device=rows.device)
        return e, e
    h = hash_rows(rows)
    h_sorted, order = torch.sort(h, stable=True)
    r = rows[order]
    new = torch.ones(len(order), dtype=torch.bool, device=rows.device)
    new[1:] = (h_sorted[1:] != h_sorted[:-1]) | (r[1:] != r[:-1]).any(1)
    if bool(new[1:].logical_not().any()):
        # Rows with equal hash must be adjacent *and equal*; a collision interleaving
        # different rows would split one group in two, so fall back to an exact sort.
        hh = h_sorted[1:] == h_sorted[:-1]
        if bool(((r[1:] != r[:-1]).any(1) & hh).any()):
            uniq, inv = torch.unique(rows, dim=0, return_inverse=True)
            inv_sorted, order = torch.sort(inv, stable=True)
            return order, inv_sorted
    return order, torch.cumsum(new.long(), 0) - 1
