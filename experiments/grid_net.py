"""The trained simplex-grid network of issue 14's extraction measurements: the recommended 2-core CPU grid
(``experiments/bench_grid.py`` defaults: since 2026-12-02 5 nested levels of 4 features, resolutions 6..96;
before, 6 levels of 2 features 8..96; 2^15-row tables, raw coordinates, MLP 16 x 2) trained on the shared bunny
for ``--seconds`` (default 90) through nsr's Lightning module, cached under ``experiments/out/`` (git-ignored;
the weights are never committed). The cache's name holds the levels (``grid_stanford-bunny_90s_L5r6-96f4.pt``);
the older levels' cache (``grid_stanford-bunny_90s.pt``, named before the levels changed) is still read by its
path, and :func:`load_grid_net` rebuilds any cache with the settings it was trained with.

Usage::

    python experiments/grid_net.py    # train (or reuse) experiments/out/grid_stanford-bunny_90s_L5r6-96f4.pt
    python experiments/grid_net.py --seconds 60 --force

``load_grid_net(path)`` rebuilds the network from the cache.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "experiments"))

import bench_grid  # noqa: E402

from nsr.pl.encoding import GridMLP  # noqa: E402


def default_path(seconds: float, mesh: str = "stanford-bunny") -> Path:
    """Where the network of the current defaults trained on ``mesh`` for ``seconds`` is cached."""
    g = bench_grid.GRID_DEFAULTS
    levels = f"L{g['n_levels']}r{g['min_resolution']}-{g['max_resolution']}f{g['features']}"
    return ROOT / "experiments" / "out" / f"grid_{mesh}_{seconds:g}s_{levels}.pt"


def _args(seconds: float, pool_size: int) -> argparse.Namespace:
    args = bench_grid.parse_args(["--minutes", str(seconds / 60), "--pool-size", str(pool_size)])
    return args


def train_grid_net(seconds: float = 90.0, mesh: str = "stanford-bunny", pool_size: int = 200_000,
                   path: Path | None = None, force: bool = False) -> Path:
    """Train (unless cached) and save ``{"state": state_dict, "args": vars(args)}``; return the path."""
    path = path or default_path(seconds, mesh)
    if path.is_file() and not force:
        return path
    src = bench_grid.SHARED / f"{mesh}.obj"
    if not src.is_file():
        raise FileNotFoundError(f"no mesh {src}: the shared meshes (../shared/meshes) are needed to train")
    args = _args(seconds, pool_size)
    torch.set_num_threads(args.threads)
    net, snaps = bench_grid.train("grid", src, args)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"state": snaps[-1]["state"], "args": {k: str(v) if isinstance(v, Path) else v
                                                       for k, v in vars(args).items()},
                "steps": snaps[-1]["steps"], "wall_s": snaps[-1]["wall_s"]}, tmp)
    os.replace(tmp, path)
    return path


def load_grid_net(path: Path) -> GridMLP:
    """The :class:`GridMLP` saved by :func:`train_grid_net` (float32, eval mode)."""
    blob = torch.load(path, map_location="cpu", weights_only=True)
    args = argparse.Namespace(**blob["args"])
    net = bench_grid.make_net("grid", args)
    net.load_state_dict(blob["state"])
    return net.eval()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=90.0)
    ap.add_argument("--mesh", default="stanford-bunny")
    ap.add_argument("--pool-size", type=int, default=200_000)
    ap.add_argument("--force", action="store_true", help="retrain even if cached")
    a = ap.parse_args(argv)
    if not bench_grid.SHARED.is_dir():
        print(f"skipping: {bench_grid.SHARED} not present")
        return 0
    path = train_grid_net(a.seconds, a.mesh, a.pool_size, force=a.force)
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
