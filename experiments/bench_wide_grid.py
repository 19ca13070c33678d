"""A wide simplex-grid network extracted exactly in track and surface mode, one process (issue 14).

``experiment=grid_gpu``'s network shape (5 nested levels 16..256, 4 features, 2^18-row tables, raw
coordinates, MLP 64x2) is fitted on the CPU for ``--steps`` Adam steps to the signed distance of a
torus (major radius 0.25, minor 0.08, box +-0.5; half the samples near its surface), then extracted
over the box in float64: track mode, then surface mode (complete; on this nested grid, the Kuhn
simplices as tiles, ``nsr.extraction.kuhn``), then marching cubes at ``--resolutions`` (float32), one
process. Prints time, polygons, max |f| at the vertices, peak memory and surface mode's bound counts.
Needs nothing from ``../shared``.

    python experiments/bench_wide_grid.py --steps 600 --threads 2
    python experiments/bench_wide_grid.py --steps 600 --device cuda      # fitted and extracted on a GPU
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def torus_sdf(x: torch.Tensor) -> torch.Tensor:
    """Signed distance ``(N,)`` to the torus around the z axis, radii 0.25 and 0.08."""
    q = torch.stack([x[:, :2].norm(dim=1) - 0.25, x[:, 2]], 1)
    return q.norm(dim=1) - 0.08


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--modes", nargs="+", default=["track", "surface"])
    ap.add_argument("--device", default="cpu", help="where the network is fitted and extracted (cpu, cuda)")
    ap.add_argument("--resolutions", type=int, nargs="*", default=[],
                    help="also marching cubes of the same network at these resolutions, after the exact modes")
    args = ap.parse_args(argv)

    from nsr.eval.marching_cubes import marching_cubes
    from nsr.extraction.surface import extract_mesh
    from nsr.pl.encoding import GridMLP

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    net = GridMLP(in_dim=3, width=64, depth=2, n_levels=5, features=4, min_resolution=16, max_resolution=256,
                  table_size=262144, bounds=(-0.5, 0.5), include_input=True).to(args.device)
    opt = torch.optim.Adam([{"params": net.encoding.parameters(), "lr": 1e-2},
                            {"params": net.layers.parameters(), "lr": 2e-3}])
    t0 = time.perf_counter()
    loss = torch.zeros(())
    for _ in range(args.steps):
        x = torch.rand(8192, 3, device=args.device) - 0.5
        near = torch.nn.functional.normalize(torch.randn(4096, 3, device=args.device), dim=1) * 0.3
        near = near * torch.tensor([1.0, 1.0, 0.3], device=args.device)
        x[:4096] = x[:4096] * 0.2 + near
        x = x.clamp(-0.5, 0.5)
        loss = (net(x) - torus_sdf(x)).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    print(f"trained {args.steps} steps in {time.perf_counter() - t0:.0f} s, L1 {loss.item():.4f}", flush=True)
    net.eval()
    for mode in args.modes:
        t0 = time.perf_counter()
        mesh = extract_mesh(net, (-0.5, 0.5), mode=mode, progress=False, device=args.device)
        bounds = {k: v for k, v in mesh.stats.items() if k.startswith("kuhn")}
        print(f"{mode}: {time.perf_counter() - t0:.1f} s, {len(mesh.polygons):,} polygons, "
              f"max |f| {mesh.stats['max_abs_f']:.1e}, peak {mesh.stats.get('peak_memory_mb', 0):.0f} MB {bounds}",
              flush=True)
    for res in args.resolutions:
        t0 = time.perf_counter()
        tri = marching_cubes(net, (-0.5, 0.5), res, device=args.device)
        print(f"marching cubes {res}^3: {time.perf_counter() - t0:.1f} s, {len(tri.faces):,} triangles", flush=True)
    print(f"max RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6:.2f} GB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
