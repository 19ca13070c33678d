"""Bounds on a :class:`~nsr.pl.graph.PLGraph` over boxes: interval arithmetic and linear bound
propagation (CROWN, Zhang et al. 2018) through its layered blocks.

The extractor (``nsr.extraction.complex``, ``nsr.extraction.surface``) reads every bound it needs from here: per-layer
bounds over boxes (tolerances, tile and band pruning) and bounds of the output in terms of one
layer's pre-activations and the sources later layers read (region pruning, :func:`region_bounds`).
For a plain ReLU MLP they are the bounds nsr has always used (the same relaxations). Neurons
with slopes ``(neg, pos)`` are relaxed on a crossing range ``[lo, hi]`` by the chord on the
concave-up side (``pos >= neg``: ReLU, LeakyReLU, abs; the chord is an upper bound) and by a
line through the origin of slope ``pos`` or ``neg`` (whichever side of 0 is longer) on the other.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from nsr.pl.graph import ENCODED, INPUT, Affine, Layer, PLGraph

Bounds = tuple[Tensor, Tensor]


def activation_range(layer: Layer, lo: Tensor, hi: Tensor) -> Bounds:
    """Exact range ``(..., n)`` of the neurons' post-activations for pre-activations in ``[lo, hi]``:
    the extremes of a one-breakpoint function are at the ends or at the breakpoint 0.

    Parameters
    ----------
    layer : Layer
        Gives the slopes ``neg``, ``pos`` ``(n,)``.
    lo, hi : (..., n) float Tensor
        Pre-activation bounds.

    Returns
    -------
    (lower, upper) : pair of (..., n) float Tensor

    Examples
    --------
    >>> import torch
    >>> from nsr.pl import INPUT, Layer
    >>> from nsr.pl.bounds import activation_range
    >>> absolute = Layer({INPUT: torch.eye(1)}, torch.zeros(1), neg=-torch.ones(1), pos=torch.ones(1))
    >>> activation_range(absolute, torch.tensor([-1.0]), torch.tensor([3.0]))  # |z| on [-1, 3]
    (tensor([0.]), tensor([3.]))
    """
    if layer.is_relu:  # the hot case (every bound pass of a ReLU network), in two ops
        return lo.relu(), hi.relu()
    f_lo = torch.where(lo > 0, layer.pos * lo, layer.neg * lo)
    f_hi = torch.where(hi > 0, layer.pos * hi, layer.neg * hi)
    crossing = (lo < 0) & (hi > 0)
    zero = torch.zeros_like(lo)
    a_lo = torch.minimum(f_lo, f_hi)
    a_hi = torch.maximum(f_lo, f_hi)
    return (torch.where(crossing, torch.minimum(a_lo, zero), a_lo),
            torch.where(crossing, torch.maximum(a_hi, zero), a_hi))


def relaxation(layer: Layer, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Lines ``s_lo z + t_lo <= act(z) <= s_up z + t_up`` for ``z`` in ``[lo, hi]`` ``(..., n)``:
    exact off the breakpoint; on a crossing range the chord on one side and a line through 0
    of slope ``pos`` (if ``hi > -lo``) or ``neg`` on the other. Returns ``s_lo, t_lo, s_up, t_up``.

    Parameters
    ----------
    layer : Layer
        Gives the slopes.
    lo, hi : (..., n) float Tensor
        Pre-activation bounds.

    Returns
    -------
    s_lo, t_lo, s_up, t_up : (..., n) float Tensor
        Slopes and offsets of the lower and upper lines.

    Examples
    --------
    >>> import torch
    >>> from nsr.pl import INPUT, Layer
    >>> from nsr.pl.bounds import relaxation
    >>> relu = Layer({INPUT: torch.eye(1)}, torch.zeros(1))
    >>> relaxation(relu, torch.tensor([-1.0]), torch.tensor([3.0]))  # z <= relu(z) <= 0.75 z + 0.75
    (tensor([1.]), tensor([0.]), tensor([0.7500]), tensor([0.7500]))
    """
    if layer.is_relu:
        return _relu_relaxation(lo, hi)
    neg, pos = layer.neg, layer.pos
    active, inactive = lo >= 0, hi <= 0
    crossing = ~active & ~inactive
    f_lo, f_hi = neg * lo, pos * hi  # on a crossing range
    denom = torch.where(crossing, hi - lo, torch.ones_like(hi))
    chord_s = (f_hi - f_lo) / denom
    chord_t = torch.where(crossing, f_lo - chord_s * lo, torch.zeros_like(lo))
    pick = torch.where(hi > -lo, pos, neg)
    convex = (pos >= neg).expand_as(lo)
    exact = torch.where(active, pos, neg)
    s_up = torch.where(crossing, torch.where(convex, chord_s, pick), exact)
    s_lo = torch.where(crossing, torch.where(convex, pick, chord_s), exact)
    zero = torch.zeros_like(lo)
    t_up = torch.where(crossing & convex, chord_t, zero)
    t_lo = torch.where(crossing & ~convex, chord_t, zero)
    return s_lo, t_lo, s_up, t_up


def source_ranges(graph: PLGraph, lo: Tensor, hi: Tensor) -> dict[int, Bounds]:
    """Ranges of the sources that are not layers over boxes ``[lo, hi]`` ``(K, D)``: the box for
    ``INPUT``, and ``encoder.feature_bounds`` ``(K, F)`` for ``ENCODED`` when the graph has an encoder.

    Parameters
    ----------
    graph : PLGraph
        The network.
    lo, hi : (K, D) float Tensor
        Corners of ``K`` boxes.

    Returns
    -------
    dict of int to (lower, upper)

    Examples
    --------
    >>> import torch
    >>> from nsr.pl import as_graph
    >>> from nsr.pl.bounds import source_ranges
    >>> from nsr.networks import octahedron_network
    >>> lo = torch.zeros(1, 3, dtype=torch.float64)
    >>> list(source_ranges(as_graph(octahedron_network()), lo, lo + 1))
    [-1]
    """
    out: dict[int, Bounds] = {INPUT: (lo, hi)}
    if graph.encoder is not None:
        out[ENCODED] = graph.encoder.feature_bounds(lo, hi)
    return out


def frontier(graph: PLGraph, layer: int) -> list[int]:
    """Sources other than layer ``layer`` that the layers after it (and the output) read: the
    input, the encoder and layers ``< layer`` (skip and residual blocks). Empty for a plain MLP,
    whose later layers read only ``layer``'s own chain.

    Parameters
    ----------
    graph : PLGraph
        The network.
    layer : int
        A hidden layer.

    Returns
    -------
    list of int
        Sorted source indices.

    Examples
    --------
    >>> from nsr.pl import SkipMLP, trace
    >>> from nsr.pl.bounds import frontier
    >>> from nsr.networks import random_network
    >>> from nsr.pl import as_graph
    >>> frontier(as_graph(random_network(3, [8, 8, 8], seed=0)), 1)
    []
    """
    found: set[int] = set()
    for m in range(layer + 1, graph.n_layers + 1):
        found.update(k for k in graph.affine(m).blocks if k < layer)
    return sorted(found)


def _relu_relaxation(lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """:func:`relaxation` of ``relu`` (slopes ``(0, 1)``) in fewer operations: the chord
    ``hi (z - lo) / (hi - lo)`` above, slope 1 (if ``hi > -lo``) or 0 through the origin below."""
    active, inactive = lo >= 0, hi <= 0
    unstable = ~active & ~inactive
    denom = torch.where(unstable, hi - lo, torch.ones_like(hi))
    one, zero = torch.ones_like(lo), torch.zeros_like(lo)
    s_up = torch.where(active, one, torch.where(unstable, hi / denom, zero))
    t_up = torch.where(unstable, -lo * hi / denom, zero)
    s_lo = torch.where(active | (unstable & (hi > -lo)), one, zero)
    return s_lo, zero, s_up, t_up


def _affine_interval(aff: Affine, ranges: dict[int, Bounds]) -> Bounds:
    n_boxes = next(iter(ranges.values()))[0].shape[0]  # (K, n) even for a map with no source (a constant)
    mid = aff.bias.expand(n_boxes, -1)
    rad = torch.zeros_like(mid)
    for k in aff.sources:
        lo, hi = ranges[k]
        w = aff.blocks[k]
        mid = mid + ((lo + hi) / 2) @ w.T
        rad = rad + ((hi - lo) / 2) @ w.abs().T
    return mid - rad, mid + rad


def interval_bounds(graph: PLGraph, lo: Tensor | None, hi: Tensor | None, known: Sequence[Bounds] | None = None,
                    sources: dict[int, Bounds] | None = None) -> list[Bounds]:
    """Interval bounds ``(K, n_l)`` on the pre-activations of every layer and of the output
    (last entry, ``(K, 1)``) over boxes ``[lo, hi]`` ``(K, D)``; ``known[l]`` replace computed ones.

    Parameters
    ----------
    graph : PLGraph
        The network.
    lo, hi : (K, D) float Tensor or None
        Corners of ``K`` boxes (not read where ``sources`` are given).
    known : sequence of (lower, upper), optional
        Given bounds of the first layers.
    sources : dict of int to (lower, upper), optional
        Ranges of the sources (default :func:`source_ranges` of the boxes), e.g. exact ones over a
        simplex; only those the layers after ``known`` read are needed.

    Returns
    -------
    list of (lower, upper)
        ``(K, n_l)`` per layer, then ``(K, 1)`` for the output.

    Examples
    --------
    >>> import torch
    >>> from nsr.pl import as_graph
    >>> from nsr.pl.bounds import interval_bounds
    >>> from nsr.networks import octahedron_network
    >>> lo = torch.zeros(1, 3, dtype=torch.float64)
    >>> pre = interval_bounds(as_graph(octahedron_network()), lo, lo + 0.1)
    >>> [tuple(p[0].shape) for p in pre]
    [(1, 6), (1, 1)]
    >>> round(float(pre[-1][0]), 6), round(float(pre[-1][1]), 6)  # contains the true range [-0.5, -0.2]
    (-0.8, 0.1)
    """
    known = list(known or [])
    if sources is None and (lo is None or hi is None):
        raise ValueError("interval_bounds needs the boxes lo, hi or the sources' ranges")
    ranges = dict(sources) if sources is not None else source_ranges(graph, lo, hi)  # type: ignore[arg-type]
    pre: list[Bounds] = []
    for l in range(graph.n_layers + 1):
        z = known[l] if l < len(known) else _affine_interval(graph.affine(l), ranges)
        pre.append(z)
        if l < graph.n_layers:
            ranges[l] = activation_range(graph.layers[l], *z)
    return pre


def linear_bounds(graph: PLGraph, target: int, pre: Sequence[Bounds | None], stop: int = 0, j0: int = 0,
                  j1: int | None = None, keep_stop: bool = False
                  ) -> tuple[dict[int, Tensor], Tensor, dict[int, Tensor], Tensor]:
    """Linear bounds of the pre-activations ``j0:j1`` of layer ``target`` (``n_layers``: the
    output) by back-substitution through the layers ``stop..target-1``, each relaxed with the
    pre-activation bounds ``pre[k]`` ``(K, n_k)``.

    Returns ``(a_lo, c_lo, a_up, c_up)``: coefficient dicts over the input (``INPUT``,
    ``(K, m, D)``) and the post-activations of layers ``< stop`` (``(K, m, n_k)``), and constants
    ``(K, m)``, with ``sum_k a_lo[k] v_k + c_lo <= z <= sum_k a_up[k] v_k + c_up`` wherever every
    layer ``k`` in ``stop..target-1`` has pre-activations within ``pre[k]``. With ``stop = 0``
    only the input remains (see :func:`concretize`); with ``stop = l`` the bounds are affine on
    every cell of the complex of layers ``< l``. With ``keep_stop`` the activation of layer
    ``stop`` is relaxed but its affine map is not substituted: the entry ``stop`` of the
    coefficient dicts then multiplies the *pre-activations* of layer ``stop`` (``(K, m, n_stop)``).

    Parameters
    ----------
    graph : PLGraph
        The network.
    target : int
        Layer bounded (``n_layers``: the output).
    pre : sequence of (lower, upper)
        Pre-activation bounds ``(K, n_k)`` of layers ``stop..target-1`` at least (other entries
        may be ``None``).
    stop : int
        First layer substituted.
    j0, j1 : int
        Neurons of ``target`` bounded (``j1=None``: to the end).
    keep_stop : bool
        Keep the pre-activations of layer ``stop`` as variables.

    Returns
    -------
    a_lo : dict of int to Tensor
    c_lo : (K, m) float Tensor
    a_up : dict of int to Tensor
    c_up : (K, m) float Tensor

    Examples
    --------
    >>> import torch
    >>> from nsr.pl import INPUT, as_graph
    >>> from nsr.pl.bounds import interval_bounds, linear_bounds
    >>> from nsr.networks import random_network
    >>> g = as_graph(random_network(3, [8, 4], seed=0))
    >>> lo = torch.zeros(2, 3, dtype=torch.float64)
    >>> a_lo, c_lo, a_up, c_up = linear_bounds(g, g.n_layers, interval_bounds(g, lo, lo + 0.1))
    >>> sorted(a_lo), tuple(a_lo[INPUT].shape), tuple(c_lo.shape)
    ([-1], (2, 1, 3), (2, 1))
    """
    aff = graph.affine(target)
    j1 = aff.n if j1 is None else j1
    aff = aff.rows(j0, j1)
    known = [p for p in pre if p is not None]
    n_boxes = known[0][0].shape[0] if known else 1
    # both bounds in one sweep: each layer's relaxation is computed once
    coefs = [{k: w.expand(n_boxes, -1, -1) for k, w in aff.blocks.items()} for _ in range(2)]
    consts = [aff.bias.expand(n_boxes, -1)] * 2
    for k in range(target - 1, stop - 1, -1):
        if k not in coefs[0]:
            continue
        s_lo, t_lo, s_up, t_up = (t[:, None, :] for t in relaxation(graph.layers[k], *pre[k]))
        layer = graph.layers[k]
        for upper, coef in enumerate(coefs):
            c = coef.pop(k)
            cp, cn = c.clamp(min=0), c.clamp(max=0)
            if upper:
                cz, const = cp * s_up + cn * s_lo, consts[1] + (cp * t_up + cn * t_lo).sum(-1)
            else:
                cz, const = cp * s_lo + cn * s_up, consts[0] + (cp * t_lo + cn * t_up).sum(-1)
            if keep_stop and k == stop:
                coef[k], consts[upper] = cz, const
                continue
            consts[upper] = const + cz @ layer.bias
            for j, w in layer.blocks.items():
                coef[j] = coef[j] + cz @ w if j in coef else cz @ w
    return coefs[0], consts[0], coefs[1], consts[1]


def concretize(a_lo: dict[int, Tensor], c_lo: Tensor, a_up: dict[int, Tensor], c_up: Tensor, lo: Tensor,
               hi: Tensor, features: Bounds | None = None) -> Bounds:
    """Bounds ``(K, m)`` over boxes ``[lo, hi]`` ``(K, D)`` from input-only linear bounds.

    Parameters
    ----------
    a_lo, c_lo, a_up, c_up
        From :func:`linear_bounds` with ``stop=0``.
    lo, hi : (K, D) float Tensor
        The boxes.
    features : (lower, upper), optional
        Bounds ``(K, F)`` of the encoder's features over the boxes, for coefficients of ``ENCODED``.

    Returns
    -------
    (lower, upper) : pair of (K, m) float Tensor

    Raises
    ------
    ValueError
        If the bounds still refer to hidden layers.

    Examples
    --------
    >>> import torch
    >>> from nsr.pl import as_graph
    >>> from nsr.pl.bounds import concretize, interval_bounds, linear_bounds
    >>> from nsr.networks import octahedron_network
    >>> g = as_graph(octahedron_network())
    >>> lo = torch.full((1, 3), -0.1, dtype=torch.float64)
    >>> concretize(*linear_bounds(g, 1, interval_bounds(g, lo, lo + 0.1)), lo, lo + 0.1)
    (tensor([[-0.5000]], dtype=torch.float64), tensor([[-0.2000]], dtype=torch.float64))
    """
    if set(a_lo) - {INPUT, ENCODED} or set(a_up) - {INPUT, ENCODED}:
        raise ValueError("concretize needs bounds in terms of the input only (linear_bounds with stop=0)")
    ranges = {INPUT: (lo, hi)}
    if features is not None:
        ranges[ENCODED] = features
    elif ENCODED in a_lo or ENCODED in a_up:
        raise ValueError("bounds read the encoder's features: pass their bounds over the boxes (features=)")
    lower, upper = c_lo, c_up
    for k, (rlo, rhi) in ranges.items():
        mid, rad = ((rlo + rhi) / 2)[..., None], ((rhi - rlo) / 2)[..., None]
        if k in a_lo:
            lower = lower + (a_lo[k] @ mid).squeeze(-1) - (a_lo[k].abs() @ rad).squeeze(-1)
        if k in a_up:
            upper = upper + (a_up[k] @ mid).squeeze(-1) + (a_up[k].abs() @ rad).squeeze(-1)
    return lower, upper


def output_bounds(graph: PLGraph, lo: Tensor, hi: Tensor, known: Sequence[Bounds] | None = None,
                  crown_hidden: bool = True) -> Bounds:
    """Bounds ``(K,)`` of ``g`` over boxes ``[lo, hi]`` ``(K, D)``: layer by layer, the tighter of
    interval arithmetic and linear bound propagation (hidden layers by intervals only with
    ``crown_hidden=False``, CROWN-IBP); ``known[l]`` are given bounds on layer ``l``'s
    pre-activations (e.g. their exact range over a tile), used in place of computed ones.

    Parameters
    ----------
    graph : PLGraph
        The network.
    lo, hi : (K, D) float Tensor
        Corners of ``K`` boxes.
    known : sequence of (lower, upper), optional
        Given bounds of the first layers.
    crown_hidden : bool
        Also use linear bounds on hidden layers.

    Returns
    -------
    (lower, upper) : pair of (K,) float Tensor
        ``lower <= g(x) <= upper`` for every ``x`` in each box.

    Examples
    --------
    >>> import torch
    >>> from nsr.pl import as_graph
    >>> from nsr.pl.bounds import output_bounds
    >>> from nsr.networks import random_network
    >>> g = as_graph(random_network(3, [16, 16], seed=0))
    >>> lo = torch.tensor([[0.0, 0.0, 0.0], [-0.5, 0.2, 0.1]], dtype=torch.float64)
    >>> lower, upper = output_bounds(g, lo, lo + 0.2)
    >>> x = lo[:, None] + 0.2 * torch.rand(2, 1000, 3, dtype=torch.float64)  # brute force inside each box
    >>> values = g(x.reshape(-1, 3)).reshape(2, 1000)
    >>> bool((lower[:, None] <= values).all() and (values <= upper[:, None]).all())
    True
    """
    pre = layer_bounds(graph, lo, hi, known, crown_hidden)
    return pre[-1][0][:, 0], pre[-1][1][:, 0]


def layer_bounds(graph: PLGraph, lo: Tensor, hi: Tensor, known: Sequence[Bounds] | None = None,
                 crown_hidden: bool = True, sources: dict[int, Bounds] | None = None) -> list[Bounds]:
    """Bounds ``(K, n_l)`` on the pre-activations of every layer, then ``(K, 1)`` on the output,
    over boxes ``[lo, hi]`` ``(K, D)``, as :func:`output_bounds` computes them.

    Parameters
    ----------
    graph : PLGraph
        The network.
    lo, hi : (K, D) float Tensor
        Corners of ``K`` boxes.
    known : sequence of (lower, upper), optional
        Given bounds of the first layers.
    crown_hidden : bool
        Also use linear bounds on hidden layers.
    sources : dict of int to (lower, upper), optional
        Ranges of the sources (:func:`source_ranges`, default) when tighter ones are known.

    Returns
    -------
    list of (lower, upper)

    Examples
    --------
    >>> import torch
    >>> from nsr.pl import as_graph
    >>> from nsr.pl.bounds import layer_bounds
    >>> from nsr.networks import random_network
    >>> lo = torch.zeros(2, 3, dtype=torch.float64)
    >>> [tuple(p[0].shape) for p in layer_bounds(as_graph(random_network(3, [8, 4], seed=0)), lo, lo + 0.1)]
    [(2, 8), (2, 4), (2, 1)]
    """
    known = list(known or [])
    ranges = dict(sources) if sources is not None else source_ranges(graph, lo, hi)
    features = ranges.get(ENCODED)
    pre: list[Bounds] = []
    for l in range(graph.n_layers + 1):
        if l < len(known):
            z = known[l]
        else:
            z = _affine_interval(graph.affine(l), ranges)
            if crown_hidden or l == graph.n_layers:
                c_lo, c_hi = concretize(*linear_bounds(graph, l, pre), lo, hi, features)
                z = (torch.maximum(z[0], c_lo), torch.minimum(z[1], c_hi))
        pre.append(z)
        if l < graph.n_layers:
            ranges[l] = activation_range(graph.layers[l], *z)
    return pre


def region_bounds(graph: PLGraph, layer: int, z: Bounds, sources: dict[int, Bounds],
                  keep: Callable[[Tensor, Tensor], Tensor] | None = None
                  ) -> tuple[Bounds, Tensor, tuple[Tensor, Tensor, Tensor, Tensor]]:
    """Bounds of the output on ``R`` regions from the range ``z`` ``(R, n)`` of the
    pre-activations of hidden ``layer`` and the ranges of the :func:`frontier` sources over each
    region (post-activations ``(R, n_k)`` of earlier layers, the input, the features).

    Returns the interval bounds ``(R,)`` of the output, the regions ``keep`` selects from them
    (all by default) and, on those ``S`` regions only, linear bounds over the columns
    ``u = [z_layer, frontier sources in order]``: ``a_lo u + c_lo <= g <= a_up u + c_up``
    (``a`` ``(S, n_u)``, ``c`` ``(S,)``) wherever ``z_layer`` lies in ``z`` (CROWN
    back-substitution, later layers relaxed on their interval ranges). On a region where every
    column is affine (the region is a cell of the complex of layers ``< layer``), the linear
    bounds are affine too, hence exact at the region's vertices.

    Parameters
    ----------
    graph : PLGraph
        The network.
    layer : int
        A hidden layer.
    z : (lower, upper)
        ``(R, n_layer)`` pre-activation ranges.
    sources : dict of int to (lower, upper)
        Ranges ``(R, n_k)`` of every source in ``frontier(graph, layer)``.
    keep : callable, optional
        ``keep(lower, upper)`` ``(R,)`` bool: the regions worth linear bounds (the others are
        already decided by their interval bounds).

    Returns
    -------
    (lower, upper) : pair of (R,) float Tensor
        Interval bounds of the output.
    kept : (R,) bool Tensor
        The regions the linear bounds are for.
    (a_lo, c_lo, a_up, c_up)
        Linear bounds over the columns ``u``, ``(S, n_u)`` and ``(S,)``.

    Examples
    --------
    >>> import torch
    >>> from nsr.pl import as_graph
    >>> from nsr.pl.bounds import region_bounds
    >>> from nsr.networks import random_network
    >>> g = as_graph(random_network(3, [8, 8, 8], seed=0))
    >>> z = (-torch.ones(5, 8, dtype=torch.float64), torch.ones(5, 8, dtype=torch.float64))
    >>> (lo, hi), kept, (a_lo, c_lo, a_up, c_up) = region_bounds(g, 1, z, {})
    >>> tuple(lo.shape), tuple(a_lo.shape), tuple(c_lo.shape)
    ((5,), (5, 8), (5,))
    """
    ranges = dict(sources)
    pre: list[Bounds | None] = [None] * layer + [z]
    ranges[layer] = activation_range(graph.layers[layer], *z)
    for m in range(layer + 1, graph.n_layers + 1):
        zm = _affine_interval(graph.affine(m), ranges)
        pre.append(zm)
        if m < graph.n_layers:
            ranges[m] = activation_range(graph.layers[m], *zm)
    olo, ohi = pre[-1][0][:, 0], pre[-1][1][:, 0]
    kept = keep(olo, ohi) if keep is not None else torch.ones_like(olo, dtype=torch.bool)
    sub = [None if p is None else (p[0][kept], p[1][kept]) for p in pre[:-1]]
    a_lo, c_lo, a_up, c_up = linear_bounds(graph, graph.n_layers, sub, stop=layer, keep_stop=True)
    cols = [layer, *frontier(graph, layer)]
    r = int(kept.sum())

    def stack(coef: dict[int, Tensor]) -> Tensor:
        width = {k: (z[0] if k == layer else sources[k][0]).shape[1] for k in cols}
        return torch.cat([coef[k][:, 0] if k in coef else z[0].new_zeros(r, width[k]) for k in cols], 1)

    return (olo, ohi), kept, (stack(a_lo), c_lo[:, 0], stack(a_up), c_up[:, 0])
