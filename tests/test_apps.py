"""nsr-extract, nsr-compare and the demo end to end on tiny networks (compose API, and the apps
run as ``python -m nsr.<app>`` with this interpreter and this checkout: an installed console script
may belong to another checkout)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from xml.etree import ElementTree

import numpy as np
import pytest
import torch
import trimesh
from hydra import compose, initialize_config_dir

from nsr._config import config_dir
from nsr.networks import NetworkError, ReLUMLP

pytest.importorskip("nsr.extraction.surface")
ROOT = Path(__file__).resolve().parents[1]


def _compose(name: str, overrides: list[str]):
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return compose(config_name=name, overrides=overrides)


@pytest.fixture(scope="module")
def tiny_net(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("net") / "tiny.pt"
    torch.save(ReLUMLP(3, 8, 2, geometric_init=True, radius=0.3).state_dict(), path)
    return path


def test_extract_surface(tiny_net, tmp_path):
    from nsr.extract import run_extract

    cfg = _compose("extract", [f"net={tiny_net}", f"out_dir={tmp_path}", "polygons=true"])
    stats = run_extract(cfg)
    for name in ("mesh.obj", "mesh.ply", "mesh_polygons.ply", "preview.png", "stats.json"):
        assert (tmp_path / name).is_file(), name
    saved = json.loads((tmp_path / "stats.json").read_text())
    assert saved["n_polygons"] == stats["n_polygons"] > 0
    assert saved["abs_f_vertices_max"] < 1e-9  # exact: vertices on the zero level
    assert saved["bounds"] == [[-0.5, 0.5]] * 3
    assert {"surface_s", "total_s"} <= set(saved["timings"]) and saved["memory"]["max_rss_mb"] > 0
    assert len(trimesh.load(tmp_path / "mesh.obj").faces) == saved["n_triangles"]
    v, e, f = saved["surface_f_vector"]
    assert v == saved["n_vertices"] and f == saved["n_polygons"]
    assert saved["surface_euler_characteristic"] == v - e + f


def test_extract_track_mode_matches_surface_mode(tiny_net, tmp_path):
    from nsr.extract import run_extract

    a = run_extract(_compose("extract", [f"net={tiny_net}", f"out_dir={tmp_path / 'a'}", "preview=false"]))
    b = run_extract(_compose("extract", [f"net={tiny_net}", f"out_dir={tmp_path / 'b'}", "preview=false",
                                         "mode=track"]))
    assert b["surface_stats"]["mode"] == "track"
    assert b["n_polygons"] == a["n_polygons"] > 0 and b["n_vertices"] == a["n_vertices"]
    assert b["abs_f_vertices_max"] < 1e-9


def test_extract_complex_2d(tmp_path):
    pytest.importorskip("nsr.extraction.complex")
    from nsr.extract import run_extract

    net = tmp_path / "net2d.pt"
    torch.save(ReLUMLP(2, 8, 2, geometric_init=True, radius=0.3).state_dict(), net)
    stats = run_extract({"net": str(net), "out_dir": str(tmp_path / "o"), "mode": "complex"})
    assert (tmp_path / "o" / "complex.npz").is_file() and (tmp_path / "o" / "preview.png").is_file()
    assert stats["n_complex_vertices"] > 4 and stats["f_vector"]


def test_extract_run_directory_uses_run_box(tmp_path):
    from nsr.extract import run_extract

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    net = ReLUMLP(3, 8, 2, geometric_init=True, radius=0.3)
    sd = {f"net.{k}": v for k, v in net.state_dict().items()}
    torch.save({"state_dict": sd, "epoch": 1}, run / "checkpoints" / "last.ckpt")
    (run / "config.yaml").write_text("data:\n  box: 0.6\n")
    stats = run_extract({"net": str(run), "out_dir": str(tmp_path / "o"), "preview": False})
    assert stats["bounds"] == [[-0.6, 0.6]] * 3
    assert stats["net"].endswith("last.ckpt")


def test_extract_bad_input(tiny_net, tmp_path):
    from nsr.extract import run_extract

    out = tmp_path / "o"
    with pytest.raises(FileNotFoundError, match="no such"):
        run_extract({"net": str(tmp_path / "missing.pt"), "out_dir": str(out)})
    with pytest.raises(FileNotFoundError, match="last.ckpt"):
        run_extract({"net": str(tmp_path), "out_dir": str(out)})
    bad = tmp_path / "conv.pt"
    torch.save(torch.nn.Sequential(torch.nn.Conv1d(3, 1, 1)).state_dict(), bad)  # whole modules: not unpickled
    with pytest.raises(NetworkError, match="conv"):
        run_extract({"net": str(bad), "out_dir": str(out)})
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ValueError, match="out_dir=.*is a file, not a folder"):
        run_extract({"net": str(tiny_net), "out_dir": str(blocker / "sub")})
    assert not out.exists()


def test_compare(tiny_net, tmp_path):
    from nsr.compare import run_compare

    gt = tmp_path / "gt.obj"
    trimesh.creation.icosphere(3, 0.3).export(gt)
    overrides = [f"net={tiny_net}", f"out_dir={tmp_path / 'c'}", "resolutions=[16,32]",
                 "n_samples=5000", f"reference={gt}"]  # fmt: skip
    result = run_compare(_compose("compare", overrides))
    out = tmp_path / "c"
    for name in ("compare.csv", "compare.json", "compare.md", "side_by_side.png",
                 "time_vs_resolution.png", "error_vs_resolution.png"):  # fmt: skip
        assert (out / name).is_file(), name
    rows = json.loads((out / "compare.json").read_text())["rows"]
    assert [(r["method"], r["resolution"]) for r in rows] == [
        ("exact", None), ("marching_cubes", 16), ("marching_cubes", 32)]  # fmt: skip
    assert all(r["reference"] == "ground truth gt.obj" for r in rows)
    assert rows[0]["abs_f_vertices_max"] < 1e-9 < rows[1]["abs_f_vertices_max"]
    assert np.isfinite(rows[1]["chamfer_l1"]) and "| exact |" in result["markdown"]


def test_compare_refuses_huge_resolution(tiny_net, tmp_path):
    from nsr.compare import run_compare

    with pytest.raises(MemoryError, match="lower resolution"):
        run_compare({"net": str(tiny_net), "out_dir": str(tmp_path / "c"), "resolutions": [8192]})
    assert not (tmp_path / "c").exists()


def start_app(app: str, *args: str, cwd: Path | None = None) -> subprocess.Popen:
    """``python -m nsr.<app> ARGS`` with this interpreter, importing this checkout's nsr."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), HYDRA_FULL_ERROR="0")
    return subprocess.Popen([sys.executable, "-m", f"nsr.{app}", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=cwd or ROOT, env=env)  # fmt: skip


def test_apps_as_modules(tiny_net, tmp_path):
    procs = [  # run side by side: each pays the interpreter and torch start-up
        start_app("extract", f"net={tiny_net}", f"out_dir={tmp_path / 'e'}", f"hydra.run.dir={tmp_path / 'h1'}"),
        start_app("compare", f"net={tiny_net}", f"out_dir={tmp_path / 'c'}", "resolutions=[16]",
                  "n_samples=2000", "render=false", f"hydra.run.dir={tmp_path / 'h2'}"),
        start_app("extract", f"net={tmp_path / 'nope.pt'}", f"hydra.run.dir={tmp_path / 'h3'}"),
    ]  # fmt: skip
    outs = [p.communicate(timeout=300) for p in procs]
    (rc1, rc2, rc3), ((out1, err1), (out2, err2), (_, err3)) = [p.returncode for p in procs], outs
    assert rc1 == 0, err1
    assert (tmp_path / "e" / "stats.json").is_file()
    assert f"run directory: {tmp_path / 'e'}" in out1  # every app says where its outputs are
    assert rc2 == 0, err2
    assert "| marching_cubes | 16 |" in out2 and f"run directory: {tmp_path / 'c'}" in out2
    assert rc3 == 2 and err3.startswith("nsr-extract: error: net=") and "Traceback" not in err3
    assert len(err3.strip().splitlines()) == 1 and not (tmp_path / "h3").exists()  # refused before Hydra's folder


def test_train_log_has_a_line_per_epoch_and_no_redraws(tmp_path):
    """stdout to a file (a pipe here): no progress-bar carriage returns, one line per epoch, and
    the run directory at the end."""
    run = tmp_path / "run"
    proc = start_app("train", "trainer.max_epochs=2", "model.net.width=8", "model.net.depth=2",
                     "trainer.accelerator=cpu",
                     "data.sampling.steps_per_epoch=2", "data.sampling.batch_size=256", "data.sampling.n_val=500",
                     "extract=none", "logger=none", f"hydra.run.dir={run}", cwd=tmp_path)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    assert "\r" not in out + err
    assert [ln.split(":")[0] for ln in out.splitlines() if ln.startswith("epoch ")] == ["epoch 1/2", "epoch 2/2"]
    assert out.strip().splitlines()[-1] == f"run directory: {run}"


def test_help_says_what_each_app_does(tmp_path):
    procs = {app: start_app(app, "--help", cwd=tmp_path) for app in ("extract", "compare", "train")}
    text = {app: p.communicate(timeout=300)[0] for app, p in procs.items()}
    assert all(p.returncode == 0 for p in procs.values())
    # the comments of conf/<app>.yaml: what the app does, each option with default and meaning, examples
    assert "nsr-extract: the exact zero-level set" in text["extract"] and "Examples:" in text["extract"]
    assert ("mode: auto          # auto: surface (complete); track for grid networks off their cells' box "
            "and where surface runs out of memory") in text["extract"]
    assert "resolutions: [64, 128, 256]   # marching-cubes samples" in text["compare"]
    assert "regularizer" not in text["extract"] and "trainer" not in text["compare"]  # no training groups
    assert "data: " in text["train"] and "regularizer: " in text["train"]
    assert "nsr-train experiment=mesh" in text["train"]
    assert not list(tmp_path.iterdir())  # --help writes nothing


def test_extract_2d_level_set_every_mode(tmp_path):
    """A 2-D network whose level set is known: f = relu(u) + relu(v) + relu(-u - v) - r with
    (u, v) = (x, y) - c is convex and homogeneous around c, so f = 0 is the hexagon with corners
    c + r * (+-1, 0), (0, +-1), (1, -1), (-1, 1): one closed loop of 6 vertices and 6 segments,
    in surface and complex mode, written as PLY edges (trimesh: Path3D), OBJ line elements and
    SVG polylines. (c is off the tile planes; opposite neurons, as in |x|, are issue 15's
    degenerate networks.)"""
    from nsr.extract import run_extract

    c, r, w = torch.tensor([0.0625, 0.078125]), 0.25, torch.tensor([[1.0, 0], [0, 1], [-1, -1]])
    state = {"layers.0.weight": w, "layers.0.bias": -(w @ c), "layers.1.weight": torch.ones(1, 3),
             "layers.1.bias": torch.tensor([-r])}
    path = tmp_path / "hexagon.pt"
    torch.save(state, path)
    corners = c.double().numpy() + r * np.array([[1, 0], [-1, 0], [0, 1], [0, -1], [1, -1], [-1, 1]])
    corners = corners[np.lexsort(corners.T[::-1])]
    for mode in ("surface", "complex"):
        out = tmp_path / mode
        stats = run_extract({"net": str(path), "out_dir": str(out), "mode": mode, "bounds": [-0.5, 0.5]})
        assert (stats["n_vertices"], stats["n_segments"], stats["n_polylines"]) == (6, 6, 1), stats
        assert stats["n_closed_loops"] == 1 and stats["n_components"] == 1
        assert stats["abs_f_vertices_max"] < 1e-15
        ply = trimesh.load(out / "level_set.ply")
        assert isinstance(ply, trimesh.path.Path3D) and len(ply.entities) == 1 and ply.entities[0].closed
        assert ply.length == pytest.approx(r * (4 + 2 * np.sqrt(2)), rel=1e-6)  # perimeter (trimesh: float32)
        assert np.allclose(np.unique(np.round(ply.vertices[:, :2], 12), axis=0), corners)
        obj = (out / "level_set.obj").read_text().splitlines()
        verts = np.array([[float(t) for t in r.split()[1:3]] for r in obj if r.startswith("v ")])
        lines = [[int(t) - 1 for t in r.split()[1:]] for r in obj if r.startswith("l ")]
        assert len(lines) == 1 and lines[0][0] == lines[0][-1] and len(lines[0]) == 7
        loop = verts[lines[0][:-1]]
        assert np.abs(loop[np.lexsort(loop.T[::-1])] - corners).max() < 1e-15  # 17 digits: float64 round trip
        svg = ElementTree.parse(out / "level_set.svg").getroot()
        pts = [e.get("points") for e in svg.iter() if e.tag.endswith("polyline")]
        assert len(pts) == 1 and len(pts[0].split()) == 7
        assert (out / "preview.png").is_file() and (out / "stats.json").is_file()
    assert (tmp_path / "complex" / "complex.npz").is_file()


def test_extract_2d_bunny_app_reports_the_polylines(shared_dir, tmp_path):
    """The shared 2-D bunny (4x32): the library finds 41 vertices on its level set in [-0.5, 0.5]^2;
    the app must report and write them (it used to refuse mode=surface and report 0 vertices)."""
    from nsr.extract import run_extract
    from nsr.extraction.surface import extract_mesh

    net = shared_dir / "models" / "bunny_2d_4x32.pt"
    if not net.is_file():
        pytest.skip(f"{net} is not present")
    lib = extract_mesh(str(net), [-0.5, 0.5], progress=False)
    for mode in ("surface", "complex"):
        stats = run_extract({"net": str(net), "out_dir": str(tmp_path / mode), "mode": mode, "preview": False})
        assert stats["n_vertices"] == len(lib.vertices) > 0
        assert stats["n_segments"] == sum(len(p) - 1 for p in lib.polylines)
        loaded = trimesh.load(tmp_path / mode / "level_set.ply")
        assert len(loaded.vertices) == len(lib.vertices)


def test_extract_zero_network_says_what_is_true(tmp_path):
    from nsr.extraction.surface import extract_mesh

    net = ReLUMLP(3, 8, 2)
    with torch.no_grad():
        for prm in net.parameters():
            prm.zero_()
    with pytest.warns(UserWarning, match="constant 0 on the box .*every point is on the level set") as rec:
        mesh = extract_mesh(net, 0.5, progress=False)
    assert mesh.is_empty and not any("does not reach" in str(w.message) for w in rec)
    with pytest.warns(UserWarning, match="does not reach the level -10 inside the box: it stays above it"):
        extract_mesh(ReLUMLP(3, 8, 2, geometric_init=True, radius=0.3), 3.0, level=-10.0, progress=False)


@pytest.mark.slow
def test_demo_end_to_end(tmp_path):
    pytest.importorskip("nsr.train")
    from nsr.demo import run_demo

    result = run_demo(tmp_path, resolutions=(16, 32), overrides=["trainer.max_epochs=2"])
    assert Path(result["run_dir"], "checkpoints", "last.ckpt").is_file()
    assert all(Path(f).is_file() for f in result["files"])
    assert result["extract"]["abs_f_vertices_max"] < 1e-9


def _tiny_grid_checkpoint(path: Path) -> Path:
    """A checkpoint as nsr-train writes it, of a coarse GridMLP whose level set is one closed
    convex-like surface: f = sum_i relu(n_i . x - b_i) - 0.3 with n_i near the 8 cube diagonals
    (planes in general position, off the grid's), the first neuron also reading a grid feature."""
    import itertools

    from nsr.checkpoints import network_spec
    from nsr.pl.encoding import GridMLP

    gen = torch.Generator().manual_seed(5)
    normals = torch.tensor(list(itertools.product([-1.0, 1.0], repeat=3))) + 0.1 * torch.rand(8, 3, generator=gen)
    net = GridMLP(in_dim=3, width=8, depth=1, n_levels=1, min_resolution=2, max_resolution=2, include_input=True)
    with torch.no_grad():
        f_enc = net.encoding.out_dim - 3
        first, last = net.layers
        first.weight.zero_()
        first.weight[:, f_enc:] = normals
        first.bias.copy_(-(0.05 * torch.rand(8, generator=gen) + 0.02))
        first.weight[0, 0] = 0.05
        last.weight.fill_(1.0)
        last.bias.fill_(-0.3)
    spec = network_spec(net)
    assert spec.get("_rebuildable_", True), spec
    torch.save({"state_dict": {f"net.{k}": v for k, v in net.state_dict().items()},
                "hyper_parameters": {"net": spec}}, path)
    return path


def test_auto_mode_is_complete_on_grid_simplices_and_tracks_other_grid_boxes(tmp_path, tiny_net):
    """``mode=auto`` (the apps' default): surface mode on a plain network, and on a grid network
    over a box of its cells (its simplices are the tiles); track mode on the same grid over a box
    that cuts its cells (surface mode would cut box tiles by every plane of the grid: over an hour on
    the grid_cpu networks); the same polygons as the complete surface mode either way; and seeds
    given for the mode auto did not choose are refused by name."""
    from nsr._config import ConfigError
    from nsr.extract import run_extract
    from nsr.extraction.surface import extract_mesh
    from nsr.networks import load_network

    grid_ckpt = _tiny_grid_checkpoint(tmp_path / "grid.ckpt")  # one level of resolution 2 over [-1, 1]
    plain = run_extract({"net": str(tiny_net), "out_dir": str(tmp_path / "plain"), "preview": False})
    assert plain["mode"] == "surface" and plain["mode_requested"] == "auto"
    for box, mode in (([-1, 1], "surface"), ([-0.5, 0.5], "track")):
        grid = run_extract({"net": str(grid_ckpt), "out_dir": str(tmp_path / f"grid{box[1]}"), "preview": False,
                            "bounds": box})
        assert grid["mode"] == mode and grid["mode_requested"] == "auto"
        complete = extract_mesh(load_network(grid_ckpt), box, mode="surface", tiles=1, progress=False)
        assert "kuhn_simplices_kept" not in complete.stats  # box tiles: independent of the simplices
        assert grid["n_polygons"] == len(complete.polygons) > 0
        assert grid["abs_f_vertices_max"] < 1e-12
    simplices = json.loads((tmp_path / "grid1" / "stats.json").read_text())
    assert simplices["surface_stats"]["kuhn_simplices_kept"] > 0
    with pytest.raises(ConfigError, match="tiles=2: only used by mode=surface"):  # auto tracks with tiles given
        run_extract({"net": str(grid_ckpt), "out_dir": str(tmp_path / "tiles"), "bounds": [-1, 1], "tiles": 2})
    with pytest.raises(ConfigError, match=r"seeds=16: only used by mode=track \(mode=auto chose surface"):
        run_extract({"net": str(tiny_net), "out_dir": str(tmp_path / "seeds"), "seeds": 16})
    assert not (tmp_path / "seeds").exists()


def test_extract_app_answers_in_track_mode_where_auto_surface_mode_runs_out_of_memory(tmp_path, monkeypatch):
    """nsr-extract with mode=auto lets the library fall back: where surface mode exceeds the default
    memory budget, a track-mode answer (mode, mode_requested and the surface error in stats.json), with
    the polygons surface mode finds without a limit; mode=surface stops with the error, and so does a
    memory_limit_gb below what track mode needs too (both errors)."""
    import nsr.extraction.subdivide as subdivide_module
    from nsr.extract import run_extract
    from nsr.extraction.surface import extract_mesh
    from tests.test_surface import _centered

    net = _centered(3, [24, 24, 24], seed=3)
    path = tmp_path / "net.pt"
    torch.save(net.to_module().state_dict(), path)
    full = extract_mesh(net, (-1, 1), mode="surface", progress=False)
    # 2 MB: the first layer fits (under ~1.4 MB it is refused before any cut), the cuts' guard stops a later one
    monkeypatch.setattr(subdivide_module, "default_memory_limit", lambda: 2e6)
    opts = {"net": str(path), "bounds": [-1, 1], "preview": False}
    with pytest.warns(UserWarning, match="does not fit in memory_limit"):
        stats = run_extract(opts | {"out_dir": str(tmp_path / "auto")})
    assert stats["mode"] == "track" and stats["mode_requested"] == "auto"
    assert stats["n_polygons"] == len(full.polygons) > 100
    saved = json.loads((tmp_path / "auto" / "stats.json").read_text())
    assert saved["mode"] == "track" and "stopped after" in saved["surface_stats"]["surface_mode_error"]
    with pytest.raises(MemoryError, match="surface mode"):
        run_extract(opts | {"out_dir": str(tmp_path / "surface"), "mode": "surface"})
    with pytest.raises(MemoryError, match="surface mode.*tried instead by mode='auto': track mode stopped"):
        run_extract(opts | {"out_dir": str(tmp_path / "explicit"), "memory_limit_gb": 1e6 / 2**30})
    assert not (tmp_path / "explicit" / "stats.json").exists()


def test_training_export_tracks_a_grid_network(tmp_path):
    """nsr-train's export after training (extract.mode: auto) takes track mode for a grid network
    and surface mode for a plain one, and says which in the run's summary."""
    from nsr.networks import load_network
    from nsr.train import export_exact_mesh
    from nsr.training.data import AnalyticSource
    from nsr.training.shapes import Sphere

    grid = load_network(_tiny_grid_checkpoint(tmp_path / "grid.ckpt"))
    summary = export_exact_mesh(grid, AnalyticSource(Sphere(0.3)), tmp_path, {"render": False, "progress": False})
    assert summary["mode"] == "track" and summary["triangles"] > 0
    plain = export_exact_mesh(ReLUMLP(3, 8, 2, geometric_init=True, radius=0.3), AnalyticSource(Sphere(0.3)),
                              tmp_path, {"render": False, "progress": False})
    assert plain["mode"] == "surface" and plain["triangles"] > 0


def test_closed_extraction_reports_the_residual_of_level_set_vertices(tmp_path):
    """With close=true the caps add box corners where |f| is large; stats.json's |f| is that of
    the vertices on the level set (it reported a box corner's 0.45 before), and the mesh holds
    such corners (so the test would see them)."""
    from nsr.extract import run_extract
    from nsr.extraction.surface import extract_mesh

    torch.manual_seed(0)
    net = ReLUMLP(3, 8, 2, geometric_init=True, radius=0.45)
    path = tmp_path / "ball.pt"
    torch.save(net.state_dict(), path)
    stats = run_extract({"net": str(path), "out_dir": str(tmp_path / "o"), "preview": False, "close": True,
                         "bounds": [-0.4, 0.4]})
    mesh = extract_mesh(net, (-0.4, 0.4), close=True, progress=False)
    with torch.no_grad():
        all_f = net.double()(torch.as_tensor(mesh.vertices)).abs()
    assert mesh.polygon_is_cap.any() and float(all_f.max()) > 0.1  # box corners, off the level set
    assert stats["watertight"] and stats["abs_f_vertices_max"] < 1e-12
