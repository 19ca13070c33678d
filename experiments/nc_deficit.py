"""Issue 14: where a grid network's normal-consistency deficit lies on its exact mesh.

Usage::

    python experiments/nc_deficit.py --mesh stanford-bunny --minutes 3 --normal 0.02 --threads 1

Trains the grid network of ``bench_grid.py`` (same protocol and options; the trained state is cached
under ``<out>/nets/`` by its arguments, so a second call only measures), extracts its exact mesh in
track mode (float64), draws ``--samples`` area-weighted samples on it and on the ground truth in the
ground truth's unit cube (the metric's convention, :func:`nsr.eval.metrics.unit_cube_chamfer`), and
splits ``1 - |cos|`` of the matched normals, in both directions, by where each pair lies:

- ``boundary``: the ground-truth point of the pair is within ``--near`` of an open edge of the
  ground truth (a scan's holes: the network closes them, the ground truth does not);
- ``crease``: within ``--near`` of a sharp edge (dihedral angle over ``--sharp`` degrees);
- ``far``: the pair's two points are farther apart than ``--far`` (surface the other mesh lacks);
- ``smooth``: the rest.

The table gives each class's share of the samples, its mean ``|cos|`` and its share of the deficit;
the normal consistency with a class's deficit removed says what that class costs. Exits 0 saying so
when ``../shared/meshes`` is absent.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import trimesh

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "experiments"))

import bench_grid  # noqa: E402

from nsr.eval.metrics import nearest, unit_cube_pairs  # noqa: E402

CLASSES = ("boundary", "crease", "far", "smooth")


def edge_points(mesh: trimesh.Trimesh, edges: np.ndarray, spacing: float) -> np.ndarray:
    """Points every ``spacing`` (or closer) along the segments ``edges`` ``(E, 2)`` of ``mesh``."""
    if len(edges) == 0:
        return np.zeros((0, 3))
    a, b = mesh.vertices[edges[:, 0]], mesh.vertices[edges[:, 1]]
    n = np.maximum(1, np.ceil(np.linalg.norm(b - a, axis=1) / spacing).astype(int))
    t = np.concatenate([np.arange(k + 1) / k for k in n])
    rep = np.repeat(np.arange(len(edges)), n + 1)
    return a[rep] + t[:, None] * (b - a)[rep]


def feature_edges(gt: trimesh.Trimesh, sharp_deg: float) -> tuple[np.ndarray, np.ndarray]:
    """Open edges (in one face) and sharp edges (dihedral angle over ``sharp_deg``) of ``gt``."""
    sorted_edges = np.sort(gt.edges, axis=1)
    open_rows = trimesh.grouping.group_rows(sorted_edges, require_count=1)
    open_edges = sorted_edges[np.asarray(open_rows, dtype=int).reshape(-1)]
    sharp = gt.face_adjacency_edges[np.degrees(gt.face_adjacency_angles) > sharp_deg]
    return open_edges, sharp


def classify(ref_pts: np.ndarray, other: np.ndarray, boundary: np.ndarray, crease: np.ndarray,
             near: float, far: float) -> np.ndarray:
    """Class index (``CLASSES``) of each pair ``(ref_pts[i], other[i])``; ``ref_pts`` on the ground truth."""
    cls = np.full(len(ref_pts), CLASSES.index("smooth"))
    if len(crease):
        cls[nearest(ref_pts, crease)[0] < near] = CLASSES.index("crease")
    if len(boundary):
        cls[nearest(ref_pts, boundary)[0] < near] = CLASSES.index("boundary")
    cls[np.linalg.norm(ref_pts - other, axis=1) > far] = CLASSES.index("far")
    return cls


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mesh", default="stanford-bunny")
    ap.add_argument("--near", type=float, default=0.01, help="unit-cube distance to an open or sharp edge")
    ap.add_argument("--far", type=float, default=0.005, help="unit-cube distance of a pair counted as 'far'")
    ap.add_argument("--sharp", type=float, default=30.0, help="dihedral angle of a sharp edge (degrees)")
    ap.add_argument("--out-json", type=Path, default=None)
    args, rest = ap.parse_known_args(argv)
    bargs = bench_grid.parse_args(["--meshes", args.mesh, "--nets", "grid", "--mc", *rest])
    path = bench_grid.SHARED / f"{args.mesh}.obj"
    if not path.exists():
        print(f"{path} not found (../shared absent): nothing to measure")
        return 0
    torch.set_num_threads(bargs.threads)
    key = {k: v for k, v in vars(bargs).items() if k not in ("out", "meshes", "samples", "modes", "grid_modes", "mc")}
    tag = hashlib.sha1(json.dumps([args.mesh, key], sort_keys=True, default=str).encode()).hexdigest()[:8]
    cache = bargs.out / "nets" / f"grid_{args.mesh}_{tag}.pt"
    net = bench_grid.make_net("grid", bargs)
    if cache.exists():
        net.load_state_dict(torch.load(cache, weights_only=True))
        print(f"loaded {cache}")
    else:
        net, snaps = bench_grid.train("grid", path, bargs)
        net.load_state_dict(snaps[-1]["state"])
        cache.parent.mkdir(parents=True, exist_ok=True)
        torch.save(snaps[-1]["state"], cache.with_suffix(".tmp"))
        cache.with_suffix(".tmp").rename(cache)
        print(f"trained {snaps[-1]['steps']} steps, saved {cache}")
    net.eval()
    t0 = time.perf_counter()
    exact, secs, err = bench_grid.exact_surface(net, "track")
    if err:
        raise SystemExit(err)
    print(f"track mode: {len(exact.polygons):,} polygons in {secs:.1f} s ({time.perf_counter() - t0:.1f} s)")
    source = bench_grid.ShapeDataModule(kind="mesh", path=str(path), dim=3, box=bench_grid.BOX,
                                        fit=bench_grid.FIT).source
    pred = trimesh.Trimesh(bench_grid._shape_units(exact.vertices, source), exact.triangles, process=False)
    gt = trimesh.load(path, force="mesh", process=False)

    m = unit_cube_pairs(pred, gt, bargs.samples)  # the metric's own samples and matches
    p, r, i_pr, i_rp, n_p, n_r = (m[k] for k in ("pred", "ref", "i_pr", "i_rp", "n_pred", "n_ref"))
    centre, scale = m["centre"], m["scale"]
    cos_pr = np.abs((n_p * n_r[i_pr]).sum(1))
    cos_rp = np.abs((n_r * n_p[i_rp]).sum(1))
    open_edges, sharp = feature_edges(gt, args.sharp)
    unit = trimesh.Trimesh((gt.vertices - centre) * scale, gt.faces, process=False)
    boundary_pts = edge_points(unit, open_edges, args.near / 4)
    crease_pts = edge_points(unit, sharp, args.near / 4)
    cls_pr = classify(r[i_pr], p, boundary_pts, crease_pts, args.near, args.far)
    cls_rp = classify(r, p[i_rp], boundary_pts, crease_pts, args.near, args.far)
    nc = 0.5 * (cos_pr.mean() + cos_rp.mean())
    deficit = 0.5 * ((1 - cos_pr).sum() + (1 - cos_rp).sum()) / len(p)
    print(f"\n{args.mesh}: normal consistency {nc:.4f} (deficit {1 - nc:.4f}); {len(open_edges)} open edges, "
          f"{len(sharp)} sharp edges (> {args.sharp:g} deg); near = {args.near:g}, far = {args.far:g} (unit cube)\n")
    print("| class | direction | share of samples | mean \\|cos\\| | share of the deficit "
          "| NC without this class's deficit |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    out = {"mesh": args.mesh, "normal_consistency": nc, "polygons": len(exact.polygons), "rows": []}
    for name, cls, cos in (("exact -> GT", cls_pr, cos_pr), ("GT -> exact", cls_rp, cos_rp)):
        for k, c in enumerate(CLASSES):
            m = cls == k
            if not m.any():
                continue
            d = 0.5 * (1 - cos[m]).sum() / len(p)
            row = {"class": c, "direction": name, "share": float(m.mean()), "mean_cos": float(cos[m].mean()),
                   "deficit_share": float(d / deficit), "nc_without": float(nc + d)}
            out["rows"].append(row)
            print(f"| {c} | {name} | {row['share']:.3f} | {row['mean_cos']:.4f} | {row['deficit_share']:.3f} | "
                  f"{row['nc_without']:.4f} |")
    if args.out_json:
        args.out_json.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
