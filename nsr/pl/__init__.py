"""Continuous piecewise-affine networks: one representation, and loaders that see what a module computes.

nsr extracts exact polyhedral complexes and level sets. That is possible exactly when the network
is a *continuous piecewise-affine* (PL) function of its input: then the input space splits into
convex cells, one per activation pattern, on each of which the network is affine, and every
neuron's pre-activation is affine on every cell of the neurons before it, so its breakpoint
cuts that cell along one hyperplane. :class:`PLGraph` (``nsr.pl.graph``) is the form in which
every such network is handed to the extractor: layers of one-breakpoint neurons, each layer
affine in the input and in any earlier layers, and a scalar affine output followed by a
monotone output transform.

Accepted by :func:`trace` (``nsr.pl.convert``), and why
------------------------------------------------------
- **Affine maps**: ``nn.Linear``, ``F.linear``, ``x @ W``, ``+``/``-`` of network values and
  constants, ``*``/``/`` by constants (scalars or per-feature vectors), feature sums and means,
  feature slices ``x[:, i:j]``, ``torch.cat`` along the features (skip connections: the input
  concatenated back in), residual additions: affine maps compose into affine maps, which are
  folded into the blocks of the layers that read them (so no neuron is added for them).
- **Folded normalizations**: ``nn.BatchNorm1d`` in eval mode (running statistics: an affine
  map); weight normalization (``torch.nn.utils.parametrizations.weight_norm`` and the older
  ``torch.nn.utils.weight_norm``) is read as the weight it computes.
- **Identity at extraction**: ``nn.Dropout`` (and ``F.dropout(training=self.training)``),
  ``nn.Identity``, ``nn.Flatten`` of ``(N, F)``, dtype/device casts. The module is traced in
  eval mode; a module in training mode gets a warning.
- **One-breakpoint activations** (one neuron, one hyperplane each): ReLU (slopes 0, 1),
  LeakyReLU (a, 1), PReLU (its weights at tracing time), ``abs`` (-1, 1), and
  ``torch.maximum/minimum`` of two values (``max(a, b) = b + relu(a - b)``).
- **Two-breakpoint activations** (two neurons per feature, both hyperplanes real):
  ``clamp(z, lo, hi) = lo + relu(z - lo) - relu(z - hi)``, hence ``hardtanh`` and ``ReLU6``;
  one-sided clamps are one neuron.
- **A latent code** ``trace(module, latent=code)``: the module receives ``cat([code, x])``
  (DeepSDF's auto-decoder convention; ``latent_last=True`` for ``cat([x, code])``); the code is
  a constant, folded into the biases of the layers that read it.
- **A monotone output transform**: ``tanh``, ``sigmoid`` and scalings/shifts of the scalar
  output after them. These are not piecewise affine, but they are strictly monotone, so the
  level set ``{T(g) = t}`` of the module is the level set ``{g = T^-1(t)}`` of the PL output
  ``g``. :meth:`PLGraph.level` maps a module level to a level of ``g``: ``tanh`` gives
  ``atanh(t)`` (so ``level=0`` of a tanh network is ``level=0`` of ``g``), ``sigmoid``
  ``logit(t)``, ``s * u + c`` (``s > 0``) gives ``(t - c) / s``. A level outside the
  transform's open range (``|t| >= 1`` after ``tanh``) has an empty level set and raises a
  ``ValueError``. A *decreasing* transform (a negative scale after a tanh/sigmoid) is turned
  into an increasing one by negating ``g`` (``-tanh(u) = tanh(-u)``), so that "inside" (below
  the level) means the same for the module and for ``g``. Scalings before the transform are
  ordinary affine maps and are folded into ``g``.

Refused (one :class:`NotPiecewiseAffineError` naming the operation, the fx node, the module path
and the source line): any other nonlinearity (sine, softplus, GELU, SiLU, ELU, LayerNorm,
attention, ...), products of two network values (``x * x``), ``tanh``/``sigmoid`` of hidden
values, operations after the output transform other than monotone ones, data-dependent
branches (``if x.sum() > 0``: not one fixed graph), code that reads the batch shape, and
BatchNorm without running statistics. After building the graph, :func:`trace` compares it with
the module's own output at seeded points (float64 and the module's dtype) and refuses any
mismatch (e.g. forward hooks, which fx does not see), so nothing is extracted that the module
does not compute.

ONNX files (:func:`from_onnx`, needs the optional ``onnx`` package) are read as data: their nodes
(Gemm, MatMul, Add, Sub, Mul/Div by constants, Relu, LeakyRelu, PRelu, Abs, Clip, Max/Min, Concat,
BatchNormalization, Dropout, Identity, Flatten, Tanh/Sigmoid at the output, output reshapes) are
mapped onto torch operations and traced and checked like a module; other operators are refused,
naming the node.

Bounds over boxes (interval arithmetic and CROWN through the blocks) live in ``nsr.pl.bounds``.

Plain Linear/ReLU chains convert both ways with :class:`nsr.networks.PLNetwork`
(:meth:`PLGraph.from_plnetwork`, :meth:`PLGraph.to_plnetwork`), so today's stages keep working.
"""

from __future__ import annotations

from nsr.pl.convert import check_graph, module_inputs, trace
from nsr.pl.graph import INPUT, Affine, Layer, NotPiecewiseAffineError, OutputTransform, PLGraph, as_graph
from nsr.pl.models import ResidualMLP, SkipMLP
from nsr.pl.onnx_io import from_onnx

__all__ = [
    "INPUT",
    "Affine",
    "Layer",
    "NotPiecewiseAffineError",
    "OutputTransform",
    "PLGraph",
    "ResidualMLP",
    "SkipMLP",
    "as_graph",
    "check_graph",
    "from_onnx",
    "module_inputs",
    "trace",
]
