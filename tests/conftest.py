"""Shared fixtures: the optional ../shared folder, seeded torch, open3d availability."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"


def shared_file(name: str) -> Path:
    """The file ``../shared/<name>`` (e.g. ``"models/bunny_3d_3x16.pt"``); the calling test
    skips cleanly, naming the file, when it (or ``../shared``) is absent or not a file."""
    path = SHARED / name
    if not path.is_file():
        pytest.skip(f"{path} is not present (../shared holds the optional test meshes and models)")
    return path


@pytest.fixture
def shared_dir() -> Path:
    """``../shared`` beside the project root; tests using it skip cleanly when it is absent.
    Tests that need one file should call :func:`shared_file`, which also skips when the
    folder exists but that file does not."""
    if not SHARED.is_dir():
        pytest.skip("../shared is not present")
    return SHARED


@pytest.fixture
def shared() -> Callable[[str], Path]:
    """:func:`shared_file` as a fixture: ``shared("models/bunny_3d_3x16.pt")``."""
    return shared_file


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def open3d_available() -> bool:
    if importlib.util.find_spec("open3d") is None:
        return False
    try:
        import open3d  # noqa: F401
    except (ImportError, OSError):
        return False
    return True
