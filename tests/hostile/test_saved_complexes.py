"""Hostile complex files: read as numbers only, validated, refused by name; never unpickled."""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from nsr.extraction.complex import PolyhedralComplex, extract_complex
from nsr.files import ComplexFileError
from nsr.networks import random_network


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> tuple[Path, dict[str, np.ndarray], PolyhedralComplex]:
    cx = extract_complex(random_network(2, [4, 4], seed=1), (-1, 1), progress=False)
    path = cx.save(tmp_path_factory.mktemp("cx") / "c.npz")
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    return path, arrays, cx


def test_round_trip_is_exact_and_checked_against_the_network(saved):
    path, _, cx = saved
    back = PolyhedralComplex.load(path)
    assert back.f_vector == cx.f_vector and back.level == cx.level
    for name in ("vertices", "edges", "vertex_zeros", "edge_zeros", "vertex_signs"):
        assert torch.equal(getattr(back, name), getattr(cx, name))
    # independent check: every vertex lies on the constraints it records (box facets or neurons)
    x = back.vertices.double()
    pre = torch.cat([back.net.preactivations(x, 0), back.net.preactivations(x, 1)], 1)
    box = torch.tensor(back.bounds)
    planes = torch.cat([x[:, :1] - box[0, 0], x[:, :1] - box[0, 1], x[:, 1:] - box[1, 0], x[:, 1:] - box[1, 1], pre], 1)
    on = planes.gather(1, back.vertex_zeros.long()).abs()
    assert float(on.max()) < 1e-12


def _tampered(tmp_path: Path, arrays: dict[str, np.ndarray], **change) -> Path:
    out = dict(arrays)
    for key, value in change.items():
        if value is None:
            out.pop(key)
        else:
            out[key] = value
    np.savez(tmp_path / "bad.npz", **out)
    return tmp_path / "bad.npz"


def _meta(arrays, **change) -> np.ndarray:
    meta = json.loads(str(arrays["meta"]))
    meta.update(change)
    return np.array(json.dumps(meta))


TAMPERED = [
    ("negative edge index", lambda a: {"edges": np.where(np.arange(a["edges"].size).reshape(a["edges"].shape) == 0,
                                                          -1, a["edges"])}, "edges.*outside"),
    ("edge index past the end", lambda a: {"edges": a["edges"] + len(a["vertices"])}, "edges.*outside"),
    ("NaN vertex", lambda a: {"vertices": np.where(np.arange(len(a["vertices"]))[:, None] == 3, np.nan,
                                                   a["vertices"])}, "vertices.*NaN"),
    ("constraint id out of range", lambda a: {"vertex_zeros": a["vertex_zeros"] + 1000}, "vertex_zeros.*constraint"),
    ("negative edge constraint", lambda a: {"edge_zeros": a["edge_zeros"] - 100}, "edge_zeros.*constraint"),
    ("bounds of the wrong shape", lambda a: {"bounds": np.zeros(4)}, "bounds.*shape"),
    ("bounds lo > hi", lambda a: {"bounds": a["bounds"][:, ::-1].copy()}, "lo < hi"),
    ("bounds of another dimension", lambda a: {"bounds": np.array([[-1.0, 1], [-1, 1], [-1, 1]])}, "inputs"),
    ("float edges", lambda a: {"edges": a["edges"].astype(np.float64)}, "edges.*integer"),
    ("vertex rows missing", lambda a: {"vertex_zeros": a["vertex_zeros"][:-1]}, "vertex_zeros.*shape"),
    ("sign words of the wrong width", lambda a: {"vertex_signs": np.zeros((len(a["vertices"]), 3), np.int64)},
     "vertex_signs.*shape"),
    ("missing array", lambda a: {"edge_zeros": None}, "edge_zeros.*missing"),
    ("missing layer", lambda a: {"weight_1": None}, "weight_1.*missing"),
    ("NaN weight", lambda a: {"weight_0": np.full_like(a["weight_0"], np.nan)}, "weight_0.*NaN"),
    ("layers that do not chain", lambda a: {"weight_1": np.zeros((4, 3))}, "network is not valid"),
    ("meta not JSON", lambda a: {"meta": np.array("{not json")}, "JSON"),
    ("another format", lambda a: {"meta": _meta(a, format="something.else")}, "not an nsr complex"),
    ("a newer version", lambda a: {"meta": _meta(a, version=99)}, "version 99"),
    ("absurd layer count", lambda a: {"meta": _meta(a, n_layers=10**9)}, "n_layers"),
    ("infinite level", lambda a: {"meta": _meta(a, level=float("inf"))}, "level"),
    ("meta as numbers", lambda a: {"meta": np.zeros(3)}, "meta"),
]


@pytest.mark.parametrize("case, change, words", TAMPERED, ids=[c[0] for c in TAMPERED])
def test_tampered_files_are_refused_by_name(tmp_path, saved, case, change, words):
    _, arrays, _ = saved
    path = _tampered(tmp_path, arrays, **change(arrays))
    with pytest.raises(ComplexFileError, match=words) as info:
        PolyhedralComplex.load(path)
    assert "bad.npz" in str(info.value)


class Payload:
    def __init__(self, func, *args) -> None:
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def test_an_object_array_is_never_unpickled(tmp_path, saved):
    _, arrays, _ = saved
    marker = tmp_path / "PWNED"
    evil = np.array([Payload(os.system, f"touch {marker}")], dtype=object)
    np.savez(tmp_path / "bad.npz", **{**arrays, "vertices": evil})  # np.savez pickles object arrays
    with pytest.raises(ComplexFileError, match="Python objects") as info:
        PolyhedralComplex.load(tmp_path / "bad.npz")
    assert not marker.exists() and "allow_pickle" not in str(info.value)


def _truncate(path: Path, src: Path) -> None:
    data = src.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])


def _huge_declared_shape(path: Path, src: Path) -> None:
    """Rewrite the vertices' .npy header to declare a (10^12, 2) array over the same few bytes."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(path, "w") as zout:
        for name in zin.namelist():
            data = zin.read(name)
            if name == "vertices.npy":
                head_len = int.from_bytes(data[8:10], "little")
                header = data[10:10 + head_len].decode("latin1")
                new = header.replace(header[header.index("(") : header.index(")") + 1], "(1000000000000, 2)")
                new = new.ljust(head_len)[:head_len - 1] + "\n"
                data = data[:10] + new.encode("latin1") + data[10 + head_len :]
            zout.writestr(name, data)


def _garbage_zip(path: Path, src: Path) -> None:
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("vertices.npy", os.urandom(200))
        z.writestr("meta.npy", b"\x93NUMPY garbage")


BROKEN = [
    ("truncated", _truncate, ComplexFileError, "truncated or corrupt"),
    ("empty", lambda p, s: p.write_bytes(b""), ComplexFileError, "truncated or corrupt"),
    ("not a zip", lambda p, s: p.write_text("vertices: 1 2 3"), ComplexFileError, "truncated or corrupt"),
    ("zip of garbage", _garbage_zip, ComplexFileError, "not a readable complex file"),
    ("huge declared shape", _huge_declared_shape, ComplexFileError, "declares shape"),
    ("a folder", lambda p, s: p.mkdir(), ComplexFileError, "not a regular file"),
    ("missing", lambda p, s: None, FileNotFoundError, "not found"),
    ("symlink loop", lambda p, s: p.symlink_to(p), FileNotFoundError, "not found"),
]


@pytest.mark.parametrize("case, write, error, words", BROKEN, ids=[c[0] for c in BROKEN])
def test_broken_files_give_a_clear_error(tmp_path, saved, case, write, error, words):
    path = tmp_path / "bad.npz"
    write(path, saved[0])
    with pytest.raises(error, match=words) as info:
        PolyhedralComplex.load(path)
    assert "bad.npz" in str(info.value) and "allow_pickle" not in str(info.value)


def test_saved_files_honour_the_umask_and_long_names(tmp_path, saved):
    cx = saved[2]
    old = os.umask(0o022)
    try:
        path = cx.save(tmp_path / ("c" * 246 + ".npz"))  # a legal 250-character name
    finally:
        os.umask(old)
    assert len(path.name) == 250 and oct(path.stat().st_mode & 0o777) == "0o644"
    assert PolyhedralComplex.load(path).f_vector == cx.f_vector
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # no temporary left


@pytest.fixture(scope="module")
def saved_graph(tmp_path_factory) -> tuple[dict[str, np.ndarray], PolyhedralComplex]:
    """The complex of a LeakyReLU network with a skip block, saved as a graph state."""
    from torch import nn

    from nsr.pl import trace

    class Skip(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b, self.out = nn.Linear(2, 4), nn.Linear(6, 4), nn.Linear(4, 1)

        def forward(self, x):
            h = nn.functional.leaky_relu(self.a(x), 0.1)
            return self.out(torch.relu(self.b(torch.cat([h, x], 1))))

    torch.manual_seed(3)
    cx = extract_complex(trace(Skip().eval(), in_dim=2), (-1, 1), progress=False)
    path = cx.save(tmp_path_factory.mktemp("cx") / "g.npz")
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    return arrays, cx


GRAPH_TAMPERED = [
    ("NaN graph weight", lambda a: {k: np.full_like(v, np.nan) for k, v in a.items()
                                    if k.startswith("graph.layers.1.blocks")}, "NaN"),
    ("graph arrays missing", lambda a: {k: None for k in a if k.startswith("graph.")}, "missing"),
    ("graph blocks that do not chain", lambda a: {"graph.layers.1.blocks.0": np.zeros((4, 7))}, "not valid"),
    ("string graph array", lambda a: {"graph.output.bias": np.array(["x"])}, "dtype"),
]


@pytest.mark.parametrize("case, change, words", GRAPH_TAMPERED, ids=[c[0] for c in GRAPH_TAMPERED])
def test_tampered_graph_files_are_refused_by_name(tmp_path, saved_graph, case, change, words):
    arrays, cx = saved_graph
    assert PolyhedralComplex.load(_tampered(tmp_path, arrays)).f_vector == cx.f_vector  # untampered reads
    path = _tampered(tmp_path, arrays, **change(arrays))
    with pytest.raises(ComplexFileError, match=words) as info:
        PolyhedralComplex.load(path)
    assert "bad.npz" in str(info.value)
