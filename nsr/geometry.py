"""Differentiable geometry of the exact polyhedral complex of a ReLU network.

The extractor (:mod:`nsr.extraction.surface`) gives positions and combinatorics without gradients.
Here the combinatorics (the active constraints and activation pattern of each vertex, the
pattern of each polygon's linear region) are kept fixed and positions are re-expressed as
functions of the network's parameters:

* a generic vertex solves ``D`` affine equations ``J x + c = 0`` (its zero neurons with the
  pattern fixed, box facets ``x_d = lo/hi``, the output ``f = level``); one Newton step
  ``x = x0 - J^-1 (J x0 + c)`` from the detached position is exactly ``-J^-1 c``, whose value
  equals ``x0`` when ``x0`` is the extracted vertex and whose gradient is the
  implicit-function gradient;
* a polygon's region has the affine map ``f(x) = a . x + b`` given by its pattern, so its
  normal ``a / |a|`` and gradient norm ``|a|`` need no vertex at all.

Every network is read as a :class:`nsr.pl.PLGraph` (:func:`network_graph`): skip and residual
blocks, LeakyReLU/PReLU/``abs``/clamp neurons (a region's maps multiply each neuron by its slope
on the region's side, not by a 0/1 mask) and output transforms (the geometry is that of ``g``;
pass ``level=graph.level(t)``). For nsr's own modules the graph is built from the parameters
without detaching (:func:`nsr.pl.trace` detaches), so positions are differentiable in them.

All functions are batched (masked layer products, ``torch.linalg.solve``), run on the
parameters' device and never loop over vertices in Python. The mesh geometry (areas,
normals, edge lengths, dihedral and triangle angles, enclosed volume) is computed from
positions with the combinatorics held in :class:`SurfaceStructure`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from nsr.networks import PLNetwork, ReLUMLP
from nsr.pl.encoding import GridMLP, SimplexGridEncoder
from nsr.pl.graph import ENCODED, INPUT, Affine, Layer, OutputTransform, PLGraph, as_graph
from nsr.pl.layout import FACET, ConstraintLayout
from nsr.pl.models import ResidualMLP, SkipMLP

Params = tuple[list[Tensor], list[Tensor]]


# --------------------------------------------------------------------------- parameters


def network_params(net: Any, dtype: torch.dtype | None = None) -> Params:
    """Live ``(weights, biases)`` of a plain ReLU MLP, keeping the autograd graph.

    Accepts a :class:`ReLUMLP` (its ``nn.Linear`` parameters, so gradients reach
    ``net.parameters()``), a module with a ``.net`` ReLUMLP (nsr's LightningModule), a
    :class:`PLNetwork`, or a ``(weights, biases)`` pair. ``weights[l]`` is ``(n_l, n_{l-1})``.
    With ``dtype`` the tensors are cast (a differentiable cast). Every function of this module
    reads any network through :func:`network_graph`; this is the MLP special case.

    Parameters
    ----------
    net : ReLUMLP, module with ``.net``, PLNetwork or (weights, biases)
        The network.
    dtype : torch.dtype, optional
        Cast to this dtype.

    Returns
    -------
    weights : list of (n_l, n_{l-1}) Tensor
    biases : list of (n_l,) Tensor

    Raises
    ------
    TypeError
        For anything else.

    Examples
    --------
    >>> from nsr.networks import ReLUMLP
    >>> from nsr.geometry import network_params
    >>> mlp = ReLUMLP(3, 8, 2)
    >>> ws, bs = network_params(mlp)
    >>> [tuple(w.shape) for w in ws], ws[0] is mlp.layers[0].weight
    ([(8, 3), (8, 8), (1, 8)], True)
    """
    if isinstance(net, ReLUMLP):
        ws = [m.weight for m in net.layers]
        bs = [m.bias for m in net.layers]
    elif isinstance(net, PLNetwork):
        ws, bs = list(net.weights), list(net.biases)
    elif isinstance(net, nn.Module) and isinstance(getattr(net, "net", None), ReLUMLP):
        return network_params(net.net, dtype)
    elif isinstance(net, (tuple, list)) and len(net) == 2:
        ws, bs = list(net[0]), list(net[1])
    else:
        raise TypeError(
            f"cannot read differentiable parameters from {type(net).__name__}: pass a ReLUMLP, "
            "a PLNetwork or a (weights, biases) pair"
        )
    if dtype is not None:
        ws = [w.to(dtype) for w in ws]
        bs = [b.to(dtype) for b in bs]
    return ws, bs


def _mlp_graph(ws: Sequence[Tensor], bs: Sequence[Tensor]) -> PLGraph:
    """The graph of a ReLU chain whose tensors are ``ws``/``bs`` themselves (no copy, autograd kept)."""
    layers = [Layer({l - 1: w}, b) for l, (w, b) in enumerate(zip(ws[:-1], bs[:-1]))]
    return PLGraph(int(ws[0].shape[1]), layers, Affine({len(layers) - 1: ws[-1]}, bs[-1]))


def _slopes(act: nn.Module, n: int, like: Tensor) -> tuple[Tensor, Tensor]:
    neg = float(act.negative_slope) if isinstance(act, nn.LeakyReLU) else 0.0
    return torch.full((n,), neg, dtype=like.dtype, device=like.device), torch.ones(n, dtype=like.dtype,
                                                                                    device=like.device)


def _skip_graph(m: SkipMLP) -> PLGraph:
    """The live graph of a :class:`SkipMLP`: layer ``skip`` reads the previous layer and the input."""
    if m.latent_dim:
        raise TypeError("a SkipMLP with a latent code has no live graph here (the code is an input); trace it with "
                        "nsr.pl.trace(module, latent=code) for a graph without gradients to the parameters")
    ws = [layer.weight for layer in m.layers]  # weight-normalized weights are computed live
    bs = [layer.bias for layer in m.layers]
    layers = []
    for i, (w, b) in enumerate(zip(ws[:-1], bs[:-1])):
        if i == 0:
            blocks = {INPUT: w}
        elif m.skip and i == m.skip:  # cat([h, x]): the first columns read h, the last the input
            n_prev = int(ws[i - 1].shape[0])
            blocks = {i - 1: w[:, :n_prev], INPUT: w[:, n_prev:]}
        else:
            blocks = {i - 1: w}
        layers.append(Layer(blocks, b))
    transform = OutputTransform((("tanh",),)) if m.tanh_output else OutputTransform()
    return PLGraph(m.in_dim, layers, Affine({len(layers) - 1: ws[-1]}, bs[-1]), transform)


def _residual_graph(m: ResidualMLP) -> PLGraph:
    """The live graph of a :class:`ResidualMLP`: the linear stream ``h`` is kept as an affine map
    of the input and of every earlier block's neurons, so block ``b`` reads all of them."""
    stream = {INPUT: m.embed.weight}  # h = sum_k stream[k] @ a_k + hb
    hb = m.embed.bias
    layers = []
    for b, block in enumerate(m.blocks):
        w1 = block.inner.weight
        layers.append(Layer({k: w1 @ s for k, s in stream.items()}, w1 @ hb + block.inner.bias,
                            *_slopes(block.act, w1.shape[0], hb)))
        stream = {**stream, b: block.outer.weight}
        hb = hb + block.outer.bias
    layers.append(Layer(dict(stream), hb, *_slopes(m.head_act, hb.shape[0], hb)))  # the head's activation
    return PLGraph(m.in_dim, layers, Affine({len(layers) - 1: m.head.weight}, m.head.bias))


def _grid_graph(m: GridMLP) -> PLGraph:
    """The live graph of a :class:`~nsr.pl.encoding.GridMLP`: its encoder reads the module's own
    table (so feature maps, hence vertex positions, are differentiable in it) and the MLP's blocks
    are its ``nn.Linear`` parameters; the first layer reads the grid features (source ``ENCODED``)
    and, with ``include_input``, the raw coordinates (source ``INPUT``) from its last columns."""
    enc = SimplexGridEncoder(m.encoding, include_input=False)  # table = m.encoding.table itself
    ws = [layer.weight for layer in m.layers]
    bs = [layer.bias for layer in m.layers]
    n_grid = enc.out_dim
    first = {ENCODED: ws[0][:, :n_grid]}
    if m.encoding.include_input:
        first[INPUT] = ws[0][:, n_grid:]
    layers = [Layer(first, bs[0])] + [Layer({l - 1: w}, b) for l, (w, b) in enumerate(zip(ws[1:-1], bs[1:-1]), 1)]
    return PLGraph(m.in_dim, layers, Affine({len(layers) - 1: ws[-1]}, bs[-1]), encoder=enc)


def network_graph(net: Any, dtype: torch.dtype | None = None) -> PLGraph:
    """The :class:`PLGraph` of a network, with its tensors live in the module's parameters.

    nsr's own modules (:class:`ReLUMLP`, :class:`nsr.pl.SkipMLP`, :class:`nsr.pl.ResidualMLP`,
    :class:`nsr.pl.encoding.GridMLP`, or a module holding one as ``.net``) and ``(weights,
    biases)`` pairs give a graph whose blocks and biases are computed from the parameters without
    detaching, so vertex positions and region maps built from it are differentiable in
    ``net.parameters()``; a GridMLP's encoder reads the module's own table, so they are
    differentiable in the table too. A :class:`PLGraph` is used as it is (differentiable in its
    own tensors), a :class:`PLNetwork` through :func:`nsr.pl.as_graph`. Any other module is
    traced with ``nsr.pl.trace(module, live=True)``: the same folding as a default trace (and
    the same check against the module), with the parameters kept in the autograd graph; a
    module that is not piecewise affine is refused there (``NotPiecewiseAffineError``).

    Parameters
    ----------
    net : module, PLGraph, PLNetwork or (weights, biases)
        The network.
    dtype : torch.dtype, optional
        Cast the graph's tensors (a differentiable cast).

    Returns
    -------
    PLGraph

    Raises
    ------
    TypeError
        For something that is not a network.
    nsr.pl.NotPiecewiseAffineError
        For a module that cannot be traced.

    Examples
    --------
    >>> import torch
    >>> from nsr.pl import SkipMLP
    >>> from nsr.geometry import network_graph
    >>> _ = torch.manual_seed(0)
    >>> model = SkipMLP(in_dim=3, width=8, depth=4)
    >>> g = network_graph(model, torch.float64)
    >>> g.layers[2].sources, g.layers[2].blocks[-1].requires_grad
    ([-1, 1], True)
    >>> x = torch.rand(5, 3, dtype=torch.float64)
    >>> bool(torch.allclose(g(x), model.double()(x)))
    True
    """
    if isinstance(net, PLGraph):
        graph = net
    elif isinstance(net, ReLUMLP):
        graph = _mlp_graph([m.weight for m in net.layers], [m.bias for m in net.layers])
    elif isinstance(net, SkipMLP):
        graph = _skip_graph(net)
    elif isinstance(net, ResidualMLP):
        graph = _residual_graph(net)
    elif isinstance(net, GridMLP):
        graph = _grid_graph(net)
    elif isinstance(net, PLNetwork):
        graph = as_graph(net)
    elif isinstance(net, (tuple, list)) and len(net) == 2:
        graph = _mlp_graph(list(net[0]), list(net[1]))
    elif isinstance(net, nn.Module) and isinstance(getattr(net, "net", None), _LIVE_MODULES):
        return network_graph(net.net, dtype)
    elif isinstance(net, nn.Module):  # any other module: traced with its parameters kept live
        from nsr.pl import trace

        inner = getattr(net, "net", None)
        graph = trace(inner if isinstance(inner, nn.Module) else net, live=True)
    else:
        raise TypeError(f"cannot read a network from {type(net).__name__}: pass an nn.Module, a PLGraph, a "
                        "PLNetwork or a (weights, biases) pair")
    return graph if dtype is None or graph.dtype == dtype else graph.to(dtype=dtype)


_LIVE_MODULES = (ReLUMLP, SkipMLP, ResidualMLP, GridMLP)


def has_live_graph(net: Any) -> bool:
    """Whether :func:`network_graph` keeps gradients to ``net``'s parameters.

    True for every module (nsr's own are read directly, any other is traced with
    ``live=True``, which refuses what is not piecewise affine), graphs, networks and
    ``(weights, biases)`` pairs; False for anything else.

    Parameters
    ----------
    net : object
        The network.

    Returns
    -------
    bool

    Examples
    --------
    >>> import torch
    >>> from nsr.pl import ResidualMLP
    >>> from nsr.geometry import has_live_graph
    >>> seq = torch.nn.Sequential(torch.nn.Linear(3, 1))
    >>> has_live_graph(ResidualMLP(3, 8, 2)), has_live_graph(seq), has_live_graph(3)
    (True, True, False)
    """
    if isinstance(net, (nn.Module, PLGraph, PLNetwork)):
        return True
    return isinstance(net, (tuple, list)) and len(net) == 2


def _split_patterns(graph: PLGraph, patterns: Tensor) -> list[Tensor]:
    """``(P, N)`` patterns (bool, or 0/1 floats) as one bool ``(P, n_l)`` tensor per layer."""
    if patterns.dtype != torch.bool:
        patterns = patterns > 0.5
    return list(torch.split(patterns.to(graph.device), graph.widths, dim=1))


def _encoder(graph: PLGraph) -> Any:
    return getattr(graph, "encoder", None)


def _backward_gradient(graph: PLGraph, pats: Sequence[Tensor], points: Tensor | None = None) -> Tensor:
    """``grad g`` ``(P, D)`` on regions, by a backward product: adjoints ``(P, n_k)`` per layer
    (no ``(P, n, D)`` maps), each neuron times its slope on the region's side; the encoder's
    adjoint ``(P, F)`` ends on its feature Jacobians at ``points`` ``(P, D)`` (one in each region)."""
    n_pat = pats[0].shape[0] if pats else 1
    adj: dict[int, Tensor] = {}
    grad = None

    def push(aff: Affine, u: Tensor) -> None:
        nonlocal grad
        for k, w in aff.blocks.items():
            t = u @ w
            if k == INPUT:
                grad = t if grad is None else grad + t
            else:
                adj[k] = adj[k] + t if k in adj else t

    push(graph.output, torch.ones(n_pat, 1, dtype=graph.dtype, device=graph.device))
    for l in reversed(range(graph.n_layers)):
        if l in adj:
            push(graph.layers[l], adj.pop(l) * graph.layers[l].slopes(pats[l]).to(graph.dtype))
    if ENCODED in adj:
        if points is None:
            raise ValueError("this graph has an encoder: pass points (P, D), one in each region (the features are "
                             "affine only on the cells of the encoder's planes)")
        jac, _ = _encoder(graph).feature_maps(points.to(device=graph.device, dtype=graph.dtype))  # (P, F, D)
        t = torch.einsum("pf,pfd->pd", adj.pop(ENCODED), jac)
        grad = t if grad is None else grad + t
    if grad is None:  # an output that does not depend on x
        grad = torch.zeros(n_pat, graph.in_dim, dtype=graph.dtype, device=graph.device)
    return grad


def region_affine(
    net: Any, patterns: Tensor, dtype: torch.dtype | None = None, points: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Affine map ``g(x) = grad . x + offset`` of the linear regions with given patterns.

    ``patterns`` is ``(P, N)`` bool (hidden neurons in layer order). Returns ``grad (P, D)``
    and ``offset (P,)``, differentiable in the network's tensors (see :func:`network_graph`).

    Parameters
    ----------
    net : network
        Anything :func:`network_graph` reads.
    patterns : (P, N) bool Tensor
        Activation patterns of ``P`` regions.
    dtype : torch.dtype, optional
        Compute in this dtype.
    points : (P, D) float Tensor, optional
        A point in each region; needed for a graph with an encoder.

    Returns
    -------
    grad : (P, D) Tensor
    offset : (P,) Tensor

    Examples
    --------
    >>> import torch
    >>> from nsr.networks import octahedron_network
    >>> net = octahedron_network(0.5)  # |x| + |y| + |z| - 0.5; neurons x, y, z, 10 - x, 10 - y, 10 - z
    >>> pattern = torch.tensor([[True, False, True, True, True, True]])  # the octant x, z > 0 > y
    >>> from nsr.geometry import region_affine
    >>> region_affine(net, pattern)  # f = x - y + z - 0.5 there
    (tensor([[ 1., -1.,  1.]], dtype=torch.float64), tensor([-0.5000], dtype=torch.float64))
    """
    graph = network_graph(net, dtype)
    pats = _split_patterns(graph, patterns)
    if _encoder(graph) is not None:
        a, c = graph.region_maps(pats, points=points)[-1]
        return a[:, 0], c[:, 0]
    # Backward product for the gradient (cheap: no (P, n, D) tensors), forward at x = 0 for the offset.
    n_pat = patterns.shape[0]
    values: dict[int, Tensor] = {INPUT: torch.zeros(n_pat, graph.in_dim, dtype=graph.dtype, device=graph.device)}
    for l, layer in enumerate(graph.layers):
        values[l] = layer.apply(values) * layer.slopes(pats[l]).to(graph.dtype)
    return _backward_gradient(graph, pats), graph.output.apply(values)[:, 0]


def region_gradients(net: Any, patterns: Tensor, dtype: torch.dtype | None = None,
                     points: Tensor | None = None) -> Tensor:
    """``grad g`` of the regions with ``(P, N)`` patterns, ``(P, D)`` (the first output of
    :func:`region_affine` without its forward pass for the offsets).

    Parameters
    ----------
    net : network
        Anything :func:`network_graph` reads.
    patterns : (P, N) bool Tensor
        Activation patterns.
    dtype : torch.dtype, optional
        Compute in this dtype.
    points : (P, D) float Tensor, optional
        A point in each region; needed for a graph with an encoder.

    Returns
    -------
    (P, D) Tensor

    Examples
    --------
    >>> import torch
    >>> from nsr.networks import octahedron_network
    >>> net = octahedron_network(0.5)  # |x| + |y| + |z| - 0.5; neurons x, y, z, 10 - x, 10 - y, 10 - z
    >>> pattern = torch.tensor([[True, False, True, True, True, True]])  # the octant x, z > 0 > y
    >>> from nsr.geometry import region_gradients
    >>> region_gradients(net, pattern)
    tensor([[ 1., -1.,  1.]], dtype=torch.float64)
    """
    graph = network_graph(net, dtype)
    return _backward_gradient(graph, _split_patterns(graph, patterns), points)


def region_normals(net: Any, patterns: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    """Unit normals ``grad f / |grad f|`` of regions, ``(P, D)`` (pointing to ``f > 0``).

    Parameters
    ----------
    net : network
        Anything :func:`network_graph` reads.
    patterns : (P, N) bool Tensor
        Activation patterns.
    dtype : torch.dtype, optional
        Compute in this dtype.

    Returns
    -------
    (P, D) Tensor

    Examples
    --------
    >>> import torch
    >>> from nsr.networks import octahedron_network
    >>> net = octahedron_network(0.5)  # |x| + |y| + |z| - 0.5; neurons x, y, z, 10 - x, 10 - y, 10 - z
    >>> pattern = torch.tensor([[True, False, True, True, True, True]])  # the octant x, z > 0 > y
    >>> from nsr.geometry import region_normals
    >>> (region_normals(net, pattern) * 3**0.5).round(decimals=6)
    tensor([[ 1., -1.,  1.]], dtype=torch.float64)
    """
    g, _ = region_affine(net, patterns, dtype)
    return g / safe_norm(g).unsqueeze(-1)


def region_gradient_norm(net: Any, patterns: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    """``|grad f|`` on regions with the given ``(P, N)`` patterns, ``(P,)``.

    Parameters
    ----------
    net : network
        Anything :func:`network_graph` reads.
    patterns : (P, N) bool Tensor
        Activation patterns.
    dtype : torch.dtype, optional
        Compute in this dtype.

    Returns
    -------
    (P,) Tensor

    Examples
    --------
    >>> import torch
    >>> from nsr.networks import octahedron_network
    >>> net = octahedron_network(0.5)  # |x| + |y| + |z| - 0.5; neurons x, y, z, 10 - x, 10 - y, 10 - z
    >>> pattern = torch.tensor([[True, False, True, True, True, True]])  # the octant x, z > 0 > y
    >>> from nsr.geometry import region_gradient_norm
    >>> round(float(region_gradient_norm(net, pattern)) ** 2, 6)
    3.0
    """
    g, _ = region_affine(net, patterns, dtype)
    return safe_norm(g)


def _layout(graph: PLGraph, bounds_t: Tensor) -> tuple[ConstraintLayout, Tensor | None, Tensor | None]:
    """The constraint layout, and the encoder's planes ``(P, D)``, ``(P,)`` over the box (or ``None``)."""
    enc = _encoder(graph)
    if enc is None:
        return ConstraintLayout.of(graph), None, None
    normals, offsets = enc.planes(bounds_t[:, 0], bounds_t[:, 1])
    normals, offsets = normals.to(bounds_t), offsets.to(bounds_t)
    return ConstraintLayout.of(graph, n_facets=int(normals.shape[0])), normals, offsets


def _check_ids(lay: ConstraintLayout, constraints: Tensor) -> None:
    if constraints.numel() and bool(((constraints < 0) | (constraints >= lay.n_constraints)).any()):
        raise ValueError(f"constraint ids must be in [0, {lay.n_constraints}) (2D + P + N + 1) for this network, got "
                         f"{int(constraints.min())}..{int(constraints.max())}")


def constraint_system(
    net: Any,
    constraints: Tensor,
    patterns: Tensor,
    bounds: Tensor | np.ndarray | Sequence[Sequence[float]],
    level: float = 0.0,
    dtype: torch.dtype | None = None,
    vertices: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """The affine equations ``J x + c = 0`` of each vertex's active constraints.

    ``constraints`` is ``(V, D)`` long with the ids of :class:`nsr.pl.layout.ConstraintLayout`
    (``c < 2D`` box facet, ``c = 2d`` is ``x_d = lo_d`` and ``c = 2d+1`` is ``x_d = hi_d``;
    then the encoder's planes ``normals . x = offsets`` if the graph has an encoder; then the
    neurons layer by layer; last the output at ``level``). ``patterns`` is ``(V, N)`` bool.
    A neuron's row is its pre-activation's affine map on the vertex's region
    (:meth:`nsr.pl.PLGraph.region_maps`: every block of every source, earlier neurons times
    their slopes). Returns ``J (V, D, D)`` and ``c (V, D)``.

    Parameters
    ----------
    net : network
        Anything :func:`network_graph` reads.
    constraints : (V, D) int64 Tensor
        Active constraint ids of each vertex.
    patterns : (V, N) bool Tensor
        Activation pattern of each vertex.
    bounds : (D, 2) array_like
        The box.
    level : float
        The level set of ``g``.
    dtype : torch.dtype, optional
        Compute in this dtype.
    vertices : (V, D) float Tensor, optional
        The vertices (detached); needed for a graph with an encoder (its feature maps).

    Returns
    -------
    jac : (V, D, D) Tensor
    offset : (V, D) Tensor

    Raises
    ------
    ValueError
        On a constraint id outside ``[0, 2D + P + N + 1)``.

    Examples
    --------
    >>> import torch
    >>> from nsr.networks import octahedron_network
    >>> net = octahedron_network(0.5)  # |x| + |y| + |z| - 0.5; neurons x, y, z, 10 - x, 10 - y, 10 - z
    >>> box = [[-1.0, 1.0]] * 3
    >>> x0 = torch.tensor([[0.5, 0.0, 0.0]], dtype=torch.float64)  # the vertex where y = 0, z = 0, f = 0
    >>> ids = torch.tensor([[7, 8, 12]])  # neurons 1 and 2 (ids 2D + 1, 2D + 2), the output (2D + N)
    >>> pattern = torch.tensor([[True, False, False, True, True, True]])
    >>> from nsr.geometry import constraint_system
    >>> jac, c = constraint_system(net, ids, pattern, box)
    >>> torch.linalg.solve(jac, -c) + 0.0
    tensor([[0.5000, 0.0000, 0.0000]], dtype=torch.float64)
    """
    graph = network_graph(net, dtype)
    device, fdtype = graph.device, graph.dtype
    constraints = constraints.to(device=device, dtype=torch.long)
    dim = constraints.shape[1]
    bounds_t = torch.as_tensor(np.asarray(bounds, dtype=np.float64), device=device).to(fdtype)
    lay, normals, offsets = _layout(graph, bounds_t)
    _check_ids(lay, constraints)
    # Box facets: row e_d, offset -lo_d or -hi_d.
    box_axis, box_side = lay.box_axis_side(constraints)
    jac = torch.eye(dim, dtype=fdtype, device=device)[box_axis]  # (V, D, D)
    off = -bounds_t[box_axis, box_side]  # (V, D)
    if normals is not None:
        is_facet = lay.kind(constraints) == FACET
        p = (constraints - lay.facet_offset).clamp(0, max(lay.n_facets - 1, 0))
        if lay.n_facets:
            jac = torch.where(is_facet[..., None], normals[p], jac)
            off = torch.where(is_facet, -offsets[p], off)
    x0 = None if vertices is None else vertices.detach().to(device=device, dtype=fdtype)
    maps = graph.region_maps(_split_patterns(graph, patterns), points=x0, augmented=True)
    layer_of = lay.layer_of(constraints)
    for layer, m in enumerate(maps):  # (V, D+1, n_l); the last is the output
        sel = layer_of == layer
        if bool(sel.any()):
            idx = (constraints - lay.neuron(layer)).clamp(0, m.shape[2] - 1)  # (V, D)
            g = torch.gather(m, 2, idx.unsqueeze(1).expand(-1, dim + 1, -1))  # (V, D+1, D)
            a_sel = g[:, :dim, :].transpose(1, 2)  # (V, constraint, coordinate)
            c_sel = g[:, dim, :]
            if layer == graph.n_layers:
                c_sel = c_sel - level  # the output: g = level
            jac = torch.where(sel.unsqueeze(-1), a_sel, jac)
            off = torch.where(sel, c_sel, off)
    return jac, off


def constraint_residuals(
    net: Any,
    vertices: Tensor,
    constraints: Tensor,
    patterns: Tensor,
    bounds: Tensor | np.ndarray | Sequence[Sequence[float]],
    level: float = 0.0,
    dtype: torch.dtype | None = None,
) -> Tensor:
    """``J x + c`` of each vertex's active constraints at ``vertices``, ``(V, D)``.

    The same values as :func:`constraint_system` applied to ``vertices`` (each constraint's
    pre-activation with the pattern fixed; ``x_d - lo_d`` / ``x_d - hi_d`` for box facets;
    ``normals . x - offsets`` for encoder planes; ``g - level`` for the output), computed by
    one forward pass with fixed slopes: ``(V, n_l)`` per layer instead of the
    ``(V, D+1, n_l)`` maps, so its graph is about ``D+1`` times cheaper. Differentiable in the
    network's tensors (``vertices`` are detached).

    Parameters
    ----------
    net : network
        Anything :func:`network_graph` reads.
    vertices : (V, D) float Tensor
        Positions.
    constraints : (V, D) int64 Tensor
        Active constraint ids (:func:`constraint_system`).
    patterns : (V, N) bool Tensor
        Activation patterns.
    bounds : (D, 2) array_like
        The box.
    level : float
        The level set of ``g``.
    dtype : torch.dtype, optional
        Compute in this dtype.

    Returns
    -------
    (V, D) Tensor
        Zero where each vertex satisfies its constraints.

    Raises
    ------
    ValueError
        On a constraint id outside ``[0, 2D + P + N + 1)``.

    Examples
    --------
    >>> import torch
    >>> from nsr.networks import octahedron_network
    >>> net = octahedron_network(0.5)  # |x| + |y| + |z| - 0.5; neurons x, y, z, 10 - x, 10 - y, 10 - z
    >>> box = [[-1.0, 1.0]] * 3
    >>> x0 = torch.tensor([[0.5, 0.0, 0.0]], dtype=torch.float64)  # the vertex where y = 0, z = 0, f = 0
    >>> ids = torch.tensor([[7, 8, 12]])  # neurons 1 and 2 (ids 2D + 1, 2D + 2), the output (2D + N)
    >>> pattern = torch.tensor([[True, False, False, True, True, True]])
    >>> from nsr.geometry import constraint_residuals
    >>> constraint_residuals(net, x0, ids, pattern, box)
    tensor([[0., 0., 0.]], dtype=torch.float64)
    >>> constraint_residuals(net, x0 + 0.1, ids, pattern, box)  # y, z and f = x - y - z - 0.5 on this pattern
    tensor([[ 0.1000,  0.1000, -0.1000]], dtype=torch.float64)
    """
    graph = network_graph(net, dtype)
    device, fdtype = graph.device, graph.dtype
    constraints = constraints.to(device=device, dtype=torch.long)
    x = vertices.detach().to(device=device, dtype=fdtype)
    bounds_t = torch.as_tensor(np.asarray(bounds, dtype=np.float64), device=device).to(fdtype)
    lay, normals, offsets = _layout(graph, bounds_t)
    _check_ids(lay, constraints)
    box_axis, box_side = lay.box_axis_side(constraints)
    res = torch.gather(x, 1, box_axis) - bounds_t[box_axis, box_side]  # box facets
    values: dict[int, Tensor] = {INPUT: x}
    enc = _encoder(graph)
    if enc is not None:
        if lay.n_facets:
            plane = x @ normals.T - offsets  # (V, P)
            p = (constraints - lay.facet_offset).clamp(0, lay.n_facets - 1)
            res = torch.where(lay.kind(constraints) == FACET, torch.gather(plane, 1, p), res)
        values[ENCODED] = enc(x)
    pats = _split_patterns(graph, patterns)
    layer_of = lay.layer_of(constraints)
    for layer in range(graph.n_layers + 1):
        z = graph.affine(layer).apply(values)  # (V, n_l)
        if layer == graph.n_layers:
            z = z - level
        sel = layer_of == layer
        if bool(sel.any()):
            idx = (constraints - lay.neuron(layer)).clamp(0, z.shape[1] - 1)
            res = torch.where(sel, torch.gather(z, 1, idx), res)
        if layer < graph.n_layers:
            values[layer] = z * graph.layers[layer].slopes(pats[layer]).to(z.dtype)
    return res


def differentiable_vertices(
    net: Any,
    vertices: Tensor,
    constraints: Tensor,
    patterns: Tensor,
    bounds: Tensor | np.ndarray | Sequence[Sequence[float]],
    level: float = 0.0,
    dtype: torch.dtype | None = None,
    cond_max: float = 1e12,
    frozen_jacobian: bool = False,
    jacobian_inverse: Tensor | None = None,
) -> Tensor:
    """Vertex positions as differentiable functions of the network parameters.

    ``vertices`` ``(V, D)`` float (detached, e.g. from :func:`nsr.extraction.surface.extract_mesh`),
    ``constraints`` ``(V, D)`` long, ``patterns`` ``(V, N)`` bool (see
    :func:`constraint_system`). One Newton step with the pattern fixed,
    ``x = x0 - J^-1 (J x0 + c)``: the value equals ``x0`` for an exact vertex (and is the
    re-solved vertex of the same constraints after the parameters moved), the gradient is the
    implicit-function gradient ``dx/dθ = -J^-1 (dJ/dθ x + dc/dθ)``. Degenerate vertices
    (Frobenius ``cond(J) > cond_max``) keep ``x0`` with zero gradient. Returns ``(V, D)`` in the
    parameters' dtype (or ``dtype``).

    ``frozen_jacobian``: ``J`` is built without gradient and the residual ``J x0 + c`` comes
    from :func:`constraint_residuals` (several times cheaper, forward and backward). The
    value is the same; the gradient is ``-J^-1 d(J x0 + c)/dθ``, which equals the
    implicit-function gradient wherever ``x0`` solves the constraints (a fresh extraction)
    and differs from it by ``J^-1 (dJ/dθ) J^-1 r`` for a stale structure with residual ``r``.
    ``jacobian_inverse`` ``(V, D, D)`` (from :func:`frozen_jacobian_inverse`, possibly for
    earlier parameters) skips building ``J``: the step is then a Newton step with that
    Jacobian, whose value differs from the re-solved vertex at second order in the parameter
    change.

    Parameters
    ----------
    net : network
        Anything :func:`network_graph` reads (gradients flow to its parameters or tensors).
    vertices : (V, D) float Tensor
        Extracted positions.
    constraints : (V, D) int64 Tensor
        Active constraint ids.
    patterns : (V, N) bool Tensor
        Activation patterns.
    bounds : (D, 2) array_like
        The box.
    level : float
        The level set.
    dtype : torch.dtype, optional
        Compute in this dtype.
    cond_max : float
        Largest accepted Frobenius condition number of ``J``.
    frozen_jacobian : bool
        Build ``J`` without gradient (cheaper).
    jacobian_inverse : (V, D, D) Tensor, optional
        A precomputed ``J^-1`` (:func:`frozen_jacobian_inverse`).

    Returns
    -------
    (V, D) Tensor

    Examples
    --------
    Moving the output bias by ``db`` moves the vertex ``(0.5, 0, 0)`` by ``-db`` along x:

    >>> import torch
    >>> from nsr.networks import octahedron_network
    >>> net = octahedron_network(0.5)  # |x| + |y| + |z| - 0.5; neurons x, y, z, 10 - x, 10 - y, 10 - z
    >>> box = [[-1.0, 1.0]] * 3
    >>> x0 = torch.tensor([[0.5, 0.0, 0.0]], dtype=torch.float64)  # the vertex where y = 0, z = 0, f = 0
    >>> ids = torch.tensor([[7, 8, 12]])  # neurons 1 and 2 (ids 2D + 1, 2D + 2), the output (2D + N)
    >>> pattern = torch.tensor([[True, False, False, True, True, True]])
    >>> from nsr.geometry import differentiable_vertices
    >>> bias = net.biases[-1].clone().requires_grad_(True)
    >>> x = differentiable_vertices((net.weights, net.biases[:-1] + [bias]), x0, ids, pattern, box)
    >>> x.detach(), torch.autograd.grad(x[0, 0], bias)[0]
    (tensor([[0.5000, 0.0000, 0.0000]], dtype=torch.float64), tensor([-1.], dtype=torch.float64))
    """
    if frozen_jacobian or jacobian_inverse is not None:
        inv = jacobian_inverse if jacobian_inverse is not None else \
            frozen_jacobian_inverse(net, constraints, patterns, bounds, level, dtype, cond_max, vertices=vertices)
        res = constraint_residuals(net, vertices, constraints, patterns, bounds, level, dtype)
        x0 = vertices.detach().to(device=res.device, dtype=res.dtype)
        if x0.shape[0] == 0:
            return x0 + 0.0 * res.sum()
        return x0 - torch.einsum("vij,vj->vi", inv.to(res.dtype), res)
    jac, off = constraint_system(net, constraints, patterns, bounds, level, dtype, vertices=vertices)
    x0 = vertices.detach().to(device=jac.device, dtype=jac.dtype)
    if x0.shape[0] == 0:
        return x0 + 0.0 * jac.sum()
    return _newton_step(jac, x0, cond_max, off=off)


def frozen_jacobian_inverse(
    net: Any,
    constraints: Tensor,
    patterns: Tensor,
    bounds: Tensor | np.ndarray | Sequence[Sequence[float]],
    level: float = 0.0,
    dtype: torch.dtype | None = None,
    cond_max: float = 1e12,
    vertices: Tensor | None = None,
) -> Tensor:
    """``J^-1`` of each vertex's constraint system, without gradient, ``(V, D, D)``; rows of
    degenerate vertices (see :func:`differentiable_vertices`) are zero, so that a Newton step
    with it keeps them at ``x0`` with zero gradient. Reusable for the ``jacobian_inverse`` of
    :func:`differentiable_vertices` while the structure is kept.

    Parameters
    ----------
    net, constraints, patterns, bounds, level, dtype, cond_max
        As in :func:`differentiable_vertices`.
    vertices : (V, D) float Tensor, optional
        The vertices; needed for a graph with an encoder (:func:`constraint_system`).

    Returns
    -------
    (V, D, D) Tensor

    Examples
    --------
    >>> import torch
    >>> from nsr.networks import octahedron_network
    >>> net = octahedron_network(0.5)  # |x| + |y| + |z| - 0.5; neurons x, y, z, 10 - x, 10 - y, 10 - z
    >>> box = [[-1.0, 1.0]] * 3
    >>> x0 = torch.tensor([[0.5, 0.0, 0.0]], dtype=torch.float64)  # the vertex where y = 0, z = 0, f = 0
    >>> ids = torch.tensor([[7, 8, 12]])  # neurons 1 and 2 (ids 2D + 1, 2D + 2), the output (2D + N)
    >>> pattern = torch.tensor([[True, False, False, True, True, True]])
    >>> from nsr.geometry import constraint_system, frozen_jacobian_inverse
    >>> inv = frozen_jacobian_inverse(net, ids, pattern, box)
    >>> bool(torch.allclose(inv @ constraint_system(net, ids, pattern, box)[0], torch.eye(3, dtype=torch.float64)))
    True
    """
    with torch.no_grad():
        jac, _ = constraint_system(net, constraints, patterns, bounds, level, dtype, vertices=vertices)
        inv, bad = _checked_inverse(jac, cond_max)
        return torch.where(bad[:, None, None], torch.zeros_like(inv), inv)


def _checked_inverse(jac: Tensor, cond_max: float) -> tuple[Tensor, Tensor]:
    """``J^-1`` and the rows to leave alone: singular, or with Frobenius condition number
    ``|J| |J^-1|`` (between ``cond_2`` and ``D cond_2``; one batched inverse instead of an
    SVD) above ``cond_max``. No gradient."""
    with torch.no_grad():
        inv, info = torch.linalg.inv_ex(jac)
        cond = torch.linalg.matrix_norm(jac) * torch.linalg.matrix_norm(inv)
        return inv, (info != 0) | ~torch.isfinite(cond) | (cond > cond_max)


def _newton_step(jac: Tensor, x0: Tensor, cond_max: float, off: Tensor) -> Tensor:
    """``x0 - J^-1 r`` with ``r = J x0 + off``; rows that :func:`_checked_inverse` rejects
    keep ``x0`` with zero gradient."""
    _, bad = _checked_inverse(jac, cond_max)
    eye = torch.eye(jac.shape[-1], dtype=jac.dtype, device=jac.device)
    jac_safe = torch.where(bad[:, None, None], eye, jac)
    resid = torch.einsum("vij,vj->vi", jac_safe, x0) + off
    resid = torch.where(bad[:, None], torch.zeros_like(resid), resid)
    step = torch.linalg.solve(jac_safe, resid.unsqueeze(-1)).squeeze(-1)
    return x0 - step


# ------------------------------------------------------------------------ combinatorics


@dataclass
class SurfaceStructure:
    """Combinatorics of an exact surface mesh, as tensors on one device.

    Usually built by :meth:`from_mesh` or :meth:`from_polygons`, which derive the cycles,
    triangles and edges from the polygons.

    Parameters
    ----------
    vertices0 : (V, 3) float64 Tensor
        Extracted vertex positions.
    constraints : (V, 3) long Tensor
        The three constraint ids (:class:`nsr.pl.layout.ConstraintLayout`) each vertex lies on.
    vertex_patterns : (V, N) bool Tensor
        Activation pattern of each vertex.
    polygon_patterns : (P, N) bool Tensor
        Activation pattern of the region each polygon lies in.
    cycles : (P, K) long Tensor
        Each polygon's vertex cycle, padded by repeating its first vertex.
    cycle_len : (P,) long Tensor
        Number of vertices of each polygon.
    triangles : (T, 3) long Tensor
        A triangulation of the polygons.
    triangle_polygon : (T,) long Tensor
        The polygon each triangle comes from.
    edges : (E, 2) long Tensor
        Unique undirected polygon edges.
    edge_polygons : (E, 2) long Tensor
        The polygons on either side of each edge, ``-1`` when the edge borders one polygon only.
    bounds : (3, 2) float64 Tensor
        The box the mesh was extracted in.

    Examples
    --------
    >>> import torch
    >>> v = 0.5 * torch.tensor([[1.0, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]],
    ...                        dtype=torch.float64)  # the octahedron |x| + |y| + |z| = 0.5
    >>> faces = torch.tensor([[0, 2, 4], [2, 1, 4], [1, 3, 4], [3, 0, 4], [2, 0, 5], [1, 2, 5], [3, 1, 5], [0, 3, 5]])
    >>> from nsr.geometry import SurfaceStructure
    >>> s = SurfaceStructure.from_polygons(v, faces, torch.zeros(6, 3, dtype=torch.long), torch.zeros(6, 6, dtype=bool),
    ...                                    torch.zeros(8, 6, dtype=bool), torch.tensor([[-1.0, 1.0]] * 3))
    >>> s.n_vertices, s.n_polygons, len(s.edges), len(s.interior_edges), tuple(s.triangles.shape)
    (6, 8, 12, 12, (8, 3))
    """

    vertices0: Tensor
    constraints: Tensor
    vertex_patterns: Tensor
    polygon_patterns: Tensor
    cycles: Tensor
    cycle_len: Tensor
    triangles: Tensor
    triangle_polygon: Tensor
    edges: Tensor
    edge_polygons: Tensor
    bounds: Tensor

    @property
    def n_vertices(self) -> int:
        """Number of vertices ``V``."""
        return int(self.vertices0.shape[0])

    @property
    def n_polygons(self) -> int:
        """Number of polygons ``P``."""
        return int(self.cycles.shape[0])

    @property
    def interior_edges(self) -> Tensor:
        """Indices of edges shared by exactly two polygons, ``(E_i,)`` long."""
        return torch.nonzero(self.edge_polygons[:, 1] >= 0).squeeze(-1)

    def patch(self, polygons: Tensor) -> tuple[SurfaceStructure, Tensor]:
        """The structure of some of the polygons, and where its vertices are in this one.

        The polygons keep their cycles, triangles and patterns; an edge whose other polygon
        is left out borders one polygon only (``edge_polygons[:, 1] == -1``), so the
        regularizers' sums over shared edges see only edges with both sides in the patch.

        Parameters
        ----------
        polygons : (P_s,) int64 Tensor
            Distinct polygon ids.

        Returns
        -------
        patch : SurfaceStructure
            ``P_s`` polygons on ``V_s`` vertices, renumbered in increasing order of their ids here.
        vertex_ids : (V_s,) int64 Tensor
            Each patch vertex's id in this structure.

        Examples
        --------
        Two of the octahedron's upper triangles share the edge from ``+y`` to the apex:

        >>> import torch
        >>> v = 0.5 * torch.tensor([[1.0, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]],
        ...                        dtype=torch.float64)
        >>> faces = torch.tensor([[0, 2, 4], [2, 1, 4], [1, 3, 4], [3, 0, 4], [2, 0, 5], [1, 2, 5], [3, 1, 5],
        ...                       [0, 3, 5]])
        >>> from nsr.geometry import SurfaceStructure
        >>> s = SurfaceStructure.from_polygons(v, faces, torch.zeros(6, 3, dtype=torch.long),
        ...                                    torch.zeros(6, 6, dtype=bool), torch.zeros(8, 6, dtype=bool),
        ...                                    torch.tensor([[-1.0, 1.0]] * 3))
        >>> part, ids = s.patch(torch.tensor([0, 1]))
        >>> ids.tolist(), part.cycles.tolist(), len(part.edges), part.edges[part.interior_edges].tolist()
        ([0, 1, 2, 4], [[0, 2, 3], [2, 1, 3]], 5, [[2, 3]])
        """
        polygons = polygons.to(device=self.cycles.device, dtype=torch.long)
        cycles, cycle_len = self.cycles[polygons], self.cycle_len[polygons]
        # work in proportion to the patch: its own edges and fans, not a pass over the whole structure
        vertex_ids, local = torch.unique(cycles, return_inverse=True)
        ar = torch.arange(cycles.shape[1], device=cycles.device)
        local = torch.where(ar[None] < cycle_len[:, None], local, -1)
        sub = SurfaceStructure.from_polygons(self.vertices0[vertex_ids], local, self.constraints[vertex_ids],
                                             self.vertex_patterns[vertex_ids], self.polygon_patterns[polygons],
                                             self.bounds)
        return sub, vertex_ids

    def edge_sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """The polygons on both sides of ``n`` shared edges drawn uniformly without replacement
        (all shared edges when there are at most ``n``): a random patch of the surface whose
        :meth:`patch` holds those edges as shared ones. ``(P_s,)`` int64, increasing.

        Parameters
        ----------
        n : int
            Number of shared edges.
        generator : torch.Generator, optional
            Random generator (on the CPU).

        Returns
        -------
        (P_s,) int64 Tensor

        Examples
        --------
        >>> import torch
        >>> from nsr.geometry import SurfaceStructure
        >>> v = torch.tensor([[0.0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0]], dtype=torch.float64)
        >>> s = SurfaceStructure.from_polygons(v, torch.tensor([[0, 1, 2], [0, 2, 3]]),
        ...                                    torch.zeros(4, 3, dtype=torch.long),
        ...                                    torch.zeros(4, 2, dtype=bool), torch.zeros(2, 2, dtype=bool),
        ...                                    torch.tensor([[-1.0, 2.0]] * 3))
        >>> s.edge_sample(5).tolist()  # one shared edge, (0, 2)
        [0, 1]
        """
        inner = self.interior_edges
        if n < len(inner):
            pick = torch.randperm(len(inner), generator=generator)[:n].to(inner.device)
            inner = inner[pick]
        return torch.unique(self.edge_polygons[inner].reshape(-1))

    @classmethod
    def from_mesh(cls, mesh: Any, device: torch.device | str | None = None) -> SurfaceStructure:
        """Build from an ``ExactMesh`` (or any object with its numpy fields).

        Parameters
        ----------
        mesh : ExactMesh
            Needs ``vertices``, ``polygons``, ``vertex_patterns``, ``polygon_patterns``,
            ``vertex_constraints`` and ``bounds``.
        device : torch.device or str, optional
            Where the tensors go.

        Returns
        -------
        SurfaceStructure

        Examples
        --------
        >>> from types import SimpleNamespace
        >>> import numpy as np
        >>> from nsr.geometry import SurfaceStructure
        >>> square = SimpleNamespace(vertices=np.array([[0.0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0]]),
        ...                          polygons=[np.array([0, 1, 2, 3])], vertex_patterns=np.zeros((4, 2), bool),
        ...                          polygon_patterns=np.zeros((1, 2), bool), vertex_constraints=np.zeros((4, 3), int),
        ...                          bounds=np.array([[-1.0, 1.0]] * 3))
        >>> s = SurfaceStructure.from_mesh(square)
        >>> s.n_polygons, len(s.edges), s.triangles.tolist()
        (1, 4, [[0, 1, 2], [0, 2, 3]])
        """
        polygons = [np.asarray(p, dtype=np.int64) for p in mesh.polygons]
        cycles, cycle_len = pad_cycles(polygons)
        cycles[np.arange(cycles.shape[1])[None, :] >= cycle_len[:, None]] = -1
        v = np.asarray(mesh.vertices, dtype=np.float64)
        vp = np.asarray(mesh.vertex_patterns, dtype=bool)
        vp = vp if vp.ndim == 2 else vp.reshape(v.shape[0], -1)
        pp = np.asarray(mesh.polygon_patterns, dtype=bool).reshape(len(polygons), vp.shape[1])
        cons = np.asarray(mesh.vertex_constraints, dtype=np.int64)
        cons = cons if cons.ndim == 2 else cons.reshape(v.shape[0], -1)

        def t(a: np.ndarray) -> Tensor:
            return torch.as_tensor(np.ascontiguousarray(a), device=device)

        return cls.from_polygons(t(v), t(cycles), t(cons), t(vp), t(pp), t(np.asarray(mesh.bounds, np.float64)))

    @classmethod
    def from_polygons(cls, vertices: Tensor, cycles: Tensor, constraints: Tensor, vertex_patterns: Tensor,
                      polygon_patterns: Tensor, bounds: Tensor) -> SurfaceStructure:
        """Build from tensors on one device: ``vertices`` ``(V, 3)``, oriented ``cycles``
        ``(P, K)`` long padded with -1, ``constraints`` ``(V, 3)``, ``vertex_patterns``
        ``(V, N)``, ``polygon_patterns`` ``(P, N)``, ``bounds`` ``(3, 2)``. Triangles are the
        fan of each cycle from its first vertex.

        Parameters
        ----------
        vertices : (V, 3) float Tensor
            Extracted positions.
        cycles : (P, K) int64 Tensor
            Oriented vertex cycles padded with -1.
        constraints : (V, 3) int64 Tensor
            Active constraint ids of each vertex.
        vertex_patterns : (V, N) bool Tensor
            Activation pattern of each vertex.
        polygon_patterns : (P, N) bool Tensor
            Activation pattern of each polygon's region.
        bounds : (3, 2) float Tensor
            The box.

        Returns
        -------
        SurfaceStructure

        Examples
        --------
    >>> import torch
    >>> v = 0.5 * torch.tensor([[1.0, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]],
    ...                        dtype=torch.float64)  # the octahedron |x| + |y| + |z| = 0.5
    >>> faces = torch.tensor([[0, 2, 4], [2, 1, 4], [1, 3, 4], [3, 0, 4], [2, 0, 5], [1, 2, 5], [3, 1, 5], [0, 3, 5]])
    >>> from nsr.geometry import SurfaceStructure
        >>> s = SurfaceStructure.from_polygons(v, faces, torch.zeros(6, 3, dtype=torch.long),
        ...                                    torch.zeros(6, 6, dtype=bool), torch.zeros(8, 6, dtype=bool),
        ...                                    torch.tensor([[-1.0, 1.0]] * 3))
        >>> s.cycle_len.tolist()
        [3, 3, 3, 3, 3, 3, 3, 3]
        """
        cycle_len = (cycles >= 0).sum(1)
        k = cycles.shape[1]
        ar = torch.arange(k, device=vertices.device)
        padded = torch.where(ar[None] < cycle_len[:, None], cycles, cycles[:, :1].expand(-1, k)) \
            if k else cycles
        triangles, rows = fan_triangles(cycles)
        edges, edge_polygons = polygon_edges(padded, cycle_len)
        return cls(
            vertices0=vertices.to(torch.float64),
            constraints=constraints.long(),
            vertex_patterns=vertex_patterns.bool(),
            polygon_patterns=polygon_patterns.bool(),
            cycles=padded.long(),
            cycle_len=cycle_len.long(),
            triangles=triangles.long(),
            triangle_polygon=rows.long(),
            edges=edges,
            edge_polygons=edge_polygons,
            bounds=bounds.to(torch.float64),
        )


def fan_triangles(cycles: Tensor) -> tuple[Tensor, Tensor]:
    """Fan triangulation ``(v_0, v_i, v_i+1)`` of convex cycles ``(P, K)`` padded with -1:
    triangles ``(T, 3)`` and the polygon of each ``(T,)``, ordered by ``i``, then polygon.

    Parameters
    ----------
    cycles : (P, K) int64 Tensor
        Vertex cycles padded with -1.

    Returns
    -------
    triangles : (T, 3) int64 Tensor
    polygon : (T,) int64 Tensor

    Examples
    --------
    >>> import torch
    >>> from nsr.geometry import fan_triangles
    >>> fan_triangles(torch.tensor([[0, 1, 2, 3], [4, 5, 6, -1]]))
    (tensor([[0, 1, 2],
            [4, 5, 6],
            [0, 2, 3]]), tensor([0, 1, 0]))
    """
    dev = cycles.device
    k = cycles.shape[1]
    if k < 3:
        return torch.zeros(0, 3, dtype=torch.long, device=dev), torch.zeros(0, dtype=torch.long, device=dev)
    length = (cycles >= 0).sum(1)
    i, rows = torch.nonzero(torch.arange(1, k - 1, device=dev)[:, None] < (length[None, :] - 1), as_tuple=True)
    i = i + 1
    return torch.stack([cycles[rows, 0], cycles[rows, i], cycles[rows, i + 1]], 1), rows


def pad_cycles(polygons: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Pad vertex cycles to ``(P, K)`` by repeating each cycle's first vertex; lengths ``(P,)``.

    The repeated vertex adds zero-length edges only, so sums over cycle edges are unchanged.

    Parameters
    ----------
    polygons : sequence of (k,) int ndarray
        Vertex cycles.

    Returns
    -------
    cycles : (P, K) int64 ndarray
    lengths : (P,) int64 ndarray

    Examples
    --------
    >>> import numpy as np
    >>> from nsr.geometry import pad_cycles
    >>> pad_cycles([np.array([0, 1, 2, 3]), np.array([4, 5, 6])])
    (array([[0, 1, 2, 3],
           [4, 5, 6, 4]]), array([4, 3]))
    """
    n = len(polygons)
    lens = np.fromiter((len(p) for p in polygons), dtype=np.int64, count=n)
    k = int(lens.max()) if n else 0
    if n == 0:
        return np.zeros((0, 0), dtype=np.int64), lens
    flat = np.concatenate([np.asarray(p, dtype=np.int64) for p in polygons])
    firsts = flat[np.concatenate([[0], np.cumsum(lens)[:-1]])]
    out = np.repeat(firsts[:, None], k, axis=1)
    rows = np.repeat(np.arange(n), lens)
    cols = np.arange(flat.size) - np.repeat(np.cumsum(lens) - lens, lens)
    out[rows, cols] = flat
    return out, lens


def polygon_edges(cycles: Any, cycle_len: Any) -> tuple[Any, Any]:
    """Unique undirected edges ``(E, 2)`` of padded cycles and their two polygons ``(E, 2)``.

    ``cycles`` ``(P, K)`` and ``cycle_len`` ``(P,)``: tensors, or numpy arrays (numpy comes
    back). ``edge_polygons[e, 1]`` is ``-1`` for an edge with one polygon (the box cut, or an
    open boundary); an edge of more than two polygons keeps the first two.

    Parameters
    ----------
    cycles : (P, K) int Tensor or ndarray
        Padded cycles (:func:`pad_cycles`).
    cycle_len : (P,) int Tensor or ndarray
        Their lengths.

    Returns
    -------
    edges : (E, 2) int64
        ``edges[:, 0] < edges[:, 1]``.
    edge_polygons : (E, 2) int64

    Examples
    --------
    Two triangles sharing the edge (0, 2):

    >>> import numpy as np
    >>> from nsr.geometry import polygon_edges
    >>> edges, polys = polygon_edges(np.array([[0, 1, 2], [0, 2, 3]]), np.array([3, 3]))
    >>> edges.tolist(), polys.tolist()
    ([[0, 1], [0, 2], [0, 3], [1, 2], [2, 3]], [[0, -1], [0, 1], [1, -1], [0, -1], [1, -1]])
    """
    if isinstance(cycles, np.ndarray):
        e, ep = polygon_edges(torch.from_numpy(np.asarray(cycles, np.int64)),
                              torch.from_numpy(np.asarray(cycle_len, np.int64)))
        return e.numpy(), ep.numpy()
    dev = cycles.device
    p, k = cycles.shape
    if p == 0 or k == 0:
        return (torch.zeros(0, 2, dtype=torch.long, device=dev),) * 2
    ar = torch.arange(k, device=dev)
    a = cycles
    # the last real edge closes the cycle: (v_{len-1}, v_0)
    b = torch.where(ar[None] == (cycle_len[:, None] - 1), cycles[:, :1], torch.roll(cycles, -1, 1))
    poly = torch.arange(p, device=dev)[:, None].expand(-1, k)
    keep = (ar[None] < cycle_len[:, None]) & (a != b)
    a, b, poly = a[keep], b[keep], poly[keep]
    lo, hi = torch.minimum(a, b), torch.maximum(a, b)
    n_v = int(hi.max()) + 1 if hi.numel() else 1
    code, inverse = torch.unique(lo * n_v + hi, return_inverse=True)
    edges = torch.stack([code // n_v, code % n_v], 1)
    inv_sorted, order = torch.sort(inverse, stable=True)
    poly_sorted = poly[order]
    first = torch.ones_like(inv_sorted, dtype=torch.bool)
    first[1:] = inv_sorted[1:] != inv_sorted[:-1]
    second = torch.zeros_like(first)
    second[1:] = ~first[1:] & first[:-1]
    edge_polygons = torch.full((len(edges), 2), -1, dtype=torch.long, device=dev)
    edge_polygons[inv_sorted[first], 0] = poly_sorted[first]
    edge_polygons[inv_sorted[second], 1] = poly_sorted[second]
    return edges, edge_polygons


# ----------------------------------------------------------------------------- geometry


def safe_norm(v: Tensor, eps: float = 1e-30) -> Tensor:
    """Euclidean norm over the last axis with a finite gradient at zero, ``(...,)``.

    Parameters
    ----------
    v : (..., D) Tensor
        Vectors.
    eps : float
        Added under the square root.

    Returns
    -------
    (...,) Tensor

    Examples
    --------
    >>> import torch
    >>> from nsr.geometry import safe_norm
    >>> v = torch.zeros(1, 3, requires_grad=True)
    >>> safe_norm(torch.tensor([[3.0, 4.0, 0.0]])), torch.autograd.grad(safe_norm(v).sum(), v)[0]
    (tensor([5.]), tensor([[0., 0., 0.]]))
    """
    return torch.sqrt((v * v).sum(-1) + eps)


def polygon_vector_areas(vertices: Tensor, cycles: Tensor) -> Tensor:
    """Vector areas ``1/2 sum_i v_i x v_{i+1}`` of padded cycles, ``(P, 3)``.

    Its norm is the area of a planar polygon and its direction the normal given by the
    cycle's orientation (outward for nsr's meshes).

    Parameters
    ----------
    vertices : (V, 3) float Tensor
    cycles : (P, K) int64 Tensor
        Padded by repeating the first vertex.

    Returns
    -------
    (P, 3) Tensor

    Examples
    --------
    >>> import torch
    >>> from nsr.geometry import polygon_vector_areas
    >>> square = torch.tensor([[0.0, 0, 0], [2, 0, 0], [2, 2, 0], [0, 2, 0]])
    >>> polygon_vector_areas(square, torch.tensor([[0, 1, 2, 3]]))  # counter-clockwise seen from +z
    tensor([[0., 0., 4.]])
    """
    v = vertices[cycles]  # (P, K, 3)
    return 0.5 * torch.cross(v, torch.roll(v, -1, dims=1), dim=-1).sum(1)


def polygon_areas(vertices: Tensor, cycles: Tensor) -> Tensor:
    """Areas of planar polygons from their ordered cycles, ``(P,)``.

    Parameters
    ----------
    vertices : (V, 3) float Tensor
    cycles : (P, K) int64 Tensor

    Returns
    -------
    (P,) Tensor

    Examples
    --------
    >>> import torch
    >>> v = 0.5 * torch.tensor([[1.0, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]],
    ...                        dtype=torch.float64)  # the octahedron |x| + |y| + |z| = 0.5
    >>> faces = torch.tensor([[0, 2, 4], [2, 1, 4], [1, 3, 4], [3, 0, 4], [2, 0, 5], [1, 2, 5], [3, 1, 5], [0, 3, 5]])
    >>> from nsr.geometry import polygon_areas
    >>> round(float(polygon_areas(v, faces)[0]), 6), round(3**0.5 / 8, 6)  # equilateral, side sqrt(0.5)
    (0.216506, 0.216506)
    """
    return safe_norm(polygon_vector_areas(vertices, cycles))


def polygon_normals(vertices: Tensor, cycles: Tensor) -> Tensor:
    """Unit normals of polygons from their ordered cycles, ``(P, 3)``.

    Parameters
    ----------
    vertices : (V, 3) float Tensor
    cycles : (P, K) int64 Tensor

    Returns
    -------
    (P, 3) Tensor

    Examples
    --------
    >>> import torch
    >>> v = 0.5 * torch.tensor([[1.0, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]],
    ...                        dtype=torch.float64)  # the octahedron |x| + |y| + |z| = 0.5
    >>> faces = torch.tensor([[0, 2, 4], [2, 1, 4], [1, 3, 4], [3, 0, 4], [2, 0, 5], [1, 2, 5], [3, 1, 5], [0, 3, 5]])
    >>> from nsr.geometry import polygon_normals
    >>> (polygon_normals(v, faces)[:2] * 3**0.5).round(decimals=6)  # outward: sign(x, y, z) / sqrt(3)
    tensor([[ 1.,  1.,  1.],
            [-1.,  1.,  1.]], dtype=torch.float64)
    """
    va = polygon_vector_areas(vertices, cycles)
    return va / safe_norm(va).unsqueeze(-1)


def polygon_perimeters(vertices: Tensor, cycles: Tensor) -> Tensor:
    """Perimeters of padded cycles, ``(P,)`` (padding edges have zero length).

    Parameters
    ----------
    vertices : (V, 3) float Tensor
    cycles : (P, K) int64 Tensor

    Returns
    -------
    (P,) Tensor

    Examples
    --------
    >>> import torch
    >>> from nsr.geometry import polygon_perimeters
    >>> square = torch.tensor([[0.0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0]], dtype=torch.float64)
    >>> polygon_perimeters(square, torch.tensor([[0, 1, 2, 3], [0, 1, 2, 0]])).round(decimals=6)
    tensor([4.0000, 3.4142], dtype=torch.float64)
    """
    v = vertices[cycles]
    d = torch.roll(v, -1, dims=1) - v
    return (torch.sqrt((d * d).sum(-1) + 1e-30) - 1e-15).sum(1)


def total_area(vertices: Tensor, cycles: Tensor) -> Tensor:
    """Total area of the polygons, scalar.

    Parameters
    ----------
    vertices : (V, 3) float Tensor
    cycles : (P, K) int64 Tensor

    Returns
    -------
    () Tensor

    Examples
    --------
    >>> import torch
    >>> v = 0.5 * torch.tensor([[1.0, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]],
    ...                        dtype=torch.float64)  # the octahedron |x| + |y| + |z| = 0.5
    >>> faces = torch.tensor([[0, 2, 4], [2, 1, 4], [1, 3, 4], [3, 0, 4], [2, 0, 5], [1, 2, 5], [3, 1, 5], [0, 3, 5]])
    >>> from nsr.geometry import total_area
    >>> round(float(total_area(v, faces)), 6), round(3**0.5, 6)  # 8 triangles of area sqrt(3) / 8
    (1.732051, 1.732051)
    """
    return polygon_areas(vertices, cycles).sum()


def triangle_areas(vertices: Tensor, triangles: Tensor) -> Tensor:
    """Triangle areas, ``(T,)``.

    Parameters
    ----------
    vertices : (V, 3) float Tensor
    triangles : (T, 3) int64 Tensor

    Returns
    -------
    (T,) Tensor

    Examples
    --------
    >>> import torch
    >>> from nsr.geometry import triangle_areas
    >>> triangle_areas(torch.tensor([[0.0, 0, 0], [2, 0, 0], [0, 3, 0]]), torch.tensor([[0, 1, 2]]))
    tensor([3.])
    """
    a, b, c = vertices[triangles].unbind(1)
    return 0.5 * safe_norm(torch.cross(b - a, c - a, dim=-1))


def edge_lengths(vertices: Tensor, edges: Tensor) -> Tensor:
    """Lengths of ``(E, 2)`` edges, ``(E,)``.

    Parameters
    ----------
    vertices : (V, 3) float Tensor
    edges : (E, 2) int64 Tensor

    Returns
    -------
    (E,) Tensor

    Examples
    --------
    >>> import torch
    >>> from nsr.geometry import edge_lengths
    >>> edge_lengths(torch.tensor([[0.0, 0, 0], [3, 4, 0]]), torch.tensor([[0, 1]]))
    tensor([5.])
    """
    return safe_norm(vertices[edges[:, 1]] - vertices[edges[:, 0]])


def angle_between(u: Tensor, v: Tensor) -> Tensor:
    """Angle in radians between vectors ``(..., 3)`` (``atan2(|u x v|, u . v)``), ``(...,)``.

    Parameters
    ----------
    u, v : (..., 3) Tensor

    Returns
    -------
    (...,) Tensor
        In ``[0, pi]``.

    Examples
    --------
    >>> import torch
    >>> from nsr.geometry import angle_between
    >>> angle_between(torch.tensor([[1.0, 0, 0], [1, 0, 0]]), torch.tensor([[0.0, 2, 0], [-1, 0, 0]])) / torch.pi
    tensor([0.5000, 1.0000])
    """
    return torch.atan2(safe_norm(torch.cross(u, v, dim=-1)), (u * v).sum(-1))


def dihedral_angles(normals: Tensor, edge_polygons: Tensor) -> Tensor:
    """Angle between the normals of the two polygons of each edge, ``(E_i,)`` radians.

    ``normals`` ``(P, 3)``; ``edge_polygons`` ``(E_i, 2)`` with both entries valid. ``0``
    means the two polygons are coplanar (a flat edge), ``pi`` a knife edge.

    Parameters
    ----------
    normals : (P, 3) Tensor
    edge_polygons : (E_i, 2) int64 Tensor

    Returns
    -------
    (E_i,) Tensor

    Examples
    --------
    >>> import torch
    >>> v = 0.5 * torch.tensor([[1.0, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]],
    ...                        dtype=torch.float64)  # the octahedron |x| + |y| + |z| = 0.5
    >>> faces = torch.tensor([[0, 2, 4], [2, 1, 4], [1, 3, 4], [3, 0, 4], [2, 0, 5], [1, 2, 5], [3, 1, 5], [0, 3, 5]])
    >>> from nsr.geometry import dihedral_angles, polygon_normals
    >>> angles = dihedral_angles(polygon_normals(v, faces), torch.tensor([[0, 1], [0, 4]]))
    >>> bool(torch.allclose(angles, torch.acos(torch.tensor(1 / 3, dtype=torch.float64))))  # the octahedron's
    True
    """
    return angle_between(normals[edge_polygons[:, 0]], normals[edge_polygons[:, 1]])


def triangle_angles(vertices: Tensor, triangles: Tensor) -> Tensor:
    """The three interior angles of each triangle, ``(T, 3)`` radians (at vertex 0, 1, 2).

    Parameters
    ----------
    vertices : (V, 3) float Tensor
    triangles : (T, 3) int64 Tensor

    Returns
    -------
    (T, 3) Tensor

    Examples
    --------
    >>> import torch
    >>> from nsr.geometry import triangle_angles
    >>> right = torch.tensor([[0.0, 0, 0], [1, 0, 0], [0, 1, 0]])
    >>> triangle_angles(right, torch.tensor([[0, 1, 2]])) / torch.pi
    tensor([[0.5000, 0.2500, 0.2500]])
    """
    p = vertices[triangles]  # (T, 3, 3)
    nxt = torch.roll(p, -1, dims=1)
    prv = torch.roll(p, 1, dims=1)
    return angle_between(nxt - p, prv - p)


def enclosed_volume(vertices: Tensor, triangles: Tensor) -> Tensor:
    """Volume enclosed by a closed, outward-oriented triangle mesh (divergence theorem), scalar.

    ``sum det(a, b, c) / 6`` over triangles; meaningful only for closed surfaces (e.g.
    ``extract_mesh(..., close=True)``).

    Parameters
    ----------
    vertices : (V, 3) float Tensor
    triangles : (T, 3) int64 Tensor

    Returns
    -------
    () Tensor
        Negative for an inward-oriented mesh.

    Examples
    --------
    >>> import torch
    >>> v = 0.5 * torch.tensor([[1.0, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]],
    ...                        dtype=torch.float64)  # the octahedron |x| + |y| + |z| = 0.5
    >>> faces = torch.tensor([[0, 2, 4], [2, 1, 4], [1, 3, 4], [3, 0, 4], [2, 0, 5], [1, 2, 5], [3, 1, 5], [0, 3, 5]])
    >>> from nsr.geometry import enclosed_volume
    >>> round(float(enclosed_volume(v, faces)), 6), round(4 / 3 * 0.5**3, 6)
    (0.166667, 0.166667)
    """
    a, b, c = vertices[triangles].unbind(1)
    return (a * torch.cross(b, c, dim=-1)).sum() / 6.0


def polygon_isoperimetric_quality(vertices: Tensor, cycles: Tensor) -> Tensor:
    """``4 pi A / L^2`` per polygon, ``(P,)``: 1 disc, 0.60 equilateral triangle, 0 sliver.

    Parameters
    ----------
    vertices : (V, 3) float Tensor
    cycles : (P, K) int64 Tensor

    Returns
    -------
    (P,) Tensor

    Examples
    --------
    >>> import torch
    >>> v = 0.5 * torch.tensor([[1.0, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]],
    ...                        dtype=torch.float64)  # the octahedron |x| + |y| + |z| = 0.5
    >>> faces = torch.tensor([[0, 2, 4], [2, 1, 4], [1, 3, 4], [3, 0, 4], [2, 0, 5], [1, 2, 5], [3, 1, 5], [0, 3, 5]])
    >>> from nsr.geometry import polygon_isoperimetric_quality
    >>> round(float(polygon_isoperimetric_quality(v, faces)[0]), 4), round(3**0.5 * 3.141592653589793 / 9, 4)
    (0.6046, 0.6046)
    """
    area = polygon_areas(vertices, cycles)
    per = polygon_perimeters(vertices, cycles)
    # the floor's square must not underflow (the gradient divides by it): 1e-30 in float64, ~1e-18 in float32
    # (degenerate polygons of zero perimeter occur, e.g. on the lines where three planes of a grid encoder meet)
    floor = max(1e-30, 1e2 * math.sqrt(torch.finfo(per.dtype).tiny))
    return 4.0 * math.pi * area / (per * per + floor)
