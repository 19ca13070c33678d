"""Surface mode cuts each tile only by the encoder planes that cross it (nsr.extraction.encoder_split).

Independent answers: the loop that cuts every plane through every tile (the skeleton must be the same, so
the polygons are identical), complex mode, a brute-force count of the planes crossing each tile, and the
topology of a level set built to be a sphere.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from torch import Tensor

import nsr.extraction.subdivide as subdivide_module
from nsr.extraction.encoder_split import tile_slots
from nsr.extraction.subdivide import encoder_facets, subdivide
from nsr.extraction.surface import extract_mesh
from nsr.extraction.tiles import tile_grid
from nsr.pl import as_graph, trace
from nsr.pl.encoding import GridMLP

D64 = torch.float64


def _grid_graph(d: int, levels: int, rmin: int, rmax: int, seed: int = 0):
    """A random GridMLP (MLP 8x2, raw coordinates included) on [-1, 1]^d, its median shifted to 0."""
    torch.manual_seed(seed)
    net = GridMLP(in_dim=d, width=8, depth=2, n_levels=levels, min_resolution=rmin, max_resolution=rmax,
                  include_input=True, init_scale=0.3, bounds=(-1, 1)).double().eval()
    with torch.no_grad():
        x = torch.rand(4000, d, generator=torch.Generator().manual_seed(seed), dtype=D64) * 2 - 1
        net.layers[-1].bias -= float(net(x).median())
    return trace(net)


def _unique_rows(v: np.ndarray) -> np.ndarray:
    return np.unique(np.round(np.asarray(v, dtype=np.float64), 9), axis=0)


def _mesh(graph, cull: bool, monkeypatch: pytest.MonkeyPatch, **kw):
    monkeypatch.setattr(subdivide_module, "CULL_ENCODER_PLANES", cull)
    return extract_mesh(graph, (-1, 1), progress=False, **kw)


def _area(x: np.ndarray) -> float:
    return float(np.linalg.norm(np.cross(x, np.roll(x, -1, 0)).sum(0))) / 2


def _rotations(p: list[int]) -> set[tuple[int, ...]]:
    return {tuple(p[k:] + p[:k]) for k in range(len(p))}


def _assert_same_polygons(old, new) -> None:
    """The same cycles of vertex indices in the same order: each may start at another vertex (where a cycle
    starts follows the order its edges were found in, which differs between the two paths), and a polygon of
    zero area (its vertices on one point or line, left by planes through tile or box facets) may also be listed
    reversed, since its orientation is not defined."""
    assert len(new.polygons) == len(old.polygons)
    for p, q in zip(old.polygons, new.polygons):
        p, q = p.tolist(), q.tolist()
        if tuple(q) in _rotations(p):
            continue
        assert _area(old.vertices[p]) <= 1e-12
        assert tuple(q) in _rotations(p[::-1])


CASES = [(2, 2, 2, 5, 2), (2, 2, 3, 7, 4), (3, 1, 3, 3, 2), (3, 2, 2, 5, 3), (3, 2, 3, 6, 2)]


@pytest.mark.parametrize(("d", "levels", "rmin", "rmax", "tiles"), CASES)
def test_culled_split_gives_the_polygons_of_the_all_planes_loop(d, levels, rmin, rmax, tiles, monkeypatch):
    graph = _grid_graph(d, levels, rmin, rmax)
    close = d == 3 and rmax != 6  # closed (no cell pruning: caps need the cells below the level) and open
    old = _mesh(graph, False, monkeypatch, tiles=tiles, close=close)
    new = _mesh(graph, True, monkeypatch, tiles=tiles, close=close)
    np.testing.assert_array_equal(new.vertices, old.vertices)
    if d == 3:
        assert len(new.polygons) == len(old.polygons) > 4
        _assert_same_polygons(old, new)
        assert new.stats["watertight"] == old.stats["watertight"] == close
    else:
        assert len(new.polylines) == len(old.polylines) > 0
        assert [p.tolist() for p in new.polylines] == [p.tolist() for p in old.polylines]
    assert new.stats["encoder_pairs"] < old.stats["encoder_pairs"]  # planes were really skipped
    assert new.stats["encoder_vertices"] == old.stats["encoder_vertices"]
    assert new.stats["max_abs_f"] <= 1e-12


@pytest.mark.parametrize("d", [2, 3])
def test_pruning_encoder_cells_keeps_every_polygon(d, monkeypatch):
    """Cells of the encoder's planes whose output bounds miss the level are dropped before layer 0: the
    polygons are those of the unpruned split, and fewer vertices reach the neurons."""
    graph = _grid_graph(d, 2, 3, 6, seed=2)
    monkeypatch.setattr(subdivide_module, "PRUNE_ENCODER_CELLS", False)
    full = _mesh(graph, True, monkeypatch, tiles=2)
    monkeypatch.setattr(subdivide_module, "PRUNE_ENCODER_CELLS", True)
    pruned = _mesh(graph, True, monkeypatch, tiles=2)
    assert "regions_kept_encoder" in pruned.stats and "regions_kept_encoder" not in full.stats
    np.testing.assert_array_equal(pruned.vertices, full.vertices)
    if d == 3:
        assert len(pruned.polygons) > 4
        _assert_same_polygons(full, pruned)
    else:
        assert [p.tolist() for p in pruned.polylines] == [p.tolist() for p in full.polylines]
    assert pruned.stats["max_abs_f"] <= 1e-12


@pytest.mark.parametrize("d", [2, 3])
def test_tiles_in_batches_give_the_same_polygons(d, monkeypatch):
    """Surface mode splits a grid network's tiles batch by batch (bounded memory): one tile per batch gives the
    polygons of one batch for all. Vertices agree to rounding only: a layer's matrix product rounds a row
    differently with the number of rows (as with workers > 1)."""
    import nsr.extraction.encoder_split as encoder_split

    graph = _grid_graph(d, 2, 3, 6, seed=3)
    one = _mesh(graph, True, monkeypatch, tiles=3)
    monkeypatch.setattr(encoder_split, "ENCODER_BATCH_VERTICES", 1)
    many = _mesh(graph, True, monkeypatch, tiles=3)
    assert "encoder_batches" not in one.stats and many.stats["encoder_batches"] > 1
    np.testing.assert_allclose(many.vertices, one.vertices, rtol=0, atol=1e-14)
    if d == 3:
        assert len(one.polygons) > 4
        _assert_same_polygons(one, many)
    else:
        assert len(one.polylines) > 0
        assert sorted(map(tuple, _canonical_lines(many))) == sorted(map(tuple, _canonical_lines(one)))
    assert many.stats["encoder_pairs"] == one.stats["encoder_pairs"]
    assert many.stats["encoder_vertices"] == one.stats["encoder_vertices"]


def _canonical_lines(mesh) -> list[list[int]]:
    """Polylines as index lists read from their smaller end (a polyline has no start)."""
    return [min(p.tolist(), p.tolist()[::-1]) for p in mesh.polylines]


@pytest.mark.parametrize("d", [2, 3])
def test_culled_split_matches_complex_mode(d, monkeypatch):
    graph = _grid_graph(d, 2, 2, 4, seed=1)
    a = _mesh(graph, True, monkeypatch, mode="complex")
    b = _mesh(graph, True, monkeypatch, mode="surface", tiles=3)
    if d == 3:
        assert len(a.polygons) == len(b.polygons) > 4
        assert {r.tobytes() for r in a.polygon_patterns} == {r.tobytes() for r in b.polygon_patterns}
    else:
        assert len(a.polylines) == len(b.polylines) > 0
    np.testing.assert_array_equal(_unique_rows(a.vertices), _unique_rows(b.vertices))
    assert a.stats["max_abs_f"] <= 1e-12 and b.stats["max_abs_f"] <= 1e-12


def _sphere_like_grid_net(eps: float = 0.05) -> tuple[GridMLP, Tensor, Tensor]:
    """f(x) = sum_i relu(n_i . x - b_i) - 0.3 + eps * feature_0(x), n_i near the 8 cube diagonals, b_i small:
    a convex function whose slope along every ray from its minimum (>= 1) exceeds the perturbation's (< 0.4),
    so its level set is one sphere (Euler characteristic 2). The kink planes are in general position and off
    the grid's planes (multiples of 1/2 and their diagonals). (The grid's own lines where three of its planes meet,
    e.g. y = z = 0, still cross the surface: there two mesh vertices share a point, joined by an edge of length 0.)"""
    gen = torch.Generator().manual_seed(5)
    normals = torch.tensor(list(itertools.product([-1.0, 1.0], repeat=3)), dtype=D64)
    normals = normals + 0.1 * torch.rand(8, 3, generator=gen, dtype=D64)
    offsets = 0.05 * torch.rand(8, generator=gen, dtype=D64) + 0.02
    torch.manual_seed(5)
    net = GridMLP(in_dim=3, width=9, depth=2, n_levels=2, min_resolution=2, max_resolution=4, include_input=True,
                  init_scale=1.0, bounds=(-1, 1)).double().eval()
    f_enc = net.encoding.out_dim - 3
    with torch.no_grad():
        net.encoding.table.uniform_(-1, 1, generator=gen)
        l0, l1, l2 = net.layers
        for lin in (l0, l1, l2):
            lin.weight.zero_()
            lin.bias.zero_()
        l0.weight[:8, f_enc:] = normals
        l0.bias[:8] = -offsets
        l0.weight[8, 0] = 1.0
        l0.bias[8] = 10.0  # feature_0 + 10 > 0: the ReLU passes it
        l1.weight[0, :8] = 1.0
        l1.weight[1, 8] = 1.0
        l2.weight[0, 0] = 1.0
        l2.weight[0, 1] = eps
        l2.bias[0] = -0.3 - 10 * eps
    return net, normals, offsets


def test_closed_level_set_is_one_watertight_sphere(monkeypatch):
    net, normals, offsets = _sphere_like_grid_net()
    x = torch.rand(2000, 3, dtype=D64) * 2 - 1
    with torch.no_grad():
        want = torch.relu(x @ normals.T - offsets).sum(1) - 0.3 + 0.05 * net.encoding(x)[:, 0]
        assert torch.allclose(net(x), want, atol=1e-12)
    graph = trace(net)
    mesh = _mesh(graph, True, monkeypatch, tiles=3, close=True)
    assert mesh.stats["encoder_pairs"] < 27 * len(encoder_facets(graph, -torch.ones(3, dtype=D64),
                                                                 torch.ones(3, dtype=D64))[1])
    tm = mesh.to_trimesh()
    assert tm.is_watertight
    assert tm.euler_number == 2
    assert mesh.stats["max_abs_f"] <= 1e-12
    assert len(mesh.polygons) == len(_mesh(graph, False, monkeypatch, tiles=3, close=True).polygons)


@pytest.mark.parametrize("d", [2, 3])
def test_pairs_cut_are_the_brute_force_crossings(d):
    """Every (tile, plane) pair the split cuts is one where the plane meets the closed tile, and every such
    pair is cut: a per-corner count, tile by tile and plane by plane."""
    graph = _grid_graph(d, 2, 3, 5)
    bounds = np.array([[-1.0, 1.0]] * d)
    tlo, thi, _ = tile_grid(bounds, 3, D64, torch.device("cpu"))
    box = torch.as_tensor(bounds, dtype=D64)
    facets = encoder_facets(graph, box[:, 0], box[:, 1])
    normals, offsets = facets[0].tolist(), facets[1].tolist()
    brute = set()
    for t in range(len(tlo)):
        corners = list(itertools.product(*zip(tlo[t].tolist(), thi[t].tolist())))
        for p, (n, b) in enumerate(zip(normals, offsets)):
            z = [sum(ni * ci for ni, ci in zip(n, c)) - b for c in corners]
            if min(z) <= 1e-12 and max(z) >= -1e-12:
                brute.add((t, p))
    slots, _, n_pairs = tile_slots(tlo, thi, facets, 4, 2 * d)
    cut = {(t, int(p)) for t in range(len(tlo)) for p in slots[t] if p >= 0}
    assert cut == brute and int(n_pairs) == len(brute)
    sk, _ = subdivide(graph, tlo, thi, progress=False, facets=facets)
    assert sk.stats["encoder_pairs"] == len(brute) < len(tlo) * len(offsets)


@pytest.mark.parametrize("levels, finest", [(2, 12), (3, 16)])
def test_arrangement_size_estimate_is_near_the_encoder_splits_count(levels, finest):
    """The sampled estimate of the encoder arrangement's vertices against the count the complex's
    encoder split actually holds (brute force: the whole box cut by every plane)."""
    from nsr.extraction.encoder_split import encoder_arrangement_size
    from nsr.pl.layout import ConstraintLayout

    torch.manual_seed(0)
    net = GridMLP(in_dim=3, width=4, depth=1, n_levels=levels, min_resolution=4, max_resolution=finest,
                  include_input=True, init_scale=1.0).double().eval()
    graph = as_graph(net)
    lo, hi = -torch.ones(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
    facets = encoder_facets(graph, lo, hi)
    estimate, size = encoder_arrangement_size(lo, hi, facets, ConstraintLayout(3, graph.widths, len(facets[1])))
    sk, _ = subdivide(graph, lo[None], hi[None], level=None, progress=False, facets=facets, desc="complex")
    actual = sk.stats["encoder_vertices"]
    assert 0.5 * actual < estimate < 2.5 * actual, (estimate, actual)
    assert size > estimate * 3 * 8  # at least the coordinates


def test_complex_of_a_fine_grid_is_refused_before_any_cut(monkeypatch):
    """extract_complex estimates a grid network's encoder arrangement first and refuses, naming it, where
    it alone exceeds the memory limit; nothing is subdivided."""
    import nsr.extraction.complex as complex_module
    from nsr import extract_complex

    def no_subdivision(*args, **kwargs):
        raise AssertionError("subdivide ran")

    torch.manual_seed(0)
    net = GridMLP(in_dim=3, width=4, depth=1, n_levels=4, min_resolution=4, max_resolution=24, include_input=True)
    monkeypatch.setattr(complex_module, "subdivide", no_subdivision)
    with pytest.raises(MemoryError, match="arrangement of its encoder's .* planes alone"):
        extract_complex(net, (-1, 1), progress=False, memory_limit=50e6)  # ~1.2 M vertices need more
    with pytest.raises(AssertionError, match="subdivide ran"):  # under a large limit it goes on to cut
        extract_complex(net, (-1, 1), progress=False, memory_limit=64e9)
