"""The exact polyhedral complex of a piecewise-affine network (a :class:`~nsr.pl.PLGraph`), by edge subdivision.

Berzins, "Polyhedral Complex Extraction from ReLU Networks using Edge Subdivision",
ICML 2023 (arXiv 2306.07212). The 1-skeleton (vertices, edges) of the current complex is
kept together with the sign-vectors that encode its combinatorics. For every neuron in
order, its pre-activation is evaluated at the vertices; every edge whose endpoints have
opposite signs is split at the interpolated zero (exact: the neuron is affine on every
current edge); the new vertices that bound a common 2-face are connected. A 2-face is
named by a *face key*: the sign-vector of one of its edges with one zero entry made
non-zero. Keys are hashed, sorted, and paired.

Constraints and sign-vectors
----------------------------
Constraint ids follow :class:`nsr.pl.layout.ConstraintLayout`: ``0 .. 2D-1`` for the box
facets (``2d``: ``x_d >= lo_d``, ``2d+1``: ``x_d <= hi_d``, positive inside), then the planes
of the graph's encoder if it has one (``2D .. 2D+P-1``, split first: they are fixed planes of
the input space), then the hidden neurons in layer order, and last the output level set (used
by :meth:`PolyhedralComplex.level_set`). Every neuron of a graph (ReLU, LeakyReLU, PReLU, abs;
clamps are two neurons) has one hyperplane, and its pre-activation, affine in the input and in
earlier layers (skip and residual blocks), is affine on every cell of the neurons before it:
the property the subdivision needs. Evaluation is :meth:`PLGraph.preactivations` and every
bound comes from :mod:`nsr.pl.bounds`. A
sign-vector has one entry in {-1, 0, +1} per constraint. It is stored compactly: the
zero entries of a vertex (``D`` of them) or an edge (``D-1``) as sorted ids, and the
positive entries as a bit set packed in int64 words.

Degenerate positions
--------------------
Networks whose hyperplanes meet in one point or line (all hidden biases zero, as
``geometric_init`` starts; integer or 1/8 weights; duplicated, opposite or zero neurons) put
vertices exactly on later hyperplanes. The pre-activation computed there (evaluated, then
carried through edge interpolations) is a rounded zero of either sign, and classifying it by
its sign would cut a convex 2-face more than once: holes, unpaired faces, Euler
characteristics in the hundreds. nsr therefore takes every value within a tolerance
``tol_c`` of zero as an exact zero (:func:`snap_to_zero`), and counts an exact zero as
positive (:func:`positive_side`). ``tol_c`` is one constant per neuron for the whole box
(:func:`sign_tolerances`: 64 eps times the neuron's rounding scale, ``sum over its sources
|block| @ max|source value| + |b_c|`` with the sources' largest magnitudes over the box),
whatever the tiles, workers or mode.
The rule ``z >= -tol_c`` is then the exact classification of the network whose neuron ``c``
has its bias raised by ``tol_c``: a closed half-space, which meets the boundary of every
convex 2-face in one arc, so every face is cut at most once and the result is a valid
complex (Euler characteristic 1) of that perturbed network, for every vertex whose computed
value is within its rounding error of the true one and whose true value is not within that
error of ``-tol_c`` (measured on bias-free nets in float64: rounded zeros stay below one
unit, other values start above 1e4 units). A snapped endpoint has ``z = 0`` exactly, so a
cut there is at ``t = 0`` and the new vertex (and its carried values) are bitwise the
endpoint's: the perturbation shows up as coincident vertices and zero-length edges. Pruning
widens its bounds by the same tolerance (:func:`may_reach`), so it never drops a cell that
the rule would cut. Zero sets stay combinatorial: a vertex's zeros are the constraints that
constructed it. Face keys that do not pair where they must (every key of a complete face;
after region pruning only keys seen three or more times, and every key of the level set)
are counted in ``stats["unpaired_face_keys"]`` with a warning: 0 on every healthy extraction.
float32 cannot always tell rounded zeros from small values (on deep bias-free networks the
two ranges overlap); that is when it is non-zero. Because the tolerance is set by the largest
value over the box, a box far larger than the network's detail (an unscaled network over
``+-1e15``) erases detail below its resolution: ``stats["uncertain_signs"]`` counts values taken
as zero although above rounding noise (0 on healthy extractions) and :func:`check_box` warns
when first-layer offsets are below the box's resolution; both warn. Boxes a dtype cannot
answer on at all are refused by :func:`check_box`.
"""

from __future__ import annotations

import contextlib
import json
import math
import resource
import sys
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from nsr import limits
from nsr.files import COMPLEX_FORMAT, COMPLEX_VERSION, atomic_write, read_complex_file
from nsr.networks import PLNetwork
from nsr.pl import bounds as _bounds
from nsr.pl.bounds import frontier, layer_bounds, region_bounds, source_ranges
from nsr.pl.graph import ENCODED, INPUT, PLGraph, as_graph
from nsr.pl.layout import ConstraintLayout

_BITS = 64


# --------------------------------------------------------------------------------------
# Input checking
# --------------------------------------------------------------------------------------


def as_bounds(bounds: Any, dim: int = 3) -> np.ndarray:
    """Normalize a box to a ``(D, 2)`` float64 array ``[[lo_0, hi_0], ...]``.

    Accepts a scalar ``b`` (the box ``[-b, b]^D``), ``(lo, hi)`` scalars for every axis, or
    a per-axis ``(D, 2)`` array.
    """
    try:
        arr = np.asarray(bounds, dtype=np.float64) if bounds is not None else None
    except (TypeError, ValueError):
        arr = None
    if arr is None:
        raise ValueError(f"bounds must be numbers: a scalar b (the box [-b, b]^{dim}), (lo, hi) for every axis or "
                         f"a ({dim}, 2) array; got {bounds!r}")
    if arr.ndim == 0:
        arr = np.array([-abs(float(arr)), abs(float(arr))])
    if arr.shape == (2,):
        arr = np.tile(arr, (dim, 1))
    if arr.shape != (dim, 2):
        raise ValueError(
            f"bounds must be (lo, hi) or a ({dim}, 2) array for a {dim}-D network, got shape {arr.shape}"
        )
    if not np.isfinite(arr).all():
        raise ValueError(f"bounds contain NaN or inf: {arr.tolist()}; give a finite box")
    if not (arr[:, 0] < arr[:, 1]).all():
        bad = int(np.argmax(arr[:, 0] >= arr[:, 1]))
        raise ValueError(f"bounds: axis {bad} has lo={arr[bad, 0]} >= hi={arr[bad, 1]}; every axis needs lo < hi "
                         "(a box of positive width)")
    return arr


# Fewer representable coordinates than this across an axis of the box cannot place vertices.
_MIN_ULPS_ACROSS = 2**12


def check_box(net: PLGraph | PLNetwork, b: np.ndarray, dtype: torch.dtype, level: float = 0.0) -> None:
    """Refuse a box (``(D, 2)`` float64, from :func:`as_bounds`) on which ``dtype`` cannot
    answer: coordinates beyond its range, an axis so thin for its offset that few
    coordinates are representable across it, first-layer hyperplanes closer to the origin than
    the box's rounding scale (their detail would be lost), or network values so large that
    bounding them overflows (linear bound propagation multiplies two of them). Raises ``ValueError``."""
    fi = torch.finfo(dtype)
    name = str(dtype).removeprefix("torch.")
    mag = np.abs(b).max(1)
    width = b[:, 1] - b[:, 0]
    for ax in range(len(b)):
        if not np.isfinite(width[ax]) or mag[ax] > fi.max / 4:
            raise ValueError(f"bounds: axis {ax} [{b[ax, 0]:g}, {b[ax, 1]:g}] exceeds the {name} range; scale "
                             "the box down and the network's first-layer weights up by the same factor")
        if width[ax] < _MIN_ULPS_ACROSS * fi.eps * mag[ax]:
            raise ValueError(
                f"bounds: axis {ax} [{float(b[ax, 0])!r}, {float(b[ax, 1])!r}] is {width[ax]:.3g} wide at an offset of "
                f"{mag[ax]:.3g}: {name} has only ~{width[ax] / (fi.eps * mag[ax]):.0f} coordinates across it, too "
                "few to place vertices; translate the box (and the network's first-layer bias) towards the origin"
                + (", or use dtype=float64" if dtype != torch.float64 else ""))
    netd = as_graph(net).to(dtype=torch.float64, device="cpu")
    with torch.no_grad():
        lo, hi = torch.as_tensor(b[:, 0])[None], torch.as_tensor(b[:, 1])[None]
        pre = layer_bounds(netd, lo, hi, crown_hidden=False)
    reach = max(max(float(p[0].abs().max()), float(p[1].abs().max())) for p in pre)
    reach = max(reach, abs(level))
    limit = math.sqrt(fi.max) / 2**10
    if not reach <= limit:
        raise ValueError(
            f"over this box the network's pre-activations may reach {reach:.3g}, beyond what {name} can bound "
            f"(~{limit:.3g}); scale the box down and the network's first-layer weights up by the same factor "
            "(the geometry only scales)")
    # A first-layer hyperplane off the origin by less than the box's rounding scale cannot be
    # placed: its offset is below the tolerance every neuron's sign decision allows for. Layer 0
    # reads the input (and the encoder's features, whose magnitude over the box counts too).
    first = netd.layers[0] if netd.n_layers else netd.output
    scale = _rounding_scale(first, source_magnitudes(netd, lo[0], hi[0], pre))
    rel = first.bias.abs() / (scale - first.bias.abs()).clamp(min=fi.tiny)
    lost = int(((rel > 0) & (rel < 2**16 * fi.eps)).sum())
    if not lost:
        return
    msg = (f"{lost} first-layer hyperplanes pass the origin closer than {name} resolves over this box (offsets "
           f"below {2**16 * fi.eps:.1g} of the box's scale): the network's detail near the origin is below the "
           "box's resolution and its mesh would be wrong there; shrink the box to where the surface is")
    if dtype == torch.float64:  # the modes would disagree (589/580/580 polygons over +-1e12): refuse
        raise ValueError(f"bounds: {msg}")
    # float32 resolves only ~1e-3 of a box: ordinary networks have such planes; warn, and point to float64
    warnings.warn(f"{msg}, or use dtype=float64", stacklevel=3)


def output_bounds(net: PLGraph | PLNetwork, lo: Tensor, hi: Tensor,
                  known: list[tuple[Tensor, Tensor]] | None = None, crown_hidden: bool = True
                  ) -> tuple[Tensor, Tensor]:
    """Bounds ``(K,)`` of the output over boxes ``(K, D)``: :func:`nsr.pl.bounds.output_bounds`
    of the network's graph (kept here for callers that hold a :class:`PLNetwork`)."""
    return _bounds.output_bounds(as_graph(net), lo, hi, known, crown_hidden)


def resolve_dtype(dtype: torch.dtype | str | None) -> torch.dtype:
    """float64 unless asked otherwise: exactness is the product, and float64 makes
    degenerate positions (vertices on later hyperplanes) far rarer; the extra cost is small
    because the work is dominated by index bookkeeping, not arithmetic."""
    if dtype is None:
        return torch.float64
    if isinstance(dtype, str):
        dtype = {"float32": torch.float32, "float64": torch.float64, "double": torch.float64,
                 "float": torch.float32}.get(dtype, None)  # type: ignore[assignment]
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dtype must be float32 or float64, got {dtype}")
    return dtype


@contextlib.contextmanager
def no_tf32() -> Iterator[None]:
    """Switch TF32 off (it would round matmuls to 10 mantissa bits) and restore it after."""
    old = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory of this process (resident set, CPU) or of the CUDA allocator, in MB."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# --------------------------------------------------------------------------------------
# Bit-packed sign sets
# --------------------------------------------------------------------------------------


def n_words(n_constraints: int) -> int:
    return max(1, math.ceil(n_constraints / _BITS))


def bit_values(ids: Tensor) -> tuple[Tensor, Tensor]:
    """Word index and single-bit mask of constraint ids, ``(...,)`` each."""
    word = torch.div(ids, _BITS, rounding_mode="floor")
    mask = torch.ones_like(ids) << (ids - word * _BITS)
    return word, mask


def unpack_bits(pos: Tensor, ids: Tensor) -> Tensor:
    """Bits ``ids`` of packed sets ``pos`` ``(M, W)`` -> ``(M, len(ids))`` bool."""
    # Unpack bytes, not words: bit j of a word is bit j % 8 of its byte j // 8 (little
    # endian), so (M, 8W, 8) uint8 shifts replace one int64 gather and shift per bit
    # (10x faster for the 256-bit patterns of an 8x32 network).
    m = pos.shape[0]
    if pos.device.type == "cpu" and sys.byteorder == "little":
        by = pos.contiguous().view(torch.uint8)
    else:
        by = torch.stack([(pos >> (8 * k)) & 255 for k in range(8)], 2).to(torch.uint8).reshape(m, -1)
    shifts = torch.arange(8, dtype=torch.uint8, device=pos.device)
    bits = ((by[..., None] >> shifts) & 1).reshape(m, _BITS * pos.shape[1])
    return bits[:, ids].bool()


def pack_bits(flags: Tensor, n_words_: int) -> Tensor:
    """``(M, C)`` bool over constraints ``0..C-1`` -> ``(M, W)`` int64."""
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
    """Hash ``(M, K)`` int64 rows into ``(M,)`` int64."""
    h = torch.full((rows.shape[0],), _C3, dtype=torch.int64, device=rows.device)
    for k in range(rows.shape[1]):
        h = _mix(h * _C3 + rows[:, k])
    return h


def group_equal_rows(rows: Tensor) -> tuple[Tensor, Tensor]:
    """Group identical rows: returns ``(order, group_id)`` where ``rows[order]`` is sorted
    by hash with equal rows adjacent and ``group_id[k]`` numbers the group of ``rows[order[k]]``.

    Hash collisions between different rows are split into separate groups.
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


# Temporaries of at most this size are recycled by the allocator; larger ones are mapped
# and page-faulted afresh on every allocation, which on some VMs costs more than the
# arithmetic (a (1.4M, 32) float64 matmul: 0.07 s into a reused buffer, 0.55 s fresh).
CHUNK_BYTES = 2**23


def _chunks(n: int, row_bytes: int, device: torch.device) -> list[slice]:
    """Row slices covering ``range(n)`` whose temporaries of ``row_bytes`` per row stay
    under :data:`CHUNK_BYTES` on CPU (one slice on GPUs, where the caching allocator
    recycles memory anyway)."""
    step = n if device.type != "cpu" else max(256, CHUNK_BYTES // max(1, row_bytes))
    return [slice(s, min(n, s + step)) for s in range(0, n, max(1, step))]


def _evaluate(graph: PLGraph | PLNetwork, x: Tensor, layer: int, j0: int, j1: int, shift: float) -> Tensor:
    """Pre-activations ``(V, j1 - j0)`` of neurons ``j0:j1`` of ``layer`` (``n_layers``: the
    output) at ``x`` ``(V, D)``, minus ``shift``, in vertex chunks: the one evaluator of the
    extraction (:meth:`PLGraph.preactivations`; nsr.tracking still passes PLNetworks)."""
    graph = as_graph(graph)
    out = torch.empty(x.shape[0], j1 - j0, dtype=x.dtype, device=x.device)
    for sl in _chunks(x.shape[0], x.element_size() * graph.live_width, x.device):
        out[sl] = graph.preactivations(x[sl], layer, j0, j1)
    if shift:
        out -= shift
    return out


def _source_values(graph: PLGraph, x: Tensor, sources: list[int], upto: int) -> Tensor:
    """Values ``(V, sum n_k)`` of ``sources`` (layers ``< upto``' post-activations, the input,
    the features) at ``x``, concatenated in the given order."""
    if not sources:
        return x.new_zeros(x.shape[0], 0)
    values = graph.post_activations(x, upto)
    return torch.cat([values[k] for k in sources], 1)


# --------------------------------------------------------------------------------------
# Growable buffers (amortized appends instead of a torch.cat per neuron)
# --------------------------------------------------------------------------------------


class _Buffer:
    def __init__(self, data: Tensor) -> None:
        self.data = data
        self.n = data.shape[0]

    @property
    def t(self) -> Tensor:
        return self.data[: self.n]

    def append(self, rows: Tensor) -> None:
        need = self.n + rows.shape[0]
        if need > self.data.shape[0]:
            cap = max(need, int(self.data.shape[0] * 1.5) + 1024)
            new = torch.empty((cap, *self.data.shape[1:]), dtype=self.data.dtype, device=self.data.device)
            new[: self.n] = self.data[: self.n]
            self.data = new
        self.data[self.n : need] = rows
        self.n = need

    def keep(self, mask_or_index: Tensor) -> None:
        self.data = self.t[mask_or_index]  # advanced indexing already copies
        self.n = self.data.shape[0]


@dataclass
class _Skeleton:
    """Working state of edge subdivision over a batch of disjoint tiles (boxes)."""

    x: _Buffer  # (V, D) positions
    vzeros: _Buffer  # (V, D) int32 sorted zero constraint ids
    vpos: _Buffer  # (V, W) int64 packed positive constraints
    vtile: _Buffer  # (V,) int32 tile of each vertex
    edges: _Buffer  # (E, 2) int32 (indices stay below 2^31: that is 500 GB of vertices)
    ezeros: _Buffer  # (E, D-1) int32 sorted zero constraint ids
    dim: int
    # face keys that appeared other than twice where every key must pair (see split_by_constraint)
    unpaired: int = 0
    # region pruning has dropped edges: some 2-faces of dropped regions lost part of their
    # boundary, and a later neuron may legitimately cut one of them once
    partial: bool = False
    # values taken as zero although above rounding noise (see split_by_constraint)
    uncertain: Tensor | int = 0
    stats: dict[str, Any] = field(default_factory=dict)
    # (V, n) pre-activations of the current layer while pruning: filtered with the vertices,
    # so that the bounds and the subdivision share one evaluation
    values: _Buffer | None = None

    @property
    def n_vertices(self) -> int:
        return self.x.n

    @property
    def n_edges(self) -> int:
        return self.edges.n


def box_skeleton(tile_lo: Tensor, tile_hi: Tensor, n_constraints: int) -> _Skeleton:
    """The 1-skeleton of ``K`` disjoint boxes ``(K, D)`` with their sign-vectors."""
    k, d = tile_lo.shape
    dev, dt = tile_lo.device, tile_lo.dtype
    corners = torch.cartesian_prod(*[torch.tensor([0, 1], device=dev)] * d).reshape(-1, d)  # (2^D, D)
    nc = corners.shape[0]
    x = torch.where(corners.bool()[None], tile_hi[:, None, :], tile_lo[:, None, :]).reshape(-1, d)
    facet_axis = torch.arange(d, device=dev)
    on = 2 * facet_axis[None, :] + corners  # facet each corner lies on, per axis (2^D, D)
    off = 2 * facet_axis[None, :] + 1 - corners  # facet it is strictly inside of
    w = n_words(n_constraints)
    flags = torch.zeros(nc, 2 * d, dtype=torch.bool, device=dev)
    flags.scatter_(1, off, True)
    pos = pack_bits(flags, w)
    # Edges: corner pairs differing in one axis; zero set = the other axes' facets.
    ce, cz = [], []
    for axis in range(d):
        low = corners[:, axis] == 0
        a = torch.nonzero(low).squeeze(1)
        b = a + (1 << (d - 1 - axis))  # cartesian_prod is row-major, last axis fastest
        ce.append(torch.stack([a, b], 1))
        others = [ax for ax in range(d) if ax != axis]
        cz.append(on[a][:, others] if others else torch.zeros(len(a), 0, dtype=torch.int64, device=dev))
    cedges, cezeros = torch.cat(ce), torch.cat(cz)
    offs = (torch.arange(k, device=dev) * nc)[:, None, None]
    edges = (cedges[None] + offs).reshape(-1, 2)
    return _Skeleton(
        x=_Buffer(x.to(dt)),
        vzeros=_Buffer(on.repeat(k, 1).int()),
        vpos=_Buffer(pos.repeat(k, 1)),
        vtile=_Buffer(torch.arange(k, device=dev).repeat_interleave(nc).int()),
        edges=_Buffer(edges.int()),
        ezeros=_Buffer(cezeros.repeat(k, 1).int()),
        dim=d,
    )


def snap_to_zero(z: Tensor, tol: float | Tensor) -> Tensor:
    """``z`` with the values within ``tol`` of zero made exactly zero (``(V,)``).

    Values that small are rounding noise around vertices lying on the hyperplane (see the
    module docstring, *Degenerate positions*); an exact zero then counts as positive."""
    if isinstance(tol, Tensor) or tol > 0:
        return torch.where(z.abs() <= tol, torch.zeros_like(z), z)
    return z


def positive_side(z: Tensor, tol: float | Tensor = 0.0) -> Tensor:
    """The sign rule of edge subdivision: values within ``tol`` of zero count as exact zeros
    (:func:`snap_to_zero`), and an exact zero counts as positive. ``(V,)`` bool."""
    return z >= -tol


def split_by_constraint(sk: _Skeleton, values: _Buffer | None, z: Tensor, c: int, tol: float | Tensor = 0.0
                        ) -> None:
    """Subdivide the skeleton by the zero set of ``z`` (one value per vertex), constraint ``c``.

    ``z`` must be affine on every edge. Values within ``tol`` of zero (a bound on their
    rounding error, :func:`sign_tolerances`) count as exact zeros, and exact zeros as
    positive: the consistent perturbation described in the module docstring. ``values``
    (same-layer pre-activations, ``(V, n)``) are interpolated onto the new vertices.
    Mutates ``sk`` in place.
    """
    d = sk.dim
    s = positive_side(z, tol)
    if isinstance(tol, Tensor) or tol > 0:
        # Rounded zeros stay below 1/64 of the tolerance (module docstring); a snapped value
        # above 1/8 of it is more likely real detail the tolerance erased: count it (no sync here).
        a = z.abs()
        sk.uncertain = sk.uncertain + ((a <= tol) & (a > tol / 8)).sum()
    word, mask = bit_values(torch.tensor(c, device=z.device))
    vpos = sk.vpos.t
    vpos[:, word] |= s.long() * mask
    e = sk.edges.t
    # index_select on the flattened (E, 2) array: one contiguous gather per neuron, the
    # hot loop of the whole extraction
    se = s.index_select(0, e.reshape(-1)).view(-1, 2)
    cut = torch.nonzero(se[:, 0] != se[:, 1]).squeeze(1)
    n = cut.numel()
    if n == 0:
        return
    ce = e.index_select(0, cut)
    ca, cb = ce[:, 0].contiguous(), ce[:, 1].contiguous()
    za, zb = snap_to_zero(z.index_select(0, ca), tol), snap_to_zero(z.index_select(0, cb), tol)
    # za >= 0 > zb or the reverse, |za - zb| > tol: t in [0, 1], and t = 0 (1) exactly where a
    # (b) was snapped, so the new vertex and its values are bitwise those of the endpoint
    t = (za / (za - zb)).unsqueeze(1)
    x = sk.x.t
    xa = x.index_select(0, ca)
    xn = xa + t * (x.index_select(0, cb) - xa)
    ez = sk.ezeros.t.index_select(0, cut).long()  # (n, D-1)
    pe = vpos.index_select(0, ca) | vpos.index_select(0, cb)
    pe[:, word] &= ~mask  # the new vertices are zero on c
    new_ids = torch.arange(sk.n_vertices, sk.n_vertices + n, device=z.device, dtype=torch.int32)
    if values is not None:
        vv = values.t
        va = vv.index_select(0, ca)
        values.append(va + t.to(vv.dtype) * (vv.index_select(0, cb) - va))
    cz = torch.full((n, 1), c, dtype=torch.int64, device=z.device)
    sk.x.append(xn)
    sk.vzeros.append(torch.cat([ez, cz], 1).int())
    sk.vpos.append(pe)
    tile_a = sk.vtile.t.index_select(0, ca)
    sk.vtile.append(tile_a)
    # Split each cut edge (a, b) into (a, new) in place and (new, b) appended.
    sk.edges.t[cut, 1] = new_ids
    sk.edges.append(torch.stack([new_ids, cb], 1))
    sk.ezeros.append(ez.int())
    if d < 2:
        return
    # Face keys: for each zero slot i of the cut edge and each side, the 2-face obtained by
    # making that entry non-zero. Box facets have no outside.
    keys, owners = [], []
    tile = tile_a.long().unsqueeze(1)
    for i in range(d - 1):
        zi = ez[:, i]
        rest = torch.cat([ez[:, :i], ez[:, i + 1 :]], 1)
        wi, mi = bit_values(zi)
        for side in (0, 1):
            pk = pe.clone()
            if side:
                rows = torch.arange(n, device=z.device)
                pk[rows, wi] |= mi
                sel = torch.arange(n, device=z.device)
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
    # A consistent sign rule cuts a convex 2-face's boundary exactly twice, so every key of a
    # complete face appears twice. Three or more is always a defect; one is legitimate only on
    # faces that lost part of their boundary to region pruning (``sk.partial``).
    sk.unpaired += int((counts > 2).sum()) + (0 if sk.partial else int((counts == 1).sum()))
    p = order[starts[pair_groups]]
    q = order[starts[pair_groups] + 1]
    new_edges = torch.stack([new_ids[owner[p]], new_ids[owner[q]]], 1)
    zrest = key[p][:, key.shape[1] - (d - 2) :] if d > 2 else key.new_zeros(len(p), 0)
    sk.edges.append(new_edges)
    sk.ezeros.append(torch.cat([zrest, torch.full((len(p), 1), c, dtype=torch.int64, device=z.device)], 1).int())


# A pre-activation within this many units of roundoff of its rounding scale counts as zero.
# Measured on bias-free networks (geometric init, 3-6 layers of 16, float64): values whose
# true value is zero (vertices on the hyperplane, carried through up to ~100 interpolations)
# stay below 1 unit, values that are not zero start above 1e4 units; in float32 the two
# ranges meet near 1e2 units (float32 cannot tell them apart at all on such networks).
SIGN_TOL_ULPS = 64.0


def source_magnitudes(graph: PLGraph, lo: Tensor, hi: Tensor, pre: list[tuple[Tensor, Tensor]]
                      ) -> dict[int, Tensor]:
    """Largest magnitude ``(n_k,)`` of every source over the box ``lo, hi`` ``(D,)``: the box's
    coordinates for the input, the encoder's feature bounds, and each layer's post-activation
    range from its pre-activation bounds ``pre[k]`` ``(1, n_k)`` (:func:`nsr.pl.bounds.layer_bounds`)."""
    from nsr.pl.bounds import activation_range

    big = torch.finfo(lo.dtype).max
    mags: dict[int, Tensor] = {}
    for k, (rlo, rhi) in source_ranges(graph, lo[None], hi[None]).items():
        mags[k] = torch.maximum(rlo.abs(), rhi.abs())[0].nan_to_num(posinf=big)
    for k, layer in enumerate(graph.layers):
        alo, ahi = activation_range(layer, pre[k][0][0], pre[k][1][0])
        mags[k] = torch.maximum(alo.abs(), ahi.abs()).nan_to_num(posinf=big)
    return mags


def _rounding_scale(aff: Any, mags: dict[int, Tensor]) -> Tensor:
    """``sum_k |block_k| @ max|source_k| + |b|`` ``(n,)``: the magnitude of the terms a neuron's
    pre-activation sums, which its rounding error is proportional to."""
    scale = aff.bias.abs()
    for k in aff.sources:
        scale = scale + mags[k] @ aff.blocks[k].abs().T
    return scale


def sign_tolerances(net: PLGraph, lo: Tensor, hi: Tensor, level: float = 0.0) -> list[Tensor]:
    """Per layer ``(n_k,)``, then ``(1,)`` for the output: below which magnitude a
    pre-activation computed in the box ``lo, hi`` ``(D,)`` is indistinguishable from zero (the
    output shifted by ``level``).

    :data:`SIGN_TOL_ULPS` ``* eps *`` the rounding scale of each neuron, ``sum over its sources
    |block| @ max|source value| + |b|`` (:func:`_rounding_scale`), with the sources' magnitudes
    over the box (the box itself for the input, linear bound propagation for layers). One
    constant per neuron for the whole box, whatever the tiling, so that snapping to zero is the
    same shift of the hyperplane everywhere; it scales with the box and the weights (a box of
    ``1e20`` and a box of ``1`` with the first layer scaled by ``1e-20`` get the same decisions)."""
    big = torch.finfo(lo.dtype).max
    unit = SIGN_TOL_ULPS * torch.finfo(lo.dtype).eps
    pre = layer_bounds(net, lo[None], hi[None], crown_hidden=True)
    mags = source_magnitudes(net, lo, hi, pre)
    out = []
    for k in range(net.n_layers + 1):
        scale = _rounding_scale(net.affine(k), mags)
        if k == net.n_layers:
            scale = scale + abs(level)
        out.append(unit * scale.nan_to_num(posinf=big))
    return out


def facet_tolerances(normals: Tensor, offsets: Tensor, lo: Tensor, hi: Tensor) -> Tensor:
    """Sign tolerances ``(P,)`` of encoder planes ``normals . x - offsets`` over the box, as
    :func:`sign_tolerances` computes them for neurons."""
    mag = torch.maximum(lo.abs(), hi.abs())
    return SIGN_TOL_ULPS * torch.finfo(lo.dtype).eps * (normals.abs() @ mag + offsets.abs())


def _prune_tiles(sk: _Skeleton, alive_tiles: Tensor) -> None:
    """Drop every vertex and edge of the tiles not in ``alive_tiles`` (bool per tile)."""
    keep_v = alive_tiles[sk.vtile.t]
    if bool(keep_v.all()):
        return
    _keep(sk, keep_v, keep_v[sk.edges.t[:, 0]])


def _keep(sk: _Skeleton, keep_v: Tensor, keep_e: Tensor) -> None:
    """Keep the marked vertices and edges (every kept edge must have kept endpoints)."""
    remap = (torch.cumsum(keep_v.long(), 0) - 1).int()
    edges = remap[sk.edges.t[keep_e]]
    for buf in (sk.x, sk.vzeros, sk.vpos, sk.vtile, sk.values):
        if buf is not None:
            buf.keep(keep_v)
    sk.ezeros.keep(keep_e)
    sk.edges = _Buffer(edges)


def _index_reduce(out: Tensor, index: Tensor, src: Tensor, op: str) -> None:
    """``out[index[i]] = op(out[index[i]], src[i])`` row-wise. ``scatter_reduce_`` with an
    expanded index: 6x faster on CPU than ``index_reduce_`` for millions of rows."""
    out.scatter_reduce_(0, index[:, None].expand(-1, src.shape[1]), src, op)


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
    for sl in _chunks(n_regions, 8 * row, dev):
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


def subdivide(
    net: PLGraph | PLNetwork,
    tile_lo: Tensor,
    tile_hi: Tensor,
    *,
    level: float | None = None,
    prune: bool = False,
    keep_negative: Tensor | None = None,
    band: Band | None = None,
    region_layers: int = 3,
    progress: bool = True,
    desc: str = "extract",
    max_value_bytes: int = 2**30,
    memory_limit: float | None = None,
    tolerances: list[Tensor] | None = None,
    facets: tuple[Tensor, Tensor, Tensor] | None = None,
) -> tuple[_Skeleton, Tensor]:
    """Edge subdivision of ``K`` disjoint tiles ``(K, D)`` by every hidden neuron, and by the
    output level set ``f = level`` if ``level`` is given.

    ``prune=True`` drops, before each layer, tiles whose output provably cannot reach
    ``level`` (interval bounds from the exact range of that layer's pre-activations over the
    tile, which are affine on every current cell and so extreme at vertices), except tiles
    marked in ``keep_negative`` (bool per tile) that are below the level. Before each of the
    last ``region_layers`` hidden layers (from layer 2 on), regions are pruned one by one (interval and
    linear bounds from the exact range of the layer over each region, see
    :func:`_prune_regions_bounded`), and with a ``band``, regions whose bounding box misses
    it. ``tolerances`` are :func:`sign_tolerances` of the whole box (default: over the tiles
    given); pass the same ones to every batch of tiles of one box. A graph with an encoder is
    first split by the encoder's planes (``facets``: normals ``(P, D)``, offsets ``(P,)`` and
    tolerances ``(P,)``, from :func:`encoder_facets` of the whole box; default: over the tiles
    given), constraint ids ``2D .. 2D+P-1``, after which every layer is affine on every edge.
    Returns the skeleton and the tiles kept.
    """
    net = as_graph(net)
    d = net.in_dim
    n_neurons = net.n_neurons
    if facets is None or tolerances is None:
        box_lo, box_hi = tile_lo.min(0).values, tile_hi.max(0).values
    if facets is None:
        facets = encoder_facets(net, box_lo, box_hi)
    layout = ConstraintLayout(d, net.widths, len(facets[1]))
    sk = box_skeleton(tile_lo, tile_hi, layout.n_constraints)
    n_tiles = tile_lo.shape[0]
    alive = torch.ones(n_tiles, dtype=torch.bool, device=tile_lo.device)
    lv = 0.0 if level is None else float(level)
    if tolerances is None:
        tolerances = sign_tolerances(net, box_lo, box_hi, lv)
    tol_out = float(tolerances[-1][0])
    out_layer = net.n_layers
    n_layers = out_layer + 1 if level is not None else out_layer
    bar = _progress(layout.n_facets + n_neurons + (1 if level is not None else 0), desc, progress)
    t0 = time.perf_counter()
    itemsize = torch.finfo(tile_lo.dtype).bits // 8
    limit = memory_limit if memory_limit is not None else default_memory_limit()
    tile_ranges: list[tuple[Tensor, Tensor]] = []
    try:
        normals, offsets, facet_tol = facets
        for p in range(layout.n_facets):  # the encoder's planes: affine in x, so split first
            split_by_constraint(sk, None, sk.x.t @ normals[p] - offsets[p], layout.facet(p), facet_tol[p])
            _check_memory(sk, None, limit, 0, n_neurons, desc)
            if bar is not None:
                bar.update(1)
        c = layout.neuron_offset
        for layer in range(n_layers):
            width = net.affine(layer).n
            if prune and layer < out_layer:  # at the output the split itself finds the crossings
                if sk.n_vertices * width * itemsize * 2 <= max_value_bytes:
                    sk.values = _Buffer(_evaluate(net, sk.x.t, layer, 0, width, 0.0))
                # not before layer 2: after one layer the regions are many and far from the output, so
                # their bounds cost more than they save (trained 4x128 bunny: minutes at layer 1)
                by_region = keep_negative is None and layer >= max(2, out_layer - region_layers)
                if not by_region:  # per-region bounds subsume the tile's
                    alive &= _tiles_reaching(net, sk, layer, tile_lo, tile_hi, lv, keep_negative, tile_ranges,
                                             tol_out)
                    _prune_tiles(sk, alive)
                if band is not None and layer > 0 and sk.n_edges:
                    sk.stats[f"regions_kept_layer{layer}"] = _prune_regions(sk, band)
                if by_region and sk.n_edges:
                    sk.stats[f"regions_kept_layer{layer}"] = _prune_regions_bounded(net, sk, layer, lv, tol_out)
            j0 = 0
            while j0 < width:
                # Pre-activations of this layer are affine on every current edge, so new
                # vertices inherit interpolated values; only a block of columns is kept at a
                # time (fresh evaluation per block) to bound memory.
                cols = max(1, min(width - j0, max_value_bytes // max(1, sk.n_vertices * itemsize * 2)))
                if sk.values is not None:  # evaluated for pruning, filtered with the vertices
                    values, sk.values, cols = sk.values, None, width
                else:
                    values = _Buffer(_evaluate(net, sk.x.t, layer, j0, j0 + cols, lv if layer == out_layer else 0.0))
                tol = tolerances[layer]
                if layer == out_layer:
                    # A dropped region provably holds no vertex on either side of the level set's
                    # cut (may_reach), so the level set cuts only complete faces: every key pairs.
                    sk.partial = False
                for j in range(cols):
                    split_by_constraint(sk, values, values.t[:, j].clone(), c, tol[j0 + j])
                    _check_memory(sk, values, limit, c - layout.neuron_offset, n_neurons, desc)
                    c += 1
                    if bar is not None:
                        bar.update(1)
                        bar.set_postfix(layer=layer, V=sk.n_vertices, E=sk.n_edges, refresh=False)
                del values
                j0 += cols
    finally:
        if bar is not None:
            bar.close()
    sk.stats["subdivision_s"] = time.perf_counter() - t0
    sk.stats["tiles_alive"] = int(alive.sum())
    sk.stats["uncertain_signs"] = int(sk.uncertain)
    warn_unpaired(sk.unpaired, tile_lo.dtype)
    warn_uncertain(sk.stats["uncertain_signs"], tile_lo.dtype)
    return sk, alive


def encoder_facets(graph: PLGraph, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The encoder's planes over the box ``lo, hi`` ``(D,)``: normals ``(P, D)``, offsets
    ``(P,)`` and their sign tolerances ``(P,)`` (:func:`facet_tolerances`); ``P = 0`` without an
    encoder. Computed once per box so that every tile and worker numbers them alike."""
    if graph.encoder is None:
        empty = lo.new_zeros(0)
        return lo.new_zeros(0, graph.in_dim), empty, empty
    normals, offsets = graph.encoder.planes(lo, hi)
    normals, offsets = normals.to(lo), offsets.to(lo)
    return normals, offsets, facet_tolerances(normals, offsets, lo, hi)


def warn_uncertain(uncertain: int, dtype: torch.dtype) -> None:
    """Warn that ``uncertain`` pre-activations were taken as zero although above rounding noise."""
    if not uncertain:
        return
    hint = "float32 cannot tell them apart here: use dtype=float64" if dtype == torch.float32 else \
        "the box is large for the network's detail: shrink it to where the surface is"
    warnings.warn(
        f"{uncertain} pre-activations were within the rounding tolerance of zero ({SIGN_TOL_ULPS:g} eps times the "
        "neuron's largest value over the box) but above rounding noise, and were taken as exact zeros: detail of "
        f"the network at that scale may be moved or lost; {hint}",
        stacklevel=3,
    )


def warn_unpaired(unpaired: int, dtype: torch.dtype) -> None:
    """Warn that the complex is inconsistent where ``unpaired`` face keys did not pair."""
    if not unpaired:
        return
    hint = ("float32 cannot separate rounded zeros from small values on this network: use dtype=float64"
            if dtype == torch.float32 else "please report the network and box")
    warnings.warn(
        f"{unpaired} 2-faces were cut other than twice: a sign decision near a degenerate position "
        f"exceeded the rounding tolerance, so the complex (and a mesh from it) may have holes there; {hint}",
        stacklevel=3,
    )


def default_memory_limit() -> float | None:
    """80% of the memory available now, honouring ``ulimit -v`` (``RLIMIT_AS``) and a cgroup
    limit (see :func:`nsr.limits.default_memory_limit`), or None where unknown."""
    return limits.default_memory_limit()


def skeleton_bytes(sk: _Skeleton, values: _Buffer | None) -> int:
    """Bytes held by the skeleton's arrays (and the current block of layer values)."""
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


def _tiles_reaching(net: PLGraph, sk: _Skeleton, layer: int, tile_lo: Tensor, tile_hi: Tensor, level: float,
                    keep_negative: Tensor | None, ranges: list[tuple[Tensor, Tensor]], tol: float = 0.0) -> Tensor:
    """Tiles whose output may reach ``level``. The pre-activations of layers ``0..layer`` are
    affine on every current cell, so their exact range over a tile is their min/max over the
    tile's vertices; later layers and the output are bounded by linear bound propagation.

    ``ranges`` holds the ranges of earlier layers from earlier calls and gets this layer's:
    subdivision adds vertices only inside cells where those layers are affine and pruning
    only removes vertices, so an earlier range stays a valid bound."""
    n_tiles = tile_lo.shape[0]
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
    olo, ohi = output_bounds(net, tile_lo, tile_hi, known)
    reach = has & may_reach(olo, ohi, level, tol)
    if keep_negative is not None:
        reach |= has & keep_negative & (ohi < level + tol)
    return reach


def _progress(total: int | None, desc: str, enabled: bool, unit: str = "neuron") -> Any:
    """A progress bar on a terminal; where stderr is a file or a pipe (a log), a line at every
    tenth of the work instead of carriage-return redraws; ``None`` when not ``enabled``."""
    if not enabled:
        return None
    if not _stderr_is_terminal():
        return _LineProgress(total, desc, unit)
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, leave=False)


def _stderr_is_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed stream
        return False


class _LineProgress:
    """The part of tqdm's interface the extraction uses, printing plain lines to stderr: one per
    tenth of ``total`` (one per 100 steps where the total is unknown) and one at the end."""

    def __init__(self, total: int | None, desc: str, unit: str) -> None:
        self.total, self.desc, self.unit, self.n = total, desc, unit, 0
        self.postfix: dict[str, Any] = {}
        self.t0 = time.perf_counter()
        self._next, self._last = self._step(), 0

    def _step(self) -> int:
        return self.n + (max(1, math.ceil(self.total / 10)) if self.total else 100)

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.n >= self._next:
            self._line()
            self._next = self._step()

    def set_postfix(self, refresh: bool = True, **kwargs: Any) -> None:
        self.postfix = kwargs

    def close(self) -> None:
        if self.n != self._last:
            self._line()

    def _line(self) -> None:
        of = f"/{self.total}" if self.total else ""
        post = "".join(f", {k}={v:,}" if isinstance(v, int) else f", {k}={v}" for k, v in self.postfix.items())
        self._last = self.n
        print(f"{self.desc}: {self.n}{of} {self.unit}s{post} ({time.perf_counter() - self.t0:.1f} s)",
              file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------
# The complex
# --------------------------------------------------------------------------------------


class PolyhedralComplex:
    """The polyhedral complex of a ReLU network restricted to a box.

    Attributes
    ----------
    vertices : ``(V, D)`` float tensor.
    edges : ``(E, 2)`` int32 tensor of vertex indices (int32 halves the memory of large
        complexes; it indexes tensors like int64).
    vertex_zeros : ``(V, D)`` int32, the sorted constraint ids each vertex lies on.
    edge_zeros : ``(E, D-1)`` int32, the sorted constraint ids each edge lies on.
    vertex_signs : ``(V, W)`` int64, packed positive entries of the sign-vectors.
    net : the :class:`~nsr.pl.PLGraph` (a :class:`~nsr.networks.PLNetwork` given is converted),
        bounds ``(D, 2)``, and ``stats``.
    layout : the :class:`~nsr.pl.layout.ConstraintLayout` of the constraint ids (box facets,
        encoder facets, neurons, output).
    """

    def __init__(
        self,
        net: PLGraph | PLNetwork,
        bounds: np.ndarray,
        vertices: Tensor,
        edges: Tensor,
        vertex_zeros: Tensor,
        edge_zeros: Tensor,
        vertex_signs: Tensor,
        stats: dict[str, Any] | None = None,
        level: float | None = None,
        n_facets: int = 0,
    ) -> None:
        self.net = as_graph(net)
        self.layout = ConstraintLayout(int(vertices.shape[1]), self.net.widths, n_facets)
        self.bounds = np.asarray(bounds, dtype=np.float64)
        self.vertices = vertices
        self.edges = edges
        self.vertex_zeros = vertex_zeros
        self.edge_zeros = edge_zeros
        self.vertex_signs = vertex_signs
        self.stats: dict[str, Any] = dict(stats or {})
        self.level = level  # set when the complex is refined by the level set f = level
        self._cells: dict[int, tuple[Tensor, Tensor]] = {}
        self._incidence: dict[int, Tensor] = {}

    # -- sizes --------------------------------------------------------------------------
    @property
    def dim(self) -> int:
        return int(self.vertices.shape[1])

    @property
    def n_neurons(self) -> int:
        return self.net.n_neurons

    @property
    def graph(self) -> PLGraph:
        """The network (the same object as :attr:`net`)."""
        return self.net

    @property
    def n_constraints(self) -> int:
        """Box facets, encoder facets, hidden neurons and the output."""
        return self.layout.n_constraints

    @property
    def output_constraint(self) -> int:
        return self.layout.output

    def __repr__(self) -> str:
        return f"PolyhedralComplex(dim={self.dim}, f_vector={self.f_vector})"

    # -- cells --------------------------------------------------------------------------
    def edge_signs(self) -> Tensor:
        """Packed positive entries of the edges' sign-vectors, ``(E, W)`` int64."""
        return self.vertex_signs[self.edges[:, 0]] | self.vertex_signs[self.edges[:, 1]]

    def cells(self, k: int) -> tuple[Tensor, Tensor]:
        """Cells of dimension ``k`` as ``(signs (M, W) int64 packed, zeros (M, D-k) int64)``.

        Cells of dimension ``k >= 2`` are recovered from the ``(k-1)``-cells' sign-vectors:
        each zero entry made positive or negative (box facets only positive) names a
        ``k``-cell containing it.
        """
        if not 0 <= k <= self.dim:
            raise ValueError(f"cell dimension must be in 0..{self.dim}, got {k}")
        if k == 0:
            return self.vertex_signs, self.vertex_zeros.long()
        if k == 1:
            return self.edge_signs(), self.edge_zeros.long()
        if k not in self._cells:
            self._build_cells(k)
        return self._cells[k]

    def _build_cells(self, k: int) -> None:
        from nsr.cells import cofaces  # nsr.cells builds on this module's bit sets and hashes

        pos, zeros = self.cells(k - 1)
        cell_pos, cell_zeros, incidence = cofaces(pos, zeros, self.dim)
        del pos, zeros  # the edges' signs are gathered anew; free them before the next dimension
        self._cells[k] = (cell_pos, cell_zeros)
        self._incidence[k] = incidence

    def incidence(self, k: int) -> Tensor:
        """Pairs ``(i, j)``: ``(k-1)``-cell ``i`` is a facet of ``k``-cell ``j``, ``(M, 2)``
        (int32 for ``k >= 2``, grouped by ``j``: they are the largest arrays of a big complex)."""
        if k == 1:
            n = self.edges.shape[0]
            return torch.stack([self.edges.reshape(-1).long(), torch.arange(n).repeat_interleave(2)], 1)
        self.cells(k)
        return self._incidence[k]

    @property
    def f_vector(self) -> list[int]:
        """Number of cells of each dimension ``0..D``."""
        sizes = [int(self.vertices.shape[0]), int(self.edges.shape[0])]  # no sign gather needed
        return (sizes + [int(self.cells(k)[0].shape[0]) for k in range(2, self.dim + 1)])[: self.dim + 1]

    @property
    def euler_characteristic(self) -> int:
        """``sum_k (-1)^k f_k``; 1 for a complex that subdivides a box."""
        return sum((-1) ** k * f for k, f in enumerate(self.f_vector))

    def sign_vectors(self, k: int, index: Tensor | None = None) -> Tensor:
        """Full sign-vectors of ``k``-cells, ``(M, C)`` int8 in {-1, 0, +1} over all constraints
        (box facets, neurons, output)."""
        pos, zeros = self.cells(k)
        if index is not None:
            pos, zeros = pos[index], zeros[index]
        ids = torch.arange(self.n_constraints, device=pos.device)
        sv = unpack_bits(pos, ids).to(torch.int8) * 2 - 1
        if zeros.shape[1]:
            sv.scatter_(1, zeros, torch.zeros_like(zeros, dtype=torch.int8))
        return sv

    def activation_patterns(self, k: int, index: Tensor | None = None) -> Tensor:
        """Activation patterns (neuron strictly positive) of ``k``-cells, ``(M, N)`` bool."""
        pos, _ = self.cells(k)
        if index is not None:
            pos = pos[index]
        ids = torch.arange(self.layout.neuron_offset, self.layout.output, device=pos.device)
        return unpack_bits(pos, ids)

    def region_gradients(self, index: Tensor | None = None) -> Tensor:
        """Gradient of the network on each D-cell (region), ``(M, D)``."""
        pat = self.activation_patterns(self.dim, index)
        splits = torch.split(pat, self.net.widths, dim=1)
        return self.net.local_gradients(list(splits))

    # -- level set ----------------------------------------------------------------------
    def refine(self, level: float = 0.0) -> PolyhedralComplex:
        """This complex subdivided by the output level set ``f = level`` as well."""
        if self.level is not None:
            if self.level != level:
                raise ValueError(f"complex already refined by the level {self.level}")
            return self
        sk = _Skeleton(
            x=_Buffer(self.vertices.clone()),
            vzeros=_Buffer(self.vertex_zeros.clone()),
            vpos=_Buffer(self.vertex_signs.clone()),
            vtile=_Buffer(torch.zeros(len(self.vertices), dtype=torch.int32, device=self.vertices.device)),
            edges=_Buffer(self.edges.clone()),
            ezeros=_Buffer(self.edge_zeros.clone()),
            dim=self.dim,
        )
        net = self.net.to(device=self.vertices.device, dtype=self.vertices.dtype)
        box = torch.as_tensor(self.bounds, dtype=net.dtype, device=net.device)
        with torch.no_grad(), no_tf32():
            tol = sign_tolerances(net, box[:, 0], box[:, 1], level)[-1][0]
            f = net(sk.x.t) - level
            split_by_constraint(sk, None, f, self.output_constraint, tol)
        warn_unpaired(sk.unpaired, net.dtype)
        warn_uncertain(int(sk.uncertain), net.dtype)
        stats = dict(self.stats, unpaired_face_keys=self.stats.get("unpaired_face_keys", 0) + sk.unpaired,
                     uncertain_signs=self.stats.get("uncertain_signs", 0) + int(sk.uncertain))
        return PolyhedralComplex(self.net, self.bounds, sk.x.t, sk.edges.t, sk.vzeros.t, sk.ezeros.t,
                                 sk.vpos.t, stats, level=level, n_facets=self.layout.n_facets)

    def level_set(self, level: float = 0.0) -> LevelSet:
        """The sub-complex on ``f = level``: cells of dimension ``0..D-1`` whose sign-vector is
        zero on the output."""
        ref = self.refine(level)
        out = ref.output_constraint
        cells = []
        for k in range(ref.dim):
            pos, zeros = ref.cells(k)
            on = (zeros == out).any(1) if zeros.shape[1] else torch.zeros(len(pos), dtype=torch.bool)
            cells.append(torch.nonzero(on).squeeze(1))
        return LevelSet(ref, cells)

    # -- persistence --------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write the complex, its network and metadata to one ``.npz`` file (atomically)."""
        path = Path(path)
        arrays: dict[str, np.ndarray] = {
            "vertices": self.vertices.cpu().numpy(),
            "edges": self.edges.cpu().numpy(),
            "vertex_zeros": self.vertex_zeros.cpu().numpy(),
            "edge_zeros": self.edge_zeros.cpu().numpy(),
            "vertex_signs": self.vertex_signs.cpu().numpy(),
            "bounds": self.bounds,
        }
        if not (self.net.is_mlp and self.net.is_relu and self.net.encoder is None):
            raise ValueError("saving the complex of a network with skip or residual blocks, non-ReLU neurons or an "
                             "encoder is not supported yet (the file format stores Linear/ReLU layers); keep the "
                             "network and extract again, or save the mesh")
        plain = self.net.to_plnetwork(pre_transform=True)  # the complex is g's: the transform is not needed
        for i, (w, b) in enumerate(zip(plain.weights, plain.biases)):
            arrays[f"weight_{i}"] = w.detach().cpu().double().numpy()
            arrays[f"bias_{i}"] = b.detach().cpu().double().numpy()
        meta = {"format": COMPLEX_FORMAT, "version": COMPLEX_VERSION, "level": self.level,
                "n_layers": len(plain.weights), "dtype": str(self.vertices.dtype),
                "stats": self.stats}
        arrays["meta"] = np.array(json.dumps(meta, default=float))
        path.parent.mkdir(parents=True, exist_ok=True)
        return atomic_write(path, lambda fh: np.savez_compressed(fh, **arrays))

    @classmethod
    def load(cls, path: str | Path) -> PolyhedralComplex:
        """Read a complex written by :meth:`save`.

        The file is read as numbers only (never unpickled) and validated before use: array
        shapes and dtypes, finite vertices and weights, ``lo < hi`` bounds, vertex indices and
        constraint ids in range. Raises ``FileNotFoundError`` or
        :class:`~nsr.files.ComplexFileError` (a ``ValueError``) naming the file and what is wrong.
        """
        f = read_complex_file(path)
        t = torch.from_numpy
        return cls(f["net"], f["bounds"], t(f["vertices"]), t(f["edges"]), t(f["vertex_zeros"]),
                   t(f["edge_zeros"]), t(f["vertex_signs"]), f["meta"].get("stats"), f["meta"].get("level"))


@dataclass
class LevelSet:
    """Cells of a refined complex lying on ``f = level``; ``cells[k]`` indexes ``complex.cells(k)``."""

    complex: PolyhedralComplex
    cells: list[Tensor]

    @property
    def dim(self) -> int:
        return self.complex.dim - 1

    @property
    def vertices(self) -> Tensor:
        return self.complex.vertices[self.cells[0]]

    @property
    def edges(self) -> Tensor:
        """Level-set edges as indices into :attr:`vertices`, ``(E, 2)``."""
        if self.dim < 1:
            return torch.zeros(0, 2, dtype=torch.int64)
        remap = torch.full((len(self.complex.vertices),), -1, dtype=torch.int64)
        remap[self.cells[0]] = torch.arange(len(self.cells[0]))
        return remap[self.complex.edges[self.cells[1]]]

    @property
    def f_vector(self) -> list[int]:
        return [len(c) for c in self.cells]

    @property
    def euler_characteristic(self) -> int:
        return sum((-1) ** k * f for k, f in enumerate(self.f_vector))


def extract_complex(
    net: Any,
    bounds: Any,
    *,
    dtype: torch.dtype | str | None = None,
    device: torch.device | str | None = None,
    progress: bool = True,
    memory_limit: float | None = None,
) -> PolyhedralComplex:
    """Extract the exact polyhedral complex of a piecewise-affine network over a box.

    Parameters
    ----------
    net : a :class:`~nsr.pl.PLGraph`, a :class:`~nsr.networks.PLNetwork`, an ``nn.Module``
        (traced by :func:`nsr.pl.trace`) or anything :func:`nsr.pl.as_graph` reads. The complex
        is that of the piecewise-affine output ``g`` (before any output transform); a graph
        with an encoder also gets the encoder's planes (constraint ids ``2D..2D+P-1``).
    bounds : ``(lo, hi)`` for every axis, or a ``(D, 2)`` array.
    dtype : float64 by default (see :func:`resolve_dtype`); float32 on request.
    device : "cpu", "cuda", ...; defaults to the network's device.
    progress : show a progress bar per neuron with vertex and edge counts.
    memory_limit : bytes the extraction may hold before it stops with a ``MemoryError``
        naming what it reached (default: 80% of the memory available at the start).
    """
    net = as_graph(net)
    dt = resolve_dtype(dtype)
    dev = limits.check_device(device) if device is not None else net.device
    b = as_bounds(bounds, net.in_dim)
    check_box(net, b, dt)
    memory_limit = limits.check_memory_limit(memory_limit)
    netd = net.to(device=dev, dtype=dt)
    lo = torch.as_tensor(b[:, 0], dtype=dt, device=dev)[None]
    hi = torch.as_tensor(b[:, 1], dtype=dt, device=dev)[None]
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    t0 = time.perf_counter()
    with torch.no_grad(), no_tf32():
        facets = encoder_facets(netd, lo[0], hi[0])
        sk, _ = subdivide(netd, lo, hi, level=None, progress=progress, desc="complex", memory_limit=memory_limit,
                          facets=facets)
    stats = {
        "time_s": time.perf_counter() - t0,
        "peak_memory_mb": peak_memory_mb(dev),
        "unpaired_face_keys": sk.unpaired,
        "uncertain_signs": sk.stats["uncertain_signs"],
        "dtype": str(dt),
        "device": str(dev),
    }
    return PolyhedralComplex(netd, b, sk.x.t, sk.edges.t, sk.vzeros.t, sk.ezeros.t, sk.vpos.t, stats,
                             n_facets=len(facets[1]))
