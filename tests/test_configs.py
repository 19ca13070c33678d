"""Every config group option and experiment composes (Hydra compose API) and instantiates."""

from __future__ import annotations

import string
from pathlib import Path

import hydra
import pytest
import trimesh
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from nsr._config import config_dir
from nsr.networks import ReLUMLP

CONF = Path(config_dir())
GROUPS = sorted(p.name for p in CONF.iterdir() if p.is_dir())
OPTIONS = [(g, f.stem) for g in GROUPS for f in sorted((CONF / g).glob("*.yaml"))]


@pytest.fixture(scope="module", autouse=True)
def _hydra():
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        yield


def _compose(overrides: list[str], hydra_cfg: bool = False):
    return compose("train", overrides=overrides, return_hydra_config=hydra_cfg)


def test_expected_groups_exist():
    want = {
        "data",
        "model",
        "loss",
        "trainer",
        "callbacks",
        "logger",
        "extract",
        "regularizer",
        "experiment",
        "launcher",
    }
    assert want <= set(GROUPS)


@pytest.mark.parametrize("group, option", OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_every_option_composes(group, option, tmp_path):
    cfg = _compose([f"{group}={option}", f"run_dir={tmp_path}", "data.path=x.obj"], hydra_cfg=True)
    assert cfg.hydra.runtime.choices[group] == option
    OmegaConf.to_container(cfg.model, resolve=True)  # interpolations resolve
    OmegaConf.to_container(cfg.callbacks, resolve=True)


def test_default_is_small_and_fast():
    cfg = _compose([])
    assert cfg.model.net.width == 32 and cfg.model.net.depth == 3 and cfg.data.kind == "analytic"
    assert "_target_" not in (cfg.regularizer or {})


@pytest.mark.parametrize("option", ["sphere", "torus", "box", "capsule", "csg", "circle2d", "polygon2d", "csg2d"])
def test_analytic_data_instantiates_with_matching_model(option):
    cfg = _compose([f"data={option}"])
    dm = hydra.utils.instantiate(cfg.data)
    net = hydra.utils.instantiate(cfg.model.net)
    assert isinstance(net, ReLUMLP) and net.in_dim == dm.source.dim == cfg.data.dim


def test_mesh_experiment_needs_path_and_uses_it(tmp_path):
    path = tmp_path / "s.obj"
    trimesh.creation.icosphere(2).export(path)
    cfg = _compose(["experiment=mesh", f"data.path={path}"])
    assert cfg.data.kind == "mesh" and cfg.data.path == str(path)
    assert (cfg.model.net.width, cfg.model.net.depth) == (64, 4)
    cfg = _compose(["experiment=mesh"])
    with pytest.raises(Exception, match="path"):
        hydra.utils.instantiate(cfg.data)


def test_loss_optimizer_scheduler_instantiate():
    cfg = _compose(["loss=occupancy"])
    loss = hydra.utils.instantiate(cfg.loss)
    assert loss.weights["occupancy"] == 1.0 and loss.weights["sdf"] == 0.0
    net = hydra.utils.instantiate(cfg.model.net)
    opt = hydra.utils.instantiate(cfg.model.optimizer)(params=net.parameters())
    sched = hydra.utils.instantiate(cfg.model.scheduler)(optimizer=opt)
    assert sched.T_max == cfg.trainer.max_epochs


@pytest.mark.parametrize("launcher, target", [("joblib", "Joblib"), ("slurm", "Slurm")])
def test_launchers_for_multirun(launcher, target):
    cfg = _compose([f"launcher={launcher}", "model.net.width=32"], hydra_cfg=True)
    assert target in cfg.hydra.launcher._target_


def test_trainer_ddp_cpu_config():
    cfg = _compose(["trainer=ddp_cpu"])
    assert cfg.trainer.strategy == "ddp_spawn" and cfg.trainer.devices == 2


APPS = ("train", "extract", "compare")


@pytest.mark.parametrize("app", APPS)
def test_every_app_names_its_run_folders_alike(app):
    """One scheme: outputs/<app>/<date>_<time> (extract and compare used <date>/<time>)."""
    cfg = compose(app, overrides=["net=x.pt"] if app != "train" else [], return_hydra_config=True)
    assert cfg.hydra.run.dir.startswith(f"outputs/{app}/")
    assert OmegaConf.to_container(cfg.hydra.run, resolve=False)["dir"].endswith("${now:%Y-%m-%d_%H-%M-%S}")
    assert cfg.hydra.callbacks.validate._target_ == "nsr._config.ValidateBeforeRun"
    assert cfg.hydra.callbacks.validate.app == app


@pytest.mark.parametrize("app", APPS)
def test_help_shows_each_option_with_its_comment(app):
    """--help is made from conf/<app>.yaml: every top-level option of the app's own config, with
    the comment written beside it, and the header's examples."""
    cfg = compose(app, overrides=["net=x.pt"] if app != "train" else [], return_hydra_config=True)
    text = string.Template(cfg.hydra.help.template).safe_substitute()  # as Hydra prints it
    assert "Examples:" in text and f"nsr-{app}" in text
    own = (CONF / f"{app}.yaml").read_text().split("\nhydra:")[0].splitlines()
    shown = [ln.lstrip("#").strip() for ln in own if ln.strip() and not ln.startswith(("defaults:", "  - "))]
    assert len(shown) > 10
    for line in shown:
        assert line in text, line
    groups_listed = "Config groups" in text
    assert groups_listed == (app == "train")  # extract and compare take no training groups
