"""Hostile modules: nsr extracts the function the module computes, or refuses naming |Δf|."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from torch import nn

from nsr.networks import NetworkError, ReLUMLP, as_network, check_points


def _mlp(seed: int = 0, width: int = 16, depth: int = 2) -> ReLUMLP:
    torch.manual_seed(seed)
    return ReLUMLP(3, width, depth)


class SineMLP(ReLUMLP):
    """A ReLUMLP subclass with its own forward (sine activations): not the ReLU net of its layers."""

    def forward(self, x):
        for layer in self.layers[:-1]:
            x = torch.sin(layer(x))
        return self.layers[-1](x).squeeze(-1)


class Scaled(nn.Module):
    """A wrapper exposing `.net` whose own forward is not `.net`'s."""

    def __init__(self, factor: float = 2.0) -> None:
        super().__init__()
        self.net, self.factor = _mlp(1), factor

    def forward(self, x):
        return self.net(x * self.factor)


class SineLinear(nn.Linear):
    def forward(self, x):
        return torch.sin(super().forward(x))


class Offset(nn.Module):
    def __init__(self, c: float) -> None:
        super().__init__()
        self.net, self.c = _mlp(2), c

    def forward(self, x):
        return self.net(x) + self.c


def _hooked(kind: str) -> nn.Module:
    m = _mlp(3)
    if kind == "forward":
        m.register_forward_hook(lambda mod, inp, out: out + 0.25)
    elif kind == "pre":
        m.register_forward_pre_hook(lambda mod, inp: (inp[0] * 1.5,))
    elif kind == "inner":
        m.layers[0].register_forward_hook(lambda mod, inp, out: out.abs())
    return m


def _sequential_with(layer: nn.Module) -> nn.Sequential:
    torch.manual_seed(4)
    return nn.Sequential(layer, nn.ReLU(), nn.Linear(8, 1))


WRONG = [
    ("subclass with sine forward", lambda: SineMLP(3, 16, 2)),
    ("wrapper with its own forward", lambda: Scaled()),
    ("forward hook", lambda: _hooked("forward")),
    ("forward pre-hook", lambda: _hooked("pre")),
    ("hook on an inner layer", lambda: _hooked("inner")),
    ("Linear subclass with its own forward", lambda: _sequential_with(SineLinear(3, 8))),
    ("wrapper adding 1e-3", lambda: Offset(1e-3)),
]


def _linears(module: nn.Module) -> list[nn.Linear]:
    inner = getattr(module, "net", module)
    return list(inner.layers) if isinstance(inner, ReLUMLP) else [m for m in inner if isinstance(m, nn.Linear)]


def _plain_relu(layers: list[nn.Linear], x: torch.Tensor) -> torch.Tensor:
    """The ReLU network of the layers, evaluated by hand in float64: ``(N, 3) -> (N,)``."""
    for layer in layers[:-1]:
        x = torch.relu(x @ layer.weight.double().T + layer.bias.double())
    return (x @ layers[-1].weight.double().T + layers[-1].bias.double()).reshape(-1)


@pytest.mark.parametrize("case, make", WRONG, ids=[c[0] for c in WRONG])
def test_modules_computing_another_function_are_refused_with_the_difference(case, make):
    module = make()
    with pytest.raises(NetworkError, match="does not compute") as info:
        as_network(module)
    # the reported max |Δf| is the real one, measured here by hand
    x = check_points(3)
    with torch.no_grad():
        want = float((module.double()(x).reshape(-1) - _plain_relu(_linears(module), x)).abs().max())
    got = float(re.search(r"max \|Δf\| = ([0-9.e+-]+)", str(info.value)).group(1))
    assert got == pytest.approx(want, rel=1e-2)


def test_the_refusal_reaches_extract_mesh():
    from nsr.extraction.surface import extract_mesh

    with pytest.raises(NetworkError, match="max |Δf|"):
        extract_mesh(_hooked("forward"), (-1, 1))


class Plain(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = _mlp(5)

    def forward(self, x):
        return self.net(x)


class NoForward(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = _mlp(6)


class Float32Inside(nn.Module):
    """Computes in float32 whatever it is given: only float32 rounding separates it from nsr's net."""

    def __init__(self) -> None:
        super().__init__()
        self.net = _mlp(7, width=32, depth=6)

    def forward(self, x):
        return self.net(x.float())


def _logged() -> nn.Module:
    m = _mlp(8)
    m.seen = 0

    def hook(mod, inp, out):
        mod.seen += 1  # observes, changes nothing

    m.register_forward_hook(hook)
    return m


HONEST = [
    ("wrapper calling .net", Plain),
    ("wrapper without forward", NoForward),
    ("float32 inside", Float32Inside),
    ("observing hook", _logged),
    ("composed Linear layers", lambda: nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 4), nn.Linear(4, 1))),
    ("float64 module", lambda: _mlp(9).double()),
    ("deep float32 net", lambda: _mlp(10, width=64, depth=8)),
]


@pytest.mark.parametrize("case, make", HONEST, ids=[c[0] for c in HONEST])
def test_modules_computing_their_relu_network_are_accepted(case, make):
    module = make()
    net = as_network(module).to(dtype=torch.float64)
    x = torch.rand(500, 3, dtype=torch.float64) * 2 - 1
    with torch.no_grad():
        own = (module.net if case == "wrapper without forward" else module)(x.to(next(module.parameters()).dtype))
    np.testing.assert_allclose(net(x).numpy(), own.reshape(-1).double().numpy(), rtol=1e-5, atol=1e-5)


BAD_OUTPUT = [
    ("two outputs per point", lambda x: torch.cat([x[:, :1], x[:, :1]], 1), "one value per point"),
    ("a tuple", lambda x: (x[:, 0], x[:, 1]), "one value per point"),
    ("a batch dict it cannot take", None, "cannot be checked"),
]


class Weird(nn.Module):
    def __init__(self, fn) -> None:
        super().__init__()
        self.net, self.fn = _mlp(11), fn

    def forward(self, x):
        if self.fn is None:
            return self.net(x.get("points"))  # expects a batch dict, as many LightningModules do
        return self.fn(x)


@pytest.mark.parametrize("case, fn, words", BAD_OUTPUT, ids=[c[0] for c in BAD_OUTPUT])
def test_modules_that_cannot_be_checked_are_refused(case, fn, words):
    with pytest.raises(NetworkError, match=words):
        as_network(Weird(fn))


def test_a_module_is_not_modified_by_the_check():
    module = _logged()
    before = {k: v.clone() for k, v in module.state_dict().items()}
    as_network(module)
    assert module.seen == 0  # the check ran a copy
    assert all(torch.equal(before[k], v) for k, v in module.state_dict().items())
    assert next(module.parameters()).dtype == torch.float32
