"""ReLU networks: nsr's own MLP, and the canonical piecewise-linear form the extractor reads.

Any of these is accepted wherever nsr takes a network (see :func:`as_network`):
nsr's :class:`ReLUMLP`; a ``torch.nn.Sequential`` (nested too) of ``Linear``, ``ReLU``,
``Identity``, ``Flatten``; a plain state dict of such an MLP (Linear weights and biases in
order, whatever the key prefix); a file holding either; an nsr/Lightning training checkpoint.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn


class NetworkError(ValueError):
    """A network that is not a fully-connected ReLU MLP with a scalar output."""


class ReLUMLP(nn.Module):
    """Plain ReLU MLP ``R^in_dim -> R``: ``depth`` hidden layers of ``width`` neurons.

    With ``geometric_init`` the network starts close to the signed distance of a sphere of
    ``radius`` (Atzmon & Lipman, SAL, 2020), negative inside.
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
                nn.init.normal_(layer.weight, 0.0, math.sqrt(2.0) / math.sqrt(layer.out_features))
                nn.init.zeros_(layer.bias)
            last = self.layers[-1]
            nn.init.normal_(last.weight, math.sqrt(math.pi) / math.sqrt(last.in_features), 1e-4)
            nn.init.constant_(last.bias, -radius)

    def forward(self, x: Tensor) -> Tensor:
        """``(N, in_dim) -> (N,)``."""
        for layer in self.layers[:-1]:
            x = torch.relu(layer(x))
        return self.layers[-1](x).squeeze(-1)


@dataclass
class PLNetwork:
    """Canonical piecewise-linear network: affine layers with a ReLU after all but the last.

    ``weights[l]`` is ``(n_l, n_{l-1})``, ``biases[l]`` is ``(n_l,)``; the last layer has one
    output. Tensors share one dtype and device.
    """

    weights: list[Tensor]
    biases: list[Tensor]

    def __post_init__(self) -> None:
        _validate(self.weights, self.biases, [f"layer {i}" for i in range(len(self.weights))])

    @property
    def in_dim(self) -> int:
        return int(self.weights[0].shape[1])

    @property
    def widths(self) -> list[int]:
        """Hidden layer widths (the output layer excluded)."""
        return [int(w.shape[0]) for w in self.weights[:-1]]

    @property
    def n_neurons(self) -> int:
        return sum(self.widths)

    @property
    def dtype(self) -> torch.dtype:
        return self.weights[0].dtype

    @property
    def device(self) -> torch.device:
        return self.weights[0].device

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> PLNetwork:
        return PLNetwork(
            [w.to(device=device, dtype=dtype) for w in self.weights],
            [b.to(device=device, dtype=dtype) for b in self.biases],
        )

    def preactivations(self, x: Tensor, layer: int) -> Tensor:
        """Pre-activations of ``layer`` (0-based; ``len(widths)`` is the output): ``(N, n_l)``."""
        h = x
        for w, b in zip(self.weights[:layer], self.biases[:layer]):
            h = torch.relu(h @ w.T + b)
        return h @ self.weights[layer].T + self.biases[layer]

    def __call__(self, x: Tensor) -> Tensor:
        """Network value, ``(N, D) -> (N,)``."""
        return self.preactivations(x, len(self.weights) - 1).squeeze(-1)

    def local_gradients(self, patterns: Sequence[Tensor]) -> Tensor:
        """Gradient of the output on regions with given activation patterns.

        ``patterns[l]`` is ``(P, n_l)`` bool (neuron active). Returns ``(P, D)``.
        """
        g = self.weights[-1].expand(patterns[0].shape[0], -1)  # (P, n_L)
        for w, p in zip(reversed(self.weights[:-1]), reversed(list(patterns))):
            g = (g * p.to(g.dtype)) @ w
        return g

    def to_module(self) -> ReLUMLP | nn.Sequential:
        """An ``nn.Sequential`` computing the same function (output shape ``(N, 1)``)."""
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
        net_keys = {k[len("net."):]: v for k, v in inner.items() if k.startswith("net.")}
        return _from_state_dict(net_keys or inner)
    weights: list[Tensor] = []
    biases: list[Tensor] = []
    names: list[str] = []
    pending_w: dict[str, Tensor] = {}
    for key, value in sd.items():
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
    return PLNetwork([w.detach() for w in weights], [b.detach() for b in biases])


def load_network(path: str | Path) -> PLNetwork:
    """Read a network file: a saved module, a state dict or a training checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"network file not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        try:  # whole pickled modules and checkpoints with config objects need full unpickling
            obj = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as err:
            raise NetworkError(f"{path}: cannot be read as a PyTorch file ({err})") from err
    try:
        return as_network(obj)
    except NetworkError as err:
        raise NetworkError(f"{path}: {err}") from err


def as_network(obj: Any, dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> PLNetwork:
    """Convert anything nsr accepts as a ReLU network into a :class:`PLNetwork`.

    Raises :class:`NetworkError` naming the offending layer or key otherwise.
    """
    if isinstance(obj, PLNetwork):
        net = obj
    elif isinstance(obj, (str, Path)):
        net = load_network(obj)
    elif isinstance(obj, ReLUMLP):
        net = PLNetwork([m.weight.detach() for m in obj.layers], [m.bias.detach() for m in obj.layers])
    elif isinstance(obj, nn.Sequential):
        net = _from_sequential(obj)
    elif isinstance(obj, nn.Module):
        inner = getattr(obj, "net", None)  # nsr's LightningModule
        if isinstance(inner, nn.Module):
            return as_network(inner, dtype=dtype, device=device)
        raise NetworkError(
            f"module {type(obj).__name__} is not supported: pass nsr.ReLUMLP, an nn.Sequential of "
            "Linear/ReLU layers, or its state dict"
        )
    elif isinstance(obj, Mapping):
        net = _from_state_dict(obj)
    else:
        raise NetworkError(f"cannot read a ReLU network from {type(obj).__name__}")
    if dtype is not None or device is not None:
        net = net.to(device=device, dtype=dtype)
    return net


def random_network(
    in_dim: int, widths: Sequence[int], seed: int = 0, dtype: torch.dtype = torch.float64
) -> PLNetwork:
    """A network with PyTorch's default Linear initialization, for tests and benchmarks."""
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
