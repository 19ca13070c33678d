"""Track mode, differentiable vertices and regularizers on PLGraphs (skip, residual, LeakyReLU,
abs, clamp, tanh output), checked against independent answers.

The independent answer for the polygons is surface mode on a *plain ReLU MLP built by hand*
that computes the same function on the box: every neuron ``act(z) = neg z + (pos - neg) relu(z)``
is a ReLU plus an affine term, and the input and earlier ReLUs are carried from layer to layer
by neurons ``x + 2`` and ``r + 1`` that are positive on the whole box (their hyperplanes never
meet it), so the MLP has exactly the graph's hyperplanes in the box and its level set is the
graph's. Vertices are also checked by evaluating the graph itself (not its region maps), and
vertex-position gradients against central finite differences of re-solved vertices.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nsr import geometry as G
from nsr import regularizers as R
from nsr.extraction.polygons import weld_tracks
from nsr.extraction.surface import extract_mesh, track_polygons
from nsr.extraction.tracking import region_constraints, track_patterns, track_surface
from nsr.networks import PLNetwork
from nsr.pl import INPUT, Affine, Layer, NotPiecewiseAffineError, PLGraph, ResidualMLP, SkipMLP, trace

BOX = np.array([[-1.0, 1.0]] * 3)
D = 3


def _center(graph: PLGraph, seed: int) -> PLGraph:
    """The graph with its output bias moved so that the zero level set crosses the box."""
    x = torch.rand(4096, D, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 2 - 1
    graph.output.bias = graph.output.bias - graph(x).median()
    return graph


def _random_graph(kind: str, widths: list[int], seed: int) -> PLGraph:
    """A random graph: ``skip`` (layer 2 reads the input again), ``residual`` (every layer and the
    output read the input and every earlier layer), ``leaky`` (slope 0.2 below 0), ``abs``."""
    gen = torch.Generator().manual_seed(seed)

    def w(n: int, m: int) -> torch.Tensor:
        return torch.randn(n, m, generator=gen, dtype=torch.float64) / m**0.5

    sizes = {INPUT: D}
    layers = []
    for l, n in enumerate(widths):
        if kind == "residual":
            srcs = [INPUT, *range(l)]
        elif kind == "skip" and l == 2:
            srcs = [INPUT, l - 1]
        else:
            srcs = [l - 1]
        neg = {"leaky": 0.2, "abs": -1.0}.get(kind, 0.0)
        layers.append(Layer({k: w(n, sizes[k]) for k in srcs}, 0.3 * torch.randn(n, generator=gen, dtype=torch.float64),
                            torch.full((n,), neg, dtype=torch.float64), torch.ones(n, dtype=torch.float64)))
        sizes[l] = n
    out_srcs = [INPUT, *range(len(widths))] if kind == "residual" else [len(widths) - 1]
    out = Affine({k: w(1, sizes[k]) for k in out_srcs}, torch.zeros(1, dtype=torch.float64))
    return _center(PLGraph(D, layers, out), seed)


def _traced(kind: str, seed: int) -> PLGraph:
    torch.manual_seed(seed)
    nn = torch.nn
    if kind == "clamp":
        module = nn.Sequential(nn.Linear(3, 8), nn.Hardtanh(-0.3, 0.4), nn.Linear(8, 10), nn.ReLU(), nn.Linear(10, 1))
    else:  # tanh output after LeakyReLU and ReLU layers
        module = nn.Sequential(nn.Linear(3, 10), nn.ReLU(), nn.Linear(10, 10), nn.LeakyReLU(0.1), nn.Linear(10, 1),
                               nn.Tanh())
    return _center(trace(module), seed)


def _graph(kind: str) -> PLGraph:
    if kind in ("clamp", "tanh"):
        return _traced(kind, 3)
    return _random_graph(kind, [10, 10, 10], {"skip": 0, "residual": 1, "leaky": 2, "abs": 4}[kind])


KINDS = ["skip", "residual", "leaky", "abs", "clamp", "tanh"]


def _as_relu_mlp(g: PLGraph, carry: float = 2.0) -> PLNetwork:
    """A plain ReLU MLP equal to ``g`` on ``[-1, 1]^D`` with the same hyperplanes there (see the module docstring)."""
    n_layers = g.n_layers
    post: dict[int, tuple[dict[int, torch.Tensor], torch.Tensor]] = {}  # a_k over units (INPUT: x, j: r_j)

    def expand(aff: Affine) -> tuple[dict[int, torch.Tensor], torch.Tensor]:
        coef: dict[int, torch.Tensor] = {}
        bias = aff.bias.clone()
        for k, w in aff.blocks.items():
            parts = {INPUT: w} if k == INPUT else {u: w @ m for u, m in post[k][0].items()}
            if k != INPUT:
                bias = bias + w @ post[k][1]
            for u, m in parts.items():
                coef[u] = coef[u] + m if u in coef else m
        return coef, bias

    exprs = []
    for l, layer in enumerate(g.layers):
        ck, bk = expand(layer)
        exprs.append((ck, bk))
        coef = {u: layer.neg[:, None] * m for u, m in ck.items()}
        coef[l] = coef.get(l, 0) + torch.diag(layer.pos - layer.neg)
        post[l] = (coef, layer.neg * bk)
    exprs.append(expand(g.output))

    def read(coef: dict[int, torch.Tensor], bias: torch.Tensor, l: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Weights over MLP layer ``l - 1``'s units ``[r_{l-1} | x + carry | r_j + 1 (j = l - 2, ..., 0)]``."""
        n = bias.shape[0]
        if l == 0:
            return coef.get(INPUT, torch.zeros(n, D, dtype=bias.dtype)), bias.clone()
        cols = [coef.get(l - 1, torch.zeros(n, g.widths[l - 1], dtype=bias.dtype))]
        b = bias.clone()
        cx = coef.get(INPUT, torch.zeros(n, D, dtype=bias.dtype))
        cols.append(cx)
        b = b - carry * cx.sum(1)
        for j in reversed(range(l - 1)):  # the carried ReLUs, latest first (as the layers pass them on)
            cj = coef.get(j, torch.zeros(n, g.widths[j], dtype=bias.dtype))
            cols.append(cj)
            b = b - cj.sum(1)
        return torch.cat(cols, 1), b

    weights, biases = [], []
    for l in range(n_layers):
        w_true, b_true = read(*exprs[l], l)
        n_in = w_true.shape[1]
        eye_x = torch.zeros(D, n_in, dtype=torch.float64)
        if l == 0:
            eye_x[:, :D] = torch.eye(D)
            b_x = torch.full((D,), carry, dtype=torch.float64)
        else:
            n_prev = g.widths[l - 1]
            eye_x[:, n_prev:n_prev + D] = torch.eye(D)
            b_x = torch.zeros(D, dtype=torch.float64)
        rows, rb = [w_true, eye_x], [b_true, b_x]
        if l >= 1:
            n_prev = g.widths[l - 1]
            keep = torch.zeros(n_prev, n_in, dtype=torch.float64)  # r_{l-1} + 1
            keep[:, :n_prev] = torch.eye(n_prev)
            rows.append(keep)
            rb.append(torch.ones(n_prev, dtype=torch.float64))
            off = n_prev + D
            carried = n_in - off  # r_j + 1 for j < l - 1, passed on as they are
            if carried:
                pass_on = torch.zeros(carried, n_in, dtype=torch.float64)
                pass_on[:, off:] = torch.eye(carried)
                rows.append(pass_on)
                rb.append(torch.zeros(carried, dtype=torch.float64))
        weights.append(torch.cat(rows))
        biases.append(torch.cat(rb))
    w_out, b_out = read(*exprs[-1], n_layers)
    weights.append(w_out)
    biases.append(b_out)
    return PLNetwork(weights, biases)


def _tracked(graph: PLGraph, level: float = 0.0) -> tuple[dict, dict]:
    tr, why = track_polygons(graph, BOX, level)
    assert tr is not None, why
    return tr, weld_tracks(graph, tr)


def _same_polygon_sets(va: np.ndarray, cycles_a: list, vb: np.ndarray, cycles_b: list, atol: float = 1e-9) -> None:
    """Vertex sets equal up to ``atol`` (a bijection), and the polygons the same vertex sets."""
    assert len(va) == len(vb)
    d = np.abs(va[:, None, :] - vb[None, :, :]).max(-1)
    nearest = d.argmin(1)
    assert d.min(1).max() <= atol and d.min(0).max() <= atol
    assert len(set(nearest.tolist())) == len(vb)
    key_a = sorted(tuple(sorted(nearest[c].tolist())) for c in cycles_a)
    key_b = sorted(tuple(sorted(np.asarray(c).tolist())) for c in cycles_b)
    assert key_a == key_b


def _all_preactivations(graph: PLGraph, x: torch.Tensor) -> torch.Tensor:
    """Every neuron's pre-activation, then ``g``, by evaluating the graph (not its region maps), ``(V, N + 1)``."""
    values = graph.post_activations(x)
    return torch.cat([graph.affine(l).apply(values) for l in range(graph.n_layers + 1)], 1)


def test_hand_built_mlp_equals_the_graph():
    for kind in KINDS:
        g = _graph(kind)
        x = torch.rand(2000, D, generator=torch.Generator().manual_seed(9), dtype=torch.float64) * 2 - 1
        mlp = _as_relu_mlp(g)
        assert torch.allclose(mlp(x), g(x), atol=1e-12), kind
        # the carriers never switch in the box: their hyperplanes do not meet it
        assert g.n_neurons < mlp.n_neurons


@pytest.mark.parametrize("kind", KINDS)
def test_track_mode_on_graphs_equals_surface_mode_on_the_equivalent_mlp(kind):
    g = _graph(kind)
    level = g.level(0.0)
    tr, w = _tracked(g, level)
    mesh = extract_mesh(_as_relu_mlp(g), BOX, mode="surface", level=level, progress=False)
    assert len(mesh.polygons) > 30
    cycles = [c[c >= 0].numpy() for c in w["cycles"]]
    assert len(cycles) == len(mesh.polygons)
    _same_polygon_sets(w["vertices"].numpy(), cycles, mesh.vertices, mesh.polygons)
    # brute force on the graph itself: |g| at the vertices, each on its three planes
    x = w["vertices"]
    z = _all_preactivations(g, x)
    assert float(z[:, -1].sub(level).abs().max()) <= 1e-12
    ids = w["vertex_constraints"]
    on_neuron = ids >= 2 * D
    zc = torch.gather(z, 1, (ids - 2 * D).clamp(min=0))
    assert float(zc[on_neuron & (ids < 2 * D + g.n_neurons)].abs().max()) <= 1e-11
    box = torch.as_tensor(BOX)
    axis, side = ids.clamp(max=2 * D - 1) // 2, ids.clamp(max=2 * D - 1) % 2
    on_box = ~on_neuron
    off_box = (torch.gather(x, 1, axis) - box[axis, side])[on_box].abs()
    assert off_box.numel() == 0 or float(off_box.max()) <= 1e-12
    # each polygon's pattern is the graph's pattern at its centroid
    cent = torch.stack([x[c].mean(0) for c in (torch.as_tensor(c) for c in cycles)])
    assert torch.equal(torch.cat(g.patterns(cent), 1), track_patterns(tr))


def test_region_constraints_use_the_slopes():
    g = _graph("leaky")
    x = torch.rand(200, D, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 2 - 1
    pats = torch.cat(g.patterns(x), 1)
    cons = region_constraints(g, pats, torch.as_tensor(BOX), 0.0)
    slack = torch.bmm(torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1)[:, None], cons)[:, 0]
    z = _all_preactivations(g, x)
    sign = torch.cat([pats.double() * 2 - 1, -torch.ones(len(x), 1, dtype=x.dtype)], 1)
    assert torch.allclose(slack[:, 2 * D:], z * sign, atol=1e-12)


def test_track_mode_refuses_an_encoder_without_the_protocol():
    # track mode reads encoders (tests/test_encoder_tracking.py) through the protocol's methods
    g = _graph("skip")
    g.encoder = object()
    with pytest.raises(TypeError, match="planes and feature_maps of the encoder protocol"):
        track_surface(g, torch.as_tensor(BOX), torch.zeros(1, D, dtype=torch.float64))


def _live(g: PLGraph) -> tuple[PLGraph, list[torch.Tensor]]:
    """A copy of ``g`` whose blocks and biases require grad (slopes fixed)."""
    leaves: list[torch.Tensor] = []

    def leaf(t: torch.Tensor) -> torch.Tensor:
        t = t.detach().clone().requires_grad_(True)
        leaves.append(t)
        return t

    layers = [Layer({k: leaf(w) for k, w in layer.blocks.items()}, leaf(layer.bias), layer.neg, layer.pos)
              for layer in g.layers]
    out = Affine({k: leaf(w) for k, w in g.output.blocks.items()}, leaf(g.output.bias))
    return PLGraph(g.in_dim, layers, out, g.transform), leaves


@pytest.mark.parametrize("kind", ["skip", "residual", "leaky", "abs", "tanh"])
@pytest.mark.parametrize("frozen", [False, True])
def test_vertex_gradients_match_central_differences(kind, frozen):
    g = _graph(kind)
    level = g.level(0.0)
    _, w = _tracked(g, level)
    x0, ids, pats = w["vertices"], w["vertex_constraints"], w["vertex_patterns"]
    weights = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)

    def loss(graph: PLGraph) -> torch.Tensor:
        x = G.differentiable_vertices(graph, x0, ids, pats, BOX, level, frozen_jacobian=frozen)
        return (x * weights).sum()

    live, leaves = _live(g)
    grads = torch.autograd.grad(loss(live), leaves)
    gen = torch.Generator().manual_seed(1)
    h = 1e-6
    checked = 0
    for which, (t, grad) in enumerate(zip(leaves, grads)):  # every block and bias, two entries each
        for _ in range(2):
            i = int(torch.randint(t.numel(), (1,), generator=gen))
            fd = []
            for sign in (1, -1):
                moved, moved_leaves = _live(g)
                with torch.no_grad():
                    moved_leaves[which].view(-1)[i] += sign * h
                fd.append(float(loss(moved).detach()))
            num = (fd[0] - fd[1]) / (2 * h)
            assert num == pytest.approx(float(grad.reshape(-1)[i]), rel=1e-6, abs=1e-8), (kind, i)
            checked += 1
    assert checked == 2 * len(leaves)


def test_resolved_vertices_lie_on_the_moved_graph():
    """Independent of the geometry's maps: after moving a skip block, the re-solved vertices are
    on their planes of the moved graph, evaluated by the graph itself."""
    g = _graph("skip")
    _, w = _tracked(g)
    moved, leaves = _live(g)
    with torch.no_grad():
        moved.layers[2].blocks[INPUT].add_(1e-4)
    x = G.differentiable_vertices(moved, w["vertices"], w["vertex_constraints"], w["vertex_patterns"], BOX).detach()
    ids = w["vertex_constraints"]
    z = _all_preactivations(moved, x)
    neuron = ids >= 2 * D
    assert float(torch.gather(z, 1, (ids - 2 * D).clamp(min=0))[neuron].abs().max()) <= 1e-12
    assert float((x - w["vertices"]).abs().max()) > 1e-7  # they did move


def _module_centered(module: torch.nn.Module, head: torch.nn.Linear) -> torch.nn.Module:
    x = torch.rand(4096, D, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 2 - 1
    with torch.no_grad():
        head.bias -= module(x).median()
    return module


@pytest.mark.parametrize("kind", ["skip", "residual"])
def test_live_graph_of_nsr_modules_is_the_module_and_differentiable(kind):
    torch.manual_seed(0)
    if kind == "skip":
        module = SkipMLP(in_dim=3, width=12, depth=4, tanh_output=True).double()
        module = _module_centered(module, module.layers[-1])
        param, index = module.layers[2].weight, (1, -2)  # a weight of the skip input
    else:
        module = ResidualMLP(in_dim=3, width=8, depth=2, activation="leaky_relu", negative_slope=0.1).double()
        module = _module_centered(module, module.head)
        param, index = module.blocks[0].outer.weight, (2, 3)  # a weight of the residual stream
    g = G.network_graph(module)
    x = torch.rand(500, D, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * 2 - 1
    with torch.no_grad():
        assert torch.allclose(g.module_output(x), module(x), atol=1e-13)
        assert torch.allclose(g(x), trace(module)(x), atol=1e-12)
    assert G.has_live_graph(module)
    frozen = R._detached_graph(g)
    _, w = _tracked(frozen)

    def loss() -> torch.Tensor:
        xs = G.differentiable_vertices(module, w["vertices"], w["vertex_constraints"], w["vertex_patterns"], BOX)
        return xs[:, 0].sum() + 2 * xs[:, 2].sum()

    grad = torch.autograd.grad(loss(), param)[0][index]
    h = 1e-6
    vals = []
    for sign in (1, -1):
        with torch.no_grad():
            param[index] += sign * h
            vals.append(float(loss()))
            param[index] -= sign * h
    assert grad != 0
    assert (vals[0] - vals[1]) / (2 * h) == pytest.approx(float(grad), rel=1e-6)


def test_area_regularizer_step_on_a_skip_mlp():
    torch.manual_seed(1)
    module = SkipMLP(in_dim=3, width=12, depth=4)
    x = torch.rand(4096, D, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        module.layers[-1].bias -= module(x).median()
    callback = R.ExactRegularizerCallback([R.AreaRegularizer()], bounds=(-1, 1))
    terms = callback.term(module)
    assert callback.structure is not None and callback.structure.n_polygons > 20
    # the area against surface mode on the hand-built MLP equivalent of the module's graph
    mesh = extract_mesh(_as_relu_mlp(G.network_graph(module, torch.float64)), BOX, mode="surface", progress=False)
    tm = mesh.to_trimesh()
    # the term comes back in the module's dtype: float64 geometry rounded once to float32
    assert terms["area"].dtype == torch.float32
    assert float(terms["area"]) == pytest.approx(tm.area, rel=2**-23)
    opt = torch.optim.SGD(module.parameters(), lr=1e-3)
    terms["area"].backward()
    skip_grad = module.layers[module.skip].weight.grad[:, -3:]
    assert float(skip_grad.abs().sum()) > 0  # gradients reach the skip input's weights
    opt.step()
    opt.zero_grad()
    after = callback.term(module)
    assert float(after["area"]) < float(terms["area"])


def test_regularizers_refuse_what_has_no_live_graph():
    """Any piecewise-affine module is traced live (tests/test_live_graphs.py); a module that is not is refused
    by the trace, and something that is not a network by the regularizers."""
    seq = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
    assert G.has_live_graph(seq) and not G.has_live_graph("net.pt")
    with pytest.raises(TypeError, match="GridMLP"):
        R.ExactSurface("net.pt", None)
    smooth = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.SiLU(), torch.nn.Linear(8, 1))
    with pytest.raises(NotPiecewiseAffineError, match="SiLU"):
        _ = R.ExactSurface(smooth, None).params


@pytest.mark.parametrize("kind", ["skip", "residual", "leaky", "abs"])
def test_grouped_region_maps_equal_per_region_maps(kind, monkeypatch):
    # wide networks share each layer's map among regions with equal earlier patterns; points in
    # small clusters give regions that share their first layers' patterns, as neighbours do
    import nsr.extraction.tracking as T

    g = _random_graph(kind, [24, 24, 24], 5)
    gen = torch.Generator().manual_seed(2)
    centres = torch.rand(12, D, generator=gen, dtype=torch.float64) * 2 - 1
    x = (centres[:, None] + 0.02 * torch.randn(12, 40, D, generator=gen, dtype=torch.float64)).reshape(-1, D)
    per_layer = g.patterns(x)
    monkeypatch.setattr(T, "_GROUP_MIN_MACS", 0)
    groups = T._prefix_groups(g, per_layer)
    assert groups is not None
    # the groups share something (else the test would not test sharing), and only equal prefixes
    assert len(groups[1][0]) < len(x) and len(groups[2][0]) < len(x)
    pats = torch.cat(per_layer, 1)
    for l, (rep, inv) in enumerate(groups):
        n_before = sum(g.widths[:l])
        assert torch.equal(pats[:, :n_before], pats[rep[inv], :n_before])
    grouped = g.region_maps(per_layer, augmented=True, groups=groups)
    plain = g.region_maps(per_layer, augmented=True)
    for l, (m, p) in enumerate(zip(grouped, plain, strict=True)):
        assert torch.allclose(m[groups[l][1]] if len(m) > 1 else m.expand(len(x), -1, -1), p, rtol=0, atol=1e-13), l
    # and the constraints they give equal the graph evaluated at the points (not its maps)
    cons = region_constraints(g, pats, torch.as_tensor(BOX), 0.0)
    monkeypatch.setattr(T, "_GROUP_MIN_MACS", 10**12)
    assert torch.allclose(cons, region_constraints(g, pats, torch.as_tensor(BOX), 0.0), rtol=0, atol=1e-13)
    slack = torch.bmm(torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1)[:, None], cons)[:, 0]
    sign = torch.cat([pats.double() * 2 - 1, -torch.ones(len(x), 1, dtype=x.dtype)], 1)
    assert torch.allclose(slack[:, 2 * D:], _all_preactivations(g, x) * sign, atol=1e-12)


@pytest.mark.parametrize("kind", KINDS)
def test_local_gradients_are_the_graphs_gradients(kind):
    # reverse mode with each region's slopes against autograd through the graph at points of the
    # regions, and against the gradient rows of the regions' maps
    g = _graph(kind)
    x = (torch.rand(500, D, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * 2 - 1).requires_grad_()
    g(x).sum().backward()
    pats = g.patterns(x.detach())
    got = g.local_gradients(pats)
    assert torch.allclose(got, x.grad, rtol=0, atol=1e-12)
    assert torch.allclose(got, g.region_maps(pats)[-1][0][:, 0], rtol=0, atol=1e-12)
    assert float(got.abs().max()) > 0.1
