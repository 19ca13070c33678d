"""Mesh metrics: zero for identical meshes, the known gap between concentric spheres."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import trimesh

from nsr.metrics import (
    chamfer,
    compare_meshes,
    peak_memory,
    residuals,
    sample_surface,
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
