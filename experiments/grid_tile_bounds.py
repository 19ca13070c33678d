"""Study (issue 14): can bounds over small boxes prune surface mode's work on a simplex-grid network?

Surface mode is complete because it builds the arrangement of every plane over the parts of the box
that bounds cannot drop. On a plain MLP, region pruning drops most of it. On a trained grid network
it drops almost nothing before the encoder's planes are all cut, so the whole overlay of the levels'
grids is built (~170 M vertices for 6 levels 8..96), which is why the complete mode takes over an
hour there. This script measures how far bounds over a box are from the network's true range on that
box, as the box shrinks:

- ``interval``: :func:`nsr.pl.bounds.output_bounds` with interval pre-activations (the features'
  range over the grid vertices the box touches, :meth:`SimplexGridEncoder.feature_bounds`);
- ``crown``: the same with linear bounds on the hidden layers (CROWN);
- ``simplex`` (boxes aligned with the finest level's cells only): each finest cell split into its
  ``D!`` Kuhn simplices, on which the finest level's features are exactly affine; the other levels'
  features are relaxed to the affine map at the simplex's centroid plus the spread of their slopes
  over the cells the box touches times the box side; CROWN back to the first layer, minimised over
  the simplex's vertices. The tightest bound a box-level pruning could use short of cutting every
  level's planes.

Printed per box side: median bound width, median true width (range of ``g`` at ``--samples``
random points of the box, a lower estimate), the fraction of boxes whose bounds straddle the level,
the fraction that truly straddle it (sampled), and seconds.

    python experiments/grid_tile_bounds.py experiments/out/grid_fandisk_180s_normal.pt

Findings are in ``experiments/RESULTS.md`` ("Complete mode on grid networks: why bounds do not prune").
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

import torch
from torch import Tensor

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "experiments"))

from grid_net import load_grid_net  # noqa: E402

from nsr.extraction.pruning import output_bounds  # noqa: E402
from nsr.pl import PLGraph, as_graph  # noqa: E402
from nsr.pl.bounds import region_bounds  # noqa: E402
from nsr.pl.graph import ENCODED, INPUT  # noqa: E402


def slope_spread(graph: PLGraph, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
    """Least and greatest slope ``(K, F, D)`` (x units) of every grid feature along every axis over
    the cells each box ``(K, D)`` touches: the differences of the table along the cells' edges."""
    encoder = graph.encoder
    enc, d = encoder.encoding, graph.in_dim
    table = encoder.table.to(lo.dtype)
    lows, highs = [], []
    for level, n in enumerate(enc.resolutions):
        scale = n / (enc.hi - enc.lo)
        v0 = enc.grid_coordinates(lo, level).floor().long().clamp(max=n - 1)
        ext = torch.maximum(enc.grid_coordinates(hi, level).ceil().long() - v0, torch.ones_like(v0))
        m = int(ext.max()) + 1
        offsets = torch.cartesian_prod(*[torch.arange(m)] * d).reshape(-1, d)
        verts = v0[:, None, :] + torch.minimum(offsets[None], ext[:, None, :])
        vals = enc.gather(table, verts, level).reshape(len(lo), *[m] * d, -1)
        big = torch.finfo(lo.dtype).max
        level_lo, level_hi = [], []
        for axis in range(d):
            diff = vals.diff(dim=1 + axis) * scale
            shape = [len(lo)] + [1] * d
            shape[1 + axis] = m - 1
            inside = (torch.arange(m - 1)[None, :] < ext[:, axis:axis + 1]).reshape(shape)[..., None]
            dims = tuple(range(1, d + 1))
            level_lo.append(torch.where(inside, diff, big).amin(dim=dims))
            level_hi.append(torch.where(inside, diff, -big).amax(dim=dims))
        lows.append(torch.stack(level_lo, -1))
        highs.append(torch.stack(level_hi, -1))
    return torch.cat(lows, 1), torch.cat(highs, 1)


def simplex_bounds(graph: PLGraph, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
    """Bounds ``(K,)`` of ``g`` over boxes aligned with the finest level's cells (see the module)."""
    enc, d = graph.encoder.encoding, graph.in_dim
    k, side = len(lo), hi - lo
    perms = list(itertools.permutations(range(d)))
    corners = []
    for p in perms:  # Kuhn simplex of order p: lo, lo + e_p0, lo + e_p0 + e_p1, ...
        steps = [lo]
        for axis in p:
            nxt = steps[-1].clone()
            nxt[:, axis] = hi[:, axis]
            steps.append(nxt)
        corners.append(torch.stack(steps, 1))
    verts = torch.stack(corners, 1)  # (K, S, D+1, D)
    s = len(perms)
    maps, consts = graph.encoder.feature_maps(verts.mean(2).reshape(-1, d))
    maps, consts = maps.reshape(k, s, -1, d), consts.reshape(k, s, -1)
    s_lo, s_hi = slope_spread(graph, lo, hi)
    n_grid = s_lo.shape[1]
    err = (torch.maximum((s_lo[:, None] - maps[:, :, :n_grid]).abs(), (s_hi[:, None] - maps[:, :, :n_grid]).abs())
           * side[:, None, None, :]).sum(-1)
    finest = len(enc.resolutions) - 1
    err[:, :, finest * enc.features:(finest + 1) * enc.features] = 0  # exact on its own simplex
    err = torch.cat([err, err.new_zeros(k, s, maps.shape[2] - n_grid)], 2)  # raw coordinates: exact
    first = graph.affine(0)
    w = first.blocks[ENCODED]
    lin = torch.einsum("nf,ksfd->ksnd", w, maps)
    if INPUT in first.blocks:
        lin = lin + first.blocks[INPUT]
    const = consts @ w.T + first.bias
    slack = err @ w.abs().T
    z_at = torch.einsum("ksnd,ksvd->ksvn", lin, verts) + const[:, :, None, :]
    r = k * s
    z = ((z_at.amin(2) - slack).reshape(r, -1), (z_at.amax(2) + slack).reshape(r, -1))
    (o_lo, o_hi), _, (a_lo, c_lo, a_up, c_up) = region_bounds(graph, 0, z, {})
    lin, const, slack, verts = lin.reshape(r, *lin.shape[2:]), const.reshape(r, -1), slack.reshape(r, -1), \
        verts.reshape(r, d + 1, d)
    low = (torch.einsum("rn,rnd,rvd->rv", a_lo, lin, verts).amin(1) + (a_lo * const).sum(1)
           - (a_lo.abs() * slack).sum(1) + c_lo)
    up = (torch.einsum("rn,rnd,rvd->rv", a_up, lin, verts).amax(1) + (a_up * const).sum(1)
          + (a_up.abs() * slack).sum(1) + c_up)
    low, up = torch.maximum(low, o_lo).reshape(k, s), torch.minimum(up, o_hi).reshape(k, s)
    return low.min(1).values, up.max(1).values


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("net", type=Path, help="a grid network saved by experiments/grid_net.py")
    ap.add_argument("--boxes", type=int, default=4000, help="random boxes per side")
    ap.add_argument("--samples", type=int, default=200, help="points per box for the true range")
    ap.add_argument("--sides", type=int, nargs="+", default=[16, 32, 96, 192, 384],
                    help="box sides as fractions 1/R of the box [-0.5, 0.5]^3")
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args(argv)
    if not a.net.is_file():
        print(f"skipping: no network {a.net} (train one with experiments/grid_net.py)")
        return 0
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    graph = as_graph(load_grid_net(a.net)).to(dtype=torch.float64)
    finest = graph.encoder.encoding.resolutions[-1]
    print(f"{a.net.name}: resolutions {graph.encoder.encoding.resolutions}, {a.boxes} boxes per side")
    print("| side | bound | median bound width | median true width | bounds straddle | truly straddle | s |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for res in a.sides:
        idx = torch.randint(0, res, (a.boxes, 3), dtype=torch.float64)
        lo = -0.5 + idx / res
        hi = -0.5 + (idx + 1) / res
        pts = lo[:, None] + (hi - lo)[:, None] * torch.rand(a.boxes, a.samples, 3, dtype=torch.float64)
        with torch.no_grad():
            g = graph(pts.reshape(-1, 3)).reshape(a.boxes, a.samples)
        true_w = float((g.amax(1) - g.amin(1)).median())
        truly = float(((g.amin(1) <= 0) & (g.amax(1) >= 0)).double().mean())
        kinds = ["interval", "crown"] + (["simplex"] if res == finest else [])
        for kind in kinds:
            t0 = time.perf_counter()
            with torch.no_grad():
                if kind == "simplex":
                    b_lo, b_hi = simplex_bounds(graph, lo, hi)
                else:
                    b_lo, b_hi = output_bounds(graph, lo, hi, crown_hidden=kind == "crown")
            dt = time.perf_counter() - t0
            if not bool(((b_lo <= g.amin(1) + 1e-12) & (b_hi >= g.amax(1) - 1e-12)).all()):
                raise AssertionError(f"{kind} bounds at side 1/{res} miss a sampled value")
            straddle = float(((b_lo <= 0) & (b_hi >= 0)).double().mean())
            print(f"| 1/{res} | {kind} | {float((b_hi - b_lo).median()):.4f} | {true_w:.4f} | {straddle:.3f} | "
                  f"{truly:.3f} | {dt:.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
