"""Shared fixtures: the optional ../shared folder, seeded torch, open3d availability."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"


@pytest.fixture
def shared_dir() -> Path:
    """``../shared`` beside the project root; tests using it skip cleanly when it is absent."""
    if not SHARED.is_dir():
        pytest.skip("../shared is not present")
    return SHARED


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
