"""Surface mode on nested simplex grids, the simplices written down (nsr.extraction.kuhn).

Checked against independent answers: the geometry of the Kuhn simplices (volumes, facets through
the corners), brute-force sides of every plane, the box-tile surface mode and complex mode (which
cut the encoder's planes one by one) on random networks, and the closed-form area and Euler
characteristic of an octahedron computed through a grid encoding.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from scipy.spatial import cKDTree

from nsr.extraction import kuhn
from nsr.extraction.bits import unpack_bits
from nsr.extraction.kuhn import kuhn_grid, range_bits, simplex_skeleton, simplex_tables
from nsr.extraction.subdivide import encoder_facets
from nsr.extraction.surface import extract_mesh
from nsr.pl import as_graph
from nsr.pl.encoding import GridMLP
from nsr.pl.layout import ConstraintLayout


def _graph(net: torch.nn.Module, box: np.ndarray):
    g = as_graph(net).to(dtype=torch.float64)
    bt = torch.as_tensor(box, dtype=torch.float64)
    facets = encoder_facets(g, bt[:, 0], bt[:, 1])
    return g, facets, kuhn_grid(g, box, facets)


def _grid_net(d: int, seed: int, n_levels: int = 2, min_res: int = 2, depth: int = 2, width: int = 6,
              include_input: bool = True) -> GridMLP:
    torch.manual_seed(seed)
    return GridMLP(in_dim=d, width=width, depth=depth, n_levels=n_levels, min_resolution=min_res,
                   max_resolution=min_res * 2 ** (n_levels - 1), features=2, init_scale=1.0,
                   include_input=include_input).double()


@pytest.mark.parametrize("d", [2, 3])
def test_simplices_tile_the_cube_and_their_facets_are_kuhn_planes(d):
    t = simplex_tables(d)
    corners = t.steps.double()  # (S, D+1, D) in the unit cube
    # every simplex has volume 1/D!, and they are D! of them: they tile the cube
    vol = torch.linalg.det(corners[:, 1:] - corners[:, :1]).abs() / math.factorial(d)
    assert len(corners) == math.factorial(d)
    assert torch.allclose(vol, torch.full_like(vol, 1 / math.factorial(d)))
    # a random point of the cube lies in exactly one simplex (barycentric coordinates all >= 0)
    p = torch.rand(500, d, dtype=torch.float64)
    inside = 0
    for s in range(len(corners)):
        m = torch.cat([corners[s].T, torch.ones(1, d + 1, dtype=torch.float64)])
        lam = torch.linalg.solve(m, torch.cat([p.T, torch.ones(1, len(p), dtype=torch.float64)]))
        inside = inside + (lam >= -1e-12).all(0).long()
    assert bool((inside == 1).all())
    # facet j passes through every corner but corner j, which lies on its inside
    pairs = [(i, j) for i in range(d) for j in range(i + 1, d)]
    for s in range(len(corners)):
        for j in range(d + 1):
            f = int(t.family[s, j])
            normal = torch.zeros(d, dtype=torch.float64)
            if f < d:
                normal[f] = 1
            else:
                a, b = pairs[f - d]
                normal[a], normal[b] = 1, -1
            assert torch.equal(normal.long(), t.coef[s, j])
            value = corners[s] @ normal - float(t.const[s, j])  # cube at c = 0
            others = [m for m in range(d + 1) if m != j]
            assert torch.all(value[others] == 0)
            assert (value[j] > 0) == bool(t.inside[s, j])


def test_range_bits_against_a_loop():
    g = torch.Generator().manual_seed(0)
    start = torch.randint(0, 200, (300,), generator=g)
    count = torch.randint(0, 100, (300,), generator=g)
    bits = unpack_bits(range_bits(start, count, 5), torch.arange(320))
    want = torch.zeros(300, 320, dtype=torch.bool)
    for r in range(300):
        want[r, int(start[r]) : int(start[r] + count[r])] = True
    assert torch.equal(bits, want)


def test_kuhn_grid_only_for_nested_levels_on_a_box_of_cells():
    nested = GridMLP(in_dim=3, width=4, depth=1, n_levels=3, min_resolution=2, max_resolution=8)
    box = np.array([[-1.0, 1.0]] * 3)
    assert _graph(nested, box)[2] is not None
    assert _graph(nested, np.array([[-0.75, 0.25], [-1.0, 1.0], [0.0, 0.5]]))[2] is not None
    assert _graph(nested, np.array([[-0.7, 0.25], [-1.0, 1.0], [0.0, 0.5]]))[2] is None  # not on a cell
    assert _graph(nested, np.array([[-1.25, 1.0], [-1.0, 1.0], [-1.0, 1.0]]))[2] is None  # past the grid
    overlaid = GridMLP(in_dim=3, width=4, depth=1, n_levels=3, min_resolution=2, max_resolution=9)
    assert _graph(overlaid, box)[2] is None
    plain = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 1)).double()
    assert _graph(plain, box)[2] is None


@pytest.mark.parametrize("d", [2, 3])
def test_skeleton_signs_and_zeros_match_brute_force(d):
    net = _grid_net(d, 0, n_levels=2, min_res=2)
    box = np.array([[-1.0, 0.5]] + [[-1.0, 1.0]] * (d - 1))
    g, (normals, offsets, _), kg = _graph(net, box)
    layout = ConstraintLayout(d, g.widths, len(offsets))
    cells = torch.cartesian_prod(*[torch.arange(int(c)) for c in kg.count]).reshape(-1, d) + kg.first
    n_s = math.factorial(d)
    cells, perm = cells.repeat_interleave(n_s, 0), torch.arange(n_s).repeat(len(cells))
    sk = simplex_skeleton(kg, cells, perm, layout)
    x = sk.x.t.view(len(cells), d + 1, d)
    centroid = x.mean(1)
    value = centroid @ normals.T - offsets  # (M, P): never zero at a centroid
    assert bool((value.abs() > 1e-9).all())
    ids = torch.arange(layout.facet(0), layout.facet(0) + len(offsets))
    assert torch.equal(unpack_bits(sk.tile_bits, ids), value > 0)
    assert bool(unpack_bits(sk.tile_bits, torch.arange(2 * d)).all())  # inside every box facet
    # a corner's zeros are the planes (or box facets) through it that bound its simplex; its signs elsewhere
    # are its simplex's
    vz = sk.vzeros.t.long()
    at = x.reshape(-1, d) @ normals.T - offsets
    enc = vz >= 2 * d
    assert bool((at.gather(1, (vz - 2 * d).clamp(min=0)).abs()[enc] < 1e-12).all())
    xs = x.reshape(-1, d)
    on_box = torch.cat([xs == torch.as_tensor(box[:, 0]), xs == torch.as_tensor(box[:, 1])], 1)
    axis_side = torch.where(vz < 2 * d, (vz % 2) * d + torch.div(vz, 2, rounding_mode="floor"), 0)
    assert bool(on_box.gather(1, axis_side)[~enc].all())
    corner_bits = unpack_bits(sk.vpos.t, ids)
    tile_bits = unpack_bits(sk.tile_bits, ids).repeat_interleave(d + 1, 0)
    zero = torch.zeros_like(corner_bits)
    zero.scatter_(1, (vz - 2 * d).clamp(min=0), enc)
    assert torch.equal(corner_bits, tile_bits & ~zero)


def _centroid_set(mesh) -> np.ndarray:
    return np.array([mesh.vertices[p].mean(0) for p in mesh.polygons])


@pytest.mark.parametrize("seed", range(8))
def test_simplex_tiles_give_the_polygons_of_box_tiles_and_complex_mode(seed, monkeypatch):
    if seed % 2:  # batches of a few simplices: slabs split across batches, tiles renumbered
        monkeypatch.setattr(kuhn, "SIMPLEX_BATCH", 7)
    if seed >= 4:  # regions pruned from layer 1, as for wide layers
        monkeypatch.setattr(kuhn, "REGION_WIDTH", 1)
    d = 2 if seed % 4 == 0 else 3
    net = _grid_net(d, seed, n_levels=1 + seed % 3, min_res=1 + seed % 2, depth=1 + seed % 3,
                    include_input=bool(seed % 2))
    n = max(net.encoding.resolutions)
    hi = 1.0 if seed % 3 else -1 + 2 * max(1, n - 1) / n  # sometimes a sub-box of cells
    box = np.array([[-1.0, hi]] * d)
    x = torch.rand(20_000, d, dtype=torch.float64) * torch.tensor(hi + 1.0) - 1
    with torch.no_grad():
        level = float(net(x).quantile(0.4))
    close = d == 3 and seed % 3 == 1  # caps where the output is below the level: box faces are walls too
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        simplices = extract_mesh(net, box, level=level, close=close, progress=False)
        tiles = extract_mesh(net, box, level=level, close=close, tiles=2, progress=False)
        whole = extract_mesh(net, box, level=level, close=close, mode="complex", progress=False)
    if close:
        assert simplices.to_trimesh().is_watertight and int(simplices.polygon_is_cap.sum()) > 0
    assert "kuhn_simplices_kept" in simplices.stats and "kuhn_simplices_kept" not in tiles.stats
    if seed >= 4 and not close and len(net.layers) > 2:
        assert "regions_kept_layer1" in simplices.stats
    assert simplices.stats["unpaired_face_keys"] == 0
    assert simplices.stats["kuhn_batches"] == -(-simplices.stats["kuhn_simplices_kept"] // kuhn.SIMPLEX_BATCH)
    assert simplices.stats["max_abs_f"] <= 1e-12
    for ref in (tiles, whole):
        assert len(simplices.vertices) == len(ref.vertices)
        if d == 2:
            assert sorted(map(len, simplices.polylines)) == sorted(map(len, ref.polylines))
            continue
        assert len(simplices.polygons) == len(ref.polygons)
        if len(ref.polygons):
            gap = cKDTree(_centroid_set(ref)).query(_centroid_set(simplices))[0].max()
            assert gap < 1e-9
            a, b = simplices.to_trimesh(), ref.to_trimesh()
            assert a.is_watertight == b.is_watertight and a.euler_number == b.euler_number
            assert abs(a.area - b.area) < 1e-9


def test_octahedron_through_a_grid_encoding_has_its_closed_form():
    # features = the coordinates themselves (barycentric interpolation of a linear function is exact),
    # then |x| + |y| + |z| - r: the exact surface is the octahedron, cut by the grid's planes
    net = GridMLP(in_dim=3, width=6, depth=1, n_levels=2, min_resolution=2, max_resolution=4, features=3,
                  include_input=False).double()
    enc = net.encoding
    with torch.no_grad():
        for level, n in enumerate(enc.resolutions):
            v = torch.cartesian_prod(*[torch.arange(n + 1)] * 3)
            enc.table[enc._rows(v, level)] = (enc.lo + (enc.hi - enc.lo) * v / n).double() / 2
        eye = torch.eye(3, dtype=torch.float64)
        net.layers[0].weight.copy_(torch.cat([torch.cat([eye, eye], 1), -torch.cat([eye, eye], 1)]))
        net.layers[0].bias.zero_()
        net.layers[1].weight.fill_(1.0)
        net.layers[1].bias.fill_(-0.7)
    mesh = extract_mesh(net, (-1, 1), progress=False)
    assert "kuhn_simplices_kept" in mesh.stats
    tm = mesh.to_trimesh()
    assert tm.is_watertight and tm.euler_number == 2
    assert abs(tm.area - 4 * math.sqrt(3) * 0.7**2) < 1e-12
    assert abs(tm.volume - 4 / 3 * 0.7**3) < 1e-12
    assert mesh.stats["max_abs_f"] <= 1e-15
    # closed by the box [-0.5, 0.5]^3 (cells of the finest level), which cuts off the six tips, pyramids
    # x >= 0.5, |y| + |z| <= 0.7 - x of volume 2 * 0.2^3 / 3 each
    capped = extract_mesh(net, (-0.5, 0.5), close=True, progress=False)
    assert "kuhn_simplices_kept" in capped.stats
    tm = capped.to_trimesh()
    assert tm.is_watertight and tm.euler_number == 2
    assert abs(tm.volume - (4 / 3 * 0.7**3 - 6 * 2 * 0.2**3 / 3)) < 1e-12
    # each tip's four faces are the octahedron's scaled by 0.2 / 0.7; each cap a square of diagonal 0.4
    assert abs(tm.area - (4 * math.sqrt(3) * (0.7**2 - 6 * 0.2**2 / 2) + 6 * 2 * 0.2**2)) < 1e-12
    assert int(capped.polygon_is_cap.sum()) > 0


def test_box_tiles_where_simplices_do_not_apply():
    net = _grid_net(3, 1)
    x = torch.rand(1000, 3, dtype=torch.float64) * 2 - 1
    with torch.no_grad():
        level = float(net(x).median())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for kwargs in ({"tiles": 2}, {"band": 4}):
            assert "kuhn_simplices_kept" not in extract_mesh(net, (-1, 1), level=level, progress=False,
                                                             **kwargs).stats
        assert "kuhn_simplices_kept" not in extract_mesh(net, (-0.9, 1), level=level, progress=False).stats


def test_simplex_tiles_stop_at_the_memory_limit_with_the_reason(monkeypatch):
    net = _grid_net(3, 2, n_levels=2, min_res=2)
    x = torch.rand(1000, 3, dtype=torch.float64) * 2 - 1
    with torch.no_grad():
        level = float(net(x).median())
    full = extract_mesh(net, (-1, 1), level=level, progress=False)
    assert full.stats["kuhn_batches"] == 1
    with pytest.raises(MemoryError, match="surface mode"):
        extract_mesh(net, (-1, 1), level=level, progress=False, memory_limit=20_000)
    # batches of 7 simplices each fit, but the ones kept count too
    monkeypatch.setattr(kuhn, "SIMPLEX_BATCH", 7)
    with pytest.raises(MemoryError, match="surface mode"):
        extract_mesh(net, (-1, 1), level=level, progress=False, memory_limit=800_000)


def test_a_grid_without_the_level_in_the_box_is_not_evaluated():
    net = _grid_net(3, 3, n_levels=3, min_res=2)  # resolutions 2, 4, 8: two slabs of 4 cubes
    with torch.no_grad():
        top = float(net(torch.rand(5000, 3, dtype=torch.float64) * 2 - 1).abs().max())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mesh = extract_mesh(net, (-1, 1), level=100 * top + 1, progress=False)
    assert mesh.is_empty and mesh.stats["kuhn_slabs_skipped"] == 2 and mesh.stats["kuhn_cubes_kept"] == 0


@pytest.mark.parametrize("d", [2, 3])
def test_cutting_in_local_ids_names_every_vertex_as_the_global_ids_do(d):
    # 2 x 48 neurons: the local ids take two words, the global ones three, at another offset
    from nsr.extraction.pruning import TileBounds
    from nsr.extraction.subdivide import split_by_layers
    from nsr.extraction.tolerances import sign_tolerances

    net = _grid_net(d, 3, n_levels=2, min_res=8 if d == 2 else 2, width=48)
    box = np.array([[-1.0, 1.0]] * d)
    g, facets, kg = _graph(net, box)
    bt = torch.as_tensor(box)
    layout = ConstraintLayout(d, g.widths, len(facets[1]))
    local = kuhn.local_layout(layout)
    assert local.n_constraints > 64 and local.neuron_offset != layout.neuron_offset
    n = int(kg.count[0])
    cells = torch.cartesian_prod(*[torch.arange(n)] * d).reshape(-1, d).repeat_interleave(math.factorial(d), 0)
    perm = torch.arange(math.factorial(d)).repeat(n**d)
    level = float(g(torch.zeros(1, d, dtype=torch.float64)))
    tols = sign_tolerances(g, bt[:, 0], bt[:, 1], level)
    sides = kuhn.simplex_sides(kg, cells, perm, layout)
    out = {}
    for name, lay in (("global", None), ("local", local)):
        sk = simplex_skeleton(kg, cells, perm, layout, local=lay, sides=sides)
        lo, hi = kg.positions(cells), kg.positions(cells + 1)
        split_by_layers(g, sk, torch.ones(len(cells), dtype=torch.bool), TileBounds(g, lo, hi),
                        lay or layout, level, prune=False, keep_negative=None, band=None, region_layers=3,
                        max_value_bytes=2**30, limit=None, tolerances=tols, bar=None, desc="test")
        out[name] = sk
    ref, sk = out["global"], out["local"]
    assert sk.vpos.t.shape[1] == 2 < ref.vpos.t.shape[1] and sk.unpaired == ref.unpaired == 0, ref.vpos.t.shape
    assert ref.n_vertices > 10 * len(cells)  # the neurons cut the simplices
    vz, vp, ez = kuhn.globalize(sk.vzeros.t, sk.vpos.t, sk.vtile.t, sk.ezeros.t,
                                sk.vtile.t[sk.edges.t[:, 0].long()], sides, local, layout)

    def canonical(s, vzeros, vpos, ezeros):
        # new edges come in the order of their face keys' hashes, which differ (and so may an edge's
        # direction, and a later cut's rounding): compare sets, a vertex named by its simplex and position
        x, tile = s.x.t.numpy(), s.vtile.t.numpy()
        order = np.lexsort((*np.round(x, 9).T[::-1], tile))
        rank = np.empty_like(order)
        rank[order] = np.arange(len(order))
        e = np.sort(rank[s.edges.t.numpy()], 1)
        rows = np.concatenate([e, ezeros.numpy()], 1)
        return (x[order], vzeros.numpy()[order], vpos.numpy()[order], rows[np.lexsort(rows.T[::-1])])

    a = canonical(sk, vz, vp, ez)
    b = canonical(ref, ref.vzeros.t.sort(1).values, ref.vpos.t, ref.ezeros.t.sort(1).values)
    assert a[0].shape == b[0].shape and np.abs(a[0] - b[0]).max() < 1e-12
    for u, v in zip(a[1:], b[1:]):
        assert u.shape == v.shape and np.array_equal(u, v)


@pytest.mark.parametrize("shape, step", [((7, 10, 6, 2), [3, 4, 2]), ((9, 5, 3), [4, 4]), ((5, 5, 5, 1), [4, 4, 4])])
def test_block_extremes_against_slices(shape, step):
    values = torch.randn(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(len(shape)))
    lo, hi = kuhn._block_extremes(values, step)
    cells = [n - 1 for n in shape[:-1]]
    assert list(lo.shape[:-1]) == [-(-c // s) for c, s in zip(cells, step)]
    for idx in np.ndindex(*lo.shape[:-1]):  # block idx: points idx*s .. min(idx*s + s, cells), inclusive
        sl = tuple(slice(i * s, min(i * s + s, c) + 1) for i, s, c in zip(idx, step, cells))
        block = values[sl].reshape(-1, shape[-1])
        assert torch.equal(lo[idx], block.amin(0)) and torch.equal(hi[idx], block.amax(0))
