"""Trace an ``nn.Module`` into a :class:`~nsr.pl.graph.PLGraph`, refusing what is not piecewise affine.

:func:`trace` runs ``torch.fx.symbolic_trace`` on an eval-mode float64 copy of the module and
interprets its nodes symbolically: every value is either a *constant* (weights, folded by
running the module's own code on them) or a *network value*, ``(N, F)`` features affine in the
input and in the neurons created so far. Affine operations compose into the network value;
each piecewise-linear activation creates neurons; ``tanh``/``sigmoid`` and positive scalings of
the scalar output become the output transform. Any other operation on a network value is
refused with one :class:`~nsr.pl.graph.NotPiecewiseAffineError` naming the operation, the fx
node, the module path and the source line.

The graph is then checked against the module's own output (:func:`check_graph`) at seeded
points, in float64 and in the module's dtype, and refused on any mismatch: hooks (which fx does
not see), in-place aliasing or Python-side state can make fx's view differ from what the module
computes, and nothing is extracted that the module does not compute.
"""

from __future__ import annotations

import copy
import linecache
import operator
import os
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

from nsr.pl.encoding import SimplexGridEncoder, SimplexGridEncoding
from nsr.pl.graph import INPUT, Affine, Layer, NotPiecewiseAffineError, OutputTransform, PLGraph

try:
    from nsr.pl.graph import ENCODED
except ImportError:  # until nsr.pl.graph defines it (PROTOCOL.md: the encoder's features are source -2)
    ENCODED = -2

# ---- symbolic values ----------------------------------------------------------------------------


@dataclass
class _Expr:
    """A network value: ``(N, F)`` features, ``sum_u blocks[u] @ a_u + bias`` over units ``u``
    (``INPUT``: the input ``x``; ``ENCODED``: the encoder's features). ``squeezed``: the value is
    ``(N,)`` (then ``F == 1``)."""

    blocks: dict[int, Tensor]
    bias: Tensor
    squeezed: bool = False

    @property
    def n(self) -> int:
        return int(self.bias.shape[0])

    def rows(self, idx: Tensor) -> _Expr:
        return _Expr({u: w[idx] for u, w in self.blocks.items()}, self.bias[idx])

    def scale(self, s: Tensor) -> _Expr:
        """Features multiplied by ``s`` (scalar or ``(F,)``)."""
        s = s.reshape(-1) if s.ndim else s
        col = s[:, None] if s.ndim else s
        return _Expr({u: w * col for u, w in self.blocks.items()}, self.bias * s, self.squeezed)

    def shift(self, c: Tensor) -> _Expr:
        return _Expr(dict(self.blocks), self.bias + c.reshape(-1) if c.ndim else self.bias + c, self.squeezed)

    def matmul(self, m: Tensor) -> _Expr:
        """``value @ m`` for ``m`` ``(F, G)``."""
        return _Expr({u: m.T @ w for u, w in self.blocks.items()}, self.bias @ m)


def _add(a: _Expr, b: _Expr) -> _Expr:
    if a.n != b.n and min(a.n, b.n) != 1:
        raise ValueError(f"feature counts {a.n} and {b.n} do not broadcast")
    n = max(a.n, b.n)
    blocks = {u: w.expand(n, -1) for u, w in a.blocks.items()}
    for u, w in b.blocks.items():
        blocks[u] = blocks[u] + w if u in blocks else w.expand(n, -1)
    return _Expr(blocks, a.bias + b.bias, a.squeezed and b.squeezed)


@dataclass
class _Out:
    """A monotone transform of a scalar network value (only more transforms may follow)."""

    expr: _Expr
    transform: OutputTransform
    squeezed: bool = False


@dataclass
class _Unit:
    """Neurons created by one activation: pre-activations ``expr`` and slopes."""

    expr: _Expr
    neg: Tensor
    pos: Tensor
    depth: int


@dataclass
class _Builder:
    """Units created while interpreting the fx graph."""

    dtype: torch.dtype
    device: torch.device
    units: list[_Unit] = field(default_factory=list)
    encoder: SimplexGridEncoder | None = None
    encoding: SimplexGridEncoding | None = None  # the module the encoder was built from
    live: bool = False  # keep the autograd graph of the module's parameters (trace(live=True))

    def param(self, t: Tensor) -> Tensor:
        """A parameter as the graph holds it: detached, or itself (cast differentiably) when live."""
        return t if self.live else t.detach()

    def depth(self, e: _Expr) -> int:
        return max((self.units[u].depth for u in e.blocks if u >= 0), default=0)

    def encode(self, m: SimplexGridEncoding, x: _Expr, in_dim: int) -> _Expr:
        """The features of a simplex-grid encoding of the input: the graph's encoder (its grid
        features, source ``ENCODED``) and, with ``include_input``, the raw coordinates (``INPUT``)."""
        eye = torch.eye(in_dim, dtype=self.dtype, device=self.device)
        if (set(x.blocks) != {INPUT} or x.n != in_dim or not bool(torch.equal(x.blocks[INPUT], eye))
                or bool(x.bias.any())):
            raise ValueError(f"{type(m).__name__} must read the network input x itself (its planes are planes of the "
                             "input space); an encoding of a computed value or of a latent code is not supported")
        if m.in_dim != in_dim:
            raise ValueError(f"{type(m).__name__} has in_dim={m.in_dim} but the network input has {in_dim} coordinates")
        if self.encoder is None:
            table = m.table.to(dtype=self.dtype, device=self.device) if self.live else \
                m.table.detach().to(dtype=self.dtype, device=self.device).clone()
            self.encoder, self.encoding = SimplexGridEncoder(m, include_input=False, table=table), m
        elif self.encoding is not m:
            raise ValueError("a second simplex-grid encoding: nsr extracts graphs with one encoder")
        n_grid = self.encoder.out_dim
        n_out = n_grid + (in_dim if m.include_input else 0)
        enc_block = torch.zeros(n_out, n_grid, dtype=self.dtype, device=self.device)
        enc_block[:n_grid] = torch.eye(n_grid, dtype=self.dtype, device=self.device)
        blocks = {ENCODED: enc_block}
        if m.include_input:
            blocks[INPUT] = torch.cat([torch.zeros(n_grid, in_dim, dtype=self.dtype, device=self.device), eye])
        return _Expr(blocks, torch.zeros(n_out, dtype=self.dtype, device=self.device))

    def pl1(self, e: _Expr, neg: Tensor | float, pos: Tensor | float) -> _Expr:
        """``where(e > 0, pos * e, neg * e)`` featurewise, making neurons only where it has a breakpoint."""
        n = e.n
        neg_t = torch.as_tensor(neg, dtype=self.dtype, device=self.device).expand(n).clone()
        pos_t = torch.as_tensor(pos, dtype=self.dtype, device=self.device).expand(n).clone()
        moving = torch.zeros(n, dtype=torch.bool, device=self.device)
        for w in e.blocks.values():
            moving |= (w != 0).any(1)
        kink = moving & (neg_t != pos_t)
        # constant rows: the activation of the bias; rows without a kink: a scaling
        const_rows = torch.where(e.bias > 0, pos_t * e.bias, neg_t * e.bias)
        linear = e.scale(torch.where(moving & ~kink, pos_t, torch.zeros_like(pos_t)))
        blocks = {u: w for u, w in linear.blocks.items() if bool((w != 0).any())}
        out = _Expr(blocks, torch.where(moving, linear.bias, const_rows))
        idx = torch.nonzero(kink).squeeze(1)
        if len(idx):
            unit = _Unit(e.rows(idx), neg_t[idx], pos_t[idx], self.depth(e) + 1)
            self.units.append(unit)
            sel = torch.zeros(n, len(idx), dtype=self.dtype, device=self.device)
            sel[idx, torch.arange(len(idx), device=self.device)] = 1.0
            out.blocks[len(self.units) - 1] = sel
        out.squeezed = e.squeezed
        return out

    def relu(self, e: _Expr) -> _Expr:
        return self.pl1(e, 0.0, 1.0)

    def clamp(self, e: _Expr, lo: Tensor | float | None, hi: Tensor | float | None) -> _Expr:
        """``clamp(e, lo, hi) = lo + relu(e - lo) - relu(e - hi)``: two neurons per feature, both real
        breakpoints; ``max(e, lo) = lo + relu(e - lo)``, ``min(e, hi) = hi - relu(hi - e)``."""
        if lo is not None and hi is not None:
            lo_t, hi_t = self.const(lo), self.const(hi)
            if bool((lo_t > hi_t).any()):
                raise ValueError("clamp with min > max")
            low = self.relu(e.shift(-lo_t))
            high = self.relu(e.shift(-hi_t))
            return _add(low, high.scale(torch.tensor(-1.0, dtype=self.dtype))).shift(lo_t)
        if lo is not None:
            return self.relu(e.shift(-self.const(lo))).shift(self.const(lo))
        if hi is not None:
            neg = e.scale(torch.tensor(-1.0, dtype=self.dtype, device=self.device))
            return self.relu(neg.shift(self.const(hi))).scale(torch.tensor(-1.0, dtype=self.dtype)).shift(
                self.const(hi))
        return e

    def const(self, c: object) -> Tensor:
        return torch.as_tensor(c, dtype=self.dtype, device=self.device)

    def input(self, in_dim: int, latent: Tensor | None, latent_last: bool) -> _Expr:
        eye = torch.eye(in_dim, dtype=self.dtype, device=self.device)
        if latent is None:
            return _Expr({INPUT: eye}, torch.zeros(in_dim, dtype=self.dtype, device=self.device))
        code = latent.detach().to(dtype=self.dtype, device=self.device).reshape(-1)
        zeros_w = torch.zeros(len(code), in_dim, dtype=self.dtype, device=self.device)
        zeros_b = torch.zeros(in_dim, dtype=self.dtype, device=self.device)
        if latent_last:
            return _Expr({INPUT: torch.cat([eye, zeros_w])}, torch.cat([zeros_b, code]))
        return _Expr({INPUT: torch.cat([zeros_w, eye])}, torch.cat([code, zeros_b]))

    def graph(self, in_dim: int, out: _Expr, transform: OutputTransform) -> PLGraph:
        """Group units by depth into layers (units of one depth read only shallower ones) and
        assemble each layer's blocks; all-zero blocks are dropped."""
        n_layers = max((u.depth for u in self.units), default=0)
        place: dict[int, tuple[int, int]] = {INPUT: (INPUT, 0), ENCODED: (ENCODED, 0)}  # unit -> (layer, first row)
        widths = [0] * n_layers
        for i, unit in enumerate(self.units):
            l = unit.depth - 1
            place[i] = (l, widths[l])
            widths[l] += unit.expr.n
        all_widths = {INPUT: in_dim, **dict(enumerate(widths))}
        if self.encoder is not None:
            all_widths[ENCODED] = self.encoder.out_dim

        def assemble(rows: int, parts: list[tuple[int, _Expr]]) -> tuple[dict[int, Tensor], Tensor]:
            blocks: dict[int, Tensor] = {}
            bias = torch.zeros(rows, dtype=self.dtype, device=self.device)
            for r0, e in parts:
                bias[r0:r0 + e.n] = e.bias
                for u, w in e.blocks.items():
                    k, c0 = place[u]
                    if k not in blocks:
                        blocks[k] = torch.zeros(rows, all_widths[k], dtype=self.dtype, device=self.device)
                    blocks[k][r0:r0 + e.n, c0:c0 + w.shape[1]] += w
            return {k: w for k, w in blocks.items() if bool((w != 0).any())}, bias

        layers = []
        for l in range(n_layers):
            members = [(place[i][1], u) for i, u in enumerate(self.units) if u.depth - 1 == l]
            blocks, bias = assemble(widths[l], [(r0, u.expr) for r0, u in members])
            layers.append(Layer(blocks, bias, torch.cat([u.neg for _, u in members]),
                                torch.cat([u.pos for _, u in members])))
        blocks, bias = assemble(1, [(0, out)])
        if self.encoder is None:
            return PLGraph(in_dim, layers, Affine(blocks, bias), transform)
        return PLGraph(in_dim, layers, Affine(blocks, bias), transform, encoder=self.encoder)


# ---- where a node sits ----------------------------------------------------------------------------

def _where(node: fx.Node) -> str:
    """``fx node 'relu_1' (module 'block.0', file.py:12: return torch.sin(x))``."""
    parts = []
    stack = node.meta.get("nn_module_stack")
    if node.op == "call_module":
        parts.append(f"module '{node.target}'")
    elif stack:
        path = list(stack)[-1]
        if path:
            parts.append(f"in module '{path}'")
    source = node.meta.get("nsr_source")
    if source:
        parts.append(f"{os.path.basename(source[0])}:{source[1]}: {source[2]}")
    return f"fx node '{node.name}'" + (f" ({', '.join(parts)})" if parts else "")


def _refuse(node: fx.Node, what: str, why: str = "") -> NotPiecewiseAffineError:
    why = f": {why}" if why else ""
    return NotPiecewiseAffineError(
        f"{what} at {_where(node)} is not piecewise affine{why}. nsr extracts continuous piecewise-affine "
        "networks only (affine maps, concatenation, addition, ReLU/LeakyReLU/PReLU/abs/clamp, "
        "eval-mode BatchNorm, dropout, and a tanh/sigmoid/positive scaling of the output; see nsr.pl)")


def _op_name(node: fx.Node, module: nn.Module | None = None) -> str:
    if node.op == "call_module" and module is not None:
        return type(module).__name__
    if node.op == "call_method":
        return f"Tensor.{node.target}"
    name = getattr(node.target, "__name__", str(node.target))
    mod = getattr(node.target, "__module__", "") or ""
    if mod.startswith("torch.nn.functional"):
        return f"F.{name}"
    if mod.startswith("torch") or "torch" in repr(node.target):
        return f"torch.{name}"
    return name


# ---- the interpreter --------------------------------------------------------------------------

_NET = (_Expr, _Out)

_RELU = {torch.relu, F.relu, torch.relu_, F.relu_, "relu", "relu_"}
_LEAKY = {F.leaky_relu, F.leaky_relu_, "leaky_relu"}
_ABS = {torch.abs, operator.abs, "abs", "abs_", torch.absolute, "absolute"}
_CLAMP = {torch.clamp, torch.clip, "clamp", "clip", "clamp_", "clip_"}
_CLAMP_MIN = {torch.clamp_min, "clamp_min", "clamp_min_"}
_CLAMP_MAX = {torch.clamp_max, "clamp_max", "clamp_max_"}
_HARDTANH = {F.hardtanh, F.hardtanh_, "hardtanh"}
_RELU6 = {F.relu6, "relu6"}
_TANH = {torch.tanh, F.tanh, "tanh", "tanh_"}
_SIGMOID = {torch.sigmoid, F.sigmoid, "sigmoid", "sigmoid_"}
_ADD = {operator.add, operator.iadd, torch.add, "add", "add_", "__add__", "__radd__"}
_SUB = {operator.sub, operator.isub, torch.sub, torch.subtract, "sub", "sub_", "subtract", "__sub__"}
_MUL = {operator.mul, operator.imul, torch.mul, torch.multiply, "mul", "mul_", "multiply", "__mul__", "__rmul__"}
_DIV = {operator.truediv, operator.itruediv, torch.div, torch.true_divide, "div", "div_", "true_divide",
        "__truediv__"}
_NEG = {operator.neg, torch.neg, torch.negative, "neg", "negative", "neg_"}
_POS = {operator.pos}
_MATMUL = {operator.matmul, torch.matmul, torch.mm, "matmul", "mm", "__matmul__"}
_CAT = {torch.cat, torch.concat, torch.concatenate, torch.hstack}
_SHAPE = {"squeeze", "unsqueeze", "view", "reshape", "flatten", torch.squeeze, torch.unsqueeze, torch.reshape,
          torch.flatten}
_NOOP = {"contiguous", "clone", "detach", "float", "double", "to", torch.clone}
_DROPOUT = {F.dropout, F.alpha_dropout, F.feature_alpha_dropout, F.dropout1d, torch.dropout}
_MAXIMUM = {torch.maximum, torch.max, torch.fmax, "maximum", "max", "fmax"}
_MINIMUM = {torch.minimum, torch.min, torch.fmin, "minimum", "min", "fmin"}
_SUM = {torch.sum, "sum", torch.mean, "mean"}
_SIZE = {"size", "dim", "numel", "shape"}
_NEW = {"new_tensor", "new_zeros", "new_ones", "new_full"}

_AFTER_OUT = ("tanh and sigmoid are accepted only as the last steps of a scalar output, followed by nothing but "
              "monotone scalings and shifts")
_DROPOUT_MODULES = (nn.Dropout, nn.Dropout1d, nn.AlphaDropout, nn.FeatureAlphaDropout)


class _Interpreter:
    def __init__(self, gm: fx.GraphModule, builder: _Builder, x0: _Expr, note: str = "") -> None:
        self.gm, self.b, self.x0, self.note = gm, builder, x0, note
        self.modules = dict(gm.named_modules())
        self.env: dict[fx.Node, object] = {}
        self.n_placeholders = 0

    def run(self) -> tuple[_Expr, OutputTransform]:
        for node in self.gm.graph.nodes:
            if node.op == "output":
                return self.finish(node)
            try:
                self.env[node] = self.node(node)
            except NotPiecewiseAffineError:
                raise
            except (ValueError, RuntimeError, TypeError, IndexError) as err:
                raise NotPiecewiseAffineError(
                    f"cannot interpret {_op_name(node)} at {_where(node)}: {err}{self.note}") from err
        raise NotPiecewiseAffineError("the traced module has no output")

    def finish(self, node: fx.Node) -> tuple[_Expr, OutputTransform]:
        value = self.load(node.args[0])
        if isinstance(value, _Out):
            if value.expr.n != 1:
                raise _refuse(node, "a non-scalar output", f"it has {value.expr.n} features")
            return value.expr, value.transform
        if not isinstance(value, _Expr):
            raise NotPiecewiseAffineError(
                f"the module's output at {_where(node)} is {type(value).__name__}, not one network value "
                "(tuple, dict or constant outputs are not supported)")
        if value.n != 1:
            raise NotPiecewiseAffineError(f"the module's output has {value.n} features; nsr extracts scalar "
                                          "networks only")
        return value, OutputTransform()

    def load(self, arg: object) -> object:
        return fx.node.map_arg(arg, lambda n: self.env[n])

    def node(self, node: fx.Node) -> object:
        if node.op == "placeholder":
            self.n_placeholders += 1
            if self.n_placeholders == 1:
                return self.x0
            if node.args:  # a default value
                return node.args[0]
            raise NotPiecewiseAffineError(
                f"forward takes a second input '{node.target}' ({_where(node)}); nsr traces modules of one "
                "input x. Pass a fixed latent code with trace(module, latent=code) (concatenated to x)")
        if node.op == "get_attr":
            obj: object = self.gm
            for part in str(node.target).split("."):
                obj = getattr(obj, part)
            if not isinstance(obj, Tensor):
                return obj
            # live: floating tensors in the builder's dtype (a differentiable cast), so that constants
            # are folded in float64 as in the default trace of a float64 copy
            return obj.to(self.b.dtype) if self.b.live and obj.is_floating_point() else self.b.param(obj)
        args, kwargs = self.load(node.args), self.load(node.kwargs)
        module = self.modules[node.target] if node.op == "call_module" else None
        uses_net = any(isinstance(a, _NET) for a in _flat(args, kwargs))
        if not uses_net:
            return self.constant(node, module, args, kwargs)
        if module is not None:
            return self.call_module(node, module, args, kwargs)
        return self.call(node, node.target, args, kwargs)

    def constant(self, node: fx.Node, module: nn.Module | None, args: tuple, kwargs: dict) -> object:
        """Run an operation on constants only (weights): the module's own code, folded."""
        if module is not None:
            return module(*args, **kwargs)
        if node.op == "call_method":
            return getattr(args[0], node.target)(*args[1:], **kwargs)
        return node.target(*args, **kwargs)

    # -- modules
    def call_module(self, node: fx.Node, m: nn.Module, args: tuple, kwargs: dict) -> object:
        x = args[0] if args else kwargs.get("input")
        if len(args) + len(kwargs) != 1 or not isinstance(x, _NET):
            raise _refuse(node, type(m).__name__, "it takes several network inputs")
        name = type(m).__name__
        if isinstance(x, _Out):
            if isinstance(m, nn.Tanh):
                return _Out(x.expr, x.transform.then("tanh"), x.squeezed)
            if isinstance(m, nn.Sigmoid):
                return _Out(x.expr, x.transform.then("sigmoid"), x.squeezed)
            if isinstance(m, (nn.Identity, *_DROPOUT_MODULES)):
                return x
            raise _refuse(node, f"{name} after a tanh/sigmoid output transform", _AFTER_OUT)
        if isinstance(m, SimplexGridEncoding):
            return self.b.encode(m, x, int(self.x0.blocks[INPUT].shape[1]))
        if isinstance(m, nn.Linear):
            w, bias = _linear_params(m, self.b.live)
            return self.linear(x, w, bias)
        if isinstance(m, nn.ReLU):
            return self.b.relu(x)
        if isinstance(m, nn.LeakyReLU):
            return self.b.pl1(x, float(m.negative_slope), 1.0)
        if isinstance(m, nn.PReLU):
            return self.b.pl1(x, self.channel_param(self.b.param(m.weight), x), 1.0)
        if isinstance(m, nn.Hardtanh):  # ReLU6 too
            return self.b.clamp(x, float(m.min_val), float(m.max_val))
        if isinstance(m, (nn.Identity, *_DROPOUT_MODULES)):
            return x
        if isinstance(m, nn.Flatten):
            if m.start_dim in (1, -1) and m.end_dim == -1 and not x.squeezed:
                return x
            raise _refuse(node, f"Flatten(start_dim={m.start_dim}, end_dim={m.end_dim})", "it reshapes the batch")
        if isinstance(m, nn.BatchNorm1d):
            return self.batchnorm(node, m, x)
        if isinstance(m, (nn.Tanh, nn.Sigmoid)):
            return self.monotone(node, "tanh" if isinstance(m, nn.Tanh) else "sigmoid", x)
        raise _refuse(node, name)

    def linear(self, x: _Expr, w: Tensor, bias: Tensor | None) -> _Expr:
        if x.squeezed:
            raise ValueError("a Linear layer on a (N,) value")
        if w.shape[1] != x.n:
            raise ValueError(f"a Linear layer of {w.shape[1]} inputs receives {x.n} features (check in_dim and "
                             "latent: trace sees in_dim coordinates, after the latent code if any)")
        out = x.matmul(w.T.to(self.b.dtype))
        return out.shift(bias.to(self.b.dtype)) if bias is not None else out

    def batchnorm(self, node: fx.Node, m: nn.BatchNorm1d, x: _Expr) -> _Expr:
        if m.training or m.running_mean is None or m.running_var is None:
            raise _refuse(node, "BatchNorm1d in training mode or without running statistics",
                          "it normalizes by the statistics of the batch")
        scale = 1.0 / torch.sqrt(m.running_var.to(self.b.dtype) + m.eps)
        if m.weight is not None:
            scale = scale * self.b.param(m.weight).to(self.b.dtype)
        shift = -m.running_mean.to(self.b.dtype) * scale
        if m.bias is not None:
            shift = shift + self.b.param(m.bias).to(self.b.dtype)
        return x.scale(scale).shift(shift)

    def channel_param(self, w: Tensor, x: _Expr) -> Tensor:
        w = w.to(self.b.dtype).reshape(-1)
        if len(w) not in (1, x.n):
            raise ValueError(f"{len(w)} PReLU weights for {x.n} features")
        return w.expand(x.n)

    def monotone(self, node: fx.Node, kind: str, x: _Expr) -> _Out:
        if x.n != 1:
            raise _refuse(node, kind, f"{kind} of a hidden value ({x.n} features) is not piecewise affine; it is "
                          "accepted only as a monotone transform of the scalar output")
        return _Out(x, OutputTransform().then(kind), x.squeezed)

    # -- functions and methods
    def call(self, node: fx.Node, target: object, args: tuple, kwargs: dict) -> object:
        try:
            key_hit = target in _ALL_KNOWN
        except TypeError:  # unhashable target
            key_hit = False
        if target is getattr or target in _SIZE:
            raise _refuse(node, "reading the shape of a network value (x.shape / x.size())",
                          "nsr cannot trace code that depends on the batch shape; pass latent codes with "
                          "trace(module, latent=code)")
        if target in _NEW:  # a constant made with the value's dtype, e.g. h.new_tensor(0.05)
            if any(isinstance(a, _NET) for a in _flat(args[1:], kwargs)):
                raise _refuse(node, _op_name(node))
            proto = torch.zeros((), dtype=self.b.dtype, device=self.b.device)
            return getattr(proto, target)(*args[1:], **kwargs)
        if not key_hit:
            if any(isinstance(a, _Out) for a in _flat(args, kwargs)):
                raise _refuse(node, f"{_op_name(node)} after a tanh/sigmoid output transform", _AFTER_OUT)
            raise _refuse(node, _op_name(node))
        x = args[0] if args else next(iter(kwargs.values()))
        if target in _ADD or target in _SUB:
            return self.add(node, args, kwargs, sub=target in _SUB)
        if target in _MUL:
            return self.mul(node, args[0], args[1])
        if target in _DIV:
            if isinstance(args[1], _NET):
                raise _refuse(node, "division by a network value")
            return self.mul(node, args[0], 1.0 / self.b.const(args[1]))
        if target in _NEG:
            return self.mul(node, x, -1.0)
        if target in _POS or target in _NOOP:
            return self.noop(node, target, args, kwargs)
        if target in _SHAPE:
            return self.reshape(node, target, x, args[1:], kwargs)
        if target in _TANH or target in _SIGMOID:
            kind = "tanh" if target in _TANH else "sigmoid"
            if isinstance(x, _Out):
                return _Out(x.expr, x.transform.then(kind), x.squeezed)
            return self.monotone(node, kind, x)
        if isinstance(x, _Out) or any(isinstance(a, _Out) for a in _flat(args, kwargs)):
            raise _refuse(node, f"{_op_name(node)} after a tanh/sigmoid output transform", _AFTER_OUT)
        if target in _CAT:
            return self.cat(node, args, kwargs)
        if target == operator.getitem:
            return self.getitem(node, x, args[1])
        if target in _MATMUL:
            if isinstance(args[1], _NET) or not isinstance(x, _Expr):
                raise _refuse(node, "a product of two network values" if isinstance(args[1], _NET)
                              else "a matrix product on the left of a network value")
            m = self.b.const(args[1])
            if m.ndim == 2:
                return x.matmul(m)
            out = x.matmul(m[:, None])  # x @ v: one value per point, (N,)
            out.squeezed = True
            return out
        if target == F.linear:
            w = args[1] if len(args) > 1 else kwargs["weight"]
            bias = args[2] if len(args) > 2 else kwargs.get("bias")
            if isinstance(w, _NET) or isinstance(bias, _NET):
                raise _refuse(node, "F.linear with network-valued weights")
            return self.linear(x, self.b.param(w), self.b.param(bias) if bias is not None else None)
        if target in _DROPOUT:
            training = kwargs.get("training", args[2] if len(args) > 2 else target is not torch.dropout)
            if training and float(kwargs.get("p", args[1] if len(args) > 1 else 0.5)) > 0:
                raise _refuse(node, f"{_op_name(node)} with training=True", "it is random; pass "
                              "training=self.training so that it is the identity in eval mode")
            return x
        if target in _SUM:
            return self.feature_sum(node, target, x, args[1:], kwargs)
        if target in _MAXIMUM or target in _MINIMUM:
            return self.extremum(node, target in _MAXIMUM, args, kwargs)
        return self.activation(node, target, x, args[1:], kwargs)

    def activation(self, node: fx.Node, target: object, x: _Expr, rest: tuple, kwargs: dict) -> _Expr:
        if target in _RELU:
            return self.b.relu(x)
        if target in _LEAKY:
            slope = kwargs.get("negative_slope", rest[0] if rest else 0.01)
            return self.b.pl1(x, float(slope), 1.0)
        if target == F.prelu:
            return self.b.pl1(x, self.channel_param(kwargs.get("weight", rest[0] if rest else None), x), 1.0)
        if target in _ABS:
            return self.b.pl1(x, -1.0, 1.0)
        if target in _HARDTANH:
            lo = kwargs.get("min_val", rest[0] if rest else -1.0)
            hi = kwargs.get("max_val", rest[1] if len(rest) > 1 else 1.0)
            return self.b.clamp(x, lo, hi)
        if target in _RELU6:
            return self.b.clamp(x, 0.0, 6.0)
        if target in _CLAMP:
            lo = kwargs.get("min", rest[0] if rest else None)
            hi = kwargs.get("max", rest[1] if len(rest) > 1 else None)
            return self.b.clamp(x, self.const_arg(node, lo), self.const_arg(node, hi))
        if target in _CLAMP_MIN:
            return self.b.clamp(x, self.const_arg(node, kwargs.get("min", rest[0] if rest else None)), None)
        if target in _CLAMP_MAX:
            return self.b.clamp(x, None, self.const_arg(node, kwargs.get("max", rest[0] if rest else None)))
        raise _refuse(node, _op_name(node))

    def const_arg(self, node: fx.Node, c: object) -> object:
        if isinstance(c, _NET):
            raise _refuse(node, f"{_op_name(node)} with network-valued bounds", "use torch.maximum/minimum")
        return c

    def noop(self, node: fx.Node, target: object, args: tuple, kwargs: dict) -> object:
        """Copies and dtype/device casts: the same value (nsr evaluates in its own dtype)."""
        return args[0]

    def add(self, node: fx.Node, args: tuple, kwargs: dict, sub: bool) -> object:
        a, b = args[0], args[1] if len(args) > 1 else kwargs["other"]
        alpha = kwargs.get("alpha", 1)
        sign = -alpha if sub else alpha
        if isinstance(a, _Out) or isinstance(b, _Out):
            if isinstance(a, _NET) and isinstance(b, _NET):
                raise _refuse(node, "a sum of a tanh/sigmoid output and another network value")
            if isinstance(a, _Out):
                return _Out(a.expr, a.transform.then("affine", 1.0, float(sign * self.b.const(b))), a.squeezed)
            # c - T(g) = c + (-1) * T(g)
            neg = self.mul(node, b, float(sign))
            return _Out(neg.expr, neg.transform.then("affine", 1.0, float(self.b.const(a))), neg.squeezed)
        if isinstance(a, _Expr) and isinstance(b, _Expr):
            return _add(a, b.scale(self.b.const(sign)))
        if isinstance(a, _Expr):
            return a.shift(self.const_vector(b, a.n) * sign)
        out = b.scale(self.b.const(sign)).shift(self.const_vector(a, b.n))
        out.squeezed = b.squeezed
        return out

    def const_vector(self, c: object, n: int) -> Tensor:
        """A constant operand of a featurewise operation: a scalar, or ``(F,)`` / ``(1, F)``."""
        t = self.b.const(c)
        if t.numel() == 1:
            return t.reshape(())
        if t.ndim <= 2 and t.shape[-1] == n and t.numel() == n:
            return t.reshape(n)
        raise ValueError(f"a constant of shape {tuple(t.shape)} does not act featurewise on {n} features "
                         "(it would depend on the batch)")

    def mul(self, node: fx.Node, a: object, b: object) -> object:
        if isinstance(a, _NET) and isinstance(b, _NET):
            raise _refuse(node, "multiplication of two network values (x * x)",
                          "a product of network values is quadratic, not affine")
        if not isinstance(a, _NET):
            a, b = b, a
        if isinstance(a, _Out):
            s = float(self.b.const(b))
            if s > 0:
                return _Out(a.expr, a.transform.then("affine", s, 0.0), a.squeezed)
            if s < 0:
                return _Out(*_negate_out(a.expr, a.transform, -s), a.squeezed)
            raise _refuse(node, "multiplying the output by 0", "the output would be constant")
        return a.scale(self.const_vector(b, a.n))

    def reshape(self, node: fx.Node, target: object, x: object, rest: tuple, kwargs: dict) -> object:
        n = x.expr.n if isinstance(x, _Out) else x.n
        squeezed = x.squeezed
        name = target if isinstance(target, str) else target.__name__
        dims = [d for d in rest if not isinstance(d, (tuple, list))] + [d for t in rest if isinstance(t, (tuple, list))
                                                                        for d in t]
        dims += list(kwargs.values())
        if name == "squeeze":
            ok = n == 1 and (not dims or dims[0] in (-1, 1))
            new = True if ok else None
            if not ok and n > 1 and dims and dims[0] in (-1, 1):
                new = squeezed
        elif name == "unsqueeze":
            new = False if squeezed and dims and dims[0] in (-1, 1) else None
        elif name == "flatten":
            new = (True if n == 1 else None) if not dims or dims[0] == 0 else squeezed if dims[0] in (1, -1) else None
        else:  # view / reshape
            if dims in ([-1],) and n == 1:
                new = True
            elif len(dims) == 2 and dims[0] == -1 and dims[1] in (n, -1):
                new = False
            else:
                new = None
        if new is None:
            raise _refuse(node, f"Tensor.{name}{tuple(dims)}", f"on a value of {n} features per point it mixes "
                          "points or features; only view(-1)/squeeze(-1)/unsqueeze(-1) of the output and "
                          "view(-1, F) are accepted")
        if isinstance(x, _Out):
            return _Out(x.expr, x.transform, new)
        return _Expr(x.blocks, x.bias, new)

    def cat(self, node: fx.Node, args: tuple, kwargs: dict) -> _Expr:
        parts = args[0]
        dim = kwargs.get("dim", args[1] if len(args) > 1 else 0)
        if node.target is torch.hstack:
            dim = 1
        if not all(isinstance(p, _Expr) and not p.squeezed for p in parts):
            raise _refuse(node, "torch.cat of a constant and a network value" if not all(
                isinstance(p, _NET) for p in parts) else "torch.cat of (N,) values",
                "concatenate (N, F) network values along the features; pass a latent code with "
                "trace(module, latent=code)")
        if dim not in (1, -1):
            raise _refuse(node, f"torch.cat along dim {dim}", "it concatenates points, not features")
        units = {u for p in parts for u in p.blocks}
        blocks = {}
        for u in units:
            width = next(p.blocks[u].shape[1] for p in parts if u in p.blocks)
            blocks[u] = torch.cat([p.blocks[u] if u in p.blocks else torch.zeros(
                p.n, width, dtype=self.b.dtype, device=self.b.device) for p in parts])
        return _Expr(blocks, torch.cat([p.bias for p in parts]))

    def getitem(self, node: fx.Node, x: _Expr, idx: object) -> _Expr:
        if not isinstance(idx, tuple) or len(idx) != 2 or not (idx[0] is Ellipsis or idx[0] == slice(None)):
            raise _refuse(node, f"indexing [{idx}]", "only feature slices x[:, i:j] / x[..., i:j] are accepted")
        if x.squeezed:
            raise _refuse(node, "indexing a (N,) value")
        sel = idx[1]
        rows = torch.arange(x.n, device=self.b.device)[sel]
        out = x.rows(rows.reshape(-1))
        out.squeezed = rows.ndim == 0
        return out

    def feature_sum(self, node: fx.Node, target: object, x: _Expr, rest: tuple, kwargs: dict) -> _Expr:
        dim = kwargs.get("dim", rest[0] if rest else None)
        keep = kwargs.get("keepdim", rest[1] if len(rest) > 1 else False)
        if x.squeezed or dim not in (1, -1, (1,), (-1,), [1], [-1]):
            raise _refuse(node, f"{_op_name(node)} over dim {dim}", "only sums over the features are affine per point")
        w = torch.ones(1, x.n, dtype=self.b.dtype, device=self.b.device)
        if target in (torch.mean, "mean"):
            w = w / x.n
        out = x.matmul(w.T)
        out.squeezed = not keep
        return out

    def extremum(self, node: fx.Node, is_max: bool, args: tuple, kwargs: dict) -> _Expr:
        """``max(a, b) = b + relu(a - b)``, ``min(a, b) = b - relu(b - a)``."""
        if len(args) != 2 or kwargs:
            raise _refuse(node, f"{_op_name(node)} over a dimension", "only elementwise maximum/minimum of two "
                          "values is accepted")
        a, b = (self.as_expr(v, args) for v in args)
        diff = _add(a, b.scale(self.b.const(-1.0))) if is_max else _add(b, a.scale(self.b.const(-1.0)))
        r = self.b.relu(diff)
        return _add(b, r if is_max else r.scale(self.b.const(-1.0)))

    def as_expr(self, v: object, args: tuple) -> _Expr:
        if isinstance(v, _Expr):
            return v
        n = next(a.n for a in args if isinstance(a, _Expr))
        return _Expr({}, self.const_vector(v, n).expand(n).clone())


def _negate_out(expr: _Expr, transform: OutputTransform, scale: float = 1.0) -> tuple[_Expr, OutputTransform]:
    """``-scale * T(g)`` as ``T'(-g)``: tanh and sigmoid are odd about 0 and 1/2 (``-tanh(u) = tanh(-u)``,
    ``-sigmoid(u) = sigmoid(-u) - 1``), so the negation moves inside, step by step, to ``g``; the
    transform stays increasing and "inside" (below the level) is the same for the module and ``g``."""
    steps = []  # outermost first
    for step in reversed(transform.steps):
        if step[0] == "affine":  # -(s u + c) = s (-u) - c
            steps.append(step[:2] + (step[2] * -1.0,))
        elif step[0] == "tanh":
            steps.append(step)
        else:  # -sigmoid(u) = sigmoid(-u) - 1
            steps.append(("affine", 1.0, -1.0))
            steps.append(step)
    steps.reverse()
    neg = expr.scale(torch.tensor(-1.0, dtype=expr.bias.dtype, device=expr.bias.device))
    out = OutputTransform(tuple(steps))
    return neg, out.then("affine", scale, 0.0) if scale != 1.0 else out


def _flat(args: object, kwargs: object = None) -> list[object]:
    out: list[object] = []
    for a in (args, kwargs or {}):
        if isinstance(a, (list, tuple)):
            for v in a:
                out += _flat(v)
        elif isinstance(a, dict):
            for v in a.values():
                out += _flat(v)
        else:
            out.append(a)
    return out


_ALL_KNOWN = set().union(
    _RELU, _LEAKY, _ABS, _CLAMP, _CLAMP_MIN, _CLAMP_MAX, _HARDTANH, _RELU6, _TANH, _SIGMOID, _ADD, _SUB, _MUL, _DIV,
    _NEG, _POS, _MATMUL, _CAT, _SHAPE, _NOOP, _DROPOUT, _MAXIMUM, _MINIMUM, _SUM, {operator.getitem, F.linear, F.prelu},
)


# ---- parameters that need their hooks ---------------------------------------------------------


def _is_weight_norm_hook(hook: object) -> bool:
    return type(hook).__name__ == "WeightNorm"


def _linear_params(m: nn.Linear, live: bool = False) -> tuple[Tensor, Tensor | None]:
    """Effective weight and bias (detached unless ``live``); the old ``torch.nn.utils.weight_norm``
    computes ``weight`` in a forward pre-hook, so it is recomputed here from ``weight_g`` and ``weight_v``."""
    if live:  # computed in float64 from the module's own tensors, as the default trace's float64 copy does
        bias = None if m.bias is None else m.bias.to(torch.float64)
        return _live_weight(m, "weight"), bias
    for hook in m._forward_pre_hooks.values():
        if _is_weight_norm_hook(hook):
            setattr(m, hook.name, hook.compute_weight(m))
    w = m.weight.detach()
    return w, m.bias.detach() if m.bias is not None else None


def _live_weight(m: nn.Module, name: str) -> Tensor:
    """``m.<name>`` in float64, differentiable in the module's parameters: a weight-normalized one
    (``torch.nn.utils.weight_norm``'s hook, or a parametrization) is recomputed from its float64-cast
    originals, so that it matches the float64 copy the check compares with."""
    from torch.nn.utils import parametrize

    for hook in m._forward_pre_hooks.values():
        if _is_weight_norm_hook(hook) and hook.name == name:
            v, g = getattr(m, f"{name}_v"), getattr(m, f"{name}_g")
            return torch._weight_norm(v.to(torch.float64), g.to(torch.float64), hook.dim)
    if parametrize.is_parametrized(m, name):
        plist = m.parametrizations[name]
        if plist.is_tensor:
            x = plist[0](plist.original.to(torch.float64))
        else:
            x = plist[0](*(getattr(plist, f"original{i}").to(torch.float64) for i in range(plist.ntensors)))
        for p in list(plist)[1:]:
            x = p(x)
        return x
    return getattr(m, name).to(torch.float64)


def copy_module(module: nn.Module) -> nn.Module:
    """``copy.deepcopy`` that also copies modules with the old ``torch.nn.utils.weight_norm``, whose
    computed ``weight`` is a non-leaf tensor that deepcopy refuses: it is detached for the copy
    and put back (the pre-hook recomputes it at every forward anyway).

    Parameters
    ----------
    module : torch.nn.Module
        The module; left as it was.

    Returns
    -------
    torch.nn.Module
        An independent copy.

    Examples
    --------
    >>> import torch
    >>> from nsr.pl.convert import copy_module
    >>> import warnings
    >>> with warnings.catch_warnings():  # the old API is deprecated, but still met in checkpoints
    ...     warnings.simplefilter("ignore")
    ...     lin = torch.nn.utils.weight_norm(torch.nn.Linear(2, 3))
    >>> twin = copy_module(lin)
    >>> twin is not lin, bool(torch.equal(twin(torch.ones(1, 2)), lin(torch.ones(1, 2))))
    (True, True)
    """
    saved = []
    for m in module.modules():
        for hook in m._forward_pre_hooks.values():
            if _is_weight_norm_hook(hook) and isinstance(getattr(m, hook.name, None), Tensor):
                saved.append((m, hook.name, getattr(m, hook.name)))
                setattr(m, hook.name, getattr(m, hook.name).detach())
    try:
        return copy.deepcopy(module)
    finally:
        for m, name, value in saved:
            setattr(m, name, value)


def _shared_copy(module: nn.Module) -> nn.Module:
    """A deep copy of ``module`` that shares its parameters (so that a graph read from the copy is
    live in them) and copies everything else (so that ``.eval()`` on it leaves the caller's module
    alone). Weight normalization's computed weights are shared too (recomputed from the shared
    ``weight_g``/``weight_v`` when read)."""
    memo: dict[int, object] = {id(p): p for p in module.parameters()}
    for m in module.modules():
        for hook in m._forward_pre_hooks.values():
            computed = getattr(m, getattr(hook, "name", ""), None)
            if _is_weight_norm_hook(hook) and isinstance(computed, Tensor):
                memo[id(computed)] = computed
    return copy.deepcopy(module, memo)


def _user_hooks(module: nn.Module) -> list[str]:
    """Paths of submodules with forward hooks other than weight normalization's."""
    out = []
    for path, m in module.named_modules():
        hooks = [*m._forward_hooks.values(), *m._forward_pre_hooks.values()]
        if any(not _is_weight_norm_hook(h) for h in hooks):
            out.append(path or "<root>")
    return out


# ---- public API -------------------------------------------------------------------------------


def _infer_in_dim(module: nn.Module, latent: Tensor | None) -> tuple[int, str]:
    """The input dimension, and a note for error messages saying where the guess came from."""
    dim = getattr(module, "in_dim", None)
    if isinstance(dim, int):
        return dim, f" (in_dim was taken as {dim} from {type(module).__name__}.in_dim; pass in_dim= if wrong)"
    first = next((m for m in module.modules() if isinstance(m, nn.Linear)), None)
    if first is None:
        raise NotPiecewiseAffineError(f"cannot tell the input dimension of {type(module).__name__}: pass in_dim=")
    dim = first.in_features - (0 if latent is None else int(latent.numel()))
    return dim, f" (in_dim was taken as {dim} from the first Linear layer; pass in_dim= if wrong)"


def trace(
    module: nn.Module,
    in_dim: int | None = None,
    latent: Tensor | None = None,
    latent_last: bool = False,
    check_points: int = 256,
    check_box: float = 1.0,
    seed: int = 0,
    live: bool = False,
) -> PLGraph:
    """The :class:`PLGraph` of what ``module`` computes on ``(N, in_dim)`` inputs, in float64.

    Parameters
    ----------
    module : torch.nn.Module
        Any module whose ``forward(x)`` is piecewise affine (see :mod:`nsr.pl`). It is not
        modified: a copy is traced in eval mode (dropout off, BatchNorm on its running
        statistics); a module in training mode gets a warning saying so.
    in_dim : int, optional
        Spatial input dimension ``D``; default: ``module.in_dim``, else the first Linear's
        inputs minus the latent code's size.
    latent : (K,) float Tensor, optional
        A fixed code concatenated to every input (auto-decoder/DeepSDF style:
        ``module(cat([code, x]))``, or ``cat([x, code])`` with ``latent_last``), folded into
        the biases of the layers that read it.
    latent_last : bool
        Put the code after the coordinates.
    check_points : int
        Seeded uniform points at which the graph is compared with the module
        (:func:`check_graph`); any mismatch is refused.
    check_box : float
        The check points lie in ``[-check_box, check_box]^D``.
    seed : int
        Seed of the check points.
    live : bool
        Keep the autograd graph of the module's parameters: the same folding, run on a copy that
        shares them (casts to float64 are differentiable) instead of a detached float64 copy, so
        that vertex positions and region maps built from the graph are differentiable in
        ``module.parameters()`` (what :func:`nsr.geometry.network_graph` uses for the exact
        regularizers). Constants of the output transform (a scaling after ``tanh``) and a latent
        code stay constants. The graph is valid for the parameters' current values: trace again
        after they change.

    Returns
    -------
    PLGraph
        float64, on the module's device; ``graph.transform`` holds a monotone output transform
        (tanh, sigmoid) if the module ends in one.

    Raises
    ------
    NotPiecewiseAffineError
        An operation that is not piecewise affine (named, with its place in the module), code fx
        cannot trace (data-dependent branches), or a graph that differs from the module's output.

    Examples
    --------
    >>> import torch
    >>> from nsr.pl import SkipMLP, trace
    >>> _ = torch.manual_seed(0)
    >>> model = SkipMLP(in_dim=2, width=8, depth=4)  # the input re-enters before layer 2
    >>> graph = trace(model)
    >>> graph.widths, graph.layers[2].sources, graph.is_mlp
    ([8, 6, 8, 8], [-1, 1], False)
    >>> x = torch.rand(5, 2, dtype=torch.float64)
    >>> bool(torch.allclose(graph(x), model.double()(x)))
    True

    A tanh at the output becomes an output transform, and a level of the module a level of ``g``:

    >>> seq = torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.LeakyReLU(0.1), torch.nn.Linear(8, 1),
    ...                           torch.nn.Tanh())
    >>> g = trace(seq)
    >>> g.transform.describe(), round(g.level(0.5), 6), g.is_relu
    ('tanh(g)', 0.549306, False)
    """
    if not isinstance(module, nn.Module):
        raise NotPiecewiseAffineError(f"trace expects an nn.Module, got {type(module).__name__}")
    in_dim, note = _infer_in_dim(module, latent) if in_dim is None else (int(in_dim), "")
    if in_dim < 1:
        raise NotPiecewiseAffineError(f"input dimension must be >= 1, got {in_dim} (check in_dim and latent)")
    if module.training and any(isinstance(m, nn.modules.batchnorm._BatchNorm)
                               or (isinstance(m, _DROPOUT_MODULES) and m.p > 0) for m in module.modules()):
        warnings.warn(f"{type(module).__name__} is in training mode: nsr traces its eval-mode function "
                      "(dropout off, batch norm on running statistics); call module.eval() to silence this",
                      stacklevel=2)
    if live:  # the module's own parameters, cast to float64 in the graph (differentiably)
        work = _shared_copy(module).eval()
        traced, work64 = work, None
    else:
        work = copy_module(module).eval()
        traced = work64 = copy_module(work).to(torch.float64)
    device = _device_of(traced)
    gm = _symbolic_trace(traced)
    builder = _Builder(torch.float64, device, live=live)
    x0 = builder.input(in_dim, latent, latent_last)
    with torch.set_grad_enabled(live and torch.is_grad_enabled()):
        out, transform = _Interpreter(gm, builder, x0, note).run()
        graph = builder.graph(in_dim, out, transform)
    check_graph(work, graph, latent=latent, latent_last=latent_last, n_points=check_points, box=check_box,
                seed=seed, module64=work64)
    return graph


def _device_of(module: nn.Module) -> torch.device:
    for t in [*module.parameters(), *module.buffers()]:
        return t.device
    return torch.device("cpu")


class _Tracer(fx.Tracer):
    """``fx.Tracer`` that records the user's source line of every node. (fx's own
    ``record_stack_traces`` imports torch._dynamo on first use: seconds; a frame walk is free.)
    A :class:`~nsr.pl.encoding.SimplexGridEncoding` is one leaf node: the graph's encoder."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return isinstance(m, SimplexGridEncoding) or super().is_leaf_module(m, module_qualified_name)

    def create_node(self, *args: object, **kwargs: object) -> fx.Node:
        node = super().create_node(*args, **kwargs)
        frame = sys._getframe(1)
        while frame is not None and (_TORCH_DIR in frame.f_code.co_filename or frame.f_code.co_filename == __file__):
            frame = frame.f_back
        if frame is not None:
            path = frame.f_code.co_filename
            node.meta["nsr_source"] = (path, frame.f_lineno, linecache.getline(path, frame.f_lineno).strip())
        return node


_TORCH_DIR = os.path.dirname(torch.__file__) + os.sep


def _symbolic_trace(module: nn.Module) -> fx.GraphModule:
    tracer = _Tracer()
    try:
        graph = tracer.trace(module)
    except Exception as err:  # fx raises TraceError and plain exceptions alike
        where = _user_frame(err)
        if "control flow" in str(err):
            raise NotPiecewiseAffineError(
                f"a data-dependent branch{where} cannot be traced: its result depends on the values of x, so "
                "the module is not one fixed computation graph that nsr can read. Remove the branch "
                f"(or express it with torch.where/relu/clamp). fx said: {err}") from err
        raise NotPiecewiseAffineError(
            f"{type(module).__name__} cannot be traced symbolically{where}: {type(err).__name__}: {err}") from err
    return fx.GraphModule(tracer.root, graph)


def _user_frame(err: BaseException) -> str:
    import traceback

    frames = [f for f in traceback.extract_tb(err.__traceback__) if _TORCH_DIR not in f.filename
              and not f.filename.endswith("nsr/pl/convert.py")]
    if not frames:
        return ""
    f = frames[-1]
    return f" at {f.filename.rsplit('/', 1)[-1]}:{f.lineno} ({(f.line or '').strip()})"


def module_inputs(x: Tensor, latent: Tensor | None, latent_last: bool = False) -> Tensor:
    """What the module receives for points: ``x`` with the latent code concatenated.

    Parameters
    ----------
    x : (N, D) float Tensor
        Points.
    latent : (K,) float Tensor or None
        The code (``None``: ``x`` is returned as is).
    latent_last : bool
        ``cat([x, code])`` instead of ``cat([code, x])``.

    Returns
    -------
    (N, K + D) float Tensor
        In ``x``'s dtype and device.

    Examples
    --------
    >>> import torch
    >>> from nsr.pl import module_inputs
    >>> module_inputs(torch.zeros(2, 2), torch.tensor([1.0, 2.0]))
    tensor([[1., 2., 0., 0.],
            [1., 2., 0., 0.]])
    """
    if latent is None:
        return x
    code = latent.detach().to(dtype=x.dtype, device=x.device).reshape(1, -1).expand(x.shape[0], -1)
    return torch.cat([x, code] if latent_last else [code, x], dim=1)


def check_graph(
    module: nn.Module,
    graph: PLGraph,
    latent: Tensor | None = None,
    latent_last: bool = False,
    n_points: int = 256,
    box: float = 1.0,
    seed: int = 0,
    rtol64: float = 1e-9,
    module64: nn.Module | None = None,
) -> float:
    """Compare ``graph.module_output`` with ``module`` at ``n_points`` seeded uniform points of
    ``[-box, box]^D``: in float64 (tolerance ``rtol64 * (1 + max|f|)``) and, if the module is
    not float64, in its own dtype (tolerance ``1e3 * eps(dtype) * (1 + max|f|)``).

    Returns the float64 max |Δf|. Raises :class:`NotPiecewiseAffineError` naming max |Δf|, and
    the submodules with forward hooks if any (fx does not see hooks), on a mismatch.

    Parameters
    ----------
    module : torch.nn.Module
        The module (compared in eval mode; not modified).
    graph : PLGraph
        Its graph.
    latent : (K,) float Tensor, optional
        Latent code, as in :func:`trace`.
    latent_last : bool
        As in :func:`trace`.
    n_points : int
        Number of check points.
    box : float
        The points lie in ``[-box, box]^D``.
    seed : int
        Seed of the points.
    rtol64 : float
        Relative tolerance in float64.
    module64 : torch.nn.Module, optional
        A float64 copy of ``module`` if the caller already has one.

    Returns
    -------
    float
        Max ``|Δf|`` in float64.

    Raises
    ------
    NotPiecewiseAffineError
        On a mismatch.

    Examples
    --------
    >>> import torch
    >>> from nsr.pl import as_graph, check_graph
    >>> _ = torch.manual_seed(0)
    >>> seq = torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
    >>> graph = as_graph(seq)
    >>> check_graph(seq, graph) < 1e-12
    True
    >>> _ = seq[0].register_forward_hook(lambda mod, inp, out: 2 * out)  # fx would not see this
    >>> try:
    ...     check_graph(seq, graph)
    ... except Exception as err:
    ...     print(type(err).__name__)
    NotPiecewiseAffineError
    """
    gen = torch.Generator().manual_seed(seed)
    x = (torch.rand(n_points, graph.in_dim, generator=gen, dtype=torch.float64) * 2 - 1) * box
    if module.training:  # compare with the eval-mode function, without touching the caller's module
        module = copy_module(module).eval()
    if module64 is None:
        module64 = copy_module(module).to(torch.float64)
    g64 = graph.to(dtype=torch.float64)
    dev = _device_of(module64)
    with torch.no_grad():
        want = _scalar_output(module64(module_inputs(x.to(dev), latent, latent_last)), n_points)
        got = g64.to(device=dev).module_output(x.to(dev))
    err64 = float((want - got).abs().max())
    scale = 1.0 + float(want.abs().max())
    if not err64 <= rtol64 * scale:
        _mismatch(module, err64, "float64")
    dtype = next((p.dtype for p in module.parameters()), torch.float64)
    if dtype != torch.float64 and dtype.is_floating_point:
        dev = _device_of(module)
        with torch.no_grad():
            own = _scalar_output(module(module_inputs(x.to(device=dev, dtype=dtype), latent, latent_last)), n_points)
        err = float((own.to(torch.float64).cpu() - got.cpu()).abs().max())
        if not err <= 1e3 * torch.finfo(dtype).eps * scale:
            _mismatch(module, err, str(dtype).removeprefix("torch."))
    return err64


def _scalar_output(y: object, n: int) -> Tensor:
    if not isinstance(y, Tensor) or y.numel() != n:
        raise NotPiecewiseAffineError(f"the module's output is not one value per point (got "
                                      f"{tuple(y.shape) if isinstance(y, Tensor) else type(y).__name__})")
    return y.reshape(n)


def _mismatch(module: nn.Module, err: float, dtype: str) -> None:
    hooks = _user_hooks(module)
    hint = (f" Submodules {hooks} have forward hooks, which torch.fx does not see." if hooks else
            " The module computes something its traced graph does not (in-place aliasing, Python-side state, "
            "or a branch taken differently).")
    raise NotPiecewiseAffineError(
        f"the traced graph of {type(module).__name__} does not compute what the module computes: max |Δf| = "
        f"{err:.3g} in {dtype} at the check points.{hint} Refusing rather than extracting a different function.")


def trace_or_convert(obj: object, **kwargs: object) -> PLGraph:
    """:func:`trace` for any ``nn.Module``, :func:`nsr.pl.graph.as_graph` for everything else
    (PLGraph, PLNetwork, state dicts, files).

    Parameters
    ----------
    obj : torch.nn.Module, PLGraph, PLNetwork or network
        What to convert.
    **kwargs
        Passed to :func:`trace` for modules.

    Returns
    -------
    PLGraph

    Examples
    --------
    >>> from nsr.pl.convert import trace_or_convert
    >>> from nsr.pl import ResidualMLP
    >>> from nsr.networks import random_network
    >>> trace_or_convert(random_network(3, [8], seed=0)).widths, trace_or_convert(ResidualMLP(2, 8, 2)).widths
    ([8], [8, 8, 8])
    """
    from nsr.pl.graph import as_graph

    if isinstance(obj, nn.Module):
        return trace(obj, **kwargs)  # type: ignore[arg-type]
    return as_graph(obj)


__all__: Sequence[str] = ["trace", "check_graph", "copy_module", "module_inputs", "trace_or_convert",
                          "NotPiecewiseAffineError"]
