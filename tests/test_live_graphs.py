"""Live graphs: vertex positions and regularizers differentiable in a GridMLP's tables and weights.

The independent answer is a re-extraction: perturb a parameter direction by +-h, extract the
exact surface again, match vertices by their constraint ids, and compare the central finite
difference with the autograd directional derivative of :func:`nsr.geometry.differentiable_vertices`.
"""

from __future__ import annotations

import pytest
import torch

from nsr import extract_mesh
from nsr import geometry as G
from nsr import regularizers as R
from nsr.pl.encoding import GridMLP
from nsr.pl.layout import FACET, ConstraintLayout

BOX = (-1.0, 1.0)


def _grid_mlp(dim: int, seed: int, include_input: bool = True) -> GridMLP:
    """A small float64 GridMLP (two coarse levels) whose zero level crosses the box."""
    torch.manual_seed(seed)
    net = GridMLP(in_dim=dim, width=8, depth=2, n_levels=2, min_resolution=2, max_resolution=4, table_size=2**10,
                  init_scale=0.5, include_input=include_input).double()
    with torch.no_grad():
        gen = torch.Generator().manual_seed(seed)
        net.layers[-1].bias -= net(torch.rand(4000, dim, generator=gen, dtype=torch.float64) * 2 - 1).median()
    return net


def _vertices_by_key(net: GridMLP) -> tuple[dict[tuple[int, ...], int], object]:
    """The exact surface and its vertices keyed by their constraint ids (keys met twice dropped)."""
    mesh = extract_mesh(net, BOX, progress=False, dtype=torch.float64)
    keys: dict[tuple[int, ...], int] = {}
    dup = set()
    for i, c in enumerate(mesh.vertex_constraints.tolist()):
        k = tuple(sorted(c))
        if k in keys:
            dup.add(k)
        keys[k] = i
    return {k: i for k, i in keys.items() if k not in dup}, mesh


def _perturbed(net: GridMLP, param: torch.Tensor, direction: torch.Tensor, h: float
               ) -> tuple[dict[tuple[int, ...], int], torch.Tensor]:
    """The vertices of the surface re-extracted with ``param += h * direction``: keys and positions."""
    with torch.no_grad():
        param.add_(h * direction)
    try:
        keys, mesh = _vertices_by_key(net)
    finally:
        with torch.no_grad():
            param.sub_(h * direction)
    return keys, torch.as_tensor(mesh.vertices)


def _directional_derivative(x: torch.Tensor, param: torch.Tensor, direction: torch.Tensor) -> torch.Tensor:
    """``d x / d param . direction`` for every entry of ``x`` (the double-backward trick), shaped like ``x``."""
    u = torch.zeros_like(x, requires_grad=True)
    (g,) = torch.autograd.grad(x, param, grad_outputs=u, create_graph=True)
    return torch.autograd.grad((g * direction).sum(), u)[0].detach()


@pytest.mark.parametrize("dim", [2, 3])
@pytest.mark.parametrize("which", ["table", "weight"])
def test_vertex_gradients_match_finite_differences(dim, which):
    net = _grid_mlp(dim, seed=dim)
    keys, mesh = _vertices_by_key(net)
    s_v = torch.as_tensor(mesh.vertices)
    cons = torch.as_tensor(mesh.vertex_constraints)
    pats = torch.as_tensor(mesh.vertex_patterns)
    bounds = torch.tensor([BOX] * dim, dtype=torch.float64)
    param = net.encoding.table if which == "table" else net.layers[1].weight
    direction = torch.randn(param.shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64)

    x = G.differentiable_vertices(net, s_v, cons, pats, bounds)
    assert torch.allclose(x.detach(), s_v, atol=1e-12)  # the value is the extracted vertex
    ad = _directional_derivative(x, param, direction)
    h = 1e-6
    plus_keys, plus = _perturbed(net, param, direction, h)
    minus_keys, minus = _perturbed(net, param, direction, -h)
    lay = ConstraintLayout.of(G.network_graph(net), n_facets=len(G.network_graph(net).encoder.planes(
        bounds[:, 0], bounds[:, 1])[1]))
    common = [k for k in keys if k in plus_keys and k in minus_keys]
    assert len(common) >= 10
    on_planes = [k for k in common if bool((lay.kind(torch.tensor(k)) == FACET).any())]
    assert len(on_planes) >= 5, "the check must include vertices on the encoder's planes"
    pick = common[:: max(1, len(common) // 40)]  # a few dozen vertices, those on planes among them
    pick = list(dict.fromkeys(pick + on_planes[:10]))
    checked = 0
    for k in pick:
        i = keys[k]
        fd = (plus[plus_keys[k]] - minus[minus_keys[k]]) / (2 * h)
        scale = 1.0 + float(ad[i].abs().max())
        assert float((fd - ad[i]).abs().max()) <= 1e-5 * scale, (k, fd, ad[i])
        checked += 1
    assert checked >= 10


def test_grid_mlp_graph_is_live_and_computes_the_module():
    for include_input in (True, False):
        net = _grid_mlp(3, seed=0, include_input=include_input)
        graph = G.network_graph(net)
        assert G.has_live_graph(net) and graph.encoder.table is net.encoding.table
        assert graph.layers[0].blocks[-2].requires_grad
        x = torch.rand(200, 3, dtype=torch.float64) * 2 - 1
        torch.testing.assert_close(graph(x), net(x), rtol=0, atol=1e-12)


def _surface_structure(net: GridMLP) -> G.SurfaceStructure:
    return G.SurfaceStructure.from_mesh(extract_mesh(net, BOX, progress=False, dtype=torch.float64))


def test_region_gradients_and_their_derivative_match_the_module():
    """Region gradients read at a point of each polygon are the module's input gradient there (autograd of
    its forward), and their derivative along a table direction is the finite difference of that gradient."""
    net = _grid_mlp(3, seed=1)
    s = _surface_structure(net)
    surface = R.ExactSurface(net, s)
    grads = surface.region_gradients
    points = s.vertices0[s.cycles].mean(1)

    def input_gradient() -> torch.Tensor:
        x = points.clone().requires_grad_(True)
        return torch.autograd.grad(net(x).sum(), x)[0]

    torch.testing.assert_close(grads.detach(), input_gradient(), rtol=0, atol=1e-9)
    direction = torch.randn(net.encoding.table.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    ad = _directional_derivative(grads, net.encoding.table, direction)
    h = 1e-6
    with torch.no_grad():
        net.encoding.table.add_(h * direction)
    plus = input_gradient()
    with torch.no_grad():
        net.encoding.table.sub_(2 * h * direction)
    minus = input_gradient()
    with torch.no_grad():
        net.encoding.table.add_(h * direction)
    torch.testing.assert_close(ad, (plus - minus) / (2 * h), rtol=1e-5, atol=1e-6)
    assert float(ad.abs().max()) > 1e-3


def _area_of(net: GridMLP) -> float:
    mesh = extract_mesh(net, BOX, progress=False, dtype=torch.float64)
    cycles, _ = G.pad_cycles(mesh.polygons)
    return float(G.total_area(torch.as_tensor(mesh.vertices), torch.as_tensor(cycles)))


@pytest.mark.parametrize("which", ["table", "weight"])
def test_area_gradient_matches_reextracted_areas(which):
    """The area regularizer's gradient along a parameter direction is the finite difference of the total
    area of the surfaces extracted anew at +-h."""
    net = _grid_mlp(3, seed=3)
    param = net.encoding.table if which == "table" else net.layers[0].weight
    direction = torch.randn(param.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    area = R.AreaRegularizer().compute(R.ExactSurface(net, _surface_structure(net)))
    (grad,) = torch.autograd.grad(area, param)
    assert abs(float(area.detach()) - _area_of(net)) <= 1e-12 * (1 + float(area.detach()))
    h = 1e-6
    values = []
    for sign in (1.0, -1.0):
        with torch.no_grad():
            param.add_(sign * h * direction)
        values.append(_area_of(net))
        with torch.no_grad():
            param.sub_(sign * h * direction)
    fd = (values[0] - values[1]) / (2 * h)
    ad = float((grad * direction).sum())
    assert abs(fd - ad) <= 1e-5 * (1.0 + abs(ad)), (fd, ad)
    assert abs(ad) > 1e-3


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_every_regularizer_has_a_gradient_on_the_table_and_the_mlp(dtype):
    net = _grid_mlp(3, seed=0).float()
    target = torch.rand(200, 3, generator=torch.Generator().manual_seed(0)) * 0.5
    regs = [R.AreaRegularizer(), R.SmoothnessRegularizer(normalize=True), R.QualityRegularizer(),
            R.FitRegularizer(), R.EikonalRegularizer(), R.SmoothnessRegularizer(normals="positions")]
    regs[-1].name = "smooth_positions"
    regs[3].set_target(target)
    callback = R.ExactRegularizerCallback(regs, bounds=BOX, dtype=dtype, frozen_jacobian=dtype == torch.float32)
    terms = callback.term(net)
    assert callback.structure is not None and callback.structure.n_polygons > 50
    for name, value in terms.items():
        g_table, g_w = torch.autograd.grad(value, [net.encoding.table, net.layers[0].weight], retain_graph=True)
        assert bool(torch.isfinite(g_table).all() and torch.isfinite(g_w).all()), name
        assert float(g_table.abs().max()) > 0 and float(g_w.abs().max()) > 0, name


def test_regularizers_accept_grid_networks_held_by_a_module():
    holder = torch.nn.Module()
    holder.net = _grid_mlp(3, seed=0)
    assert G.has_live_graph(holder)
    R.ExactSurface(holder, _surface_structure(holder.net))  # no refusal


@pytest.mark.parametrize("background", ["thread", pytest.param("process", marks=pytest.mark.slow)])
def test_background_extraction_of_a_grid_network(background):
    """A worker extracts the snapshot (its own table copy) and gives the synchronous structure."""
    net = _grid_mlp(3, seed=0)
    sync = R.ExactRegularizerCallback([R.AreaRegularizer()], bounds=BOX)
    sync.refresh(net)
    callback = R.ExactRegularizerCallback([R.AreaRegularizer()], bounds=BOX, background=background)
    try:
        callback._submit(net, 0)
        callback._job.result()
        callback._collect()
    finally:
        callback.close()
    assert callback.structure.n_polygons == sync.structure.n_polygons
    torch.testing.assert_close(callback.structure.vertices0, sync.structure.vertices0)


def test_grid_mlp_trains_with_an_exact_regularizer(tmp_path):
    """``model=grid_mlp regularizer=smooth_fit`` composes and trains (fast_dev_run), with a surface at init (this seed
    and init scale) so that the terms are evaluated: the callback extracts in surface mode while track mode refuses
    encoders."""
    import json

    from hydra import compose, initialize_config_dir

    from nsr._config import config_dir
    from nsr.train import train

    overrides = ["trainer.accelerator=cpu", "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false",
                 "data=sphere", "data.sampling.batch_size=256", "data.sampling.steps_per_epoch=2",
                 "data.sampling.n_val=256", "extract=none", "logger=csv", "trainer.fast_dev_run=true",
                 "model=grid_mlp", "regularizer=smooth_fit", "seed=1", "model.net.width=8", "model.net.init_scale=4.0",
                 "model.net.n_levels=1", "model.net.min_resolution=2", "model.net.max_resolution=2",
                 f"run_dir={tmp_path / 'run'}"]
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    metrics = json.loads((train(cfg) / "metrics.json").read_text())
    assert metrics["global_step"] == 1 and metrics["reg_cost/polygons"] > 0
    assert metrics["reg/smooth"] > 0 and metrics["reg/fit"] > 0


# ----------------------------------------------------------------------- traced modules (trace(live=True))


class _LeakySkip(torch.nn.Module):
    """A user's piecewise-affine module: LeakyReLU, the input concatenated again, BatchNorm (eval), tanh output."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = torch.nn.Linear(3, 12), torch.nn.Linear(12 + 3, 12), torch.nn.Linear(12, 1)
        self.bn = torch.nn.BatchNorm1d(12)
        self.act = torch.nn.LeakyReLU(0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.a(x))
        h = self.act(self.bn(self.b(torch.cat([h, x], 1))))
        return torch.tanh(self.c(h))


def _leaky_skip() -> _LeakySkip:
    torch.manual_seed(4)
    m = _LeakySkip().double()
    with torch.no_grad():
        m.bn.running_mean.uniform_(-0.1, 0.1)
        m.bn.running_var.uniform_(0.5, 1.5)
        m.bn.weight.uniform_(0.5, 1.5)
        x = torch.rand(4000, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 2 - 1
        m.c.bias -= torch.atanh(m.eval()(x).median())  # tanh is monotone: the median of g moves to 0
    return m


def test_live_trace_is_the_default_trace_with_gradients():
    from nsr.pl import trace

    m = _leaky_skip().train()
    with pytest.warns(UserWarning, match="training mode"):
        frozen, live = trace(m), trace(m, live=True)
    assert m.training and m.bn.training  # the caller's module is left as it was
    assert [layer.n for layer in live.layers] == [layer.n for layer in frozen.layers]
    assert not frozen.layers[1].blocks[-1].requires_grad and live.layers[1].blocks[-1].requires_grad
    x = torch.rand(300, 3, dtype=torch.float64) * 2 - 1
    torch.testing.assert_close(live(x), frozen(x), rtol=0, atol=1e-13)
    grads = torch.autograd.grad(live(x).sum(), [m.a.weight, m.b.weight, m.bn.weight, m.c.bias])
    assert all(float(g.abs().max()) > 0 for g in grads)


@pytest.mark.parametrize("norm", ["none", "weight_norm", "parametrization"])
def test_live_trace_of_float32_and_weight_normalized_modules(norm):
    """A float32 module's live graph is its float64 function (weights normalized in float64, as the check wants)."""
    import warnings

    from nsr.pl import trace

    torch.manual_seed(0)
    wrap = {"none": lambda lin: lin, "weight_norm": torch.nn.utils.weight_norm,
            "parametrization": torch.nn.utils.parametrizations.weight_norm}[norm]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # the old weight_norm is deprecated, still met in checkpoints
        m = torch.nn.Sequential(wrap(torch.nn.Linear(3, 8)), torch.nn.PReLU(8), wrap(torch.nn.Linear(8, 1)))
    live = trace(m, live=True)
    x = torch.rand(100, 3, dtype=torch.float64) * 2 - 1
    torch.testing.assert_close(live(x), trace(m)(x), rtol=0, atol=1e-13)
    params = [p for p in m.parameters()]
    grads = torch.autograd.grad(live(x).sum(), params)
    assert all(float(g.abs().max()) > 0 for g in grads)


@pytest.mark.parametrize("which", ["skip", "batchnorm"])
def test_traced_module_vertex_gradients_match_finite_differences(which):
    m = _leaky_skip().eval()
    keys, mesh = _vertices_by_key(m)
    bounds = torch.tensor([BOX] * 3, dtype=torch.float64)
    param = m.b.weight if which == "skip" else m.bn.weight
    direction = torch.randn(param.shape, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    if which == "skip":
        direction[:, :12] = 0.0  # only the weights of the input's second entry
    x = G.differentiable_vertices(m, torch.as_tensor(mesh.vertices), torch.as_tensor(mesh.vertex_constraints),
                                  torch.as_tensor(mesh.vertex_patterns), bounds)
    assert torch.allclose(x.detach(), torch.as_tensor(mesh.vertices), atol=1e-12)
    ad = _directional_derivative(x, param, direction)
    h = 1e-6
    plus_keys, plus = _perturbed(m, param, direction, h)
    minus_keys, minus = _perturbed(m, param, direction, -h)
    common = [k for k in keys if k in plus_keys and k in minus_keys]
    assert len(common) >= 20
    fd = torch.stack([(plus[plus_keys[k]] - minus[minus_keys[k]]) / (2 * h) for k in common])
    got = ad[[keys[k] for k in common]]
    torch.testing.assert_close(got, fd, rtol=1e-5, atol=1e-5)
    assert float(got.abs().max()) > 1e-2


def test_regularizers_train_a_traced_module():
    m = _leaky_skip().eval()
    callback = R.ExactRegularizerCallback([R.AreaRegularizer(), R.SmoothnessRegularizer()], bounds=BOX)
    terms = callback.term(m)
    params = [m.a.weight, m.b.weight, m.bn.bias]
    for name, value in terms.items():
        grads = torch.autograd.grad(value, params, retain_graph=True)
        assert all(float(g.abs().max()) > 0 for g in grads), name
    opt = torch.optim.SGD(m.parameters(), lr=1e-3)
    terms["area"].backward()
    opt.step()
    assert float(callback.term(m)["area"].detach()) < float(terms["area"].detach())
