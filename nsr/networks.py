"""ReLU networks: nsr's own MLP, and the canonical piecewise-linear form the extractor reads.

Any of these is accepted wherever nsr takes a network (see :func:`as_network`):
nsr's :class:`ReLUMLP`; a ``torch.nn.Sequential`` (nested too) of ``Linear``, ``ReLU``,
``Identity``, ``Flatten``; a plain state dict of such an MLP (Linear weights and biases in
order, whatever the key prefix); an nsr/Lightning training checkpoint; a file holding a state
dict or a checkpoint. Files are data, never code: they are read with ``weights_only=True`` and a
whole pickled module only with ``load_network(path, trust_pickle=True)``. Modules are checked,
not trusted: each is called at seeded points and refused unless it computes the network read
from its layers (see :func:`as_network`).
"""

from __future__ import annotations

import copy
import functools
import itertools
import math
import pickle
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn


class NetworkError(ValueError):
    """A network that is not a fully-connected ReLU MLP with a scalar output.

    Examples
    --------
    >>> import torch
    >>> from nsr.networks import NetworkError, as_network
    >>> try:
    ...     as_network(torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1)))
    ... except NetworkError as err:
    ...     print("Tanh" in str(err))
    True
    """


def geometric_init_hidden_(layer: nn.Linear) -> None:
    """SAL's geometric initialization of a hidden layer, in place: weights ``N(0, 2 / out)``,
    zero bias (Atzmon & Lipman, 2020). Call under ``torch.no_grad()``.

    Parameters
    ----------
    layer : torch.nn.Linear
        A hidden layer; its weight and bias are overwritten (``2 / out`` is the variance).

    Examples
    --------
    >>> import torch
    >>> _ = torch.manual_seed(0)
    >>> layer = torch.nn.Linear(3, 4096)
    >>> with torch.no_grad():
    ...     geometric_init_hidden_(layer)
    >>> bool((layer.bias == 0).all()), round(layer.weight.var().item() * 4096, 1)  # variance 2 / 4096
    (True, 2.0)
    """
    nn.init.normal_(layer.weight, 0.0, math.sqrt(2.0) / math.sqrt(layer.out_features))
    nn.init.zeros_(layer.bias)


def geometric_init_head_(layer: nn.Linear, radius: float) -> None:
    """SAL's geometric initialization of the output layer, in place: the network starts close
    to the signed distance of a sphere of ``radius``. Call under ``torch.no_grad()``.

    Weights ``N(sqrt(pi / in), 1e-4)``, bias ``-radius``.

    Parameters
    ----------
    layer : torch.nn.Linear
        The output layer; its weight and bias are overwritten.
    radius : float
        Radius of the sphere the network starts near.

    Examples
    --------
    >>> import math, torch
    >>> _ = torch.manual_seed(0)
    >>> head = torch.nn.Linear(8, 1)
    >>> with torch.no_grad():
    ...     geometric_init_head_(head, radius=0.5)
    >>> head.bias.tolist(), bool((head.weight - math.sqrt(math.pi / 8)).abs().max() < 1e-3)
    ([-0.5], True)
    """
    nn.init.normal_(layer.weight, math.sqrt(math.pi) / math.sqrt(layer.in_features), 1e-4)
    nn.init.constant_(layer.bias, -radius)


class ReLUMLP(nn.Module):
    """Plain ReLU MLP ``R^in_dim -> R``: ``depth`` hidden layers of ``width`` neurons.

    With ``geometric_init`` the network starts close to the signed distance of a sphere of
    ``radius`` (Atzmon & Lipman, SAL, 2020), negative inside.

    Parameters
    ----------
    in_dim : int
        Input dimension ``D`` (2 or 3 for shapes).
    width : int
        Neurons per hidden layer.
    depth : int
        Number of hidden layers.
    geometric_init : bool
        Start near the signed distance of a sphere (SAL initialization).
    radius : float
        Radius of that sphere.

    Raises
    ------
    ValueError
        If ``in_dim``, ``width`` or ``depth`` is below 1.

    Examples
    --------
    >>> import torch
    >>> from nsr.networks import ReLUMLP
    >>> _ = torch.manual_seed(0)
    >>> mlp = ReLUMLP(in_dim=3, width=8, depth=2, geometric_init=True, radius=0.5)
    >>> mlp(torch.zeros(5, 3)).shape
    torch.Size([5])
    >>> bool(mlp(torch.zeros(1, 3)) < 0)  # the centre of the sphere is inside
    True
    """

    def __init__(
        self,
        in_dim: int = 3,
        width: int = 64,
        depth: int = 4,
        geometric_init: bool = False,
        radius: float = 0.5,
    ) -> None:
        super().__init__()
        if in_dim < 1 or width < 1 or depth < 1:
            raise ValueError(f"in_dim, width, depth must be >= 1, got {in_dim}, {width}, {depth}")
        self.in_dim, self.width, self.depth = in_dim, width, depth
        dims = [in_dim] + [width] * depth + [1]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))
        if geometric_init:
            self._geometric_init(radius)

    def _geometric_init(self, radius: float) -> None:
        with torch.no_grad():
            for layer in self.layers[:-1]:
                geometric_init_hidden_(layer)
            geometric_init_head_(self.layers[-1], radius)

    def forward(self, x: Tensor) -> Tensor:
        """Evaluate the network.

        Parameters
        ----------
        x : (N, in_dim) float Tensor
            Points.

        Returns
        -------
        (N,) float Tensor
            Network values.

        Examples
        --------
        >>> import torch
        >>> from nsr.networks import ReLUMLP
        >>> ReLUMLP(2, 4, 1)(torch.zeros(7, 2)).shape
        torch.Size([7])
        """
        for layer in self.layers[:-1]:
            x = torch.relu(layer(x))
        return self.layers[-1](x).squeeze(-1)


@dataclass
class PLNetwork:
    """Canonical piecewise-linear network: affine layers with a ReLU after all but the last.

    ``weights[l]`` is ``(n_l, n_{l-1})``, ``biases[l]`` is ``(n_l,)``; the last layer has one
    output. Tensors share one dtype and device.

    Parameters
    ----------
    weights : list of (n_l, n_{l-1}) float Tensor
        Weight of each affine layer; ``n_{-1}`` is the input dimension ``D`` and the last
        layer's ``n_L`` is 1.
    biases : list of (n_l,) float Tensor
        Bias of each affine layer.

    Raises
    ------
    NetworkError
        If the shapes do not chain, the output is not a scalar, or a value is NaN or inf.

    Examples
    --------
    >>> import torch
    >>> from nsr.networks import PLNetwork
    >>> net = PLNetwork([torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([[1.0, 1.0]])],
    ...                 [torch.zeros(2), torch.tensor([-1.0])])
    >>> net.in_dim, net.widths, net.n_neurons
    (2, [2], 2)
    >>> net(torch.tensor([[0.5, 0.5], [-1.0, 2.0]]))  # relu(x) + relu(y) - 1
    tensor([0., 1.])
    """

    weights: list[Tensor]
    biases: list[Tensor]

    def __post_init__(self) -> None:
        _validate(self.weights, self.biases, [f"layer {i}" for i in range(len(self.weights))])

    @property
    def in_dim(self) -> int:
        """Input dimension ``D``."""
        return int(self.weights[0].shape[1])

    @property
    def widths(self) -> list[int]:
        """Hidden layer widths (the output layer excluded)."""
        return [int(w.shape[0]) for w in self.weights[:-1]]

    @property
    def n_neurons(self) -> int:
        """Number of hidden neurons (ReLUs)."""
        return sum(self.widths)

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of every weight and bias."""
        return self.weights[0].dtype

    @property
    def device(self) -> torch.device:
        """The device of every weight and bias."""
        return self.weights[0].device

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> PLNetwork:
        """A copy on ``device`` in ``dtype`` (``None`` keeps the current one).

        Parameters
        ----------
        device : torch.device or str, optional
            Target device.
        dtype : torch.dtype, optional
            Target floating-point dtype.

        Returns
        -------
        PLNetwork
            A new network; ``self`` is unchanged.

        Examples
        --------
        >>> import torch
        >>> from nsr.networks import random_network
        >>> random_network(3, [8], seed=0).to(dtype=torch.float32).dtype
        torch.float32
        """
        return PLNetwork(
            [w.to(device=device, dtype=dtype) for w in self.weights],
            [b.to(device=device, dtype=dtype) for b in self.biases],
        )

    def preactivations(self, x: Tensor, layer: int) -> Tensor:
        """Pre-activations of one layer.

        Parameters
        ----------
        x : (N, D) float Tensor
            Points, in the network's dtype and on its device.
        layer : int
            0-based layer index; ``len(widths)`` is the output layer.

        Returns
        -------
        (N, n_l) float Tensor
            ``W_l h_{l-1} + b_l`` at each point.

        Examples
        --------
        >>> import torch
        >>> from nsr.networks import random_network
        >>> net = random_network(3, [8, 4], seed=0)
        >>> net.preactivations(torch.zeros(5, 3, dtype=torch.float64), 1).shape
        torch.Size([5, 4])
        """
        return self.graph().preactivations(x, layer)  # the one evaluator (nsr.pl.PLGraph)

    def __call__(self, x: Tensor) -> Tensor:
        """Network value at each point.

        Parameters
        ----------
        x : (N, D) float Tensor
            Points, in the network's dtype and on its device.

        Returns
        -------
        (N,) float Tensor
            ``f(x)``.

        Examples
        --------
        >>> import torch
        >>> from nsr.networks import octahedron_network
        >>> octahedron_network(0.5)(torch.tensor([[0.5, 0.0, 0.0], [0.0, 0.0, 0.0]], dtype=torch.float64))
        tensor([ 0.0000, -0.5000], dtype=torch.float64)
        """
        return self.preactivations(x, len(self.weights) - 1).squeeze(-1)

    def local_gradients(self, patterns: Sequence[Tensor]) -> Tensor:
        """Gradient of the output on regions with given activation patterns.

        Parameters
        ----------
        patterns : sequence of (P, n_l) bool Tensor
            One per hidden layer: which neurons are active in each of ``P`` regions.

        Returns
        -------
        (P, D) float Tensor
            The constant gradient of ``f`` on each region.

        Examples
        --------
        >>> import torch
        >>> from nsr.networks import octahedron_network
        >>> net = octahedron_network()  # |x| + |y| + |z| - 0.5
        >>> x = torch.tensor([[0.1, -0.2, 0.3]], dtype=torch.float64)
        >>> net.local_gradients([net.preactivations(x, 0) > 0])  # sign(x)
        tensor([[ 1., -1.,  1.]], dtype=torch.float64)
        """
        return self.graph().local_gradients(patterns)

    def graph(self) -> Any:
        """This network as a :class:`nsr.pl.PLGraph` (the same tensors, no copy): the form every
        stage reads, and the one evaluator.

        Returns
        -------
        nsr.pl.PLGraph

        Examples
        --------
        >>> from nsr.networks import random_network
        >>> random_network(3, [8, 4], seed=0).graph().widths
        [8, 4]
        """
        from nsr.pl.graph import PLGraph

        return PLGraph.from_plnetwork(self)

    def to_module(self) -> ReLUMLP | nn.Sequential:
        """An ``nn.Sequential`` of ``Linear`` and ``ReLU`` computing the same function.

        Returns
        -------
        torch.nn.Sequential
            Maps ``(N, D)`` to ``(N, 1)``, in the network's dtype and on its device.

        Examples
        --------
        >>> import torch
        >>> from nsr.networks import random_network
        >>> net = random_network(3, [8], seed=0)
        >>> x = torch.rand(4, 3, dtype=torch.float64)
        >>> bool(torch.allclose(net.to_module()(x).squeeze(1), net(x)))
        True
        """
        mods: list[nn.Module] = []
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            lin = nn.Linear(w.shape[1], w.shape[0], dtype=w.dtype, device=w.device)
            with torch.no_grad():
                lin.weight.copy_(w)
                lin.bias.copy_(b)
            mods.append(lin)
            if i < len(self.weights) - 1:
                mods.append(nn.ReLU())
        return nn.Sequential(*mods)

    def state_dict(self) -> dict[str, Tensor]:
        """The weights as a :class:`ReLUMLP`-style state dict on the CPU.

        Returns
        -------
        dict of str to Tensor
            ``layers.{l}.weight`` ``(n_l, n_{l-1})`` and ``layers.{l}.bias`` ``(n_l,)``;
            :func:`as_network` and :func:`load_network` read it back.

        Examples
        --------
        >>> from nsr.networks import as_network, random_network
        >>> net = random_network(3, [8], seed=0)
        >>> list(net.state_dict())
        ['layers.0.weight', 'layers.0.bias', 'layers.1.weight', 'layers.1.bias']
        >>> as_network(net.state_dict()).widths
        [8]
        """
        out: dict[str, Tensor] = {}
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            out[f"layers.{i}.weight"] = w.detach().cpu()
            out[f"layers.{i}.bias"] = b.detach().cpu()
        return out


def _validate(weights: Sequence[Tensor], biases: Sequence[Tensor], names: Sequence[str]) -> None:
    if len(weights) == 0:
        raise NetworkError("the network has no Linear layer")
    prev = None
    for w, b, name in zip(weights, biases, names):
        if w.layout != torch.strided or b.layout != torch.strided:
            raise NetworkError(f"{name}: sparse or other non-dense tensors are not supported; use dense tensors")
        if not (w.is_floating_point() and b.is_floating_point()):
            raise NetworkError(f"{name}: weights and biases must be floating point, got {w.dtype} and {b.dtype}")
        if w.ndim != 2:
            raise NetworkError(f"{name}: weight must be 2-D (a Linear layer), got shape {tuple(w.shape)}")
        if b.shape != (w.shape[0],):
            raise NetworkError(
                f"{name}: bias shape {tuple(b.shape)} does not match weight shape {tuple(w.shape)}"
            )
        if prev is not None and w.shape[1] != prev:
            raise NetworkError(f"{name}: expects {w.shape[1]} inputs but the previous layer gives {prev}")
        if not (torch.isfinite(w).all() and torch.isfinite(b).all()):
            raise NetworkError(f"{name}: weights or biases contain NaN or inf")
        prev = w.shape[0]
    if prev != 1:
        raise NetworkError(f"the network's output must be a scalar, but the last layer has {prev} outputs")


def _flatten_modules(module: nn.Module, prefix: str = "") -> list[tuple[str, nn.Module]]:
    if isinstance(module, nn.Sequential):
        out: list[tuple[str, nn.Module]] = []
        for name, child in module.named_children():
            out += _flatten_modules(child, f"{prefix}{name}.")
        return out
    return [(prefix.rstrip("."), module)]


def _from_sequential(module: nn.Sequential) -> PLNetwork:
    weights: list[Tensor] = []
    biases: list[Tensor] = []
    names: list[str] = []
    after_linear = False  # a ReLU must follow a Linear; two Linears in a row are composed
    relu_pending = False
    for name, m in _flatten_modules(module):
        if isinstance(m, nn.Linear):
            w = m.weight.detach()
            b = m.bias.detach() if m.bias is not None else torch.zeros(w.shape[0], dtype=w.dtype)
            if weights and after_linear and not relu_pending:
                # Linear followed directly by Linear: compose into one affine map.
                weights[-1], biases[-1] = w @ weights[-1], w @ biases[-1] + b
                names[-1] = f"{names[-1]}+{name}"
            else:
                weights.append(w)
                biases.append(b)
                names.append(f"layer '{name}'")
            after_linear, relu_pending = True, False
        elif isinstance(m, nn.ReLU):
            if not after_linear or relu_pending:
                raise NetworkError(f"layer '{name}': ReLU must follow a Linear layer")
            relu_pending = True
        elif isinstance(m, (nn.Identity, nn.Flatten)):
            continue
        else:
            raise NetworkError(
                f"layer '{name}' ({type(m).__name__}) is not supported: nsr extracts networks made of "
                "Linear and ReLU layers only (Identity and Flatten are ignored)"
            )
    if relu_pending:
        raise NetworkError("the network ends with a ReLU; the last layer must be Linear (the output)")
    _validate(weights, biases, names)
    return PLNetwork(weights, biases)


_LINEAR_KEY = re.compile(r"^(?P<prefix>.*?)(?P<kind>weight|bias)$")


def _from_state_dict(sd: Mapping[str, Any]) -> PLNetwork:
    if "state_dict" in sd and isinstance(sd["state_dict"], Mapping):  # Lightning checkpoint
        inner = dict(sd["state_dict"])
        # nsr's LightningModule keeps its network under `net.`; drop anything else (e.g. losses).
        net_keys = {k[len("net."):]: v for k, v in inner.items() if isinstance(k, str) and k.startswith("net.")}
        net = _from_state_dict(net_keys or inner)
        _check_checkpoint(sd, net)
        return net
    weights: list[Tensor] = []
    biases: list[Tensor] = []
    names: list[str] = []
    pending_w: dict[str, Tensor] = {}
    for key, value in sd.items():
        if not isinstance(key, str):
            raise NetworkError(f"key {key!r} is not a string; a state dict maps parameter names to tensors")
        if not isinstance(value, Tensor):
            raise NetworkError(f"key '{key}': not a tensor ({type(value).__name__})")
        m = _LINEAR_KEY.match(key)
        if m is None:
            raise NetworkError(
                f"key '{key}' is not a Linear weight or bias; nsr reads MLPs of Linear and ReLU only"
            )
        prefix = m["prefix"]
        if m["kind"] == "weight":
            if value.ndim != 2:
                raise NetworkError(
                    f"key '{key}': shape {tuple(value.shape)} is not a Linear weight (conv or norm layer?)"
                )
            pending_w[prefix] = value
        else:
            if prefix not in pending_w:
                raise NetworkError(f"key '{key}': bias without a preceding weight '{prefix}weight'")
            weights.append(pending_w.pop(prefix))
            biases.append(value)
            names.append(f"key '{prefix}weight'")
    if pending_w:
        raise NetworkError(f"key '{next(iter(pending_w))}weight' has no bias")
    _validate(weights, biases, names)
    dtype = functools.reduce(torch.promote_types, [t.dtype for t in weights + biases])
    return PLNetwork([w.detach().to(dtype) for w in weights], [b.detach().to(dtype) for b in biases])


# What a checkpoint's hyper_parameters may say about its network (see as_network).
_ACTIVATION_KEY = re.compile(r"^(activation|activations|activation_fn|act|act_fn|act_layer|nonlinearity|"
                             r"non_linearity)$", re.IGNORECASE)
_SIREN_KEY = re.compile(r"^(w0|omega|omega_0|first_omega_0|hidden_omega_0|siren|sine)$", re.IGNORECASE)
_MODEL_KEY = re.compile(r"^(model|net|network|arch|architecture|decoder)$", re.IGNORECASE)
_CLASS_KEYS = ("_target_", "class_path")
_NSR_MLP = {"nsr.networks.ReLUMLP", "nsr.ReLUMLP"}
_RELU_NAMES = {"relu", "nn.relu", "torch.nn.relu", "torch.relu", "torch.nn.functional.relu", "f.relu",
               "torch.nn.modules.activation.relu"}


def _hparam_findings(node: Any, path: str = "", under_model: bool = False, depth: int = 0) -> list[str]:
    """What in a checkpoint's hyper_parameters says its network is not a plain ReLU MLP."""
    if depth > 32:
        return []
    found: list[str] = []
    items = node.items() if isinstance(node, Mapping) else enumerate(node) if isinstance(node, (list, tuple)) else ()
    for key, value in items:
        name = f"{path}.{key}" if path else str(key)
        k = str(key)
        if _ACTIVATION_KEY.match(k):
            for v in value if isinstance(value, (list, tuple)) else [value]:
                act = v.get("_target_", v.get("class_path")) if isinstance(v, Mapping) else v
                if isinstance(act, str) and act.strip().lower() not in _RELU_NAMES:
                    found.append(f"{name} = {act!r} (nsr extracts ReLU networks only)")
        elif _SIREN_KEY.match(k) and value not in (None, False):
            found.append(f"{name} = {value!r} (a SIREN / sine-activation parameter)")
        elif k in _CLASS_KEYS and under_model and isinstance(value, str) and value not in _NSR_MLP:
            found.append(f"{name} = {value!r} (a model class other than nsr.networks.ReLUMLP)")
        if isinstance(value, (Mapping, list, tuple)):
            found += _hparam_findings(value, name, under_model or bool(_MODEL_KEY.match(k)), depth + 1)
    return found


def _check_checkpoint(ckpt: Mapping[str, Any], net: PLNetwork) -> None:
    """Refuse a training checkpoint whose recorded hyper-parameters contradict a plain ReLU MLP."""
    hp = ckpt.get("hyper_parameters", ckpt.get("hparams"))
    if not isinstance(hp, Mapping):
        return
    found = _hparam_findings(hp)
    spec = hp.get("net")  # nsr's ImplicitShapeModule records its ReLUMLP's shape here
    if isinstance(spec, Mapping) and {"in_dim", "width", "depth"} <= set(spec):
        want = (spec["in_dim"], [spec["width"]] * int(spec["depth"]))
        if (net.in_dim, net.widths) != want:
            found.append(f"net = {dict(spec)} but the weights give in_dim {net.in_dim}, widths {net.widths}")
    if found:
        raise NetworkError(
            "the checkpoint's hyper_parameters say its network is not the plain ReLU MLP its weights would be "
            "read as: " + "; ".join(found[:5]) + ". nsr extracts exact meshes of ReLU networks only; a state "
            "dict cannot prove the architecture, so a checkpoint that records another one is refused."
        )


def load_network(path: str | Path, *, trust_pickle: bool = False) -> PLNetwork | nn.Module:
    """Read a network file: a state dict, a training checkpoint, or (opt-in) a whole pickled module.

    A checkpoint of nsr-train records its network's class and options: it is rebuilt from
    nsr's own classes only (:func:`nsr.checkpoints.build_network`; any other class named in the
    file is refused, never imported). A plain ReLU MLP comes back as a :class:`PLNetwork` as
    from any other file; other networks (skip, residual, grid encodings) as the rebuilt module
    in eval mode, for :func:`nsr.pl.trace` to convert.

    Files are read as data: ``torch.load(weights_only=True)`` accepts tensors, dicts, lists and
    numbers and refuses anything whose unpickling would create other Python objects or call
    functions, because unpickling such a file can run any code hidden in it. A whole pickled
    ``nn.Module`` is therefore refused unless ``trust_pickle=True``, an explicit opt-in for files
    you trust completely (no nsr app sets it); the module read is then checked like any other
    (see :func:`as_network`). Raises ``FileNotFoundError`` or :class:`NetworkError` naming the
    file and what to do.

    Parameters
    ----------
    path : str or Path
        A file written by ``torch.save``: a state dict, an nsr/Lightning checkpoint or, with
        ``trust_pickle``, a whole module.
    trust_pickle : bool
        Unpickle arbitrary objects (runs code from the file; only for files you trust).

    Returns
    -------
    PLNetwork or torch.nn.Module
        The network, in the file's dtype, on the CPU: a :class:`PLNetwork` for Linear/ReLU
        MLPs, the rebuilt module for the other networks a checkpoint records.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    NetworkError
        If the file is not a network nsr can read, holds more than data without ``trust_pickle``,
        or is a checkpoint naming a class outside :func:`nsr.checkpoints.allowed_targets`.

    Examples
    --------
    >>> import tempfile, torch
    >>> from pathlib import Path
    >>> from nsr.networks import load_network, random_network
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     path = Path(tmp) / "net.pt"
    ...     torch.save(random_network(3, [8, 8], seed=0).state_dict(), path)
    ...     net = load_network(path)
    >>> net.in_dim, net.widths
    (3, [8, 8])
    """
    path = Path(path)
    _check_network_path(path)
    if trust_pickle:
        obj = _torch_load(path, weights_only=False)
    else:
        obj = _torch_load(path, weights_only=True)
    try:
        module = _recorded_module(obj)
        if module is not None and type(module) is not ReLUMLP:
            return module
        return as_network(module if module is not None else obj, trust_pickle=trust_pickle)
    except NetworkError as err:
        raise NetworkError(f"{path}: {err}") from err


def _recorded_module(obj: Any) -> nn.Module | None:
    """The network a checkpoint that names its class records, rebuilt from the allowlist; else None."""
    from nsr.checkpoints import is_checkpoint, module_from_checkpoint, recorded_spec

    if is_checkpoint(obj) and recorded_spec(obj) is not None:
        return module_from_checkpoint(obj)
    return None


def _check_network_path(path: Path) -> None:
    if path.is_symlink() and not path.exists():
        raise FileNotFoundError(f"network file {path} is a broken symbolic link or a link loop")
    if not path.exists():
        raise FileNotFoundError(f"network file not found: {path}")
    if path.is_dir():
        raise NetworkError(f"{path} is a folder, not a network file (the nsr-extract app also takes a "
                           "training run folder; in Python pass its checkpoints/last.ckpt)")
    if not path.is_file():
        raise NetworkError(f"{path} is not a regular file")
    if path.stat().st_size == 0:
        raise NetworkError(f"{path}: the file is empty")


_UNSAFE_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")


def _torch_load(path: Path, weights_only: bool) -> Any:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's notes on pickle protocols are noise here
            return torch.load(path, map_location="cpu", weights_only=weights_only)
    except pickle.UnpicklingError as err:
        if weights_only and "Weights only load failed" in str(err):
            raise NetworkError(_unsafe_file_message(path, str(err))) from None
        raise NetworkError(f"{path}: not a PyTorch file nsr can read ({type(err).__name__}: {err})") from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, TypeError, AttributeError, IndexError) as err:
        raise NetworkError(f"{path}: not a PyTorch file nsr can read, or a truncated one "
                           f"({type(err).__name__}: {_first_line(err)})") from None


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else "no detail"


def _unsafe_file_message(path: Path, detail: str) -> str:
    what_to_do = ("Save networks as weights: torch.save(module.state_dict(), path), and read that file. Only "
                  "for a file you trust completely: load_network(path, trust_pickle=True).")
    found = _UNSAFE_GLOBAL.search(detail)
    if found:
        return (f"{path}: holds more than tensors: reading it would unpickle `{found.group(1)}`, and unpickling "
                f"can run any code hidden in a file, so nsr reads network files as data only. {what_to_do}")
    return (f"{path}: not a PyTorch file nsr can read as data: either not a network file at all (another "
            "format, corrupt or truncated), or a pickle of Python objects besides tensors, which nsr does not "
            f"unpickle because unpickling can run any code hidden in a file. {what_to_do}")


def as_network(
    obj: Any,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    *,
    trust_pickle: bool = False,
) -> PLNetwork:
    """Convert anything nsr accepts as a ReLU network into a :class:`PLNetwork`.

    Accepted: a :class:`PLNetwork`; nsr's :class:`ReLUMLP`; an ``nn.Sequential`` (nested too) of
    ``Linear``, ``ReLU``, ``Identity``, ``Flatten``; a module exposing such a network as ``.net``
    (nsr's LightningModule); a state dict of such an MLP; a path to a file holding one of these
    (:func:`load_network`; ``trust_pickle`` is passed on) or a training checkpoint.

    What nsr extracts must be the function the user's module computes, so every module is
    checked: the module itself is called (hooks, an overridden ``forward`` and a wrapper's own
    ``forward`` included) at 256 seeded points in ``[-1, 1]^D`` and ``[-4, 4]^D``, in float64
    where a float64 copy of it runs, and compared with the network nsr read; a difference
    larger than the rounding error of the module's dtype raises :class:`NetworkError` with the
    largest ``|Δf|``. A checkpoint cannot be called: its state dict is read as Linear layers
    in order with a ReLU between them, and it is refused when its ``hyper_parameters`` say
    otherwise (an activation other than ReLU, SIREN frequencies, a model class other than
    nsr's ``ReLUMLP``, or nsr's recorded widths not matching the weights). A checkpoint that
    names its network's class (nsr-train's) is rebuilt from nsr's allowlist instead
    (:mod:`nsr.checkpoints`); one holding another network than a ``ReLUMLP`` is refused here
    with a pointer to :func:`load_network` and :func:`nsr.pl.trace`.

    Parameters
    ----------
    obj : PLNetwork, torch.nn.Module, Mapping, str or Path
        The network, its state dict or checkpoint, or a path to a file holding one.
    dtype : torch.dtype, optional
        Convert the result to this dtype.
    device : torch.device or str, optional
        Move the result to this device.
    trust_pickle : bool
        Passed on to :func:`load_network` for paths.

    Returns
    -------
    PLNetwork
        The canonical network (the same object when ``obj`` is one and no conversion is asked).

    Raises
    ------
    NetworkError
        Naming the offending layer, key or check.

    Examples
    --------
    >>> import torch
    >>> from nsr.networks import as_network
    >>> _ = torch.manual_seed(0)
    >>> seq = torch.nn.Sequential(torch.nn.Linear(2, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
    >>> net = as_network(seq, dtype=torch.float64)
    >>> net.in_dim, net.widths, net.dtype
    (2, [16], torch.float64)
    """
    if isinstance(obj, PLNetwork):
        net = obj
    elif isinstance(obj, (str, Path)):
        loaded = load_network(obj, trust_pickle=trust_pickle)
        if not isinstance(loaded, PLNetwork):
            raise NetworkError(f"{obj}: {_not_mlp(loaded)}")
        net = loaded
    elif isinstance(obj, nn.Module):
        net = _from_module(obj)
        _check_module(obj, net)
    elif isinstance(obj, Mapping):
        module = _recorded_module(obj)  # a checkpoint that names its network's class
        if module is not None and type(module) is not ReLUMLP:
            raise NetworkError(f"the checkpoint {_not_mlp(module)}")
        net = _from_module(module) if module is not None else _from_state_dict(obj)
    else:
        raise NetworkError(f"cannot read a ReLU network from {type(obj).__name__}")
    if dtype is not None or device is not None:
        net = net.to(device=device, dtype=dtype)
    return net


def _not_mlp(module: nn.Module) -> str:
    return (f"holds a {type(module).__name__}, not a plain Linear/ReLU MLP; read it with "
            "nsr.networks.load_network and trace it with nsr.pl.trace")


def _from_module(obj: nn.Module) -> PLNetwork:
    """The canonical network of a module, read from its layers (not yet checked against it)."""
    if isinstance(obj, ReLUMLP):
        layers = list(obj.layers)
        if not layers or not all(isinstance(m, nn.Linear) for m in layers):
            raise NetworkError(f"{type(obj).__name__}.layers must hold nn.Linear layers only")
        return PLNetwork([m.weight.detach() for m in layers], [_bias(m) for m in layers])
    if isinstance(obj, nn.Sequential):
        return _from_sequential(obj)
    inner = getattr(obj, "net", None)  # nsr's LightningModule and similar wrappers
    if isinstance(inner, nn.Module) and inner is not obj:
        return _from_module(inner)
    raise NetworkError(
        f"module {type(obj).__name__} is not supported: pass nsr.ReLUMLP, an nn.Sequential of "
        "Linear/ReLU layers, or its state dict"
    )


def _bias(m: nn.Linear) -> Tensor:
    w = m.weight.detach()
    return m.bias.detach() if m.bias is not None else torch.zeros(w.shape[0], dtype=w.dtype, device=w.device)


# --------------------------------------------------------------------------------------
# Checking that a module computes the network nsr read from it
# --------------------------------------------------------------------------------------

_CHECK_SEED = 0
_CHECK_INNER, _CHECK_OUTER = 192, 64  # points in [-1, 1]^D and in [-4, 4]^D


def check_points(dim: int) -> Tensor:
    """The seeded points every module is checked at (see :func:`as_network`).

    Parameters
    ----------
    dim : int
        Input dimension ``D``.

    Returns
    -------
    (256, D) float64 Tensor
        192 points in ``[-1, 1]^D`` then 64 in ``[-4, 4]^D``; the same on every call.

    Examples
    --------
    >>> from nsr.networks import check_points
    >>> x = check_points(2)
    >>> x.shape, bool(x[:192].abs().max() <= 1), bool(x[192:].abs().max() <= 4)
    (torch.Size([256, 2]), True, True)
    """
    gen = torch.Generator().manual_seed(_CHECK_SEED)
    inner = torch.rand(_CHECK_INNER, dim, generator=gen, dtype=torch.float64) * 2 - 1
    outer = (torch.rand(_CHECK_OUTER, dim, generator=gen, dtype=torch.float64) * 2 - 1) * 4
    return torch.cat([inner, outer])


def _check_module(module: nn.Module, net: PLNetwork) -> None:
    """Refuse ``module`` unless it computes ``net`` (up to its own rounding) at :func:`check_points`."""
    target = module
    if type(module).forward is nn.Module.forward and isinstance(getattr(module, "net", None), nn.Module):
        target = module.net  # a wrapper without a forward of its own: its network is what runs
    x = check_points(net.in_dim)
    got = _module_values(target, x)
    pl = net.to(device="cpu", dtype=torch.float64)
    want = pl(x)
    delta = (got - want).abs()
    tol = _tolerance(pl, x, _param_dtype(target))
    bad = ~(delta <= tol)  # NaN counts as a mismatch
    if bool(bad.any()):
        worst = int(torch.nan_to_num(delta, nan=math.inf).argmax())
        raise NetworkError(
            f"module {type(module).__name__} does not compute the ReLU network nsr reads from its layers: "
            f"at {int(bad.sum())} of {len(x)} check points its output differs by more than "
            f"rounding ({tol:.2g}), max |Δf| = {float(delta.nan_to_num(nan=math.inf).max()):.3g} "
            f"(at x = {[round(v, 3) for v in x[worst].tolist()]}). "
            "nsr would extract a different function than your module computes (a custom forward, a hook, "
            "an activation other than ReLU, or layers used out of order). Pass a plain nsr.ReLUMLP or "
            "nn.Sequential of Linear/ReLU layers computing your function."
        )


def _param_dtype(module: nn.Module) -> torch.dtype:
    for t in itertools.chain(module.parameters(), module.buffers()):
        if t.is_floating_point():
            return t.dtype
    return torch.float32


def _module_values(module: nn.Module, x: Tensor) -> Tensor:
    """The module's own output at ``x`` ``(N, D)`` as ``(N,)`` float64 on the CPU.

    A float64 copy is called where possible (exact comparison); otherwise the module itself in
    its own dtype. Gradients are off; the module is not modified.
    """
    first = next(itertools.chain(module.parameters(), module.buffers()), None)
    device = first.device if first is not None else torch.device("cpu")
    try:
        twin = copy.deepcopy(module).to(torch.float64)
        with torch.no_grad():
            out = twin(x.to(device))
    except Exception:  # a module that cannot be copied or run in float64: call it as it is
        try:
            with torch.no_grad():
                out = module(x.to(device=device, dtype=_param_dtype(module)))
        except Exception as err:
            raise NetworkError(
                f"module {type(module).__name__} cannot be checked: calling it on a ({len(x)}, {x.shape[1]}) "
                f"float tensor of points failed ({type(err).__name__}: {_first_line(err)}); nsr checks every "
                "module it reads by calling it. Pass the network itself (e.g. module.net), a plain nsr.ReLUMLP "
                "or an nn.Sequential of Linear/ReLU layers."
            ) from None
    if not isinstance(out, Tensor) or out.numel() != len(x) or (out.ndim == 2 and out.shape[1] != 1):
        shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise NetworkError(
            f"module {type(module).__name__} returns {shape} for {len(x)} points; nsr needs one value per "
            "point, shape (N,) or (N, 1)"
        )
    return out.detach().reshape(-1).to(device="cpu", dtype=torch.float64)


def _tolerance(net: PLNetwork, x: Tensor, dtype: torch.dtype) -> float:
    """How far two honest evaluations of ``net`` (float64 ``PLNetwork``) in ``dtype`` may differ at ``x``.

    Measured, not bounded a priori (worst-case bounds grow with |W| to the power of the depth
    and would accept anything): the network's own float32 rounding noise at ``x`` is
    ``max |f32(x) - f64(x)|``, scaled to ``dtype``'s machine epsilon, with a 64x margin for
    the module's own order of operations, and a floor of 64 eps (1 + max |f|).
    """
    eps32 = torch.finfo(torch.float32).eps
    eps = torch.finfo(dtype).eps if dtype.is_floating_point else eps32
    exact = net(x)
    noise32 = float((net.to(dtype=torch.float32)(x.float()).double() - exact).abs().max())
    return 64 * max(noise32 * eps / eps32, eps * (1 + float(exact.abs().max())))


def random_network(
    in_dim: int, widths: Sequence[int], seed: int = 0, dtype: torch.dtype = torch.float64
) -> PLNetwork:
    """A network with PyTorch's default Linear initialization, for tests and benchmarks.

    Parameters
    ----------
    in_dim : int
        Input dimension ``D``.
    widths : sequence of int
        Hidden layer widths.
    seed : int
        Seed of the generator; the same seed gives the same network.
    dtype : torch.dtype
        Dtype of the weights (drawn in float64, then converted).

    Returns
    -------
    PLNetwork
        On the CPU; weights of layer ``l`` uniform in ``±1/sqrt(n_{l-1})``.

    Examples
    --------
    >>> import torch
    >>> from nsr.networks import random_network
    >>> net = random_network(3, [8], seed=0)
    >>> net.widths, net.dtype
    ([8], torch.float64)
    >>> bool(torch.equal(net.weights[0], random_network(3, [8], seed=0).weights[0]))
    True
    """
    gen = torch.Generator().manual_seed(seed)
    dims = [in_dim, *widths, 1]
    weights, biases = [], []
    for a, b in zip(dims[:-1], dims[1:]):
        bound = 1.0 / math.sqrt(a)
        weights.append((torch.rand(b, a, generator=gen, dtype=torch.float64) * 2 - 1) * bound)
        biases.append((torch.rand(b, generator=gen, dtype=torch.float64) * 2 - 1) * bound)
    return PLNetwork(weights, biases).to(dtype=dtype)


def octahedron_network(radius: float = 0.5, reach: float = 10.0) -> PLNetwork:
    """Exact ReLU network of ``|x| + |y| + |z| - radius`` (one hidden layer of 6 neurons).

    ``|t| = 2 relu(t) - t``, and ``-t`` passes through a ReLU as ``relu(reach - t) - reach``,
    whose hyperplane lies outside the box ``[-reach, reach]^3``: no two hyperplanes coincide.

    Parameters
    ----------
    radius : float
        The octahedron's vertices are at distance ``radius`` from the origin along the axes.
    reach : float
        Half-width of the box in which the formula is exact.

    Returns
    -------
    PLNetwork
        float64, widths ``[6]``.

    Examples
    --------
    >>> import torch
    >>> from nsr.networks import octahedron_network
    >>> net = octahedron_network(radius=0.5)
    >>> net(torch.tensor([[0.1, -0.2, 0.3]], dtype=torch.float64)).round(decimals=6)
    tensor([0.1000], dtype=torch.float64)
    """
    eye = torch.eye(3, dtype=torch.float64)
    w1 = torch.cat([eye, -eye])
    b1 = torch.tensor([0.0] * 3 + [reach] * 3, dtype=torch.float64)
    w2 = torch.tensor([[2.0] * 3 + [1.0] * 3], dtype=torch.float64)
    b2 = torch.tensor([-3 * reach - radius], dtype=torch.float64)
    return PLNetwork([w1, w2], [b1, b2])


def cube_network(radius: float = 0.5, reach: float = 10.0) -> PLNetwork:
    """Exact ReLU network of ``max(|x|, |y|, |z|) - radius`` (hidden layers 6, 3, 2).

    Built from ``max(a, b) = b + relu(a - b)``; pass-through terms are shifted by ``reach``
    so that their hyperplanes lie outside ``[-reach, reach]^3``.

    Parameters
    ----------
    radius : float
        Half the cube's edge length.
    reach : float
        Half-width of the box in which the formula is exact.

    Returns
    -------
    PLNetwork
        float64, widths ``[6, 3, 2]``.

    Examples
    --------
    >>> import torch
    >>> from nsr.networks import cube_network
    >>> net = cube_network(radius=0.5)
    >>> net(torch.tensor([[0.1, -0.7, 0.3], [0.0, 0.0, 0.0]], dtype=torch.float64)).round(decimals=6)
    tensor([ 0.2000, -0.5000], dtype=torch.float64)
    """
    c = reach
    eye = torch.eye(3, dtype=torch.float64)
    w1 = torch.cat([eye, -eye])  # u_i = relu(x_i), v_i = relu(c - x_i); |x_i| = 2u_i + v_i - c
    b1 = torch.tensor([0.0] * 3 + [c] * 3, dtype=torch.float64)
    absx = torch.tensor([[2.0, 0, 0, 1, 0, 0], [0, 2.0, 0, 0, 1, 0], [0, 0, 2.0, 0, 0, 1]], dtype=torch.float64)
    # p = relu(|x| - |y|), q = relu(|y| + c), s = relu(|z| + c)
    w2 = torch.stack([absx[0] - absx[1], absx[1], absx[2]])
    b2 = torch.tensor([0.0, 0.0, 0.0], dtype=torch.float64)  # the -c of |.| cancels +c
    # m = max(|x|,|y|) = p + q - c; r1 = relu(m - |z|) = relu(p + q - s); t = relu(s) = |z| + c
    w3 = torch.tensor([[1.0, 1.0, -1.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    b3 = torch.zeros(2, dtype=torch.float64)
    # f = |z| + relu(m - |z|) - radius = t - c + r1 - radius
    w4 = torch.tensor([[1.0, 1.0]], dtype=torch.float64)
    b4 = torch.tensor([-c - radius], dtype=torch.float64)
    return PLNetwork([w1, w2, w3, w4], [b1, b2, b3, b4])
