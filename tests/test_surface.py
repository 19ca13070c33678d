"""Exact level-set meshes: closed forms, invariants, mode agreement, export round trips."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
import trimesh

from nsr.extraction.surface import extract_mesh
from nsr.networks import PLNetwork, cube_network, load_network, octahedron_network, random_network
from tests.conftest import open3d_available


def _centered(dim: int, widths: list[int], seed: int, dtype: torch.dtype = torch.float64) -> PLNetwork:
    """A random network whose zero level set crosses the box [-1, 1]^D."""
    net = random_network(dim, widths, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(4096, dim, generator=gen, dtype=torch.float64) * 2 - 1
    net.biases[-1] -= net(x).median()
    return net.to(dtype=dtype)


def _unique_rows(a: np.ndarray, decimals: int = 9) -> np.ndarray:
    return np.unique(np.round(a, decimals) + 0.0, axis=0)


@pytest.mark.parametrize("mode", ["complex", "surface", "track"])
def test_octahedron_exactly(mode):
    r = 0.5
    mesh = extract_mesh(octahedron_network(r), (-1, 1), mode=mode, tiles=3, progress=False)
    want = np.array([s * r * e for e in np.eye(3) for s in (1, -1)])
    np.testing.assert_allclose(_unique_rows(mesh.vertices), _unique_rows(want), atol=1e-12)
    assert len(mesh.polygons) == 8 and all(len(p) == 3 for p in mesh.polygons)
    tm = mesh.to_trimesh()
    assert tm.is_watertight and tm.is_winding_consistent
    assert tm.volume == pytest.approx(4 / 3 * r**3, rel=1e-12)
    assert tm.area == pytest.approx(8 * math.sqrt(3) / 4 * (r * math.sqrt(2)) ** 2, rel=1e-12)


@pytest.mark.parametrize("mode", ["complex", "surface", "track"])
def test_cube_exactly(mode):
    r = 0.4
    mesh = extract_mesh(cube_network(r), (-1, 1), mode=mode, tiles=4, progress=False)
    # corners, edge midpoints and face centres: the coordinate planes and the planes
    # |x| = |y| of the construction cut the faces there
    want = np.array([p for p in np.array(np.meshgrid(*[[-r, 0, r]] * 3)).reshape(3, -1).T if np.abs(p).max() == r])
    np.testing.assert_allclose(_unique_rows(mesh.vertices), _unique_rows(want), atol=1e-12)
    tm = mesh.to_trimesh()
    assert tm.is_watertight and tm.is_winding_consistent
    assert tm.volume == pytest.approx((2 * r) ** 3, rel=1e-12)
    assert tm.area == pytest.approx(6 * (2 * r) ** 2, rel=1e-12)
    # x- and y-faces are cut into 4 quads, z-faces into 8 triangles (the |x| = |y| planes)
    areas = np.array([trimesh.triangles.area(tm.triangles[mesh.triangle_polygon == i]).sum()
                      for i in range(len(mesh.polygons))])
    assert (areas > 1e-12).sum() == 4 * 4 + 2 * 8


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_surface_mode_equals_complex_mode(seed):
    net = _centered(3, [12, 12, 12], seed)
    a = extract_mesh(net, (-1, 1), mode="complex", progress=False)
    b = extract_mesh(net, (-1, 1), mode="surface", tiles=5, progress=False)
    assert len(a.polygons) > 20
    assert b.stats["tiles"] == 125
    # same linear regions, same vertices, same polygon areas per region
    key = lambda m: {r.tobytes(): i for i, r in enumerate(m.polygon_patterns)}  # noqa: E731
    ka, kb = key(a), key(b)
    assert ka.keys() == kb.keys()
    np.testing.assert_allclose(_unique_rows(a.vertices), _unique_rows(b.vertices), atol=1e-12)
    ta, tb = a.to_trimesh(), b.to_trimesh()
    area_a = np.bincount(a.triangle_polygon, trimesh.triangles.area(ta.triangles), len(a.polygons))
    area_b = np.bincount(b.triangle_polygon, trimesh.triangles.area(tb.triangles), len(b.polygons))
    for k, i in ka.items():
        assert area_a[i] == pytest.approx(area_b[kb[k]], rel=1e-9, abs=1e-14)


def test_surface_mode_prunes_tiles_far_from_the_surface():
    mesh = extract_mesh(octahedron_network(0.3), (-1, 1), mode="surface", tiles=8, progress=False)
    assert mesh.stats["tiles_kept"] < mesh.stats["tiles"] / 2
    assert mesh.to_trimesh().volume == pytest.approx(4 / 3 * 0.3**3, rel=1e-12)


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-12), (torch.float32, 1e-6)])
def test_vertices_satisfy_the_level_set(dtype, tol):
    net = _centered(3, [16, 16], 4)
    mesh = extract_mesh(net, (-1, 1), dtype=dtype, progress=False)
    f = net.to(dtype=torch.float64)(torch.as_tensor(mesh.vertices))
    assert f.abs().max() <= tol
    assert mesh.stats["max_abs_f"] <= tol


@pytest.mark.parametrize("mode", ["complex", "surface", "track"])
def test_closed_mesh_is_watertight_with_the_monte_carlo_volume(mode):
    net = _centered(3, [12, 12], 6)
    mesh = extract_mesh(net, (-1, 1), mode=mode, close=True, tiles=4, progress=False)
    tm = mesh.to_trimesh()
    assert tm.is_watertight and tm.is_winding_consistent
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(400_000, 3, generator=gen, dtype=torch.float64) * 2 - 1
    frac = float((net(x) < 0).double().mean())
    sigma = math.sqrt(frac * (1 - frac) / len(x)) * 8
    assert tm.volume > 0
    assert tm.volume == pytest.approx(frac * 8, abs=4 * sigma)


def test_normals_point_from_negative_to_positive():
    net = _centered(3, [16, 16], 8)
    mesh = extract_mesh(net, (-1, 1), progress=False)
    tm = mesh.to_trimesh()
    c = torch.tensor(tm.triangles_center)
    n = torch.tensor(tm.face_normals)
    big = torch.tensor(tm.area_faces) > 1e-6
    eps = 1e-7
    diff = net(c + eps * n) - net(c - eps * n)
    assert (diff[big] > 0).all()


def test_two_dimensional_level_sets_are_polylines():
    # a diamond |x| + |y| = 0.5 as a 2-D ReLU net: one closed loop of 4 segments
    eye = torch.eye(2, dtype=torch.float64)
    net = PLNetwork([torch.cat([eye, -eye]), torch.tensor([[2.0, 2.0, 1.0, 1.0]], dtype=torch.float64)],
                    [torch.tensor([0.0, 0.0, 10.0, 10.0], dtype=torch.float64),
                     torch.tensor([-20.5], dtype=torch.float64)])
    for mode in ("complex", "surface"):
        mesh = extract_mesh(net, (-1, 1), mode=mode, progress=False)
        assert len(mesh.polylines) == 1
        loop = mesh.polylines[0]
        assert loop[0] == loop[-1] and len(loop) == 5
        np.testing.assert_allclose(np.abs(mesh.vertices).sum(1), 0.5, atol=1e-12)


def test_empty_level_set_warns_and_returns_an_empty_mesh():
    net = octahedron_network(0.5)
    net.biases[-1] += 100.0
    with pytest.warns(UserWarning, match="does not reach"):
        mesh = extract_mesh(net, (-1, 1), progress=False)
    assert mesh.is_empty and len(mesh.triangles) == 0


@pytest.mark.parametrize("dim", [1, 4])
def test_wrong_dimension_is_refused(dim):
    with pytest.raises(ValueError, match="level_set"):
        extract_mesh(random_network(dim, [4], seed=0), (-1, 1), progress=False)


@pytest.fixture(scope="module")
def small_mesh():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return extract_mesh(_centered(3, [10, 10], 3), (-1, 1), progress=False)


def _read_back(path, reader: str) -> tuple[np.ndarray, np.ndarray]:
    """Vertices ``(V, 3)`` and triangles ``(T, 3)`` of an exported file as trimesh or open3d reads it."""
    if reader == "trimesh":
        m = trimesh.load(path, process=False, force="mesh")
        return np.asarray(m.vertices, dtype=np.float64), np.asarray(m.faces, dtype=np.int64)
    import open3d as o3d

    if path.suffix == ".obj":  # read_triangle_mesh keeps only the triangles of an n-gon OBJ
        meshes = [m.mesh for m in o3d.io.read_triangle_model(str(path)).meshes]
    else:
        meshes = [o3d.io.read_triangle_mesh(str(path))]
    verts, faces, base = [], [], 0
    for m in meshes:
        verts.append(np.asarray(m.vertices, dtype=np.float64))
        faces.append(np.asarray(m.triangles, dtype=np.int64) + base)
        base += len(verts[-1])
    return np.concatenate(verts), np.concatenate(faces)


def _triangle_keys(v: np.ndarray, f: np.ndarray) -> np.ndarray:
    """Each triangle as its 3 vertex positions in sorted order, rows sorted: ``(T, 9)``, order-free."""
    tri = v[f]  # (T, 3, 3)
    corner = np.lexsort((tri[:, :, 2], tri[:, :, 1], tri[:, :, 0]), axis=-1)
    keys = tri[np.arange(len(tri))[:, None], corner].reshape(len(tri), 9)
    return keys[np.lexsort(keys.T[::-1])]


def _signed_volume(v: np.ndarray, f: np.ndarray) -> float:
    t = v[f]
    return float(np.einsum("ij,ij->i", t[:, 0], np.cross(t[:, 1], t[:, 2])).sum() / 6)


def _newell_area(points: np.ndarray) -> float:
    """Area of a planar polygon ``(n, 3)`` by Newell's formula (no triangulation involved)."""
    return float(np.linalg.norm(np.cross(points, np.roll(points, -1, axis=0)).sum(0)) / 2)


@pytest.fixture(scope="module")
def degenerate_mesh():
    """The cube network: several hyperplanes through the cube's edges give coincident vertices."""
    return extract_mesh(cube_network(0.4), (-1, 1), progress=False)


READERS = ["trimesh", "open3d"]


def _float32_positions(path, reader: str) -> bool:
    """STL stores float32; open3d's OBJ and OFF readers read positions as float32."""
    return path.suffix == ".stl" or (reader == "open3d" and path.suffix in (".obj", ".off"))


@pytest.mark.parametrize("reader", READERS)
@pytest.mark.parametrize("name, kw", [("m.obj", {}), ("m.ply", {}), ("m.ply", {"binary": False}),
                                      ("m.off", {}), ("m.stl", {})])
def test_exported_triangles_read_back_as_the_same_triangles(tmp_path, small_mesh, name, kw, reader):
    if reader == "open3d" and not open3d_available():
        pytest.skip("open3d not importable")
    path = small_mesh.export(tmp_path / name, **kw)
    v, f = _read_back(path, reader)
    want_v, want_f = small_mesh.vertices, small_mesh.triangles
    exact = not _float32_positions(path, reader)
    if not exact:  # the positions read are exactly the float32 roundings of the exported ones
        want_v = want_v.astype(np.float32).astype(np.float64)
    np.testing.assert_array_equal(_triangle_keys(v, f), _triangle_keys(want_v, want_f))
    # orientation survives too: the same enclosed signed volume (outward normals)
    assert _signed_volume(v, f) == pytest.approx(_signed_volume(want_v, want_f), rel=1e-12 if exact else 1e-5)


@pytest.mark.parametrize("reader", READERS)
@pytest.mark.parametrize("name, kw", [("p.obj", {}), ("p.ply", {}), ("p.ply", {"binary": False})])
@pytest.mark.parametrize("which", ["small_mesh", "degenerate_mesh"])
def test_exported_polygons_read_back_as_the_same_polygons(tmp_path, request, which, name, kw, reader):
    """Readers triangulate n-gons: every triangle read must lie in one exported polygon, and the
    triangles of each polygon must cover its area (Newell's formula, independent of any triangulation)."""
    if reader == "open3d" and not open3d_available():
        pytest.skip("open3d not importable")
    mesh = request.getfixturevalue(which)
    path = mesh.export(tmp_path / name, polygons=True, **kw)
    if name.endswith(".obj"):
        faces = [line for line in path.read_text().splitlines() if line.startswith("f ")]
        assert max(len(f.split()) - 1 for f in faces) > 3  # true n-gons are written
    v, f = _read_back(path, reader)
    exact = not _float32_positions(path, reader)
    verts = mesh.vertices if exact else mesh.vertices.astype(np.float32).astype(np.float64)
    pos = {tuple(p): i for i, p in enumerate(verts.tolist())}
    polys_of: dict[tuple, set[int]] = {}
    for k, poly in enumerate(mesh.polygons):
        for i in poly:
            polys_of.setdefault(tuple(verts[i].tolist()), set()).add(k)
    assert {tuple(p) for p in v[np.unique(f)].tolist()} <= set(pos)  # exact positions, nothing new
    tri_area = trimesh.triangles.area(v[f])
    covered = np.zeros(len(mesh.polygons))
    for t, a in zip(f.tolist(), tri_area):
        owners = set.intersection(*(polys_of[tuple(v[i].tolist())] for i in t))
        assert owners, f"triangle {t} read from {path.name} lies in no exported polygon"
        covered[min(owners)] += a
    want = np.array([_newell_area(mesh.vertices[p]) for p in mesh.polygons])
    rtol = 1e-9 if exact else 1e-5
    np.testing.assert_allclose(covered, want, rtol=rtol, atol=1e-15 if exact else 1e-10)
    assert _signed_volume(v, f) == pytest.approx(_signed_volume(mesh.vertices, mesh.triangles), rel=rtol)


def test_binary_polygon_ply_is_refused_because_trimesh_cannot_read_it(tmp_path, small_mesh):
    with pytest.raises(ValueError, match="binary=False"):
        small_mesh.export(tmp_path / "p.ply", polygons=True, binary=True)
    assert list(tmp_path.iterdir()) == []


def test_export_errors_leave_no_file(tmp_path, small_mesh):
    with pytest.raises(ValueError, match="unknown suffix"):
        small_mesh.export(tmp_path / "m.xyz")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        small_mesh.export(tmp_path / "missing" / "m.obj")
    (tmp_path / "ro").mkdir()
    (tmp_path / "ro").chmod(0o500)
    try:
        import os

        if os.access(tmp_path / "ro", os.W_OK):
            pytest.skip("running as a user who can write anywhere")
        with pytest.raises(PermissionError):
            small_mesh.export(tmp_path / "ro" / "m.obj")
    finally:
        (tmp_path / "ro").chmod(0o700)
    assert list((tmp_path / "ro").iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ro"]


def test_failed_write_leaves_no_temporary_file(tmp_path, small_mesh):
    (tmp_path / "taken.obj").mkdir()  # the target name is a folder: the final rename fails
    with pytest.raises(OSError):
        small_mesh.export(tmp_path / "taken.obj")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken.obj"]
    assert list((tmp_path / "taken.obj").iterdir()) == []


def test_open3d_conversion(small_mesh):
    if not open3d_available():
        pytest.skip("open3d not importable")
    m = small_mesh.to_open3d()
    assert len(m.triangles) == len(small_mesh.triangles)


def test_shared_bunny_3x16_surface(shared):
    net = load_network(shared("models/bunny_3d_3x16.pt"))
    a = extract_mesh(net, (-0.5, 0.5), mode="surface", progress=False)
    b = extract_mesh(net, (-0.5, 0.5), mode="complex", progress=False)
    assert len(a.polygons) == len(b.polygons) > 100
    assert a.stats["max_abs_f"] < 1e-12
    assert a.stats["invalid_faces"] == 0


def test_output_bounds_are_sound_and_tighter_than_intervals():
    from nsr.extraction.pruning import output_bounds

    net = random_network(3, [16, 16, 16], seed=9)
    gen = torch.Generator().manual_seed(1)
    lo = torch.rand(64, 3, generator=gen, dtype=torch.float64) * 1.6 - 1
    hi = lo + 0.05 + torch.rand(64, 3, generator=gen, dtype=torch.float64) * 0.3
    blo, bhi = output_bounds(net, lo, hi)
    x = lo[:, None] + (hi - lo)[:, None] * torch.rand(64, 2000, 3, generator=gen, dtype=torch.float64)
    f = net(x.reshape(-1, 3)).reshape(64, 2000)
    assert (f.min(1).values >= blo - 1e-12).all() and (f.max(1).values <= bhi + 1e-12).all()
    # plain interval arithmetic, for comparison
    a, b = lo, hi
    for k, (w, bias) in enumerate(zip(net.weights, net.biases)):
        mid, rad = (a + b) / 2 @ w.T + bias, (b - a) / 2 @ w.abs().T
        a, b = mid - rad, mid + rad
        if k < len(net.weights) - 1:
            a, b = torch.relu(a), torch.relu(b)
    assert ((bhi - blo) <= (b - a)[:, 0] + 1e-12).all()
    assert ((bhi - blo) < 0.8 * (b - a)[:, 0]).float().mean() > 0.5


def test_mesh_from_an_existing_complex_equals_complex_mode():
    from nsr.extraction.complex import extract_complex
    from nsr.extraction.polygons import mesh_from_complex

    net = _centered(3, [10, 10], 12)
    cx = extract_complex(net, (-1, 1), progress=False)
    a = mesh_from_complex(cx, close=True)
    b = extract_mesh(net, (-1, 1), mode="complex", close=True, progress=False)
    np.testing.assert_array_equal(a.vertices, b.vertices)
    np.testing.assert_array_equal(a.triangles, b.triangles)
    assert cx.euler_characteristic == 1


def test_band_box_queries_match_brute_force():
    from nsr.extraction.pruning import Band

    gen = torch.Generator().manual_seed(3)
    occ = torch.rand(16, 16, 16, generator=gen) < 0.02
    band = Band(occ, torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64))
    lo = torch.rand(500, 3, generator=gen, dtype=torch.float64) * 0.9
    hi = lo + torch.rand(500, 3, generator=gen, dtype=torch.float64) * 0.2
    got = band.hits(lo, hi)
    # brute force: cells (dilated by one) overlapping each box
    i0 = (torch.floor(lo * 16).long() - 1).clamp(0, 16)
    i1 = (torch.floor(hi * 16).long() + 2).clamp(0, 16)
    want = torch.tensor([bool(occ[a[0]:b[0], a[1]:b[1], a[2]:b[2]].any()) for a, b in zip(i0, i1)])
    assert torch.equal(got, want)
    assert 0 < int(got.sum()) < 500


@pytest.mark.parametrize("close", [False, True])
def test_region_pruning_by_band_keeps_the_surface(close):
    net = _centered(3, [12, 12, 12], 5)
    a = extract_mesh(net, (-1, 1), mode="complex", close=close, progress=False)
    b = extract_mesh(net, (-1, 1), mode="surface", close=close, tiles=2, band=16, progress=False)
    assert any(k.startswith("regions_kept") for k in b.stats)
    assert b.stats["band_cells"] < 16**3
    key = lambda m: sorted(r.tobytes() + bytes([int(c)]) for r, c in zip(m.polygon_patterns, m.polygon_is_cap))  # noqa: E731
    assert key(a) == key(b)
    np.testing.assert_allclose(_unique_rows(a.vertices), _unique_rows(b.vertices), atol=1e-12)
    if close:
        assert b.to_trimesh().is_watertight
        assert b.to_trimesh().volume == pytest.approx(a.to_trimesh().volume, rel=1e-9)


def test_tiles_in_worker_processes_give_the_same_mesh():
    net = _centered(3, [10, 10], 7)
    a = extract_mesh(net, (-1, 1), tiles=3, progress=False)
    b = extract_mesh(net, (-1, 1), tiles=3, workers=2, progress=False)
    key = lambda m: sorted(r.tobytes() for r in m.polygon_patterns)  # noqa: E731
    assert len(a.polygons) > 10 and key(a) == key(b)
    np.testing.assert_allclose(_unique_rows(a.vertices), _unique_rows(b.vertices), atol=1e-12)
    assert b.to_trimesh().area == pytest.approx(a.to_trimesh().area, rel=1e-12)


@pytest.mark.parametrize("layer", [0, 1, 3])
def test_linear_bounds_of_the_output_in_a_layer_are_sound(layer):
    """``a_lo z + c_lo <= f <= a_up z + c_up`` for every ``z`` in the given range, checked on
    samples pushed through the remaining layers."""
    from nsr.pl import as_graph
    from nsr.pl.bounds import region_bounds

    net = random_network(3, [10, 10, 10, 10], seed=3)
    gen = torch.Generator().manual_seed(layer)
    lo = torch.randn(32, 10, generator=gen, dtype=torch.float64)
    hi = lo + torch.rand(32, 10, generator=gen, dtype=torch.float64) * 2
    (olo, ohi), _, (a_lo, c_lo, a_up, c_up) = region_bounds(as_graph(net), layer, (lo, hi), {})
    z = lo[:, None] + (hi - lo)[:, None] * torch.rand(32, 500, 10, generator=gen, dtype=torch.float64)
    h = z
    for k in range(layer + 1, len(net.weights)):
        h = torch.relu(h) @ net.weights[k].T + net.biases[k]
    f = h[..., 0]
    assert (f >= (z * a_lo[:, None]).sum(-1) + c_lo[:, None] - 1e-12).all()
    assert (f <= (z * a_up[:, None]).sum(-1) + c_up[:, None] + 1e-12).all()
    # the interval test never rejects a range whose samples reach the level
    level = float(f.median())
    reached = (f.min(1).values <= level) & (f.max(1).values >= level)
    may_reach = (olo <= level) & (ohi >= level)
    assert (may_reach | ~reached).all()


def test_region_pruning_on_a_deep_network_keeps_every_polygon():
    """Six hidden layers: regions are pruned before five of them (linear bounds per region)."""
    net = _centered(3, [8] * 6, seed=4)
    a = extract_mesh(net, (-1, 1), mode="complex", progress=False)
    b = extract_mesh(net, (-1, 1), mode="surface", tiles=3, progress=False)
    assert len(a.polygons) > 20
    assert any(k.startswith("regions_kept_layer") for k in b.stats)
    assert {r.tobytes() for r in a.polygon_patterns} == {r.tobytes() for r in b.polygon_patterns}
    np.testing.assert_allclose(_unique_rows(a.vertices), _unique_rows(b.vertices), atol=1e-12)


@pytest.mark.parametrize(("dim", "widths"), [(2, [30, 30]), (3, [40, 40]), (3, [70, 70])])
def test_region_ids_group_vertices_by_their_regions_sign_vectors(dim, widths):
    """Hash-based region ids partition (vertex, sign combination) pairs exactly like the
    explicit keys (tile, sign vector with the chosen zeros made positive)."""
    from nsr.extraction.bits import bit_values
    from nsr.extraction.pruning import _region_ids
    from nsr.extraction.subdivide import subdivide

    net = random_network(dim, widths, seed=len(widths) + dim).to(dtype=torch.float64)
    lo = torch.tensor([[-1.0] * dim, [0.0] * dim], dtype=torch.float64)
    sk, _ = subdivide(net, lo, lo + 1, progress=False)
    region, n = _region_ids(sk)
    v = sk.n_vertices
    words, masks = bit_values(sk.vzeros.t.long())
    keys, ids = [], []
    for combo in range(1 << dim):
        pk = sk.vpos.t.clone()
        ok = torch.ones(v, dtype=torch.bool)
        for i in range(dim):
            if combo >> i & 1:
                pk[torch.arange(v), words[:, i]] |= masks[:, i]
            else:
                ok &= sk.vzeros.t[:, i] >= 2 * dim
        assert ((region[combo] >= 0) == ok).all()
        keys.append(torch.cat([sk.vtile.t.long()[:, None], pk], 1)[ok])
        ids.append(region[combo][ok])
    _, explicit = torch.unique(torch.cat(keys), dim=0, return_inverse=True)
    pairs = torch.unique(torch.stack([explicit, torch.cat(ids)], 1), dim=0)
    assert len(pairs) == n == int(explicit.max()) + 1


def test_edges_paired_answers_as_trimesh_does():
    """``edges_paired`` against trimesh's ``is_watertight`` (the independent answer) on closed,
    holed, non-manifold and duplicated-face meshes."""
    from nsr.extraction.mesh import edges_paired

    sphere = trimesh.creation.icosphere(subdivisions=3)
    f = np.asarray(sphere.faces)
    fin = np.concatenate([f, [[f[0, 0], f[0, 1], len(sphere.vertices)]]])  # a third face on one edge
    cases = {"closed": f, "holed": f[1:], "fin": fin, "doubled": np.concatenate([f, f[:1]]),
             "two spheres": np.concatenate([f, f + len(sphere.vertices)])}
    for name, tri in cases.items():
        n = int(tri.max()) + 1
        verts = np.random.default_rng(0).normal(size=(n, 3))
        want = trimesh.Trimesh(verts, tri, process=False).is_watertight
        assert edges_paired(tri, n) == want, name
    assert [edges_paired(cases[k], int(cases[k].max()) + 1) for k in ("closed", "holed", "fin")] == [True, False, False]
    assert not edges_paired(np.zeros((0, 3), dtype=np.int64), 0)


def test_auto_answers_in_track_mode_where_surface_mode_exceeds_the_budget(monkeypatch):
    """``mode="auto"`` promises an answer: where surface mode stops at the memory budget (wide
    networks), it warns and tracks under the same budget, with the polygons surface mode finds
    without a limit; an explicit ``mode="surface"`` still stops, and a 2-D network (no track mode)
    still raises."""
    import nsr.extraction.subdivide as subdivide_module

    net = _centered(3, [32, 32, 32], seed=3)
    box = np.array([[-1.0, 1.0]] * 3)
    full = extract_mesh(net, box, mode="surface", progress=False)
    assert len(full.polygons) > 100
    # a budget track mode fits in (its own estimate, with room) and surface mode does not
    limit = 1.2 * extract_mesh(net, box, mode="track", progress=False).stats["memory_estimate_mb"] * 2**20
    with pytest.raises(MemoryError, match="surface mode"):
        extract_mesh(net, box, mode="surface", progress=False, memory_limit=limit)
    for default in (False, True):
        if default:  # the default budget, as the apps run
            monkeypatch.setattr(subdivide_module, "default_memory_limit", lambda: limit)
        with pytest.warns(UserWarning, match="does not fit in memory_limit"):
            auto = extract_mesh(net, box, mode="auto", progress=False, memory_limit=None if default else limit)
        assert auto.stats["mode"] == "track" and auto.stats["mode_requested"] == "auto"
        assert "stopped after" in auto.stats["surface_mode_error"]
        assert len(auto.polygons) == len(full.polygons)
        assert np.array_equal(_unique_rows(auto.vertices), _unique_rows(full.vertices))
    monkeypatch.setattr(subdivide_module, "default_memory_limit", lambda: 2e5)
    flat = _centered(2, [24, 24, 24], seed=3)
    with pytest.raises(MemoryError):
        extract_mesh(flat, np.array([[-1.0, 1.0]] * 2), mode="auto", progress=False)


def test_track_mode_stops_at_the_memory_budget():
    """Track mode honours ``memory_limit`` as the other modes do: under a budget below what its
    polygons need it stops with a ``MemoryError`` that says so (alone, or as auto's answer to a
    surface mode over the budget), and its estimate grows with the surface it walks."""
    net = _centered(3, [32, 32, 32], seed=3)
    box = np.array([[-1.0, 1.0]] * 3)
    need = extract_mesh(net, box, mode="track", progress=False).stats["memory_estimate_mb"] * 2**20
    small = extract_mesh(net, box * 0.5, mode="track", progress=False)
    assert 0 < small.stats["memory_estimate_mb"] * 2**20 < need
    with pytest.raises(MemoryError, match=r"track mode stopped after [\d,]+ polygons.*memory_limit"):
        extract_mesh(net, box, mode="track", progress=False, memory_limit=need / 2)
    with pytest.raises(MemoryError, match="surface mode.*Track mode, tried instead by mode='auto': track mode stopped"):
        with pytest.warns(UserWarning, match="does not fit in memory_limit"):
            extract_mesh(net, box, mode="auto", progress=False, memory_limit=need / 2)


@pytest.mark.parametrize("mode", ["surface", "track"])
def test_meshes_keep_patterns_packed_until_read(mode):
    """Extraction stores the mesh's activation patterns as bits (8x less memory on wide networks);
    read, they are each polygon's pattern at its centroid and, at each vertex, agree with the sign
    of every neuron not zero there (the network evaluated directly)."""
    from nsr.extraction.mesh import PackedPatterns
    from nsr.pl import as_graph

    net = _centered(3, [16, 16, 16], seed=5)
    mesh = extract_mesh(net, (-1, 1), mode=mode, progress=False)
    assert len(mesh.polygons) > 50
    assert isinstance(mesh.__dict__["_polygon_patterns"], PackedPatterns)
    assert isinstance(mesh.__dict__["_vertex_patterns"], PackedPatterns)
    assert "polygons=" in repr(mesh) and isinstance(mesh.__dict__["_vertex_patterns"], PackedPatterns)
    graph = as_graph(net).to(dtype=torch.float64)
    cent = torch.as_tensor(np.stack([mesh.vertices[p].mean(0) for p in mesh.polygons]))
    want = torch.cat(graph.patterns(cent), 1).numpy()
    assert mesh.polygon_patterns.dtype == bool and np.array_equal(mesh.polygon_patterns, want)
    x = torch.as_tensor(mesh.vertices)
    z = torch.cat([graph.preactivations(x, layer) for layer in range(len(graph.widths))], 1).numpy()
    sure = np.abs(z) > 1e-9
    assert np.array_equal(mesh.vertex_patterns[sure], (z > 0)[sure])
    assert (~sure).sum(1).max() >= 1  # every vertex lies on neurons: some entries are decided by the region


def _tiles(n: int, dim: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """``n^dim`` tiles of [-1, 1]^dim, as surface mode makes them."""
    from nsr.extraction.tiles import tile_grid

    return tile_grid(np.array([[-1.0, 1.0]] * dim), n, torch.float64, torch.device("cpu"))[:2]


@pytest.mark.parametrize("dim, width, tiles", [(3, 12, 1), (3, 30, 2), (3, 40, 3), (2, 20, 3)])
def test_first_layer_vertices_are_the_vertices_of_the_first_cuts(dim, width, tiles):
    # against the subdivision itself: a one-layer network's skeleton holds the tiles' corners and
    # the vertices the first layer's planes make inside, on the facets and on the edges of each tile
    from nsr.extraction.memory import first_layer_vertices
    from nsr.extraction.subdivide import subdivide
    from nsr.pl.graph import INPUT, as_graph

    g = as_graph(random_network(dim, [width], seed=width))
    lo, hi = _tiles(tiles, dim)
    sk, _ = subdivide(g, lo, hi, level=None, prune=False, progress=False)
    a = g.affine(0)
    assert first_layer_vertices(a.blocks[INPUT], a.bias, lo, hi) == sk.n_vertices - 2**dim * len(lo) > 0


def test_first_layer_vertices_sampled_estimate_is_within_a_percent():
    from nsr.extraction.memory import first_layer_vertices
    from nsr.pl.graph import INPUT, as_graph

    a = as_graph(random_network(3, [150], seed=2)).affine(0)  # 551,300 triples: sampled
    lo, hi = _tiles(2)
    exact = first_layer_vertices(a.blocks[INPUT], a.bias, lo, hi, samples=10**7)
    for seed in (0, 1):
        assert first_layer_vertices(a.blocks[INPUT], a.bias, lo, hi, seed=seed) == pytest.approx(exact, rel=0.01)


def test_a_first_layer_over_the_budget_is_refused_before_any_cut(monkeypatch):
    """A first layer whose arrangement alone exceeds the budget is refused at once (surface and
    complex modes, ``extract_complex``), where the cuts would run until the budget stopped them;
    ``mode="auto"`` then answers in track mode. A budget it fits in extracts as before."""
    import nsr.extraction.subdivide as subdivide_module
    from nsr.extraction.complex import extract_complex
    from nsr.extraction.memory import check_first_layer_memory, first_layer_vertices
    from nsr.pl.graph import INPUT, as_graph
    from nsr.pl.layout import ConstraintLayout

    net = _centered(3, [64, 8], seed=4)
    box = np.array([[-1.0, 1.0]] * 3)
    g = as_graph(net)
    a = g.affine(0)
    n_v = first_layer_vertices(a.blocks[INPUT], a.bias, *_tiles(2))
    assert n_v > 10_000
    need = None
    for limit in (2.0**40, 1.0):  # the need, read from the message of a refusal
        try:
            check_first_layer_memory(n_v, 3, 64, ConstraintLayout.of(g).n_constraints, 8, limit, "surface")
        except MemoryError as err:
            need = float(str(err).split("need ~")[1].split(" MiB")[0]) * 2**20
    assert need is not None and need > 3 * n_v * 64 * 8  # at least the layer's values, three times

    def no_cuts(*args, **kwargs):
        raise AssertionError("the cuts started")

    with monkeypatch.context() as m:
        m.setattr(subdivide_module, "split_by_layers", no_cuts)
        for mode in ("surface", "complex"):
            with pytest.raises(MemoryError, match=f"{mode} mode.*refused before its first cut.*64 neurons"):
                extract_mesh(net, box, mode=mode, progress=False, memory_limit=need / 4)
        with pytest.raises(MemoryError, match="refused before its first cut"):
            extract_complex(net, box, progress=False, memory_limit=need / 4)
        m.setattr(subdivide_module, "default_memory_limit", lambda: need / 2)
        with pytest.warns(UserWarning, match="does not fit in memory_limit"):
            auto = extract_mesh(net, box, mode="auto", progress=False)
    assert auto.stats["mode"] == "track" and "refused before its first cut" in auto.stats["surface_mode_error"]
    full = extract_mesh(net, box, mode="surface", progress=False, memory_limit=4 * need)
    assert len(full.polygons) == len(auto.polygons) > 100
