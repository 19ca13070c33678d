"""Encoder networks: vertices where grid planes meet in lines are welded into one point.

Every grid line of a simplex grid lies on three planes (x_i = a, x_j = b, x_i - x_j = a - b), so a
surface crossing it meets three planes at once; the sign rule resolves that into several
vertices at one point joined by zero-length edges. The mesh must name them as one vertex, as
track mode does, whatever the tiling. Independent checks: positions are pairwise distinct,
every polygon has at least three distinct corners, the closed mesh is watertight, and the
three modes agree on counts, area and volume.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial import cKDTree

from nsr.extraction.surface import extract_mesh
from nsr.pl.encoding import GridMLP


def _grid_net(seed: int, include_input: bool) -> GridMLP:
    torch.manual_seed(seed)
    m = GridMLP(3, 8, 2, n_levels=2, min_resolution=2, max_resolution=4, include_input=include_input).double()
    with torch.no_grad():
        m.layers[-1].bias -= m(torch.rand(2000, 3, dtype=torch.float64) - 0.5).median()
    return m


def _check_mesh(mesh) -> None:
    v = mesh.vertices
    assert len(cKDTree(v).query_pairs(1e-12)) == 0, "two vertices at one point"
    for p in mesh.polygons:
        assert len(np.unique(p)) == len(p) >= 3
    assert mesh.stats["max_abs_f"] <= 1e-12


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("include_input", [False, True])
def test_every_mode_and_tiling_gives_one_vertex_per_point(seed, include_input):
    m = _grid_net(seed, include_input)
    ref = extract_mesh(m, (-0.5, 0.5), mode="track", progress=False)
    _check_mesh(ref)
    ref_area = ref.to_trimesh().area
    for kw in ({"mode": "complex"}, {"mode": "surface", "tiles": 1}, {"mode": "surface", "tiles": 2},
               {"mode": "surface", "tiles": 3}):
        mesh = extract_mesh(m, (-0.5, 0.5), progress=False, **kw)
        _check_mesh(mesh)
        assert len(mesh.polygons) == len(ref.polygons), kw
        assert len(mesh.vertices) == len(ref.vertices), kw
        assert mesh.to_trimesh().area == pytest.approx(ref_area, rel=1e-9), kw


@pytest.mark.parametrize("tiles", [1, 2, 3])
def test_the_closed_mesh_is_watertight_and_encloses_the_same_volume(tiles):
    m = _grid_net(1, True)
    meshes = [extract_mesh(m, (-0.5, 0.5), close=True, mode="surface", tiles=tiles, progress=False),
              extract_mesh(m, (-0.5, 0.5), close=True, mode="complex", progress=False)]
    for mesh in meshes:
        _check_mesh(mesh)
        tm = mesh.to_trimesh()
        assert tm.is_watertight and tm.is_winding_consistent
    assert meshes[0].to_trimesh().volume == pytest.approx(meshes[1].to_trimesh().volume, rel=1e-9)
    # independent: the enclosed volume is the fraction of the box where g < 0 (sampled)
    x = torch.rand(200_000, 3, dtype=torch.float64) - 0.5
    with torch.no_grad():
        frac = float((m(x) < 0).double().mean())
    assert abs(abs(meshes[0].to_trimesh().volume) - frac) < 0.01
