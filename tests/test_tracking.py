"""Surface tracking (``mode="track"``): checked against surface mode, closed forms and seeds."""

from __future__ import annotations

import itertools
import math
import warnings

import numpy as np
import pytest
import torch

from nsr.extraction import tracking
from nsr.extraction.surface import extract_mesh
from nsr.extraction.tracking import (
    activation_patterns,
    grid_seeds,
    region_constraints,
    track_patterns,
    track_surface,
    walk_polygons,
)
from nsr.networks import PLNetwork, cube_network, octahedron_network
from tests.test_surface import _centered


def _polygon_groups(mesh) -> dict:
    """(region pattern, cap flag) -> list of ``(k, 3)`` vertex arrays of its polygons."""
    out: dict = {}
    for poly, pat, cap in zip(mesh.polygons, mesh.polygon_patterns, mesh.polygon_is_cap):
        out.setdefault((pat.tobytes(), bool(cap)), []).append(mesh.vertices[poly])
    return out


def _same_polygons(a, b, atol: float = 1e-9) -> bool:
    """The same polygons (regions, caps, vertex sets up to ``atol``), whatever the vertex
    numbering and cycle starts. A tolerance, not rounding: a vertex where two neuron planes
    cross at a grazing angle is only determined to ~1e-13, and rounding could split it."""
    ga, gb = _polygon_groups(a), _polygon_groups(b)
    if ga.keys() != gb.keys():
        return False
    for key, polys_a in ga.items():
        polys_b = list(gb[key])
        if len(polys_a) != len(polys_b):
            return False
        for va in polys_a:
            for j, vb in enumerate(polys_b):
                if len(va) == len(vb):
                    d = np.abs(va[:, None, :] - vb[None, :, :]).max(-1)
                    if d.min(1).max() <= atol and d.min(0).max() <= atol:
                        polys_b.pop(j)
                        break
            else:
                return False
    return True


@pytest.mark.parametrize(("widths", "seed", "close"), [([12, 12, 12], 0, False), ([16, 16], 1, True),
                                                       ([20, 20, 20, 20], 2, False), ([20, 20, 20, 20], 2, True)])
def test_track_mode_equals_surface_mode(widths, seed, close):
    net = _centered(3, widths, seed)
    a = extract_mesh(net, (-1, 1), mode="surface", close=close, progress=False)
    b = extract_mesh(net, (-1, 1), mode="track", close=close, progress=False)
    assert b.stats["mode"] == "track" and len(a.polygons) > 50
    assert _same_polygons(a, b)
    assert len(a.vertices) == len(b.vertices)  # welded alike
    assert b.stats["max_abs_f"] <= 1e-12
    tm = b.to_trimesh()
    assert tm.is_winding_consistent
    if close:
        assert tm.is_watertight
        assert tm.volume == pytest.approx(a.to_trimesh().volume, rel=1e-9)
    # every vertex is shared the way a generic surface shares it: 4 polygons inside the box,
    # fewer on its faces (counted from the polygons, independently of the welding keys)
    if not close:
        count = np.bincount(np.concatenate(b.polygons), minlength=len(b.vertices))
        inside = (np.abs(b.vertices) < 1 - 1e-9).all(1)
        assert (count[inside] == 4).all()


def test_a_plane_gives_the_hexagon_of_the_box():
    # no hidden layer: f = x + y + z, whose zero set cuts [-1, 1]^3 in a regular hexagon
    net = PLNetwork([torch.ones(1, 3, dtype=torch.float64)], [torch.zeros(1, dtype=torch.float64)])
    mesh = extract_mesh(net, (-1, 1), mode="track", progress=False)
    assert mesh.stats["mode"] == "track"
    assert len(mesh.polygons) == 1 and len(mesh.polygons[0]) == 6
    want = {p for p in itertools.permutations((1.0, -1.0, 0.0))}
    assert {tuple(np.round(v, 12) + 0.0) for v in mesh.vertices} == want
    n = np.cross(*(mesh.vertices[mesh.polygons[0][1:3]] - mesh.vertices[mesh.polygons[0][0]]))
    assert n @ np.ones(3) > 0  # oriented from negative to positive


def test_octahedron_in_track_mode():
    r = 0.5
    mesh = extract_mesh(octahedron_network(r), (-1, 1), mode="track", progress=False)
    assert mesh.stats["mode"] == "track"
    tm = mesh.to_trimesh()
    assert len(mesh.polygons) == 8 and tm.is_watertight
    assert tm.volume == pytest.approx(4 / 3 * r**3, rel=1e-12)


def test_one_seed_regrows_a_connected_surface():
    import trimesh

    net = _centered(3, [16, 16, 16], 3)
    full = extract_mesh(net, (-1, 1), mode="surface", progress=False)
    tm = full.to_trimesh()
    labels = trimesh.graph.connected_component_labels(tm.face_adjacency, len(tm.faces))
    assert labels.max() == 0, "the test needs a connected surface"
    seed = full.vertices[full.polygons[len(full.polygons) // 2]].mean(0, keepdims=True)
    b = extract_mesh(net, (-1, 1), mode="track", seeds=seed, progress=False)
    assert b.stats["seed_regions"] == 1
    assert _same_polygons(b, full)


def test_track_without_a_seed_on_the_surface_falls_back_to_surface_mode():
    net = _centered(3, [10, 10], 5)
    with pytest.warns(UserWarning, match="no seed"):
        b = extract_mesh(net, (-1, 1), mode="track", seeds=np.array([[5.0, 5.0, 5.0]]), progress=False)
    assert b.stats["mode"] == "surface"
    assert _same_polygons(b, extract_mesh(net, (-1, 1), progress=False))


def test_degenerate_vertices_fall_back_to_surface_mode():
    # the cube network's faces are cut by several planes through one point (face centres)
    with pytest.warns(UserWarning, match="degenerate"):
        mesh = extract_mesh(cube_network(0.4), (-1, 1), mode="track", progress=False)
    assert mesh.stats["mode"] == "surface" and mesh.to_trimesh().is_watertight


def test_float32_track_vertices_satisfy_the_level_set():
    net = _centered(3, [16, 16], 4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mesh = extract_mesh(net, (-1, 1), mode="track", dtype=torch.float32, progress=False)
    f = net(torch.as_tensor(mesh.vertices))
    assert mesh.stats["mode"] == "track" and f.abs().max() <= 1e-6


def test_region_constraints_hold_inside_the_region():
    net = _centered(3, [8, 8, 8], 6)
    b = torch.tensor([[-1.0, 1.0]] * 3, dtype=torch.float64)
    x = torch.rand(500, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    pats = activation_patterns(net, x)
    g = region_constraints(net, pats, b, level=0.25)
    vals = torch.einsum("bd,bdc->bc", torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1), g)
    assert (vals[:, :-1] >= -1e-12).all()  # box and neurons on their side
    np.testing.assert_allclose(vals[:, -1].numpy(), (0.25 - net(x)).numpy(), atol=1e-12)  # level - f


def test_grid_seeds_lie_between_opposite_signs():
    net = octahedron_network(0.5)
    b = torch.tensor([[-1.0, 1.0]] * 3, dtype=torch.float64)
    s = grid_seeds(net, b, 8)
    assert len(s) > 0
    np.testing.assert_allclose(net(s).numpy(), 0.0, atol=1e-12)  # f is affine along those grid edges


def test_track_mode_refuses_bad_input():
    with pytest.raises(ValueError, match="3-D"):
        extract_mesh(_centered(2, [8], 0), (-1, 1), mode="track", progress=False)
    net = _centered(3, [8], 0)
    with pytest.raises(ValueError, match="seeds"):
        extract_mesh(net, (-1, 1), mode="surface", seeds=16, progress=False)
    with pytest.raises(ValueError, match=r"\(M, 3\)"):
        extract_mesh(net, (-1, 1), mode="track", seeds=np.zeros((4, 2)), progress=False)
    with pytest.raises(ValueError, match="resolution"):
        extract_mesh(net, (-1, 1), mode="track", seeds=0, progress=False)


@pytest.mark.parametrize("widths", [[6], [20, 20], [16] * 4, [30, 30, 30], [12] * 6, [40, 40]])
def test_track_mode_finds_every_polygon_of_random_networks(widths):
    # several components per network are common here; the default 64^3 seed grid must reach
    # all of them (a 32^3 grid missed one component of the [30, 30, 30] networks)
    for close, seed in itertools.product((False, True), range(3)):
        net = _centered(3, widths, 100 + seed + 7 * len(widths) + sum(widths))
        a = extract_mesh(net, (-1, 1), mode="surface", close=close, progress=False)
        b = extract_mesh(net, (-1, 1), mode="track", close=close, progress=False)
        assert b.stats["mode"] == "track"
        assert _same_polygons(a, b), (widths, close, seed)


def _many_gon_network(k: int, r: float = 0.3) -> PLNetwork:
    """``f = z + sum_i relu(n_i . (x, y) - r)`` over ``k`` directions ``n_i``: inside the regular
    ``k``-gon circumscribed about the circle of radius ``r`` every ReLU is off and ``f = z``, so the
    level set there is that ``k``-gon on ``z = 0`` (one polygon of ``k`` edges)."""
    t = torch.arange(k, dtype=torch.float64) * (2 * np.pi / k)
    w1 = torch.zeros(k + 1, 3, dtype=torch.float64)
    w1[:k, 0], w1[:k, 1], w1[k, 2] = torch.cos(t), torch.sin(t), 1.0
    b1 = torch.full((k + 1,), -r, dtype=torch.float64)
    b1[k] = 10.0  # relu(z + 10) = z + 10 in the box
    w2 = torch.ones(1, k + 1, dtype=torch.float64)
    return PLNetwork([w1, w2], [b1, torch.tensor([-10.0], dtype=torch.float64)])


@pytest.mark.parametrize("k", [40, 200])
def test_a_polygon_of_many_edges_is_walked_whole(k):
    # 40 edges: the walk's per-edge buffers start 16 wide and must grow twice; 200 edges: more
    # than the walk's candidate constraints (64), so the walk among them must be found wanting
    r = 0.3
    net = _many_gon_network(k, r)
    mesh = extract_mesh(net, (-1, 1), mode="track", progress=False)
    assert mesh.stats["mode"] == "track"
    assert _same_polygons(mesh, extract_mesh(net, (-1, 1), mode="surface", progress=False))
    big = [p for p in mesh.polygons if len(p) == k]
    assert len(big) == 1 and max(map(len, mesh.polygons)) == k
    # its corners, in closed form: radius r / cos(pi / k), angles (2i + 1) pi / k, on z = 0
    a = (2 * np.arange(k) + 1) * np.pi / k
    want = np.stack([np.cos(a), np.sin(a), np.zeros(k)], 1) * np.array([r / np.cos(np.pi / k)] * 2 + [1.0])
    got = mesh.vertices[big[0]]
    assert np.abs(got[:, None] - want[None]).max(-1).min(1).max() < 1e-12


@pytest.mark.parametrize("k", [3, 8, 64])
def test_walks_among_the_nearest_constraints_equal_full_walks(k, monkeypatch):
    # a region of a 3x48 network has 151 constraints; a walk among the k nearest to its start
    # is kept only where it provably is the full walk, the others are walked again over all
    net = _centered(3, [48, 48, 48], 4)
    box = torch.tensor([[-1.0, 1.0]] * 3, dtype=torch.float64)
    tr = track_surface(net, box, grid_seeds(net, box, 16))
    m = tr["length"]
    assert len(m) > 1000
    rows = torch.arange(len(m))
    support, prev, cur = tr["support"], tr["edges"][rows, m - 1], tr["edges"][:, 0]
    g = region_constraints(net, track_patterns(tr), box, 0.0)
    assert g.shape[2] > 2 * k  # else walk_polygons walks over all constraints at once
    tol = 256 * torch.finfo(torch.float64).eps * float((box[:, 1] - box[:, 0]).norm())
    full = walk_polygons(g, support, prev, cur, tol, candidates=None)
    calls = []
    walk_all = tracking._walk_all

    def counted(gg, *args):
        calls.append(len(gg))
        return walk_all(gg, *args)

    monkeypatch.setattr(tracking, "_walk_all", counted)
    near = walk_polygons(g, support, prev, cur, tol, candidates=k)
    assert len(calls) in (1, 2) and calls[0] == len(m)
    redone = calls[1] if len(calls) == 2 else 0
    if k == 3:  # three candidates hold only the start's own planes: every walk is redone
        assert redone == len(m)
    if k == 8:  # both branches taken
        assert 0 < redone < len(m)
    width = max(full[0].shape[1], near[0].shape[1])
    assert torch.equal(tracking._pad(full[0], width, -1), tracking._pad(near[0], width, -1))
    assert torch.equal(tracking._pad(full[1], width, 0.0), tracking._pad(near[1], width, 0.0))
    assert torch.equal(full[2], near[2]) and torch.equal(full[3], near[3])
    assert bool((full[2] == m).all())  # and both are the polygons track mode walked


@pytest.mark.parametrize("partition", [True, False])
@pytest.mark.parametrize("k", [1, 5, 64])
def test_nearest_selects_the_k_smallest_and_the_first_left_out(partition, k):
    # against a full sort, on rows with many ties (integers 0..9) and -inf entries (a walk's own planes)
    gen = torch.Generator().manual_seed(k)
    dist = torch.randint(0, 10, (300, 130), generator=gen).double()
    dist[:, :3] = -math.inf
    sel, cut = tracking._nearest(dist, k, partition=partition)
    assert sel.shape == (300, k) and bool((sel[:, 1:] > sel[:, :-1]).all())  # distinct, in column order
    ordered = torch.sort(dist, 1)[0]
    assert torch.equal(cut, ordered[:, k])  # the (k+1)-th smallest value
    picked = dist.gather(1, sel)
    assert torch.equal(torch.sort(picked, 1)[0], ordered[:, :k])  # the k smallest values
    left = torch.ones_like(dist, dtype=torch.bool).scatter_(1, sel, False)
    assert bool((dist[left].view(300, -1) >= cut[:, None]).all())  # nothing closer was left out


def test_welded_vertices_do_not_depend_on_the_order_of_the_walks():
    # a corner is computed by each of its polygons from that region's planes (equal to rounding);
    # the mesh takes one copy by a rule of the polygons' keys, not of the order they were walked in
    from nsr.extraction.polygons import weld_tracks

    net = _centered(3, [24, 24, 24], 6)
    box = torch.tensor([[-1.0, 1.0]] * 3, dtype=torch.float64)
    tr = track_surface(net, box, grid_seeds(net, box, 16))
    perm = torch.randperm(len(tr["length"]), generator=torch.Generator().manual_seed(0))
    shuffled = {k: (v[perm] if isinstance(v, torch.Tensor) and v.ndim and len(v) == len(perm) else v)
                for k, v in tr.items()}
    a, b = weld_tracks(net, tr), weld_tracks(net, shuffled)
    va, vb = a["vertices"].numpy(), b["vertices"].numpy()
    copies = tr["vertices"][torch.arange(tr["vertices"].shape[1])[None] < tr["length"][:, None]].numpy()
    # the test means something: some corner has copies that differ in their last bits
    assert len(np.unique(copies, axis=0)) > len(va)
    assert np.array_equal(np.unique(va, axis=0), np.unique(vb, axis=0))
