"""The demo's shape, its true-shape measurements and its report, against closed forms."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh
from matplotlib.image import imread

from nsr import demo
from nsr.training.shapes import Box, Cylinder, Extrusion, Polygon, Sphere, bracket, surface_samples


def _brute_distance(points, surface):
    """Distance from each of ``points`` to the nearest of a dense ``surface`` sample."""
    from scipy.spatial import cKDTree

    return cKDTree(surface).query(points)[0]


def test_cylinder_sdf_matches_brute_force():
    cyl = Cylinder(0.1, 0.2, "x", [0.05, 0.0, 0.0])
    # A dense sample of the closed cylinder's surface: wall and both caps.
    t, a = np.meshgrid(np.linspace(-0.2, 0.2, 401), np.linspace(0, 2 * np.pi, 629))
    wall = np.stack([t.ravel() + 0.05, 0.1 * np.cos(a.ravel()), 0.1 * np.sin(a.ravel())], 1)
    r, a = np.meshgrid(np.linspace(0, 0.1, 101), np.linspace(0, 2 * np.pi, 629))
    caps = [np.stack([np.full(r.size, x), r.ravel() * np.cos(a.ravel()), r.ravel() * np.sin(a.ravel())], 1)
            for x in (-0.15, 0.25)]
    surface = np.vstack([wall, *caps])
    pts = np.random.default_rng(0).uniform(-0.4, 0.4, (300, 3))
    d = cyl(pts)
    np.testing.assert_allclose(np.abs(d), _brute_distance(pts, surface), atol=2e-3)
    inside = (np.abs(pts[:, 0] - 0.05) < 0.2) & (np.hypot(pts[:, 1], pts[:, 2]) < 0.1)
    assert ((d < 0) == inside).all()


def test_extrusion_of_a_square_is_a_box():
    sq = Polygon([[-0.1, -0.2], [0.1, -0.2], [0.1, 0.2], [-0.1, 0.2]])
    ext = Extrusion(sq, 0.05, axis="y", center=0.1)  # profile in (x, z), y in [0.05, 0.15]
    box = Box([0.1, 0.05, 0.2], center=[0.0, 0.1, 0.0])
    pts = torch.rand(2000, 3, dtype=torch.float64) - 0.5
    torch.testing.assert_close(ext.sdf(pts), box.sdf(pts))


def test_bracket_known_points():
    s = bracket()
    pts = np.array([
        [0.28, 0.12, -0.3],  # on the axis of a base hole: radius 0.055 away from its wall
        [0.0, 0.1, -0.34],  # in the base plate, 0.01 above its bottom face
        [0.0, 0.0, -0.1],  # in the rib, 0.015 from either side
        [0.0, 0.1, -0.1],  # in the air beside the rib: 0.085 from its side
        [-0.25, 0.12, 0.17],  # on the axis of an upright hole
    ])  # fmt: skip
    np.testing.assert_allclose(s(pts), [0.055, -0.01, -0.015, 0.085, 0.055], atol=1e-12)


def test_surface_samples_are_on_the_surface_and_spread_by_area():
    box = Box([0.1, 0.2, 0.3])
    pts = surface_samples(box, 40_000, resolution=64)
    assert len(pts) > 39_000
    assert np.abs(box(pts)).max() <= 1e-9
    on_x = np.isclose(np.abs(pts[:, 0]), 0.1, atol=1e-9).mean()
    area = 2 * (0.2 * 0.4 + 0.2 * 0.6 + 0.4 * 0.6)  # (2a)(2b) per pair of faces, a, b the other half sizes
    assert abs(on_x - 2 * 0.4 * 0.6 / area) < 0.02  # closed form: the x faces' share of the area


def test_against_truth_sphere_closed_form():
    """A sphere of radius 0.32 against the true sphere of radius 0.3: every distance is 0.02."""
    mesh = trimesh.creation.icosphere(5, 0.32)
    shape = Sphere(0.3)
    truth = surface_samples(shape, 100_000, resolution=96)
    m = demo.against_truth(mesh, shape, truth, n=20_000)
    assert abs(m["true_abs_sdf_mean"] - 0.02) < 1e-3  # icosphere chords lie < 3e-4 inside
    assert abs(m["true_chamfer_l1"] - 0.02) < 1.5e-3
    same = demo.against_truth(trimesh.creation.icosphere(5, 0.3), shape, truth, n=20_000)
    assert same["true_chamfer_l1"] < 1.5e-3  # within the sampling floor and the chord error


def test_report_gives_each_time_once():
    rows = [{"name": "exact (nsr)", "time_s": 8.123, "n_faces": 10, "abs_f_vertices_max": 1e-16,
             "true_chamfer_l1": 1e-3},
            {"name": "marching cubes 64³", "time_s": 1.234, "n_faces": 20, "abs_f_vertices_max": 1e-3,
             "true_chamfer_l1": 2e-3, "exact_chamfer_l1": 5e-4}]  # fmt: skip
    result = {"rows": rows, "timings": {"train_s": 60.0, "measure_s": 3.0}, "files": [], "sampling_floor": 1e-4}
    text = demo.report(result, 70.0)
    assert text.count("8.12") == 1 and text.count("1.23") == 1


def _fake_run(tmp_path: Path) -> Path:
    """A training run without training: a small network near a ball of radius 0.3, and the
    config of an analytic sphere of radius 0.3 (the true shape)."""
    import nsr

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    torch.manual_seed(0)
    mlp = nsr.ReLUMLP(width=12, depth=2, geometric_init=True, radius=0.3)
    torch.nn.init.uniform_(mlp.layers[0].bias, -0.1, 0.1)
    torch.save(mlp.state_dict(), run / "checkpoints" / "last.ckpt")
    (run / "config.yaml").write_text(
        "data:\n  kind: analytic\n  box: 0.5\n  shape: {_target_: nsr.training.shapes.Sphere, radius: 0.3}\n"
    )
    return run


def _small_demo(monkeypatch) -> None:
    """The demo's sample counts and resolutions made small enough for a test."""
    for name, value in (("N_SAMPLES", 5000), ("N_TRUE", 20_000), ("TRUE_SAMPLE_RES", 48),
                        ("TRUE_DISPLAY_RES", 32), ("CLOSE_UP", ((0.0, 0.0, 0.3), 0.1))):  # fmt: skip
        monkeypatch.setattr(demo, name, value)


def test_run_demo_on_a_given_run(tmp_path, monkeypatch):
    """The whole demo but training, small: the exact mesh is measured against the true shape
    (not against itself), marching cubes against both, every output written."""
    _small_demo(monkeypatch)
    result = demo.run_demo(tmp_path / "out", resolutions=(16, 24), run_dir=_fake_run(tmp_path))
    exact, mc16, mc24 = result["rows"]
    assert exact["abs_f_vertices_max"] < 1e-12
    assert 0 < exact["true_chamfer_l1"] < 0.3  # an untrained net: near, not on, the sphere
    assert "exact_chamfer_l1" not in exact  # the exact mesh is never its own reference
    assert mc16["exact_chamfer_l1"] > 0 and mc16["abs_f_vertices_max"] > exact["abs_f_vertices_max"]
    assert result["true_shape"] == "Sphere"
    for f in result["files"]:
        assert Path(f).is_file(), f
    pngs = [Path(f) for f in result["files"] if f.endswith(".png")]
    assert {p.name for p in pngs} >= {"overview.png", "exact_polygons.png", "mc_error.png", "slice_y0.png",
                                      "regions_y0.png", "error_vs_resolution.png"}
    for p in pngs:
        assert imread(p)[..., :3].std() > 0.01, p
    saved = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert saved["rows"][0]["time_s"] == pytest.approx(exact["time_s"])
    assert trimesh.load(tmp_path / "out" / "exact_polygons.obj", process=False).faces.shape[0] > 0


def test_run_demo_on_a_grid_network_run(tmp_path, monkeypatch):
    """A grid network's run (``--net``): loaded as nsr-extract loads it, meshed in auto's track mode,
    every picture drawn (the regions picture cuts the grid encoder by the plane too)."""
    from tests.test_apps import _tiny_grid_checkpoint

    _small_demo(monkeypatch)
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    _tiny_grid_checkpoint(run / "checkpoints" / "last.ckpt")
    (run / "config.yaml").write_text(
        "data:\n  kind: analytic\n  box: 0.5\n  shape: {_target_: nsr.training.shapes.Sphere, radius: 0.3}\n"
    )
    result = demo.run_demo(tmp_path / "out", resolutions=(16,), run_dir=run)
    exact = result["rows"][0]
    assert exact["mode"] == "track" and result["extract"]["mode"] == "track"
    assert exact["abs_f_vertices_max"] < 1e-12 and exact["n_polygons"] > 0
    names = {Path(f).name for f in result["files"]}
    assert {"regions_y0.png", "slice_y0.png", "overview.png"} <= names
