"""Piecewise-affine architectures users train for shapes, beyond the plain ReLU MLP.

Both take the constructor style of :class:`nsr.networks.ReLUMLP` (``in_dim, width, depth, ...``),
map ``(N, in_dim) -> (N,)``, and trace into a :class:`~nsr.pl.graph.PLGraph` with
:func:`nsr.pl.trace`.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from nsr.networks import geometric_init_head_, geometric_init_hidden_


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

    Parameters
    ----------
    in_dim : int
        Spatial input dimension ``D``.
    width : int
        Neurons per hidden layer.
    depth : int
        Number of hidden layers.
    skip : int, optional
        Hidden layer before which the input is concatenated again; 0: no skip.
    latent_dim : int
        Size of the latent code that precedes the coordinates in the input.
    tanh_output : bool
        End in ``tanh``.
    weight_norm : bool
        Weight-normalize every Linear.
    dropout : float
        Dropout probability after each hidden activation (training only).
    geometric_init : bool
        Start near the signed distance of a sphere.
    radius : float
        Radius of that sphere.

    Raises
    ------
    ValueError
        On sizes below 1, ``skip`` outside ``1..depth-1`` (or 0), or ``width`` too small for the skip.

    Examples
    --------
    >>> import torch
    >>> from nsr.pl import SkipMLP
    >>> _ = torch.manual_seed(0)
    >>> model = SkipMLP(in_dim=3, width=16, depth=4, geometric_init=True)
    >>> [layer.out_features for layer in model.layers]  # the layer before the skip makes room for x
    [16, 13, 16, 16, 1]
    >>> bool(model(torch.zeros(1, 3)) < 0)  # the sphere's centre is inside
    True
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
                geometric_init_hidden_(layer)
                if self.skip and i == self.skip:  # the concatenated input enters with zero weight
                    layer.weight[:, -total_in:] = 0.0
                if self.latent_dim and i == 0:  # so does the latent code
                    layer.weight[:, : self.latent_dim] = 0.0
            geometric_init_head_(self.layers[-1], radius)

    def forward(self, x: Tensor) -> Tensor:
        """Evaluate the decoder.

        Parameters
        ----------
        x : (N, latent_dim + in_dim) float Tensor
            Latent code, then coordinates.

        Returns
        -------
        (N,) float Tensor

        Examples
        --------
        >>> import torch
        >>> from nsr.pl import SkipMLP
        >>> SkipMLP(in_dim=2, width=8, depth=2, latent_dim=3)(torch.zeros(4, 5)).shape
        torch.Size([4])
        """
        h = x
        for i, layer in enumerate(self.layers[:-1]):
            if self.skip and i == self.skip:
                h = torch.cat([h, x], dim=-1)
            h = self.drop(self.act(layer(h)))
        out = self.layers[-1](h).squeeze(-1)
        return torch.tanh(out) if self.tanh_output else out


class ResidualBlock(nn.Module):
    """``h + W2 act(W1 h + b1) + b2``.

    Parameters
    ----------
    width : int
        Width of the stream ``h``.
    act : torch.nn.Module
        The activation.

    Examples
    --------
    >>> import torch
    >>> from nsr.pl.models import ResidualBlock
    >>> block = ResidualBlock(4, torch.nn.ReLU())
    >>> _ = torch.nn.init.zeros_(block.outer.weight), torch.nn.init.zeros_(block.outer.bias)
    >>> block(torch.ones(2, 4))  # a zero branch leaves the stream unchanged
    tensor([[1., 1., 1., 1.],
            [1., 1., 1., 1.]], grad_fn=<AddBackward0>)
    """

    def __init__(self, width: int, act: nn.Module) -> None:
        super().__init__()
        self.inner = nn.Linear(width, width)
        self.outer = nn.Linear(width, width)
        self.act = act

    def forward(self, h: Tensor) -> Tensor:
        """The stream plus the branch.

        Parameters
        ----------
        h : (N, width) float Tensor
            The stream.

        Returns
        -------
        (N, width) float Tensor

        Examples
        --------
        >>> import torch
        >>> from nsr.pl.models import ResidualBlock
        >>> ResidualBlock(4, torch.nn.ReLU())(torch.zeros(3, 4)).shape
        torch.Size([3, 4])
        """
        return h + self.outer(self.act(self.inner(h)))


class ResidualMLP(nn.Module):
    """``in_dim -> width`` embedding, ``depth`` residual blocks, ``width -> 1`` head.

    Each block adds ``W2 act(W1 h)`` to the stream ``h``; ``act`` is ``relu`` or ``leaky_relu``.
    The stream is linear, so tracing folds it: each block's neurons read the input and every
    earlier block. ``geometric_init`` makes the residual branches start at zero (``W2 = 0``),
    so that the network starts as the SAL sphere of the embedding and the head.

    Parameters
    ----------
    in_dim : int
        Input dimension ``D``.
    width : int
        Width of the stream and of each block's hidden layer.
    depth : int
        Number of residual blocks.
    activation : {"relu", "leaky_relu"}
        The activation.
    negative_slope : float
        Slope of ``leaky_relu`` below 0.
    geometric_init : bool
        Start near the signed distance of a sphere.
    radius : float
        Radius of that sphere.

    Raises
    ------
    ValueError
        On sizes below 1 or an unknown activation.

    Examples
    --------
    >>> import torch
    >>> from nsr.pl import ResidualMLP, trace
    >>> _ = torch.manual_seed(0)
    >>> graph = trace(ResidualMLP(in_dim=2, width=8, depth=2))
    >>> graph.widths, graph.layers[2].sources  # the head reads the input and both blocks
    ([8, 8, 8], [-1, 0, 1])
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
            geometric_init_hidden_(self.embed)
            for block in self.blocks:
                geometric_init_hidden_(block.inner)
                nn.init.zeros_(block.outer.weight)
                nn.init.zeros_(block.outer.bias)
            geometric_init_head_(self.head, radius)

    def forward(self, x: Tensor) -> Tensor:
        """Evaluate the network.

        Parameters
        ----------
        x : (N, in_dim) float Tensor
            Points.

        Returns
        -------
        (N,) float Tensor

        Examples
        --------
        >>> import torch
        >>> from nsr.pl import ResidualMLP
        >>> ResidualMLP(in_dim=3, width=8, depth=2)(torch.zeros(5, 3)).shape
        torch.Size([5])
        """
        h = self.embed(x)
        for block in self.blocks:
            h = block(h)
        return self.head(self.head_act(h)).squeeze(-1)
