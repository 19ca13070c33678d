"""The apps' shared machinery: where the Hydra configs live, their ``--help`` text, and the
up-front validation of every option (one function per app, run before anything is written).

Each app (``nsr-train``, ``nsr-extract``, ``nsr-compare``) checks its whole config with
:func:`validate_train` / :func:`validate_extract` / :func:`validate_compare` twice over: from the
Hydra callback :class:`ValidateBeforeRun`, before Hydra creates the run directory, and at the
start of the job function (:func:`nsr.train.train`, :func:`nsr.extract.run_extract`,
:func:`nsr.compare.run_compare`) for callers of the Python API. A bad option ends the app with
one line ``nsr-<app>: error: <option>=<value>: <what is wrong>; <what to do>`` and exit code 2.
"""

from __future__ import annotations

import math
import numbers
import os
import re
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from nsr.limits import MAX_WORKERS, ArgumentError, check_device

_PKG = Path(__file__).resolve().parent
EXIT_USAGE = 2
MESH_SUFFIXES = (".obj", ".ply", ".stl", ".off", ".glb", ".gltf")
_DTYPE_HELP = "use float64 (default, exact to rounding) or float32"


class ConfigError(ArgumentError):
    """An app option is invalid; the message names it and says what to do."""


def config_dir() -> str:
    """Absolute path of the Hydra config directory.

    A wheel carries the top-level ``conf/`` as ``nsr/conf`` (see pyproject.toml); a
    checkout or an editable install has it beside the package.
    """
    for candidate in (_PKG / "conf", _PKG.parent / "conf"):
        if (candidate / "train.yaml").is_file():
            return str(candidate)
    raise FileNotFoundError(
        f"nsr's Hydra configs were not found in {_PKG / 'conf'} or {_PKG.parent / 'conf'}; "
        "reinstall nsr (pip install .) or run from a checkout"
    )


# --------------------------------------------------------------------------------------
# --help: the app's own config file, comments included
# --------------------------------------------------------------------------------------


def app_help(app: str) -> str:
    """The ``--help`` text of ``nsr-<app>``, made from ``conf/<app>.yaml``: its header comment
    (what the app does, examples), then every option line with its default and comment.
    Wired in as ``hydra.help.template: ${nsr_help:<app>}``."""
    lines = Path(config_dir(), f"{app}.yaml").read_text().splitlines()
    head, options, in_hydra = [], [], False
    for line in lines:
        if line.startswith("hydra:"):
            in_hydra = True
        if in_hydra or line.startswith("defaults:") or line.startswith("  - "):
            continue
        if not options and line.startswith("#"):
            head.append(line.lstrip("#")[1:] if line.startswith("# ") else line.lstrip("#"))
        elif line.strip() and not line.startswith("# @"):
            options.append(("  " + line.lstrip("# ")) if line.startswith("#") else "  " + line)
    text = "\n".join(head) + "\n\nOptions (key=value on the command line; default, then what it does):\n"
    text += "\n".join(options) + "\n"
    if app == "train":
        text += ("\nConfig groups (group=option; each option is a file in conf/<group>/):\n"
                 + _group_listing() + "\n")
    text += (f"\nEvery run writes to its own folder (outputs/{app}/<date>_<time>, or hydra.run.dir=PATH)"
             " and prints it at the end.\nHydra's own flags: --hydra-help.  Current config: --cfg job.\n")
    return text.replace("$", "$$")  # the template goes through string.Template


def _group_listing() -> str:
    conf = Path(config_dir())
    rows = []
    for group in sorted(p for p in conf.iterdir() if p.is_dir() and not p.name.startswith(".")):
        names = sorted(f.stem for f in group.glob("*.yaml"))
        rows.append(f"  {group.name}: {', '.join(names)}")
    return "\n".join(rows)


if not OmegaConf.has_resolver("nsr_help"):
    OmegaConf.register_new_resolver("nsr_help", app_help)


# --------------------------------------------------------------------------------------
# Option checks
# --------------------------------------------------------------------------------------


def _plain(value: Any) -> Any:
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def _get(cfg: Any, key: str, default: Any = None) -> Any:
    try:
        value = OmegaConf.select(cfg, key, default=default, throw_on_missing=False) if OmegaConf.is_config(cfg) \
            else cfg.get(key, default)
    except Exception as err:  # an unresolvable interpolation
        raise ConfigError(f"{key}: cannot be resolved ({err})") from None
    return _plain(value)


def check_bool(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{key}={value!r}: must be true or false")
    return value


def check_choice(key: str, value: Any, choices: tuple[str, ...], hint: str = "") -> str:
    if value not in choices:
        raise ConfigError(f"{key}={value!r}: must be one of {', '.join(choices)}{hint}")
    return str(value)


def check_int(key: str, value: Any, lo: int, hi: int | None = None, what: str = "") -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ConfigError(f"{key}={value!r}: must be an integer{what}")
    if value < lo or (hi is not None and value > hi):
        rng = f">= {lo}" if hi is None else f"between {lo} and {hi}"
        raise ConfigError(f"{key}={value}: must be {rng}{what}")
    return int(value)


def check_number(key: str, value: Any, *, positive: bool = False, what: str = "") -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
        raise ConfigError(f"{key}={value!r}: must be a finite number{what}")
    if positive and value <= 0:
        raise ConfigError(f"{key}={value}: must be > 0{what}")
    return float(value)


def check_dtype(key: str, value: Any) -> str:
    if value in ("float16", "half", "bfloat16"):
        raise ConfigError(f"{key}={value}: too few mantissa bits for exact vertices; {_DTYPE_HELP}")
    return check_choice(key, value, ("float64", "float32", "double"), f"; {_DTYPE_HELP}")


def check_device_option(key: str, value: Any) -> str:
    if value is None:
        return "cpu"
    try:
        check_device(str(value))
    except ArgumentError as err:
        raise ConfigError(str(err).replace("device=", f"{key}=", 1)) from None
    return str(value)


def check_bounds(key: str, value: Any) -> Any:
    """``null``, ``b`` (the box ``[-b, b]^D``), ``[lo, hi]`` or ``[[lo, hi], ...]``; finite, lo < hi."""
    if value is None:
        return None
    hint = "; give [lo,hi] (every axis) or [[lo0,hi0],[lo1,hi1],...], e.g. bounds=[-1,1]"
    try:
        import numpy as np

        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise ConfigError(f"{key}={value!r}: not a box{hint}") from None
    if arr.ndim == 0:
        arr = np.array([[-abs(float(arr)), abs(float(arr))]])
    elif arr.shape == (2,):
        arr = arr[None]
    if arr.ndim != 2 or arr.shape[1] != 2 or len(arr) == 0:
        raise ConfigError(f"{key}={value!r}: not a box (shape {arr.shape}){hint}")
    if not np.isfinite(arr).all():
        raise ConfigError(f"{key}={value!r}: NaN or infinite bounds{hint}")
    if not (arr[:, 0] < arr[:, 1]).all():
        raise ConfigError(f"{key}={value!r}: every axis needs lo < hi{hint}")
    return value


def check_existing_path(key: str, value: Any, what: str) -> Path:
    if value is None or (isinstance(value, str) and not value.strip()):
        raise ConfigError(f"{key} is required: {what}")
    if not isinstance(value, (str, os.PathLike)):
        raise ConfigError(f"{key}={value!r}: must be a path ({what})")
    path = Path(str(value)).expanduser()
    if not path.exists():  # FileNotFoundError, as open() would raise, with the option named
        raise FileNotFoundError(f"{key}={value}: no such file or directory ({what})")
    return path


def check_writable_dir(key: str, value: Any) -> Path:
    """A folder that exists and is writable, or can be created: its nearest existing ancestor
    must be a writable directory."""
    path = Path(str(value)).expanduser().absolute()
    probe = path
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise ConfigError(f"{key}={value}: {probe} is a file, not a folder; choose another output folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(f"{key}={value}: {probe} is not writable; choose a writable output folder")
    return path


def _required(cfg: Any, key: str, what: str) -> Any:
    if OmegaConf.is_config(cfg) and key in cfg and OmegaConf.is_missing(cfg, key):
        raise ConfigError(f"{key}= is required: {what}")
    return _get(cfg, key)


_NET_WHAT = "a training run directory, a checkpoint (.ckpt) or a network file (.pt)"


def _common_extraction(cfg: Any, out: dict[str, Any]) -> None:
    out["net"] = check_existing_path("net", _required(cfg, "net", _NET_WHAT), _NET_WHAT)
    out["bounds"] = check_bounds("bounds", _get(cfg, "bounds"))
    out["dtype"] = check_dtype("dtype", _get(cfg, "dtype", "float64"))
    out["device"] = check_device_option("device", _get(cfg, "device", "cpu"))
    out["mode"] = check_choice("mode", _get(cfg, "mode", "auto"), ("auto", "surface", "complex", "track"))
    out_dir = _get(cfg, "out_dir")
    if out_dir is not None:
        out["out_dir"] = check_writable_dir("out_dir", out_dir)


def _optional_int(cfg: Any, key: str, lo: int, what: str) -> int | None:
    value = _get(cfg, key)
    return None if value is None else check_int(key, value, lo, None, what)


def validate_extract(cfg: Any) -> dict[str, Any]:
    """Check every ``nsr-extract`` option (``conf/extract.yaml``); return them as plain values.

    Checks that need the network (the box's dimension, the memory that ``tiles``, ``band``
    and ``seeds`` imply) follow in :func:`nsr.extract.run_extract` once it is loaded, still
    before anything is written. Raises :class:`ConfigError`, or ``FileNotFoundError`` for a
    path that does not exist."""
    out: dict[str, Any] = {}
    _common_extraction(cfg, out)
    for key in ("close", "polygons", "preview", "progress"):
        out[key] = check_bool(key, _get(cfg, key, key == "preview"))
    out["workers"] = check_int("workers", _get(cfg, "workers", 1), 1, MAX_WORKERS, " (processes, surface mode)")
    if out["workers"] > 1 and out["device"] != "cpu":
        raise ConfigError(f"workers={out['workers']}: worker processes run on the CPU; use workers=1 with "
                          f"device={out['device']}")
    out["level"] = check_number("level", _get(cfg, "level", 0.0), what=" (the level set f = level)")
    limit = _get(cfg, "memory_limit_gb")
    out["memory_limit"] = None if limit is None else 2**30 * check_number(
        "memory_limit_gb", limit, positive=True, what=" (GiB; null: 80% of the available memory)")
    out["tiles"] = _optional_int(cfg, "tiles", 1, " (tiles per axis, surface mode; null: automatic)")
    out["band"] = _optional_int(cfg, "band", 0, " (band grid per axis, a power of two, or 0: off)")
    out["seeds"] = _optional_int(cfg, "seeds", 1, " (track mode seed grid per axis; null: 64)")
    if out["mode"] != "auto":  # auto: checked once the network, and so the mode, is known
        check_mode_options(out, out["mode"])
    return out


def check_mode_options(opts: dict[str, Any], mode: str) -> None:
    """Refuse ``tiles``/``band`` (surface mode) or ``seeds`` (track mode) given for another ``mode``."""
    for key, used_by in (("tiles", "surface"), ("band", "surface"), ("seeds", "track")):
        if opts.get(key) is not None and mode != used_by:
            how = (f"mode=auto chose {mode} for this network" if opts.get("mode") == "auto"
                   else f"this run has mode={mode}")
            raise ConfigError(f"{key}={opts[key]}: only used by mode={used_by} ({how})")


def validate_compare(cfg: Any) -> dict[str, Any]:
    """Check every ``nsr-compare`` option (``conf/compare.yaml``); return them as plain values
    (``resolutions`` a list of ints: a single ``64`` is ``[64]``; ``reference_mesh`` the loaded
    ground truth or ``None``). Raises :class:`ConfigError`."""
    out: dict[str, Any] = {}
    _common_extraction(cfg, out)
    out["mc_dtype"] = check_dtype("mc_dtype", _get(cfg, "mc_dtype", "float32"))
    out["exact"] = check_bool("exact", _get(cfg, "exact", True))
    out["render"] = check_bool("render", _get(cfg, "render", True))
    out["n_samples"] = check_int("n_samples", _get(cfg, "n_samples", 100_000), 100, 10**8,
                                 " (surface samples per mesh for the distances)")
    out["seed"] = check_int("seed", _get(cfg, "seed", 0), 0, 2**32 - 1)
    res = _get(cfg, "resolutions", [64, 128, 256])
    hint = "; give a list of grid sizes, e.g. resolutions=[64,128,256]"
    if isinstance(res, numbers.Integral) and not isinstance(res, bool):
        res = [res]
    if not isinstance(res, (list, tuple)):
        raise ConfigError(f"resolutions={res!r}: not a list of integers{hint}")
    out["resolutions"] = [check_int("resolutions", r, 2, None, hint) for r in res]
    ref = _get(cfg, "reference")
    if ref is not None:
        path = check_existing_path("reference", ref, "the ground-truth mesh")
        if path.suffix.lower() not in MESH_SUFFIXES:
            raise ConfigError(f"reference={ref}: not a mesh file; give one of {', '.join(MESH_SUFFIXES)}")
        out["reference"], out["reference_mesh"] = path, load_reference(path)
    else:
        out["reference"] = out["reference_mesh"] = None
    if not out["exact"] and out["reference"] is None:
        raise ConfigError("exact=false: nothing to compare against; set exact=true or reference=PATH")
    if not out["resolutions"] and out["reference"] is None:
        raise ConfigError("resolutions=[]: nothing to compare the exact mesh with; give resolutions or reference")
    return out


def load_reference(path: Path) -> Any:
    """The ground-truth mesh of ``nsr-compare``: a readable mesh file with triangles and finite
    vertices, else :class:`ConfigError` (a comparison against nothing must not look complete)."""
    import numpy as np
    import trimesh

    try:
        mesh = trimesh.load(path, force="mesh", process=False)
    except Exception as err:  # trimesh raises many types for unreadable files
        raise ConfigError(f"reference={path}: cannot read a mesh from it ({type(err).__name__}: {err}); "
                          "give an OBJ, PLY, STL, OFF or GLB mesh") from None
    if not isinstance(mesh, trimesh.Trimesh) or len(mesh.faces) == 0:
        raise ConfigError(f"reference={path}: the file holds no triangles; give the ground-truth surface mesh")
    if not np.isfinite(mesh.vertices).all():
        raise ConfigError(f"reference={path}: NaN or infinite vertex coordinates")
    return mesh


_PRECISIONS = ("64", "32", "16", "bf16", "64-true", "32-true", "16-mixed", "bf16-mixed", "16-true", "bf16-true")


def validate_train(cfg: Any) -> dict[str, Any]:
    """Check the ``nsr-train`` options that fail late or silently otherwise (model size, data
    path and kind, box, batch and epoch counts, learning rate, accelerator, checkpoint to
    resume, run directory). The data module checks the shape file itself, and the model is
    instantiated, both before the run directory is written. Raises :class:`ConfigError`, or
    ``FileNotFoundError`` for a path that does not exist."""
    out: dict[str, Any] = {}
    what = " (hidden layer width)"
    out["width"] = check_int("model.net.width", _get(cfg, "model.net.width", 1), 1, 1 << 16, what)
    out["depth"] = check_int("model.net.depth", _get(cfg, "model.net.depth", 1), 1, 1024, " (hidden layers)")
    kind, path = _get(cfg, "data.kind"), _get(cfg, "data.path")
    if path is not None and kind not in ("mesh", "pointcloud"):
        raise ConfigError(
            f"data.path={path}: the data config (data.kind={kind}) is a built-in shape that ignores data.path; "
            "train on a file with experiment=mesh data.path=... (or experiment=pointcloud)"
        )
    if kind in ("mesh", "pointcloud"):
        check_existing_path("data.path", path, f"the {kind} file to train on (data.path=...)")
    for key in ("data.sampling.batch_size", "data.sampling.steps_per_epoch", "data.sampling.n_val"):
        value = _get(cfg, key)
        if value is not None:
            check_int(key, value, 1, 1 << 26)
    epochs = _get(cfg, "trainer.max_epochs")
    if epochs is not None:
        check_int("trainer.max_epochs", epochs, -1, None, " (-1: until max_time or max_steps)")
        if epochs == 0:
            raise ConfigError("trainer.max_epochs=0: nothing would be trained; give >= 1 (or -1 with max_time)")
    for key in ("model.optimizer.lr", *(f"model.param_groups.{g}.lr" for g in _get(cfg, "model.param_groups") or {})):
        lr = _get(cfg, key)
        if lr is not None:
            check_number(key, lr, positive=True, what=" (learning rate)")
    precision = _get(cfg, "trainer.precision")
    if precision is not None and str(precision) not in _PRECISIONS:
        raise ConfigError(f"trainer.precision={precision}: must be one of {', '.join(_PRECISIONS)}")
    _check_accelerator(str(_get(cfg, "trainer.accelerator", "auto")))
    ckpt = _get(cfg, "ckpt_path")
    if ckpt is not None:
        check_existing_path("ckpt_path", ckpt, "the checkpoint to resume from")
    seed = _get(cfg, "seed")
    if seed is not None:
        check_int("seed", seed, 0, 2**32 - 1)
    if _get(cfg, "run_dir") is not None:
        check_writable_dir("run_dir", _get(cfg, "run_dir"))
    return out


def _check_accelerator(acc: str) -> None:
    import torch

    if acc in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ConfigError(f"trainer.accelerator={acc}: no CUDA device is available here; use trainer=cpu "
                          "(or trainer.accelerator=auto)")
    check_choice("trainer.accelerator", acc, ("auto", "cpu", "gpu", "cuda", "mps", "tpu", "hpu"))


VALIDATORS: dict[str, Callable[[Any], dict[str, Any]]] = {
    "train": validate_train, "extract": validate_extract, "compare": validate_compare,
}


# --------------------------------------------------------------------------------------
# Running an app: one line and exit code 2 for bad input
# --------------------------------------------------------------------------------------


def fail(app: str, err: BaseException | str) -> None:
    """Print ``nsr-<app>: error: <err>`` as one line on stderr and exit with code 2."""
    text = re.sub(r"\s*\n\s*", " ", str(err)).strip() or type(err).__name__
    print(f"nsr-{app}: error: {text}", file=sys.stderr, flush=True)
    raise SystemExit(EXIT_USAGE)


def check_overrides(app: str, argv: list[str]) -> None:
    """Refuse unknown top-level options of an app without config groups (extract, compare)
    with one line listing the known ones (Hydra's own message takes five lines)."""
    known = set(OmegaConf.load(Path(config_dir(), f"{app}.yaml")).keys()) - {"hydra", "defaults"}
    for arg in argv:
        if arg.startswith(("-", "+", "~", "hydra.", "hydra/")) or "=" not in arg:
            continue
        key = arg.split("=", 1)[0].split(".", 1)[0]
        if key not in known:
            fail(app, f"unknown option {key!r}; the options are {', '.join(sorted(known))} (see nsr-{app} --help)")


try:
    from hydra.experimental.callback import Callback
except ImportError:  # pragma: no cover - hydra < 1.1
    Callback = object  # type: ignore[assignment,misc]


class ValidateBeforeRun(Callback):  # type: ignore[misc,valid-type]
    """Hydra callback (``hydra.callbacks`` in each app's config): validate the app's options
    and its run directory before Hydra creates that directory, so a bad option writes
    nothing; refusals end the app with one line and exit code 2."""

    def __init__(self, app: str) -> None:
        self.app = app

    def on_run_start(self, config: Any, **kwargs: Any) -> None:
        try:
            VALIDATORS[self.app](config)
            check_writable_dir("hydra.run.dir", config.hydra.run.dir)
        except (ConfigError, FileNotFoundError) as err:
            fail(self.app, err)

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        try:
            check_writable_dir("hydra.sweep.dir", config.hydra.sweep.dir)
        except ConfigError as err:
            fail(self.app, err)


def as_mapping(cfg: Any) -> Mapping[str, Any]:
    """A plain config (dict) or DictConfig as a DictConfig."""
    return cfg if OmegaConf.is_config(cfg) else OmegaConf.create(dict(cfg))
