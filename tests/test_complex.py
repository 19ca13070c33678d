"""The exact complex, checked against brute force, invariants and the network itself."""

from __future__ import annotations

import itertools
import warnings

import numpy as np
import pytest
import torch

from nsr.extraction.complex import PolyhedralComplex, extract_complex
from nsr.extraction.guards import as_bounds
from nsr.networks import PLNetwork, load_network, random_network


def _constraint_values(net: PLNetwork, x: torch.Tensor, bounds: np.ndarray) -> torch.Tensor:
    """Values of every constraint (box facets, neurons, output) at points ``(M, D)``."""
    lo = torch.as_tensor(bounds[:, 0], dtype=x.dtype)
    hi = torch.as_tensor(bounds[:, 1], dtype=x.dtype)
    facets = torch.stack([x - lo, hi - x], 2).reshape(len(x), -1)  # 2d: x_d - lo_d, 2d+1: hi_d - x_d
    layers = [net.preactivations(x, layer) for layer in range(len(net.weights))]
    return torch.cat([facets, *layers], 1)


def _brute_force_vertices(net: PLNetwork, bounds: np.ndarray) -> np.ndarray:
    """Vertices of a one-hidden-layer network's complex: every D-subset of hyperplanes and
    box facets whose intersection point lies in the box."""
    d = net.in_dim
    w = net.weights[0].numpy()
    b = net.biases[0].numpy()
    rows = [np.eye(d)[i] for i in range(d) for _ in range(2)]
    rhs = [bounds[i, s] for i in range(d) for s in range(2)]
    planes = [(r, v) for r, v in zip(rows, rhs)] + [(w[j], -b[j]) for j in range(len(b))]
    points = []
    for subset in itertools.combinations(planes, d):
        a = np.stack([p[0] for p in subset])
        if abs(np.linalg.det(a)) < 1e-12:
            continue
        x = np.linalg.solve(a, np.array([p[1] for p in subset]))
        if np.all(x >= bounds[:, 0] - 1e-9) and np.all(x <= bounds[:, 1] + 1e-9):
            points.append(x)
    return np.array(points)


def _sorted_rows(a: np.ndarray) -> np.ndarray:
    return a[np.lexsort(a.T[::-1])]


@pytest.mark.parametrize("dim, width, seed", [(2, 12, 0), (2, 20, 1), (3, 10, 2), (3, 16, 3)])
def test_one_hidden_layer_matches_brute_force(dim, width, seed):
    net = random_network(dim, [width], seed=seed)
    bounds = as_bounds((-1.0, 1.0), dim)
    cx = extract_complex(net, bounds, progress=False)
    want = _brute_force_vertices(net, bounds)
    got = cx.vertices.numpy()
    assert len(got) == len(want)
    np.testing.assert_allclose(_sorted_rows(np.round(got, 9)), _sorted_rows(np.round(want, 9)), atol=1e-8)


@pytest.mark.parametrize("seed", range(4))
def test_one_dimensional_networks_exhaustively(seed):
    """In 1-D the vertices are the box ends and every zero of every neuron's pre-activation."""
    net = random_network(1, [6, 6, 6], seed=seed)
    cx = extract_complex(net, (-2.0, 2.0), progress=False)
    xs = torch.linspace(-2, 2, 400_001, dtype=torch.float64)[:, None]
    crossings = 0
    for layer in range(len(net.widths)):
        z = net.preactivations(xs, layer)
        crossings += int(((z[1:] > 0) != (z[:-1] > 0)).sum())
    assert cx.f_vector == [crossings + 2, crossings + 1]
    assert cx.euler_characteristic == 1


@pytest.mark.parametrize("dim, widths", [(1, [8, 8]), (2, [10, 10, 10]), (3, [12, 12]), (4, [8, 8])])
def test_euler_characteristic_of_box_complex_is_one(dim, widths):
    for seed in range(2):
        cx = extract_complex(random_network(dim, widths, seed=seed), (-1, 1), progress=False)
        assert cx.euler_characteristic == 1
        assert cx.stats["unpaired_face_keys"] == 0
        assert len(cx.f_vector) == dim + 1


@pytest.mark.parametrize("dim", [2, 3, 4])
def test_vertices_lie_on_exactly_their_d_zero_constraints(dim):
    net = random_network(dim, [10, 10], seed=7)
    bounds = as_bounds((-1, 1), dim)
    cx = extract_complex(net, bounds, progress=False)
    assert cx.vertex_zeros.shape == (len(cx.vertices), dim)
    # all D zero ids distinct
    assert (cx.vertex_zeros.sort(1).values.diff(dim=1) > 0).all()
    vals = _constraint_values(net, cx.vertices, bounds)
    on = vals.gather(1, cx.vertex_zeros.long())
    scale = 1 + vals.abs().max(1, keepdim=True).values
    assert (on.abs() / scale).max() < 1e-9
    # the others are non-zero with the recorded sign (output excluded: not processed)
    sv = cx.sign_vectors(0)[:, : vals.shape[1] - 1].double()
    nz = sv != 0
    assert (torch.sign(vals[:, :-1])[nz] == sv[nz]).all()


def test_edge_midpoints_have_the_edge_sign_vector():
    net = random_network(3, [10, 10], seed=11)
    bounds = as_bounds((-1, 1), 3)
    cx = extract_complex(net, bounds, progress=False)
    mid = cx.vertices[cx.edges].mean(1)
    vals = _constraint_values(net, mid, bounds)[:, :-1]
    sv = cx.sign_vectors(1)[:, :-1].double()
    nz = sv != 0
    assert (torch.sign(vals)[nz] == sv[nz]).all()
    assert (vals[~nz].abs() < 1e-9).all()
    assert ((sv == 0).sum(1) == 2).all()


@pytest.mark.parametrize("dim", [2, 3])
def test_sampled_points_have_the_activation_pattern_of_a_region(dim):
    net = random_network(dim, [8, 8, 8], seed=5)
    cx = extract_complex(net, (-1, 1), progress=False)
    regions = {tuple(r.tolist()) for r in cx.activation_patterns(dim)}
    assert len(regions) == cx.f_vector[-1]  # one pattern per region
    x = torch.rand(3000, dim, dtype=torch.float64) * 2 - 1
    pats = torch.cat([net.preactivations(x, layer) > 0 for layer in range(len(net.widths))], 1)
    seen = {tuple(p.tolist()) for p in pats}
    assert seen <= regions


def test_float32_and_float64_agree_on_generic_networks():
    net = random_network(3, [16, 16], seed=3)
    a = extract_complex(net, (-1, 1), dtype=torch.float32, progress=False)
    b = extract_complex(net, (-1, 1), dtype=torch.float64, progress=False)
    assert a.vertices.dtype == torch.float32
    assert a.f_vector == b.f_vector


def test_degenerate_positions_are_resolved_consistently():
    """Hyperplanes through box corners and through each other's intersection: vertices land
    exactly on later hyperplanes. The complex must stay valid."""
    w1 = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [1.0, -1.0]], dtype=torch.float64)
    b1 = torch.zeros(4, dtype=torch.float64)
    w2 = torch.tensor([[1.0, 1.0, -1.0, 0.5], [0.5, -1.0, 1.0, 1.0]], dtype=torch.float64)
    b2 = torch.tensor([0.0, -0.5], dtype=torch.float64)
    w3 = torch.ones(1, 2, dtype=torch.float64)
    b3 = torch.zeros(1, dtype=torch.float64)
    net = PLNetwork([w1, w2, w3], [b1, b2, b3])
    for dtype in (torch.float32, torch.float64):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cx = extract_complex(net, (-1, 1), dtype=dtype, progress=False)
        assert cx.euler_characteristic == 1
        assert (cx.edges >= 0).all() and (cx.edges < len(cx.vertices)).all()
        assert (cx.edges[:, 0] != cx.edges[:, 1]).all()


def test_level_set_vertices_are_on_the_level_set():
    net = random_network(3, [12, 12], seed=2)
    x = torch.rand(2000, 3, dtype=torch.float64) * 2 - 1
    net.biases[-1] -= net(x).median()
    cx = extract_complex(net, (-1, 1), progress=False)
    ls = cx.level_set(0.0)
    assert ls.f_vector[0] > 0
    assert net(ls.vertices).abs().max() < 1e-12
    # the surface cut by the box is a compact 2-manifold with boundary; its Euler
    # characteristic from the level-set cells must be the topology that surface mode's
    # triangle mesh (tiled, pruned, welded, fan-triangulated: another pipeline) has
    from nsr import extract_mesh

    tri = extract_mesh(net, (-1, 1), progress=False).to_trimesh()
    assert ls.euler_characteristic == tri.euler_number
    # (its Euler characteristic against known answers: test_known_f_vectors_of_plane_sections)
    mid = ls.vertices[ls.edges].mean(1)
    assert net(mid).abs().max() < 1e-12


def _plane_net(normal, offset) -> PLNetwork:
    """``relu(n.x + c + 10) - 10 = n.x + c`` on ``[-1, 1]^3`` (its hidden plane lies outside)."""
    w = [torch.tensor([normal], dtype=torch.float64), torch.tensor([[1.0]], dtype=torch.float64)]
    b = [torch.tensor([offset + 10.0], dtype=torch.float64), torch.tensor([-10.0], dtype=torch.float64)]
    return PLNetwork(w, b)


@pytest.mark.parametrize(
    "normal, offset, polygon",
    [([1, 1, 1], 0.0, 6), ([1, 0, 0], -0.3, 4), ([1, 1, 1], -2.5, 3), ([1, 2, 0], 0.2, 4), ([2, 1, 1], 1.5, 5)],
    ids=["hexagon", "square", "corner-triangle", "rectangle", "pentagon"],
)
def test_known_f_vectors_of_plane_sections(normal, offset, polygon):
    """A plane through the cube cuts one convex polygon (k vertices, k edges, 1 face): chi = 1."""
    ls = extract_complex(_plane_net(normal, offset), (-1, 1), progress=False).level_set(0.0)
    assert list(ls.f_vector) == [polygon, polygon, 1]
    assert ls.euler_characteristic == 1


def test_known_f_vector_of_a_box_cut_by_two_planes():
    """x = 0 and y = 0 cut [-1, 1]^3 into 4 columns: vertices {-1,0,1}^2 x {+-1} (18); edges 9
    along z and 12 along each of x and y (33); faces 8 across z and 6 across each of x and y
    (20); 4 cells: chi = 18 - 33 + 20 - 4 = 1, counted by hand, not by the code's sum."""
    w0 = torch.tensor([[1.0, 0, 0], [0, 1.0, 0]], dtype=torch.float64)
    net = PLNetwork([w0, torch.tensor([[1.0, 1.0]], dtype=torch.float64)],
                    [torch.zeros(2, dtype=torch.float64), torch.tensor([-5.0], dtype=torch.float64)])
    cx = extract_complex(net, (-1, 1), progress=False)
    assert list(cx.f_vector) == [18, 33, 20, 4]
    assert cx.euler_characteristic == 1


def test_bounds_are_validated():
    net = random_network(2, [4], seed=0)
    with pytest.raises(ValueError, match="lo"):
        extract_complex(net, (1, -1), progress=False)
    with pytest.raises(ValueError, match="shape"):
        extract_complex(net, np.zeros((3, 2)), progress=False)
    with pytest.raises(ValueError, match="NaN"):
        extract_complex(net, (float("nan"), 1), progress=False)
    with pytest.raises(ValueError, match="dtype"):
        extract_complex(net, (-1, 1), dtype=torch.int32, progress=False)


def test_save_and_load_round_trip(tmp_path):
    net = random_network(3, [8, 8], seed=1)
    cx = extract_complex(net, [[-1, 1], [-0.5, 0.5], [0, 2]], progress=False)
    path = cx.save(tmp_path / "c.npz")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    back = PolyhedralComplex.load(path)
    assert back.f_vector == cx.f_vector
    assert torch.equal(back.vertices, cx.vertices)
    np.testing.assert_array_equal(back.bounds, cx.bounds)
    assert torch.allclose(back.net(cx.vertices), net(cx.vertices))


def test_cuda_matches_cpu():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    net = random_network(3, [16, 16], seed=4)
    a = extract_complex(net, (-1, 1), device="cpu", progress=False)
    b = extract_complex(net, (-1, 1), device="cuda", progress=False)
    assert a.f_vector == b.f_vector


def test_shared_bunny_3x16_complex(shared):
    net = load_network(shared("models/bunny_3d_3x16.pt"))
    cx = extract_complex(net, (-0.5, 0.5), progress=False)
    assert cx.euler_characteristic == 1
    assert cx.stats["unpaired_face_keys"] == 0


def test_a_complex_too_large_for_the_memory_limit_stops_with_a_clear_error():
    net = random_network(3, [32, 32], seed=0)
    # 2 MB: the first layer's vertices fit by the count made before any cut (below that the complex
    # is refused at once, tested in test_surface.py); the cuts' own guard, which also counts the
    # buffers' spare room, stops them
    with pytest.raises(MemoryError, match=r"stopped after \d+ of 64 neurons"):
        extract_complex(net, (-1, 1), progress=False, memory_limit=2e6)
    from nsr.extraction.surface import extract_mesh

    with pytest.raises(MemoryError, match="memory_limit"):
        extract_mesh(net, (-1, 1), mode="surface", progress=False, memory_limit=2e5)


def test_incidences_of_regions_and_edges_in_2d():
    net = random_network(2, [10, 10], seed=4)
    cx = extract_complex(net, (-1, 1), progress=False)
    inc = cx.incidence(2)  # (edge, region) pairs
    per_edge = torch.bincount(inc[:, 0], minlength=len(cx.edges))
    on_box = (cx.edge_zeros.long() < 4).any(1)
    # an edge on the box bounds one region, every other edge two
    assert (per_edge[on_box] == 1).all() and (per_edge[~on_box] == 2).all()
    # every region is a polygon with at least three edges, and V - E + F = 1
    assert (torch.bincount(inc[:, 1]) >= 3).all()
    assert len(cx.vertices) - len(cx.edges) + int(inc[:, 1].max()) + 1 == 1


@pytest.mark.parametrize("n_bits", [1, 63, 64, 65, 200])
def test_pack_and_unpack_bits_round_trip(n_bits):
    from nsr.extraction.bits import n_words, pack_bits, unpack_bits

    gen = torch.Generator().manual_seed(n_bits)
    flags = torch.rand(41, n_bits, generator=gen) > 0.5
    flags[0] = True  # every bit set, the sign bit of each int64 word included
    words = pack_bits(flags, n_words(n_bits))
    assert torch.equal(unpack_bits(words, torch.arange(n_bits)), flags)
    ids = torch.randperm(n_bits, generator=gen)[: max(1, n_bits // 3)]
    assert torch.equal(unpack_bits(words, ids), flags[:, ids])


def test_unpack_bits_in_blocks_of_rows(monkeypatch):
    """Rows unpacked in blocks (a block of 3 rows here) give the bits unpacked at once, for every
    bit, a prefix of the bits, a run after the first bits and bits out of order."""
    import nsr.extraction.bits as bits_module

    gen = torch.Generator().manual_seed(0)
    flags = torch.rand(10, 130, generator=gen) > 0.5
    words = bits_module.pack_bits(flags, 3)
    monkeypatch.setattr(bits_module, "_UNPACK_BYTES", 3 * 64 * 3)
    for ids in (torch.arange(130), torch.arange(70), torch.arange(6, 130), torch.tensor([129, 0, 64, 63, 5])):
        assert torch.equal(bits_module.unpack_bits(words, ids), flags[:, ids])
    assert bits_module.unpack_bits(words[:0], torch.arange(130)).shape == (0, 130)
