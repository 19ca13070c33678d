"""Track mode on networks with a simplex-grid encoder (issue 14), checked against independent answers.

The references are complex mode and surface mode (edge subdivision of the box by the encoder's
planes and the neurons: another algorithm on the same network), compared as sets of polygons, each
the set of its vertex coordinates rounded to 1e-8. Both subdivision modes also emit "polygons" of
one or two distinct vertices where three encoder planes meet in a line on the level set (grid
lines of a Kuhn triangulation lie on three planes); they have no area and are left out of the
comparison. Vertices are evaluated with the module itself, not with the graph track mode reads;
plane cells against brute-force sign vectors over every plane.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from nsr.extraction.encoder_tracking import EncoderCells
from nsr.extraction.surface import extract_mesh
from nsr.pl.encoding import GridMLP, SimplexGridEncoder, SimplexGridEncoding

BOX = [(-1.0, 1.0)] * 3


def _grid_net(seed: int, levels: int, rmin: int, rmax: int, width: int, include_input: bool,
              grid_bounds: tuple[float, float] = (-1.0, 1.0), d: int = 3) -> GridMLP:
    """A random float64 GridMLP (2 hidden layers) whose zero level set crosses the box."""
    torch.manual_seed(seed)
    net = GridMLP(in_dim=d, width=width, depth=2, n_levels=levels, min_resolution=rmin, max_resolution=rmax,
                  init_scale=1.0, include_input=include_input, bounds=grid_bounds).double()
    with torch.no_grad():
        net.layers[-1].bias -= net(torch.rand(2000, d, dtype=torch.float64) * 2 - 1).median()
    return net.requires_grad_(False)


def _polygons(mesh) -> list[frozenset]:
    v = np.round(mesh.vertices, 8)
    return [frozenset(map(tuple, v[p])) for p in mesh.polygons]


def _proper(mesh) -> set[frozenset]:
    """Polygons with at least three distinct vertices."""
    return {p for p in _polygons(mesh) if len(p) >= 3}


def _surface_centroids(mesh) -> np.ndarray:
    """A point inside every proper polygon of the level set (caps left out)."""
    keep = [p for p, cap, key in zip(mesh.polygons, mesh.polygon_is_cap, _polygons(mesh)) if not cap and len(key) >= 3]
    return np.array([mesh.vertices[p].mean(0) for p in keep])


def _track(net, box, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a fallback to surface mode warns: fail instead
        mesh = extract_mesh(net, box, mode="track", progress=False, **kw)
    assert mesh.stats["mode"] == "track"
    return mesh


def _max_abs_f_on_surface(net, mesh) -> float:
    used = np.unique(np.concatenate([p for p, cap in zip(mesh.polygons, mesh.polygon_is_cap) if not cap]))
    return float(net(torch.as_tensor(mesh.vertices[used])).abs().max())


# (seed, levels, min and max resolution, width, include_input, grid bounds, box)
CASES = [
    (0, 1, 3, 3, 8, False, (-1.0, 1.0), BOX),
    (1, 2, 2, 4, 8, True, (-1.0, 1.0), BOX),
    (3, 2, 2, 4, 8, False, (-0.8, 0.8), BOX),  # the box reaches past the grid: clamping planes
    (6, 2, 2, 3, 16, False, (-1.0, 1.0), [(-0.8, 0.9)] * 3),  # faces off the grid planes
]


def _case_id(c: object) -> str:
    return f"seed{c[0]}-L{c[1]}-w{c[4]}-inc{int(c[5])}" if isinstance(c, tuple) else f"close{c}"


@pytest.mark.parametrize(("case", "close"), [(CASES[0], False), (CASES[2], False)] + [(c, True) for c in CASES],
                         ids=_case_id)
def test_track_matches_complex_mode(case, close):
    seed, levels, rmin, rmax, width, inc, grid_bounds, box = case
    net = _grid_net(seed, levels, rmin, rmax, width, inc, grid_bounds)
    ref = extract_mesh(net, box, mode="complex", progress=False, close=close)
    # seeds inside every polygon of the reference: track mode must then find them all
    mesh = _track(net, box, close=close, seeds=_surface_centroids(ref))
    expected, got = _proper(ref), _proper(mesh)
    assert len(expected) > 100
    assert got == expected
    assert len(mesh.polygons) == len(got)  # no polygon of fewer than three vertices
    assert len(np.unique(np.round(mesh.vertices, 8), axis=0)) == len(mesh.vertices)  # welded
    assert _max_abs_f_on_surface(net, mesh) <= 1e-12
    if close:
        tm, tr = mesh.to_trimesh(), ref.to_trimesh()
        assert tm.is_watertight and tr.is_watertight
        assert tm.euler_number == tr.euler_number


def test_track_matches_surface_mode_closed():
    net = _grid_net(1, 2, 2, 4, 8, True)
    ref = extract_mesh(net, BOX, mode="surface", progress=False, close=True)
    mesh = _track(net, BOX, close=True, seeds=_surface_centroids(ref))
    assert _proper(mesh) == _proper(ref) and len(mesh.polygons) == len(_proper(ref))
    assert mesh.to_trimesh().is_watertight and mesh.to_trimesh().euler_number == ref.to_trimesh().euler_number
    assert mesh.stats["max_abs_f"] <= 1e-12 and _max_abs_f_on_surface(net, mesh) <= 1e-12


def test_track_mode_stops_at_the_memory_budget():
    """On a grid network too, track mode stops with a ``MemoryError`` under a budget below its
    polygons' need, and answers under one above it."""
    net = _grid_net(1, 2, 2, 4, 8, True)
    mesh = extract_mesh(net, BOX, mode="track", progress=False)
    need = mesh.stats["memory_estimate_mb"] * 2**20
    assert len(mesh.polygons) > 100 and need > 0
    with pytest.raises(MemoryError, match="track mode stopped"):
        extract_mesh(net, BOX, mode="track", progress=False, memory_limit=need / 2)
    again = extract_mesh(net, BOX, mode="track", progress=False, memory_limit=need * 1.01)
    assert len(again.polygons) == len(mesh.polygons)


def test_vertices_are_named_by_three_planes_through_them_that_meet_in_a_point():
    """``vertex_constraints``: box facets and encoder planes named at a vertex pass through it
    (brute force over ``encoder.planes``), and their normals are independent (grid planes meet
    three at a time in lines, so a vertex on such a line must not be named by those three)."""
    net = _grid_net(1, 2, 2, 4, 8, True)
    ref = extract_mesh(net, BOX, mode="complex", progress=False, close=True)
    mesh = _track(net, BOX, close=True, seeds=_surface_centroids(ref))
    enc = SimplexGridEncoder(net.encoding)
    normals, offsets = enc.planes(torch.full((3,), -1.0, dtype=torch.float64), torch.ones(3, dtype=torch.float64))
    n_box, n_planes = 6, len(offsets)
    x = mesh.vertices
    for v, cons in zip(x, mesh.vertex_constraints):
        rows = []
        for c in cons:
            if c < n_box:
                axis, side = divmod(int(c), 2)
                assert abs(v[axis] - (1.0 if side else -1.0)) < 1e-12
                rows.append(np.eye(3)[axis])
            elif c < n_box + n_planes:
                p = int(c) - n_box
                assert abs(float(normals[p] @ torch.as_tensor(v)) - float(offsets[p])) < 1e-12
                rows.append(normals[p].numpy())
        if rows:
            assert np.linalg.matrix_rank(np.array(rows), tol=1e-9) == len(rows)


def test_default_seeds_give_reference_polygons():
    """Grid seeds (as by default, on a coarser grid): every polygon found is a reference polygon."""
    net = _grid_net(0, 1, 3, 3, 8, False)
    ref = _proper(extract_mesh(net, BOX, mode="complex", progress=False))
    mesh = _track(net, BOX, seeds=24)
    got = _proper(mesh)
    assert len(got) > 0.9 * len(ref) and got <= ref


def _components(polygons: list[frozenset]) -> list[set[frozenset]]:
    """Connected components of polygons that share a vertex (union-find)."""
    parent = list(range(len(polygons)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    owner: dict = {}
    for i, p in enumerate(polygons):
        for v in p:
            j = owner.setdefault(v, i)
            parent[find(i)] = find(j)
    groups: dict[int, set[frozenset]] = {}
    for i, p in enumerate(polygons):
        groups.setdefault(find(i), set()).add(p)
    return sorted(groups.values(), key=len)


def test_a_component_without_seeds_is_missed_and_no_seed_falls_back():
    net = _grid_net(6, 1, 3, 3, 8, False)
    ref = extract_mesh(net, BOX, mode="complex", progress=False)
    comps = _components(sorted(_proper(ref), key=sorted))
    assert [len(c) for c in comps] == [16, 237]
    small = comps[0]
    seeds = np.array([np.mean(list(p), 0) for p in small])
    mesh = _track(net, BOX, seeds=seeds)
    assert _proper(mesh) == small  # exactly the seeded component, nothing of the others
    with pytest.warns(UserWarning, match="found no seed on the level set; falling back"):
        far = extract_mesh(net, BOX, mode="track", progress=False, seeds=np.zeros((0, 3)))
    assert far.stats["mode"] == "surface" and _proper(far) == _proper(ref)


def test_two_dimensional_encoder_networks_are_refused_by_track_mode():
    net = _grid_net(0, 1, 3, 3, 8, False, d=2)
    with pytest.raises(ValueError, match="needs a 3-D network"):
        extract_mesh(net, [(-1.0, 1.0)] * 2, mode="track", progress=False)


def test_cells_are_the_sign_vectors_of_the_planes():
    """Points share slabs exactly when they are on the same side of every plane; each cell's
    columns are the nearest plane below and above in each family (brute force over all planes)."""
    torch.manual_seed(0)
    enc = SimplexGridEncoder(SimplexGridEncoding(in_dim=3, n_levels=3, min_resolution=2, max_resolution=5,
                                                 bounds=(-0.7, 0.9)).double())
    bounds = torch.tensor([[-1.0, 1.0], [-0.5, 1.0], [-1.0, 0.2]], dtype=torch.float64)
    cells = EncoderCells(enc, bounds)
    normals, offsets = enc.planes(bounds[:, 0], bounds[:, 1])
    assert cells.n_planes == len(offsets)
    x = bounds[:, 0] + (bounds[:, 1] - bounds[:, 0]) * torch.rand(600, 3, dtype=torch.float64)
    signs = (x @ normals.T - offsets) > 0
    slabs = cells.slabs(x)
    same_slab = (slabs[:, None] == slabs[None]).all(2)
    same_sign = (signs[:, None] == signs[None]).all(2)
    assert torch.equal(same_slab, same_sign)
    g, ids = cells.columns(slabs)
    val = (x[:, :, None] * g[:, :3]).sum(1) + g[:, 3]
    assert bool((val > 0).all())
    dist = (x @ normals.T - offsets)  # (M, P)
    for k in range(0, 600, 23):
        for f in range(cells.n_families):
            members = torch.nonzero(cells.family == f).squeeze(1)
            below = members[dist[k, members] > 0]
            above = members[dist[k, members] < 0]
            want_below = int(below[dist[k, below].argmin()]) if len(below) else -1
            want_above = int(above[dist[k, above].argmax()]) if len(above) else -1
            assert ids[k, 2 * f].item() == want_below and ids[k, 2 * f + 1].item() == want_above


def test_polygons_of_many_edges_are_walked_whole():
    # the MLP reads the raw coordinates (include_input): f = z + sum_i relu(n_i . (x, y) - r) over 120
    # directions, so the level set holds the 120-gon on z = 0, cut by the grid's diagonal planes
    # into 6 polygons of more than 16 edges (the walk's per-edge buffers start 16 wide and grow)
    k, r = 120, 0.3
    net = GridMLP(in_dim=3, width=k + 1, depth=1, n_levels=1, min_resolution=1, max_resolution=1,
                  include_input=True).double().requires_grad_(False)
    # turned off the diagonals' symmetry: tangent lines symmetric about x = y would meet on that plane
    t = torch.arange(k, dtype=torch.float64) * (2 * np.pi / k) + 0.1234
    n_feat = net.encoding.out_dim - 3
    with torch.no_grad():
        w = torch.zeros(k + 1, n_feat + 3, dtype=torch.float64)
        w[:k, n_feat], w[:k, n_feat + 1], w[k, n_feat + 2] = torch.cos(t), torch.sin(t), 1.0
        net.layers[0].weight.copy_(w)
        net.layers[0].bias.fill_(-r)
        net.layers[0].bias[k] = 10.0
        net.layers[1].weight.fill_(1.0)
        net.layers[1].bias.fill_(-10.0)
    ref = extract_mesh(net, BOX, mode="surface", progress=False)
    mesh = _track(net, BOX, seeds=_surface_centroids(ref))
    assert _proper(mesh) == _proper(ref) and len(mesh.polygons) == len(_proper(ref))
    flat = [p for p in mesh.polygons if np.abs(mesh.vertices[p, 2]).max() < 1e-12]
    assert len(flat) == 6 and min(map(len, flat)) > 16
    assert sum(map(len, flat)) == k + 2 * 6 + 6  # the corners, 6 cut points shared by 2 sectors, the centre in each
    assert _max_abs_f_on_surface(net, mesh) <= 1e-12


def test_seed_grid_is_recorded():
    """The seed grid track mode used is in the stats: 64 by default, or the one asked for."""
    net = _grid_net(1, 2, 40, 80, 4, True)
    thin = [(-0.45, 0.45), (-0.05, 0.05), (-0.05, 0.05)]
    assert _track(net, thin).stats["seed_grid"] == 64
    assert _track(net, thin, seeds=70).stats["seed_grid"] == 70
