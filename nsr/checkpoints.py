"""Networks recorded in training checkpoints, and rebuilt from them without running code from the file.

A checkpoint written by :class:`nsr.training.lightning.ImplicitShapeModule` records its network in
``hyper_parameters["net"]`` as ``{"_target_": "<class>", <keyword>: <value>, ...}`` (see
:func:`network_spec`), next to the weights under ``state_dict["net.*"]``. Hydra would
instantiate such a ``_target_`` by importing whatever it names, which for a file from elsewhere
means running code chosen by the file's author (``os.system`` is a valid ``_target_``). So
:func:`build_network` never imports the name it reads: it looks it up in :data:`ALLOWED`, a
fixed table of nsr's own network classes, checks every keyword against that class's options
(type and range), builds the network on PyTorch's ``meta`` device first to compare its tensor
shapes with the file's (so a spec cannot make nsr allocate more than the file holds), and only
then builds it for real and loads the weights. Anything else is refused with a
:class:`~nsr.networks.NetworkError` naming the target and the allowlist.

Older checkpoints (``hyper_parameters["net"] = {"in_dim", "width", "depth"}``, a plain
``ReLUMLP``) are still read: :func:`module_from_checkpoint` rebuilds them as ``ReLUMLP``.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from nsr.networks import NetworkError

Check = Callable[[str, Any], Any]


# --------------------------------------------------------------------------------------
# Option checks: each takes (name, value) and returns the value or raises NetworkError
# --------------------------------------------------------------------------------------


def _int(lo: int, hi: int, none_ok: bool = False) -> Check:
    def check(name: str, value: Any) -> Any:
        if value is None and none_ok:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise NetworkError(f"option {name}={value!r}: must be an integer in [{lo}, {hi}]")
        return value

    return check


def _bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise NetworkError(f"option {name}={value!r}: must be true or false")
    return value


def _float(lo: float, hi: float) -> Check:
    def check(name: str, value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                or not lo <= value <= hi:
            raise NetworkError(f"option {name}={value!r}: must be a finite number in [{lo}, {hi}]")
        return float(value)

    return check


def _choice(*values: str) -> Check:
    def check(name: str, value: Any) -> str:
        if value not in values:
            raise NetworkError(f"option {name}={value!r}: must be one of {', '.join(values)}")
        return str(value)

    return check


def _bounds(name: str, value: Any) -> list[float]:
    ok = isinstance(value, (list, tuple)) and len(value) == 2 and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value)
    if not ok or not value[0] < value[1]:
        raise NetworkError(f"option {name}={value!r}: must be [lo, hi], finite, lo < hi")
    return [float(value[0]), float(value[1])]


_SIZE = _int(1, 1 << 16)
_MLP = {"in_dim": _int(1, 64), "width": _SIZE, "depth": _int(1, 1024), "geometric_init": _bool,
        "radius": _float(-1e6, 1e6)}


# --------------------------------------------------------------------------------------
# The constructor keywords of a built network (what a checkpoint records)
# --------------------------------------------------------------------------------------


def _mlp_spec(net: Any) -> dict[str, Any]:
    return {"in_dim": int(net.in_dim), "width": int(net.width), "depth": int(net.depth)}


def _skip_spec(net: Any) -> dict[str, Any]:
    from torch.nn.utils import parametrize

    return {**_mlp_spec(net), "skip": int(net.skip), "latent_dim": int(net.latent_dim),
            "tanh_output": bool(net.tanh_output), "weight_norm": parametrize.is_parametrized(net.layers[0]),
            "dropout": float(net.drop.p)}


def _residual_spec(net: Any) -> dict[str, Any]:
    leaky = isinstance(net.act, nn.LeakyReLU)
    return {**_mlp_spec(net), "activation": "leaky_relu" if leaky else "relu",
            "negative_slope": float(net.act.negative_slope) if leaky else 0.01}


def _grid_spec(net: Any) -> dict[str, Any]:
    enc = net.encoding
    return {**_mlp_spec(net), "n_levels": len(enc.resolutions), "features": int(enc.features),
            "min_resolution": int(enc.resolutions[0]), "max_resolution": int(enc.resolutions[-1]),
            "table_size": int(enc.table_size), "bounds": [float(enc.lo), float(enc.hi)],
            "include_input": bool(enc.include_input)}


@dataclass(frozen=True)
class Rebuildable:
    """One network class nsr rebuilds from checkpoint files.

    Parameters
    ----------
    module, name : str
        Where the class lives (imported from this fixed table, never from a file).
    options : mapping of str to callable
        Every keyword a checkpoint may give, with its check ``(name, value) -> value``.
    spec : callable
        ``net -> {keyword: value}``: the keywords that rebuild ``net`` (its weights aside).

    Examples
    --------
    >>> from nsr.checkpoints import ALLOWED
    >>> entry = ALLOWED["nsr.networks.ReLUMLP"]
    >>> entry.target, entry.load().__name__, sorted(entry.options)[:3]
    ('nsr.networks.ReLUMLP', 'ReLUMLP', ['depth', 'geometric_init', 'in_dim'])
    """

    module: str
    name: str
    options: Mapping[str, Check]
    spec: Callable[[nn.Module], dict[str, Any]]

    @property
    def target(self) -> str:
        """The class's full name, as recorded in ``_target_``."""
        return f"{self.module}.{self.name}"

    def load(self) -> type[nn.Module]:
        """The class itself.

        Returns
        -------
        type
            The ``nn.Module`` subclass, imported from ``module`` (a fixed name in nsr, never one read from a file).
        """
        return getattr(importlib.import_module(self.module), self.name)


#: nsr's own network classes that a checkpoint may name, by their full names.
ALLOWED: dict[str, Rebuildable] = {r.target: r for r in [
    Rebuildable("nsr.networks", "ReLUMLP", _MLP, _mlp_spec),
    Rebuildable("nsr.pl.models", "SkipMLP", {
        **_MLP, "skip": _int(0, 1023, none_ok=True), "latent_dim": _int(0, 1 << 16), "tanh_output": _bool,
        "weight_norm": _bool, "dropout": _float(0.0, 1.0)}, _skip_spec),
    Rebuildable("nsr.pl.models", "ResidualMLP", {
        **_MLP, "activation": _choice("relu", "leaky_relu"), "negative_slope": _float(-1e6, 1e6)}, _residual_spec),
    Rebuildable("nsr.pl.encoding", "GridMLP", {
        **_MLP, "in_dim": _int(1, 7), "n_levels": _int(1, 64), "features": _int(1, 1024),
        "min_resolution": _int(1, 1 << 20), "max_resolution": _int(1, 1 << 20), "table_size": _int(1, 1 << 26),
        "bounds": _bounds, "include_input": _bool, "init_scale": _float(0.0, 1e6)}, _grid_spec),
]}
_ALIASES = {"nsr.ReLUMLP": "nsr.networks.ReLUMLP", "nsr.pl.SkipMLP": "nsr.pl.models.SkipMLP",
            "nsr.pl.ResidualMLP": "nsr.pl.models.ResidualMLP",
            # checkpoints written before the package was split into stages (2026-12-01)
            "nsr.encoding.GridMLP": "nsr.pl.encoding.GridMLP"}


def allowed_targets() -> list[str]:
    """The class names a checkpoint's ``hyper_parameters["net"]["_target_"]`` may give.

    Returns
    -------
    list of str

    Examples
    --------
    >>> from nsr.checkpoints import allowed_targets
    >>> allowed_targets()
    ['nsr.networks.ReLUMLP', 'nsr.pl.models.SkipMLP', 'nsr.pl.models.ResidualMLP', 'nsr.pl.encoding.GridMLP']
    """
    return list(ALLOWED)


def network_spec(net: nn.Module) -> dict[str, Any]:
    """What a checkpoint records about ``net``: ``{"_target_": class, **keywords}``.

    For a network of an allowlisted class (exactly that class, not a subclass, whose
    ``forward`` could differ), the keywords are read from the network and checked once: the
    network they build, given ``net``'s weights, must compute ``net``'s outputs at 64 seeded
    points. Otherwise the spec is ``{"_target_": class, "_rebuildable_": False, "_why_": ...}``,
    which :func:`build_network` refuses with that reason (the weights are still saved).

    Parameters
    ----------
    net : torch.nn.Module
        The trained network.

    Returns
    -------
    dict of str to Any
        Plain values only (a checkpoint is read with ``weights_only=True``).

    Examples
    --------
    >>> import torch
    >>> from nsr.checkpoints import network_spec
    >>> from nsr.pl.models import SkipMLP
    >>> spec = network_spec(SkipMLP(in_dim=3, width=16, depth=4))
    >>> spec["_target_"], spec["width"], spec["skip"]
    ('nsr.pl.models.SkipMLP', 16, 2)
    >>> network_spec(torch.nn.Linear(3, 1))["_rebuildable_"]
    False
    """
    cls = type(net)
    target = f"{cls.__module__}.{cls.__qualname__}"
    entry = ALLOWED.get(target)
    if entry is None or entry.load() is not cls:
        return _unrebuildable(target, f"{target} is not one of nsr's network classes ({', '.join(ALLOWED)})")
    try:
        spec = {"_target_": target, **entry.spec(net)}
        rebuilt = build_network(spec, net.state_dict())
    except (AttributeError, NetworkError, RuntimeError, ValueError, TypeError) as err:
        return _unrebuildable(target, f"its options could not be read back ({type(err).__name__}: {err})")
    if not _same_outputs(net, rebuilt, spec):
        return _unrebuildable(target, "the network rebuilt from its options computes something else "
                                      "(an attribute changed after construction?)")
    return spec


def _unrebuildable(target: str, why: str) -> dict[str, Any]:
    return {"_target_": target, "_rebuildable_": False, "_why_": why}


def _same_outputs(net: nn.Module, rebuilt: nn.Module, spec: Mapping[str, Any]) -> bool:
    """Whether ``rebuilt`` computes ``net`` (both in eval mode) at 64 seeded points in [-1, 1]^D."""
    first = next(iter(net.parameters()), None)
    device = first.device if first is not None else torch.device("cpu")
    dtype = first.dtype if first is not None and first.is_floating_point() else torch.float32
    n_in = int(spec["in_dim"]) + int(spec.get("latent_dim", 0))
    gen = torch.Generator().manual_seed(0)
    x = (torch.rand(64, n_in, generator=gen) * 2 - 1).to(device=device, dtype=dtype)
    was_training = net.training
    try:
        net.eval()
        with torch.no_grad():
            want, got = net(x), rebuilt.to(device=device, dtype=dtype)(x)
    finally:
        net.train(was_training)
    return want.shape == got.shape and bool(torch.allclose(want, got, rtol=1e-5, atol=1e-6))


def build_network(spec: Mapping[str, Any], state_dict: Mapping[str, Tensor] | None = None) -> nn.Module:
    """The network a checkpoint's ``hyper_parameters["net"]`` describes, with its weights, in eval mode.

    Nothing named in ``spec`` is imported: ``spec["_target_"]`` must be one of
    :func:`allowed_targets` and every other key one of that class's options, with a value of
    the right type and range. With ``state_dict`` the network is first built on the ``meta``
    device and its tensor names and shapes compared with the file's, so that a spec cannot make
    nsr allocate more than the file holds; the weights must be finite.

    Parameters
    ----------
    spec : mapping
        ``{"_target_": class, keyword: value, ...}`` (:func:`network_spec`).
    state_dict : mapping of str to Tensor, optional
        The network's weights (keys without the module's ``net.`` prefix); the network is
        built in their floating dtype.

    Returns
    -------
    torch.nn.Module
        On the CPU, in eval mode.

    Raises
    ------
    NetworkError
        Naming the target and the allowlist, the bad option, or the mismatching weight.

    Examples
    --------
    >>> from nsr.checkpoints import build_network
    >>> build_network({"_target_": "nsr.networks.ReLUMLP", "in_dim": 2, "width": 8, "depth": 1}).layers[0]
    Linear(in_features=2, out_features=8, bias=True)
    >>> try:
    ...     build_network({"_target_": "os.system", "command": "touch PWNED"})
    ... except Exception as err:
    ...     print(str(err)[:77])
    the checkpoint's network class 'os.system' is not one nsr rebuilds from files
    """
    entry, kwargs = _checked(spec)
    cls = entry.load()
    if state_dict is not None:
        _check_weights(entry, cls, kwargs, state_dict)
    try:
        net = cls(**kwargs)
    except (ValueError, TypeError) as err:
        raise NetworkError(f"{entry.target}{_call(kwargs)}: {err}") from None
    if state_dict is not None:
        dtypes = [t.dtype for t in state_dict.values() if t.is_floating_point()]
        if dtypes:
            net = net.to(dtype=dtypes[0])
        net.load_state_dict(dict(state_dict), strict=True)
    return net.eval()


def _checked(spec: Mapping[str, Any]) -> tuple[Rebuildable, dict[str, Any]]:
    if not isinstance(spec, Mapping):
        raise NetworkError(f"the checkpoint's network record is a {type(spec).__name__}, not a mapping")
    target = spec.get("_target_")
    entry = ALLOWED.get(_ALIASES.get(target, target)) if isinstance(target, str) else None
    if entry is None:
        raise NetworkError(
            f"the checkpoint's network class {target!r} is not one nsr rebuilds from files: it builds only "
            f"{', '.join(ALLOWED)}, and never imports a name read from a file (that would run code chosen "
            "by the file's author). Rebuild such a network yourself and load the weights, "
            "net.load_state_dict({k[4:]: v for k, v in ckpt['state_dict'].items() if k.startswith('net.')}).")
    if spec.get("_rebuildable_") is False:
        raise NetworkError(f"the checkpoint records a {entry.target} that nsr cannot rebuild from its options: "
                           f"{spec.get('_why_', 'no reason recorded')}; retrain it with nsr-train")
    kwargs = {}
    for key, value in spec.items():
        if key == "_target_":
            continue
        if key not in entry.options:
            raise NetworkError(f"{entry.target}: option {key!r} is not one it takes from a checkpoint "
                               f"({', '.join(entry.options)})")
        kwargs[str(key)] = entry.options[key](key, value)
    return entry, kwargs


def _call(kwargs: Mapping[str, Any]) -> str:
    return "(" + ", ".join(f"{k}={v!r}" for k, v in kwargs.items()) + ")"


def _check_weights(entry: Rebuildable, cls: type[nn.Module], kwargs: dict[str, Any],
                   state_dict: Mapping[str, Tensor]) -> None:
    """Refuse weights that do not fit the network ``kwargs`` describe, before building it for real."""
    try:
        with torch.device("meta"):
            want = {k: tuple(v.shape) for k, v in cls(**kwargs).state_dict().items()}
    except (ValueError, TypeError) as err:
        raise NetworkError(f"{entry.target}{_call(kwargs)}: {err}") from None
    have = {}
    for k, v in state_dict.items():
        if not isinstance(v, Tensor):
            raise NetworkError(f"{entry.target}: weight {k!r} is a {type(v).__name__}, not a tensor")
        have[k] = tuple(v.shape)
    missing, extra = sorted(set(want) - set(have)), sorted(set(have) - set(want))
    wrong = [f"{k} {have[k]} (expected {want[k]})" for k in want if k in have and have[k] != want[k]]
    if missing or extra or wrong:
        parts = [f"missing {missing[:4]}" if missing else "", f"unexpected {extra[:4]}" if extra else "",
                 f"shape {wrong[:4]}" if wrong else ""]
        raise NetworkError(f"the weights do not fit {entry.target}{_call(kwargs)}: "
                           + "; ".join(p for p in parts if p))
    for k, v in state_dict.items():
        if v.is_floating_point() and not bool(torch.isfinite(v).all()):
            raise NetworkError(f"{entry.target}: weight {k!r} contains NaN or inf")


# --------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------


def is_checkpoint(obj: Any) -> bool:
    """Whether ``obj`` (read from a file) is a Lightning-style training checkpoint.

    Parameters
    ----------
    obj : Any

    Returns
    -------
    bool
        A mapping with a mapping under ``state_dict``.

    Examples
    --------
    >>> from nsr.checkpoints import is_checkpoint
    >>> is_checkpoint({"state_dict": {}}), is_checkpoint({"layers.0.weight": None})
    (True, False)
    """
    return isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping)


def recorded_spec(ckpt: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The checkpoint's network record when it names a class (``_target_``); ``None`` for older
    checkpoints and foreign ones.

    Parameters
    ----------
    ckpt : mapping
        A training checkpoint (:func:`is_checkpoint`).

    Returns
    -------
    mapping or None

    Examples
    --------
    >>> from nsr.checkpoints import recorded_spec
    >>> recorded_spec({"state_dict": {}, "hyper_parameters": {"net": {"in_dim": 3, "width": 8, "depth": 2}}})
    >>> recorded_spec({"state_dict": {}, "hyper_parameters": {"net": {"_target_": "x"}}})
    {'_target_': 'x'}
    """
    hp = ckpt.get("hyper_parameters")
    spec = hp.get("net") if isinstance(hp, Mapping) else None
    return spec if isinstance(spec, Mapping) and "_target_" in spec else None


def net_state_dict(ckpt: Mapping[str, Any]) -> dict[str, Any]:
    """The network's weights in a checkpoint of :class:`~nsr.training.lightning.ImplicitShapeModule`
    (``state_dict["net.*"]``, prefix removed).

    Parameters
    ----------
    ckpt : mapping
        A training checkpoint.

    Returns
    -------
    dict of str to Tensor

    Examples
    --------
    >>> import torch
    >>> from nsr.checkpoints import net_state_dict
    >>> net_state_dict({"state_dict": {"net.layers.0.bias": torch.zeros(2), "loss.w": torch.ones(1)}})
    {'layers.0.bias': tensor([0., 0.])}
    """
    return {k[len("net."):]: v for k, v in ckpt["state_dict"].items() if isinstance(k, str) and k.startswith("net.")}


def module_from_checkpoint(ckpt: Mapping[str, Any]) -> nn.Module:
    """The trained network of a training checkpoint, rebuilt (:func:`build_network`), in eval mode.

    A checkpoint that names its class is rebuilt from the allowlist; an older nsr checkpoint
    (``hyper_parameters["net"] = {"in_dim", "width", "depth"}``) as the ``ReLUMLP`` it holds.

    Parameters
    ----------
    ckpt : mapping
        Read with ``torch.load(..., weights_only=True)``.

    Returns
    -------
    torch.nn.Module

    Raises
    ------
    NetworkError
        If the checkpoint records no network nsr can rebuild.

    Examples
    --------
    >>> from nsr.checkpoints import module_from_checkpoint, network_spec
    >>> from nsr.pl.models import ResidualMLP
    >>> net = ResidualMLP(in_dim=2, width=8, depth=1)
    >>> ckpt = {"state_dict": {f"net.{k}": v for k, v in net.state_dict().items()},
    ...         "hyper_parameters": {"net": network_spec(net)}}
    >>> type(module_from_checkpoint(ckpt)).__name__
    'ResidualMLP'
    """
    if not is_checkpoint(ckpt):
        raise NetworkError("not a training checkpoint: no state_dict in it")
    spec = recorded_spec(ckpt)
    if spec is None:
        hp = ckpt.get("hyper_parameters")
        old = hp.get("net") if isinstance(hp, Mapping) else None
        if not (isinstance(old, Mapping) and {"in_dim", "width", "depth"} <= set(old)):
            raise NetworkError(
                "the checkpoint does not record its network (hyper_parameters['net']): it was not written by "
                "nsr-train. Read its weights with nsr.networks.load_network, or retrain with nsr-train, whose "
                "checkpoints record the network's class and options.")
        spec = {"_target_": "nsr.networks.ReLUMLP", **{k: old[k] for k in ("in_dim", "width", "depth")}}
    return build_network(spec, net_state_dict(ckpt))


def read_checkpoint(path: str | Path) -> Mapping[str, Any]:
    """A training checkpoint file, read as data (``weights_only=True``).

    Parameters
    ----------
    path : str or Path
        A ``.ckpt`` written by nsr-train (or Lightning).

    Returns
    -------
    mapping

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    NetworkError
        If the file is not a checkpoint, or holds more than data.

    Examples
    --------
    >>> import tempfile, torch
    >>> from pathlib import Path
    >>> from nsr.networks import NetworkError
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     torch.save({"state_dict": {"net.layers.0.bias": torch.zeros(2)}, "epoch": 3}, Path(tmp) / "a.ckpt")
    ...     torch.save({"layers.0.bias": torch.zeros(2)}, Path(tmp) / "weights.pt")
    ...     ckpt = read_checkpoint(Path(tmp) / "a.ckpt")
    ...     try:
    ...         read_checkpoint(Path(tmp) / "weights.pt")
    ...     except NetworkError as err:
    ...         print("not a training checkpoint" in str(err))
    True
    >>> ckpt["epoch"], list(ckpt["state_dict"])
    (3, ['net.layers.0.bias'])
    """
    from nsr.networks import _check_network_path, _torch_load

    path = Path(path)
    _check_network_path(path)
    obj = _torch_load(path, weights_only=True)
    if not is_checkpoint(obj):
        raise NetworkError(f"{path}: not a training checkpoint (no state_dict in it); for a network file "
                           "use nsr.networks.load_network")
    return obj
