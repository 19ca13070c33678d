"""Bounds on PLGraphs: sound on sampled points for every neuron kind, and equal to the engine's own
bounds (nsr.extraction.pruning.output_bounds) on plain ReLU MLPs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from nsr.extraction.pruning import output_bounds as mlp_output_bounds
from nsr.networks import random_network
from nsr.pl import INPUT, Affine, Layer, PLGraph, ResidualMLP, SkipMLP, trace
from nsr.pl.bounds import (
    activation_range,
    concretize,
    interval_bounds,
    linear_bounds,
    output_bounds,
    relaxation,
)

D64 = torch.float64


def _mixed_graph() -> PLGraph:
    """Skips, LeakyReLU, abs, and concave neurons (neg > pos)."""
    gen = torch.Generator().manual_seed(11)
    r = lambda *s: torch.randn(*s, generator=gen, dtype=D64)  # noqa: E731
    l0 = Layer({INPUT: r(6, 3)}, r(6), torch.tensor([0.0, 0.2, -1.0, 1.0, 0.5, -0.3], dtype=D64),
               torch.tensor([1.0, 1.0, 1.0, 0.2, -0.5, 0.7], dtype=D64))
    l1 = Layer({INPUT: r(5, 3), 0: r(5, 6)}, r(5), torch.tensor([0.0, 0.1, -1.0, 2.0, 0.0], dtype=D64),
               torch.tensor([1.0, 1.0, 1.0, 0.5, -1.0], dtype=D64))
    l2 = Layer({0: r(4, 6), 1: r(4, 5)}, r(4))
    return PLGraph(3, [l0, l1, l2], Affine({INPUT: r(1, 3), 1: r(1, 5), 2: r(1, 4)}, r(1)))


def _boxes(k: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    center = torch.rand(k, 3, generator=gen, dtype=D64) * 2 - 1
    half = torch.rand(k, 1, generator=gen, dtype=D64) * 0.5 + 1e-3
    return center - half, center + half


def _samples(lo: torch.Tensor, hi: torch.Tensor, n: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(3)
    u = torch.rand(lo.shape[0], n, lo.shape[1], generator=gen, dtype=D64)
    corners = torch.tensor([[i >> j & 1 for j in range(3)] for i in range(8)], dtype=D64)
    u = torch.cat([u, corners.expand(lo.shape[0], -1, -1)], 1)
    return lo[:, None] + u * (hi - lo)[:, None]


GRAPHS = {
    "mixed": _mixed_graph,
    "skip_tanh": lambda: trace(SkipMLP(3, 16, 4, skip=2, tanh_output=True)),
    "residual_leaky": lambda: trace(ResidualMLP(3, 12, 2, activation="leaky_relu", negative_slope=0.3)),
    "clamp": lambda: trace(nn.Sequential(nn.Linear(3, 10), nn.Hardtanh(-0.2, 0.3), nn.Linear(10, 1))),
}


@pytest.mark.parametrize("name", ["mixed", "skip_tanh", "residual_leaky", "clamp"])
def test_bounds_hold_at_sampled_points(name):
    graph = GRAPHS[name]()
    lo, hi = _boxes(40)
    x = _samples(lo, hi, 150)  # (K, n, D)
    flat = x.reshape(-1, 3)
    for crown_hidden in (True, False):
        olo, ohi = output_bounds(graph, lo, hi, crown_hidden=crown_hidden)
        g = graph(flat).reshape(40, -1)
        assert (g >= olo[:, None] - 1e-12).all() and (g <= ohi[:, None] + 1e-12).all()
    pre = interval_bounds(graph, lo, hi)
    for l in range(graph.n_layers + 1):
        z = graph.preactivations(flat, l).reshape(40, -1, pre[l][0].shape[1])
        assert (z >= pre[l][0][:, None] - 1e-12).all() and (z <= pre[l][1][:, None] + 1e-12).all()
        c_lo, c_hi = concretize(*linear_bounds(graph, l, pre[:l]), lo, hi)
        assert (z >= c_lo[:, None] - 1e-12).all() and (z <= c_hi[:, None] + 1e-12).all()
    # CROWN through the output is at least as tight as intervals somewhere, never looser after intersecting
    ilo, ihi = pre[-1]
    olo, ohi = output_bounds(graph, lo, hi)
    assert (olo >= ilo[:, 0] - 1e-12).all() and (ohi <= ihi[:, 0] + 1e-12).all()


def test_partial_back_substitution_is_sound_with_the_true_earlier_values():
    graph = _mixed_graph()
    lo, hi = _boxes(20, seed=5)
    pre = interval_bounds(graph, lo, hi)
    x = _samples(lo, hi, 200)
    values = graph.post_activations(x.reshape(-1, 3))
    z = graph(x.reshape(-1, 3)).reshape(20, -1)
    a_lo, c_lo, a_up, c_up = linear_bounds(graph, graph.n_layers, pre, stop=2)
    assert set(a_up) == {INPUT, 0, 1}
    lower = c_lo[:, None, 0] + sum(torch.einsum("kmn,kpn->kp", a_lo[k], values[k].reshape(20, -1, a_lo[k].shape[2]))
                                   for k in a_lo)
    upper = c_up[:, None, 0] + sum(torch.einsum("kmn,kpn->kp", a_up[k], values[k].reshape(20, -1, a_up[k].shape[2]))
                                   for k in a_up)
    assert (z >= lower - 1e-12).all() and (z <= upper + 1e-12).all()


def test_activation_range_and_relaxation_by_dense_sampling():
    layer = _mixed_graph().layers[0]
    gen = torch.Generator().manual_seed(2)
    a = torch.randn(50, 6, generator=gen, dtype=D64)
    b = a + torch.rand(50, 6, generator=gen, dtype=D64) * 3
    t = torch.linspace(0, 1, 1001, dtype=D64)
    z = a[..., None] + (b - a)[..., None] * t  # (50, 6, T)
    act = torch.where(z > 0, layer.pos[:, None] * z, layer.neg[:, None] * z)
    r_lo, r_hi = activation_range(layer, a, b)
    # the range is attained at the samples (ends and 0 are among the extremes) and contains them
    assert (act.amin(-1) >= r_lo - 1e-12).all() and (act.amax(-1) <= r_hi + 1e-12).all()
    assert torch.allclose(act.amax(-1), r_hi, atol=5e-3) and torch.allclose(act.amin(-1), r_lo, atol=5e-3)
    s_lo, t_lo, s_up, t_up = relaxation(layer, a, b)
    assert (s_lo[..., None] * z + t_lo[..., None] <= act + 1e-12).all()
    assert (s_up[..., None] * z + t_up[..., None] >= act - 1e-12).all()


@pytest.mark.parametrize("crown_hidden", [True, False])
def test_mlp_bounds_equal_the_engine_bounds(crown_hidden):
    net = random_network(3, [12, 10, 8], seed=6)
    graph = PLGraph.from_plnetwork(net)
    lo, hi = _boxes(30, seed=8)
    ours = output_bounds(graph, lo, hi, crown_hidden=crown_hidden)
    theirs = mlp_output_bounds(net, lo, hi, crown_hidden=crown_hidden)
    assert torch.allclose(ours[0], theirs[0], atol=1e-12, rtol=0)
    assert torch.allclose(ours[1], theirs[1], atol=1e-12, rtol=0)
