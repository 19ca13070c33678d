"""Study (issue 16): could bounds prove track mode complete? How small must a tile be?

Track mode walks every component of the level set that one of its seeds reaches; a component no
seed reaches is missed. One way to make it provably complete would be a certificate per tile of the
box: either the output's bounds exclude the level, or the output is strictly monotone along some
direction ``d`` inside the tile (then every piece of the level set in the tile reaches the tile's
boundary, and by the same argument on faces and edges, a grid edge with a sign change, which the
seeding finds). This script measures how often the monotonicity half can be proven, as a function of
the tile size, on tiles that straddle the surface.

For each network: ``--points`` seed points on the level set (a 32^3 seed grid's crossings); around
each a tile of side ``1/R`` of the box (random offset) for each ``--resolutions`` R. Pre-activation
bounds over the tile by interval arithmetic and by linear bound propagation
(:func:`nsr.pl.bounds.layer_bounds`, CROWN); then the directional derivative ``d . grad g`` along
``d`` = the unit gradient at the tile's centre is bounded by forward interval propagation with each
unstable neuron's slope in ``[neg, pos]``. A tile is *certified* when that lower bound is positive.
Printed per R: certified fraction, unstable neurons per tile, median lower bound, seconds, and a
brute-force check of the bound (the derivative at 16 random points of each certified tile; it
must never fall below the bound).

    python experiments/certify_tiles.py --nets shared:bunny_3d_8x32 file:experiments/out/nets/<4x64>.pt

Findings are in ``experiments/RESULTS.md`` ("a completeness certificate for track mode").
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

from _bench import BOUNDS, parse_net  # noqa: E402

from nsr.extraction.polygons import _gradients_at  # noqa: E402 - the extractor's autograd gradient at points
from nsr.networks import load_network  # noqa: E402
from nsr.pl import PLGraph, as_graph  # noqa: E402
from nsr.pl.bounds import Bounds, _affine_interval, interval_bounds, layer_bounds  # noqa: E402
from nsr.pl.graph import ENCODED, INPUT, Affine, Layer  # noqa: E402


def slope_range(layer: Layer, lo: Tensor, hi: Tensor) -> Bounds:
    """Range ``(K, n)`` of each neuron's slope for pre-activations in ``[lo, hi]``."""
    neg, pos = layer.neg.expand_as(lo), layer.pos.expand_as(lo)
    on, off = lo >= 0, hi <= 0
    s_lo = torch.where(on, pos, torch.where(off, neg, torch.minimum(neg, pos)))
    s_hi = torch.where(on, pos, torch.where(off, neg, torch.maximum(neg, pos)))
    return s_lo, s_hi


def _interval_product(a: Bounds, b: Bounds) -> Bounds:
    p = torch.stack([a[0] * b[0], a[0] * b[1], a[1] * b[0], a[1] * b[1]])
    return p.min(0).values, p.max(0).values


def directional_bounds(graph: PLGraph, pre: list[Bounds], d: Tensor) -> Bounds:
    """Bounds ``(K,)`` of ``d . grad g`` over ``K`` boxes whose pre-activation bounds are ``pre``;
    ``d`` ``(K, D)``."""
    derivative: dict[int, Bounds] = {INPUT: (d, d)}
    for layer in range(graph.n_layers + 1):
        aff = graph.affine(layer)
        if ENCODED in aff.blocks:
            raise NotImplementedError("encoder networks: the features' derivative is not bounded here")
        # the derivative of an affine map is its linear part: the same interval product, no bias
        dz = _affine_interval(Affine(aff.blocks, torch.zeros_like(aff.bias)), derivative)
        if layer < graph.n_layers:
            derivative[layer] = _interval_product(slope_range(graph.layers[layer], *pre[layer]), dz)
    return dz[0][:, 0], dz[1][:, 0]


def unit_gradients(graph: PLGraph, x: Tensor) -> Tensor:
    """``grad g / |grad g|`` at ``x`` ``(K, D)``."""
    g = _gradients_at(graph, x)
    return g / g.norm(dim=1, keepdim=True).clamp_min(1e-300)


def study(graph: PLGraph, points: Tensor, resolutions: list[int], seed: int) -> list[dict]:
    gen = torch.Generator().manual_seed(seed)
    width = BOUNDS[1] - BOUNDS[0]
    rows = []
    for res in resolutions:
        h = width / res
        lo = points - h * torch.rand(points.shape, generator=gen, dtype=points.dtype)
        hi = lo + h
        d = unit_gradients(graph, (lo + hi) / 2)
        for name in ("interval", "crown"):
            t0 = time.perf_counter()
            with torch.no_grad():
                pre = layer_bounds(graph, lo, hi) if name == "crown" else interval_bounds(graph, lo, hi)
                dlo, _ = directional_bounds(graph, pre, d)
            seconds = time.perf_counter() - t0
            unstable = sum(int(((a < 0) & (b > 0)).sum()) for a, b in pre[:-1]) / len(lo)
            # soundness by brute force: d . grad g at random points of each certified tile
            ok = dlo > 0
            m = 16
            x = lo[ok, None] + h * torch.rand(int(ok.sum()), m, lo.shape[1], generator=gen, dtype=lo.dtype)
            g = _gradients_at(graph, x.reshape(-1, lo.shape[1]))
            slope = (g.reshape(-1, m, lo.shape[1]) * d[ok, None]).sum(-1)
            violations = int((slope < dlo[ok, None] - 1e-9).any(1).sum())
            rows.append({"resolution": res, "bounds": name, "certified": float(ok.double().mean()),
                         "unstable_per_tile": unstable, "median_lower": float(dlo.median()),
                         "seconds": seconds, "violations": violations})
            r = rows[-1]
            print(f"  1/{res:<5d} {name:8s} certified {r['certified']:.3f}  unstable/tile {unstable:6.1f}  "
                  f"median lower bound {r['median_lower']:11.3f}  {seconds:.2f} s  "
                  f"(bound violated in {violations} tiles)", flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nets", nargs="+", type=parse_net, required=True, help="shared:NAME or file:PATH[:LABEL]")
    ap.add_argument("--resolutions", nargs="+", type=int, default=[64, 128, 256, 512, 1024])
    ap.add_argument("--points", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from nsr.extraction.tracking import grid_seeds

    box = torch.tensor([BOUNDS] * 3, dtype=torch.float64)
    for spec in args.nets:
        if not Path(spec.path).is_file():
            print(f"[{spec.label}] skipped: {spec.path} not found")
            continue
        graph = as_graph(load_network(spec.path)).to(dtype=torch.float64)
        points = grid_seeds(graph, box, 32)
        points = points[torch.randperm(len(points), generator=torch.Generator().manual_seed(args.seed))[: args.points]]
        print(f"[{spec.label}] {len(points)} tiles per size, around level-set points", flush=True)
        study(graph, points, args.resolutions, args.seed)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
