"""Hydra app training implicit surface networks (``model=`` relu_mlp, skip_mlp, residual_mlp, grid_mlp) with Lightning.

``python -m nsr.train`` / ``nsr-train`` (primary config ``conf/train.yaml``), or
:func:`train` with a composed config. A run directory holds ``config.yaml`` (and ``.hydra/``
for the app), ``checkpoints/last.ckpt`` and ``best.ckpt``, TensorBoard and CSV logs,
``transform.json``, the exact mesh ``mesh.obj`` / ``mesh.ply`` in the shape's own units with
a preview ``mesh.png``, and, written last (temp file + rename) only after success,
``metrics.json``.
"""

from __future__ import annotations

import json
import os
import sys
import time
import warnings
from datetime import datetime
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf, open_dict

from nsr._config import ConfigError, config_dir, fail, validate_train
from nsr.files import atomic_write, write_triangles
from nsr.training.data import ShapeError, ShapeSource


def _instantiate_all(group: DictConfig | None) -> list[Any]:
    """Instantiate every ``_target_`` entry of a dict config group (callbacks, loggers)."""
    if not group:
        return []
    return [hydra.utils.instantiate(c) for c in group.values() if c and "_target_" in c]


def _instantiate(node: DictConfig, what: str, **kwargs: Any) -> Any:
    """Instantiate a config node; bad input raises its own clear error, not Hydra's wrapper
    (whose message spans lines and names the target, not the option)."""
    from hydra.errors import InstantiationException

    try:
        return hydra.utils.instantiate(node, **kwargs)
    except InstantiationException as err:
        if isinstance(err.__cause__, (OSError, ValueError, ImportError)):
            raise err.__cause__ from None
        if isinstance(err.__cause__, TypeError):  # an option the class does not take
            raise ConfigError(f"{what}: {err.__cause__}") from None
        raise


def _instantiate_data(cfg: DictConfig) -> Any:
    """The data module; bad input raises its own clear error, not Hydra's wrapper."""
    return _instantiate(cfg.data, "data")


class EpochLines(Callback):
    """One line per epoch (its metrics and the elapsed time) on stdout, in place of the progress
    bar where stdout is not a terminal: a log file gets lines, not carriage-return redraws.

    Only the global-zero process prints; per-step metrics (names ending in ``_step``) are left out.

    Examples
    --------
    >>> import torch
    >>> from types import SimpleNamespace
    >>> trainer = SimpleNamespace(is_global_zero=True, max_epochs=10, current_epoch=2,
    ...                           callback_metrics={"train/loss": torch.tensor(0.0123456), "train/loss_step": 1.0})
    >>> EpochLines().on_train_epoch_end(trainer, None)  # doctest: +ELLIPSIS
    epoch 3/10: train/loss=0.01235 (... s)
    """

    def __init__(self) -> None:
        self.t0 = time.perf_counter()

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        """Print the epoch's line: ``epoch E/MAX: name=value, ... (T s)``.

        Parameters
        ----------
        trainer : lightning.pytorch.Trainer
            Gives ``callback_metrics``, ``current_epoch``, ``max_epochs`` (``?`` when unset or -1)
            and ``is_global_zero``.
        pl_module : lightning.pytorch.LightningModule
            Unused.
        """
        if not trainer.is_global_zero:
            return
        metrics = _float_metrics(trainer.callback_metrics)
        shown = ", ".join(f"{k}={v:.4g}" for k, v in sorted(metrics.items()) if not k.endswith("_step"))
        total = trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else "?"
        print(f"epoch {trainer.current_epoch + 1}/{total}: {shown} ({time.perf_counter() - self.t0:.1f} s)",
              flush=True)


def _stdout_is_terminal() -> bool:
    try:
        return sys.stdout.isatty()
    except (AttributeError, ValueError):
        return False


def _resolve_run_dir(cfg: DictConfig) -> Path:
    if cfg.get("run_dir"):
        return Path(str(cfg.run_dir)).resolve()
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        return Path(HydraConfig.get().runtime.output_dir).resolve()
    stamp = datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    return (Path("outputs") / str(cfg.get("task_name", "train")) / f"{stamp}_{os.getpid()}").resolve()


def _write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    atomic_write(path, json.dumps(data, indent=2, sort_keys=True).encode())


def export_exact_mesh(
    net: torch.nn.Module, source: ShapeSource, run_dir: Path, extract_cfg: DictConfig | dict | None
) -> dict[str, Any]:
    """Extract the network's exact zero-level mesh, export it in shape units, render a preview.

    Uses ``nsr.extraction.surface.extract_mesh`` and ``nsr.eval.render.render_mesh``; where they are missing
    (ImportError / AttributeError) it warns and returns what was skipped. Returns a summary
    for ``metrics.json``.

    Parameters
    ----------
    net : torch.nn.Module
        The trained network (moved to the CPU and set to eval mode).
    source : ShapeSource
        The shape it was trained on: its dimension (only 3-D shapes are exported) and its
        transform back to shape units.
    run_dir : Path
        Where ``mesh.<fmt>`` and ``mesh.png`` go.
    extract_cfg : DictConfig, dict or None
        ``enabled`` (True), ``box`` (0.5: the box ``[-box, box]^3``), ``mode`` (auto: see
        :func:`nsr.extraction.surface.default_mode`), ``dtype`` (float64), ``formats``
        (``["obj", "ply"]``), ``render`` (True), ``size``, ``progress`` (True: a bar).

    Returns
    -------
    dict
        ``vertices``, ``triangles`` and ``extract_s``; or ``skipped`` (disabled, not 3-D) or
        ``error`` (the extraction failed: warned, the run is kept).

    Examples
    --------
    The octahedron network ``|x| + |y| + |z| - 0.5`` as a module, on a shape in unit scale:

    >>> import tempfile
    >>> from pathlib import Path
    >>> from nsr.networks import octahedron_network
    >>> from nsr.training.data import AnalyticSource
    >>> from nsr.training.shapes import Sphere
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     summary = export_exact_mesh(octahedron_network().to_module(), AnalyticSource(Sphere(0.3)), Path(tmp),
    ...                                 {"box": 1.0, "render": False})
    ...     written = sorted(p.name for p in Path(tmp).iterdir())
    >>> summary["vertices"], summary["triangles"], written
    (6, 8, ['mesh.obj', 'mesh.ply'])
    """
    ecfg = dict(extract_cfg or {})
    if not ecfg.get("enabled", True):
        return {"skipped": "extract.enabled=false"}
    if source.dim != 3:
        return {"skipped": f"mesh export needs a 3D shape, this one is {source.dim}D"}
    try:
        from nsr.extraction.surface import extract_mesh
    except (ImportError, AttributeError) as err:
        warnings.warn(f"exact mesh not exported: nsr.extraction.surface.extract_mesh unavailable ({err})", stacklevel=2)
        return {"skipped": f"nsr.extraction.surface.extract_mesh unavailable: {err}"}
    import trimesh

    box = float(ecfg.get("box", 0.5))
    dtype = getattr(torch, str(ecfg.get("dtype", "float64")))
    t0 = time.perf_counter()
    net = net.to("cpu").eval()
    try:
        mesh = extract_mesh(net, (-box, box), mode=str(ecfg.get("mode", "auto")), dtype=dtype,
                            progress=bool(ecfg.get("progress", True)))
    except Exception as err:  # a failed export must not lose the trained run
        warnings.warn(f"exact mesh extraction failed: {type(err).__name__}: {err}", stacklevel=2)
        return {"error": f"{type(err).__name__}: {err}"}
    summary: dict[str, Any] = {"extract_s": time.perf_counter() - t0, "mode": mesh.stats["mode"]}
    if mesh.is_empty:
        warnings.warn("the trained network has an empty zero level set in the box", stacklevel=2)
        return {**summary, "vertices": 0, "triangles": 0}
    verts = np.asarray(torch.as_tensor(mesh.vertices).detach().cpu().numpy(), dtype=np.float64)
    faces = np.asarray(torch.as_tensor(mesh.triangles).detach().cpu().numpy(), dtype=np.int64)
    shape_verts = source.to_shape_units(verts)
    for fmt in ecfg.get("formats", ["obj", "ply"]):  # nsr's own atomic writers: Ctrl-C is never swallowed
        write_triangles(run_dir / f"mesh.{fmt}", shape_verts, faces)
    tm = trimesh.Trimesh(shape_verts, faces, process=False)
    summary.update(vertices=len(verts), triangles=len(faces))
    if ecfg.get("render", True):
        try:
            from nsr.eval.render import render_mesh

            render_mesh(tm, run_dir / "mesh.png", size=tuple(ecfg.get("size", (512, 512))))
        except (ImportError, AttributeError) as err:
            warnings.warn(f"mesh preview not rendered: nsr.eval.render unavailable ({err})", stacklevel=2)
    return summary


@rank_zero_only
def _write_run_files(run_dir: Path, cfg: DictConfig, source: ShapeSource) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, run_dir / "config.yaml")
    _write_json_atomic(run_dir / "transform.json", source.transform())


def _float_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if torch.as_tensor(v).numel() == 1}


def train(cfg: DictConfig) -> Path:
    """Train as configured by a composed ``train.yaml``; returns the run directory.

    Bad input (missing or empty shape files, NaN coordinates, missing normals, zero-size
    box) raises before the run directory is written.

    Parameters
    ----------
    cfg : DictConfig
        ``conf/train.yaml`` composed with its groups (``data``, ``model``, ``loss``, ``trainer``,
        ``callbacks``, ``logger``, ``regularizer``, ``extract``); ``run_dir`` picks the run
        directory (else Hydra's, else ``outputs/<task_name>/<time>_<pid>``). Not modified.

    Returns
    -------
    Path
        The run directory (absolute): ``config.yaml``, ``transform.json``, ``checkpoints/``,
        the exact mesh where ``extract`` is on, and ``metrics.json`` written last.

    Raises
    ------
    nsr._config.ConfigError, nsr.training.data.ShapeError, FileNotFoundError
        For bad options or shape files, before anything is written.

    Examples
    --------
    A one-epoch run of a tiny network (about a second, and Lightning prints its own lines, so
    it is not run here):

    >>> import tempfile
    >>> from hydra import compose, initialize_config_dir
    >>> from nsr._config import config_dir
    >>> with tempfile.TemporaryDirectory() as tmp:  # doctest: +SKIP
    ...     with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
    ...         cfg = compose("train", overrides=[f"run_dir={tmp}", "trainer.max_epochs=1", "model.net.width=8",
    ...                                           "model.net.depth=2", "data.sampling.steps_per_epoch=2",
    ...                                           "extract=none", "logger=none", "trainer.accelerator=cpu"])
    ...     run_dir = train(cfg)
    ...     sorted(p.name for p in run_dir.iterdir())
    ['checkpoints', 'config.yaml', 'metrics.json', 'transform.json']
    """
    import lightning as L

    from nsr.training.lightning import ImplicitShapeModule

    cfg = cfg.copy()
    validate_train(cfg)  # every option, before anything is written
    if cfg.get("seed") is not None:
        L.seed_everything(int(cfg.seed), workers=True)
    datamodule = _instantiate_data(cfg)  # validates the shape: fails early
    source: ShapeSource = datamodule.source
    # The model config nests the network (model.net) and the optimizer/scheduler factories; the
    # loss, the data's transform and the run's config are given here. A bad model option fails
    # before the run directory is written.
    run_dir = _resolve_run_dir(cfg)
    with open_dict(cfg):
        cfg.run_dir = str(run_dir)
    make_module = _instantiate(cfg.model, "model", _partial_=True)
    module = make_module(loss=hydra.utils.instantiate(cfg.loss), transform=source.transform(),
                         config=OmegaConf.to_container(cfg, resolve=False))
    if not isinstance(module, ImplicitShapeModule):
        raise ConfigError(f"model._target_={cfg.model.get('_target_')}: must be "
                          "nsr.training.lightning.ImplicitShapeModule "
                          "(the network itself goes in model.net)")
    _write_run_files(run_dir, cfg, source)
    callbacks = _instantiate_all(cfg.get("callbacks"))
    reg = cfg.get("regularizer")
    if reg and "_target_" in reg:
        callbacks.append(hydra.utils.instantiate(reg))
    loggers = _instantiate_all(cfg.get("logger"))
    extra: dict[str, Any] = {}
    if cfg.trainer.get("enable_progress_bar", True) and not _stdout_is_terminal():
        extra["enable_progress_bar"] = False
        callbacks.append(EpochLines())
    trainer: L.Trainer = hydra.utils.instantiate(
        cfg.trainer, callbacks=callbacks, logger=loggers or False, default_root_dir=str(run_dir), **extra
    )
    t0 = time.perf_counter()
    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    train_s = time.perf_counter() - t0
    if trainer.is_global_zero:
        _finish_run(run_dir, trainer, module, source, cfg, train_s)
    return run_dir


def _finish_run(run_dir: Path, trainer: Any, module: Any, source: ShapeSource, cfg: DictConfig, train_s: float) -> None:
    ckpt = trainer.checkpoint_callback
    step, epoch = int(trainer.global_step), int(trainer.current_epoch)
    last = run_dir / "checkpoints" / "last.ckpt"
    if step == 0 and last.is_file():  # ddp_spawn: the main process did not step itself
        state = torch.load(last, map_location="cpu", weights_only=True)
        step, epoch = int(state["global_step"]), int(state["epoch"]) + 1
    metrics: dict[str, Any] = {
        **_float_metrics(trainer.callback_metrics),
        "global_step": step,
        "epochs": epoch,
        "train_s": train_s,
        "transform": source.transform(),
        "best_checkpoint": str(ckpt.best_model_path) if ckpt is not None else "",
        "last_checkpoint": str(getattr(ckpt, "last_model_path", "") or "") if ckpt is not None else "",
    }
    metrics["mesh"] = export_exact_mesh(module.net, source, run_dir, cfg.get("extract"))
    _write_json_atomic(run_dir / "metrics.json", metrics)


USER_ERRORS = (ValueError, OSError, MemoryError, TypeError)


def _app(cfg: DictConfig) -> float | None:
    try:
        run_dir = train(cfg)
    except USER_ERRORS as err:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        fail("train", f"{err} (HYDRA_FULL_ERROR=1 shows the traceback)"
             if not isinstance(err, (ConfigError, ShapeError, FileNotFoundError)) else err)
    path = run_dir / "metrics.json"
    print(f"run directory: {run_dir}", flush=True)
    if path.is_file():
        return json.loads(path.read_text()).get("val/sdf_mae")
    return None


# Options that moved when the model config took the lightning-hydra-template layout.
_MOVED = {**{f"model.{k}": f"model.net.{k}" for k in ("in_dim", "width", "depth", "geometric_init", "radius")},
          "optimizer": "model.optimizer", "scheduler": "model.scheduler",
          "scheduler_interval": "model.scheduler_interval"}


def check_moved_options(argv: list[str]) -> None:
    """Refuse an override of an option that moved into the nested model config, with one line
    naming its new key (Hydra's own message says only that the key is not in the config).

    Parameters
    ----------
    argv : list of str
        Command-line overrides (``key=value``, with an optional ``+``/``~`` prefix).

    Raises
    ------
    SystemExit
        With status 2, after printing ``nsr-train: error: <old key>: moved to <new key> ...`` on stderr.

    Examples
    --------
    >>> check_moved_options(["model.net.width=64", "trainer.max_epochs=2"])  # current keys pass
    >>> check_moved_options(["model.width=64"])
    Traceback (most recent call last):
    ...
    SystemExit: 2
    """
    for arg in argv:
        key = arg.split("=", 1)[0].lstrip("+~")
        for old, new in _MOVED.items():
            if "=" in arg and (key == old or key.startswith(old + ".")):
                fail("train", f"{key}: moved to {new}{key[len(old):]} (the model config nests the network as "
                              "model.net and its optimizer and scheduler as model.optimizer, model.scheduler)")


def main() -> float | None:
    """Entry point of ``nsr-train`` (``--help`` lists the options); returns the final
    ``val/sdf_mae`` (for sweepers).

    Reads ``sys.argv``; prints ``run directory: <path>`` at the end; a bad option or shape file
    ends the process with one message and exit status 2.

    Returns
    -------
    float or None
        What Hydra's decorated main returns: ``None`` when run from a command line (Hydra 1.3
        drops the task's return value there); sweepers receive the task function's
        ``val/sdf_mae`` directly.

    Examples
    --------
    From a shell (not run here; :func:`train` runs the same job from Python):

    >>> import subprocess
    >>> subprocess.run(["nsr-train", "trainer.max_epochs=10", "model.net.width=32"])  # doctest: +SKIP
    """
    check_moved_options(sys.argv[1:])
    return hydra.main(config_path=config_dir(), config_name="train", version_base="1.3")(_app)()


if __name__ == "__main__":
    main()
