"""Hostile network files: untrusted files are data, never code; every refusal names the file and what to do."""

from __future__ import annotations

import builtins
import os
import pickle
import struct
import subprocess
import sys
import warnings
import zipfile
from pathlib import Path

import pytest
import torch
from torch import nn

from nsr.networks import NetworkError, ReLUMLP, as_network, load_network

ROOT = Path(__file__).resolve().parents[2]


class Payload:
    """Unpickling calls ``func(*args)``: what a malicious file does (here: create a marker file)."""

    def __init__(self, func, *args) -> None:
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _mlp_state_dict() -> dict[str, torch.Tensor]:
    torch.manual_seed(3)
    return ReLUMLP(3, 8, 2).state_dict()


def _malicious_files(tmp_path: Path) -> tuple[list[Path], Path]:
    """Files whose unpickling would create ``marker``: torch zip, raw pickle, payload in a checkpoint."""
    marker = tmp_path / "PWNED"
    files = []
    torch.save({"x": Payload(os.system, f"touch {marker}")}, tmp_path / "system.pt")
    files.append(tmp_path / "system.pt")
    torch.save({"state_dict": {f"net.{k}": v for k, v in _mlp_state_dict().items()},
                "hyper_parameters": {"cfg": Payload(builtins.open, str(marker), "w")}}, tmp_path / "hidden.ckpt")
    files.append(tmp_path / "hidden.ckpt")
    with open(tmp_path / "raw.pkl", "wb") as fh:  # a legacy, non-zip pickle
        pickle.dump(Payload(builtins.exec, f"open({str(marker)!r}, 'w').close()"), fh, protocol=2)
    files.append(tmp_path / "raw.pkl")
    return files, marker


def test_malicious_pickles_never_run_through_the_library(tmp_path):
    from nsr.extraction.complex import extract_complex
    from nsr.extraction.surface import extract_mesh

    files, marker = _malicious_files(tmp_path)
    readers = [load_network, as_network, lambda p: as_network(str(p)), lambda p: extract_mesh(p, (-1, 1)),
               lambda p: extract_complex(p, (-1, 1))]
    for path in files:
        for read in readers:
            with pytest.raises(NetworkError, match=path.name) as info:
                read(path)
            assert not marker.exists(), f"{path.name} ran code"
            msg = str(info.value)
            assert "unpickle" in msg and "state_dict()" in msg and "trust_pickle=True" in msg
            assert "weights_only=False" not in msg  # never nudged to an unsafe load


def _app(tmp_path: Path, module: str, *args: str) -> subprocess.CompletedProcess:
    """Run an nsr app of THIS checkout (PYTHONPATH), not whatever console script is installed."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", module, *args, f"hydra.run.dir={tmp_path / 'hydra'}"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("module, which", [
    ("nsr.extract", "system.pt"),
    pytest.param("nsr.compare", "system.pt", marks=pytest.mark.slow),
    pytest.param("nsr.extract", "module.pt", marks=pytest.mark.slow),  # benign whole module: apps never opt in
])
def test_malicious_pickles_never_run_through_the_apps(tmp_path, module, which):
    files, marker = _malicious_files(tmp_path)
    torch.save(nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1)), tmp_path / "module.pt")
    path = tmp_path / which
    res = _app(tmp_path, module, f"net={path}", f"out_dir={tmp_path / 'out'}")
    assert res.returncode == 2, res.stderr[-2000:]
    assert not marker.exists()
    assert path.name in res.stderr and "state_dict()" in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "out" / "stats.json").exists()


def test_a_whole_pickled_module_loads_only_on_explicit_trust(tmp_path):
    torch.manual_seed(0)
    seq = nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 1))
    torch.save(seq, tmp_path / "module.pt")
    with pytest.raises(NetworkError, match="torch.nn.modules.container.Sequential"):
        load_network(tmp_path / "module.pt")
    net = load_network(tmp_path / "module.pt", trust_pickle=True)
    x = torch.rand(100, 3, dtype=torch.float64) * 2 - 1
    torch.testing.assert_close(net.to(dtype=torch.float64)(x), seq.double()(x).squeeze(-1))


def _write_truncated(path: Path) -> None:
    torch.save(_mlp_state_dict(), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _write_zip_of_garbage(path: Path) -> None:
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", os.urandom(300))
        z.writestr("archive/version", b"3\n")


def _write_declared_shape(path: Path, huge_storage: bool) -> None:
    """A torch file whose pickle declares a (1e6, 1e6) tensor, or an 8 GB storage, over 308 bytes."""
    torch.save({"w": torch.zeros(7, 11)}, path.with_suffix(".src"))
    j = lambda v: b"J" + struct.pack("<i", v)  # noqa: E731
    if huge_storage:
        old, new = b"X\x03\x00\x00\x00cpuq\x06KM", b"X\x03\x00\x00\x00cpuq\x06" + j(2**31 - 1)
    else:
        old, new = b"K\x07K\x0b\x86q\x08K\x0bK\x01", j(10**6) + j(10**6) + b"\x86q\x08" + j(10**6) + b"K\x01"
    with zipfile.ZipFile(path.with_suffix(".src")) as src, zipfile.ZipFile(path, "w") as dst:
        for name in src.namelist():
            data = src.read(name)
            if name.endswith("data.pkl"):
                assert old in data
                data = data.replace(old, new)
            dst.writestr(name, data)


BAD_FILES = [
    ("empty", lambda p: p.write_bytes(b""), NetworkError, "empty"),
    ("text", lambda p: p.write_text("weights: [1, 2, 3]\n"), NetworkError, "not a PyTorch file nsr can read"),
    ("random bytes", lambda p: p.write_bytes(os.urandom(4096)), NetworkError, "not a PyTorch file"),
    ("zip of garbage", _write_zip_of_garbage, NetworkError, "PyTorch file"),
    ("truncated", _write_truncated, NetworkError, "truncated"),
    ("huge declared shape", lambda p: _write_declared_shape(p, False), NetworkError, "not a PyTorch file"),
    ("huge declared storage", lambda p: _write_declared_shape(p, True), NetworkError, "not a PyTorch file"),
    ("folder", lambda p: p.mkdir(), NetworkError, "folder"),
    ("symlink loop", lambda p: p.symlink_to(p), FileNotFoundError, "link loop"),
    ("broken symlink", lambda p: p.symlink_to(p.with_name("gone.pt")), FileNotFoundError, "broken"),
    ("a lone tensor", lambda p: torch.save(torch.zeros(3, 3), p), NetworkError, "Tensor"),
    ("a list", lambda p: torch.save([torch.zeros(3, 3)], p), NetworkError, "list"),
    ("no layers", lambda p: torch.save({}, p), NetworkError, "no Linear layer"),
]


@pytest.mark.parametrize("case, write, error, words", BAD_FILES, ids=[c[0] for c in BAD_FILES])
def test_bad_files_give_a_clear_error(tmp_path, case, write, error, words):
    path = tmp_path / "net.pt"
    write(path)
    with pytest.raises(error, match=words) as info:
        load_network(path)
    assert "net.pt" in str(info.value)


def _sd(**change) -> dict:
    sd = dict(_mlp_state_dict())
    sd.update(change)
    return sd


BAD_STATE_DICTS = [
    ("NaN weight", _sd(**{"layers.0.weight": torch.full((8, 3), float("nan"))}), "NaN"),
    ("inf bias", _sd(**{"layers.1.bias": torch.full((8,), float("inf"))}), "NaN or inf"),
    ("3-D weight", _sd(**{"layers.0.weight": torch.zeros(8, 3, 1)}), "not a Linear weight"),
    ("integer weights", {k: v.to(torch.int64) for k, v in _mlp_state_dict().items()}, "floating point"),
    ("complex weights", {k: v.to(torch.complex64) for k, v in _mlp_state_dict().items()}, "floating point"),
    ("non-string key", {0: torch.zeros(1, 3), "0.bias": torch.zeros(1)}, "not a string"),
    ("bias mismatch", _sd(**{"layers.1.bias": torch.zeros(5)}), "does not match"),
    ("two outputs", {"a.weight": torch.zeros(2, 3), "a.bias": torch.zeros(2)}, "scalar"),
    ("weight without bias", {"a.weight": torch.zeros(1, 3)}, "has no bias"),
    ("a string value", _sd(**{"layers.0.bias": "zeros"}), "not a tensor"),
]


@pytest.mark.parametrize("case, sd, words", BAD_STATE_DICTS, ids=[c[0] for c in BAD_STATE_DICTS])
def test_bad_state_dict_files_are_refused_by_key(tmp_path, case, sd, words):
    torch.save(sd, tmp_path / "sd.pt")
    with pytest.raises(NetworkError, match=words):
        load_network(tmp_path / "sd.pt")


def _checkpoint(hparams: dict | None, width: int = 8) -> dict:
    torch.manual_seed(3)
    sd = ReLUMLP(3, width, 2).state_dict()
    ckpt = {"state_dict": {f"net.{k}": v for k, v in sd.items()}, "epoch": 1, "pytorch-lightning_version": "2.4.0"}
    if hparams is not None:
        ckpt["hyper_parameters"] = hparams
    return ckpt


NSR_HPARAMS = {"transform": {"center": [0.0, 0.0, 0.0], "scale": 1.0},
               "config": {"model": {"_target_": "nsr.networks.ReLUMLP", "in_dim": "${data.dim}", "width": 8,
                                    "depth": 2}, "loss": {"_target_": "nsr.training.losses.ImplicitLoss"}},
               "net": {"in_dim": 3, "width": 8, "depth": 2}}

NOT_RELU_CHECKPOINTS = [
    ("sine activation", {"activation": "sine"}, "activation = 'sine'"),
    ("softplus in a model config", {"model": {"act_fn": "torch.nn.Softplus"}}, "Softplus"),
    ("activation class config", {"net": {"activation": {"_target_": "torch.nn.SiLU"}}}, "SiLU"),
    ("SIREN frequency", {"omega_0": 30.0}, "SIREN"),
    ("another model class", {"config": {"model": {"_target_": "mylib.SirenNet", "width": 8}}}, "SirenNet"),
    ("LightningCLI class path", {"model": {"class_path": "mylib.Siren"}}, "mylib.Siren"),
    ("nsr widths that do not match", {**NSR_HPARAMS, "net": {"in_dim": 3, "width": 16, "depth": 2}}, "widths"),
]


@pytest.mark.parametrize("case, hparams, words", NOT_RELU_CHECKPOINTS, ids=[c[0] for c in NOT_RELU_CHECKPOINTS])
def test_checkpoints_that_record_another_architecture_are_refused(tmp_path, case, hparams, words):
    torch.save(_checkpoint(hparams), tmp_path / "last.ckpt")
    with pytest.raises(NetworkError, match=words) as info:
        load_network(tmp_path / "last.ckpt")
    assert "last.ckpt" in str(info.value) and "ReLU" in str(info.value)


@pytest.mark.parametrize("hparams", [NSR_HPARAMS, {"activation": "relu", "lr": 1e-3}, None],
                         ids=["nsr", "relu recorded", "nothing recorded"])
def test_relu_checkpoints_load_weights_only_as_the_same_function(tmp_path, hparams):
    torch.save(_checkpoint(hparams), tmp_path / "last.ckpt")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # and quietly
        net = load_network(tmp_path / "last.ckpt")
    torch.manual_seed(3)
    mlp = ReLUMLP(3, 8, 2).double()
    x = torch.rand(200, 3, dtype=torch.float64) * 2 - 1
    torch.testing.assert_close(net.to(dtype=torch.float64)(x), mlp(x))
