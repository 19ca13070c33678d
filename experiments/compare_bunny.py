"""Exact zero-level mesh vs marching cubes on the shared bunny SDF networks (issue 6).

    nice .venv/bin/python experiments/compare_bunny.py [--resolutions 64 128 256] [--models ...]

Writes each comparison under outputs/compare_bunny/<model>/ (CSV, JSON, Markdown, plots,
side-by-side picture) and prints the Markdown tables recorded in experiments/RESULTS.md.
Distances are measured against the exact mesh (no ground truth in the networks' frame).
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import torch

from nsr.compare import run_compare

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT.parent / "shared" / "models"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["bunny_3d_3x16", "bunny_3d_8x32"])
    parser.add_argument("--resolutions", type=int, nargs="+", default=[64, 128, 256])
    parser.add_argument("--out", default=str(ROOT / "outputs" / "compare_bunny"))
    parser.add_argument("--n-samples", type=int, default=100_000)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (1 is steadier "
                        "on a loaded machine)")  # fmt: skip
    args = parser.parse_args()
    if not MODELS.is_dir():
        raise SystemExit(f"{MODELS} not found: the shared bunny networks are needed")
    torch.set_num_threads(args.threads)
    lines = [f"Machine: {platform.machine()} CPU, {torch.get_num_threads()} threads, "
             f"torch {torch.__version__}; {time.strftime('%Y-%m-%d')}.\n"]  # fmt: skip
    for name in args.models:
        t = time.perf_counter()
        result = run_compare({
            "net": str(MODELS / f"{name}.pt"), "bounds": [-0.5, 0.5],
            "resolutions": args.resolutions, "n_samples": args.n_samples,
            "out_dir": str(Path(args.out) / name),
        })  # fmt: skip
        lines.append(f"### {name} (box [-0.5, 0.5]^3, distances against the exact mesh)\n")
        lines.append(result["markdown"])
        print(f"{name}: {time.perf_counter() - t:.0f} s, outputs in {result['out_dir']}", flush=True)
    summary = "\n".join(lines)
    (Path(args.out) / "summary.md").write_text(summary)
    print(summary)


if __name__ == "__main__":
    main()
