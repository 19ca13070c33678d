"""Marching cubes baseline: world coordinates, orientation, empty fields, memory refusal."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nsr.eval.marching_cubes import as_bounds, estimate_memory, marching_cubes
from nsr.networks import PLNetwork, ReLUMLP, as_network


def plane(offset: float = 0.1, axis: int = 0) -> PLNetwork:
    """One affine layer: f(x) = x[axis] - offset."""
    w = torch.zeros(1, 3, dtype=torch.float64)
    w[0, axis] = 1.0
    return PLNetwork([w], [torch.tensor([-offset], dtype=torch.float64)])


def sphere(center=(0.0, 0.0, 0.0), radius: float = 0.3):
    c = torch.tensor(center)
    return lambda x: (x - c.to(x.dtype)).norm(dim=1) - radius


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_plane_vertices_in_world_coordinates(axis):
    mesh = marching_cubes(plane(0.1, axis), (-0.5, 0.5), 17)
    assert len(mesh.faces) > 0
    np.testing.assert_allclose(mesh.vertices[:, axis], 0.1, atol=1e-6)
    assert mesh.vertices.min() == pytest.approx(-0.5) and mesh.vertices.max() == pytest.approx(0.5)
    expected = np.eye(3)[axis]  # outward = towards positive f
    normals = np.tile(expected, (len(mesh.faces), 1))
    np.testing.assert_allclose(mesh.face_normals, normals, atol=1e-6)


def test_sphere_radius_orientation_and_closed():
    mesh = marching_cubes(sphere(), (-0.5, 0.5), 48)
    r = np.linalg.norm(mesh.vertices, axis=1)
    np.testing.assert_allclose(r, 0.3, atol=2e-3)
    assert mesh.is_watertight
    assert mesh.volume == pytest.approx(4 / 3 * np.pi * 0.3**3, rel=0.02)  # > 0: outward faces


def test_anisotropic_box_and_resolution():
    box = [[-0.5, 0.5], [-0.3, 0.6], [-0.4, 0.4]]
    mesh = marching_cubes(sphere((0.1, 0.2, -0.1), 0.2), box, (30, 40, 50))
    np.testing.assert_allclose(mesh.vertices.mean(0), [0.1, 0.2, -0.1], atol=2e-3)
    r = np.linalg.norm(mesh.vertices - [0.1, 0.2, -0.1], axis=1)
    np.testing.assert_allclose(r, 0.2, atol=4e-3)


def test_relu_network_level_set_and_timings():
    net = ReLUMLP(3, 16, 2, geometric_init=True, radius=0.3)
    mesh, timings = marching_cubes(net, 0.5, 32, return_timings=True, chunk=1000)
    assert set(timings) == {"eval_s", "mesh_s", "total_s"}
    pl = as_network(net, dtype=torch.float64)
    f = pl(torch.from_numpy(mesh.vertices)).abs()
    assert f.max() < 0.05  # linear interpolation error along grid edges, not exact


def test_empty_field_warns():
    with pytest.warns(UserWarning, match="does not cross"):
        mesh = marching_cubes(sphere(radius=-0.1), (-0.5, 0.5), 8)
    assert mesh.is_empty


def test_refuses_resolution_that_does_not_fit():
    assert estimate_memory(4096) > 2**40 // 2
    with pytest.raises(MemoryError, match="lower resolution"):
        marching_cubes(sphere(), (-0.5, 0.5), 4096)


def test_bad_input():
    with pytest.raises(ValueError, match="3D network"):
        marching_cubes(ReLUMLP(2, 4, 1), (-1, 1), 8)
    with pytest.raises(ValueError, match="lo=1.0 >= hi=-1.0"):
        as_bounds([1.0, -1.0])
    np.testing.assert_allclose(as_bounds(0.5), [[-0.5, 0.5]] * 3)
