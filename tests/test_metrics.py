"""Mesh metrics: zero for identical meshes, the known gap between concentric spheres, and
asymmetric cases whose one-sided distances, F-scores and normal agreement are known in closed
form (each catches a metric computed one-sided, a squared threshold, a missing ``abs``, or the
exact point-to-triangle refinement skipped)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import trimesh

from nsr.eval.metrics import (
    chamfer,
    compare_meshes,
    f_score,
    normal_consistency,
    peak_memory,
    residuals,
    sample_surface,
    surface_distance,
    triangle_quality,
)
from nsr.networks import PLNetwork


@pytest.fixture(scope="module")
def spheres():
    return trimesh.creation.icosphere(4, 0.3), trimesh.creation.icosphere(4, 0.33)


def test_identical_meshes(spheres):
    m = compare_meshes(spheres[0], spheres[0], n_samples=20_000)
    for key in ("chamfer_l1", "chamfer_l2", "hausdorff", "accuracy", "completeness"):
        assert m[key] == 0.0
    assert m["f_score@0.005"] == 1.0 and m["f_score@0.01"] == 1.0
    assert m["normal_consistency"] == pytest.approx(1.0)
    assert m["watertight"] is True


def test_concentric_spheres_known_distance(spheres):
    m = compare_meshes(spheres[0], spheres[1], n_samples=20_000)
    # Faces are chords slightly inside each sphere, so the gap is |r1 - r2| up to ~1e-4.
    assert m["chamfer_l1"] == pytest.approx(0.03, abs=5e-4)
    assert m["chamfer_l2"] == pytest.approx(0.03**2, rel=0.05)
    assert m["hausdorff"] == pytest.approx(0.03, abs=1e-3)
    assert m["f_score@0.01"] == 0.0  # 1 % of the 0.66*sqrt(3) diagonal is < 0.03
    assert m["normal_consistency"] > 0.999


def test_point_chamfer_and_samples(spheres):
    p, n = sample_surface(spheres[0], 5000, seed=1)
    assert p.shape == n.shape == (5000, 3)
    np.testing.assert_allclose(np.linalg.norm(n, axis=1), 1.0)
    assert chamfer(p, p)["hausdorff"] == 0.0
    c = chamfer(p, p + [0.01, 0, 0])
    assert 0 < c["chamfer_l1"] <= 0.01 and c["hausdorff"] <= 0.01 + 1e-12


def test_empty_prediction(spheres):
    m = compare_meshes(trimesh.Trimesh(), spheres[0], n_samples=1000)
    assert math.isnan(m["chamfer_l1"]) and m["f_score@0.01"] == 0.0 and m["n_faces"] == 0


def test_triangle_quality():
    tri = trimesh.Trimesh([[0, 0, 0], [1, 0, 0], [0.5, math.sqrt(3) / 2, 0]], [[0, 1, 2]])
    q = triangle_quality(tri)
    assert q["min_angle_min"] == pytest.approx(60.0) and q["min_angle_p50"] == pytest.approx(60.0)


def test_residuals_on_a_plane():
    net = PLNetwork([torch.tensor([[1.0, 0, 0]])], [torch.tensor([-0.1])])
    box = trimesh.creation.box([0.2, 1, 1])  # faces at x = +-0.1
    r = residuals(net, box, n_samples=2000)
    assert r["abs_f_vertices_max"] == pytest.approx(0.2)
    assert 0.05 < r["abs_f_samples_mean"] < 0.15  # half the area at |f| = 0, half at 0.2 ...
    m = compare_meshes(box, box, n_samples=2000, net=net)
    assert "abs_f_samples_max" in m


def test_peak_memory():
    with peak_memory() as mem:
        a = np.ones(20_000_000)  # 160 MB
        del a
    assert mem["peak_rss_mb"] >= mem["delta_rss_mb"] >= 0


# --------------------------------------------------------------- asymmetric, closed-form cases
# Identical meshes and concentric spheres cannot tell a one-sided metric from a two-sided one;
# these cases have different answers in the two directions, each known independently.


def _square(side: float, z: float = 0.0, flip_second: bool = False) -> trimesh.Trimesh:
    """A flat square ``[-side/2, side/2]^2`` at height ``z``, two triangles (normal +z; with
    ``flip_second`` the second triangle faces -z)."""
    h = side / 2
    v = np.array([[-h, -h, z], [h, -h, z], [h, h, z], [-h, h, z]])
    second = [0, 3, 2] if flip_second else [0, 2, 3]
    return trimesh.Trimesh(v, np.array([[0, 1, 2], second]), process=False)


def _mean_distance_to_square(big: float, small: float, height: float, n: int = 2000) -> tuple[float, float]:
    """Mean and mean-square distance from the square ``big`` (uniform) to the square ``small``
    at ``height`` above it, by the midpoint rule on an ``n x n`` grid (independent of nsr)."""
    t = (np.arange(n) + 0.5) / n * big - big / 2
    dx = np.maximum(np.abs(t) - small / 2, 0.0)
    d2 = dx[:, None] ** 2 + dx[None, :] ** 2 + height**2
    return float(np.sqrt(d2).mean()), float(d2.mean())


def test_point_chamfer_subset_known_one_sided_distances():
    ref = np.array([[0.0, 0, 0], [1, 0, 0], [2, 0, 0], [3, 0, 0]])
    pred = ref[:2]  # a subset: every pred point is on ref; ref points are 0, 0, 1, 2 away
    for a, b, acc, comp in ((pred, ref, 0.0, 0.75), (ref, pred, 0.75, 0.0)):
        c = chamfer(a, b)
        assert c["accuracy"] == pytest.approx(acc) and c["completeness"] == pytest.approx(comp)
        assert c["chamfer_l1"] == pytest.approx(0.375)
        assert c["chamfer_l2"] == pytest.approx(0.5 * (0 + 0 + 1 + 4) / 4)
        assert c["hausdorff"] == pytest.approx(2.0)


@pytest.mark.parametrize("swap", [False, True])
def test_small_square_under_large_square_closed_form(swap):
    """Unit square at z=0, a 3x3 square at z=h: every point of the small one is exactly h from
    the large one; the large one's points are sqrt(h^2 + d^2) away, d the planar distance to
    the small square (integrated independently). Hausdorff: a corner, sqrt(h^2 + 2)."""
    h = 0.1
    small, large = _square(1.0), _square(3.0, z=h)
    mean_big, msq_big = _mean_distance_to_square(3.0, 1.0, h)
    pred, ref = (large, small) if swap else (small, large)
    m = compare_meshes(pred, ref, n_samples=50_000)
    d_small, d_big = ("completeness", "accuracy") if swap else ("accuracy", "completeness")
    assert m[d_small] == pytest.approx(h, abs=1e-12)  # exact point-to-triangle distance
    assert m[d_big] == pytest.approx(mean_big, abs=5e-3)
    assert m["chamfer_l1"] == pytest.approx(0.5 * (h + mean_big), abs=3e-3)
    assert m["chamfer_l2"] == pytest.approx(0.5 * (h**2 + msq_big), abs=5e-3)
    assert m["hausdorff"] == pytest.approx(math.sqrt(h**2 + 2.0), abs=0.03)
    assert m["normal_consistency"] == pytest.approx(1.0, abs=1e-12)


def test_f_score_known_value_at_known_threshold():
    tau = 0.01
    a, b, c = 0.005, 0.05, 0.5  # tau^2 < a < tau < b < sqrt(tau) < c
    d_pr = np.array([a, b])  # precision 1/2
    d_rp = np.array([a, a, a, c])  # recall 3/4
    assert f_score(d_pr, d_rp, tau) == pytest.approx(2 * 0.5 * 0.75 / 1.25)
    assert f_score(d_pr, d_rp, 0.001) == 0.0 and f_score(d_pr, d_rp, 1.0) == pytest.approx(1.0)


def test_f_score_thresholds_are_fractions_of_the_reference_diagonal():
    """A unit square and a copy at distance h: every distance is exactly h; the thresholds
    are 0.5 % and 1 % of the diagonal sqrt(2), 0.00707 and 0.01414."""
    m = compare_meshes(_square(1.0), _square(1.0, z=0.01), n_samples=5000)
    assert m["chamfer_l1"] == pytest.approx(0.01, abs=1e-12)
    assert m["hausdorff"] == pytest.approx(0.01, abs=1e-12)
    assert m["f_score@0.01"] == 1.0 and m["f_score@0.005"] == 0.0


def test_normal_consistency_is_orientation_free_and_measures_angles():
    """Half of the reference's triangles face the other way: |cos| = 1 everywhere still."""
    m = compare_meshes(_square(1.0, z=0.05), _square(1.0, flip_second=True), n_samples=5000)
    assert m["normal_consistency"] == pytest.approx(1.0, abs=1e-12)
    n = np.array([[0.0, 0, 1], [0, 0, -1]])
    flipped = np.array([[0.0, 0, -1], [0, 0, 1]])
    assert normal_consistency(n, n, flipped, flipped) == pytest.approx(1.0)
    tilted = np.array([[0.0, math.sin(0.3), math.cos(0.3)]] * 2)
    assert normal_consistency(n, n, tilted, tilted) == pytest.approx(math.cos(0.3))
    perpendicular = np.array([[1.0, 0, 0]] * 2)
    assert normal_consistency(n, n, perpendicular, perpendicular) == pytest.approx(0.0)


def test_exact_point_to_triangle_distance_under_coarse_sampling():
    """A large triangle sampled at its three corners only: the nearest sample of a point above
    its centroid is ~5.8 away, the triangle itself exactly h."""
    h = 0.02
    tri = trimesh.Trimesh([[0.0, 0, 0], [10, 0, 0], [0, 10, 0]], [[0, 1, 2]], process=False)
    samples, faces = np.asarray(tri.vertices, dtype=float), np.zeros(3, dtype=np.int64)
    q = np.array([[10 / 3, 10 / 3, h], [10 / 3, 10 / 3, -h], [1.0, 1.0, 0.0]])
    d, f = surface_distance(q, tri, samples, faces)
    np.testing.assert_allclose(d, [h, h, 0.0], atol=1e-12)
    assert f.tolist() == [0, 0, 0]
    # the same through compare_meshes with few samples on a large triangle
    up = tri.copy()
    up.vertices = np.asarray(up.vertices) + [0, 0, h]
    m = compare_meshes(tri, up, n_samples=20)
    assert m["chamfer_l1"] == pytest.approx(h, abs=1e-12)
    assert m["hausdorff"] == pytest.approx(h, abs=1e-12)


def test_f_score_threshold_ignores_unreferenced_vertices():
    """OBJ files often carry stray vertices; the F-score thresholds are fractions of the
    diagonal of the reference *surface*, so a stray vertex far away must not widen them."""
    ref = _square(1.0, z=0.01)
    stray = trimesh.Trimesh(np.vstack([ref.vertices, [[100.0, 100.0, 100.0]]]), ref.faces, process=False)
    m = compare_meshes(_square(1.0), stray, n_samples=2000)
    assert m["f_score@0.01"] == 1.0 and m["f_score@0.005"] == 0.0  # as without the stray vertex
