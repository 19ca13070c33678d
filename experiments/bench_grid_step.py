"""A/B of one grid-network training step: the encoding's interpolation as a batched product
(today's ``SimplexGridEncoding.encode``) against a broadcast product summed over the vertices (its
formula before 2026-12-02), in ONE process, alternating which goes first.

    OMP_NUM_THREADS=1 taskset -c 0 python experiments/bench_grid_step.py

The ``bench_grid.py`` grid network, a fixed batch of 2,048 points (410 "surface" points with
normals, 1,638 others with SDF gradients), the normal and gradient losses at 0.02 (a double
backward), fused Adam; prints ms per step for each of ``--rounds`` rounds of ``--steps`` steps.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch import Tensor

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "experiments"))

import bench_grid  # noqa: E402

from nsr.pl import encoding  # noqa: E402
from nsr.training.losses import ImplicitLoss  # noqa: E402


def summed_encode(self: encoding.SimplexGridEncoding, x: Tensor, table: Tensor, include_input: bool) -> Tensor:
    """``encode`` as it was: the weighted vertex features summed over dim 1."""
    table = table.to(x.dtype)
    out = []
    for level in range(len(self.resolutions)):
        vertices, weights = self.simplex_vertices(self.grid_coordinates(x, level), level)
        out.append((weights[:, :, None] * self.gather(table, vertices, level)).sum(1))
    if include_input:
        out.append(x)
    return torch.cat(out, 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=60)
    args = ap.parse_args()
    torch.set_num_threads(1)
    net = bench_grid.make_net("grid", bench_grid.parse_args(["--nets", "grid"]))
    loss = ImplicitLoss(sdf=1, surface=1, eikonal=0, normal=0.02, gradient=0.02, clamp=0.1)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3, fused=True)
    gen = torch.Generator().manual_seed(0)
    points = torch.rand(1638, 3, generator=gen) - 0.5
    unit = torch.nn.functional.normalize
    batch = {"surface": torch.rand(410, 3, generator=gen) - 0.5,
             "normals": unit(torch.randn(410, 3, generator=gen), dim=1),
             "points": points, "sdf": points.norm(dim=1) - 0.3,
             "gradients": unit(torch.randn(1638, 3, generator=gen), dim=1)}

    def ms_per_step(k: int) -> float:
        t0 = time.perf_counter()
        for _ in range(k):
            opt.zero_grad()
            loss(net, batch)["loss"].backward()
            opt.step()
        return (time.perf_counter() - t0) / k * 1e3

    today = encoding.SimplexGridEncoding.encode
    ms_per_step(10)  # warm the process before either is timed
    for rnd in range(args.rounds):
        order = [("summed over dim 1 (before)", summed_encode), ("batched product (today)", today)]
        for name, fn in order if rnd % 2 == 0 else order[::-1]:
            encoding.SimplexGridEncoding.encode = fn
            print(f"round {rnd}: {name}: {ms_per_step(args.steps):.2f} ms/step", flush=True)
    encoding.SimplexGridEncoding.encode = today


if __name__ == "__main__":
    main()
