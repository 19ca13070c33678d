"""Degenerate networks: many hyperplanes through one point or line, exact zeros everywhere.

Bias-free layers (what ``geometric_init`` starts from), small-integer weights, weights that
are multiples of 1/8, duplicated, opposite and zero-weight neurons put vertices exactly on
later hyperplanes, where the computed pre-activation is a rounded zero of either sign. The
checks use answers that do not come from the extraction itself: a complex subdividing a box
has Euler characteristic 1 (the box is contractible); every activation pattern met by random
points must be a region of the complex; the level-set mesh is closed away from the box; the
three modes agree polygon by polygon; and, on hand-built nets, the exact cells derived by hand.
"""

from __future__ import annotations

import warnings
from collections import Counter

import numpy as np
import pytest
import torch

import nsr.extraction.skeleton as cxmod  # the split kernel reads positive_side from its own module
from nsr import extract_complex, extract_mesh
from nsr.networks import PLNetwork, ReLUMLP, as_network

F64 = torch.float64


def _net(weights: list[torch.Tensor], biases: list[torch.Tensor]) -> PLNetwork:
    return PLNetwork([w.to(F64) for w in weights], [b.to(F64) for b in biases])


def _bias_free(dim: int, widths: list[int], seed: int, quantum: float | None = None, ints: bool = False
               ) -> PLNetwork:
    """Hidden biases all zero (every first-layer hyperplane through the origin, every later
    bent hyperplane a cone from it); weights random, small integers, or multiples of ``quantum``."""
    g = torch.Generator().manual_seed(seed)
    dims = [dim, *widths, 1]
    ws, bs = [], []
    for a, b in zip(dims[:-1], dims[1:]):
        if ints:
            w = torch.randint(-3, 4, (b, a), generator=g).to(F64)
        else:
            w = (torch.rand(b, a, generator=g, dtype=F64) * 2 - 1) / a**0.5
            if quantum:
                w = torch.round(w / quantum) * quantum
        ws.append(w)
        bs.append(torch.zeros(b, dtype=F64))
    return _net(ws, bs)


def _geometric(dim: int, width: int, depth: int, seed: int) -> PLNetwork:
    torch.manual_seed(seed)
    return as_network(ReLUMLP(dim, width, depth, geometric_init=True, radius=0.3)).to(dtype=F64)


def _with_copies(net: PLNetwork) -> PLNetwork:
    """First layer plus a duplicate of neuron 0, the opposite of neuron 1, and a zero neuron;
    the next layer reads them with weight 0 so the function is unchanged."""
    w0, b0 = net.weights[0], net.biases[0]
    extra_w = torch.stack([w0[0], -w0[1], torch.zeros_like(w0[0])])
    extra_b = torch.stack([b0[0], -b0[1], torch.zeros_like(b0[0])])
    w1 = torch.cat([net.weights[1], torch.zeros(net.weights[1].shape[0], 3, dtype=F64)], 1)
    return _net([torch.cat([w0, extra_w]), w1, *net.weights[2:]], [torch.cat([b0, extra_b]), *net.biases[1:]])


def _median_level(net: PLNetwork, box: float) -> float:
    """A level the network crosses inside the box (the median of f at fixed points)."""
    g = torch.Generator().manual_seed(1)
    x = (torch.rand(4000, net.in_dim, generator=g, dtype=F64) * 2 - 1) * box
    return float(net(x).median())


def _quiet(fn, *args, **kw):
    """Call and return ``(result, warnings)``."""
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        out = fn(*args, **kw)
    return out, [str(x.message) for x in w]


CASES = {
    "bias-free 2D": (lambda: _bias_free(2, [10, 10], 0), 1.0),
    "bias-free 3D": (lambda: _bias_free(3, [8, 8], 1), 1.0),
    "bias-free 4D": (lambda: _bias_free(4, [6, 5], 2), 1.0),
    "integer weights 3D": (lambda: _bias_free(3, [8, 6], 3, ints=True), 1.0),
    "eighths 3D": (lambda: _bias_free(3, [8, 8], 4, quantum=1 / 8), 1.0),
    "eighths 2D": (lambda: _bias_free(2, [12, 8], 5, quantum=1 / 8), 1.0),
    "copies 3D": (lambda: _with_copies(_bias_free(3, [8, 6], 6)), 1.0),
    "copies 4D": (lambda: _with_copies(_bias_free(4, [5, 4], 7, quantum=1 / 8)), 1.0),
    "geometric init 3D": (lambda: _geometric(3, 12, 3, 0), 0.5),  # the issue's network
    "geometric init 2D": (lambda: _geometric(2, 16, 4, 1), 0.5),
}


def _sample_patterns(net: PLNetwork, box: float, n: int = 20000, margin: float = 1e-9) -> torch.Tensor:
    """Activation patterns (neuron > 0) at random points of the box whose every
    pre-activation is at least ``margin`` from zero: interior points of full regions."""
    g = torch.Generator().manual_seed(2)
    x = (torch.rand(n, net.in_dim, generator=g, dtype=F64) * 2 - 1) * box
    z = torch.cat([net.preactivations(x, k) for k in range(len(net.weights) - 1)], 1)
    ok = (z.abs() > margin).all(1)
    return (z[ok] > 0).unique(dim=0)


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_degenerate_complex_is_valid(name, dtype):
    make, box = CASES[name]
    net = make()
    cx, warned = _quiet(extract_complex, net, (-box, box), progress=False, dtype=dtype)
    assert cx.euler_characteristic == 1, cx.f_vector  # a subdivided box is contractible
    assert cx.stats["unpaired_face_keys"] == 0
    if dtype == "float64":
        assert not warned, warned
    else:  # float32 may truthfully say that it cannot tell rounded zeros from small values
        assert all("float32 cannot tell them apart" in w for w in warned), warned
    # every edge is the segment between two distinct vertex ids
    assert (cx.edges[:, 0] != cx.edges[:, 1]).all()
    if dtype == "float64":
        # every region met by random points is a region of the complex (the complex may hold
        # more: zero-volume cells of the perturbation)
        have = {tuple(r) for r in cx.activation_patterns(cx.dim).tolist()}
        seen = _sample_patterns(net, box)
        missing = [p for p in seen.tolist() if tuple(p) not in have]
        assert not missing, f"{len(missing)} of {len(seen)} sampled regions are not cells of the complex"


def _polygon_keys(mesh) -> Counter:
    """Each polygon as the set of its distinct vertex positions (rounded to 1e-9)."""
    x = np.round(mesh.vertices, 9) + 0.0
    return Counter(frozenset(map(tuple, x[p])) for p in mesh.polygons)


def _open_edges_off_the_box(mesh, box: float) -> int:
    """Polygon edges used by one polygon only whose endpoints are not both on one box facet."""
    count = Counter()
    for p in mesh.polygons:
        for a, b in zip(p, np.roll(p, -1)):
            if a != b:
                count[(min(a, b), max(a, b))] += 1
    bad = 0
    for (a, b), k in count.items():
        if k == 1:
            on = (np.abs(np.abs(mesh.vertices[[a, b]]) - box) < 1e-12)
            bad += not bool((on[0] & on[1]).any())
    return bad


@pytest.mark.parametrize("name", [n for n in CASES if "3D" in n])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_degenerate_meshes_agree_in_every_mode(name, dtype):
    make, box = CASES[name]
    net = make()
    level = _median_level(net, box)
    scale = 1.0 + float(net(torch.rand(1000, 3, dtype=F64) * 2 * box - box).abs().max())
    meshes = {}
    for mode in ("complex", "surface", "track"):
        mesh, warned = _quiet(extract_mesh, net, (-box, box), mode=mode, level=level, progress=False, dtype=dtype)
        assert not [w for w in warned if "other than twice" in w], warned
        assert mesh.stats.get("unpaired_face_keys", 0) == 0
        assert mesh.stats["n_polygons"] > 0
        assert mesh.stats["max_abs_f"] < (1e-13 if dtype == "float64" else 1e-6) * scale
        assert _open_edges_off_the_box(mesh, box) == 0, mode  # closed wherever it does not touch the box
        meshes[mode] = mesh
    if dtype == "float64":
        keys = {m: _polygon_keys(mesh) for m, mesh in meshes.items()}
        assert keys["complex"] == keys["surface"] == keys["track"]
    else:  # float32: zero-area polygons of the perturbation may differ; the area may not
        areas = [float(m.to_trimesh().area) for m in meshes.values()]
        assert max(areas) - min(areas) < 1e-4 * max(areas)


def test_issue_network_gives_476_polygons_in_every_mode():
    """The issue's example: before the fix complex mode gave 456 polygons with holes and
    Euler characteristic 286; surface and track mode 476."""
    net = _geometric(3, 12, 3, 0)
    counts = {m: extract_mesh(net, (-0.5, 0.5), mode=m, progress=False).stats["n_polygons"]
              for m in ("complex", "surface", "track")}
    assert counts == {"complex": 476, "surface": 476, "track": 476}


def test_three_lines_through_a_point_have_the_hand_derived_cells():
    """Lines x = 0, y = 0 and x + y/2 = 0 through the origin of [-1, 1]^2.

    The first two cut at t = 1/2 exactly, so the origin is a vertex with exact coordinates and
    the third neuron is exactly 0 there. An exact zero counts as positive: the third line is
    moved an infinitesimal amount to its negative side, so besides splitting the quadrants
    (x<0, y>0) and (x>0, y<0) it cuts a tiny triangle off the corner of the quadrant
    (x<0, y<0) at the origin, on the third neuron's positive side. By hand: vertices 4
    corners + 4 boundary points of the axes + the origin + 2 boundary points of the third line
    + 2 points on the edges from the origin to (-1, 0) and (0, -1) = 13; regions 4 + 2 + 1 = 7;
    edges V + F - 1 = 19. Counting the zero as negative instead would put the triangle in the
    quadrant (x>0, y>0) with the pattern (+, +, -) (the same f-vector by symmetry, hence the
    pattern check).
    """
    net = _net([torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.5]]), torch.tensor([[1.0, 1.0, 1.0]])],
               [torch.zeros(3), torch.tensor([0.0])])
    cx = extract_complex(net, (-1, 1), progress=False)
    assert cx.f_vector == [13, 19, 7]
    got = {tuple(int(v) for v in p) for p in cx.activation_patterns(2).tolist()}
    true_regions = {(1, 1, 1), (0, 0, 0), (0, 1, 1), (0, 1, 0), (1, 0, 1), (1, 0, 0)}
    assert got == true_regions | {(0, 0, 1)}


def test_four_planes_through_a_point_in_3d_have_the_hand_derived_region_patterns():
    """Planes x = 0, y = 0, z = 0 and x + y + z = 0 through the origin of [-1, 1]^3.

    The octants other than (+,+,+) and (-,-,-) are split by the fourth plane; with the
    fourth neuron's exact zero at the origin counted positive, the plane moves to its
    negative side and also cuts a corner off the octant (-,-,-) (pattern (0,0,0,1)), while
    (+,+,+) stays whole. Regions: 2 + 6 * 2 + 1 = 15."""
    w = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0], [1.0, 1.0, 1.0]])
    net = _net([w, torch.ones(1, 4)], [torch.zeros(4), torch.tensor([0.0])])
    cx = extract_complex(net, (-1, 1), progress=False)
    assert cx.euler_characteristic == 1
    got = {tuple(int(v) for v in p) for p in cx.activation_patterns(3).tolist()}
    octants = [(a, b, c) for a in (0, 1) for b in (0, 1) for c in (0, 1)]
    want = {(1, 1, 1, 1), (0, 0, 0, 0), (0, 0, 0, 1)}
    want |= {o + (s,) for o in octants if 0 < sum(o) < 3 for s in (0, 1)}
    assert got == want


def _stripe_network() -> PLNetwork:
    """2-D: 10 vertical and 10 horizontal lines at -0.9, -0.7, ..., 0.9 (hidden layer 1), two
    hidden layers that pass everything through (every pre-activation >= 1: no cut), and the
    output f = x - 0.95, whose level set is the line x = 0.95."""
    ticks = torch.arange(-0.9, 0.95, 0.2, dtype=F64)
    ex, ey = torch.tensor([1.0, 0.0], dtype=F64), torch.tensor([0.0, 1.0], dtype=F64)
    w0 = torch.cat([ex.expand(10, 2), ey.expand(10, 2), ex[None]])
    b0 = torch.cat([-ticks, -ticks, torch.tensor([2.0], dtype=F64)])  # last: x + 2 > 0 in the box
    eye = torch.eye(21, dtype=F64)
    w3 = torch.zeros(1, 21, dtype=F64)
    w3[0, 20] = 1.0
    return _net([w0, eye, eye, w3], [b0, torch.ones(21), torch.ones(21), torch.tensor([-4.95], dtype=F64)])


def test_region_pruning_drops_the_regions_far_from_the_level_set():
    """In surface mode with 2x2 tiles, tile pruning keeps the two tiles x >= 0 (the level set
    x = 0.95 is there). Before hidden layer 2 their regions are the grid cells: 6 columns
    (x in [0, .1], [.1, .3], ..., [.9, 1]) times 12 rows (the 10 horizontal lines and the tile
    border y = 0), 72 regions, of which the 12 of the last column reach the level set. A
    pruning that kept every region would report 72."""
    net = _stripe_network()
    mesh = extract_mesh(net, (-1, 1), mode="surface", tiles=2, progress=False)
    assert mesh.stats["regions_kept_layer2"] == 12
    xs = np.concatenate([mesh.vertices[p][:, 0] for p in mesh.polylines]) if mesh.polylines else mesh.vertices[:, 0]
    np.testing.assert_allclose(xs, 0.95, atol=1e-12)
    whole = extract_mesh(net, (-1, 1), mode="complex", progress=False)
    assert len(whole.vertices) == len(mesh.vertices)


def test_unpaired_face_keys_is_zero_on_random_nets_in_every_mode():
    from nsr.networks import random_network

    net = random_network(3, [16, 16, 16], seed=3)
    level = _median_level(net, 1.0)
    for mode in ("complex", "surface", "track"):
        mesh, warned = _quiet(extract_mesh, net, (-1, 1), mode=mode, level=level, progress=False)
        assert mesh.stats.get("unpaired_face_keys", 0) == 0, mode
        assert not warned, warned
    cx = extract_complex(net, (-1, 1), progress=False)
    assert cx.stats["unpaired_face_keys"] == 0
    assert cx.refine(level).stats["unpaired_face_keys"] == 0


@pytest.mark.parametrize("mode", ["complex", "surface"])
def test_unpaired_face_keys_catches_an_inconsistent_sign_rule(monkeypatch, mode):
    """Random signs for exact zeros break the one-cut-per-face property: the health signal
    must count it and warn."""
    gen = torch.Generator().manual_seed(0)

    def coin(z, tol=0.0):
        flip = torch.rand(z.shape, generator=gen, dtype=torch.float64) < 0.5
        return torch.where(z.abs() <= tol, flip.to(z.device), z > 0)

    monkeypatch.setattr(cxmod, "positive_side", coin)
    net = _geometric(3, 12, 3, 0)
    with pytest.warns(UserWarning, match="cut other than twice"):
        mesh = extract_mesh(net, (-0.5, 0.5), mode=mode, progress=False)
    assert mesh.stats["unpaired_face_keys"] > 0
