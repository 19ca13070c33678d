"""Memory of edge subdivision: chunk sizes, the budget, and the guard that stops before the machine runs out."""

from __future__ import annotations

import resource
import sys
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from nsr import limits

if TYPE_CHECKING:
    from nsr.extraction.skeleton import _Buffer, _Skeleton


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory of this process (resident set, CPU) or of the CUDA allocator, in MB.

    Parameters
    ----------
    device : torch.device
        A CUDA device (peak of ``torch.cuda.max_memory_allocated``) or any other (the process's
        peak resident set, ``ru_maxrss``, KiB on Linux, bytes on macOS).

    Returns
    -------
    float
        Peak memory in MiB (``2**20`` bytes) since the process started (CPU) or since the last
        ``torch.cuda.reset_peak_memory_stats`` (CUDA).

    Examples
    --------
    >>> import torch
    >>> peak_memory_mb(torch.device("cpu")) > 0
    True
    """
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 1024.0  # macOS reports bytes, Linux KiB


# Temporaries of at most this size are recycled by the allocator; larger ones are mapped
# and page-faulted afresh on every allocation, which on some VMs costs more than the
# arithmetic (a (1.4M, 32) float64 matmul: 0.07 s into a reused buffer, 0.55 s fresh).
CHUNK_BYTES = 2**23
# Track mode's walks run some 60 small tensor operations per polygon edge, whatever the batch: a
# batch of a few hundred polygons is dominated by per-operation overhead, and larger batches pay
# off more than the page faults of their temporaries cost (a trained grid network's walks on one
# core: 6.3 s with 8 MB batches, 3.7 s with 128 MB; experiments/RESULTS.md, issue 14).
WALK_CHUNK_BYTES = 2**26


def _chunks(n: int, row_bytes: int, device: torch.device, budget: int | None = None) -> list[slice]:
    """Row slices covering ``range(n)`` whose temporaries of ``row_bytes`` per row stay
    under ``budget`` (default :data:`CHUNK_BYTES`) on CPU (one slice on GPUs, where the caching
    allocator recycles memory anyway)."""
    budget = CHUNK_BYTES if budget is None else budget
    step = n if device.type != "cpu" else max(256, budget // max(1, row_bytes))
    return [slice(s, min(n, s + step)) for s in range(0, n, max(1, step))]


def default_memory_limit() -> float | None:
    """80% of the memory available now, honouring ``ulimit -v`` (``RLIMIT_AS``) and a cgroup
    limit (see :func:`nsr.limits.default_memory_limit`), or None where unknown.

    Returns
    -------
    float or None
        A budget in bytes.

    Examples
    --------
    >>> limit = default_memory_limit()
    >>> limit is None or limit > 0
    True
    """
    return limits.default_memory_limit()


def skeleton_bytes(sk: _Skeleton, values: _Buffer | None) -> int:
    """Bytes held by the skeleton's arrays (and the current block of layer values).

    Counts the allocated capacity of each buffer (which grows ahead of its rows), not only the rows in use.

    Parameters
    ----------
    sk : _Skeleton
        The skeleton of edge subdivision (:func:`nsr.extraction.skeleton.box_skeleton`).
    values : _Buffer or None
        The current layer's pre-activations carried with the vertices, if any.

    Returns
    -------
    int
        Bytes of positions, zero sets, packed signs, tile ids, edges and edge zero sets (and values).

    Examples
    --------
    The unit cube with 6 constraints: 8 vertices (3 float64 + 3 int32 + 1 int64 word + 1 int32
    each, 48 bytes) and 12 edges (2 + 2 int32, 16 bytes):

    >>> import torch
    >>> from nsr.extraction.skeleton import box_skeleton
    >>> sk = box_skeleton(torch.zeros(1, 3, dtype=torch.float64), torch.ones(1, 3, dtype=torch.float64), 6)
    >>> skeleton_bytes(sk, None) == 8 * 48 + 12 * 16
    True
    """
    bufs = [sk.x, sk.vzeros, sk.vpos, sk.vtile, sk.edges, sk.ezeros] + ([values] if values is not None else [])
    return sum(b.data.element_size() * b.data.numel() for b in bufs)


# Peak memory over the skeleton's arrays, by mode. Pairing face keys and growing buffers need
# about as much again as the arrays hold (complex mode: 2x). Surface mode also prunes regions
# between layers, and that step peaks higher: on the 8x32 bunny (box 0.5, float64) the peak RSS
# rose 1,959 MB over the start while the arrays held 653 MB (3.0x), between two checks.
_HELD_FACTOR = {"complex": 2, "surface": 3}


# What to do when the budget is reached, by the mode that reached it.
_MEMORY_ADVICE = {
    "complex": "the complex of this network over this box is too large here: use mode='surface' (only the regions "
               "the surface crosses), a smaller box, a larger memory_limit or a machine with more memory",
    "surface": "the regions near the surface are too many here: use mode='track' (memory grows with the surface "
               "only), a smaller box, a larger memory_limit or a machine with more memory",
}


def _size(n: float) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def _check_memory(sk: _Skeleton, values: _Buffer | None, limit: float | None, done: int, total: int,
                  desc: str = "complex") -> None:
    if limit is None:
        return
    need = _HELD_FACTOR.get(desc, 2) * skeleton_bytes(sk, values)
    if need > limit:
        _over_budget(desc, f"stopped after {done} of {total} neurons: {sk.n_vertices:,} vertices and "
                           f"{sk.n_edges:,} edges already need", need, limit)


def _over_budget(desc: str, what: str, need: float, limit: float) -> None:
    """Raise the subdivision's ``MemoryError``: ``what`` happened, needing ``need`` of ``limit`` bytes."""
    advice = _MEMORY_ADVICE.get(desc, _MEMORY_ADVICE["complex"])
    raise MemoryError(
        f"edge subdivision ({desc} mode) {what} ~{_size(need)}, over the limit of {_size(limit)} "
        f"(memory_limit; default 80% of the available memory); {advice}."
    )


# Peak memory of track mode, per byte the walks keep (polygons found, keys visited) and per byte
# of activation pattern (one per neuron per polygon; corner names carry them packed while welding,
# and the mesh keeps them packed): the concatenation after the last round, welding and triangles.
# Fitted on plain, skip and grid networks of 67k-928k polygons (experiments/track_memory.py; the
# measured peaks and these estimates are in experiments/RESULTS.md).
_TRACK_HELD_FACTOR = 6
_TRACK_PATTERN_FACTOR = 2


def tensors_bytes(tensors: Any) -> int:
    """Bytes held by the tensors in a (nested) list, tuple or dict of tensors.

    Parameters
    ----------
    tensors : Tensor, or a list, tuple or dict of them (nested)

    Returns
    -------
    int
        The sum of each tensor's element size times its element count.

    Examples
    --------
    >>> import torch
    >>> tensors_bytes({"a": [torch.zeros(3, dtype=torch.float64)], "b": (torch.zeros(2, 2, dtype=torch.int32),)})
    40
    """
    if isinstance(tensors, torch.Tensor):
        return tensors.element_size() * tensors.numel()
    if isinstance(tensors, dict):
        tensors = tensors.values()
    return sum(tensors_bytes(t) for t in tensors)


def _check_track_memory(held: int, n_polygons: int, n_neurons: int, temporaries: int, limit: float | None) -> int:
    """Stop track mode before its polygons outgrow ``limit`` bytes; the bytes it is expected to need.

    ``held`` counts what the walks keep, each polygon's activation pattern (``n_neurons`` bits,
    carried by its corners while welding) adds in proportion, and the largest batch of walks its
    ``temporaries``.
    """
    need = _TRACK_HELD_FACTOR * held + _TRACK_PATTERN_FACTOR * n_polygons * n_neurons + temporaries
    if limit is not None and need > limit:
        raise MemoryError(
            f"track mode stopped after {n_polygons:,} polygons: with the mesh still to build they need "
            f"~{_size(need)}, over the limit of {_size(limit)} (memory_limit; default 80% of the available "
            "memory); the surface is too large here: use a smaller box, a larger memory_limit or a machine "
            "with more memory."
        )
    return need


def _meeting_points_inside(a: Tensor, b: Tensor, lo: Tensor, hi: Tensor, samples: int, gen: torch.Generator) -> float:
    """Points where ``k`` of the planes ``a x + b = 0`` ``(n, k)`` meet inside the open boxes
    ``(lo, hi)`` ``(M, k)``, counted once per box that holds them (exact up to ``samples``
    subsets, else estimated from that many random ones)."""
    import math

    n, k = a.shape
    total = math.comb(n, k)
    if total == 0 or len(lo) == 0:
        return 0.0
    if total <= samples:
        subsets = torch.combinations(torch.arange(n), k) if k > 1 else torch.arange(n)[:, None]
    else:  # uniform over subsets: uniform draws of k planes, those with a plane twice rejected
        draws = torch.sort(torch.randint(0, n, (samples, k), generator=gen), 1).values
        subsets = draws[(draws[:, 1:] != draws[:, :-1]).all(1)]
    inside = 0
    for chunk in subsets.split(2**16):
        m = a[chunk]  # (S, k, k)
        ok = torch.linalg.det(m).abs() > 1e-12 * m.abs().amax((1, 2)).pow(k).clamp(min=1e-300)
        x = torch.linalg.solve(m[ok], -b[chunk[ok]])  # (S', k)
        inside += int(((x[:, None] > lo[None]) & (x[:, None] < hi[None])).all(2).sum())
    return float(inside) if total <= samples else inside / max(1, len(subsets)) * total


def first_layer_vertices(normals: Tensor, offsets: Tensor, tile_lo: Tensor, tile_hi: Tensor,
                         samples: int = 2**18, seed: int = 0) -> float:
    """Vertices that cutting the tiles by a first layer of neurons makes: the points where ``D`` of
    the planes ``normals . x + offsets = 0`` meet inside a tile, ``D - 1`` of them on a tile's
    facet, ..., one on a tile's edge, counted once per tile (tiles keep their own vertices); the
    tiles' own corners are not counted.

    Every subset of planes is solved when there are at most ``samples`` of them; otherwise
    ``samples`` random subsets are, and the count is their fraction inside times the number of
    subsets (an estimate, within about a percent once ten thousand fall inside). In general
    position the count is the cuts' exactly (tested against the subdivision). Where more than
    ``D`` planes meet at one point the cuts make a vertex per ``D`` of them, as this count does,
    except at a tile's corners, edges or facets, which it leaves out: there it is a lower bound.

    Parameters
    ----------
    normals : (n, D) float Tensor
        The planes' normals (a first layer's weights).
    offsets : (n,) float Tensor
        Their offsets (its biases).
    tile_lo, tile_hi : (K, D) float Tensor
        Corners of disjoint tiles.
    samples : int
        Most subsets solved per kind of face.
    seed : int
        Seed of the sampled subsets.

    Returns
    -------
    float
        The count (exact without sampling), or its estimate.

    Examples
    --------
    The three axis planes through the origin cut ``[-1, 1]^3`` at its centre, at the centres of
    its 6 facets (two planes each) and the middles of its 12 edges (one plane each); a tile
    ``[0.5, 1]^3`` away from them is not cut:

    >>> import torch
    >>> eye, zero = torch.eye(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64)
    >>> one = torch.ones(1, 3, dtype=torch.float64)
    >>> first_layer_vertices(eye, zero, -one, one), first_layer_vertices(eye, zero, 0.5 * one, one)
    (19.0, 0.0)
    """
    import itertools

    a, b = normals.double().cpu(), offsets.double().cpu()
    lo, hi = tile_lo.double().cpu(), tile_hi.double().cpu()
    d = a.shape[1]
    gen = torch.Generator().manual_seed(seed)
    count = 0.0
    for n_fixed in range(d):  # the tiles' interiors, then facets, ..., edges
        for fixed in itertools.combinations(range(d), n_fixed):
            free = [i for i in range(d) if i not in fixed]
            # each tile's faces on these axes: one per side of each fixed axis
            for sides in itertools.product((0, 1), repeat=n_fixed):
                c = torch.stack([(hi if s else lo)[:, i] for i, s in zip(fixed, sides)], 1) if n_fixed else None
                # the faces lying in one affine subspace are counted together (tiles share them)
                keys = torch.unique(c, dim=0) if c is not None else [None]
                for key in keys:
                    rows = (c == key).all(1) if c is not None else torch.ones(len(lo), dtype=torch.bool)
                    shift = b + (a[:, list(fixed)] @ key if c is not None else 0.0)
                    count += _meeting_points_inside(a[:, free], shift, lo[rows][:, free], hi[rows][:, free],
                                                    samples, gen)
    return count


def check_first_layer_memory(n_vertices: float, dim: int, width: int, n_constraints: int, itemsize: int,
                             limit: float | None, desc: str) -> None:
    """Refuse, before any cut, a subdivision whose first layer alone would exceed ``limit``:
    ``n_vertices`` (:func:`first_layer_vertices`) vertices, each with its position, zero set, packed
    signs, tile, the layer's ``width`` values carried with it and about ``dim`` edges, times the
    mode's peak factor: the measure :func:`_check_memory` applies during the cuts, on the rows the
    first layer's cuts will hold, without the buffers' spare capacity. It errs towards letting the
    cuts start (their own guard then stops them where it always did); where it refuses, the cuts
    would have been stopped before the first layer's end. A 4x512 first layer near the origin
    (geometric initialisation, biases moved by 0.05): refused in 0.75 s, where the cuts ran 46.7 s
    before the budget stopped them; a 384-wide one, and the trained 4x256 bunny, are under this
    bound and are stopped by the cuts' guard as before.

    Parameters
    ----------
    n_vertices : float
        Vertices of the first layer's arrangement inside the tiles.
    dim : int
        Input dimension ``D``.
    width : int
        The first layer's neurons.
    n_constraints : int
        Constraints of the subdivision (box facets, neurons, the level set, encoder planes).
    itemsize : int
        Bytes of the extraction's float dtype.
    limit : float or None
        The budget in bytes (None: no check).
    desc : str
        The mode, ``"complex"`` or ``"surface"``.

    Raises
    ------
    MemoryError
        If the estimate exceeds ``limit``.

    Examples
    --------
    >>> check_first_layer_memory(1e6, 3, 256, 1000, 8, 2**30, "surface")
    Traceback (most recent call last):
    ...
    MemoryError: edge subdivision (surface mode) refused before its first cut: ...
    """
    if limit is None:
        return
    words = (n_constraints + 63) // 64
    per_vertex = dim * itemsize + dim * 4 + words * 8 + 4 + width * itemsize + dim * (2 + dim - 1) * 4
    need = _HELD_FACTOR.get(desc, 2) * n_vertices * per_vertex
    if need > 1.02 * limit:  # 2% for a sampled count's error
        _over_budget(desc, f"refused before its first cut: the first layer's {width} neurons alone make "
                           f"~{n_vertices:,.0f} vertices in this box, which need", need, limit)
