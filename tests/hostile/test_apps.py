"""Hostile input to the apps: every bad option ends the app with ONE line on stderr naming the
option and what to do, exit code 2, no traceback, and nothing written.

Most cases run the apps' validation in-process (fast); a few run the real apps side by side as
``python -m nsr.<app>`` with this checkout (tests/test_apps.py:start_app). To add a case, add a
row to the tables below: the overrides and a fragment of the expected message."""

from __future__ import annotations

import pytest
import torch
import trimesh
from hydra import compose, initialize_config_dir

from nsr._config import ConfigError, config_dir, validate_compare, validate_extract, validate_train
from nsr.networks import ReLUMLP
from tests.test_apps import start_app


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("hostile_apps")
    torch.manual_seed(0)
    net = root / "net.pt"
    torch.save(ReLUMLP(3, 8, 2, geometric_init=True, radius=0.3).state_dict(), net)
    (root / "empty.obj").write_text("")
    (root / "points.obj").write_text("v 0 0 0\nv 1 0 0\nv 0 1 0\n")
    (root / "x.txt").write_text("hello\n")
    (root / "blocker").write_text("")
    trimesh.creation.icosphere(1, 0.3).export(root / "shape.obj")
    names = {"empty": "empty.obj", "points": "points.obj", "text": "x.txt", "blocker": "blocker", "shape": "shape.obj"}
    return {"net": str(net), "root": str(root), **{k: str(root / v) for k, v in names.items()}}


def _compose(app: str, overrides: list[str]):
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return compose(config_name=app, overrides=overrides)


EXTRACT = [
    (["level=nan"], "level=nan: must be a finite number"),
    (["level=inf"], "level=inf: must be a finite number"),
    (["workers=abc"], "workers='abc': must be an integer"),
    (["workers=0"], "workers=0: must be between 1"),
    (["workers=100000"], "workers=100000: must be between 1"),
    (["mode=fast"], "mode='fast': must be one of auto, surface, complex, track"),
    (["dtype=float16"], "dtype=float16: too few mantissa bits"),
    (["dtype=int8"], "dtype='int8': must be one of"),
    (["bounds=abc"], "bounds='abc': not a box"),
    (["bounds=[1,0]"], "every axis needs lo < hi"),
    (["bounds=[0,nan]"], "NaN or infinite bounds"),
    (["bounds=[[0,1,2]]"], "not a box"),
    (["device=tpu9"], "device=tpu9"),
    (["close=maybe"], "close='maybe': must be true or false"),
    (["tiles=0", "mode=surface"], "tiles=0: must be >= 1"),
    (["tiles=2.5"], "tiles=2.5: must be an integer"),
    (["seeds=8"], "seeds=8: only used by mode=track"),
    (["band=-1"], "band=-1: must be >= 0"),
    (["memory_limit_gb=nan"], "memory_limit_gb=nan: must be a finite number"),
    (["memory_limit_gb=0"], "memory_limit_gb=0: must be > 0"),
    (["memory_limit_gb=-3"], "memory_limit_gb=-3: must be > 0"),
    (["net=null"], "net is required"),
    (["net=/nonexistent/net.pt"], "net=/nonexistent/net.pt: no such file"),
]


@pytest.mark.parametrize("overrides, message", EXTRACT, ids=[" ".join(o) for o, _ in EXTRACT])
def test_extract_options(files, overrides, message, tmp_path):
    from nsr.extract import run_extract

    cfg = _compose("extract", [f"net={files['net']}", f"out_dir={tmp_path / 'o'}", *overrides])
    with pytest.raises((ConfigError, FileNotFoundError), match=message.replace("[", r"\[").replace("(", r"\(")):
        run_extract(cfg)
    assert not (tmp_path / "o").exists()  # nothing written


def test_extract_refusals_that_need_the_network(files, tmp_path):
    from nsr.extract import run_extract

    cases = [(["tiles=10000"], "tiles=10000: 1e\\+12 tiles"), (["band=4096"], "band=4096 would bound"),
             (["mode=track", "seeds=4096"], "seeds=4096: the 4097\\^3 seed grid"),
             (["bounds=[[0,1],[0,1]]"], "bounds=.*3-D network"), (["memory_limit_gb=1e-9"], "stopped after")]
    for overrides, message in cases:
        cfg = _compose("extract", [f"net={files['net']}", f"out_dir={tmp_path / 'o'}", *overrides])
        with pytest.raises((ValueError, MemoryError), match=message):
            run_extract(cfg)
        assert not (tmp_path / "o" / "stats.json").exists()


COMPARE = [
    (["resolutions='64'"], "resolutions='64': not a list of integers"),
    (["resolutions=[64,abc]"], "resolutions='abc': must be an integer"),
    (["resolutions=[1]"], "resolutions=1: must be >= 2"),
    (["resolutions=[]", "exact=true"], "resolutions=\\[\\]: nothing to compare"),
    (["exact=false"], "exact=false: nothing to compare against"),
    (["n_samples=-5"], "n_samples=-5: must be between"),
    (["mc_dtype=float16"], "mc_dtype=float16"),
    (["reference={text}"], "not a mesh file"),
    (["reference=/nonexistent.obj"], "no such file"),
]


@pytest.mark.parametrize("overrides, message", COMPARE, ids=[" ".join(o) for o, _ in COMPARE])
def test_compare_options(files, overrides, message, tmp_path):
    from nsr.compare import run_compare

    overrides = [o.format(**files) for o in overrides]
    cfg = _compose("compare", [f"net={files['net']}", f"out_dir={tmp_path / 'o'}", *overrides])
    with pytest.raises((ConfigError, FileNotFoundError), match=message):
        run_compare(cfg)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("name, message", [("empty", "holds no triangles"), ("points", "holds no triangles")])
def test_compare_refuses_a_reference_without_triangles(files, name, message, tmp_path):
    """An empty reference used to give empty metrics with exit 0: a partial result that looks complete."""
    from nsr.compare import run_compare

    cfg = _compose("compare", [f"net={files['net']}", f"out_dir={tmp_path / 'o'}", f"reference={files[name]}",
                               "resolutions=[8]"])
    with pytest.raises(ConfigError, match=message):
        run_compare(cfg)
    assert not (tmp_path / "o").exists()


def test_compare_single_resolution_means_that_resolution(files):
    opts = validate_compare(_compose("compare", [f"net={files['net']}", "resolutions=64"]))
    assert opts["resolutions"] == [64]  # not the characters of "64"


TRAIN = [
    (["model.net.width=0"], "model.net.width=0: must be between 1"),
    (["model.net.depth=-1"], "model.net.depth=-1: must be between 1"),
    (["model.net.width=abc"], "model.net.width='abc': must be an integer"),
    (["trainer.max_epochs=0"], "trainer.max_epochs=0: nothing would be trained"),
    (["model.optimizer.lr=-1"], "model.optimizer.lr=-1: must be > 0"),
    (["model.optimizer.lr=nan"], "model.optimizer.lr=nan: must be a finite number"),
    (["trainer.precision=8"], "trainer.precision=8: must be one of"),
    (["data.path={shape}"], "ignores data.path; train on a file with experiment=mesh"),
    (["experiment=mesh"], "data.path is required"),
    (["experiment=mesh", "data.path=/nonexistent.obj"], "data.path=/nonexistent.obj: no such file"),
    (["ckpt_path=/nonexistent.ckpt"], "ckpt_path=/nonexistent.ckpt: no such file"),
    (["run_dir={blocker}/run"], "is a file, not a folder"),
]


@pytest.mark.parametrize("overrides, message", TRAIN, ids=[" ".join(o) for o, _ in TRAIN])
def test_train_options(files, overrides, message, tmp_path):
    overrides = [o.format(**files) for o in overrides]
    with pytest.raises((ConfigError, FileNotFoundError), match=message):
        validate_train(_compose("train", overrides))


def test_train_model_width_zero_writes_nothing(tmp_path):
    """model.net.width=0 used to fail only after config.yaml was written."""
    from nsr.train import train

    with pytest.raises(ConfigError, match="model.net.width=0"):
        train(_compose("train", ["model.net.width=0", f"run_dir={tmp_path / 'run'}"]))
    assert not (tmp_path / "run").exists()


def test_extract_validation_accepts_the_defaults(files):
    opts = validate_extract(_compose("extract", [f"net={files['net']}"]))
    assert opts["mode"] == "auto" and opts["memory_limit"] is None and opts["workers"] == 1


@pytest.mark.slow
def test_apps_refuse_in_one_line_before_writing(files, tmp_path):
    """The real apps, side by side: exit code 2, one line on stderr naming the option, no
    traceback, and no run directory (the checks run before Hydra creates it)."""
    run = tmp_path / "run"
    cases = [
        ("compare", [f"net={files['net']}", "resolutions='64'"], "resolutions="),
        ("compare", [f"net={files['net']}", f"reference={files['empty']}"], "reference="),
        ("compare", [f"net={files['net']}", f"reference={files['text']}"], "reference="),
        ("compare", [f"net={files['net']}", "workers=2"], "unknown option 'workers'"),
        ("extract", [f"net={files['net']}", "device=cuda:99"], "device=cuda:99"),
        ("extract", [f"net={files['net']}", f"hydra.run.dir={files['blocker']}/x"], "hydra.run.dir="),
        ("extract", [f"net={files['net']}", "bounds=abc"], "bounds="),
        ("train", ["model.net.width=0"], "model.net.width=0"),
        ("train", [f"data.path={files['shape']}"], "data.path="),
    ]
    procs = []
    for i, (app, args, _) in enumerate(cases):
        has_dir = any(a.startswith("hydra.run.dir=") for a in args)
        procs.append(start_app(app, *args, *([] if has_dir else [f"hydra.run.dir={run / str(i)}"]), cwd=tmp_path))
    for (app, args, fragment), proc in zip(cases, procs):
        _, err = proc.communicate(timeout=600)
        lines = err.strip().splitlines()
        assert proc.returncode == 2, (app, args, err)
        assert len(lines) == 1 and lines[0].startswith(f"nsr-{app}: error: ") and fragment in lines[0], (args, err)
        assert "Traceback" not in err
    assert not run.exists() and not (tmp_path / "outputs").exists()
