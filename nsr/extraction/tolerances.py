"""Sign decisions near zero: per-neuron rounding tolerances and the warnings when they matter."""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import Tensor

from nsr.pl.bounds import layer_bounds, source_ranges
from nsr.pl.graph import PLGraph

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
    range from its pre-activation bounds ``pre[k]`` ``(1, n_k)`` (:func:`nsr.pl.bounds.layer_bounds`).

    Parameters
    ----------
    graph : PLGraph
        The network.
    lo, hi : (D,) float Tensor
        Corners of the box.
    pre : list of (lower, upper), each (1, n_k) float Tensor
        Pre-activation bounds of every layer over the box (the output's last, unused here).

    Returns
    -------
    dict of int to (n_k,) float Tensor
        ``INPUT`` (-1): ``max(|lo|, |hi|)`` per coordinate; ``ENCODED``: the features' bound, when
        the graph has an encoder; layer ``k``: the largest magnitude of its post-activations.
        Infinite bounds become the dtype's largest finite number.

    Examples
    --------
    The octahedron network's first layer is ``relu(x_i)`` and ``relu(10 - x_i)``; over ``[-1, 1]^3``
    they reach 1 and 11:

    >>> import torch
    >>> from nsr.pl import as_graph
    >>> from nsr.pl.bounds import layer_bounds
    >>> from nsr.networks import octahedron_network
    >>> graph = as_graph(octahedron_network())
    >>> lo, hi = -torch.ones(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
    >>> mags = source_magnitudes(graph, lo, hi, layer_bounds(graph, lo[None], hi[None]))
    >>> mags[-1].tolist(), mags[0].tolist()
    ([1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 11.0, 11.0, 11.0])
    """
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
    ``1e20`` and a box of ``1`` with the first layer scaled by ``1e-20`` get the same decisions).

    Parameters
    ----------
    net : PLGraph
        The network.
    lo, hi : (D,) float Tensor
        Corners of the box; their dtype sets ``eps``.
    level : float
        The level extracted: ``|level|`` adds to the output's rounding scale.

    Returns
    -------
    list of (n_k,) float Tensor
        One tolerance per neuron of every layer, then a ``(1,)`` tolerance for the output.

    Examples
    --------
    The octahedron network ``2 sum relu(x_i) + sum relu(10 - x_i) - 30.5`` over ``[-1, 1]^3``:
    scales 1 and 11 in the first layer, ``2 * 3 + 3 * 11 + 30.5 = 69.5`` at the output:

    >>> import torch
    >>> from nsr.pl import as_graph
    >>> from nsr.networks import octahedron_network
    >>> lo, hi = -torch.ones(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
    >>> unit = SIGN_TOL_ULPS * torch.finfo(torch.float64).eps
    >>> [(t / unit).tolist() for t in sign_tolerances(as_graph(octahedron_network()), lo, hi)]
    [[1.0, 1.0, 1.0, 11.0, 11.0, 11.0], [69.5]]
    """
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
    :func:`sign_tolerances` computes them for neurons.

    Parameters
    ----------
    normals : (P, D) float Tensor
        Normals of the encoder's planes.
    offsets : (P,) float Tensor
        Their offsets.
    lo, hi : (D,) float Tensor
        Corners of the box.

    Returns
    -------
    (P,) float Tensor
        :data:`SIGN_TOL_ULPS` ``* eps * (|normals| @ max(|lo|, |hi|) + |offsets|)``.

    Examples
    --------
    >>> import torch
    >>> lo, hi = -torch.ones(3, dtype=torch.float64), 2 * torch.ones(3, dtype=torch.float64)
    >>> tol = facet_tolerances(torch.eye(3, dtype=torch.float64), torch.tensor([0.0, 1.0, -1.0]).double(), lo, hi)
    >>> (tol / (SIGN_TOL_ULPS * torch.finfo(torch.float64).eps)).tolist()
    [2.0, 3.0, 3.0]
    """
    mag = torch.maximum(lo.abs(), hi.abs())
    return SIGN_TOL_ULPS * torch.finfo(lo.dtype).eps * (normals.abs() @ mag + offsets.abs())


def warn_uncertain(uncertain: int, dtype: torch.dtype) -> None:
    """Warn that ``uncertain`` pre-activations were taken as zero although above rounding noise.

    Parameters
    ----------
    uncertain : int
        How many values were snapped to zero while above 1/8 of their tolerance; 0 warns nothing.
    dtype : torch.dtype
        The extraction's dtype; the advice differs for float32 (use float64) and float64 (shrink the box).

    Examples
    --------
    >>> import torch, warnings
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     warn_uncertain(0, torch.float64)
    ...     warn_uncertain(3, torch.float32)
    >>> len(caught), "use dtype=float64" in str(caught[0].message)
    (1, True)
    """
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
    """Warn that the complex is inconsistent where ``unpaired`` face keys did not pair.

    Parameters
    ----------
    unpaired : int
        How many 2-face keys appeared other than twice; 0 warns nothing.
    dtype : torch.dtype
        The extraction's dtype; float32 is told to use float64, float64 to report the case.

    Examples
    --------
    >>> import torch, warnings
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     warn_unpaired(2, torch.float64)
    >>> "2 2-faces were cut other than twice" in str(caught[0].message)
    True
    """
    if not unpaired:
        return
    hint = ("float32 cannot separate rounded zeros from small values on this network: use dtype=float64"
            if dtype == torch.float32 else "please report the network and box")
    warnings.warn(
        f"{unpaired} 2-faces were cut other than twice: a sign decision near a degenerate position "
        f"exceeded the rounding tolerance, so the complex (and a mesh from it) may have holes there; {hint}",
        stacklevel=3,
    )
