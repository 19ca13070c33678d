"""PLGraph: evaluation, patterns, region maps and conversions against independent answers."""

from __future__ import annotations

import math

import pytest
import torch

from nsr.networks import PLNetwork, random_network
from nsr.pl.graph import INPUT, Affine, Layer, NotPiecewiseAffineError, OutputTransform, PLGraph, as_graph

D64 = torch.float64


def _points(n: int, d: int, seed: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(n, d, generator=gen, dtype=D64) * 2 - 1


def _skip_graph() -> tuple[PLGraph, dict[str, torch.Tensor]]:
    """A 2-layer graph with an input skip, a leaky layer and abs neurons, and its weights."""
    gen = torch.Generator().manual_seed(3)
    w = {k: torch.randn(*s, generator=gen, dtype=D64) for k, s in
         {"w0": (5, 2), "b0": (5,), "w1x": (4, 2), "w1": (4, 5), "b1": (4,), "o0": (1, 5), "o1": (1, 4),
          "ob": (1,)}.items()}
    neg = torch.tensor([0.1, 0.1, 0.1, -1.0, -1.0], dtype=D64)
    l0 = Layer({INPUT: w["w0"]}, w["b0"], neg, torch.ones(5, dtype=D64))
    l1 = Layer({INPUT: w["w1x"], 0: w["w1"]}, w["b1"])
    out = Affine({0: w["o0"], 1: w["o1"]}, w["ob"])
    return PLGraph(2, [l0, l1], out), w


def _skip_reference(x: torch.Tensor, w: dict[str, torch.Tensor]) -> torch.Tensor:
    z0 = x @ w["w0"].T + w["b0"]
    a0 = torch.cat([torch.nn.functional.leaky_relu(z0[:, :3], 0.1), z0[:, 3:].abs()], 1)
    a1 = torch.relu(x @ w["w1x"].T + a0 @ w["w1"].T + w["b1"])
    return (a0 @ w["o0"].T + a1 @ w["o1"].T + w["ob"]).squeeze(-1)


def test_evaluation_matches_hand_written_forward():
    graph, w = _skip_graph()
    x = _points(300, 2)
    assert torch.allclose(graph(x), _skip_reference(x, w), atol=1e-13, rtol=0)
    assert graph.widths == [5, 4] and graph.offsets == [0, 5, 9] and not graph.is_mlp and not graph.is_relu


def test_preactivations_of_a_neuron_range():
    graph, w = _skip_graph()
    x = _points(50, 2)
    z0 = x @ w["w0"].T + w["b0"]
    assert torch.allclose(graph.preactivations(x, 0, 1, 4), z0[:, 1:4], atol=1e-14, rtol=0)
    full = graph.preactivations(x, 1)
    assert torch.allclose(graph.preactivations(x, 1, 2, 4), full[:, 2:4], atol=1e-14, rtol=0)
    assert torch.allclose(graph.preactivations(x, 2)[:, 0], graph(x), atol=0, rtol=0)


def test_region_maps_are_the_affine_pieces():
    """On each sampled point's region the maps reproduce the pre-activations, and the local
    gradient matches central finite differences (small steps stay in the region)."""
    graph, _ = _skip_graph()
    x = _points(200, 2)
    pats = graph.patterns(x)
    maps = graph.region_maps(pats)
    for l, (a, c) in enumerate(maps):
        z = graph.preactivations(x, l)
        assert torch.allclose(torch.einsum("pnd,pd->pn", a, x) + c, z, atol=1e-12, rtol=0)
    grads = graph.local_gradients(pats)
    h = 1e-7
    for i in range(2):
        e = torch.zeros(2, dtype=D64)
        e[i] = h
        fd = (graph(x + e) - graph(x - e)) / (2 * h)
        same = torch.stack([(p1 == p2).all(1) for p1, p2 in zip(graph.patterns(x + e), graph.patterns(x - e))]).all(0)
        assert same.sum() > 150
        assert torch.allclose(fd[same], grads[same, i], atol=1e-6, rtol=0)


def test_plnetwork_round_trip_and_gradients():
    net = random_network(3, [8, 6, 5], seed=2)
    graph = PLGraph.from_plnetwork(net)
    assert graph.is_mlp and graph.is_relu and graph.widths == [8, 6, 5]
    x = _points(100, 3)
    assert torch.equal(graph(x), net(x))
    back = graph.to_plnetwork()
    assert all(torch.equal(a, b) for a, b in zip(back.weights, net.weights))
    pats = graph.patterns(x)
    # PLNetwork.local_gradients is an independent (backward) implementation
    assert torch.allclose(graph.local_gradients(pats), net.local_gradients(pats), atol=1e-13, rtol=0)
    assert isinstance(as_graph(net), PLGraph)


def test_to_plnetwork_refuses_skips_and_transforms():
    graph, _ = _skip_graph()
    with pytest.raises(NotPiecewiseAffineError, match="not a plain Linear/ReLU chain"):
        graph.to_plnetwork()
    mlp = PLGraph.from_plnetwork(random_network(2, [4], seed=0))
    tanh = PLGraph(mlp.in_dim, mlp.layers, mlp.output, OutputTransform((("tanh",),)))
    with pytest.raises(NotPiecewiseAffineError, match="pre_transform=True"):
        tanh.to_plnetwork()
    assert isinstance(tanh.to_plnetwork(pre_transform=True), PLNetwork)


@pytest.mark.parametrize("steps, t, expected", [
    ((("tanh",),), 0.0, 0.0),
    ((("tanh",),), 0.5, math.atanh(0.5)),
    ((("sigmoid",),), 0.5, 0.0),
    ((("sigmoid",),), 0.9, math.log(0.9 / 0.1)),
    ((("affine", 2.0, 1.0),), 3.0, 1.0),
    ((("tanh",), ("affine", 0.5, 0.25)), 0.5, math.atanh(0.5)),
])
def test_output_transform_levels(steps, t, expected):
    tr = OutputTransform(steps)
    level = tr.level(t)
    assert level == pytest.approx(expected, abs=1e-15)
    assert float(tr(torch.tensor(level, dtype=D64))) == pytest.approx(t, abs=1e-14)


def test_output_transform_out_of_range_levels():
    with pytest.raises(ValueError, match=r"tanh takes values in \(-1, 1\)"):
        OutputTransform((("tanh",),)).level(1.0)
    with pytest.raises(ValueError, match=r"sigmoid takes values in \(0, 1\)"):
        OutputTransform((("sigmoid",),)).level(0.0)
    with pytest.raises(ValueError, match="scale > 0"):
        OutputTransform((("affine", -1.0, 0.0),))


def test_validation_names_the_problem():
    graph, w = _skip_graph()
    with pytest.raises(NotPiecewiseAffineError, match="layer 0: reads layer 1"):
        PLGraph(2, [Layer({1: torch.zeros(5, 4, dtype=D64)}, w["b0"]), graph.layers[1]], graph.output)
    with pytest.raises(NotPiecewiseAffineError, match="expected"):
        PLGraph(3, graph.layers, graph.output)
    with pytest.raises(NotPiecewiseAffineError, match="no breakpoint"):
        PLGraph(2, [Layer({INPUT: w["w0"]}, w["b0"], torch.ones(5, dtype=D64), torch.ones(5, dtype=D64))],
                Affine({0: w["o0"]}, w["ob"]))
    with pytest.raises(NotPiecewiseAffineError, match="scalar"):
        PLGraph(2, [], Affine({INPUT: torch.zeros(2, 2, dtype=D64)}, torch.zeros(2, dtype=D64)))


def test_to_dtype_keeps_the_function():
    graph, _ = _skip_graph()
    x = _points(20, 2)
    g32 = graph.to(dtype=torch.float32)
    assert g32.dtype == torch.float32
    assert torch.allclose(g32(x.float()).double(), graph(x), atol=1e-5)


def test_state_dict_round_trip(tmp_path):
    graph, _ = _skip_graph()
    graph = PLGraph(graph.in_dim, graph.layers, graph.output, OutputTransform((("tanh",), ("affine", 0.5, 0.1))))
    path = tmp_path / "g.pt"
    torch.save(graph.state_dict(), path)
    back = PLGraph.from_state_dict(torch.load(path, weights_only=True))
    x = _points(50, 2)
    assert torch.equal(back.module_output(x), graph.module_output(x))
    assert back.transform == graph.transform and back.widths == graph.widths
    with pytest.raises(NotPiecewiseAffineError, match="not a PLGraph state dict"):
        PLGraph.from_state_dict({"in_dim": torch.tensor(2)})


def test_each_layer_is_affine_on_every_cell_of_the_earlier_layers():
    """Brute force on a 2-D grid: group points by the activation pattern of the layers before
    ``l`` and fit an affine map to ``z_l`` on each group by least squares; it is exact. This is the
    property edge subdivision relies on, checked on folded residual and skip graphs."""
    from nsr.pl import ResidualMLP, SkipMLP, trace

    torch.manual_seed(0)
    t = torch.linspace(-1, 1, 61, dtype=D64)
    x = torch.cartesian_prod(t, t)
    for module in (ResidualMLP(2, 4, 2, activation="leaky_relu", negative_slope=0.2), SkipMLP(2, 6, 3, skip=2)):
        graph = trace(module)
        pats = graph.patterns(x)
        for l in range(1, graph.n_layers + 1):
            key = torch.cat(pats[:l], 1).to(torch.int64)
            _, cell = torch.unique(key, dim=0, return_inverse=True)
            z = graph.preactivations(x, l)
            design = torch.cat([x, torch.ones(len(x), 1, dtype=D64)], 1)
            for c in torch.unique(cell):
                sel = cell == c
                if sel.sum() < 6:
                    continue
                coef = torch.linalg.lstsq(design[sel], z[sel]).solution
                assert (design[sel] @ coef - z[sel]).abs().max() < 1e-10, (type(module).__name__, l)
