"""Piecewise-affine architectures users train for shapes, beyond the plain ReLU MLP.

Both take the constructor style of :class:`nsr.networks.ReLUMLP` (``in_dim, width, depth, ...``),
map ``(N, in_dim) -> (N,)``, and trace into a :class:`~nsr.pl.graph.PLGraph` with
:func:`nsr.pl.trace`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def _activation(name: str, negative_slope: float) -> nn.Module:
    if name == "relu":
        return nn.ReLU()
    if name == "leaky_relu":
        return nn.LeakyReLU(negative_slope)
    raise ValueError(f"activation must be 'relu' or 'leaky_relu', got {name!r}")


class SkipMLP(nn.Module):
    """DeepSDF-style decoder (Park et al. 2019): ``depth`` hidden layers of ``width`` ReLU neurons;
    the input ``x`` (``(N, in_dim + latent_dim)``: latent code first, then coordinates) is
    concatenated back in before hidden layer ``skip`` (default ``depth // 2``), whose
    predecessor then has ``width - in_dim`` outputs so that every hidden layer is ``width`` wide.

    ``tanh_output`` ends in ``tanh`` (DeepSDF clamps its targets to match; extract at
    ``graph.level(t)``); ``weight_norm`` reparametrizes every Linear
    (``torch.nn.utils.parametrizations.weight_norm``); ``dropout`` is applied after each hidden
    activation while training. ``geometric_init`` starts close to the signed distance of a
    sphere of ``radius`` (SAL), with the skip input entering with zero weight.
    """

    def __init__(
        self,
        in_dim: int = 3,
        width: int = 256,
        depth: int = 8,
        skip: int | None = None,
        latent_dim: int = 0,
        tanh_output: bool = False,
        weight_norm: bool = False,
        dropout: float = 0.0,
        geometric_init: bool = False,
        radius: float = 0.5,
    ) -> None:
        super().__init__()
        skip = depth // 2 if skip is None else skip
        total_in = in_dim + latent_dim
        if in_dim < 1 or width < 1 or depth < 1 or latent_dim < 0:
            raise ValueError(f"in_dim, width, depth must be >= 1, latent_dim >= 0; got {in_dim}, {width}, {depth}, "
                             f"{latent_dim}")
        if not 0 < skip < depth and skip != 0:
            raise ValueError(f"skip must be in 1..depth-1 (or 0 for none), got {skip}")
        if skip and width <= total_in:
            raise ValueError(f"width {width} must exceed the input size {total_in} to make room for the skip")
        self.in_dim, self.width, self.depth, self.skip, self.latent_dim = in_dim, width, depth, skip, latent_dim
        self.tanh_output = tanh_output
        dims_in = [total_in] + [width] * depth
        dims_out = [width] * depth + [1]
        if skip:
            dims_out[skip - 1] = width - total_in  # the layer feeding the skip: cat(h, x) is width wide
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims_in, dims_out))
        if geometric_init:
            self._geometric_init(radius, total_in)
        if weight_norm:
            for i, layer in enumerate(self.layers):
                self.layers[i] = nn.utils.parametrizations.weight_norm(layer)
        self.act = nn.ReLU()
        self.drop = nn.Dropout(dropout)

    def _geometric_init(self, radius: float, total_in: int) -> None:
        with torch.no_grad():
            for i, layer in enumerate(self.layers[:-1]):
                nn.init.normal_(layer.weight, 0.0, math.sqrt(2.0) / math.sqrt(layer.out_features))
                nn.init.zeros_(layer.bias)
                if self.skip and i == self.skip:  # the concatenated input enters with zero weight
                    layer.weight[:, -total_in:] = 0.0
                if self.latent_dim and i == 0:  # so does the latent code
                    layer.weight[:, : self.latent_dim] = 0.0
            last = self.layers[-1]
            nn.init.normal_(last.weight, math.sqrt(math.pi) / math.sqrt(last.in_features), 1e-4)
            nn.init.constant_(last.bias, -radius)

    def forward(self, x: Tensor) -> Tensor:
        """``(N, latent_dim + in_dim) -> (N,)``."""
        h = x
        for i, layer in enumerate(self.layers[:-1]):
            if self.skip and i == self.skip:
                h = torch.cat([h, x], dim=-1)
            h = self.drop(self.act(layer(h)))
        out = self.layers[-1](h).squeeze(-1)
        return torch.tanh(out) if self.tanh_output else out


class ResidualBlock(nn.Module):
    """``h + W2 act(W1 h + b1) + b2``."""

    def __init__(self, width: int, act: nn.Module) -> None:
        super().__init__()
        self.inner = nn.Linear(width, width)
        self.outer = nn.Linear(width, width)
        self.act = act

    def forward(self, h: Tensor) -> Tensor:
        return h + self.outer(self.act(self.inner(h)))


class ResidualMLP(nn.Module):
    """``in_dim -> width`` embedding, ``depth`` residual blocks, ``width -> 1`` head.

    Each block adds ``W2 act(W1 h)`` to the stream ``h``; ``act`` is ``relu`` or ``leaky_relu``.
    The stream is linear, so tracing folds it: each block's neurons read the input and every
    earlier block. ``geometric_init`` makes the residual branches start at zero (``W2 = 0``),
    so that the network starts as the SAL sphere of the embedding and the head.
    """

    def __init__(
        self,
        in_dim: int = 3,
        width: int = 64,
        depth: int = 4,
        activation: str = "relu",
        negative_slope: float = 0.01,
        geometric_init: bool = False,
        radius: float = 0.5,
    ) -> None:
        super().__init__()
        if in_dim < 1 or width < 1 or depth < 1:
            raise ValueError(f"in_dim, width, depth must be >= 1, got {in_dim}, {width}, {depth}")
        self.in_dim, self.width, self.depth = in_dim, width, depth
        self.embed = nn.Linear(in_dim, width)
        self.act = _activation(activation, negative_slope)
        self.blocks = nn.ModuleList(ResidualBlock(width, _activation(activation, negative_slope))
                                    for _ in range(depth))
        self.head_act = _activation(activation, negative_slope)
        self.head = nn.Linear(width, 1)
        if geometric_init:
            self._geometric_init(radius)

    def _geometric_init(self, radius: float) -> None:
        with torch.no_grad():
            nn.init.normal_(self.embed.weight, 0.0, math.sqrt(2.0) / math.sqrt(self.width))
            nn.init.zeros_(self.embed.bias)
            for block in self.blocks:
                nn.init.normal_(block.inner.weight, 0.0, math.sqrt(2.0) / math.sqrt(self.width))
                nn.init.zeros_(block.inner.bias)
                nn.init.zeros_(block.outer.weight)
                nn.init.zeros_(block.outer.bias)
            nn.init.normal_(self.head.weight, math.sqrt(math.pi) / math.sqrt(self.width), 1e-4)
            nn.init.constant_(self.head.bias, -radius)

    def forward(self, x: Tensor) -> Tensor:
        """``(N, in_dim) -> (N,)``."""
        h = self.embed(x)
        for block in self.blocks:
            h = block(h)
        return self.head(self.head_act(h)).squeeze(-1)
