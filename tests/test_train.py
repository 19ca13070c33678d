"""Training runs on CPU: fast_dev_run, checkpoints and resume, DDP, sign, bad input, export."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
import trimesh
from hydra import compose, initialize_config_dir
from omegaconf import open_dict

from nsr._config import config_dir
from nsr.networks import ReLUMLP, as_network
from nsr.train import export_exact_mesh, train
from nsr.training.data import AnalyticSource, ShapeError, sample_points
from nsr.training.lightning import ImplicitShapeModule, load_module_network
from nsr.training.losses import ImplicitLoss
from nsr.training.shapes import Sphere

TINY = [
    "trainer.accelerator=cpu",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "trainer.check_val_every_n_epoch=1",
    "model.net.width=16",
    "model.net.depth=2",
    "data.sampling.batch_size=256",
    "data.sampling.steps_per_epoch=4",
    "data.sampling.n_val=512",
    "extract=none",
    "logger=csv",
]


def _cfg(tmp_path: Path, *overrides: str, name: str = "run"):
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return compose("train", overrides=[*TINY, f"run_dir={tmp_path / name}", *overrides])


class DummyRegularizer(L.Callback):
    """A regularizer as issue 7 will write them: registers a term in the module."""

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        pl_module.regularizer_terms.append(
            lambda m: {"dummy": 1e-3 * sum(p.square().sum() for p in m.net.parameters())}
        )


def test_fast_dev_run(tmp_path):
    run = train(_cfg(tmp_path, "trainer.fast_dev_run=true"))
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["global_step"] == 1 and np.isfinite(metrics["train/loss"])
    assert (run / "config.yaml").is_file() and (run / "transform.json").is_file()


def test_train_checkpoints_sign_and_resume(tmp_path):
    cfg = _cfg(tmp_path, "data=sphere", "trainer.max_epochs=2")
    with open_dict(cfg):  # a regularizer config as issue 7 provides them
        cfg.regularizer = {"_target_": f"{__name__}.DummyRegularizer"}
    run = train(cfg)
    ckpts = run / "checkpoints"
    assert (ckpts / "last.ckpt").is_file() and (ckpts / "best.ckpt").is_file()
    assert (run / "csv" / "metrics.csv").is_file()
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["global_step"] == 8 and "reg/dummy" in metrics and "val/iou" in metrics
    # the checkpoint is an extractable network with the sign convention: negative inside
    net = as_network(str(ckpts / "last.ckpt"), dtype=torch.float64)
    vals = net(torch.tensor([[0.0, 0.0, 0.0], [0.5, 0.5, 0.5]], dtype=torch.float64))
    assert vals[0] < 0 < vals[1]
    # ... and it is the trained network itself: the same outputs as the module's at the end
    x = torch.rand(500, 3) - 0.5
    with torch.no_grad():
        want = _TRAINED[run](x).double()
        torch.testing.assert_close(net(x.double()), want, rtol=0, atol=1e-6)
        torch.testing.assert_close(load_module_network(ckpts / "last.ckpt")(x).double(), want, rtol=0, atol=1e-6)
    # resume from last.ckpt for one more epoch
    cfg2 = _cfg(tmp_path, "data=sphere", "trainer.max_epochs=3", f"ckpt_path={ckpts / 'last.ckpt'}", name="resumed")
    run2 = train(cfg2)
    assert json.loads((run2 / "metrics.json").read_text())["global_step"] == 12


def test_sphere_learns_sign_convention(tmp_path):
    """Starting as a smaller sphere (r=0.15), a short run learns r=0.35, negative inside."""
    cfg = _cfg(
        tmp_path,
        "data=sphere",
        "trainer.max_epochs=5",  # 3 epochs left seeds 0-2 at IoU 0.69-0.82, at the threshold; 5: 0.82-0.88
        "data.sampling.steps_per_epoch=10",
        "model.net.radius=0.15",
        "callbacks=none",
        "logger=csv",
        "trainer.log_every_n_steps=1",
        "model.optimizer.lr=1e-2",
    )
    run = train(cfg)
    assert json.loads((run / "metrics.json").read_text())["val/iou"] > 0.8
    # the logged training loss falls: the last steps' mean well under the first steps'
    import csv

    with (run / "csv" / "metrics.csv").open() as fh:
        losses = [float(r["train/loss"]) for r in csv.DictReader(fh) if r.get("train/loss")]
    assert len(losses) == 50
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5]), losses
    net = as_network(_TRAINED[run], dtype=torch.float64)
    x = torch.rand(2000, 3, dtype=torch.float64) - 0.5
    exact = x.norm(dim=1) - 0.35  # closed form, conf/data/sphere.yaml
    far = exact.abs() > 0.05
    assert ((net(x) < 0) == (exact < 0))[far].double().mean() > 0.95


_TRAINED: dict = {}


@pytest.fixture(autouse=True)
def _capture_module(monkeypatch):
    """Keep the trained module of each run (for runs without checkpoints)."""
    import nsr.train as T

    orig = T._finish_run

    def spy(run_dir, trainer, module, *args):
        _TRAINED[run_dir] = module.net
        return orig(run_dir, trainer, module, *args)

    monkeypatch.setattr(T, "_finish_run", spy)


def test_point_cloud_and_2d_runs(tmp_path):
    import open3d as o3d

    mesh = trimesh.creation.icosphere(2, radius=3.0)
    pts, face = trimesh.sample.sample_surface(mesh, 500, seed=0)
    pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(pts))
    pcd.normals = o3d.utility.Vector3dVector(mesh.face_normals[face])
    path = tmp_path / "cloud.ply"
    o3d.io.write_point_cloud(str(path), pcd)
    run = train(
        _cfg(tmp_path, "experiment=pointcloud", f"data.path={path}", *TINY, "trainer.fast_dev_run=true", name="pc")
    )
    assert "val/sdf_mae" in json.loads((run / "metrics.json").read_text())
    run2 = train(_cfg(tmp_path, "data=polygon2d", "trainer.fast_dev_run=true", "extract=default", name="2d"))
    assert "skipped" in json.loads((run2 / "metrics.json").read_text())["mesh"]


@pytest.mark.parametrize(
    "overrides, error",
    [
        (["data=mesh", "data.path=/nonexistent/x.obj"], FileNotFoundError),
        (["data=mesh", "data.path={tmp}/nan.obj"], ShapeError),
        (["data=pointcloud", "data.path={tmp}/plain.xyz"], ShapeError),
        (["data.box=0"], ShapeError),
        (["experiment=mesh", "data.path={tmp}/square.obj"], ShapeError),  # open: no inside
        (["experiment=mesh", "data.path={tmp}/square.obj", "data.sign=guess"], ShapeError),
    ],
)
def test_bad_input_fails_before_the_run_dir(tmp_path, overrides, error):
    (tmp_path / "nan.obj").write_text("v 0 0 0\nv nan 0 0\nv 0 1 0\nf 1 2 3\n")
    (tmp_path / "square.obj").write_text("v 0 0 0\nv 1 0 0\nv 1 1 0\nv 0 1 0\nf 1 2 3\nf 1 3 4\n")
    (tmp_path / "plain.xyz").write_text("0 0 0\n1 0 0\n0 1 0\n")
    cfg = _cfg(tmp_path, *[o.format(tmp=tmp_path) for o in overrides])
    with pytest.raises(error) as info:
        train(cfg)
    assert "hydra" not in type(info.value).__module__
    assert not (tmp_path / "run").exists()


TET_V = torch.tensor([[0.0, 0, 0], [0.2, 0, 0], [0, 0.2, 0], [0, 0, 0.2]], dtype=torch.float64)


@pytest.fixture
def tetrahedron_extractor(monkeypatch):
    """A stand-in nsr.extraction.surface whose extract_mesh returns a tetrahedron (box units)."""
    tet_f = torch.tensor([[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]])
    fake = types.ModuleType("nsr.extraction.surface")
    fake.extract_mesh = lambda net, bounds, mode, dtype, progress: types.SimpleNamespace(
        vertices=TET_V, triangles=tet_f, is_empty=False, stats={"mode": mode}
    )
    monkeypatch.setitem(sys.modules, "nsr.extraction.surface", fake)


def test_export_converts_to_shape_units(tmp_path, tetrahedron_extractor):
    """With a stand-in extractor: vertices come back in shape units, in OBJ and PLY."""
    src = AnalyticSource(Sphere(0.3))
    src.center, src.scale = np.array([1.0, 2.0, 3.0]), 0.5
    out = export_exact_mesh(torch.nn.Linear(3, 1), src, tmp_path, {"render": False})
    assert out["triangles"] == 4
    for fmt in ("obj", "ply"):
        m = trimesh.load(tmp_path / f"mesh.{fmt}", force="mesh", process=False)
        assert np.allclose(np.sort(m.vertices, axis=0), np.sort(TET_V.numpy() / 0.5 + [1, 2, 3], axis=0))


def test_ctrl_c_during_the_training_export_propagates(tmp_path, monkeypatch, tetrahedron_extractor):
    """nsr-train's mesh export goes through nsr's own atomic writers (trimesh swallowed Ctrl-C
    during STL export in 3 of 5 runs): the interrupt propagates and no mesh file is left."""
    import nsr.files

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(nsr.files, "_stl_bytes", interrupted)
    with pytest.raises(KeyboardInterrupt):
        export_exact_mesh(torch.nn.Linear(3, 1), AnalyticSource(Sphere(0.3)), tmp_path,
                          {"render": False, "formats": ["stl"]})
    assert list(tmp_path.iterdir()) == []


def test_hydra_app_writes_its_config(tmp_path):
    run = tmp_path / "app"
    cmd = [sys.executable, "-m", "nsr.train", *TINY, "trainer.fast_dev_run=true", f"hydra.run.dir={run}"]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}  # this checkout's nsr
    subprocess.run(cmd, check=True, capture_output=True, cwd=tmp_path, timeout=120, env=env)
    assert (run / ".hydra" / "config.yaml").is_file() and (run / "metrics.json").is_file()


@pytest.mark.slow
def test_ddp_two_cpu_processes(tmp_path):
    cfg = _cfg(tmp_path, "trainer=ddp_cpu", *TINY, "trainer.max_epochs=1", "data=sphere")
    run = train(cfg)
    metrics = json.loads((run / "metrics.json").read_text())
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 2 == metrics["global_step"]  # 4 batches over 2 processes
    assert np.isfinite(metrics["val/sdf_mae"])


def test_time_cosine_lr_anneals_over_the_budget(monkeypatch):
    import time

    from nsr.training.lightning import TimeCosineLR

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    trainer = types.SimpleNamespace(optimizers=[opt])
    clock = iter([0.0, 0.0, 50.0, 100.0, 500.0])
    monkeypatch.setattr(time, "monotonic", lambda: next(clock))
    cb = TimeCosineLR(budget_s=100.0, eta_min=0.0)
    cb.on_train_start(trainer, None)
    lrs = []
    for _ in range(4):
        cb.on_train_batch_start(trainer, None, None, 0)
        lrs.append(opt.param_groups[0]["lr"])
    assert lrs == pytest.approx([1.0, 0.5, 0.0, 0.0], abs=1e-12)


# ------------------------------------------------------------ the figures training reports


def _halfspace_net(a: float) -> ReLUMLP:
    """``f(x) = x_0 - a`` exactly, as ``relu(x_0 - a) - relu(a - x_0)`` (width 2, depth 1)."""
    net = ReLUMLP(3, 2, 1)
    with torch.no_grad():
        net.layers[0].weight.copy_(torch.tensor([[1.0, 0, 0], [-1.0, 0, 0]]))
        net.layers[0].bias.copy_(torch.tensor([-a, a]))
        net.layers[1].weight.copy_(torch.tensor([[1.0, -1.0]]))
        net.layers[1].bias.zero_()
    return net


def _logging_module(net, loss=None) -> tuple[ImplicitShapeModule, dict]:
    module = ImplicitShapeModule(net, loss or ImplicitLoss())
    logged: dict = {}
    # record what is logged (no Trainer needed)
    module.log = lambda name, value, **kw: logged.__setitem__(name, float(torch.as_tensor(value).detach()))
    return module, logged


def test_validation_iou_and_mae_on_a_known_point_set():
    """Prediction inside x0 < 0.1, truth inside x0 > -0.1, ten points x0 = -0.45 ... 0.45:
    6 predicted inside, 6 truly inside, 2 both, 10 either: IoU = 2/10 (2/6 if divided by the
    truth's volume)."""
    module, logged = _logging_module(_halfspace_net(0.1))
    x0 = torch.linspace(-0.45, 0.45, 10)
    uniform = torch.stack([x0, torch.zeros(10), torch.zeros(10)], 1)
    near = torch.tensor([[0.0, 0, 0], [0.3, 0, 0]])
    batch = {"uniform": uniform, "uniform_sdf": -x0 - 0.1, "near": near, "near_sdf": torch.tensor([0.0, 0.0])}
    module.validation_step(batch, 0)
    assert logged["val/iou"] == pytest.approx(2 / 10)
    assert logged["val/sdf_mae"] == pytest.approx((0.1 + 0.2) / 2)  # |f| = 0.1 and 0.2


def test_regularizer_terms_are_in_the_training_loss():
    """The loss with a term equals the loss without it plus the term, and so do the gradients
    (a term that is only logged would leave both unchanged)."""
    torch.manual_seed(0)
    net = ReLUMLP(3, 8, 2)
    src = AnalyticSource(Sphere(0.3))
    counts = {"surface": 32, "near": 32, "uniform": 32}
    batch = sample_points(src, counts, [0.01], 0.5, torch.Generator().manual_seed(0))
    module, logged = _logging_module(net)
    base = module.training_step(batch, 0)
    (g_base,) = torch.autograd.grad(base, net.layers[0].weight)
    c = 0.37
    module.regularizer_terms.append(lambda m: {"l2": c * m.net.layers[0].weight.square().sum()})
    with_term = module.training_step(batch, 0)
    (g_term,) = torch.autograd.grad(with_term, net.layers[0].weight)
    w = net.layers[0].weight.detach()
    term = c * float(w.square().sum())
    assert logged["reg/l2"] == pytest.approx(term, rel=1e-6)
    assert float(with_term - base) == pytest.approx(term, rel=1e-5)
    assert logged["train/loss"] == pytest.approx(float(with_term), rel=1e-6)
    torch.testing.assert_close(g_term - g_base, 2 * c * w, rtol=1e-5, atol=1e-6)


def test_loss_terms_are_weighted_into_the_total():
    """``ImplicitLoss``: total = sum of weight x term, each term checked by hand."""
    net = _halfspace_net(0.1)
    batch = {
        "surface": torch.tensor([[0.3, 0, 0]]),  # |f| = 0.2
        "normals": torch.tensor([[0.0, 1.0, 0.0]]),  # grad f = e_0: 1 - cos = 1
        "points": torch.tensor([[0.0, 0, 0], [0.5, 0, 0]]),  # f = -0.1, 0.4
        "sdf": torch.tensor([0.05, 0.4]),  # clamped L1 at 0.1: |-0.1 - 0.05| and |0.1 - 0.1|
    }
    out = ImplicitLoss(sdf=2.0, surface=3.0, eikonal=5.0, normal=7.0, clamp=0.1)(net, batch)
    assert float(out["surface"]) == pytest.approx(0.2)
    assert float(out["sdf"]) == pytest.approx(0.15 / 2)
    assert float(out["eikonal"]) == pytest.approx(0.0, abs=1e-12)  # |grad f| = 1 everywhere
    assert float(out["normal"]) == pytest.approx(1.0)
    assert float(out["loss"]) == pytest.approx(2 * 0.075 + 3 * 0.2 + 5 * 0 + 7 * 1.0)


def test_open_surface_trains_as_a_shell_through_the_config(tmp_path):
    """``data.sign=shell`` reaches the data module from the config and a run completes."""
    path = tmp_path / "square.obj"
    path.write_text("v 0 0 0\nv 1 0 0\nv 1 1 0\nv 0 1 0\nf 1 2 3\nf 1 3 4\n")
    cfg = _cfg(tmp_path, "experiment=mesh", f"data.path={path}", "data.sign=shell", "data.shell_thickness=0.02",
               "data.sampling.pool_size=4000", "trainer.fast_dev_run=true")
    run = train(cfg)
    assert np.isfinite(json.loads((run / "metrics.json").read_text())["train/loss"])
    assert yaml_get(run / "config.yaml", "data", "sign") == "shell"


def yaml_get(path: Path, *keys: str):
    from omegaconf import OmegaConf

    node = OmegaConf.load(path)
    for k in keys:
        node = node[k]
    return node
