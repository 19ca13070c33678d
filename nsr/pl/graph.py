"""Layered piecewise-affine networks: the one form every extraction stage can read.

A :class:`PLGraph` computes a scalar ``g(x)``, ``x`` in ``R^D``, through layers of neurons
``0..L-1`` in topological order. Layer ``l``'s pre-activations are affine in the input and in
the post-activations of *any* earlier layers::

    z_l = blocks[-1] @ x + sum_{k < l} blocks[k] @ a_k + bias          (n_l,)
    a_l = where(z_l > 0, pos * z_l, neg * z_l)                          (n_l,)
    g   = output.blocks[-1] @ x + sum_k output.blocks[k] @ a_k + bias   (1,)

Only non-zero blocks are stored: a plain MLP has ``blocks = {l - 1: W}``; a DeepSDF-style skip
adds an input block ``-1`` to a middle layer; a residual stream, folded by composing its linear
parts, gives blocks to several earlier layers. Every neuron is a one-breakpoint piecewise-linear
function of its pre-activation (ReLU ``(neg, pos) = (0, 1)``, LeakyReLU ``(a, 1)``, PReLU,
``abs`` ``(-1, 1)``), so every neuron owns exactly one hyperplane ``z = 0``, and ``z_l`` is
affine on every cell of the complex of the neurons of layers ``< l``: the property edge
subdivision needs. Two-breakpoint functions (clamp, hardtanh, ReLU6) are two neurons.

The module's output is ``T(g(x))`` for a monotone increasing :class:`OutputTransform` ``T``
(identity, tanh, sigmoid, positive affine maps); :meth:`PLGraph.level` maps a level ``t`` of the
module's output to the level of ``g`` with the same level set and the same inside (``T(g) < t``
iff ``g < level(t)``).

Cost: a residual stream folded into blocks gives layer ``l`` a block from every earlier layer
(``L(L+1)/2`` blocks, not ``L``): measured on a loaded 2-core CPU, evaluating a traced
``ResidualMLP`` of 8 blocks at 1e5 points took 1.4x (width 64) and 1.2x (width 128) the module's
own time; skip connections cost nothing extra.

Activation patterns are ``z > 0`` (bool, "on the positive side"); a point exactly on a
hyperplane counts as negative, as with ``relu``'s zero gradient there.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from nsr.networks import NetworkError, PLNetwork

INPUT = -1
"""Source index of the network input ``x`` in :attr:`Affine.blocks`."""

ENCODED = -2
"""Source index of the encoder's features ``encoder(x)`` ``(N, F)`` in :attr:`Affine.blocks`
(graphs with an :attr:`PLGraph.encoder` only; see PROTOCOL: the encoder is piecewise affine on
the cells of its own planes, which the extractor splits before layer 0)."""


class NotPiecewiseAffineError(NetworkError):
    """A module (or operation in it) that is not a continuous piecewise-affine function nsr can extract.

    Examples
    --------
    >>> import torch
    >>> from nsr.pl import NotPiecewiseAffineError, trace
    >>> try:
    ...     trace(torch.nn.Sequential(torch.nn.Linear(2, 4), torch.nn.GELU(), torch.nn.Linear(4, 1)))
    ... except NotPiecewiseAffineError as err:
    ...     print("GELU" in str(err))
    True
    """


@dataclass
class Affine:
    """An affine map of the input and of earlier layers' post-activations.

    ``blocks[k]`` is ``(n, n_k)`` (``k == INPUT``: ``(n, D)``), ``bias`` is ``(n,)``.

    Parameters
    ----------
    blocks : dict of int to (n, n_k) float Tensor
        Weight applied to each source: ``INPUT`` (-1) or an earlier layer's index.
    bias : (n,) float Tensor
        Constant term.

    Examples
    --------
    >>> import torch
    >>> from nsr.pl import INPUT, Affine
    >>> aff = Affine({INPUT: torch.tensor([[1.0, 2.0]]), 0: torch.tensor([[3.0]])}, torch.tensor([0.5]))
    >>> aff.n, aff.sources
    (1, [-1, 0])
    >>> aff.apply({INPUT: torch.tensor([[1.0, 1.0]]), 0: torch.tensor([[2.0]])})  # 1 + 2 + 6 + 0.5
    tensor([[9.5000]])
    """

    blocks: dict[int, Tensor]
    bias: Tensor

    @property
    def n(self) -> int:
        """Number of outputs (rows)."""
        return int(self.bias.shape[0])

    @property
    def sources(self) -> list[int]:
        """Source indices in increasing order (``INPUT`` first)."""
        return sorted(self.blocks)

    def rows(self, j0: int, j1: int) -> Affine:
        """The affine map of outputs ``j0:j1``.

        Parameters
        ----------
        j0, j1 : int
            Row range (Python slice semantics).

        Returns
        -------
        Affine
            Views of the same tensors, ``j1 - j0`` rows.

        Examples
        --------
        >>> import torch
        >>> from nsr.pl import INPUT, Affine
        >>> Affine({INPUT: torch.eye(3)}, torch.zeros(3)).rows(1, 3).n
        2
        """
        return Affine({k: w[j0:j1] for k, w in self.blocks.items()}, self.bias[j0:j1])

    def apply(self, values: Mapping[int, Tensor]) -> Tensor:
        """Evaluate the map.

        Parameters
        ----------
        values : mapping of int to (N, n_k) float Tensor
            The value of every source ``k`` (``INPUT``: the points ``(N, D)``).

        Returns
        -------
        (N, n) float Tensor
            ``bias + sum_k values[k] @ blocks[k].T``.

        Examples
        --------
        >>> import torch
        >>> from nsr.pl import INPUT, Affine
        >>> Affine({INPUT: torch.tensor([[1.0, -1.0]])}, torch.tensor([1.0])).apply({INPUT: torch.tensor([[3.0, 1.0]])})
        tensor([[3.]])
        """
        out = None
        for k in self.sources:
            w = self.blocks[k]
            out = torch.addmm(self.bias, values[k], w.T) if out is None else out.addmm_(values[k], w.T)
        if out is None:  # no source at all: a constant (never built by the loaders, but valid)
            n_pts = next(iter(values.values())).shape[0]
            out = self.bias.expand(n_pts, -1).clone()
        return out

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> Affine:
        """A copy on ``device`` in ``dtype`` (``None`` keeps the current one).

        Parameters
        ----------
        device : torch.device or str, optional
            Target device.
        dtype : torch.dtype, optional
            Target dtype.

        Returns
        -------
        Affine

        Examples
        --------
        >>> import torch
        >>> from nsr.pl import INPUT, Affine
        >>> Affine({INPUT: torch.eye(2)}, torch.zeros(2)).to(dtype=torch.float64).bias.dtype
        torch.float64
        """
        return Affine({k: w.to(device=device, dtype=dtype) for k, w in self.blocks.items()},
                      self.bias.to(device=device, dtype=dtype))


@dataclass
class Layer(Affine):
    """Neurons ``a = where(z > 0, pos * z, neg * z)`` of pre-activations ``z`` (an :class:`Affine`).

    ``neg``, ``pos`` are ``(n,)`` slopes; ``pos != neg`` for every neuron (else it has no breakpoint).

    Parameters
    ----------
    blocks : dict of int to (n, n_k) float Tensor
        As in :class:`Affine`.
    bias : (n,) float Tensor
        As in :class:`Affine`.
    neg : (n,) float Tensor, optional
        Slope for ``z <= 0``; default 0 (ReLU).
    pos : (n,) float Tensor, optional
        Slope for ``z > 0``; default 1 (ReLU).

    Examples
    --------
    >>> import torch
    >>> from nsr.pl import INPUT, Layer
    >>> leaky = Layer({INPUT: torch.eye(2)}, torch.zeros(2), neg=torch.full((2,), 0.1), pos=torch.ones(2))
    >>> leaky.is_relu, leaky.activate(torch.tensor([[-2.0, 3.0]]))
    (False, tensor([[-0.2000,  3.0000]]))
    """

    neg: Tensor = field(default=None)  # type: ignore[assignment]
    pos: Tensor = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.neg is None:
            self.neg = torch.zeros_like(self.bias)
        if self.pos is None:
            self.pos = torch.ones_like(self.bias)
        # read once: activate() runs per layer and per chunk, and a check there would sync a GPU each time
        self._relu = bool((self.neg == 0).all() and (self.pos == 1).all())

    @property
    def is_relu(self) -> bool:
        """Every neuron has slopes ``(0, 1)``."""
        return self._relu

    def activate(self, z: Tensor, j0: int = 0, j1: int | None = None) -> Tensor:
        """Post-activations of some of the layer's neurons.

        Parameters
        ----------
        z : (N, j1 - j0) float Tensor
            Pre-activations of neurons ``j0:j1``.
        j0, j1 : int
            Neuron range (``j1=None``: to the end).

        Returns
        -------
        (N, j1 - j0) float Tensor
            ``where(z > 0, pos * z, neg * z)``.

        Examples
        --------
        >>> import torch
        >>> from nsr.pl import INPUT, Layer
        >>> Layer({INPUT: torch.eye(2)}, torch.zeros(2)).activate(torch.tensor([[-1.0, 2.0]]))
        tensor([[0., 2.]])
        """
        if self.is_relu:
            return torch.relu(z)
        neg, pos = self.neg[j0:j1], self.pos[j0:j1]
        return torch.where(z > 0, z * pos, z * neg)

    def slopes(self, pattern: Tensor) -> Tensor:
        """Slopes of the neurons on the side given by an activation pattern.

        Parameters
        ----------
        pattern : (..., n) bool Tensor
            ``z > 0`` per neuron.

        Returns
        -------
        (..., n) float Tensor
            ``pos`` where ``pattern``, else ``neg``.

        Examples
        --------
        >>> import torch
        >>> from nsr.pl import INPUT, Layer
        >>> Layer({INPUT: torch.eye(2)}, torch.zeros(2)).slopes(torch.tensor([[True, False]]))
        tensor([[1., 0.]])
        """
        if self.is_relu:  # the pattern itself: 5-20x cheaper than a broadcast where (geometry terms, every step)
            return pattern.to(self.pos.dtype)
        return torch.where(pattern, self.pos, self.neg)

    def rows(self, j0: int, j1: int) -> Layer:
        """The layer of neurons ``j0:j1`` (see :meth:`Affine.rows`).

        Parameters
        ----------
        j0, j1 : int
            Neuron range.

        Returns
        -------
        Layer

        Examples
        --------
        >>> import torch
        >>> from nsr.pl import INPUT, Layer
        >>> Layer({INPUT: torch.eye(3)}, torch.zeros(3)).rows(0, 2).n
        2
        """
        base = Affine.rows(self, j0, j1)
        return Layer(base.blocks, base.bias, self.neg[j0:j1], self.pos[j0:j1])

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> Layer:
        """A copy on ``device`` in ``dtype``, slopes included.

        Parameters
        ----------
        device : torch.device or str, optional
            Target device.
        dtype : torch.dtype, optional
            Target dtype.

        Returns
        -------
        Layer

        Examples
        --------
        >>> import torch
        >>> from nsr.pl import INPUT, Layer
        >>> Layer({INPUT: torch.eye(2)}, torch.zeros(2)).to(dtype=torch.float64).pos.dtype
        torch.float64
        """
        base = Affine.to(self, device, dtype)
        return Layer(base.blocks, base.bias, self.neg.to(device=device, dtype=dtype),
                     self.pos.to(device=device, dtype=dtype))


_TRANSFORMS = ("tanh", "sigmoid", "affine")


@dataclass(frozen=True)
class OutputTransform:
    """A monotone increasing map ``T`` from ``g`` to the module's output, as a chain of steps
    applied in order: ``("tanh",)``, ``("sigmoid",)``, ``("affine", scale, shift)`` with
    ``scale > 0``. The loaders turn decreasing transforms into increasing ones by negating ``g``
    (``-tanh(u) = tanh(-u)``, ``-sigmoid(u) = sigmoid(-u) - 1``), so "inside" (below the level)
    is the same for the module and for ``g``.

    Parameters
    ----------
    steps : tuple of tuple
        The steps in order; ``()`` is the identity.

    Raises
    ------
    ValueError
        On an unknown step or an affine step whose scale is not finite and positive.

    Examples
    --------
    >>> import torch
    >>> from nsr.pl import OutputTransform
    >>> t = OutputTransform((("tanh",), ("affine", 2.0, 1.0)))
    >>> t.describe(), t(torch.tensor([0.0])), t.level(1.0)
    ('2 * tanh(g) + 1', tensor([1.]), 0.0)
    """

    steps: tuple[tuple, ...] = ()

    def __post_init__(self) -> None:
        for step in self.steps:
            if step[0] not in _TRANSFORMS:
                raise ValueError(f"unknown output transform step {step!r}")
            if step[0] == "affine" and not (len(step) == 3 and step[1] > 0 and math.isfinite(step[1])
                                            and math.isfinite(step[2])):
                raise ValueError(f"an affine output step needs a finite scale > 0 and a finite shift, got {step!r}")

    @property
    def is_identity(self) -> bool:
        """No steps, or only ``("affine", 1, 0)`` steps."""
        return all(s[0] == "affine" and s[1] == 1 and s[2] == 0 for s in self.steps)

    def then(self, *step: object) -> OutputTransform:
        """This transform followed by ``step``.

        Parameters
        ----------
        *step : object
            ``"tanh"``, ``"sigmoid"``, or ``"affine", scale, shift``.

        Returns
        -------
        OutputTransform
            A new transform; ``self`` is unchanged (frozen).

        Examples
        --------
        >>> from nsr.pl import OutputTransform
        >>> OutputTransform().then("sigmoid").then("affine", 2.0, -1.0).describe()
        '2 * sigmoid(g) + -1'
        """
        return OutputTransform((*self.steps, tuple(step)))

    def __call__(self, g: Tensor) -> Tensor:
        """``T(g)``, elementwise.

        Parameters
        ----------
        g : Tensor
            Values of the piecewise-affine output, any shape.

        Returns
        -------
        Tensor
            Same shape.

        Examples
        --------
        >>> import torch
        >>> from nsr.pl import OutputTransform
        >>> OutputTransform((("sigmoid",),))(torch.tensor([0.0]))
        tensor([0.5000])
        """
        for step in self.steps:
            if step[0] == "tanh":
                g = torch.tanh(g)
            elif step[0] == "sigmoid":
                g = torch.sigmoid(g)
            else:
                g = g * step[1] + step[2]
        return g

    def level(self, t: float) -> float:
        """The level of ``g`` whose level set is the module's level set at ``t``.

        Raises ``ValueError`` when ``t`` is outside the open range of ``T`` (e.g. ``|t| >= 1``
        after a ``tanh``): no point of any network reaches it.

        Parameters
        ----------
        t : float
            A level of the module's output.

        Returns
        -------
        float
            ``T^-1(t)``.

        Raises
        ------
        ValueError
            If ``t`` is outside the range of ``T``.

        Examples
        --------
        >>> from nsr.pl import OutputTransform
        >>> tanh = OutputTransform((("tanh",),))
        >>> tanh.level(0.0), round(tanh.level(0.5), 6)
        (0.0, 0.549306)
        >>> try:
        ...     tanh.level(1.0)
        ... except ValueError as err:
        ...     print("outside the range" in str(err))
        True
        """
        value = float(t)
        for step in reversed(self.steps):
            if step[0] == "affine":
                value = (value - step[2]) / step[1]
            elif step[0] == "tanh":
                if not -1.0 < value < 1.0:
                    raise ValueError(f"level {t} is outside the range of the output transform {self.describe()}: "
                                     f"tanh takes values in (-1, 1) only, and needs {value} here")
                value = math.atanh(value)
            else:
                if not 0.0 < value < 1.0:
                    raise ValueError(f"level {t} is outside the range of the output transform {self.describe()}: "
                                     f"sigmoid takes values in (0, 1) only, and needs {value} here")
                value = math.log(value) - math.log1p(-value)
        return value

    def describe(self) -> str:
        """A formula such as ``0.5 * tanh(g) + 0``.

        Returns
        -------
        str

        Examples
        --------
        >>> from nsr.pl import OutputTransform
        >>> OutputTransform((("tanh",),)).describe()
        'tanh(g)'
        """
        expr = "g"
        for step in self.steps:
            expr = f"{step[0]}({expr})" if step[0] != "affine" else f"{step[1]:g} * {expr} + {step[2]:g}"
        return expr


@dataclass
class PLGraph:
    """A continuous piecewise-affine network ``R^D -> R`` in layered form (see the module docstring).

    ``layers[l]`` may read ``INPUT`` and layers ``< l``; ``output`` has one row and may read
    anything. All tensors share one dtype and device.

    Parameters
    ----------
    in_dim : int
        Input dimension ``D``.
    layers : list of Layer
        Neuron layers in topological order.
    output : Affine
        The scalar output ``g`` (one row).
    transform : OutputTransform
        Monotone map from ``g`` to the module's output.
    encoder : object, optional
        A piecewise-affine input encoding read by blocks of source ``ENCODED`` (protocol:
        ``in_dim``, ``out_dim``, ``__call__``, ``planes``, ``feature_maps``, ``feature_bounds``,
        ``to``); ``None`` for plain networks.

    Raises
    ------
    NotPiecewiseAffineError
        If shapes, sources, dtypes or devices are inconsistent, or a value is NaN or inf.

    Examples
    --------
    A DeepSDF-style skip: layer 1 reads layer 0 and the input again.

    >>> import torch
    >>> from nsr.pl import INPUT, Affine, Layer, PLGraph
    >>> l0 = Layer({INPUT: torch.tensor([[1.0, 0.0], [0.0, 1.0]])}, torch.zeros(2))
    >>> l1 = Layer({0: torch.tensor([[1.0, 1.0]]), INPUT: torch.tensor([[-1.0, 0.0]])}, torch.zeros(1))
    >>> g = PLGraph(2, [l0, l1], Affine({1: torch.tensor([[1.0]])}, torch.tensor([-0.5])))
    >>> g.widths, g.n_neurons, g.offsets, g.is_mlp, g.is_relu
    ([2, 1], 3, [0, 2, 3], False, True)
    >>> g(torch.tensor([[0.5, 1.0], [1.0, 0.0]]))  # relu(relu(x) + relu(y) - x) - 0.5
    tensor([ 0.5000, -0.5000])
    """

    in_dim: int
    layers: list[Layer]
    output: Affine
    transform: OutputTransform = OutputTransform()
    encoder: Any = None

    def __post_init__(self) -> None:
        _validate_graph(self)
        # the last layer (n_layers: the output) that reads each source, so that an evaluation
        # holds only the values still to be read (a plain MLP: one layer's at a time)
        self._last_read: dict[int, int] = {}
        for m in range(self.n_layers + 1):
            for k in self.affine(m).blocks:
                self._last_read[k] = m

    @property
    def live_width(self) -> int:
        """The most values per point an evaluation holds at once (sources still to be read plus
        the layer being computed): what a chunk of points costs per row."""
        widths = {INPUT: self.in_dim, **({ENCODED: int(self.encoder.out_dim)} if self.encoder is not None else {})}
        widths.update(enumerate(self.widths))
        most = 0
        for m in range(self.n_layers + 1):
            live = sum(w for k, w in widths.items() if k < m and self._last_read.get(k, -3) >= m)
            most = max(most, live + self.affine(m).n)
        return most

    # ---- shape ----------------------------------------------------------------------------
    @property
    def widths(self) -> list[int]:
        """Neurons per layer."""
        return [layer.n for layer in self.layers]

    @property
    def n_layers(self) -> int:
        """Number of neuron layers; ``n_layers`` also indexes the output in layer arguments."""
        return len(self.layers)

    @property
    def n_neurons(self) -> int:
        """Number of neurons (hyperplanes)."""
        return sum(self.widths)

    @property
    def offsets(self) -> list[int]:
        """Global index of each layer's first neuron, ``n_layers + 1`` entries (last: ``n_neurons``)."""
        out = [0]
        for n in self.widths:
            out.append(out[-1] + n)
        return out

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of every tensor."""
        return self.output.bias.dtype

    @property
    def device(self) -> torch.device:
        """The device of every tensor."""
        return self.output.bias.device

    @property
    def is_mlp(self) -> bool:
        """A plain chain: each layer reads only the one before, the output only the last layer."""
        chain = all(layer.sources == [l - 1] for l, layer in enumerate(self.layers))
        return chain and self.output.sources == [self.n_layers - 1]

    @property
    def is_relu(self) -> bool:
        """Every neuron is a ReLU."""
        return all(layer.is_relu for layer in self.layers)

    def affine(self, layer: int) -> Affine:
        """The affine map giving the pre-activations of ``layer``.

        Parameters
        ----------
        layer : int
            Layer index; ``n_layers`` is the output.

        Returns
        -------
        Affine
            ``layers[layer]`` or ``output``.

        Examples
        --------
        >>> from nsr.pl import as_graph
        >>> from nsr.networks import random_network
        >>> g = as_graph(random_network(3, [8, 4], seed=0))
        >>> g.affine(1).n, g.affine(g.n_layers) is g.output
        (4, True)
        """
        return self.output if layer == self.n_layers else self.layers[layer]

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> PLGraph:
        """A copy on ``device`` in ``dtype`` (the transform is kept).

        Parameters
        ----------
        device : torch.device or str, optional
            Target device.
        dtype : torch.dtype, optional
            Target dtype.

        Returns
        -------
        PLGraph

        Examples
        --------
        >>> import torch
        >>> from nsr.pl import as_graph
        >>> from nsr.networks import random_network
        >>> as_graph(random_network(3, [8], seed=0)).to(dtype=torch.float32).dtype
        torch.float32
        """
        encoder = None if self.encoder is None else self.encoder.to(device=device, dtype=dtype)
        return PLGraph(self.in_dim, [layer.to(device, dtype) for layer in self.layers],
                       self.output.to(device, dtype), self.transform, encoder)

    # ---- evaluation -----------------------------------------------------------------------
    def post_activations(self, x: Tensor, upto: int | None = None) -> dict[int, Tensor]:
        """Post-activations of the first ``upto`` layers.

        Parameters
        ----------
        x : (N, D) float Tensor
            Points.
        upto : int, optional
            Number of layers (default: all).

        Returns
        -------
        dict of int to (N, n_k) float Tensor
            ``{INPUT: x, 0: a_0, ..., upto - 1: a_{upto-1}}``.

        Examples
        --------
        >>> import torch
        >>> from nsr.pl import as_graph
        >>> from nsr.networks import random_network
        >>> g = as_graph(random_network(3, [8, 4], seed=0))
        >>> {k: tuple(v.shape) for k, v in g.post_activations(torch.zeros(5, 3, dtype=torch.float64)).items()}
        {-1: (5, 3), 0: (5, 8), 1: (5, 4)}
        """
        upto = self.n_layers if upto is None else upto
        values = self.input_values(x)
        for l in range(upto):
            layer = self.layers[l]
            z = layer.apply(values)
            # z is a fresh tensor: a ReLU layer activates in place, the addmm/relu_ chain of a plain MLP
            values[l] = z.relu_() if layer.is_relu else layer.activate(z)
        return values

    def input_values(self, x: Tensor) -> dict[int, Tensor]:
        """The sources that are not layers: ``{INPUT: x}``, and ``ENCODED: encoder(x)`` ``(N, F)``
        when the graph has an encoder.

        Parameters
        ----------
        x : (N, D) float Tensor
            Points.

        Returns
        -------
        dict of int to Tensor

        Examples
        --------
        >>> import torch
        >>> from nsr.pl import as_graph
        >>> from nsr.networks import random_network
        >>> list(as_graph(random_network(3, [8], seed=0)).input_values(torch.zeros(2, 3, dtype=torch.float64)))
        [-1]
        """
        values: dict[int, Tensor] = {INPUT: x}
        if self.encoder is not None:
            values[ENCODED] = self.encoder(x)
        return values

    def preactivations(self, x: Tensor, layer: int, j0: int = 0, j1: int | None = None,
                       values: Mapping[int, Tensor] | None = None) -> Tensor:
        """Pre-activations ``(N, j1 - j0)`` of neurons ``j0:j1`` of ``layer`` at ``x`` ``(N, D)``
        (``layer == n_layers``: the output ``g``, ``(N, 1)``). ``values`` may carry the
        post-activations of earlier layers (from :meth:`post_activations`).

        Parameters
        ----------
        x : (N, D) float Tensor
            Points.
        layer : int
            Layer index; ``n_layers`` is the output.
        j0, j1 : int
            Neuron range (``j1=None``: to the end).
        values : mapping of int to Tensor, optional
            Post-activations already computed at ``x``.

        Returns
        -------
        (N, j1 - j0) float Tensor

        Examples
        --------
        >>> import torch
        >>> from nsr.pl import as_graph
        >>> from nsr.networks import random_network
        >>> net = random_network(3, [8, 4], seed=0)
        >>> x = torch.rand(6, 3, dtype=torch.float64)
        >>> bool(torch.allclose(as_graph(net).preactivations(x, 1, 0, 2), net.preactivations(x, 1)[:, :2]))
        True
        """
        aff = self.affine(layer)
        j1 = aff.n if j1 is None else j1
        if values is None:
            values = self._values_for(x, min(layer, self.n_layers))
        return (aff if j0 == 0 and j1 == aff.n else aff.rows(j0, j1)).apply(values)

    def _values_for(self, x: Tensor, upto: int) -> dict[int, Tensor]:
        """Post-activations of layers ``< upto``, dropping each as soon as no layer up to
        ``upto`` reads it any more (the addmm/relu_ chain of a plain MLP keeps one)."""
        values = self.input_values(x)
        for l in range(upto):
            layer = self.layers[l]
            z = layer.apply(values)
            values[l] = z.relu_() if layer.is_relu else layer.activate(z)
            for k in [k for k in values if self._last_read.get(k, -3) <= l]:
                del values[k]
        return values

    def __call__(self, x: Tensor) -> Tensor:
        """The piecewise-affine output ``g`` (before the output transform).

        Parameters
        ----------
        x : (N, D) float Tensor
            Points.

        Returns
        -------
        (N,) float Tensor

        Examples
        --------
        >>> import torch
        >>> from nsr.pl import as_graph
        >>> from nsr.networks import octahedron_network
        >>> as_graph(octahedron_network(0.5))(torch.tensor([[0.5, 0.0, 0.0]], dtype=torch.float64))
        tensor([0.], dtype=torch.float64)
        """
        return self.preactivations(x, self.n_layers).squeeze(-1)

    def module_output(self, x: Tensor) -> Tensor:
        """What the traced module computes, ``T(g(x))``.

        Parameters
        ----------
        x : (N, D) float Tensor
            Points.

        Returns
        -------
        (N,) float Tensor

        Examples
        --------
        >>> import torch
        >>> from nsr.pl import trace
        >>> _ = torch.manual_seed(0)
        >>> m = torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1), torch.nn.Tanh())
        >>> g = trace(m)
        >>> x = torch.rand(4, 2, dtype=torch.float64)
        >>> bool(torch.allclose(g.module_output(x), m.double()(x).squeeze(1)))
        True
        """
        return self.transform(self(x))

    def level(self, t: float) -> float:
        """The level of ``g`` equivalent to level ``t`` of the module's output.

        Parameters
        ----------
        t : float
            A level of the module's output.

        Returns
        -------
        float
            See :meth:`OutputTransform.level`.

        Examples
        --------
        >>> import torch
        >>> from nsr.pl import trace
        >>> m = torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1), torch.nn.Sigmoid())
        >>> trace(m).level(0.5)
        0.0
        """
        return self.transform.level(t)

    def patterns(self, x: Tensor, upto: int | None = None) -> list[Tensor]:
        """Activation patterns of the first ``upto`` layers at points.

        Parameters
        ----------
        x : (N, D) float Tensor
            Points.
        upto : int, optional
            Number of layers (default: all).

        Returns
        -------
        list of (N, n_l) bool Tensor
            ``z_l > 0`` per layer.

        Examples
        --------
        >>> import torch
        >>> from nsr.pl import as_graph
        >>> from nsr.networks import octahedron_network
        >>> as_graph(octahedron_network()).patterns(torch.tensor([[0.1, -0.2, 0.3]], dtype=torch.float64))
        [tensor([[ True, False,  True,  True,  True,  True]])]
        """
        upto = self.n_layers if upto is None else upto
        values = self.input_values(x)
        out = []
        for l in range(upto):
            z = self.layers[l].apply(values)
            out.append(z > 0)
            values[l] = self.layers[l].activate(z)
        return out

    def region_maps(self, patterns: Sequence[Tensor], points: Tensor | None = None, augmented: bool = False,
                    groups: Sequence[tuple[Tensor, Tensor]] | None = None) -> list:
        """Affine maps of every layer's pre-activations, and of the output, on the regions with
        the given activation patterns ``patterns[l]`` ``(P, n_l)`` bool (one per layer, or fewer:
        then maps up to that layer only). Entry ``l`` is ``(A (P, n_l, D), c (P, n_l))`` with
        ``z_l = A x + c`` on the region; the last entry is the output's when every layer has a pattern.

        A region's map multiplies each neuron by its slope on the region's side
        (:meth:`Layer.slopes`: 0/1 for ReLU, ``(neg, pos)`` for LeakyReLU, PReLU, ``abs``), and
        sums the blocks of every source (skip and residual blocks read the input and any earlier
        layer). The maps keep the autograd graph of the blocks and biases (slopes are fixed), so
        quantities built from them are differentiable in the graph's tensors.

        Parameters
        ----------
        patterns : sequence of (P, n_l) bool Tensor
            Activation patterns of ``P`` regions, for the first layers.
        points : (P, D) float Tensor, optional
            A point of each region; needed when the graph has an ``encoder``, whose features are
            affine only on the cells of its planes (``encoder.feature_maps(points)``).
        augmented : bool
            Return ``M (P, D + 1, n_l)`` per entry instead: rows ``:D`` are ``A`` transposed and
            row ``D`` is ``c`` (the layout of the tracking and geometry kernels: one GEMM of
            ``(P (D + 1), n_k) x (n_k, n_l)`` per block). Entries may be expanded views: do not
            write into them.
        groups : sequence of (rep (G_l,), inv (P,)) int64 Tensors, optional
            With ``augmented``, one per entry: regions ``inv_l == i`` share the patterns of
            every layer before ``l`` (so they share layer ``l``'s map) and ``rep_l[i]`` is one of
            them. Entry ``l`` is then ``(G_l, D + 1, n_l)``, one map per group (``m[inv_l]`` per
            region): neighbouring regions differ in a few neurons, and on a wide network most
            of them share their first layers' patterns, so each GEMM runs once per group.

        Returns
        -------
        list of (A, c), or of M with ``augmented``
            ``A`` ``(P, n_l, D)``, ``c`` ``(P, n_l)`` per layer (and the output).

        Raises
        ------
        ValueError
            If the graph has an encoder and ``points`` is missing.

        Examples
        --------
        >>> import torch
        >>> from nsr.pl import as_graph
        >>> from nsr.networks import random_network
        >>> g = as_graph(random_network(3, [8, 4], seed=0))
        >>> x = torch.rand(5, 3, dtype=torch.float64)
        >>> a, c = g.region_maps(g.patterns(x))[-1]  # the output on each point's region
        >>> a.shape, bool(torch.allclose((a @ x[:, :, None]).squeeze(-1) + c, g.preactivations(x, 2)))
        (torch.Size([5, 1, 3]), True)
        >>> g.region_maps(g.patterns(x), augmented=True)[0].shape  # (P, D + 1, n_0)
        torch.Size([5, 4, 8])
        """
        if groups is not None:
            return self._grouped_maps(patterns, groups)
        d = self.in_dim
        n_pat = patterns[0].shape[0] if patterns else (points.shape[0] if points is not None else 1)
        post: dict[int, Tensor] = {}  # (P, D + 1, n_k) maps of the post-activations of every source
        encoder = getattr(self, "encoder", None)
        if encoder is not None:
            if points is None:
                raise ValueError("this graph has an encoder: pass points (P, D), one in each region, to region_maps "
                                 "(the features are affine only on the cells of the encoder's planes)")
            fa, fc = encoder.feature_maps(points)  # (P, F, D), (P, F)
            post[ENCODED] = torch.cat([fa.transpose(1, 2), fc[:, None]], 1)
        out: list = []
        for l in range(min(len(patterns), self.n_layers) + 1):
            m = self._layer_map(l, post, n_pat)
            out.append(m if augmented else (m[:, :d].transpose(1, 2), m[:, d]))
            if l == self.n_layers or l == len(patterns):
                break
            s = self.layers[l].slopes(patterns[l]).to(self.dtype)
            post[l] = m * s[:, None, :]
        return out

    def _grouped_maps(self, patterns: Sequence[Tensor], groups: Sequence[tuple[Tensor, Tensor]]) -> list[Tensor]:
        """:meth:`region_maps` (augmented) once per group of regions sharing their earlier
        layers' patterns: entry ``l`` ``(G_l, D + 1, n_l)``."""
        if getattr(self, "encoder", None) is not None:
            raise ValueError("grouped region maps read networks without an encoder (a cell's features depend on "
                             "its points, not on its patterns)")
        maps: list[Tensor] = []  # layer k's map per group of groups[k]
        for l in range(min(len(patterns), self.n_layers) + 1):
            rep = groups[l][0]
            # each source's map on each group's representative, times its slopes there
            post = {k: maps[k].index_select(0, groups[k][1].index_select(0, rep))
                    * self.layers[k].slopes(patterns[k].index_select(0, rep)).to(self.dtype)[:, None, :]
                    for k in self.affine(l).sources if k != INPUT}
            maps.append(self._layer_map(l, post, len(rep)))
            if l == self.n_layers or l == len(patterns):
                break
        return maps

    def _layer_map(self, l: int, post: Mapping[int, Tensor], n_rows: int) -> Tensor:
        """Layer ``l``'s (the output's for ``n_layers``) augmented map ``(R, D + 1, n_l)`` from
        the maps ``post[k]`` ``(R, D + 1, n_k)`` of its sources' post-activations."""
        d = self.in_dim
        aff = self.affine(l)
        m = None
        for k in aff.sources:
            if k == INPUT:
                continue
            src = post[k]
            term = (src.reshape(-1, src.shape[2]) @ aff.blocks[k].T).reshape(n_rows, d + 1, aff.n)
            m = term if m is None else m + term
        inp = aff.blocks.get(INPUT)
        if m is None:  # reads the input only (a first layer): one map shared by every region
            lin = inp.T if inp is not None else torch.zeros(d, aff.n, dtype=self.dtype, device=self.device)
            return torch.cat([lin, aff.bias[None]], 0).expand(n_rows, -1, -1)
        m[:, d] += aff.bias  # m is a fresh tensor: add in place (autograd records it)
        if inp is not None:
            m[:, :d] += inp.T
        return m

    def local_gradients(self, patterns: Sequence[Tensor]) -> Tensor:
        """Gradient of ``g`` on regions with given activation patterns.

        Parameters
        ----------
        patterns : sequence of (P, n_l) bool Tensor
            One per layer.

        Returns
        -------
        (P, D) float Tensor

        Raises
        ------
        ValueError
            If there is not one pattern per layer.

        Examples
        --------
        >>> import torch
        >>> from nsr.pl import as_graph
        >>> from nsr.networks import octahedron_network
        >>> g = as_graph(octahedron_network())  # |x| + |y| + |z| - 0.5
        >>> g.local_gradients(g.patterns(torch.tensor([[0.1, -0.2, 0.3]], dtype=torch.float64)))
        tensor([[ 1., -1.,  1.]], dtype=torch.float64)
        """
        if len(patterns) != self.n_layers:
            raise ValueError(f"need one pattern per layer ({self.n_layers}), got {len(patterns)}")
        if getattr(self, "encoder", None) is not None:
            return self.region_maps(patterns)[-1][0][:, 0]  # asks for points: features are affine per cell
        # reverse mode with the regions' slopes: one row per region through each block, where the
        # maps of region_maps carry D + 1 (a wide network's mesh spends seconds there)
        n_pat = patterns[0].shape[0] if patterns else 1
        grad = torch.zeros(n_pat, self.in_dim, dtype=self.dtype, device=self.device)
        adjoint: dict[int, Tensor] = {}  # d g / d a_k, (P, n_k)

        def push(aff: Affine, u: Tensor) -> None:
            nonlocal grad
            for k, block in aff.blocks.items():
                term = u @ block
                if k == INPUT:
                    grad = grad + term
                else:
                    adjoint[k] = adjoint[k] + term if k in adjoint else term

        push(self.affine(self.n_layers), torch.ones(n_pat, 1, dtype=self.dtype, device=self.device))
        for l in range(self.n_layers - 1, -1, -1):
            if l in adjoint:
                push(self.affine(l), adjoint.pop(l) * self.layers[l].slopes(patterns[l]).to(self.dtype))
        return grad

    # ---- conversions ----------------------------------------------------------------------
    @classmethod
    def from_plnetwork(cls, net: PLNetwork) -> PLGraph:
        """The graph of a plain ReLU MLP.

        Parameters
        ----------
        net : PLNetwork
            The MLP.

        Returns
        -------
        PLGraph
            ``layers[l]`` reads only layer ``l - 1``; identity transform.

        Examples
        --------
        >>> from nsr.pl import PLGraph
        >>> from nsr.networks import random_network
        >>> g = PLGraph.from_plnetwork(random_network(3, [8, 4], seed=0))
        >>> g.widths, g.is_mlp
        ([8, 4], True)
        """
        layers = [Layer({l - 1: w}, b) for l, (w, b) in enumerate(zip(net.weights[:-1], net.biases[:-1]))]
        out = Affine({len(layers) - 1: net.weights[-1]}, net.biases[-1])
        return cls(net.in_dim, layers, out)

    def to_plnetwork(self, pre_transform: bool = False) -> PLNetwork:
        """The :class:`PLNetwork` of a plain ReLU MLP graph (what today's stages read).

        Refuses graphs with skips, non-ReLU neurons, or (unless ``pre_transform``, which returns
        the network of ``g``) an output transform.

        Parameters
        ----------
        pre_transform : bool
            Accept an output transform and return the network of ``g``.

        Returns
        -------
        PLNetwork

        Raises
        ------
        NotPiecewiseAffineError
            If the graph is not a plain ReLU chain, or has a transform without ``pre_transform``.

        Examples
        --------
        >>> import torch
        >>> from nsr.pl import PLGraph
        >>> from nsr.networks import random_network
        >>> net = random_network(3, [8], seed=0)
        >>> bool(torch.equal(PLGraph.from_plnetwork(net).to_plnetwork().weights[0], net.weights[0]))
        True
        """
        if not self.is_mlp or not self.is_relu or self.encoder is not None:
            raise NotPiecewiseAffineError(
                "this graph is not a plain Linear/ReLU chain (it has skip or residual blocks or non-ReLU "
                "neurons), so it has no PLNetwork form; use the PLGraph itself")
        if not self.transform.is_identity and not pre_transform:
            raise NotPiecewiseAffineError(
                f"this graph has the output transform {self.transform.describe()}; pass pre_transform=True for "
                "the network of g and extract at graph.level(t)")
        weights = [layer.blocks[l - 1] for l, layer in enumerate(self.layers)] + [self.output.blocks[self.n_layers - 1]]
        biases = [layer.bias for layer in self.layers] + [self.output.bias]
        return PLNetwork(weights, biases)

    # ---- saving ---------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Tensor]:
        """Plain tensors (``torch.save``/``torch.load(weights_only=True)`` safe): ``in_dim``,
        ``layers.{l}.{bias,neg,pos}``, ``layers.{l}.blocks.{k}`` (``k = -1``: the input),
        ``output.bias``, ``output.blocks.{k}``, and ``transform`` ``(S, 3)`` rows
        ``(kind, scale, shift)`` with kind 0 = affine, 1 = tanh, 2 = sigmoid.

        Returns
        -------
        dict of str to Tensor
            On the CPU; :meth:`from_state_dict` reads it back.

        Examples
        --------
        >>> import tempfile, torch
        >>> from pathlib import Path
        >>> from nsr.pl import PLGraph, SkipMLP, trace
        >>> _ = torch.manual_seed(0)
        >>> g = trace(SkipMLP(in_dim=2, width=8, depth=4))
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     torch.save(g.state_dict(), Path(tmp) / "g.pt")
        ...     back = PLGraph.from_state_dict(torch.load(Path(tmp) / "g.pt", weights_only=True))
        >>> back.widths == g.widths, [layer.sources for layer in back.layers] == [layer.sources for layer in g.layers]
        (True, True)
        """
        if self.encoder is not None:
            raise NotPiecewiseAffineError(
                "a graph with an encoder has no plain state dict (the encoder is an object of its own, saved by "
                "its own code); graph.layer_state() holds the rest, and from_state_dict(sd, encoder) reads it back")
        return self.layer_state()

    def layer_state(self) -> dict[str, Tensor]:
        """:meth:`state_dict` without the encoder check: every tensor of the layers, output and
        transform (blocks of source ``ENCODED`` under key ``-2``); the encoder itself is not in it.

        Returns
        -------
        dict of str to Tensor

        Examples
        --------
        >>> from nsr.pl import as_graph
        >>> from nsr.networks import random_network
        >>> sorted(as_graph(random_network(2, [4], seed=0)).layer_state())[:3]
        ['in_dim', 'layers.0.bias', 'layers.0.blocks.-1']
        """
        out: dict[str, Tensor] = {"in_dim": torch.tensor(self.in_dim)}
        for name, aff in [*((f"layers.{l}", layer) for l, layer in enumerate(self.layers)), ("output", self.output)]:
            out[f"{name}.bias"] = aff.bias.detach().cpu()
            for k, w in aff.blocks.items():
                out[f"{name}.blocks.{k}"] = w.detach().cpu()
            if isinstance(aff, Layer):
                out[f"{name}.neg"], out[f"{name}.pos"] = aff.neg.detach().cpu(), aff.pos.detach().cpu()
        codes = {"affine": 0, "tanh": 1, "sigmoid": 2}
        rows = [[codes[s[0]], *(s[1:] if s[0] == "affine" else (1.0, 0.0))] for s in self.transform.steps]
        out["transform"] = torch.tensor(rows, dtype=torch.float64).reshape(-1, 3)
        return out

    @classmethod
    def from_state_dict(cls, sd: Mapping[str, Tensor], encoder: Any = None) -> PLGraph:
        """Inverse of :meth:`state_dict`; raises :class:`NotPiecewiseAffineError` on malformed input.

        Parameters
        ----------
        sd : mapping of str to Tensor
            As written by :meth:`state_dict` (or :meth:`layer_state`).
        encoder : object, optional
            The encoder of a graph saved by :meth:`layer_state`.

        Returns
        -------
        PLGraph

        Raises
        ------
        NotPiecewiseAffineError
            If a key is missing or a tensor is inconsistent.

        Examples
        --------
        >>> from nsr.pl import PLGraph, as_graph
        >>> from nsr.networks import random_network
        >>> PLGraph.from_state_dict(as_graph(random_network(2, [8], seed=0)).state_dict()).widths
        [8]
        """
        try:
            n_layers = len({key.split(".")[1] for key in sd if key.startswith("layers.")})

            def affine(name: str) -> tuple[dict[int, Tensor], Tensor]:
                prefix = f"{name}.blocks."
                blocks = {int(key[len(prefix):]): w for key, w in sd.items() if key.startswith(prefix)}
                return blocks, sd[f"{name}.bias"]

            layers = []
            for l in range(n_layers):
                blocks, bias = affine(f"layers.{l}")
                layers.append(Layer(blocks, bias, sd[f"layers.{l}.neg"], sd[f"layers.{l}.pos"]))
            steps = []
            for kind, scale, shift in sd["transform"].tolist():
                name = {0: "affine", 1: "tanh", 2: "sigmoid"}[int(kind)]
                steps.append(("affine", scale, shift) if name == "affine" else (name,))
            return cls(int(sd["in_dim"]), layers, Affine(*affine("output")), OutputTransform(tuple(steps)), encoder)
        except (KeyError, ValueError) as err:
            if isinstance(err, NotPiecewiseAffineError):
                raise
            raise NotPiecewiseAffineError(f"not a PLGraph state dict: {err!r}") from err


def as_graph(obj: object) -> PLGraph:
    """A :class:`PLGraph` from a graph, a :class:`PLNetwork`, an ``nn.Module`` (traced by
    :func:`nsr.pl.trace`, which checks the graph against the module's own output and refuses what
    is not piecewise affine), or anything else ``nsr.networks.as_network`` reads (state dicts, files).

    Parameters
    ----------
    obj : PLGraph, PLNetwork or network
        What to convert.

    Returns
    -------
    PLGraph
        ``obj`` itself when it is a graph.

    Raises
    ------
    NetworkError
        If ``obj`` is not a plain ReLU MLP nsr can read.

    Examples
    --------
    >>> from nsr.pl import as_graph
    >>> from nsr.networks import random_network
    >>> g = as_graph(random_network(3, [8, 4], seed=0).state_dict())
    >>> g.in_dim, g.widths, g.is_mlp
    (3, [8, 4], True)
    """
    if isinstance(obj, PLGraph):
        return obj
    if isinstance(obj, PLNetwork):
        return PLGraph.from_plnetwork(obj)
    if isinstance(obj, torch.nn.Module):
        from nsr.pl.convert import trace

        if type(obj).forward is torch.nn.Module.forward and isinstance(getattr(obj, "net", None), torch.nn.Module):
            obj = obj.net  # a wrapper without a forward of its own (a LightningModule's .net): its network runs
        return trace(obj)
    from nsr.networks import as_network

    return PLGraph.from_plnetwork(as_network(obj))


def _source_name(k: int) -> str:
    return "the input" if k == INPUT else "the encoder" if k == ENCODED else f"layer {k}"


def _validate_graph(g: PLGraph) -> None:
    if g.in_dim < 1:
        raise NotPiecewiseAffineError(f"the input dimension must be >= 1, got {g.in_dim}")
    ref = g.output.bias
    widths = {INPUT: g.in_dim}
    if g.encoder is not None:
        if int(g.encoder.in_dim) != g.in_dim:
            raise NotPiecewiseAffineError(f"the encoder reads {g.encoder.in_dim}-D points, the graph {g.in_dim}-D ones")
        widths[ENCODED] = int(g.encoder.out_dim)
    for l, aff in enumerate([*g.layers, g.output]):
        name = "the output" if l == len(g.layers) else f"layer {l}"
        tensors = [aff.bias, *aff.blocks.values()]
        if isinstance(aff, Layer):
            tensors += [aff.neg, aff.pos]
            if aff.neg.shape != aff.bias.shape or aff.pos.shape != aff.bias.shape:
                raise NotPiecewiseAffineError(f"{name}: slopes must be ({aff.n},)")
            if bool((aff.neg == aff.pos).any()):
                raise NotPiecewiseAffineError(f"{name}: a neuron with equal slopes has no breakpoint; fold it")
        if aff.bias.ndim != 1:
            raise NotPiecewiseAffineError(f"{name}: bias must be 1-D, got shape {tuple(aff.bias.shape)}")
        for t in tensors:
            if t.dtype != ref.dtype or t.device != ref.device:
                raise NotPiecewiseAffineError(f"{name}: tensors must share one dtype and device")
            if not bool(torch.isfinite(t).all()):
                raise NotPiecewiseAffineError(f"{name}: weights, biases or slopes contain NaN or inf")
        for k, w in aff.blocks.items():
            if k not in widths:
                raise NotPiecewiseAffineError(f"{name}: reads layer {k}, which is not an earlier layer")
            if w.shape != (aff.n, widths[k]):
                raise NotPiecewiseAffineError(
                    f"{name}: block from {_source_name(k)} has shape "
                    f"{tuple(w.shape)}, expected {(aff.n, widths[k])}")
        widths[l] = aff.n
    if g.output.n != 1:
        raise NotPiecewiseAffineError(f"the output must be a scalar, got {g.output.n} outputs")
