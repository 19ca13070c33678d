"""The Hydra configs ship inside the wheel: a plain (non-editable) install finds them."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    try:
        import hatchling  # noqa: F401
    except ImportError:
        pytest.skip("hatchling (dev extra) is needed to build the wheel offline")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(ROOT)],
        check=True,
    )
    (whl,) = out.glob("nsr-*.whl")
    return whl


def test_wheel_carries_every_config(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    confs = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "conf").rglob("*.yaml"))
    assert confs, "no configs in the checkout"
    missing = [c for c in confs if f"nsr/{c}" not in names]
    assert not missing


def test_installed_package_runs_its_apps_outside_the_checkout(wheel, tmp_path):
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(wheel)],
                   check=True)
    env = {**os.environ, "PYTHONPATH": str(site)}
    work = tmp_path / "elsewhere"
    work.mkdir()
    code = "import nsr, nsr._config as c; print(nsr.__file__); print(c.config_dir())"
    out = subprocess.run([sys.executable, "-c", code], cwd=work, env=env, capture_output=True, text=True, check=True)
    pkg_file, conf = out.stdout.split()
    assert Path(pkg_file).is_relative_to(site) and Path(conf).is_relative_to(site)
    for app in ("nsr.train", "nsr.extract", "nsr.compare"):
        res = subprocess.run([sys.executable, "-m", app, "--cfg", "job"], cwd=work, env=env,
                             capture_output=True, text=True)
        assert res.returncode == 0, res.stderr
        assert "not found" not in (res.stdout + res.stderr).lower()
        assert res.stdout.strip()
