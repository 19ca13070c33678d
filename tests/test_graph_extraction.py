"""Extraction of piecewise-affine graphs (issue 13): skip and residual blocks, LeakyReLU, abs,
clamp, folded BatchNorm, a tanh output, a latent code, and an input encoder.

Every answer is independent of the extractor: activation patterns of sampled points (the graph's
own evaluation), the Euler characteristic of a subdivided box, the parity of level-set
crossings along random segments (brute-force signs of ``g`` at the segments' ends against
segment/polygon intersections), and, for the encoder, the same function written as a graph of
``abs`` neurons with the encoder's planes as their hyperplanes.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from nsr.extraction.complex import extract_complex
from nsr.extraction.surface import extract_mesh
from nsr.pl import INPUT, Affine, Layer, PLGraph, as_graph, trace
from nsr.pl.graph import ENCODED

D64 = torch.float64


# --------------------------------------------------------------------------------------
# Small modules of each kind
# --------------------------------------------------------------------------------------


class Skip(nn.Module):
    """DeepSDF-style: the input concatenated back in before the last hidden layer."""

    def __init__(self, d: int, w: int = 8) -> None:
        super().__init__()
        self.l0, self.l1, self.l2 = nn.Linear(d, w), nn.Linear(w, w), nn.Linear(w + d, w)
        self.out = nn.Linear(w, 1)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu(self.l1(torch.relu(self.l0(x))))
        return self.out(torch.relu(self.l2(torch.cat([h, x], 1))))


class Residual(nn.Module):
    """A residual stream: later layers and the output read every earlier layer once folded."""

    def __init__(self, d: int, w: int = 6) -> None:
        super().__init__()
        self.inp = nn.Linear(d, w)
        self.blocks = nn.ModuleList([nn.Linear(w, w) for _ in range(3)])
        self.out = nn.Linear(w, 1)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu(self.inp(x))
        for b in self.blocks:
            h = h + torch.relu(b(h))
        return self.out(h)


class Abs(nn.Module):
    def __init__(self, d: int, w: int = 6) -> None:
        super().__init__()
        self.l0, self.l1, self.out = nn.Linear(d, w), nn.Linear(w, w), nn.Linear(w, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(torch.relu(self.l1(torch.abs(self.l0(x)))))


class Latent(nn.Module):
    """An auto-decoder: reads ``cat([code, x])``."""

    def __init__(self, d: int, code: int = 3, w: int = 8) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(code + d, w), nn.ReLU(), nn.Linear(w, w), nn.ReLU(), nn.Linear(w, 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


def _batchnorm(d: int, w: int = 8) -> nn.Module:
    bn = nn.BatchNorm1d(w)
    gen = torch.Generator().manual_seed(5)
    bn.running_mean.copy_(torch.randn(w, generator=gen) * 0.3)
    bn.running_var.copy_(torch.rand(w, generator=gen) + 0.5)
    bn.weight.data.copy_(torch.rand(w, generator=gen) + 0.5)
    bn.bias.data.copy_(torch.randn(w, generator=gen) * 0.2)
    return nn.Sequential(nn.Linear(d, w), bn, nn.ReLU(), nn.Linear(w, w), nn.ReLU(), nn.Linear(w, 1))


KINDS = {
    "skip": lambda d: Skip(d),
    "residual": lambda d: Residual(d),
    "leaky": lambda d: nn.Sequential(nn.Linear(d, 8), nn.LeakyReLU(0.1), nn.Linear(8, 8), nn.LeakyReLU(0.2),
                                     nn.Linear(8, 1)),
    "abs": lambda d: Abs(d),
    "clamp": lambda d: nn.Sequential(nn.Linear(d, 6), nn.Hardtanh(-0.3, 0.4), nn.Linear(6, 6), nn.ReLU(),
                                     nn.Linear(6, 1)),
    "batchnorm": _batchnorm,
    "tanh": lambda d: nn.Sequential(nn.Linear(d, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 1),
                                    nn.Tanh()),
    "latent": lambda d: Latent(d),
}


def _last_linear(module: nn.Module) -> nn.Linear:
    return [m for m in module.modules() if isinstance(m, nn.Linear)][-1]


def _graph(kind: str, d: int, seed: int = 0) -> PLGraph:
    """The traced graph of a module of ``kind``, its output shifted so that the level set
    ``g = 0`` crosses the box ``[-1, 1]^d`` (the median of ``g`` over samples is 0)."""
    torch.manual_seed(seed + 10 * d)
    module = KINDS[kind](d).eval()
    code = torch.randn(3) * 0.5 if kind == "latent" else None
    graph = trace(module, in_dim=d, latent=code)
    x = torch.rand(4000, d, dtype=D64) * 2 - 1
    with torch.no_grad():
        _last_linear(module).bias -= float(graph(x).median())
    return trace(module, in_dim=d, latent=code)


# --------------------------------------------------------------------------------------
# A test encoder: features |x_d - c_k|, affine on the cells of the planes x_d = c_k
# --------------------------------------------------------------------------------------


class AbsEncoder:
    """Features ``|x_d - c_k|`` for every axis ``d`` and center ``c_k``: ``F = D K`` features,
    planes ``x_d = c_k`` (those inside the open box)."""

    def __init__(self, dim: int, centers: Tensor) -> None:
        self.in_dim, self.centers = dim, centers
        self.out_dim = dim * len(centers)

    def _axes(self) -> tuple[Tensor, Tensor]:  # axis and center of every feature, (F,) each
        k = len(self.centers)
        return torch.arange(self.in_dim).repeat_interleave(k), self.centers.repeat(self.in_dim)

    def __call__(self, x: Tensor) -> Tensor:
        axis, c = self._axes()
        return (x[:, axis] - c.to(x)).abs()

    def planes(self, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
        axis, c = self._axes()
        c = c.to(lo)
        inside = (c > lo[axis]) & (c < hi[axis])
        normals = torch.eye(self.in_dim, dtype=lo.dtype, device=lo.device)[axis[inside]]
        return normals, c[inside]

    def feature_maps(self, x: Tensor) -> tuple[Tensor, Tensor]:
        axis, c = self._axes()
        s = torch.where(x[:, axis] >= c.to(x), 1.0, -1.0).to(x)  # (N, F)
        a = torch.zeros(x.shape[0], self.out_dim, self.in_dim, dtype=x.dtype)
        a[:, torch.arange(self.out_dim), axis] = s
        return a, -s * c.to(x)

    def feature_bounds(self, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
        axis, c = self._axes()
        c = c.to(lo)
        a, b = lo[:, axis] - c, hi[:, axis] - c  # the range of x_d - c_k
        lower = torch.clamp(torch.maximum(a, -b), min=0)
        return lower, torch.maximum(a.abs(), b.abs())

    def to(self, device=None, dtype=None) -> AbsEncoder:
        return AbsEncoder(self.in_dim, self.centers.to(device=device, dtype=dtype))


def _encoder_graphs(d: int, seed: int = 0) -> tuple[PLGraph, PLGraph]:
    """A graph reading AbsEncoder features (and the input), and the same function as a graph
    whose first layer holds one ``abs`` neuron per feature (hyperplane ``x_d = c_k``)."""
    gen = torch.Generator().manual_seed(seed)
    centers = torch.tensor([-0.4, 0.1, 0.55], dtype=D64)
    enc = AbsEncoder(d, centers)
    f, w = enc.out_dim, 6
    w0 = torch.randn(w, f, generator=gen, dtype=D64)
    wx = torch.randn(w, d, generator=gen, dtype=D64) * 0.5
    b0 = torch.randn(w, generator=gen, dtype=D64) * 0.3
    w1 = torch.randn(w, w, generator=gen, dtype=D64)
    b1 = torch.randn(w, generator=gen, dtype=D64) * 0.3
    wo = torch.randn(1, w, generator=gen, dtype=D64)
    layers = [Layer({ENCODED: w0, INPUT: wx}, b0), Layer({0: w1}, b1)]
    g = PLGraph(d, layers, Affine({1: wo}, torch.zeros(1, dtype=D64)), encoder=enc)
    x = torch.rand(4000, d, generator=gen, dtype=D64) * 2 - 1
    bo = -g(x).median().reshape(1)
    g = PLGraph(d, layers, Affine({1: wo}, bo), encoder=enc)
    # the same function without an encoder: layer 0 computes x_d - c_k through abs neurons
    axis, c = enc._axes()
    feat = Layer({INPUT: torch.eye(d, dtype=D64)[axis]}, -c, neg=-torch.ones(f, dtype=D64),
                 pos=torch.ones(f, dtype=D64))
    plain = PLGraph(d, [feat, Layer({0: w0, INPUT: wx}, b0), Layer({1: w1}, b1)], Affine({2: wo}, bo))
    return g, plain


# --------------------------------------------------------------------------------------
# Independent checks
# --------------------------------------------------------------------------------------


def _unique_rows(v: np.ndarray) -> np.ndarray:
    return np.unique(np.round(np.asarray(v, dtype=np.float64), 9), axis=0)


def _crossings_3d(mesh, p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Number of triangles each segment ``p -> q`` ``(S, 3)`` crosses (Moller-Trumbore)."""
    tri = mesh.vertices[mesh.triangles]  # (T, 3, 3)
    a, e1, e2 = tri[:, 0], tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]
    d = q - p  # (S, 3)
    h = np.cross(d[:, None], e2[None])  # (S, T, 3)
    det = (e1[None] * h).sum(-1)
    ok = np.abs(det) > 1e-14
    inv = np.where(ok, 1 / np.where(ok, det, 1), 0)
    s = p[:, None] - a[None]
    u = (s * h).sum(-1) * inv
    qv = np.cross(s, e1[None])
    v = (d[:, None] * qv).sum(-1) * inv
    t = (e2[None] * qv).sum(-1) * inv
    hit = ok & (u >= 0) & (v >= 0) & (u + v <= 1) & (t >= 0) & (t <= 1)
    return hit.sum(1)


def _crossings_2d(mesh, p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Number of polyline segments each segment ``p -> q`` ``(S, 2)`` crosses."""
    segs = np.concatenate([np.stack([line[:-1], line[1:]], 1) for line in mesh.polylines])
    a, b = mesh.vertices[segs[:, 0]], mesh.vertices[segs[:, 1]]

    def cross(u: np.ndarray, v: np.ndarray) -> np.ndarray:
        return u[..., 0] * v[..., 1] - u[..., 1] * v[..., 0]

    r, s = (q - p)[:, None], (b - a)[None]
    den = cross(r, s)
    ok = np.abs(den) > 1e-14
    w = a[None] - p[:, None]
    t = cross(w, s) / np.where(ok, den, 1)
    u = cross(w, r) / np.where(ok, den, 1)
    return (ok & (t >= 0) & (t <= 1) & (u >= 0) & (u < 1)).sum(1)


def _check_parity(graph: PLGraph, mesh, level: float, n: int = 300, seed: int = 0) -> None:
    """Random segments in the box cross the mesh an odd number of times exactly when ``g - level``
    changes sign between their ends (brute-force signs, generic segments)."""
    d = graph.in_dim
    gen = np.random.default_rng(seed)
    p, q = gen.uniform(-0.95, 0.95, (n, d)), gen.uniform(-0.95, 0.95, (n, d))
    with torch.no_grad():
        gp = graph(torch.from_numpy(p)).numpy() - level
        gq = graph(torch.from_numpy(q)).numpy() - level
    keep = (np.abs(gp) > 1e-6) & (np.abs(gq) > 1e-6)
    hits = (_crossings_3d if d == 3 else _crossings_2d)(mesh, p[keep], q[keep])
    change = (gp[keep] > 0) != (gq[keep] > 0)
    assert change.any() and (~change).any()
    np.testing.assert_array_equal(hits % 2, change.astype(int))


def _check_complex(graph: PLGraph, n_samples: int = 20000) -> None:
    """Euler characteristic 1, and every sampled activation pattern is a region of the complex."""
    d = graph.in_dim
    cx = extract_complex(graph, (-1, 1), progress=False)
    assert cx.euler_characteristic == 1
    assert cx.stats["unpaired_face_keys"] == 0
    regions = {r.tobytes() for r in cx.activation_patterns(d).numpy()}
    x = torch.rand(n_samples, d, generator=torch.Generator().manual_seed(1), dtype=D64) * 2 - 1
    with torch.no_grad():
        sampled = torch.cat(graph.patterns(x), 1).numpy()
    missing = {r.tobytes() for r in sampled} - regions
    assert not missing, f"{len(missing)} sampled activation patterns are not regions of the complex"


def _check_modes(graph: PLGraph, level: float = 0.0) -> None:
    """Complex and surface modes give the same polygons (count and vertex sets), on the level
    set within machine precision, matching brute-force signs."""
    d = graph.in_dim
    a = extract_mesh(graph, (-1, 1), mode="complex", level=level, progress=False)
    b = extract_mesh(graph, (-1, 1), mode="surface", tiles=3, level=level, progress=False)
    if d == 3:
        assert len(a.polygons) == len(b.polygons) > 4
        assert {r.tobytes() for r in a.polygon_patterns} == {r.tobytes() for r in b.polygon_patterns}
        assert a.stats["invalid_faces"] == b.stats["invalid_faces"] == 0
    else:
        assert len(a.polylines) == len(b.polylines) > 0
    np.testing.assert_allclose(_unique_rows(a.vertices), _unique_rows(b.vertices), atol=1e-9)
    x = torch.rand(2000, d, generator=torch.Generator().manual_seed(2), dtype=D64) * 2 - 1
    with torch.no_grad():
        scale = max(1.0, float(graph(x).abs().max()))
    for m in (a, b):
        assert m.stats["max_abs_f"] <= 1e-12 * scale
        _check_parity(graph, m, m.level)


# --------------------------------------------------------------------------------------
# Tests
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("d", [2, 3])
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_graph_complexes_hold_every_sampled_region(kind, d):
    graph = _graph(kind, d)
    if kind in ("skip", "residual"):
        assert not graph.is_mlp
    if kind in ("leaky", "abs"):
        assert not graph.is_relu
    if kind == "clamp":
        assert graph.widths[0] == 12  # two breakpoints per clamped feature
    _check_complex(graph)


@pytest.mark.parametrize("d", [2, 3])
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_graph_meshes_agree_between_modes_and_with_brute_force(kind, d):
    _check_modes(_graph(kind, d))


def test_residual_region_pruning_reads_the_skipped_layers():
    """Later layers of a folded residual stream read earlier layers: region pruning bounds the
    output through them (nsr.pl.bounds.frontier) and still keeps every polygon."""
    from nsr.pl.bounds import frontier

    graph = _graph("residual", 3)
    assert frontier(graph, 2)
    b = extract_mesh(graph, (-1, 1), mode="surface", tiles=2, progress=False)
    assert any(k.startswith("regions_kept_layer") for k in b.stats)


def test_tanh_output_extracts_g_at_the_mapped_level():
    """Level t of tanh(g) is level atanh(t) of g: the vertices are on both."""
    graph = _graph("tanh", 3)
    t = 0.02
    mesh = extract_mesh(graph, (-1, 1), level=t, progress=False)
    assert mesh.level == pytest.approx(math.atanh(t), rel=1e-15)
    assert mesh.stats["module_level"] == t and mesh.stats["output_transform"] == "tanh(g)"
    with torch.no_grad():
        out = graph.module_output(torch.as_tensor(mesh.vertices))
    assert float((out - t).abs().max()) < 1e-12
    _check_modes(graph, level=t)


def test_modules_are_traced_by_the_entry_points():
    """extract_mesh takes the module itself: the same mesh as its traced graph."""
    torch.manual_seed(3)
    module = Skip(3).eval()
    graph = trace(module)
    with torch.no_grad():
        module.out.bias -= float(graph(torch.rand(4000, 3, dtype=D64) * 2 - 1).median())
    a = extract_mesh(module, (-1, 1), progress=False)
    b = extract_mesh(trace(module), (-1, 1), progress=False)
    assert len(a.polygons) == len(b.polygons) > 4
    np.testing.assert_array_equal(a.vertices, b.vertices)


def test_plain_mlps_give_the_same_polygons_as_their_graph():
    from nsr.networks import random_network

    net = random_network(3, [12, 12, 12], seed=2)
    net.biases[-1] -= net(torch.rand(4000, 3, dtype=net.dtype) * 2 - 1).median()
    a = extract_mesh(net, (-1, 1), progress=False)
    b = extract_mesh(as_graph(net), (-1, 1), progress=False)
    assert len(a.polygons) > 4
    np.testing.assert_array_equal(a.vertices, b.vertices)
    assert [p.tolist() for p in a.polygons] == [p.tolist() for p in b.polygons]


@pytest.mark.parametrize("d", [2, 3])
def test_encoder_graph_equals_the_same_function_with_abs_neurons(d):
    """The encoder's planes are split before layer 0: the complex and the mesh equal those of the
    same function written with abs neurons on the planes (an independent construction)."""
    g, plain = _encoder_graphs(d)
    x = torch.rand(1000, d, dtype=D64) * 2 - 1
    assert torch.allclose(g(x), plain(x), atol=1e-12)
    cx = extract_complex(g, (-1, 1), progress=False)
    assert cx.layout.n_facets == 3 * d
    assert cx.euler_characteristic == 1 and cx.stats["unpaired_face_keys"] == 0
    ref = extract_complex(plain, (-1, 1), progress=False)
    assert cx.f_vector == ref.f_vector
    # each region: the encoder's sides (facet constraints) and the neurons' pattern
    sv = cx.sign_vectors(d)
    lay = cx.layout
    regions = {r.tobytes() for r in torch.cat([sv[:, lay.facet_offset:lay.neuron_offset] > 0,
                                               cx.activation_patterns(d)], 1).numpy()}
    normals, offsets = g.encoder.planes(torch.full((d,), -1.0, dtype=D64), torch.ones(d, dtype=D64))
    xs = torch.rand(20000, d, generator=torch.Generator().manual_seed(4), dtype=D64) * 2 - 1
    with torch.no_grad():
        sampled = torch.cat([xs @ normals.T - offsets > 0, *g.patterns(xs)], 1).numpy()
    assert {r.tobytes() for r in sampled} <= regions
    _check_modes(g)
    a = extract_mesh(g, (-1, 1), progress=False)
    b = extract_mesh(plain, (-1, 1), progress=False)
    np.testing.assert_allclose(_unique_rows(a.vertices), _unique_rows(b.vertices), atol=1e-9)


def test_surface_workers_read_the_graph_state():
    graph = _graph("skip", 3)
    a = extract_mesh(graph, (-1, 1), tiles=2, progress=False)
    b = extract_mesh(graph, (-1, 1), tiles=2, workers=2, progress=False)
    assert len(a.polygons) == len(b.polygons) > 4
    np.testing.assert_allclose(_unique_rows(a.vertices), _unique_rows(b.vertices), atol=1e-12)


@pytest.mark.parametrize("kind", ["skip", "residual", "leaky", "tanh"])
def test_the_complex_of_a_non_mlp_graph_saves_and_loads(tmp_path, kind):
    from nsr.extraction.complex import PolyhedralComplex

    g = _graph(kind, 2)
    cx = extract_complex(g, (-1, 1), progress=False)
    back = PolyhedralComplex.load(cx.save(tmp_path / "c.npz"))
    assert back.f_vector == cx.f_vector and back.euler_characteristic == 1
    for name in ("vertices", "edges", "vertex_zeros", "edge_zeros", "vertex_signs"):
        assert torch.equal(getattr(back, name), getattr(cx, name))
    # the network read back is the same function as the module's graph (not the file's own claim)
    x = torch.rand(500, 2, dtype=D64) * 2 - 1
    torch.testing.assert_close(back.net(x), g(x), rtol=0, atol=1e-12)
    # every vertex lies on the neurons it records, evaluated through the network read back
    pre = torch.cat([back.net.preactivations(back.vertices, layer) for layer in range(back.net.n_layers)], 1)
    ids = back.vertex_zeros.long() - back.layout.neuron_offset
    on = ids >= 0
    assert on.any() and float(pre.gather(1, ids.clamp(min=0))[on].abs().max()) < 1e-12


def test_saving_the_complex_of_an_encoder_network_is_refused(tmp_path):
    cx = extract_complex(_encoder_graphs(2)[0], (-1, 1), progress=False)
    with pytest.raises(ValueError, match="encoder is not supported"):
        cx.save(tmp_path / "c.npz")
    assert not list(tmp_path.iterdir())


def test_modules_that_are_not_piecewise_affine_are_refused_by_the_entry_points():
    from nsr.pl import NotPiecewiseAffineError

    module = nn.Sequential(nn.Linear(3, 8), nn.GELU(), nn.Linear(8, 1)).eval()
    with pytest.raises(NotPiecewiseAffineError, match="GELU"):
        extract_mesh(module, (-1, 1), progress=False)
    with pytest.raises(NotPiecewiseAffineError, match="GELU"):
        extract_complex(module, (-1, 1), progress=False)
