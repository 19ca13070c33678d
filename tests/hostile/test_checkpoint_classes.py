"""Hostile checkpoints: a network record naming a class outside nsr's allowlist (os.system, exec,
subprocess, Path.touch), or an allowlisted class with options that are not its own, is refused
without importing or running anything (marker-file check)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from nsr.networks import NetworkError, ReLUMLP, as_network, load_network
from nsr.training.lightning import load_module_network


def _hostile(tmp_path: Path, spec: dict) -> Path:
    mlp = ReLUMLP(3, 8, 2)
    path = tmp_path / "hostile.ckpt"
    torch.save({"state_dict": {f"net.{k}": v for k, v in mlp.state_dict().items()},
                "hyper_parameters": {"net": spec, "config": {"model": {"net": spec}}}}, path)
    return path


def _payloads(marker: Path) -> dict[str, dict]:
    """Network records that WOULD create ``marker`` if a loader instantiated them (as Hydra does)."""
    return {"os.system": {"_target_": "os.system", "command": f"touch {marker}"},
            "builtins.exec": {"_target_": "builtins.exec", "_args_": [f"open({str(marker)!r}, 'w').close()"]},
            "subprocess.run": {"_target_": "subprocess.run", "_args_": [["touch", str(marker)]]},
            "pathlib.Path.touch": {"_target_": "pathlib.Path.touch", "_args_": [str(marker)]}}


@pytest.mark.parametrize("target", ["os.system", "builtins.exec", "subprocess.run", "pathlib.Path.touch"])
def test_checkpoints_naming_other_targets_are_refused_without_running_them(tmp_path, target):
    marker = tmp_path / "PWNED"
    path = _hostile(tmp_path, _payloads(marker)[target])
    for read in (load_network, load_module_network, as_network):
        with pytest.raises(NetworkError, match=f"'{target}' is not one nsr rebuilds") as info:
            read(path)
        assert "nsr.networks.ReLUMLP, nsr.pl.models.SkipMLP" in str(info.value) and path.name in str(info.value)
        assert not marker.exists(), f"{target} ran"


@pytest.mark.parametrize("spec, words", [
    ({"_target_": "nsr.networks.ReLUMLP", "width": {"_target_": "os.system", "command": "touch PWNED"}},
     "width=.*must be an integer"),
    ({"_target_": "nsr.networks.ReLUMLP", "in_dim": 3, "width": 8, "depth": 2, "_args_": ["x"]}, "'_args_' is not one"),
    ({"_target_": "nsr.pl.encoding.GridMLP", "in_dim": 3, "bounds": "os.system"}, r"bounds=.*\[lo, hi\]"),
    # far more weights than the file holds: refused from shapes on the meta device, nothing allocated
    ({"_target_": "nsr.networks.ReLUMLP", "in_dim": 3, "width": 65536, "depth": 1024}, "do not fit"),
    ({"_target_": "nsr.networks.ReLUMLP", "_rebuildable_": False, "_why_": "a test"}, "cannot rebuild.*a test"),
])
def test_allowlisted_targets_with_bad_options_are_refused(tmp_path, spec, words):
    with pytest.raises(NetworkError, match=words):
        load_module_network(_hostile(tmp_path, spec))
    assert not (tmp_path / "PWNED").exists()
