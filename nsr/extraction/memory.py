"""Memory of edge subdivision: chunk sizes, the budget, and the guard that stops before the machine runs out."""

from __future__ import annotations

import resource
import sys
from typing import TYPE_CHECKING, Any

import torch

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
        advice = _MEMORY_ADVICE.get(desc, _MEMORY_ADVICE["complex"])
        raise MemoryError(
            f"edge subdivision ({desc} mode) stopped after {done} of {total} neurons: {sk.n_vertices:,} vertices "
            f"and {sk.n_edges:,} edges already need ~{_size(need)}, over the limit of {_size(limit)} "
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
