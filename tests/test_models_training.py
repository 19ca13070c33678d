"""Every model config (relu_mlp, skip_mlp, residual_mlp, grid_mlp and the presets) composes,
trains, checkpoints, resumes and is rebuilt from its checkpoint (checkpoints naming any class
outside nsr's allowlist: tests/hostile/test_checkpoint_classes.py)."""

from __future__ import annotations

import json
from pathlib import Path

import hydra
import pytest
import torch
from hydra import compose, initialize_config_dir
from torch import nn

from nsr._config import config_dir
from nsr.checkpoints import allowed_targets, build_network, network_spec
from nsr.networks import NetworkError, PLNetwork, ReLUMLP, as_network, load_network
from nsr.pl import trace
from nsr.pl.encoding import GridMLP
from nsr.pl.models import ResidualMLP, SkipMLP
from nsr.train import check_moved_options, train
from nsr.training.lightning import ImplicitShapeModule, load_module_network
from nsr.training.losses import ImplicitLoss

CONF = Path(config_dir())
MODELS = sorted(f.stem for f in (CONF / "model").glob("*.yaml"))
NETS = {"relu_mlp": ReLUMLP, "small": ReLUMLP, "medium": ReLUMLP, "large": ReLUMLP, "skip_mlp": SkipMLP,
        "residual_mlp": ResidualMLP, "grid_mlp": GridMLP}
TINY = [
    "trainer.accelerator=cpu",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "data=sphere",
    "data.sampling.batch_size=256",
    "data.sampling.steps_per_epoch=2",
    "data.sampling.n_val=256",
    "extract=none",
    "logger=csv",
]


def _compose(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("train", overrides=list(overrides))


def _n_params(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


_TRAINED: dict = {}


@pytest.fixture(autouse=True)
def _capture_module(monkeypatch):
    """Keep the trained module of each run, to compare with what its checkpoint rebuilds."""
    import nsr.train as T

    orig = T._finish_run

    def spy(run_dir, trainer, module, *args):
        _TRAINED[run_dir] = module
        return orig(run_dir, trainer, module, *args)

    monkeypatch.setattr(T, "_finish_run", spy)


# --------------------------------------------------------------------------------------
# Configs
# --------------------------------------------------------------------------------------


def test_every_network_config_is_listed():
    assert set(MODELS) == set(NETS)


@pytest.mark.parametrize("model", MODELS)
def test_model_config_instantiates_the_module_and_its_network(model):
    cfg = _compose(f"model={model}")
    module = hydra.utils.instantiate(cfg.model, _partial_=True)(loss=ImplicitLoss())
    assert isinstance(module, ImplicitShapeModule) and type(module.net) is NETS[model]
    x = torch.rand(7, 3) - 0.5
    assert module(x).shape == (7,)
    assert module.hparams["net"]["_target_"] in allowed_targets()
    opt = module.configure_optimizers()["optimizer"]
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(module.net.parameters()))


@pytest.mark.parametrize("model", ["skip_mlp", "residual_mlp"])
def test_skip_and_residual_have_the_parameter_count_of_relu_mlp(model):
    base = _n_params(hydra.utils.instantiate(_compose("model=relu_mlp").model.net))
    n = _n_params(hydra.utils.instantiate(_compose(f"model={model}").model.net))
    assert base == 12801  # 64 x 4 in 3D: 4 * 64 + 3 * (64 * 64 + 64) + 65, as conf/model/relu_mlp.yaml says
    assert abs(n - base) <= 0.1 * base, (n, base)


def test_grid_presets_give_the_tables_their_own_learning_rate():
    for overrides in (["model=grid_mlp"], ["experiment=grid_cpu", "data.path=x.obj"],
                      ["experiment=grid_gpu", "data.path=x.obj"]):
        cfg = _compose(*overrides)
        module = hydra.utils.instantiate(cfg.model, _partial_=True)(loss=ImplicitLoss())
        groups = module.configure_optimizers()
        groups = (groups["optimizer"] if isinstance(groups, dict) else groups).param_groups
        assert [g["lr"] for g in groups] == [1e-2, cfg.model.optimizer.lr], overrides
        assert groups[0]["params"] == [module.net.encoding.table]


def test_param_groups_that_name_nothing_are_refused():
    with pytest.raises(ValueError, match="'tables' names no parameter of ReLUMLP.*layers"):
        ImplicitShapeModule(ReLUMLP(3, 8, 2), ImplicitLoss(), param_groups={"tables": {"lr": 1e-2}})


@pytest.mark.parametrize("arg, new", [("model.width=16", "model.net.width"),
                                      ("optimizer.lr=1e-2", "model.optimizer.lr"),
                                      ("+scheduler.T_max=3", "model.scheduler.T_max")])
def test_moved_options_name_their_new_key(arg, new, capsys):
    with pytest.raises(SystemExit):
        check_moved_options([arg])
    assert f"moved to {new}" in capsys.readouterr().err
    check_moved_options(["model=skip_mlp", "model.net.width=16"])  # the new keys pass


# --------------------------------------------------------------------------------------
# Training, checkpoints, resume
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["relu_mlp", "skip_mlp", "residual_mlp", "grid_mlp"])
def test_fast_dev_run_and_checkpoint_round_trip(model, tmp_path):
    run = train(_compose(*TINY, f"model={model}", "trainer.max_epochs=1", f"run_dir={tmp_path / model}"))
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["global_step"] == 2 and torch.isfinite(torch.tensor(metrics["train/loss"]))
    ckpt = run / "checkpoints" / "last.ckpt"
    trained = _TRAINED[run].net.eval()
    rebuilt = load_module_network(ckpt)
    assert type(rebuilt) is NETS[model]
    x = torch.rand(300, 3) - 0.5
    with torch.no_grad():
        assert torch.equal(rebuilt(x), trained(x))  # the same network, bit for bit
    loaded = load_network(ckpt)
    if model == "relu_mlp":  # plain MLPs come back in the extractor's form, as before
        for net in (loaded, as_network(torch.load(ckpt, weights_only=True))):
            assert isinstance(net, PLNetwork)
            torch.testing.assert_close(net.to(dtype=torch.float64)(x.double()), trained(x).double(), rtol=0,
                                       atol=1e-6)
        return
    assert type(loaded) is NETS[model]
    for obj in (ckpt, torch.load(ckpt, weights_only=True)):  # the file, and what it holds
        with pytest.raises(NetworkError, match="holds a .*nsr.pl.trace"):
            as_network(obj)  # the Linear-chain reader must not read a skip/grid network as one
    if model != "grid_mlp":  # grid encoders are traced once the engine reads encoders (issue 14)
        graph = trace(loaded)
        with torch.no_grad():
            torch.testing.assert_close(graph(x.double()), trained.double()(x.double()), rtol=0, atol=1e-9)


def test_grid_cpu_preset_trains_and_resumes_from_last_checkpoint(tmp_path):
    tiny = [*TINY, "experiment=grid_cpu", "data=sphere", "callbacks.time_lr.budget_s=60"]
    run = train(_compose(*tiny, "trainer.max_epochs=1", f"run_dir={tmp_path / 'a'}"))
    last = run / "checkpoints" / "last.ckpt"
    state = torch.load(last, weights_only=True)
    assert len(state["optimizer_states"][0]["param_groups"]) == 2  # tables + MLP
    run2 = train(_compose(*tiny, "trainer.max_epochs=2", f"ckpt_path={last}", f"run_dir={tmp_path / 'b'}"))
    assert json.loads((run2 / "metrics.json").read_text())["global_step"] == 4
    first, resumed = load_module_network(last), load_module_network(run2 / "checkpoints" / "last.ckpt")
    assert not torch.equal(first.encoding.table, resumed.encoding.table)  # it trained on


# --------------------------------------------------------------------------------------
# Rebuilding from specs, and refusing what is not nsr's
# --------------------------------------------------------------------------------------

NON_DEFAULT = [
    ReLUMLP(2, 8, 3),
    SkipMLP(3, 16, 4, skip=1, latent_dim=2, tanh_output=True, weight_norm=True, dropout=0.1),
    ResidualMLP(2, 8, 2, activation="leaky_relu", negative_slope=0.2),
    GridMLP(2, 8, 1, n_levels=3, features=3, min_resolution=2, max_resolution=9, table_size=64, bounds=(-0.7, 0.4),
            include_input=False, init_scale=0.5),
]


@pytest.mark.parametrize("net", NON_DEFAULT, ids=lambda n: type(n).__name__)
def test_spec_rebuilds_each_allowlisted_network_with_its_options(net):
    torch.manual_seed(0)
    spec = network_spec(net)
    assert spec["_target_"] in allowed_targets() and "_rebuildable_" not in spec
    rebuilt = build_network(spec, net.state_dict())
    x = torch.rand(100, net.in_dim + getattr(net, "latent_dim", 0)) - 0.5
    with torch.no_grad():
        assert torch.equal(rebuilt(x), net.eval()(x))


def test_old_checkpoints_of_a_relu_mlp_still_load(tmp_path):
    mlp = ReLUMLP(3, 8, 2)
    torch.save({"state_dict": {f"net.{k}": v for k, v in mlp.state_dict().items()},
                "hyper_parameters": {"net": {"in_dim": 3, "width": 8, "depth": 2}}}, tmp_path / "old.ckpt")
    x = torch.rand(20, 3)
    assert torch.equal(load_module_network(tmp_path / "old.ckpt")(x), mlp(x))
    torch.testing.assert_close(load_network(tmp_path / "old.ckpt")(x), mlp(x))


class CustomForward(ReLUMLP):
    def forward(self, x):
        return super().forward(x).abs()


def test_a_subclass_trains_but_its_checkpoint_is_not_rebuilt_as_the_base_class(tmp_path):
    with pytest.warns(UserWarning, match="cannot rebuild"):
        module = ImplicitShapeModule(CustomForward(3, 8, 2), ImplicitLoss())
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}, tmp_path / "c.ckpt")
    with pytest.raises(NetworkError, match="CustomForward.*not one nsr rebuilds"):
        load_module_network(tmp_path / "c.ckpt")
