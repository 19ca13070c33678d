"""Where nsr's Hydra configs live, in a checkout and after ``pip install .``."""

from __future__ import annotations

from pathlib import Path

_PKG = Path(__file__).resolve().parent


def config_dir() -> str:
    """Absolute path of the Hydra config directory.

    A wheel carries the top-level ``conf/`` as ``nsr/conf`` (see pyproject.toml); a
    checkout or an editable install has it beside the package.
    """
    for candidate in (_PKG / "conf", _PKG.parent / "conf"):
        if (candidate / "train.yaml").is_file():
            return str(candidate)
    raise FileNotFoundError(
        f"nsr's Hydra configs were not found in {_PKG / 'conf'} or {_PKG.parent / 'conf'}; "
        "reinstall nsr (pip install .) or run from a checkout"
    )
