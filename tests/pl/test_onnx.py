"""ONNX files of piecewise-affine networks: read as data, traced and checked like modules.
Skipped without the optional ``onnx`` package."""

from __future__ import annotations

import io
import warnings

import pytest
import torch
from torch import nn

from nsr.pl import NotPiecewiseAffineError, ResidualMLP, SkipMLP

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from nsr.pl.onnx_io import from_onnx  # noqa: E402

D64 = torch.float64


def _points(n: int = 300) -> torch.Tensor:
    gen = torch.Generator().manual_seed(9)
    return torch.rand(n, 3, generator=gen, dtype=D64) * 2 - 1


def _init(name: str, t: torch.Tensor):
    return numpy_helper.from_array(t.numpy(), name)


def _save(tmp_path, nodes, inits, name="net.onnx"):
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 1])], initializer=inits)
    path = tmp_path / name
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_hand_built_graph_with_skip_residual_leaky_clip_and_tanh(tmp_path):
    """Weights written by hand into ONNX nodes; the answer is the same formula in torch (constants
    exact in float32, so that 1e-12 holds)."""
    gen = torch.Generator().manual_seed(1)
    w = {k: torch.randn(*s, generator=gen) for k, s in {"w1": (8, 3), "b1": (8,), "w2": (8, 11), "b2": (8,),
                                                        "w3": (8, 8), "w4": (1, 8), "b4": (1,)}.items()}
    nodes = [
        helper.make_node("Gemm", ["x", "w1", "b1"], ["h1"], transB=1),
        helper.make_node("Relu", ["h1"], ["a1"]),
        helper.make_node("Concat", ["a1", "x"], ["c"], axis=1),
        helper.make_node("Gemm", ["c", "w2", "b2"], ["h2"], transB=1),
        helper.make_node("LeakyRelu", ["h2"], ["a2"], alpha=0.25),
        helper.make_node("MatMul", ["a2", "w3t"], ["m"]),
        helper.make_node("Add", ["a2", "m"], ["r"]),
        helper.make_node("Clip", ["r", "lo", "hi"], ["k"]),
        helper.make_node("Gemm", ["k", "w4", "b4"], ["o"], transB=1),
        helper.make_node("Tanh", ["o"], ["y"]),
    ]
    inits = [_init(k, v) for k, v in w.items() if k != "w3"] + [
        _init("w3t", w["w3"].T.contiguous()), _init("lo", torch.tensor(-0.5)), _init("hi", torch.tensor(0.75))]
    graph = from_onnx(_save(tmp_path, nodes, inits))
    x = _points()
    v = {k: t.double() for k, t in w.items()}
    a1 = torch.relu(x @ v["w1"].T + v["b1"])
    a2 = torch.nn.functional.leaky_relu(torch.cat([a1, x], 1) @ v["w2"].T + v["b2"], 0.25)
    k = torch.clamp(a2 + a2 @ v["w3"].T, -0.5, 0.75)
    want = torch.tanh(k @ v["w4"].T + v["b4"]).squeeze(-1)
    assert torch.allclose(graph.module_output(x), want, atol=1e-12, rtol=0)
    assert graph.transform.describe() == "tanh(g)"


def _export(module: nn.Module, tmp_path) -> object:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, torch.zeros(2, 3), buf, dynamo=False, input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "n"}})
    path = tmp_path / "exported.onnx"
    path.write_bytes(buf.getvalue())
    return path


@pytest.mark.parametrize("make", [lambda: SkipMLP(3, 16, 4, tanh_output=True),
                                  lambda: ResidualMLP(3, 12, 2, activation="leaky_relu"),
                                  lambda: nn.Sequential(nn.Linear(3, 8), nn.BatchNorm1d(8), nn.ReLU6(),
                                                        nn.Linear(8, 1))])
def test_exported_from_torch(make, tmp_path):
    torch.manual_seed(2)
    module = make().eval()
    graph = from_onnx(_export(module, tmp_path))
    x = _points()
    with torch.no_grad():
        want = module.double()(x).reshape(-1)
    assert torch.allclose(graph.module_output(x), want, atol=1e-6, rtol=0)  # float32 weights in the file


def test_non_piecewise_affine_operator_is_refused_by_name(tmp_path):
    nodes = [helper.make_node("Gemm", ["x", "w", "b"], ["h"], transB=1),
             helper.make_node("Sin", ["h"], ["y"], name="siren_0")]
    path = _save(tmp_path, nodes, [_init("w", torch.ones(1, 3)), _init("b", torch.zeros(1))])
    with pytest.raises(NotPiecewiseAffineError, match=r"ONNX operator Sin \(node 'siren_0'\)"):
        from_onnx(path)


def test_not_an_onnx_file(tmp_path):
    path = tmp_path / "bad.onnx"
    path.write_bytes(b"not a protobuf at all \x00\xff")
    with pytest.raises(NotPiecewiseAffineError, match="cannot be read as an ONNX model"):
        from_onnx(path)
