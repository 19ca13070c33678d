"""Simplex-grid encoding: affine in every Kuhn simplex, continuous, barycentric, and its planes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from nsr.pl.encoding import (
    GridMLP,
    SimplexGridEncoder,
    SimplexGridEncoding,
    descending_order,
    level_resolutions,
    levels_nest,
)


def _enc(d, **kw):
    torch.manual_seed(0)
    e = SimplexGridEncoding(in_dim=d, init_scale=1.0, **kw).double()
    return e


def _simplex_ids(enc, x):
    ids = []
    for level in range(len(enc.resolutions)):
        cell, order, _ = enc.simplices(enc.grid_coordinates(x, level), level)
        ids.append(torch.cat([cell, order], 1))
    return torch.cat(ids, 1)


@pytest.mark.parametrize("d", [1, 2, 3, 4])
def test_affine_inside_each_simplex(d):
    enc = _enc(d, n_levels=3, min_resolution=2, max_resolution=9, table_size=64)
    gen = torch.Generator().manual_seed(d)
    x = torch.rand(500, d, generator=gen, dtype=torch.float64) * 1.8 - 0.9
    d1, d2 = (torch.randn(500, d, generator=gen, dtype=torch.float64) * 1e-4 for _ in range(2))
    a, b = 0.7, -0.4
    y = x + a * d1 + b * d2
    same = (_simplex_ids(enc, x) == _simplex_ids(enc, x + d1)).all(1)
    same &= (_simplex_ids(enc, x) == _simplex_ids(enc, x + d2)).all(1)
    same &= (_simplex_ids(enc, x) == _simplex_ids(enc, y)).all(1)
    assert same.sum() > 300
    f0, f1, f2, fy = enc(x), enc(x + d1), enc(x + d2), enc(y)
    pred = f0 + a * (f1 - f0) + b * (f2 - f0)
    assert torch.allclose(fy[same], pred[same], atol=1e-12)
    # where the simplex changes, the function is generally not affine (the test can fail)
    assert not torch.allclose(fy[~same], pred[~same], atol=1e-12) or (~same).sum() == 0


@pytest.mark.parametrize("d", [2, 3])
def test_continuous_across_facets(d):
    enc = _enc(d, n_levels=2, min_resolution=3, max_resolution=5, table_size=10_000)
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(400, d, generator=gen, dtype=torch.float64) * 1.6 - 0.8
    u = enc.grid_coordinates(x, 1)
    # move each point onto a plane u_0 - u_1 = k of level 1, then step across it
    k = torch.round(u[:, 0] - u[:, 1])
    shift = (u[:, 0] - u[:, 1] - k) / 2
    on = x.clone()
    scale = enc.resolutions[1] / (enc.hi - enc.lo)
    on[:, 0] -= shift / scale
    on[:, 1] += shift / scale
    n = torch.zeros_like(x)
    n[:, 0], n[:, 1] = 1.0, -1.0
    eps = 1e-9
    jump = (enc(on + eps * n) - enc(on - eps * n)).abs().max()
    assert jump < 1e-6  # a discontinuous encoding would jump by ~|features| ~ 1


def test_reproduces_linear_functions_exactly():
    """Barycentric interpolation of a linear function of the grid vertices is that function."""
    enc = _enc(3, n_levels=1, min_resolution=4, max_resolution=4, table_size=1000, features=1)
    a = torch.tensor([0.3, -1.1, 2.0], dtype=torch.float64)
    n = enc.resolutions[0]
    grid = torch.cartesian_prod(*[torch.arange(n + 1)] * 3)  # (x, y, z) with the last fastest
    with torch.no_grad():
        enc.table[enc._rows(grid, 0), 0] = (grid.double() * a).sum(1)
    x = torch.rand(1000, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * 2 - 1
    want = (enc.grid_coordinates(x, 0) * a).sum(1)
    assert torch.allclose(enc(x)[:, 0], want, atol=1e-12)


@pytest.mark.parametrize("d", [1, 2, 3, 4])
def test_barycentric_weights_reproduce_the_point(d):
    enc = _enc(d, n_levels=1, min_resolution=5, max_resolution=5)
    x = torch.rand(300, d, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * 2 - 1
    u = enc.grid_coordinates(x, 0)
    verts, w = enc.simplex_vertices(u, 0)
    assert (w >= -1e-15).all() and torch.allclose(w.sum(1), torch.ones(300, dtype=torch.float64))
    assert torch.allclose((w[:, :, None] * verts.double()).sum(1), u, atol=1e-12)
    # the simplex's vertices lie in one cell: coordinates within cell .. cell + 1
    cell = verts[:, 0]
    assert ((verts - cell[:, None]) >= 0).all() and ((verts - cell[:, None]) <= 1).all()


def test_planes_separate_exactly_the_points_in_different_simplices():
    enc = _enc(3, n_levels=2, min_resolution=2, max_resolution=3)
    gen = torch.Generator().manual_seed(4)
    x = torch.rand(3000, 3, generator=gen, dtype=torch.float64) * 2 - 1
    y = x + torch.randn(3000, 3, generator=gen, dtype=torch.float64) * 0.2
    inside = (y.abs() < 1).all(1)  # no clamping: it would put points exactly on planes
    x, y = x[inside], y[inside]
    normals = torch.cat([enc.planes(level)[0] for level in range(2)])
    offsets = torch.cat([enc.planes(level)[1] for level in range(2)])
    side_x = (x @ normals.T - offsets) > 0
    side_y = (y @ normals.T - offsets) > 0
    separated = (side_x != side_y).any(1)
    same_simplex = (_simplex_ids(enc, x) == _simplex_ids(enc, y)).all(1)
    assert torch.equal(separated, ~same_simplex)


def _corners_in_finest_simplex(enc, x):
    """The D + 1 corners (in x) of the finest level's Kuhn simplex holding each point."""
    level = len(enc.resolutions) - 1
    vertices, _ = enc.simplex_vertices(enc.grid_coordinates(x, level), level)  # (P, D+1, D) grid ints
    return enc.lo + (enc.hi - enc.lo) * vertices.double() / enc.resolutions[level]


@pytest.mark.parametrize("levels, nested", [((3, 2, 8), True), ((3, 2, 9), False)])
def test_nested_levels_are_affine_on_the_finest_simplices(levels, nested):
    """Levels 2, 4, 8 nest: the whole encoding interpolates its values at the corners of each finest
    simplex barycentrically; levels 2, 4, 9 do not (the coarse planes cut the simplices of 9)."""
    enc = _enc(3, n_levels=levels[0], min_resolution=levels[1], max_resolution=levels[2], table_size=10**4)
    assert levels_nest(enc.resolutions) is nested
    gen = torch.Generator().manual_seed(7)
    x = torch.rand(400, 3, generator=gen, dtype=torch.float64) * 1.8 - 0.9
    corners = _corners_in_finest_simplex(enc, x)  # (P, 4, 3)
    w = torch.distributions.Dirichlet(torch.ones(4, dtype=torch.float64)).sample((400,))
    y = (w[:, :, None] * corners).sum(1)  # random points of the same finest simplices
    at_corners = enc(corners.reshape(-1, 3)).reshape(400, 4, -1)
    interpolated = (w[:, :, None] * at_corners).sum(1)
    error = (enc(y) - interpolated).abs().amax(1)
    if nested:
        assert error.max() < 1e-12
    else:
        assert (error > 1e-6).float().mean() > 0.5


def test_default_levels_nest():
    """A grid built with the defaults, in the library or from nsr's configs, has nested levels."""
    import yaml

    from nsr._config import config_dir

    assert levels_nest(SimplexGridEncoding().resolutions)
    assert levels_nest(GridMLP().encoding.resolutions)
    for name in ("model/grid_mlp.yaml", "experiment/grid_cpu.yaml", "experiment/grid_gpu.yaml"):
        cfg = yaml.safe_load((Path(config_dir()) / name).read_text())
        net = cfg["net"] if "net" in cfg else cfg["model"]["net"]
        assert levels_nest(level_resolutions(net["n_levels"], net["min_resolution"], net["max_resolution"])), name


def test_nested_levels_add_no_planes():
    """The extractor's breakpoints of levels 2, 4, 8 are the finest level's alone: on the grid's own
    box, 3 (N - 1) axis planes and 3 (2N - 1) diagonal ones for N = 8."""
    nested = SimplexGridEncoder(_enc(3, n_levels=3, min_resolution=2, max_resolution=8))
    lo, hi = -torch.ones(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
    assert len(nested.planes(lo, hi)[1]) == 3 * 7 + 3 * 15
    overlaid = SimplexGridEncoder(_enc(3, n_levels=3, min_resolution=2, max_resolution=9))  # 2, 4, 9
    # 2's planes lie in 4's; 4's (3 per axis, 7 per diagonal pair) and 9's (8, 17) share only the
    # diagonals through the origin
    assert len(overlaid.planes(lo, hi)[1]) == 3 * (3 + 8) + 3 * (7 + 17 - 1)


def test_dense_and_hashed_levels():
    enc = SimplexGridEncoding(in_dim=3, n_levels=4, min_resolution=4, max_resolution=64, table_size=4096)
    assert enc.resolutions == level_resolutions(4, 4, 64) == [4, 10, 25, 64]
    assert enc.dense == [True, True, False, False]
    x = torch.rand(1000, 3) * 2 - 1
    for level in (2, 3):
        verts, _ = enc.simplex_vertices(enc.grid_coordinates(x, level), level)
        rows = enc._rows(verts, level) - enc.offsets[level]
        assert rows.min() >= 0 and rows.max() < 4096
    assert enc.table.shape == (5**3 + 11**3 + 2 * 4096, 2)


def test_grid_mlp_trains_its_table():
    net = GridMLP(in_dim=3, width=8, depth=2, n_levels=2, max_resolution=8, include_input=True)
    x = torch.rand(64, 3) * 2 - 1
    net(x).square().mean().backward()
    assert net.encoding.table.grad is not None and net.encoding.table.grad.abs().sum() > 0


def test_bad_arguments():
    with pytest.raises(ValueError, match="bounds"):
        SimplexGridEncoding(bounds=(1.0, -1.0))
    with pytest.raises(ValueError, match="min_resolution"):
        SimplexGridEncoding(min_resolution=8, max_resolution=4)
    with pytest.raises(ValueError, match=r"shape \(P, 3\)"):
        SimplexGridEncoding()(torch.zeros(4, 2))


def test_builds_on_the_meta_device():
    """Checkpoint loaders check shapes on the meta device before allocating: nothing in __init__ may read a tensor."""
    with torch.device("meta"):
        net = GridMLP(in_dim=3, width=8, depth=1, n_levels=3, min_resolution=4, max_resolution=64, table_size=4096)
    real = GridMLP(in_dim=3, width=8, depth=1, n_levels=3, min_resolution=4, max_resolution=64, table_size=4096)
    assert net.encoding.table.is_meta and net.encoding.table.shape == real.encoding.table.shape
    # level 2 (N=16, 17^3 vertices) is hashed into 4096 rows
    assert net.encoding.row_offsets == real.encoding.offsets.tolist() == [0, 5**3, 5**3 + 4096]


@pytest.mark.parametrize("dim", [1, 2, 3, 4])
def test_descending_order_is_the_stable_sort(dim):
    """The comparison-count order equals torch's stable descending argsort, ties included
    (coordinates on a quarter grid, so many rows have equal fractional parts)."""
    gen = torch.Generator().manual_seed(dim)
    frac = torch.randint(0, 4, (5000, dim), generator=gen).double() / 4
    assert (frac[:, :1] == frac).all(1).any() or dim == 1
    assert torch.equal(descending_order(frac), torch.argsort(-frac, dim=1, stable=True))
