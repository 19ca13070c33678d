"""Read an ONNX file of a piecewise-affine network into a :class:`~nsr.pl.graph.PLGraph`.

Users of other frameworks export ONNX. The file is read as data (the ``onnx`` package parses the
protobuf; nothing in it is executed): its nodes are mapped one by one onto torch operations in an
:class:`OnnxModule`, which :func:`nsr.pl.trace` then traces and checks like any module. Operator
types outside the piecewise-affine set are refused when the file is read, naming the node.

The ``onnx`` package is an optional dependency (``pip install onnx``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nsr.pl.graph import NotPiecewiseAffineError, PLGraph

# op_type -> why it is accepted (for the docs and the refusal message)
SUPPORTED = {
    "Gemm": "affine", "MatMul": "affine (constant right factor)", "Add": "affine", "Sub": "affine",
    "Mul": "scaling by a constant", "Div": "scaling by a constant", "Neg": "affine", "Identity": "identity",
    "Dropout": "identity at inference", "Flatten": "identity on (N, F)", "Concat": "feature concatenation",
    "BatchNormalization": "affine at inference", "Relu": "one breakpoint", "LeakyRelu": "one breakpoint",
    "PRelu": "one breakpoint", "Abs": "one breakpoint", "Clip": "two breakpoints", "Max": "max(a, b) = b + relu(a - b)",
    "Min": "min(a, b) = b - relu(b - a)", "Tanh": "monotone output transform", "Sigmoid": "monotone output transform",
    "Squeeze": "output shape", "Unsqueeze": "output shape", "Reshape": "output shape", "Constant": "a constant",
}


def _onnx() -> Any:
    try:
        import onnx
    except ImportError as err:
        raise ImportError("reading ONNX files needs the optional 'onnx' package: pip install onnx") from err
    return onnx


class OnnxModule(nn.Module):
    """A torch module computing an ONNX graph of supported operators, ``(N, D) -> (N,)`` or ``(N, 1)``.

    Float initializers become buffers; integer ones (shapes, axes) stay Python values.

    Parameters
    ----------
    model : onnx.ModelProto
        A loaded ONNX model with one input ``(N, D)`` and one scalar output per point.

    Raises
    ------
    NotPiecewiseAffineError
        On an operator outside :data:`SUPPORTED` (naming the node) or an unsupported shape.

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> import numpy as np, pytest, torch
    >>> onnx = pytest.importorskip("onnx")
    >>> from onnx import TensorProto, helper, numpy_helper
    >>> from nsr.pl import from_onnx
    >>> w1 = np.array([[1, 0], [0, 1], [-1, 0], [0, -1]], dtype=np.float32).T  # |x| + |y| - 0.5
    >>> inits = [numpy_helper.from_array(w1.copy(), "w1"), numpy_helper.from_array(np.ones((4, 1), np.float32), "w2"),
    ...          numpy_helper.from_array(np.array([-0.5], np.float32), "b2")]
    >>> nodes = [helper.make_node("MatMul", ["x", "w1"], ["z"]), helper.make_node("Relu", ["z"], ["a"]),
    ...          helper.make_node("MatMul", ["a", "w2"], ["o"]), helper.make_node("Add", ["o", "b2"], ["y"])]
    >>> model = helper.make_model(helper.make_graph(
    ...     nodes, "diamond", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2])],
    ...     [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1])], inits))
    >>> from nsr.pl.onnx_io import OnnxModule
    >>> OnnxModule(model)(torch.tensor([[0.5, 0.0], [0.0, 0.0]])).reshape(-1)
    tensor([ 0.0000, -0.5000])
    """

    def __init__(self, model: Any) -> None:
        super().__init__()
        onnx = _onnx()
        from onnx import numpy_helper

        graph = model.graph
        self._consts: dict[str, Any] = {}
        self._buffers_of: dict[str, str] = {}
        for init in graph.initializer:
            self._add_const(init.name, numpy_helper.to_array(init))
        inputs = [i for i in graph.input if i.name not in self._consts]
        if len(inputs) != 1 or len(graph.output) != 1:
            raise NotPiecewiseAffineError(
                f"the ONNX graph has {len(inputs)} inputs and {len(graph.output)} outputs; nsr reads graphs of one "
                "input x (N, D) and one scalar output")
        dims = inputs[0].type.tensor_type.shape.dim
        if len(dims) != 2 or not dims[1].dim_value:
            raise NotPiecewiseAffineError(f"the ONNX input '{inputs[0].name}' must have shape (N, D) with a fixed D")
        self.in_dim = int(dims[1].dim_value)
        self._input, self._output = inputs[0].name, graph.output[0].name
        self._nodes: list[tuple[str, str, list[str], list[str], dict[str, Any]]] = []
        for i, node in enumerate(graph.node):
            name = node.name or f"#{i}"
            if node.domain not in ("", "ai.onnx"):
                raise NotPiecewiseAffineError(f"ONNX node '{name}' is from the custom domain '{node.domain}'")
            if node.op_type not in SUPPORTED:
                raise NotPiecewiseAffineError(
                    f"ONNX operator {node.op_type} (node '{name}') is not piecewise affine or not supported; nsr reads "
                    f"{', '.join(sorted(SUPPORTED))}")
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            if node.op_type == "Constant":
                value = attrs.get("value")
                if value is None:
                    raise NotPiecewiseAffineError(f"ONNX Constant node '{name}' has no tensor value")
                self._add_const(node.output[0], numpy_helper.to_array(value))
                continue
            self._nodes.append((node.op_type, name, list(node.input), list(node.output), attrs))

    def _add_const(self, name: str, array: Any) -> None:
        # scalars stay Python numbers: Clip bounds and scalings must be plain values when traced
        if array.dtype.kind == "f" and array.ndim > 0:
            attr = f"c{len(self._buffers_of)}"
            self.register_buffer(attr, torch.as_tensor(array.copy()))
            self._buffers_of[name] = attr
            self._consts[name] = None
        else:
            self._consts[name] = array.tolist()

    def _value(self, env: dict[str, Any], name: str) -> Any:
        if name in self._buffers_of:
            return getattr(self, self._buffers_of[name])
        if name in self._consts:
            return self._consts[name]
        return env[name] if name else None

    def forward(self, x: Tensor) -> Tensor:
        """Run the ONNX graph on torch tensors.

        Parameters
        ----------
        x : (N, D) float Tensor
            The graph's input.

        Returns
        -------
        (N,) or (N, 1) float Tensor
            The graph's output (see the class example).
        """
        env: dict[str, Any] = {self._input: x}
        for op, name, ins, outs, attrs in self._nodes:
            args = [self._value(env, i) for i in ins]
            env[outs[0]] = self._run_node(op, name, args, attrs)
        return env[self._output]

    def _run_node(self, op: str, name: str, args: list[Any], attrs: dict[str, Any]) -> Any:
        a = args[0]
        if op == "Gemm":
            if attrs.get("transA", 0):
                raise NotPiecewiseAffineError(f"ONNX Gemm node '{name}' with transA=1 transposes the batch")
            b = args[1].T if attrs.get("transB", 0) else args[1]
            y = a @ b
            if attrs.get("alpha", 1.0) != 1.0:
                y = y * attrs["alpha"]
            if len(args) > 2 and args[2] is not None:
                y = y + args[2] * attrs.get("beta", 1.0)
            return y
        simple = {
            "MatMul": lambda: a @ args[1], "Add": lambda: a + args[1], "Sub": lambda: a - args[1],
            "Mul": lambda: a * args[1], "Div": lambda: a / args[1], "Neg": lambda: -a, "Identity": lambda: a,
            "Dropout": lambda: a, "Relu": lambda: torch.relu(a), "Abs": lambda: torch.abs(a),
            "LeakyRelu": lambda: F.leaky_relu(a, attrs.get("alpha", 0.01)),
            "PRelu": lambda: F.prelu(a, args[1].reshape(-1)), "Tanh": lambda: torch.tanh(a),
            "Sigmoid": lambda: torch.sigmoid(a), "Max": lambda: torch.maximum(a, args[1]),
            "Min": lambda: torch.minimum(a, args[1]),
        }
        if op in simple:
            if op in ("Max", "Min") and len(args) != 2:
                raise NotPiecewiseAffineError(f"ONNX {op} node '{name}' with {len(args)} inputs (2 are read)")
            return simple[op]()
        if op == "Concat":
            return torch.cat(args, dim=attrs["axis"])
        if op == "Flatten":
            if attrs.get("axis", 1) != 1:
                raise NotPiecewiseAffineError(f"ONNX Flatten node '{name}' with axis {attrs['axis']}")
            return a
        if op == "Clip":
            lo = args[1] if len(args) > 1 and args[1] is not None else attrs.get("min")
            hi = args[2] if len(args) > 2 and args[2] is not None else attrs.get("max")
            return torch.clamp(a, min=_scalar(lo), max=_scalar(hi))
        if op == "BatchNormalization":
            scale, bias, mean, var = args[1:5]
            factor = scale / torch.sqrt(var + attrs.get("epsilon", 1e-5))
            return a * factor + (bias - mean * factor)
        if op in ("Squeeze", "Unsqueeze"):
            axes = args[1] if len(args) > 1 else attrs.get("axes")
            axes = [axes] if isinstance(axes, int) else list(axes or [])
            if op == "Squeeze":
                return a.squeeze(-1) if axes in ([], [1], [-1]) else _bad_shape(name, op, axes)
            return a.unsqueeze(-1) if axes in ([1], [-1]) else _bad_shape(name, op, axes)
        if op == "Reshape":
            shape = list(args[1])
            if shape == [-1]:
                return a.view(-1)
            if len(shape) == 2 and shape[0] in (-1, 0):
                return a.view(-1, shape[1])
            return _bad_shape(name, op, shape)
        raise AssertionError(op)  # every SUPPORTED op is handled above


def _scalar(v: Any) -> float | None:
    if v is None:
        return None
    return float(v.reshape(()) if isinstance(v, Tensor) else v)


def _bad_shape(name: str, op: str, shape: Any) -> Tensor:
    raise NotPiecewiseAffineError(f"ONNX {op} node '{name}' with {shape}: only (N,)/(N, F) shapes per point are read")


def from_onnx(path: str | Path, **trace_kwargs: Any) -> PLGraph:
    """The :class:`PLGraph` of an ONNX file (see the module docstring); ``trace_kwargs`` go to
    :func:`nsr.pl.trace` (e.g. ``latent=``, ``check_box=``).

    Parameters
    ----------
    path : str or Path
        An ``.onnx`` file (read as data; external data files are not loaded).
    **trace_kwargs
        Passed to :func:`nsr.pl.trace`.

    Returns
    -------
    PLGraph
        float64.

    Raises
    ------
    ImportError
        Without the optional ``onnx`` package.
    FileNotFoundError
        If ``path`` is not a file.
    NotPiecewiseAffineError
        If the file is not an ONNX model, or holds an operator nsr cannot extract.

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> import numpy as np, pytest, torch
    >>> onnx = pytest.importorskip("onnx")
    >>> from onnx import TensorProto, helper, numpy_helper
    >>> from nsr.pl import from_onnx
    >>> w1 = np.array([[1, 0], [0, 1], [-1, 0], [0, -1]], dtype=np.float32).T  # |x| + |y| - 0.5
    >>> inits = [numpy_helper.from_array(w1.copy(), "w1"), numpy_helper.from_array(np.ones((4, 1), np.float32), "w2"),
    ...          numpy_helper.from_array(np.array([-0.5], np.float32), "b2")]
    >>> nodes = [helper.make_node("MatMul", ["x", "w1"], ["z"]), helper.make_node("Relu", ["z"], ["a"]),
    ...          helper.make_node("MatMul", ["a", "w2"], ["o"]), helper.make_node("Add", ["o", "b2"], ["y"])]
    >>> model = helper.make_model(helper.make_graph(
    ...     nodes, "diamond", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2])],
    ...     [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1])], inits))
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     onnx.save(model, Path(tmp) / "diamond.onnx")
    ...     graph = from_onnx(Path(tmp) / "diamond.onnx")
    >>> graph.widths, graph(torch.tensor([[0.5, 0.0], [0.0, 0.0]], dtype=torch.float64))
    ([4], tensor([ 0.0000, -0.5000], dtype=torch.float64))
    """
    onnx = _onnx()
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ONNX file not found: {path}")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as err:  # protobuf decode errors have many types
        raise NotPiecewiseAffineError(f"{path}: cannot be read as an ONNX model ({err})") from err
    from nsr.pl.convert import trace

    module = OnnxModule(model)
    trace_kwargs.setdefault("in_dim", module.in_dim - (0 if trace_kwargs.get("latent") is None
                                                       else int(trace_kwargs["latent"].numel())))
    return trace(module, **trace_kwargs)
