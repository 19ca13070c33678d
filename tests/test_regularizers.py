"""Differentiable exact geometry and exact-surface regularizers (issue 7).

Independent answers only: vertices found by brute force (bisection along lines of two
first-layer planes) and re-solved with numpy for finite differences; closed forms for an
octahedron ``|x|+|y|+|z| - r`` and a cube ``max(|x|,|y|,|z|) - r`` encoded exactly as ReLU nets.
"""

from __future__ import annotations

import importlib.util
import math
import sys
import types
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch

from nsr import geometry as G
from nsr import regularizers as R
from nsr.networks import PLNetwork, ReLUMLP, octahedron_network, random_network

ROOT = Path(__file__).resolve().parents[1]
BOX = np.array([[-1.0, 1.0]] * 3)


# ----------------------------------------------------------------------------- helpers


@dataclass
class FakeMesh:
    """The fields of ``nsr.extraction.mesh.ExactMesh`` that the regularizers read."""

    vertices: np.ndarray
    polygons: list
    vertex_constraints: np.ndarray
    vertex_patterns: np.ndarray
    polygon_patterns: np.ndarray
    bounds: np.ndarray = field(default_factory=lambda: BOX.copy())
    triangles: np.ndarray = None  # type: ignore[assignment]
    triangle_polygon: np.ndarray = None  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.triangles is None:  # fan triangulation
            tris, owner = [], []
            for i, p in enumerate(self.polygons):
                for k in range(1, len(p) - 1):
                    tris.append([p[0], p[k], p[k + 1]])
                    owner.append(i)
            self.triangles = np.array(tris, dtype=np.int64).reshape(-1, 3)
            self.triangle_polygon = np.array(owner, dtype=np.int64)

    @property
    def is_empty(self) -> bool:
        return len(self.polygons) == 0


def mlp_from(weights, biases) -> ReLUMLP:
    """A float64 ReLUMLP with the given layers (equal hidden widths)."""
    widths = [w.shape[0] for w in weights[:-1]]
    net = ReLUMLP(in_dim=weights[0].shape[1], width=widths[0], depth=len(widths)).double()
    net.layers = torch.nn.ModuleList()
    for w, b in zip(weights, biases):
        lin = torch.nn.Linear(w.shape[1], w.shape[0], dtype=torch.float64)
        with torch.no_grad():
            lin.weight.copy_(torch.as_tensor(w, dtype=torch.float64))
            lin.bias.copy_(torch.as_tensor(b, dtype=torch.float64))
        net.layers.append(lin)
    return net


def np_params(net):
    return [m.weight.detach().numpy().copy() for m in net.layers], [
        m.bias.detach().numpy().copy() for m in net.layers
    ]


def np_preacts(ws, bs, x):
    """All hidden pre-activations ``(M, N)`` and the output ``(M,)`` (numpy)."""
    h, pre = x, []
    for w, b in zip(ws[:-1], bs[:-1]):
        z = h @ w.T + b
        pre.append(z)
        h = np.maximum(z, 0)
    return np.concatenate(pre, axis=1), (h @ ws[-1].T + bs[-1])[:, 0]


def np_constraint_rows(ws, bs, pattern, cid, bounds, dim=3):
    """Row and offset of one constraint with the pattern fixed (independent numpy loop)."""
    if cid < 2 * dim:
        row = np.zeros(dim)
        row[cid // 2] = 1.0
        return row, -bounds[cid // 2, cid % 2]
    a, c = np.eye(dim), np.zeros(dim)
    start = 0
    k = cid - 2 * dim
    for w, b in zip(ws, bs):
        a, c = w @ a, w @ c + b
        n = w.shape[0]
        if k < start + n:
            return a[k - start], c[k - start]
        if start + n <= pattern.size:
            m = pattern[start:start + n].astype(float)
            a, c = a * m[:, None], c * m
        start += n
    raise AssertionError("bad constraint id")


def np_solve_vertex(ws, bs, cons, pattern, bounds):
    rows = [np_constraint_rows(ws, bs, pattern, int(c), bounds) for c in cons]
    j = np.stack([r for r, _ in rows])
    c = np.array([o for _, o in rows])
    return np.linalg.solve(j, -c)


def brute_force_surface_vertices(ws, bs, bounds, rng, n_lines=None):
    """Surface vertices on lines where two first-layer planes / box facets meet.

    ``f`` along such a line is piecewise linear: dense sampling brackets sign changes and
    bisection finds the roots to machine precision. Roots next to a kink are dropped.
    Returns positions ``(V, 3)``, constraints ``(V, 3)``, patterns ``(V, N)``.
    """
    dim, n_hidden = 3, sum(w.shape[0] for w in ws[:-1])
    planes = []  # (id, normal, offset)
    for c in range(2 * dim):
        row = np.zeros(dim)
        row[c // 2] = 1.0
        planes.append((c, row, -bounds[c // 2, c % 2]))
    for j in range(ws[0].shape[0]):
        planes.append((2 * dim + j, ws[0][j], bs[0][j]))
    out_x, out_c, out_p = [], [], []
    ts = np.linspace(-4.0, 4.0, 4001)
    for i in range(len(planes)):
        for k in range(i + 1, len(planes)):
            (ca, na, oa), (cb, nb, ob) = planes[i], planes[k]
            d = np.cross(na, nb)
            if np.linalg.norm(d) < 1e-6:
                continue
            d = d / np.linalg.norm(d)
            p = np.linalg.solve(np.stack([na, nb, d]), np.array([-oa, -ob, 0.0]))
            x = p[None] + ts[:, None] * d[None]
            inside = np.all((x >= bounds[:, 0] + 1e-7) & (x <= bounds[:, 1] - 1e-7), axis=1)
            _, f = np_preacts(ws, bs, x)
            s = np.sign(f)
            for q in np.nonzero((s[:-1] * s[1:] < 0) & inside[:-1] & inside[1:])[0]:
                lo, hi = ts[q], ts[q + 1]
                flo = f[q]
                for _ in range(200):
                    mid = 0.5 * (lo + hi)
                    fm = np_preacts(ws, bs, (p + mid * d)[None])[1][0]
                    if np.sign(fm) == np.sign(flo):
                        lo, flo = mid, fm
                    else:
                        hi = mid
                    if hi - lo < 1e-16:
                        break
                xr = p + 0.5 * (lo + hi) * d
                pre, _ = np_preacts(ws, bs, xr[None])
                pre = pre[0]
                act = [c - 2 * dim for c in (ca, cb) if c >= 2 * dim]
                others = np.delete(pre, act)
                if others.size and np.min(np.abs(others)) < 1e-6:
                    continue  # next to a kink: degenerate for this brute force
                pat = pre > 0
                pat[act] = rng.random(len(act)) < 0.5  # either side: same vertex
                out_x.append(xr)
                out_c.append([ca, cb, 2 * dim + n_hidden])
                out_p.append(pat)
    return np.array(out_x), np.array(out_c, dtype=np.int64), np.array(out_p, dtype=bool)


def octahedron_net(r: float = 0.5, out_w=None) -> ReLUMLP:
    """``sum_i a_i relu(+-x_i) - r``: the octahedron ``|x|+|y|+|z| = r`` for ``a = 1``."""
    w0 = np.concatenate([np.eye(3)[[i, i]] * np.array([[1.0], [-1.0]]) for i in range(3)])
    a = np.ones(6) if out_w is None else np.asarray(out_w, dtype=float)
    return mlp_from([w0, a[None]], [np.zeros(6), np.array([-r])])


def octahedron_mesh(r: float = 0.5, out_w=None) -> FakeMesh:
    """The exact surface of :func:`octahedron_net` built by hand (8 outward triangles)."""
    a = np.ones(6) if out_w is None else np.asarray(out_w, dtype=float)
    verts, cons, pats = [], [], []
    for i in range(3):
        for s in (0, 1):  # vertex 2i+s at (+-) r/a e_i; neuron 2i+s is relu(+-x_i)
            v = np.zeros(3)
            v[i] = (1 - 2 * s) * r / a[2 * i + s]
            verts.append(v)
            others = [k for k in range(3) if k != i]
            cons.append([6 + 2 * others[0], 6 + 2 * others[1], 12])
            p = np.zeros(6, dtype=bool)
            p[2 * i + s] = True
            pats.append(p)
    polys, ppat = [], []
    for sx in (0, 1):
        for sy in (0, 1):
            for sz in (0, 1):
                tri = [0 + sx, 2 + sy, 4 + sz]
                if (sx + sy + sz) % 2:
                    tri = tri[::-1]
                polys.append(np.array(tri))
                p = np.zeros(6, dtype=bool)
                p[[0 + sx, 2 + sy, 4 + sz]] = True
                ppat.append(p)
    return FakeMesh(np.array(verts), polys, np.array(cons), np.array(pats), np.array(ppat))


def cube_net(r: float = 0.5) -> ReLUMLP:
    """``max(|x|,|y|,|z|) - r`` with ``max(a, b) = b + relu(a - b)``: 3 hidden layers."""
    w0 = np.array([[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]], float)
    # layer 2: relu(|x| - |y|), relu(|y|), relu(|z|)
    w1 = np.array([[1, 1, -1, -1, 0, 0], [0, 0, 1, 1, 0, 0], [0, 0, 0, 0, 1, 1]], float)
    # layer 3: relu(max(|x|,|y|) - |z|), relu(|z|)
    w2 = np.array([[1, 1, -1], [0, 0, 1]], float)
    w3 = np.array([[1.0, 1.0]])
    # pad to equal widths (ReLUMLP has one width): zero rows/cols are inert neurons
    def pad(w, rows, cols):
        out = np.zeros((rows, cols))
        out[: w.shape[0], : w.shape[1]] = w
        return out

    ws = [w0, pad(w1, 6, 6), pad(w2, 6, 6), pad(w3, 1, 6)]
    bs = [np.zeros(6), np.zeros(6), np.zeros(6), np.array([-r])]
    return mlp_from(ws, bs)


def patterns_at(net: ReLUMLP, x: np.ndarray) -> np.ndarray:
    ws, bs = np_params(net)
    pre, _ = np_preacts(ws, bs, np.atleast_2d(x))
    return pre > 0


def cube_mesh(net: ReLUMLP, r: float = 0.5) -> FakeMesh:
    """Six outward quads of the cube, polygon patterns evaluated inside each face."""
    corners = np.array([[x, y, z] for x in (-r, r) for y in (-r, r) for z in (-r, r)])
    idx = {tuple(np.sign(c).astype(int)): i for i, c in enumerate(corners)}
    polys, inner = [], []
    for axis in range(3):
        for s in (-1, 1):
            u, v = [k for k in range(3) if k != axis]
            cyc = []
            for a, b in ((-1, -1), (1, -1), (1, 1), (-1, 1)):
                key = [0, 0, 0]
                key[axis], key[u], key[v] = s, a, b
                cyc.append(idx[tuple(key)])
            pts = corners[cyc]
            n = np.cross(pts[1] - pts[0], pts[2] - pts[0])
            if n[axis] * s < 0:
                cyc = cyc[::-1]
            polys.append(np.array(cyc))
            inner.append(0.6 * pts.mean(0) + 0.25 * pts[0] + 0.15 * pts[1])
    n_hidden = 18
    return FakeMesh(
        corners,
        polys,
        np.zeros((8, 3), dtype=np.int64),
        np.zeros((8, n_hidden), dtype=bool),
        patterns_at(net, np.array(inner)),
    )


def structure(mesh) -> G.SurfaceStructure:
    return G.SurfaceStructure.from_mesh(mesh)


# ----------------------------------------------------------------- differentiable positions


@pytest.mark.parametrize(("widths", "seed"), [((8,), 0), ((10,), 1), ((6, 6), 2), ((5, 5, 5), 3)])
def test_vertices_value_and_gradient_match_brute_force(widths, seed):
    rng = np.random.default_rng(seed)
    pl = random_network(3, list(widths), seed=seed)
    net = mlp_from(pl.weights, pl.biases)
    with torch.no_grad():  # put the surface through the origin
        net.layers[-1].bias.sub_(float(net(torch.zeros(1, 3, dtype=torch.float64))))
    ws, bs = np_params(net)
    x, cons, pats = brute_force_surface_vertices(ws, bs, BOX, rng)
    assert len(x) >= 3, "test network has too few surface vertices"
    # the brute-force vertices solve their constraints (independent numpy check)
    for i in range(len(x)):
        assert np.allclose(np_solve_vertex(ws, bs, cons[i], pats[i], BOX), x[i], atol=1e-9)
    xv = G.differentiable_vertices(
        net, torch.tensor(x), torch.tensor(cons), torch.tensor(pats), BOX
    )
    assert xv.dtype == torch.float64
    assert torch.max(torch.abs(xv.detach() - torch.tensor(x))) <= 1e-9
    weights = torch.tensor(rng.normal(size=x.shape))
    (xv * weights).sum().backward()
    grads = [m.weight.grad.numpy() for m in net.layers] + [m.bias.grad.numpy() for m in net.layers]
    arrays = ws + bs  # same order as grads
    h = 1e-6
    for arr, g in zip(arrays, grads):
        fd = np.zeros_like(arr)
        for k in np.ndindex(arr.shape):
            old = arr[k]
            vals = []
            for sgn in (1.0, -1.0):
                arr[k] = old + sgn * h
                xs = np.stack(
                    [np_solve_vertex(ws, bs, cons[i], pats[i], BOX) for i in range(len(x))]
                )
                vals.append((xs * weights.numpy()).sum())
            arr[k] = old
            fd[k] = (vals[0] - vals[1]) / (2 * h)
        assert np.allclose(g, fd, rtol=1e-5, atol=1e-6), (g, fd)


def test_complex_vertices_from_three_first_layer_planes():
    """Vertices of the complex (no output constraint): three neurons / facets."""
    pl = random_network(3, [7], seed=5)
    net = mlp_from(pl.weights, pl.biases)
    ws, bs = np_params(net)
    cons, xs = [], []
    for trip in [(0, 7, 8), (6, 7, 9), (1, 3, 10), (7, 8, 9), (8, 10, 12)]:
        pat = np.zeros(7, dtype=bool)
        xs.append(np_solve_vertex(ws, bs, trip, pat, BOX))
        cons.append(trip)
    x, c = np.array(xs), np.array(cons)
    pats = patterns_at(net, x)
    xv = G.differentiable_vertices(net, torch.tensor(x), torch.tensor(c), torch.tensor(pats), BOX)
    assert torch.max(torch.abs(xv.detach() - torch.tensor(x))) <= 1e-9
    # box facet vertices do not move with the parameters along the fixed axis
    xv[0, 0].backward()
    assert all(m.weight.grad is None or float(m.weight.grad.abs().max()) == 0.0
               for m in net.layers)


def test_stale_structure_is_resolved_exactly_and_degenerate_vertices_are_frozen():
    net = octahedron_net(0.5)
    mesh = octahedron_mesh(0.5)
    with torch.no_grad():
        net.layers[-1].bias.fill_(-0.7)  # parameters moved after the extraction
    xv = G.differentiable_vertices(net, torch.tensor(mesh.vertices),
                                   torch.tensor(mesh.vertex_constraints),
                                   torch.tensor(mesh.vertex_patterns), BOX)
    assert torch.allclose(xv.detach(), torch.tensor(mesh.vertices) * 1.4, atol=1e-12)
    # a singular system (two copies of one plane) keeps x0 with a zero, finite gradient
    cons = torch.tensor([[6, 6, 12]])
    x0 = torch.tensor([[0.1, 0.2, 0.3]], dtype=torch.float64)
    xs = G.differentiable_vertices(net, x0, cons, torch.zeros(1, 6, dtype=torch.bool), BOX)
    assert torch.equal(xs.detach(), x0)
    xs.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in net.parameters())


def test_region_affine_matches_network_in_its_region():
    pl = random_network(3, [9, 9], seed=4)
    x = torch.rand(50, 3, dtype=torch.float64) * 2 - 1
    pre = [pl.preactivations(x, i) > 0 for i in range(2)]
    grad, off = G.region_affine(pl, torch.cat(pre, 1))
    assert torch.allclose((grad * x).sum(1) + off, pl(x), atol=1e-12)
    assert torch.allclose(grad, pl.local_gradients(pre), atol=1e-12)
    assert torch.allclose(G.region_gradient_norm(pl, torch.cat(pre, 1)), grad.norm(dim=1))


# ------------------------------------------------------------------------ closed forms


def test_octahedron_area_volume_normals_angles_closed_form():
    r = 0.6
    net, mesh = octahedron_net(r), octahedron_mesh(r)
    s = structure(mesh)
    surf = R.ExactSurface(net, s)
    v = surf.vertices
    assert torch.allclose(v.detach(), torch.tensor(mesh.vertices), atol=1e-12)
    area = G.total_area(v, s.cycles)
    assert float(area) == pytest.approx(4 * math.sqrt(3) * r**2, rel=1e-12)
    assert float(G.enclosed_volume(v, s.triangles)) == pytest.approx(4 / 3 * r**3, rel=1e-12)
    # normals from positions and from the regions' patterns: (+-1, +-1, +-1) / sqrt 3, outward
    n_pos = G.polygon_normals(v, s.cycles).detach()
    centroids = v.detach()[s.cycles].mean(1)
    expected = torch.sign(centroids) / math.sqrt(3)
    assert torch.allclose(n_pos, expected, atol=1e-12)
    assert torch.allclose(surf.region_normals.detach(), expected, atol=1e-12)
    assert torch.allclose(G.region_gradient_norm(net, s.polygon_patterns).detach(),
                          torch.full((8,), math.sqrt(3), dtype=torch.float64))
    # 12 edges of length r sqrt 2, all interior; dihedral (normal) angle acos(1/3)
    assert s.edges.shape[0] == 12 and s.interior_edges.numel() == 12
    assert torch.allclose(surf.edge_lengths.detach(),
                          torch.full((12,), r * math.sqrt(2), dtype=torch.float64))
    dih = G.dihedral_angles(surf.region_normals, s.edge_polygons)
    assert torch.allclose(dih.detach(), torch.full((12,), math.acos(1 / 3), dtype=torch.float64))
    assert torch.allclose(surf.triangle_angles.detach(),
                          torch.full((8, 3), math.pi / 3, dtype=torch.float64))
    # d(area)/d(output bias): area = 4 sqrt3 b^2 with r = -b
    area.backward()
    assert float(net.layers[-1].bias.grad) == pytest.approx(-8 * math.sqrt(3) * r, rel=1e-10)


def test_cube_area_volume_normals_dihedral_closed_form():
    r = 0.4
    net = cube_net(r)
    ws, bs = np_params(net)
    pts = np.random.default_rng(0).uniform(-1, 1, (200, 3))
    assert np.allclose(np_preacts(ws, bs, pts)[1], np.abs(pts).max(1) - r)
    mesh = cube_mesh(net, r)
    s = structure(mesh)
    v = s.vertices0
    assert float(G.total_area(v, s.cycles)) == pytest.approx(24 * r**2, rel=1e-12)
    assert float(G.triangle_areas(v, s.triangles).sum()) == pytest.approx(24 * r**2, rel=1e-12)
    assert float(G.enclosed_volume(v, s.triangles)) == pytest.approx(8 * r**3, rel=1e-12)
    n_pos = G.polygon_normals(v, s.cycles)
    n_reg = G.region_normals(net, s.polygon_patterns).detach()
    expected = torch.tensor([[-1, 0, 0], [1, 0, 0], [0, -1, 0], [0, 1, 0], [0, 0, -1],
                             [0, 0, 1]], dtype=torch.float64)
    assert torch.allclose(n_pos, expected, atol=1e-12)
    assert torch.allclose(n_reg, expected, atol=1e-12)
    assert s.interior_edges.numel() == 12
    dih = G.dihedral_angles(n_reg, s.edge_polygons)
    assert torch.allclose(dih, torch.full((12,), math.pi / 2, dtype=torch.float64))
    ang = torch.sort(G.triangle_angles(v, s.triangles), dim=1).values
    assert torch.allclose(ang, torch.tensor([math.pi / 4, math.pi / 4, math.pi / 2],
                                            dtype=torch.float64).expand(12, 3))
    q = G.polygon_isoperimetric_quality(v, s.cycles)
    assert torch.allclose(q, torch.full((6,), math.pi / 4, dtype=torch.float64))


def test_pad_cycles_and_open_edges():
    cyc, lens = G.pad_cycles([np.array([0, 1, 2, 3]), np.array([1, 4, 2])])
    assert cyc.tolist() == [[0, 1, 2, 3], [1, 4, 2, 1]] and lens.tolist() == [4, 3]
    edges, ep = G.polygon_edges(cyc, lens)
    shared = {tuple(e) for e, p in zip(edges.tolist(), ep.tolist()) if p[1] >= 0}
    assert shared == {(1, 2)} and len(edges) == 6


# ------------------------------------------------------------------------- regularizers


def _optimize(net, mesh, reg, steps=30, lr=1e-2):
    s = structure(mesh)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    vals = []
    for _ in range(steps):
        opt.zero_grad()
        val = reg(R.ExactSurface(net, s))
        val.backward()
        opt.step()
        vals.append(float(val.detach()))
    return vals


def _sphere_sdf(x: torch.Tensor) -> torch.Tensor:
    return x.norm(dim=-1) - 0.3


@pytest.mark.parametrize(
    "reg",
    [
        R.AreaRegularizer(),
        R.SmoothnessRegularizer(),
        R.SmoothnessRegularizer(normals="positions", normalize=True),
        R.QualityRegularizer(min_edge=0.3, min_angle_deg=55.0, min_quality=0.62),
        R.FitRegularizer(target=_sphere_sdf, n_samples=256),
        R.FitRegularizer(target=np.random.default_rng(0).normal(size=(2000, 3)) * 0.0
                         + np.array([0.3, 0.0, 0.0]), n_samples=128),
        R.EikonalRegularizer(),
    ],
    ids=["area", "smooth", "smooth-positions", "quality", "fit-sdf", "fit-points", "eikonal"],
)
def test_each_regularizer_decreases_under_adam(reg):
    out_w = [1.0, 1.3, 0.8, 1.0, 1.6, 1.1]  # an irregular octahedron
    net, mesh = octahedron_net(0.6, out_w), octahedron_mesh(0.6, out_w)
    vals = _optimize(net, mesh, reg)
    assert vals[0] > 0
    assert vals[-1] < 0.9 * vals[0], vals


def test_schedule_and_weights_combine():
    reg = R.AreaRegularizer(weight=2.0, start_step=10, ramp_steps=4, end_step=50)
    assert [reg.factor(s) for s in (0, 9, 10, 11, 13, 20, 50)] == [0, 0, 0.25, 0.5, 1, 1, 0]
    net, mesh = octahedron_net(0.5), octahedron_mesh(0.5)
    s = structure(mesh)
    regs = [reg, R.EikonalRegularizer(weight=0.5)]
    terms = R.regularizer_terms(net, s, regs, step=11)
    area = 4 * math.sqrt(3) * 0.25
    assert float(terms["area"]) == pytest.approx(2.0 * 0.5 * area)
    assert float(terms["eikonal"]) == pytest.approx(0.5 * (math.sqrt(3) - 1) ** 2)
    assert float(R.regularizer_terms(net, s, regs, step=3)["area"]) == 0.0


def test_bad_input_warns_once_and_contributes_zero():
    net = octahedron_net(0.5)
    reg = R.AreaRegularizer()
    with pytest.warns(RuntimeWarning, match="no surface"):
        out = R.regularizer_terms(net, None, [reg])
    assert float(out["area"]) == 0.0 and out["area"].requires_grad
    out["area"].backward()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        R.regularizer_terms(net, None, [reg])  # second time: silent
    empty = FakeMesh(np.zeros((0, 3)), [], np.zeros((0, 3), np.int64),
                     np.zeros((0, 6), bool), np.zeros((0, 6), bool))
    with pytest.warns(RuntimeWarning, match="no surface"):
        val = R.AreaRegularizer()(R.ExactSurface(net, structure(empty)))
    assert float(val) == 0.0
    fit = R.FitRegularizer()
    with pytest.warns(RuntimeWarning, match="no target"):
        assert float(fit(R.ExactSurface(net, structure(octahedron_mesh(0.5))))) == 0.0


# ---------------------------------------------------------------------------- callback


class _Module:
    """The contract of nsr's training module the callback relies on."""

    def __init__(self, net):
        self.net = net
        self.regularizer_terms = []
        self.logged = {}

    def log(self, name, value, **kwargs):
        self.logged[name] = value


@pytest.fixture
def fake_surface(monkeypatch):
    """``nsr.extraction.surface.extract_mesh`` replaced by the hand-built octahedron (octahedron nets)."""
    calls = []

    def extract_mesh(net, bounds, *, mode="surface", close=False, dtype=None, device=None,
                     progress=True, seeds=None, level=0.0):
        calls.append(mode)
        r = -float(net.biases[-1][0])
        return octahedron_mesh(r) if r > 0 else FakeMesh(
            np.zeros((0, 3)), [], np.zeros((0, 3), np.int64), np.zeros((0, 6), bool),
            np.zeros((0, 6), bool))

    fake = types.ModuleType("nsr.extraction.surface")
    fake.extract_mesh = extract_mesh
    monkeypatch.setitem(sys.modules, "nsr.extraction.surface", fake)
    # the callback's own track path would bypass extract_mesh
    monkeypatch.setattr(R, "_track_structure", lambda *a, **k: "faked")
    return calls


def test_callback_registers_term_reextracts_and_gradients_reach_module(fake_surface):
    net = octahedron_net(0.5).float()
    module = _Module(net)
    cb = R.ExactRegularizerCallback([R.AreaRegularizer(), R.EikonalRegularizer()],
                                    every_n_steps=3, bounds=1.0)
    cb.setup(None, module, "fit")
    cb.setup(None, module, "fit")
    assert module.regularizer_terms == [cb.term]
    trainer = types.SimpleNamespace(global_step=0)
    for step in range(7):
        trainer.global_step = step
        cb.on_train_batch_start(trainer, module, None, step)
    assert len(fake_surface) == 3  # steps 0, 3, 6
    terms = module.regularizer_terms[0](module)
    assert set(terms) == {"area", "eikonal"} and terms["area"].dtype == torch.float32
    assert float(terms["area"]) == pytest.approx(4 * math.sqrt(3) * 0.25, rel=1e-6)
    sum(terms.values()).backward()
    assert float(net.layers[-1].bias.grad) == pytest.approx(-8 * math.sqrt(3) * 0.5, rel=1e-5)
    assert {"reg_cost/extract_s", "reg_cost/term_s", "reg_cost/polygons"} <= set(module.logged)
    assert cb.stats["extractions"] == 3 and cb.stats["terms"] == 1


@pytest.mark.parametrize("reuse", [False, True])
def test_term_every_k_steps_scaled_or_reused_gradient(fake_surface, reuse):
    net = octahedron_net(0.5)
    module = _Module(net)
    module.trainer = types.SimpleNamespace(global_step=0)
    cb = R.ExactRegularizerCallback([R.AreaRegularizer()], every_n_steps=100, bounds=1.0,
                                    term_every_n_steps=3, reuse_gradient=reuse)
    cb.setup(None, module, "fit")
    one_step = -8 * math.sqrt(3) * 0.5  # d(area)/d(output bias) of the octahedron, r = 0.5
    got = []
    for step in range(5):
        module.trainer.global_step = step
        cb.on_train_batch_start(module.trainer, module, None, step)
        net.zero_grad()
        terms = cb.term(module)
        if terms and not reuse:
            sum(terms.values()).backward()
        assert not any(v.requires_grad for v in terms.values()) or not reuse
        cb.on_before_optimizer_step(module.trainer, module, None)
        g = net.layers[-1].bias.grad
        got.append(0.0 if g is None else float(g))
    if reuse:  # the term's own gradient (weight x 1) in every step
        assert got == pytest.approx([one_step] * 5, rel=1e-9)
    else:  # weight x 3 in the term steps 0 and 3 only
        assert got == pytest.approx([3 * one_step, 0, 0, 3 * one_step, 0], rel=1e-9, abs=1e-12)


def test_callback_without_surface_or_in_2d_contributes_zero(fake_surface):
    module = _Module(octahedron_net(-0.5))  # f > 0 everywhere: no surface
    cb = R.ExactRegularizerCallback([R.AreaRegularizer()], bounds=1.0)
    cb.setup(None, module, "fit")
    with pytest.warns(RuntimeWarning, match="no surface"):
        out = cb.term(module)
    assert float(out["area"]) == 0.0
    module2 = _Module(ReLUMLP(in_dim=2, width=8, depth=2))
    cb2 = R.ExactRegularizerCallback([R.AreaRegularizer()])
    cb2.setup(None, module2, "fit")
    with pytest.warns(RuntimeWarning, match="3D"):
        out = cb2.term(module2)
    assert float(out["area"]) == 0.0
    sum(out.values()).backward()


def test_callback_in_a_lightning_trainer(fake_surface, tmp_path):
    L = pytest.importorskip("lightning")

    class Module(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = octahedron_net(0.5).float()
            self.regularizer_terms = []

        def training_step(self, batch, batch_idx):
            loss = (self.net(batch[0]) ** 2).mean() * 0.0
            for fn in self.regularizer_terms:
                for name, val in fn(self).items():
                    self.log(f"reg/{name}", val)
                    loss = loss + val
            return loss

        def configure_optimizers(self):
            return torch.optim.SGD(self.net.layers[-1:].parameters(), lr=1e-3)

    data = torch.utils.data.TensorDataset(torch.zeros(4, 3))
    module = Module()
    cb = R.ExactRegularizerCallback([R.AreaRegularizer()], every_n_steps=2, bounds=1.0)
    trainer = L.Trainer(max_steps=4, callbacks=[cb], logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=tmp_path)
    trainer.fit(module, torch.utils.data.DataLoader(data, batch_size=1))
    assert cb.stats["extractions"] == 2 and cb.stats["terms"] == 4
    # the area gradient raised the output bias (shrinks the octahedron)
    assert float(module.net.layers[-1].bias) > -0.5


def test_hydra_configs_instantiate():
    omegaconf = pytest.importorskip("omegaconf")
    hydra_utils = pytest.importorskip("hydra.utils")
    names = {}
    smooth = {}
    for name in ("area", "smooth", "quality", "fit", "eikonal", "all", "smooth_fit"):
        cfg = omegaconf.OmegaConf.load(ROOT / "conf" / "regularizer" / f"{name}.yaml")
        cb = hydra_utils.instantiate(cfg)
        assert isinstance(cb, R.ExactRegularizerCallback)
        assert all(isinstance(r, R.ExactRegularizer) for r in cb.regularizers)
        names[name] = sorted(r.name for r in cb.regularizers)
        smooth[name] = [(r.weight, r.normalize) for r in cb.regularizers if r.name == "smooth"]
    assert names["all"] == sorted(["area", "smooth", "quality", "fit", "eikonal"])
    assert names["smooth_fit"] == ["fit", "smooth"]
    # the combinations keep the smoothness of smooth.yaml
    assert smooth["all"] == smooth["smooth_fit"] == smooth["smooth"] != []
    for name in ("area", "smooth", "quality", "fit", "eikonal"):
        assert names[name] == [name]


# --------------------------------------------------------------- with the real extractor


def _surface_module():
    if importlib.util.find_spec("nsr.extraction.surface") is None:
        pytest.skip("nsr.extraction.surface (extract_mesh) has not landed yet")
    return pytest.importorskip("nsr.extraction.surface")


def _median_level(pl: PLNetwork, seed: int) -> float:
    """The median of the network over 2,000 random points of BOX: a level its surface crosses."""
    x = torch.rand(2000, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)) * 2 - 1
    return float(pl(x).median())


@pytest.mark.parametrize("seed", [0, 3])
def test_track_structure_is_the_structure_of_the_exact_mesh(seed):
    """The callback builds its structure from the walked polygons (no ExactMesh); it must be
    the structure of ``extract_mesh``'s mesh (surface mode), at the callback's level."""
    surface = _surface_module()
    pl = random_network(3, [12, 12], seed=seed)
    level = _median_level(pl, seed)
    s, _, _ = R._extract_structure(pl, BOX, {"level": level}, None)
    mesh = surface.extract_mesh(pl, BOX, mode="surface", level=level, dtype=torch.float64, progress=False)
    assert s is not None and s.n_polygons == len(mesh.polygons) > 20
    # the same vertices (any order), exactly on the level set
    assert torch.allclose(pl(s.vertices0).reshape(-1), torch.full((s.n_vertices,), level, dtype=torch.float64),
                          atol=1e-12)
    order = np.lexsort(s.vertices0.numpy().T)
    ref = np.asarray(mesh.vertices)[np.lexsort(np.asarray(mesh.vertices).T)]
    assert np.allclose(s.vertices0.numpy()[order], ref, atol=1e-9)
    # every edge of the brute-force edge list of the cycles, with its polygons
    brute: dict[tuple[int, int], list[int]] = {}
    for p, (cyc, n) in enumerate(zip(s.cycles.tolist(), s.cycle_len.tolist())):
        for i in range(n):
            a, b = cyc[i], cyc[(i + 1) % n]
            brute.setdefault((min(a, b), max(a, b)), []).append(p)
    got = {tuple(e): [q for q in ep if q >= 0] for e, ep in zip(s.edges.tolist(), s.edge_polygons.tolist())}
    assert got == brute
    assert sum(len(v) == 2 for v in brute.values()) == len(s.interior_edges)
    # fan triangles cover each polygon once: total area equals the polygons' area
    assert float(G.triangle_areas(s.vertices0, s.triangles).sum()) == pytest.approx(
        float(G.total_area(s.vertices0, s.cycles)), rel=1e-12)
    assert np.bincount(s.triangle_polygon.numpy(), minlength=s.n_polygons).tolist() == \
        (s.cycle_len - 2).tolist()


def test_extracted_vertices_are_reproduced_with_fd_gradients():
    surface = _surface_module()
    pl = random_network(3, [8, 8], seed=7)
    net = mlp_from(pl.weights, pl.biases)
    with torch.no_grad():  # put the surface through the origin
        net.layers[-1].bias.sub_(float(net(torch.zeros(1, 3, dtype=torch.float64))))
    mesh = surface.extract_mesh(_pl(net), BOX, mode="surface", dtype=torch.float64,
                                progress=False, tiles=1)
    assert not mesh.is_empty
    s = structure(mesh)
    xv = G.differentiable_vertices(net, s.vertices0, s.constraints, s.vertex_patterns, BOX)
    assert torch.max(torch.abs(xv.detach() - s.vertices0)) <= 1e-9
    ws, bs = np_params(net)
    rng = np.random.default_rng(0)
    sel = rng.choice(len(mesh.vertices), size=min(20, len(mesh.vertices)), replace=False)
    cons, pats = mesh.vertex_constraints[sel], mesh.vertex_patterns[sel]
    jac = [np.stack([np_constraint_rows(ws, bs, pats[i], int(c), BOX)[0] for c in cons[i]])
           for i in range(len(sel))]
    keep = [i for i in range(len(sel)) if np.linalg.cond(jac[i]) < 1e8]
    weights = torch.tensor(rng.normal(size=(len(keep), 3)))
    (xv[torch.as_tensor(sel[keep])] * weights).sum().backward()
    h = 1e-6
    entries = [(len(ws) + len(ws) - 1, (0,))]  # the output bias
    entries += [(0, tuple(rng.integers(0, n) for n in ws[0].shape)) for _ in range(3)]
    entries += [(1, tuple(rng.integers(0, n) for n in ws[1].shape)) for _ in range(3)]
    arrays = ws + bs
    grads = [m.weight.grad for m in net.layers] + [m.bias.grad for m in net.layers]
    for which, k in entries:
        arr = arrays[which]
        vals = []
        for sgn in (1.0, -1.0):
            old = arr[k]
            arr[k] = old + sgn * h
            xs = np.stack([np_solve_vertex(ws, bs, cons[i], pats[i], BOX) for i in keep])
            vals.append((xs * weights.numpy()).sum())
            arr[k] = old
        fd = (vals[0] - vals[1]) / (2 * h)
        assert float(grads[which][k]) == pytest.approx(fd, rel=1e-5, abs=1e-7)


def _pl(net: ReLUMLP) -> PLNetwork:
    from nsr.networks import as_network

    return as_network(net)


@pytest.mark.parametrize("shape", ["octahedron", "cube"])
def test_extracted_closed_forms(shape):
    surface = _surface_module()
    r = 0.45
    net = octahedron_net(r) if shape == "octahedron" else cube_net(r)
    mesh = surface.extract_mesh(_pl(net), BOX, mode="surface", dtype=torch.float64,
                                progress=False, tiles=1)
    s = structure(mesh)
    v = G.differentiable_vertices(net, s.vertices0, s.constraints, s.vertex_patterns, BOX)
    area = 4 * math.sqrt(3) * r**2 if shape == "octahedron" else 24 * r**2
    vol = 4 / 3 * r**3 if shape == "octahedron" else 8 * r**3
    assert float(G.total_area(v, s.cycles)) == pytest.approx(area, rel=1e-9)
    assert float(G.enclosed_volume(v, s.triangles)) == pytest.approx(vol, rel=1e-9)
    n_pos = G.polygon_normals(v, s.cycles).detach()
    n_reg = G.region_normals(net, s.polygon_patterns).detach()
    big = G.polygon_areas(v, s.cycles).detach() > 1e-9  # the extractor may keep slivers
    assert torch.allclose(n_pos[big], n_reg[big], atol=1e-9)
    # the exact normals of real faces are the closed-form ones
    expected = torch.sign(n_reg) / torch.sign(n_reg).norm(dim=1, keepdim=True)
    assert torch.allclose(n_reg[big], expected[big], atol=1e-12)
    if shape == "octahedron":
        assert torch.allclose(n_reg[big].abs(), torch.full_like(n_reg[big], 3**-0.5))


def _small_net(widths=(12, 12), seed=1) -> ReLUMLP:
    pl = random_network(3, list(widths), seed=seed)
    net = mlp_from(pl.weights, pl.biases)
    with torch.no_grad():  # put the surface through the origin
        net.layers[-1].bias.sub_(float(net(torch.zeros(1, 3, dtype=torch.float64))))
    return net


def _exact_area(surface, net) -> float:
    """Area of a fresh extraction from its triangles (numpy, independent of nsr.geometry)."""
    m = surface.extract_mesh(_pl(net), BOX, mode="surface", dtype=torch.float64,
                             progress=False, tiles=1)
    a, b, c = (m.vertices[m.triangles[:, i]] for i in range(3))
    return float(0.5 * np.linalg.norm(np.cross(b - a, c - a), axis=1).sum())


def _train_with_callback(net, regs, steps, every, lr=5e-4):
    module = _Module(net)
    cb = R.ExactRegularizerCallback(regs, every_n_steps=every, bounds=1.0,
                                    extract_kwargs={"tiles": 1})
    cb.setup(None, module, "fit")
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    trainer = types.SimpleNamespace(global_step=0)
    vals = []
    for step in range(steps):
        trainer.global_step = step
        cb.on_train_batch_start(trainer, module, None, step)
        opt.zero_grad()
        terms = module.regularizer_terms[0](module)
        sum(terms.values()).backward()
        opt.step()
        vals.append(sum(float(v.detach()) for v in terms.values()))
    return vals, cb


def test_area_decreases_with_reextraction_through_the_callback():
    surface = _surface_module()
    net = _small_net()
    before = _exact_area(surface, net)
    vals, cb = _train_with_callback(net, [R.AreaRegularizer()], steps=12, every=4)
    assert cb.stats["extractions"] >= 3
    assert vals[-1] < vals[0]
    assert _exact_area(surface, net) < 0.9 * before


@pytest.mark.slow
@pytest.mark.parametrize(
    "reg",
    [
        R.SmoothnessRegularizer(),
        R.QualityRegularizer(min_edge=0.05, min_angle_deg=20.0, min_quality=0.3),
        R.FitRegularizer(target=_sphere_sdf, n_samples=512),
        R.EikonalRegularizer(),
    ],
    ids=["smooth", "quality", "fit", "eikonal"],
)
def test_each_regularizer_decreases_with_reextraction(reg):
    _surface_module()
    vals, _ = _train_with_callback(_small_net(), [reg], steps=20, every=5)
    assert vals[-1] < vals[0], vals


def test_regularizer_group_composes_with_train_config():
    """``regularizer=all`` composes with train.yaml; the box comes from ``data.box``."""
    hydra = pytest.importorskip("hydra")
    from hydra.utils import instantiate

    from nsr._config import config_dir

    with hydra.initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = hydra.compose("train", overrides=["regularizer=all", "data.box=0.7"])
    cb = instantiate(cfg.regularizer)
    assert isinstance(cb, R.ExactRegularizerCallback)
    assert cb.bounds == pytest.approx(0.7)
    assert np.allclose(cb._bounds(None, 3), [[-0.7, 0.7]] * 3)
    assert [r.name for r in cb.regularizers] == ["area", "smooth", "quality", "fit", "eikonal"]


# ------------------------------------------------------------------ cost controls (issue 7)


def test_term_every_n_steps_skips_steps_and_scales_the_weight(fake_surface):
    net = octahedron_net(0.5)
    module = _Module(net)
    module.trainer = types.SimpleNamespace(global_step=0)
    every = R.ExactRegularizerCallback([R.AreaRegularizer(weight=0.5)], bounds=1.0,
                                       term_every_n_steps=4)
    plain = R.ExactRegularizerCallback([R.AreaRegularizer(weight=0.5)], bounds=1.0)
    every.setup(None, module, "fit")
    seen = []
    for step in range(9):
        module.trainer.global_step = step
        out = every.term(module)
        seen.append(bool(out))
        if out:
            ref = plain.term(module)
            assert float(out["area"].detach()) == pytest.approx(4 * float(ref["area"].detach()),
                                                                rel=1e-12)
            sum(out.values()).backward()
    assert seen == [True, False, False, False, True, False, False, False, True]
    assert every.stats["terms"] == 3
    with pytest.raises(ValueError, match="term_every_n_steps"):
        R.ExactRegularizerCallback([R.AreaRegularizer()], term_every_n_steps=0)
    with pytest.raises(ValueError, match="background"):
        R.ExactRegularizerCallback([R.AreaRegularizer()], background="fork")


def _same_structure(a, b):
    assert a is not None and b is not None
    assert a.n_polygons == b.n_polygons and a.n_vertices == b.n_vertices
    for name in ("vertices0", "constraints", "vertex_patterns", "polygon_patterns", "cycles",
                 "triangles", "edges", "edge_polygons"):
        x, y = getattr(a, name), getattr(b, name)
        assert torch.equal(x, y), name


@pytest.mark.parametrize("mode", ["thread", "process"])
def test_background_extraction_uses_a_snapshot_and_matches_sync(mode):
    _surface_module()
    net = _small_net(seed=3)
    module = _Module(net)
    kw = dict(every_n_steps=5, bounds=1.0, extract_kwargs={"tiles": 1})
    bg = R.ExactRegularizerCallback([R.AreaRegularizer()], background=mode, worker_nice=0, **kw)
    bg.setup(None, module, "fit")
    trainer = types.SimpleNamespace(global_step=0)
    bg.on_train_batch_start(trainer, module, None, 0)  # the first extraction is synchronous
    assert bg.stats["extractions"] == 1 and bg._job is None
    with torch.no_grad():
        for m in net.layers:
            m.weight.mul_(1.01)
            m.bias.add_(0.005)
    expected = R.ExactRegularizerCallback([R.AreaRegularizer()], **kw)
    expected.refresh(module, 5)  # synchronous, with the parameters at step 5
    trainer.global_step = 5
    bg.on_train_batch_start(trainer, module, None, 5)  # submits a snapshot
    assert bg._job is not None
    with torch.no_grad():  # the optimizer moves on while the worker extracts
        net.layers[-1].bias.add_(0.05)
    bg.close()  # waits, swaps the result in, stops the worker
    assert bg._job is None and bg._executor is None
    assert bg.stats["background_extractions"] == 1 and bg._extracted_at == 5
    _same_structure(bg.structure, expected.structure)
    moved = R.ExactRegularizerCallback([R.AreaRegularizer()], **kw)
    moved.refresh(module, 6)
    assert not torch.equal(moved.structure.vertices0, bg.structure.vertices0)


@pytest.mark.parametrize("mode", ["thread", "process"])
def test_background_callback_in_a_lightning_trainer_joins_at_the_end(mode, tmp_path):
    L = pytest.importorskip("lightning")
    _surface_module()
    from nsr.training.lightning import StepTimer

    class Module(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = _small_net(seed=4)
            self.regularizer_terms = []

        def training_step(self, batch, batch_idx):
            loss = (self.net(batch[0]) ** 2).mean() * 0.0
            for fn in self.regularizer_terms:
                for val in fn(self).values():
                    loss = loss + val
            return loss

        def configure_optimizers(self):
            return torch.optim.Adam(self.net.parameters(), lr=1e-4)

    data = torch.utils.data.TensorDataset(torch.zeros(12, 3, dtype=torch.float64))
    module = Module()
    cb = R.ExactRegularizerCallback([R.AreaRegularizer()], every_n_steps=3, bounds=1.0,
                                    term_every_n_steps=2, background=mode, dtype="float32",
                                    worker_nice=0,
                                    frozen_jacobian=True, extract_kwargs={"tiles": 1})
    timer = StepTimer(path=str(tmp_path / "times.json"))
    trainer = L.Trainer(max_steps=12, callbacks=[timer, cb], logger=False,
                        enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(module, torch.utils.data.DataLoader(data, batch_size=1))
    assert cb._job is None and cb._executor is None  # joined and stopped in on_fit_end
    assert cb.stats["terms"] == 6  # steps 0, 2, ..., 10
    assert cb.stats["background_extractions"] >= 1
    assert cb.stats["extractions"] == cb.stats["background_extractions"] + 1
    assert len(timer.times) == 12 and len(timer.loop_times) == 11
    import json

    saved = json.loads((tmp_path / "times.json").read_text())
    assert saved["steps"] == 12 and saved["mean_s"] > 0


def test_frozen_jacobian_same_positions_and_fresh_gradients():
    surface = _surface_module()
    net = _small_net(seed=5)
    mesh = surface.extract_mesh(_pl(net), BOX, mode="surface", dtype=torch.float64,
                                progress=False, tiles=1)
    s = structure(mesh)
    args = (s.vertices0, s.constraints, s.vertex_patterns, BOX)
    jac, off = G.constraint_system(net, s.constraints, s.vertex_patterns, BOX)
    x = torch.rand(s.n_vertices, 3, dtype=torch.float64) * 2 - 1
    res = G.constraint_residuals(net, x, s.constraints, s.vertex_patterns, BOX)
    assert torch.allclose(res, torch.einsum("vij,vj->vi", jac, x) + off, atol=1e-12)
    weights = torch.randn(s.n_vertices, 3, dtype=torch.float64)

    def grads(frozen):
        net.zero_grad()
        v = G.differentiable_vertices(net, *args, frozen_jacobian=frozen)
        (v * weights).sum().backward()
        return v.detach(), [p.grad.clone() for p in net.parameters()]

    v_exact, g_exact = grads(False)
    v_frozen, g_frozen = grads(True)
    assert torch.max(torch.abs(v_frozen - s.vertices0)) <= 1e-9
    for a, b in zip(g_exact, g_frozen):
        assert torch.allclose(a, b, rtol=1e-7, atol=1e-9)
    with torch.no_grad():  # stale structure: the same re-solved positions
        for m in net.layers:
            m.weight.mul_(1.002)
    v_exact, g_exact = grads(False)
    v_frozen, g_frozen = grads(True)
    assert torch.max(torch.abs(v_frozen - v_exact)) <= 1e-9
    assert torch.max(torch.abs(v_frozen - s.vertices0)) > 1e-6
    assert any(not torch.allclose(a, b, rtol=1e-9, atol=1e-12)
               for a, b in zip(g_exact, g_frozen))  # first-order only when stale


def test_float32_geometry_matches_float64():
    surface = _surface_module()
    net = _small_net(seed=6)
    mesh = surface.extract_mesh(_pl(net), BOX, mode="surface", dtype=torch.float64,
                                progress=False, tiles=1)
    s = structure(mesh)
    regs = [R.AreaRegularizer(), R.SmoothnessRegularizer(), R.QualityRegularizer(),
            R.EikonalRegularizer()]
    t64 = R.regularizer_terms(net, s, regs)
    t32 = R.regularizer_terms(net, s, regs, dtype=torch.float32, frozen_jacobian=True)
    for k in t64:
        assert float(t32[k]) == pytest.approx(float(t64[k]), rel=1e-3, abs=1e-6), k


def test_fit_point_to_plane_distance():
    g = np.linspace(-2, 2, 21)  # spacing 0.2: the vertices at +-0.5 are off the grid
    xx, yy = np.meshgrid(g, g)
    plane = np.stack([xx.ravel(), yy.ravel(), np.full(xx.size, 0.5)], 1)  # z = 0.5
    normals = np.tile([0.0, 0.0, 1.0], (len(plane), 1))
    surf = R.ExactSurface(octahedron_net(0.5), structure(octahedron_mesh(0.5)))
    fit = R.FitRegularizer(target=plane, normals=normals, distance="plane", n_samples=0)
    # vertices (+-r,0,0), (0,+-r,0), (0,0,+-r): (z - 0.5)^2 whatever the nearest grid point
    assert float(fit(surf)) == pytest.approx((0.0 + 1.0 + 4 * 0.25) / 6, rel=1e-12)
    point = R.FitRegularizer(target=plane, n_samples=0)
    assert float(point(surf)) > float(fit(surf))  # also the offsets to the grid points
    no_normals = R.FitRegularizer(target=plane, distance="plane", n_samples=0)
    with pytest.warns(RuntimeWarning, match="normals"):
        assert float(no_normals(surf)) == pytest.approx(float(point(surf)))
    with pytest.raises(ValueError, match="distance"):
        R.FitRegularizer(distance="normal")


def test_cached_jacobian_inverse_is_exact_when_fresh_and_second_order_when_stale():
    surface = _surface_module()
    net = _small_net((10, 10), seed=3)
    mesh = surface.extract_mesh(_pl(net), BOX, mode="track", dtype=torch.float64, progress=False)
    s = structure(mesh)
    args = (s.constraints, s.vertex_patterns, BOX)
    inv = G.frozen_jacobian_inverse(net, *args)
    fresh = G.differentiable_vertices(net, s.vertices0, *args, jacobian_inverse=inv)
    assert torch.max(torch.abs(fresh.detach() - s.vertices0)) <= 1e-9
    # with the pattern fixed the constraints are affine in x, so a Newton step with the
    # current J is the exact re-solved vertex; the cached J's step is off at second order
    gen = torch.Generator().manual_seed(0)
    direction = [torch.randn(p.shape, generator=gen, dtype=p.dtype) for p in net.parameters()]
    base = [p.detach().clone() for p in net.parameters()]
    errors = []
    for eps in (1e-3, 2e-3):
        with torch.no_grad():
            for p, b0, d in zip(net.parameters(), base, direction):
                p.copy_(b0 + eps * d)
        exact = G.differentiable_vertices(net, s.vertices0, *args).detach()
        cached = G.differentiable_vertices(net, s.vertices0, *args, jacobian_inverse=inv).detach()
        ok = torch.isfinite(exact).all(1) & ((exact - s.vertices0).norm(dim=1) < 0.1)
        moved = float((exact - s.vertices0)[ok].norm(dim=1).max())
        errors.append(float((cached - exact)[ok].norm(dim=1).max()))
        assert errors[-1] < 0.2 * moved  # much closer than the first-order move itself
    assert 2.5 < errors[1] / errors[0] < 6  # second order: doubling eps ~quadruples the error


# ----------------------------------------------- regularizer values against closed forms (issue 15)
# Each value below is computed by hand from the shape, so a regularizer that drops its weights,
# sums over the wrong edges or forgets to scale by the box passes no more.

OUT_W = [1.0, 1.3, 0.8, 1.0, 1.6, 1.1]  # an irregular octahedron: unequal faces and gradients


def _octant_faces(r: float, a: list) -> tuple[np.ndarray, np.ndarray]:
    """Closed forms per face of ``sum a_i relu(+-x_i) = r`` (order of :func:`octahedron_mesh`):
    ``|grad f| = |(a_x, a_y, a_z)|`` and the area ``r^2 |grad f| / (2 a_x a_y a_z)`` of the
    triangle with corners ``r / a_i`` on the axes."""
    g, area = [], []
    for sx in (0, 1):
        for sy in (0, 1):
            for sz in (0, 1):
                ax, ay, az = a[sx], a[2 + sy], a[4 + sz]
                n = math.sqrt(ax**2 + ay**2 + az**2)
                g.append(n)
                area.append(r**2 * n / (2 * ax * ay * az))
    return np.array(g), np.array(area)


def test_eikonal_is_area_weighted_closed_form():
    r = 0.6
    net, mesh = octahedron_net(r, OUT_W), octahedron_mesh(r, OUT_W)
    surf = R.ExactSurface(net, structure(mesh))
    g, area = _octant_faces(r, OUT_W)
    assert torch.allclose(surf.polygon_areas.detach(), torch.tensor(area), rtol=1e-12)
    pen = (g - 1) ** 2
    weighted, plain = float((pen * area).sum() / area.sum()), float(pen.mean())
    assert abs(weighted - plain) > 1e-3  # the case tells the two apart
    assert float(R.EikonalRegularizer()(surf).detach()) == pytest.approx(weighted, rel=1e-12)
    assert float(R.EikonalRegularizer(area_weighted=False)(surf).detach()) == pytest.approx(plain, rel=1e-12)


def test_smoothness_counts_interior_edges_only_on_an_open_surface():
    """Two adjacent faces of the regular octahedron: one shared edge of length r sqrt 2 with
    normals at cos = 1/3, and four boundary edges that must not count."""
    r = 0.6
    net, full = octahedron_net(r), octahedron_mesh(r)
    two = FakeMesh(full.vertices, full.polygons[:2], full.vertex_constraints, full.vertex_patterns,
                   full.polygon_patterns[:2])
    s = structure(two)
    assert s.edges.shape[0] == 5 and s.interior_edges.numel() == 1
    surf = R.ExactSurface(net, s)
    want = r * math.sqrt(2) * (1 - 1 / 3)
    for normals in ("region", "positions"):
        assert float(R.SmoothnessRegularizer(normals=normals)(surf).detach()) == pytest.approx(want, rel=1e-12)
        norm = R.SmoothnessRegularizer(normals=normals, normalize=True)(surf)
        assert float(norm.detach()) == pytest.approx(2 / 3, rel=1e-12)


@pytest.mark.parametrize("half", [1.0, 2.0])
def test_quality_penalties_closed_form_and_edge_floor_scales_with_the_box(half):
    """Regular octahedron: 12 edges r sqrt 2, 24 angles of 60 degrees, 8 faces of quality
    4 pi A / L^2 = pi sqrt 3 / 9. The edge floor is ``min_edge`` times the box diagonal, so the
    same surface in a box twice as large has a floor twice as long."""
    r, min_edge, min_angle, min_q = 0.6, 0.5, 70.0, 0.7
    net, mesh = octahedron_net(r), octahedron_mesh(r)
    mesh.bounds = np.array([[-half, half]] * 3)
    surf = R.ExactSurface(net, structure(mesh))
    floor = min_edge * 2 * half * math.sqrt(3)
    edge = max(0.0, 1 - r * math.sqrt(2) / floor) ** 2
    angle = (1 - 60 / min_angle) ** 2
    poly = (1 - math.pi * math.sqrt(3) / 9 / min_q) ** 2
    reg = dict(min_edge=min_edge, min_angle_deg=min_angle, min_quality=min_q)
    only = {"edge": (1, 0, 0), "angle": (0, 1, 0), "polygon": (0, 0, 1)}
    want = {"edge": edge, "angle": angle, "polygon": poly}
    for key, (we, wa, wp) in only.items():
        q = R.QualityRegularizer(**reg, edge_weight=we, angle_weight=wa, polygon_weight=wp)(surf)
        assert float(q.detach()) == pytest.approx(want[key], rel=1e-10), key
    assert edge > 0.2  # the floor is longer than the edges in both boxes


# --------------------------------------------------------------- mini-batches of the surface


@pytest.mark.parametrize("seed", [0, 5])
def test_patch_matches_brute_force_and_the_whole_surface(seed):
    """A patch's cycles, shared edges and area are those of its polygons in the whole structure
    (brute force over the cycles), and its vertices and their gradients are the whole surface's."""
    pl = random_network(3, [12, 12], seed=seed)
    level = _median_level(pl, seed)
    s, _, _ = R._extract_structure(pl, BOX, {"level": level}, None)
    assert s is not None and s.n_polygons > 40
    gen = torch.Generator().manual_seed(seed)
    polys = torch.randperm(s.n_polygons, generator=gen)[: s.n_polygons // 3].sort().values
    part, ids = s.patch(polys)
    assert part.n_polygons == len(polys)
    assert torch.equal(ids[part.cycles], s.cycles[polys])
    assert torch.equal(part.vertices0, s.vertices0[ids]) and torch.equal(part.constraints, s.constraints[ids])
    chosen = set(polys.tolist())
    sides: dict[tuple[int, int], set[int]] = {}
    for p, (cyc, n) in enumerate(zip(s.cycles.tolist(), s.cycle_len.tolist())):
        for i in range(n):
            a, b = cyc[i], cyc[(i + 1) % n]
            sides.setdefault((min(a, b), max(a, b)), set()).add(p)
    shared = {e for e, ps in sides.items() if len(ps & chosen) == 2}
    got = {tuple(sorted(ids[e].tolist())) for e in part.edges[part.interior_edges]}
    assert got == shared and len(shared) > 0
    assert float(G.triangle_areas(part.vertices0, part.triangles).sum()) == pytest.approx(
        float(G.polygon_areas(s.vertices0, s.cycles)[polys].sum()), rel=1e-12)
    net = pl.to_module()
    bias = list(net.parameters())[-1]  # the output bias moves every vertex
    for frozen in (False, True):
        whole = R.ExactSurface(net, s, level=level, frozen_jacobian=frozen).vertices[ids]
        (g_whole,) = torch.autograd.grad((whole * whole).sum(), bias)
        piece = R.ExactSurface(net, s, level=level, frozen_jacobian=frozen, polygons=polys).vertices
        (g_piece,) = torch.autograd.grad((piece * piece).sum(), bias)
        assert torch.allclose(piece, whole, atol=1e-12)
        assert torch.allclose(g_piece, g_whole, rtol=1e-9, atol=1e-12)


def test_edge_sample_holds_its_edges_as_shared_ones():
    pl = random_network(3, [12, 12], seed=2)
    level = _median_level(pl, 2)
    s, _, _ = R._extract_structure(pl, BOX, {"level": level}, None)
    n_shared = len(s.interior_edges)
    for n in (1, 7, n_shared // 2):
        polys = s.edge_sample(n, torch.Generator().manual_seed(n))
        assert torch.equal(polys, torch.unique(polys))
        part, _ = s.patch(polys)
        assert len(part.interior_edges) >= n
    every = s.edge_sample(n_shared + 10)
    assert torch.equal(every, torch.unique(s.edge_polygons[s.interior_edges]))


def test_surface_batch_keeps_a_mean_term_and_rejects_bad_sizes():
    """On the octahedron every shared edge has the same dihedral angle (cos = 1/3), so the
    normalized smoothness of any patch is 2/3, as of the whole surface."""
    for n in (1, 2, 5, 12):
        cb = R.ExactRegularizerCallback([R.SmoothnessRegularizer(weight=1.0, normalize=True)], bounds=(-1, 1),
                                        surface_batch=n, seed=n)
        terms = cb.term(octahedron_network(0.5))
        assert cb.structure.n_polygons == 8
        assert float(terms["smooth"].detach()) == pytest.approx(2 / 3, rel=1e-12)
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="surface_batch"):
            R.ExactRegularizerCallback([R.SmoothnessRegularizer()], surface_batch=bad)
    # a surface with no shared edge (one equilateral triangle of side 0.2 sqrt 2: x + y + z = 0.5
    # in the box [0.1, 1]^3): the whole surface, not an empty patch
    cb = R.ExactRegularizerCallback([R.AreaRegularizer(weight=1.0)], bounds=[[0.1, 1], [0.1, 1], [0.1, 1]],
                                    surface_batch=4)
    terms = cb.term(octahedron_network(0.5))
    assert cb.structure.n_polygons == 1 and len(cb.structure.interior_edges) == 0
    assert float(terms["area"].detach()) == pytest.approx(math.sqrt(3) / 4 * (0.2 * math.sqrt(2)) ** 2, rel=1e-9)
