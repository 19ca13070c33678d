"""Loaders: every accepted form gives the same function; everything else is refused by name."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from nsr.networks import NetworkError, ReLUMLP, as_network, cube_network, load_network, octahedron_network


def _mlp() -> nn.Sequential:
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 1))


def _same(net, module: nn.Module) -> None:
    x = torch.randn(64, 3)
    want = module(x).reshape(-1).double()
    got = as_network(net, dtype=torch.float64)(x.double())
    assert torch.allclose(got, want, atol=1e-5)


def test_sequential_and_nested_and_identity():
    seq = _mlp()
    _same(seq, seq)
    nested = nn.Sequential(nn.Flatten(), nn.Sequential(seq[0], nn.ReLU()), nn.Identity(), seq[2], seq[3], seq[4])
    _same(nested, seq)


def test_consecutive_linear_layers_are_composed():
    torch.manual_seed(2)
    seq = nn.Sequential(nn.Linear(2, 5), nn.ReLU(), nn.Linear(5, 4), nn.Linear(4, 1))
    net = as_network(seq, dtype=torch.float64)
    assert net.widths == [5]
    x = torch.randn(10, 2)
    assert torch.allclose(net(x.double()), seq(x).reshape(-1).double(), atol=1e-5)


def test_relumlp_state_dicts_with_any_prefix_and_files(tmp_path):
    mlp = ReLUMLP(3, 8, 2)
    _same(mlp, mlp)
    sd = mlp.state_dict()
    _same(sd, mlp)
    renamed = {k.replace("layers.", "fcs."): v for k, v in sd.items()}
    _same(renamed, mlp)
    seq = _mlp()
    _same(seq.state_dict(), seq)  # keys '0.weight', '2.weight', ...
    torch.save(renamed, tmp_path / "sd.pt")
    _same(tmp_path / "sd.pt", mlp)
    torch.save(seq, tmp_path / "module.pt")  # a whole pickled module: only on explicit trust
    with pytest.raises(NetworkError, match=r"state_dict\(\).*trust_pickle=True"):
        load_network(tmp_path / "module.pt")
    _same(load_network(tmp_path / "module.pt", trust_pickle=True), seq)
    _same(as_network(str(tmp_path / "module.pt"), trust_pickle=True), seq)
    ckpt = {"state_dict": {f"net.{k}": v for k, v in sd.items()}, "epoch": 3}
    torch.save(ckpt, tmp_path / "last.ckpt")
    _same(load_network(tmp_path / "last.ckpt"), mlp)


@pytest.mark.parametrize(
    "bad, name",
    [
        (nn.Sequential(nn.Linear(3, 4), nn.Sigmoid(), nn.Linear(4, 1)), "Sigmoid"),
        (nn.Sequential(nn.Linear(3, 4), nn.Softplus(), nn.Linear(4, 1)), "Softplus"),
        (nn.Sequential(nn.Conv1d(3, 4, 1), nn.ReLU(), nn.Linear(4, 1)), "Conv1d"),
        (nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 1)), "BatchNorm1d"),
        (nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)), "scalar"),
        (nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1), nn.ReLU()), "ends with a ReLU"),
    ],
)
def test_unsupported_modules_are_refused_by_name(bad, name):
    with pytest.raises(NetworkError, match=name):
        as_network(bad)


def test_bad_state_dicts_are_refused_by_key():
    sd = _mlp().state_dict()
    sd["2.weight"] = torch.zeros(8, 5)
    with pytest.raises(NetworkError, match="key '2.weight'"):
        as_network(sd)
    sd = _mlp().state_dict()
    sd["4.bias"] = torch.tensor([float("nan")])
    with pytest.raises(NetworkError, match="NaN"):
        as_network(sd)
    sd = dict(_mlp().state_dict())
    sd["bn.running_mean"] = torch.zeros(8)
    with pytest.raises(NetworkError, match="bn.running_mean"):
        as_network(sd)
    with pytest.raises(NetworkError, match="conv"):
        as_network({"c.weight": torch.zeros(4, 3, 3, 3), "c.bias": torch.zeros(4)})


def test_missing_and_unreadable_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        load_network(tmp_path / "nope.pt")
    (tmp_path / "junk.pt").write_text("not a torch file")
    with pytest.raises(NetworkError, match="junk.pt"):
        load_network(tmp_path / "junk.pt")


def test_analytic_networks_match_closed_forms():
    x = torch.rand(2000, 3, dtype=torch.float64) * 2 - 1
    assert torch.allclose(octahedron_network(0.4)(x), x.abs().sum(1) - 0.4, atol=1e-12)
    assert torch.allclose(cube_network(0.3)(x), x.abs().max(1).values - 0.3, atol=1e-12)


def test_geometric_init_starts_close_to_a_sphere():
    torch.manual_seed(0)
    mlp = ReLUMLP(3, 128, 3, geometric_init=True, radius=0.4)
    x = torch.randn(512, 3) * 0.3
    err = (mlp(x) - (x.norm(dim=1) - 0.4)).abs().mean()
    assert err < 0.1


_LAZY_CHECK = """
import importlib, pkgutil, sys, types
import nsr
if sys.argv[1] == "submodules-first":
    for info in pkgutil.iter_modules(nsr.__path__):
        importlib.import_module(f"nsr.{info.name}")
elif sys.argv[1] == "same-named-submodule-first":
    import nsr.eval.marching_cubes  # noqa: F401  (binds the submodule on the package)
for name, module in nsr._LAZY.items():
    for _ in range(2):
        value = getattr(nsr, name)
        assert not isinstance(value, types.ModuleType), (name, value)
        assert value is getattr(sys.modules[module], name), name
from nsr.networks import octahedron_network
for _ in range(2):  # issue 15: the second call failed with "'module' object is not callable"
    mesh = nsr.marching_cubes(octahedron_network(0.4), (-0.5, 0.5), 12)
    assert len(mesh.faces) > 0
print("ok")
"""


@pytest.mark.parametrize("order", ["same-named-submodule-first",  # fails for the original code and for
                                   pytest.param("names-first", marks=pytest.mark.slow),  # caching alone
                                   pytest.param("submodules-first", marks=pytest.mark.slow)])
def test_every_lazy_public_name_resolves_to_its_object_every_time(order):
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    res = subprocess.run([sys.executable, "-c", _LAZY_CHECK, order], cwd=root, capture_output=True, text=True,
                         env={**__import__("os").environ, "PYTHONPATH": str(root)}, timeout=300)
    assert res.returncode == 0 and res.stdout.strip().endswith("ok"), res.stderr[-3000:]
