"""Hostile input, category *training data*: open meshes, shapes without an inside, bad clouds.

An open surface has no inside, so the ray-voting sign answers at random and training on it
exports garbage with exit 0. The default (``data.sign=auto``) must refuse such a mesh before
training, naming the file and the measured statistic; ``sign=winding`` and ``sign=shell`` must
train on it honestly. Known answers: winding numbers of a cube (1 / 0), of a cube without its
top face at its centre (5 faces of solid angle 4 pi / 6 each: 5/6) and of a square seen from
above its centre (``4 asin(a^2 / (a^2 + h^2)) / 4 pi``); the shell SDF above a flat square
(``height - thickness / 2``). Add a case: a mesh or cloud file, the expected refusal or answer.
"""

from __future__ import annotations

import math
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh

from nsr.training.data import (
    MeshSource,
    PointCloudSource,
    ShapeError,
    cap_holes,
    igl_available,
    mesh_winding_numbers,
    sample_points,
    winding_numbers,
)
from tests.conftest import open3d_available

needs_o3d = pytest.mark.skipif(not open3d_available(), reason="open3d not importable")


def _cube(drop_top: bool = False) -> trimesh.Trimesh:
    """Unit cube ``[-0.5, 0.5]^3``, outward faces; optionally without its two +z triangles."""
    m = trimesh.creation.box()
    keep = ~(np.asarray(m.face_normals)[:, 2] > 0.5) if drop_top else np.ones(len(m.faces), bool)
    return trimesh.Trimesh(m.vertices, m.faces[keep], process=False)


def _square(a: float = 1.0) -> trimesh.Trimesh:
    """The square ``[-a, a]^2`` at z = 0, two triangles facing +z."""
    v = np.array([[-a, -a, 0.0], [a, -a, 0], [a, a, 0], [-a, a, 0]])
    return trimesh.Trimesh(v, [[0, 1, 2], [0, 2, 3]], process=False)


def _hemisphere() -> trimesh.Trimesh:
    m = trimesh.creation.icosphere(2)
    return trimesh.Trimesh(m.vertices, m.faces[m.triangles_center[:, 2] > 0], process=False)


OPEN_SHAPES = {"square": _square, "open-cube": lambda: _cube(drop_top=True), "hemisphere": _hemisphere}


def _write(tmp_path: Path, name: str, mesh: trimesh.Trimesh) -> Path:
    path = tmp_path / f"{name}.obj"
    mesh.export(path)
    return path


# ----------------------------------------------------------------- winding numbers: closed forms


def test_winding_number_of_a_closed_cube_is_one_inside_zero_outside():
    m = _cube()
    q = np.array([[0.0, 0, 0], [0.3, -0.2, 0.4], [-0.49, 0.49, 0.0], [2, 0, 0], [0.6, 0.6, 0.6], [0, 0, -5]])
    w = winding_numbers(m.vertices, m.faces, q)
    np.testing.assert_allclose(w.numpy(), [1, 1, 1, 0, 0, 0], atol=1e-12)
    inward = winding_numbers(m.vertices, m.faces[:, ::-1].copy(), q)  # orientation flips the sign
    np.testing.assert_allclose(inward.numpy(), [-1, -1, -1, 0, 0, 0], atol=1e-12)


def test_winding_number_of_a_cube_without_its_top_is_five_sixths_at_the_centre():
    m = _cube(drop_top=True)
    w = winding_numbers(m.vertices, m.faces, np.zeros((1, 3)))
    assert float(w[0]) == pytest.approx(5 / 6, abs=1e-12)


@pytest.mark.parametrize("h", [0.01, 0.5, 1.0, 3.0])
def test_winding_number_of_a_square_seen_from_above_its_centre(h):
    """Solid angle of a square of half-side a from height h on its axis: 4 asin(a^2 / (a^2 + h^2))."""
    a = 1.0
    m = _square(a)
    w = winding_numbers(m.vertices, m.faces, np.array([[0, 0, h], [0, 0, -h]]))
    want = 4 * math.asin(a**2 / (a**2 + h**2)) / (4 * math.pi)
    np.testing.assert_allclose(w.numpy(), [-want, want], atol=1e-12)  # faces +z: seen from below positive


@pytest.mark.skipif(not igl_available(), reason="libigl (optional) not installed")
def test_igl_fast_winding_number_agrees_with_the_exact_sum():
    m = _cube(drop_top=True)
    q = np.random.default_rng(0).uniform(-1, 1, (200, 3))
    exact = mesh_winding_numbers(m.vertices, m.faces, q, backend="exact")
    fast = mesh_winding_numbers(m.vertices, m.faces, q, backend="igl")
    assert float((exact - fast).abs().max()) < 1e-2


def test_igl_backend_without_libigl_is_a_clear_error(monkeypatch):
    import builtins

    real = builtins.__import__

    def no_igl(name, *args, **kwargs):
        if name == "igl":
            raise ImportError("No module named 'igl'")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_igl)
    m = _square()
    with pytest.raises(ImportError, match="pip install libigl"):
        mesh_winding_numbers(m.vertices, m.faces, np.zeros((1, 3)), backend="igl")
    w = mesh_winding_numbers(m.vertices, m.faces, np.array([[0, 0, -1.0]]), backend="auto")  # falls back
    assert float(w[0]) == pytest.approx(4 * math.asin(0.5) / (4 * math.pi), abs=1e-12)


# ----------------------------------------------------------------- open meshes: refused by default


@needs_o3d
@pytest.mark.parametrize("name", sorted(OPEN_SHAPES))
def test_open_surface_is_refused_by_default_naming_file_statistic_and_options(tmp_path, name):
    path = _write(tmp_path, name, OPEN_SHAPES[name]())
    with pytest.raises(ShapeError) as err:
        MeshSource(path, winding_backend="exact")
    msg = str(err.value)
    assert str(path) in msg and "inside is undefined" in msg
    frac = float(re.search(r"at ([0-9.]+)% of \d+ probe points", msg).group(1))
    assert frac > 5.0  # measured, and over the default limit
    for option in ("data.sign=shell", "data.sign=winding", "data.max_ambiguous"):
        assert option in msg


@needs_o3d
def test_closed_meshes_and_small_holes_pass_the_check(tmp_path):
    closed = MeshSource(_write(tmp_path, "cube", _cube()), winding_backend="exact")
    assert closed.watertight and closed.inside_check == {}
    sphere = trimesh.creation.icosphere(2)
    keep = np.ones(len(sphere.faces), bool)
    keep[:1] = False  # a small hole: the inside is still well defined
    holed = MeshSource(_write(tmp_path, "holed", trimesh.Trimesh(sphere.vertices, sphere.faces[keep])),
                       winding_backend="exact")
    assert holed.inside_check["ambiguous_fraction"] < 0.05
    assert holed.holes_filled == 1 and holed.watertight  # then its hole is capped (data.holes=auto)
    # a closed mesh whose OBJ duplicates vertices along seams is still closed
    seams = trimesh.Trimesh(_cube().triangles.reshape(-1, 3), np.arange(36).reshape(-1, 3), process=False)
    assert not seams.is_watertight
    assert MeshSource(_write(tmp_path, "seams", seams)).watertight


@needs_o3d
def test_bad_sign_options_are_refused(tmp_path):
    path = _write(tmp_path, "cube", _cube())
    with pytest.raises(ShapeError, match="data.sign must be one of"):
        MeshSource(path, sign="guess")
    with pytest.raises(ShapeError, match="shell_thickness"):
        MeshSource(path, sign="shell", shell_thickness=0.0)
    with pytest.raises(ShapeError, match="winding_backend"):
        MeshSource(path, winding_backend="fast")
    with pytest.raises(ShapeError, match="max_ambiguous"):
        MeshSource(path, max_ambiguous=2.0)


# ----------------------------------------------------------------- open meshes: holes closed by caps


def _holed_sphere(cos_cut: float = 0.8, subdivisions: int = 3) -> trimesh.Trimesh:
    """Unit icosphere without the faces whose centres have ``z > cos_cut`` (one round hole)."""
    m = trimesh.creation.icosphere(subdivisions)
    return trimesh.Trimesh(m.vertices, m.faces[m.triangles_center[:, 2] <= cos_cut], process=False)


def test_cap_holes_closes_a_cube_side_flat_and_keeps_the_orientation():
    cube = _cube(drop_top=True)
    v, f, n = cap_holes(cube.vertices, cube.faces)
    closed = trimesh.Trimesh(v, f, process=False)
    assert n == 1 and len(f) == len(cube.faces) + 4
    assert closed.is_watertight and closed.is_winding_consistent
    # a flat cap on the unit cube: volume 1 and area 6 exactly (closed forms), outward normals
    assert closed.volume == pytest.approx(1.0, abs=1e-12) and closed.area == pytest.approx(6.0, abs=1e-12)
    np.testing.assert_allclose(closed.face_normals[len(cube.faces):], [[0, 0, 1]] * 4, atol=1e-12)


def test_cap_holes_leaves_closed_meshes_and_seams_alone():
    cube = _cube()
    seams = trimesh.Trimesh(cube.triangles.reshape(-1, 3), np.arange(36).reshape(-1, 3), process=False)
    for mesh in (cube, seams):
        v, f, n = cap_holes(mesh.vertices, mesh.faces)
        assert n == 0 and len(f) == 12 and trimesh.Trimesh(v, f).is_watertight


def test_cap_holes_closes_every_hole_of_a_sphere():
    m = trimesh.creation.icosphere(3)
    c = m.triangles_center
    keep = (np.abs(c[:, 2]) <= 0.85) & (c[:, 0] <= 0.9)  # three round holes: +z, -z, +x
    v, f, n = cap_holes(m.vertices, m.faces[keep])
    closed = trimesh.Trimesh(v, f, process=False)
    assert n == 3 and closed.is_watertight and closed.is_winding_consistent and closed.volume > 0
    # signed volume is additive: the capped sphere plus the pieces cut off (the removed faces
    # closed by the same caps, turned over) make the whole sphere again
    index = {tuple(p): i for i, p in enumerate(np.asarray(m.vertices).tolist())}
    centroids = np.arange(len(v) - n, len(v))
    to_sphere = np.array([index.get(tuple(p), -1) for p in v.tolist()])  # caps' rims: m's own vertices
    to_sphere[centroids] = len(m.vertices) + np.arange(n)
    caps = to_sphere[f[int(keep.sum()):]]
    cut = trimesh.Trimesh(np.concatenate([m.vertices, v[centroids]]),
                          np.concatenate([m.faces[~keep], caps[:, ::-1]]), process=False)
    assert cut.is_watertight and cut.volume > 0
    assert closed.volume + cut.volume == pytest.approx(m.volume, abs=1e-12)


@needs_o3d
def test_filled_holes_give_a_true_signed_distance_across_the_cap(tmp_path):
    path = _write(tmp_path, "holed", _holed_sphere())
    kept = MeshSource(path, holes="keep", winding_backend="exact")
    filled = MeshSource(path, winding_backend="exact")  # data.holes=auto
    assert (kept.holes_filled, filled.holes_filled) == (0, 1)
    assert filled.watertight and not kept.watertight
    assert filled.inside_check["ambiguous_fraction"] < 0.05  # checked before the caps went in
    # the sphere (radius 1) is scaled to radius 0.45; the hole's rim is above z = 0.8 (0.36 in box
    # units) and at least about 0.2 from the axis.
    # Along the axis, through the cap: distance to the cap (|z - 0.36|), inside below, outside above.
    cap_z = float(filled.vertices[-1, 2])  # the cap's centre, on the rim's plane
    assert 0.36 < cap_z < 0.45
    z = cap_z + torch.tensor([-0.05, -0.01, 0.01, 0.03])
    q = torch.stack([torch.zeros(4), torch.zeros(4), z], dim=1)
    np.testing.assert_allclose(filled.signed_distance(q).numpy(), (z - cap_z).numpy(), atol=2e-3)
    # the open mesh's distance there is to the rim: no zero crossing near the cap's plane
    assert float(kept.signed_distance(q).abs().min()) > 0.1
    with pytest.raises(ShapeError, match="data.holes must be one of"):
        MeshSource(path, holes="close")
    with pytest.raises(ShapeError, match="data.holes=fill closes"):
        MeshSource(path, holes="fill", sign="shell")
    # an open surface without an inside is still refused by auto: caps cannot make one
    with pytest.raises(ShapeError, match="inside is undefined"):
        MeshSource(_write(tmp_path, "square", _square()), winding_backend="exact")


# ----------------------------------------------------------------- open meshes: winding and shell


def _samples(src) -> dict:
    counts = {"surface": 64, "near": 128, "uniform": 64}
    return sample_points(src, counts, [0.01, 0.003], 0.5, torch.Generator().manual_seed(0))


@needs_o3d
@pytest.mark.parametrize("name", sorted(OPEN_SHAPES))
@pytest.mark.parametrize("sign", ["winding", "shell"])
def test_open_surfaces_train_with_winding_or_shell(tmp_path, name, sign):
    src = MeshSource(_write(tmp_path, name, OPEN_SHAPES[name]()), sign=sign, winding_backend="exact")
    s = _samples(src)
    assert torch.isfinite(s["sdf"]).all() and torch.isfinite(s["surface"]).all()
    np.testing.assert_allclose(torch.linalg.vector_norm(s["normals"], dim=1).numpy(), 1.0, atol=1e-5)
    # surface samples are on the zero level of the source's own SDF
    assert float(src.signed_distance(s["surface"]).abs().max()) < 1e-5


@needs_o3d
def test_open_cube_with_winding_sign_has_its_centre_inside(tmp_path):
    src = MeshSource(_write(tmp_path, "open", _cube(drop_top=True)), sign="winding", winding_backend="exact")
    d = src.signed_distance(torch.tensor([[0.0, 0, 0], [0, 0, -0.3], [0.49, 0.49, 0.49]]))
    # the cube (side 1) is scaled to side 0.9: the centre is 0.45 from every face, inside (w = 5/6)
    assert float(d[0]) == pytest.approx(-0.45, abs=1e-6)
    assert float(d[1]) == pytest.approx(-0.15, abs=1e-6)
    assert float(d[2]) > 0


@needs_o3d
@pytest.mark.parametrize("t", [0.01, 0.04])
def test_shell_sdf_above_a_flat_square_is_height_minus_half_thickness(tmp_path, t):
    src = MeshSource(_write(tmp_path, "square", _square()), sign="shell", shell_thickness=t)
    heights = torch.tensor([0.0, 0.001, 0.1, 0.3])
    x = torch.stack([torch.zeros(4), torch.zeros(4), heights], 1)
    for z in (1, -1):  # the square lies in z = 0 of the box; both sides alike
        d = src.signed_distance(x * torch.tensor([1.0, 1.0, z]))
        np.testing.assert_allclose(d.numpy(), (heights - t / 2).numpy(), atol=1e-6)
    pts, nrm = src.sample_surface(500, torch.Generator().manual_seed(0))
    np.testing.assert_allclose(pts[:, 2].abs().numpy(), t / 2, atol=1e-6)  # on the two shell faces
    np.testing.assert_allclose((nrm[:, 2] * torch.sign(pts[:, 2])).numpy(), 1.0, atol=1e-6)  # outward


@needs_o3d
def test_datamodule_refuses_open_mesh_and_accepts_shell(tmp_path):
    from nsr.training.lightning import ShapeDataModule

    path = _write(tmp_path, "square", _square())
    with pytest.raises(ShapeError, match="inside is undefined"):
        ShapeDataModule(kind="mesh", path=str(path), winding_backend="exact")
    dm = ShapeDataModule(kind="mesh", path=str(path), sign="shell",
                         sampling={"batch_size": 64, "mode": "pool", "pool_size": 512, "n_val": 64})
    dm.setup()
    assert torch.isfinite(next(iter(dm.train_dataloader()))["sdf"]).all()


# ----------------------------------------------------------------- point clouds


def _cloud(tmp_path: Path, normals: np.ndarray | None, n: int = 200) -> Path:
    import open3d as o3d

    pts = trimesh.creation.icosphere(3).vertices[:n]
    pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(pts))
    if normals is not None:
        pcd.normals = o3d.utility.Vector3dVector(np.broadcast_to(normals, pts.shape).copy())
    path = tmp_path / "cloud.ply"
    o3d.io.write_point_cloud(str(path), pcd)
    return path


@needs_o3d
@pytest.mark.parametrize(
    "normals, match",
    [
        (np.zeros(3), "200 of 200 normals are zero vectors \\(all of them"),
        (np.array([np.nan, 0, 1]), "NaN or infinite"),
        (np.array([0.0, 0, 3.0]), "not unit vectors"),
    ],
    ids=["all-zero", "nan", "not-unit"],
)
def test_point_cloud_with_unusable_normals_is_refused(tmp_path, normals, match):
    path = _cloud(tmp_path, normals)
    with pytest.raises(ShapeError, match=match) as err:
        PointCloudSource(path)
    assert str(path) in str(err.value)


@needs_o3d
def test_point_cloud_with_a_few_points_is_refused(tmp_path):
    with pytest.raises(ShapeError, match="only 5 points"):
        PointCloudSource(_cloud(tmp_path, np.array([0.0, 0, 1]), n=5))
    assert PointCloudSource(_cloud(tmp_path, np.array([0.0, 0, 1]), n=100)).points.shape == (100, 3)


@needs_o3d
def test_exact_winding_numbers_on_a_large_pool_say_how_long_they_take(tmp_path):
    src = MeshSource(_write(tmp_path, "open", _cube(drop_top=True)), sign="winding", winding_backend="exact")
    with pytest.warns(RuntimeWarning, match="pip install libigl"):
        src._warn_slow_winding(10**9)  # 10^9 points x 10 faces
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        src._warn_slow_winding(10**9)  # once only
