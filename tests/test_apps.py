"""nsr-extract, nsr-compare and the demo end to end on tiny networks (compose API, scripts)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh
from hydra import compose, initialize_config_dir

from nsr._config import config_dir
from nsr.networks import NetworkError, ReLUMLP

pytest.importorskip("nsr.surface")
BIN = Path(sys.executable).parent


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
    pytest.importorskip("nsr.complex")
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
    with pytest.raises(PermissionError, match="not writable"):
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


def _start(name: str, *args: str) -> subprocess.Popen:
    exe = BIN / name
    if not exe.exists():
        pytest.skip(f"{exe} not installed (pip install -e . --no-deps)")
    return subprocess.Popen([str(exe), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)  # fmt: skip


def test_console_scripts(tiny_net, tmp_path):
    procs = [  # run side by side: each pays the interpreter and torch start-up
        _start("nsr-extract", f"net={tiny_net}", f"out_dir={tmp_path / 'e'}",
               f"hydra.run.dir={tmp_path / 'h1'}"),
        _start("nsr-compare", f"net={tiny_net}", f"out_dir={tmp_path / 'c'}", "resolutions=[16]",
               "n_samples=2000", "render=false", f"hydra.run.dir={tmp_path / 'h2'}"),
        _start("nsr-extract", f"net={tmp_path / 'nope.pt'}", f"hydra.run.dir={tmp_path / 'h3'}"),
    ]  # fmt: skip
    outs = [p.communicate(timeout=300) for p in procs]
    (rc1, rc2, rc3), ((_, err1), (out2, err2), (_, err3)) = [p.returncode for p in procs], outs
    assert rc1 == 0, err1
    assert (tmp_path / "e" / "stats.json").is_file()
    assert rc2 == 0, err2
    assert "| marching_cubes | 16 |" in out2
    assert rc3 == 2 and "nsr-extract: error:" in err3 and "Traceback" not in err3


@pytest.mark.slow
def test_demo_end_to_end(tmp_path):
    pytest.importorskip("nsr.train")
    from nsr.demo import run_demo

    result = run_demo(tmp_path, resolutions=(16, 32), overrides=["trainer.max_epochs=2"])
    assert Path(result["run_dir"], "checkpoints", "last.ckpt").is_file()
    assert all(Path(f).is_file() for f in result["files"])
    assert result["extract"]["abs_f_vertices_max"] < 1e-9
