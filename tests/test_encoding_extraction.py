"""The simplex-grid encoding seen by the exact extractor (PROTOCOL.md, encoder protocol; issue 14).

Independent answers: finite differences of the module's forward, least-squares affine fits of
the module's output on points that share a cell of the planes, closed-form plane counts,
sampled values inside boxes, and the module's own output for the traced graph.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

import nsr.pl.convert as convert
from nsr.pl import INPUT, PLGraph, trace
from nsr.pl.encoding import GridMLP, SimplexGridEncoder, SimplexGridEncoding

ENCODED = -2  # PROTOCOL.md: source index of the encoder's features


def _encoder(d, bounds=(-1.0, 1.0), include_input=False, seed=0, **kw):
    torch.manual_seed(seed)
    module = SimplexGridEncoding(in_dim=d, init_scale=1.0, bounds=bounds, **kw).double()
    return module, SimplexGridEncoder(module, include_input=include_input)


def _box(d, lo, hi):
    return torch.full((d,), lo, dtype=torch.float64), torch.full((d,), hi, dtype=torch.float64)


def _signs(enc, x, lo, hi):
    normals, offsets = enc.planes(lo, hi)
    return (x @ normals.T - offsets) > 0


def _distance_to_planes(enc, x, lo, hi):
    normals, offsets = enc.planes(lo, hi)
    return ((x @ normals.T - offsets).abs() / normals.norm(dim=1)).min(1).values


# ---- feature maps ----------------------------------------------------------------------------


@pytest.mark.parametrize("d", [1, 2, 3])
@pytest.mark.parametrize("include_input", [False, True])
def test_feature_maps_match_finite_differences_and_values(d, include_input):
    # asymmetric bounds and a box past them: the map from inputs to grid coordinates and the clamping matter
    module, enc = _encoder(d, bounds=(-0.5, 1.5), include_input=include_input, n_levels=3, min_resolution=2,
                           max_resolution=9, table_size=200)
    lo, hi = _box(d, -1.0, 2.0)
    gen = torch.Generator().manual_seed(d)
    x = torch.rand(400, d, generator=gen, dtype=torch.float64) * 3 - 1
    x = x[_distance_to_planes(enc, x, lo, hi) > 1e-5]
    assert len(x) > 300 and bool(((x < -0.5) | (x > 1.5)).any())
    A, c = enc.feature_maps(x)
    assert A.shape == (len(x), enc.out_dim, d) and c.shape == (len(x), enc.out_dim)
    f = enc(x)  # the module's forward with the raw coordinates appended when include_input
    assert torch.allclose(f[:, :module.out_dim], module(x), atol=0)
    assert torch.allclose(torch.einsum("nfd,nd->nf", A, x) + c, f, atol=1e-12)
    h = 1e-7
    for i in range(d):
        e = torch.zeros(d, dtype=torch.float64)
        e[i] = h
        fd = (enc(x + e) - enc(x - e)) / (2 * h)
        assert torch.allclose(A[:, :, i], fd, atol=1e-6), (i, (A[:, :, i] - fd).abs().max())


def test_feature_maps_are_differentiable_in_the_table():
    module, enc = _encoder(3, n_levels=2, min_resolution=2, max_resolution=5, table_size=64, features=3)
    x = torch.rand(200, 3, generator=torch.Generator().manual_seed(5), dtype=torch.float64) * 2 - 1
    w = torch.randn(200, enc.out_dim, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    A, c = enc.feature_maps(x)
    (g_maps,) = torch.autograd.grad(((torch.einsum("nfd,nd->nf", A, x) + c) * w).sum(), module.table,
                                    retain_graph=True)
    (g_fwd,) = torch.autograd.grad((module(x) * w).sum(), module.table)
    assert g_fwd.abs().sum() > 0 and torch.allclose(g_maps, g_fwd, atol=1e-10)
    # the slopes alone also carry the table's gradient (the differentiable geometry reads A)
    (g_a,) = torch.autograd.grad(A.square().sum(), module.table)
    assert g_a.abs().sum() > 0


# ---- planes ----------------------------------------------------------------------------------


def _cells_with_members(enc, lo, hi, d, n_anchor, n_near, radius, seed):
    """Anchor points and, per anchor, nearby points on the same side of every plane."""
    gen = torch.Generator().manual_seed(seed)
    anchors = lo + (hi - lo) * torch.rand(n_anchor, d, generator=gen, dtype=torch.float64)
    # a few times the distance to the nearest plane: most points stay in the cell, some leave it
    radius = torch.clamp(3 * _distance_to_planes(enc, anchors, lo, hi), max=radius)[:, None, None]
    near = anchors[:, None, :] + radius * (torch.rand(n_anchor, n_near, d, generator=gen, dtype=torch.float64) * 2 - 1)
    s_a = _signs(enc, anchors, lo, hi)
    s_n = _signs(enc, near.reshape(-1, d), lo, hi).reshape(n_anchor, n_near, -1)
    same = (s_n == s_a[:, None, :]).all(2) & ((near > lo) & (near < hi)).all(2)  # (anchors, near)
    return anchors, near, same


@pytest.mark.parametrize("d", [2, 3])
def test_features_are_affine_on_every_cell_of_the_planes(d):
    """Points that share a cell of planes() (and are otherwise random) fit one affine map exactly."""
    module, enc = _encoder(d, bounds=(-0.5, 1.5), n_levels=2, min_resolution=2, max_resolution=3, table_size=500)
    lo, hi = _box(d, -0.9, 1.9)  # past the bounds: the clamping planes are needed too
    anchors, near, same = _cells_with_members(enc, lo, hi, d, n_anchor=300, n_near=24, radius=0.4, seed=d)
    enough = same.sum(1) >= d + 4
    assert enough.sum() > 100 and (~same).sum() > 1000
    with torch.no_grad():
        for a in torch.nonzero(enough).squeeze(1).tolist():
            pts = near[a][same[a]]
            design = torch.cat([pts, torch.ones(len(pts), 1, dtype=torch.float64)], 1)
            values = module(pts)
            assert torch.linalg.matrix_rank(design) == d + 1
            coef = torch.linalg.lstsq(design, values).solution
            assert (design @ coef - values).abs().max() < 1e-10, a
            # and the protocol's map at the anchor is that affine map
            A, c = enc.feature_maps(anchors[a:a + 1])
            assert torch.allclose(A[0], coef[:d].T, atol=1e-8) and torch.allclose(c[0], coef[d], atol=1e-8)


def test_every_plane_is_a_breakpoint_and_the_count_is_the_closed_form():
    """Brute force on a coarse 2-D encoding: the maps on both sides of each listed plane differ, and the
    planes are exactly the union of the levels' lines (levels N=2 and N=4 on [-1, 1]^2: 3 lines per axis,
    x - y = k / 2 for |k| < 4)."""
    module, enc = _encoder(2, n_levels=2, min_resolution=2, max_resolution=4, table_size=1000)
    lo, hi = _box(2, -1.0, 1.0)
    normals, offsets = enc.planes(lo, hi)
    assert len(offsets) == 3 + 3 + 7
    assert offsets[:3].tolist() == [-0.5, 0.0, 0.5] and offsets[6:].tolist() == [k / 2 for k in range(-3, 4)]
    gen = torch.Generator().manual_seed(7)
    for nrm, off in zip(normals, offsets):
        # a random point of the plane inside the box, then one step to each side
        t = torch.rand(50, 1, generator=gen, dtype=torch.float64)
        tangent = torch.stack([-nrm[1], nrm[0]])
        base = nrm * off / nrm.square().sum()
        p = base + (t * 4 - 2) * tangent
        p = p[(p.abs() < 0.99).all(1) & (_distance_to_planes(enc, p, lo, hi) < 1e-12)]
        # keep points away from the other planes, so that each side is one cell
        others = torch.ones(len(offsets), dtype=torch.bool)
        others[(offsets == off) & (normals == nrm).all(1)] = False
        dist = ((p @ normals[others].T - offsets[others]).abs() / normals[others].norm(dim=1)).min(1).values
        p = p[dist > 1e-3][:1]
        assert len(p) == 1
        step = 1e-4 * nrm / nrm.norm()
        A_plus, _ = enc.feature_maps(p + step)
        A_minus, _ = enc.feature_maps(p - step)
        assert (A_plus - A_minus).abs().max() > 1e-3
        # continuity across it: the module's values on both sides meet
        assert (module(p + step) - module(p - step)).abs().max() < 1e-3


def test_planes_meet_the_open_box_only_and_order_is_stable():
    module, enc = _encoder(3, n_levels=3, min_resolution=2, max_resolution=8, table_size=2000)
    lo = torch.tensor([-0.3, 0.0, 0.2], dtype=torch.float64)
    hi = torch.tensor([0.4, 0.25, 0.9], dtype=torch.float64)
    normals, offsets = enc.planes(lo, hi)
    # every plane meets the open box: its value range over the box's corners straddles the offset
    corners = torch.cartesian_prod(*[torch.stack([lo[i], hi[i]]) for i in range(3)])
    vals = corners @ normals.T
    assert bool(((vals.min(0).values < offsets) & (offsets < vals.max(0).values)).all())
    # no plane listed twice
    key = torch.cat([normals, offsets[:, None]], 1)
    assert len(torch.unique(key, dim=0)) == len(key)
    again = enc.planes(lo, hi)
    assert torch.equal(again[0], normals) and torch.equal(again[1], offsets)
    # a box past the grid's bounds adds the clamping planes x_i = -1 and 1
    _, wide = enc.planes(*_box(3, -1.5, 1.5))
    _, inner = enc.planes(*_box(3, -1.0, 1.0))
    assert len(wide) == len(inner) + 6


# ---- bounds ----------------------------------------------------------------------------------


@pytest.mark.parametrize("include_input", [False, True])
def test_feature_bounds_contain_sampled_values(include_input):
    module, enc = _encoder(3, bounds=(-0.5, 1.5), include_input=include_input, n_levels=3, min_resolution=2,
                           max_resolution=16, table_size=300)
    gen = torch.Generator().manual_seed(8)
    k = 40
    centre = torch.rand(k, 3, generator=gen, dtype=torch.float64) * 2.4 - 0.7
    half = torch.rand(k, 1, generator=gen, dtype=torch.float64) ** 3 * 0.8  # tiny to larger than the grid's cells
    lo, hi = centre - half, centre + half
    for max_vertices in (8, 256, 100_000):
        lower, upper = enc.feature_bounds(lo, hi, max_vertices=max_vertices)
        assert lower.shape == upper.shape == (k, enc.out_dim)
        x = lo[:, None] + (hi - lo)[:, None] * torch.rand(k, 200, 3, generator=gen, dtype=torch.float64)
        x[:, :8] = torch.cartesian_prod(*[torch.tensor([0.0, 1.0], dtype=torch.float64)] * 3)  # the corners
        x[:, :8] = lo[:, None] + (hi - lo)[:, None] * x[:, :8]
        f = enc(x.reshape(-1, 3)).reshape(k, 200, -1)
        assert bool((f >= lower[:, None] - 1e-12).all() and (f <= upper[:, None] + 1e-12).all())
    # enumerating the vertices is tighter than the table-wide fallback
    tight, _ = enc.feature_bounds(lo, hi, max_vertices=100_000)
    loose, _ = enc.feature_bounds(lo, hi, max_vertices=1)
    assert bool((tight >= loose).all()) and bool((tight > loose).any())


def test_feature_bounds_of_a_box_inside_one_simplex_are_its_vertex_values():
    """A box inside one cell of level N: the bounds are the min/max of the table at that cell's 2^D vertices."""
    module, enc = _encoder(2, n_levels=1, min_resolution=4, max_resolution=4, table_size=100, features=1)
    lo = torch.tensor([[0.05, 0.55]], dtype=torch.float64)  # grid coordinates (2.1, 3.1) .. (2.3, 3.3)
    hi = torch.tensor([[0.15, 0.65]], dtype=torch.float64)
    lower, upper = enc.feature_bounds(lo, hi)
    cell = torch.tensor([[2, 3], [3, 3], [2, 4], [3, 4]])
    vals = module.table[module._rows(cell, 0), 0]
    assert float(lower) == float(vals.min().detach()) and float(upper) == float(vals.max().detach())


# ---- dtype, device, construction -------------------------------------------------------------


def test_to_keeps_the_kind_and_shares_an_unchanged_table():
    module, enc = _encoder(2, n_levels=2, min_resolution=2, max_resolution=4)
    assert enc.to() .table is module.table
    f32 = enc.to(dtype=torch.float32)
    assert isinstance(f32, SimplexGridEncoder) and f32.table.dtype == torch.float32 and f32.out_dim == enc.out_dim
    x = torch.rand(10, 2, dtype=torch.float64)
    assert torch.allclose(f32(x.float()).double(), enc(x), atol=1e-6)
    assert f32.planes(*_box(2, -1, 1))[1].dtype == torch.float32


def test_bad_boxes_are_refused_clearly():
    _, enc = _encoder(2, n_levels=1, min_resolution=2, max_resolution=2)
    with pytest.raises(ValueError, match="lo < hi"):
        enc.planes(torch.tensor([0.0, 0.0]), torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match=r"\(K, 2\)"):
        enc.feature_bounds(torch.zeros(3, 3), torch.ones(3, 3))
    with pytest.raises(ValueError, match=r"\(N, 2\)"):
        enc.feature_maps(torch.zeros(3))


# ---- tracing a GridMLP -----------------------------------------------------------------------


@dataclasses.dataclass
class _GraphDouble:
    """Stand-in for a PLGraph with an ``encoder`` field (PROTOCOL.md), used only while nsr.pl.graph
    has none: evaluates blocks of source -2 on ``encoder(x)``."""

    in_dim: int
    layers: list
    output: object
    transform: object
    encoder: object = None

    def to(self, device=None, dtype=None):
        enc = None if self.encoder is None else self.encoder.to(device=device, dtype=dtype)
        return _GraphDouble(self.in_dim, [la.to(device, dtype) for la in self.layers],
                            self.output.to(device, dtype), self.transform, enc)

    def __call__(self, x):
        values = {INPUT: x, ENCODED: self.encoder(x)}
        for l, layer in enumerate(self.layers):
            values[l] = layer.activate(layer.apply(values))
        return self.output.apply(values).squeeze(-1)

    def module_output(self, x):
        return self.transform(self(x))


@pytest.fixture
def graph_class(monkeypatch):
    """The real PLGraph once it has the encoder field, else the double."""
    if "encoder" in {f.name for f in dataclasses.fields(PLGraph)}:
        return PLGraph
    monkeypatch.setattr(convert, "PLGraph", _GraphDouble)
    return _GraphDouble


@pytest.mark.parametrize("include_input", [False, True])
def test_trace_grid_mlp_gives_an_encoder_graph_that_computes_the_module(graph_class, include_input):
    torch.manual_seed(3)
    net = GridMLP(in_dim=3, width=16, depth=2, n_levels=3, features=2, min_resolution=2, max_resolution=12,
                  table_size=512, include_input=include_input, init_scale=0.5)
    graph = trace(net)
    assert isinstance(graph, graph_class) and isinstance(graph.encoder, SimplexGridEncoder)
    assert graph.encoder.out_dim == 3 * 2 and not graph.encoder.include_input
    want_sources = [ENCODED, INPUT] if include_input else [ENCODED]
    assert graph.layers[0].sources == sorted(want_sources) and [la.sources for la in graph.layers[1:]] == [[0]]
    # the graph's encoder is a float64 snapshot of the table, not the training parameter
    assert graph.encoder.table.dtype == torch.float64 and not graph.encoder.table.requires_grad
    x = torch.rand(300, 3, generator=torch.Generator().manual_seed(9), dtype=torch.float64) * 2.4 - 1.2
    with torch.no_grad():
        want = net.double()(x)
    assert (graph(x) - want).abs().max() <= 1e-10


def test_trace_refuses_an_encoding_of_a_computed_value(graph_class):
    class Shifted(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.enc = SimplexGridEncoding(in_dim=2, n_levels=1, min_resolution=2, max_resolution=2)
            self.head = torch.nn.Linear(2, 1)

        def forward(self, x):
            return self.head(self.enc(x + 0.5))

    with pytest.raises(convert.NotPiecewiseAffineError, match="must read the network input"):
        trace(Shifted(), in_dim=2)
