"""Train nsr networks on ../shared/meshes/*.obj and report surface quality (issue 5).

Usage: ``python experiments/train_meshes.py [--meshes stanford-bunny] [--minutes 10]``.
Skips cleanly (exit 0) when ../shared/meshes is absent.

Metrics against the ground-truth mesh, ONet convention: both meshes normalized by the ground
truth's bounding box into the unit cube (longest side 1, centered), 100k area-weighted samples
on each, nearest neighbours with scipy's cKDTree: Chamfer-L1 = mean of accuracy and
completeness (Euclidean distances), normal consistency = mean of both directions' |cos|,
F-score at 1% of the cube side. The trained surface is taken by marching cubes on the network
(scikit-image, ``--resolution`` per axis).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
import trimesh
from hydra import compose, initialize_config_dir
from scipy.spatial import cKDTree
from skimage import measure

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nsr._config import config_dir  # noqa: E402
from nsr.train import train  # noqa: E402
from nsr.training.data import MeshSource  # noqa: E402
from nsr.training.lightning import load_module_network  # noqa: E402

SHARED = ROOT.parent / "shared" / "meshes"


def unit_cube(gt: trimesh.Trimesh) -> tuple[np.ndarray, float]:
    lo, hi = gt.bounds
    return (lo + hi) / 2, 1.0 / float((hi - lo).max())


def sample(mesh: trimesh.Trimesh, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    pts, face = trimesh.sample.sample_surface(mesh, n, seed=seed)
    return np.asarray(pts), np.asarray(mesh.face_normals[face])


def surface_metrics(pred: trimesh.Trimesh, gt: trimesh.Trimesh, n: int = 100_000) -> dict:
    """Chamfer-L1, normal consistency, F@1% (ONet convention, GT unit cube)."""
    c, s = unit_cube(gt)
    gt = trimesh.Trimesh((gt.vertices - c) * s, gt.faces, process=False)
    pred = trimesh.Trimesh((pred.vertices - c) * s, pred.faces, process=False)
    p_pts, p_n = sample(pred, n, 1)
    g_pts, g_n = sample(gt, n, 2)
    d_pg, i_pg = cKDTree(g_pts).query(p_pts, workers=1)
    d_gp, i_gp = cKDTree(p_pts).query(g_pts, workers=1)
    acc, comp = d_pg.mean(), d_gp.mean()
    nc = 0.5 * (np.abs((p_n * g_n[i_pg]).sum(1)).mean() + np.abs((g_n * p_n[i_gp]).sum(1)).mean())
    tau = 0.01
    prec, rec = (d_pg < tau).mean(), (d_gp < tau).mean()
    f = 2 * prec * rec / max(prec + rec, 1e-12)
    return {
        "chamfer_l1": float((acc + comp) / 2),
        "normal_consistency": float(nc),
        "fscore_1pct": float(f),
        "precision": float(prec),
        "recall": float(rec),
    }


def marching_cubes_mesh(net: torch.nn.Module, source: MeshSource, res: int, box: float = 0.5):
    ax = torch.linspace(-box, box, res)
    grid = torch.stack(torch.meshgrid(ax, ax, ax, indexing="ij"), -1).reshape(-1, 3)
    with torch.no_grad():
        vals = torch.cat([net(chunk) for chunk in grid.split(262_144)]).reshape(res, res, res)
    spacing = (2 * box / (res - 1),) * 3
    verts, faces, _, _ = measure.marching_cubes(vals.numpy(), 0.0, spacing=spacing, gradient_direction="ascent")
    verts = verts - box
    return trimesh.Trimesh(source.to_shape_units(verts), faces, process=False)


def run_mesh(path: Path, args: argparse.Namespace, out: Path) -> dict:
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[
                "experiment=mesh",
                f"data.path={path}",
                f"run_dir={out / path.stem}",
                f"model.net.width={args.width}",
                f"model.net.depth={args.depth}",
                "trainer.enable_progress_bar=false",
                "trainer.accelerator=cpu",
                f"trainer.max_time=00:00:{int(args.minutes):02d}:{int(args.minutes % 1 * 60):02d}",
                f"callbacks.time_lr.budget_s={args.minutes * 60}",
                "extract=none",
                *args.overrides,
                "logger=csv",
            ],
        )
    t0 = time.perf_counter()
    run_dir = train(cfg)
    train_s = time.perf_counter() - t0
    steps = json.loads((run_dir / "metrics.json").read_text())["global_step"]
    net = load_module_network(run_dir / "checkpoints" / "last.ckpt").eval()
    source = MeshSource(path, cfg.data.fit)
    t1 = time.perf_counter()
    if args.exact:  # the network's exact surface, the mesh nsr exists to give
        from nsr.extraction.surface import extract_mesh

        exact = extract_mesh(net, (-0.5, 0.5), mode="surface", dtype=torch.float64, progress=False)
        pred = trimesh.Trimesh(source.to_shape_units(exact.vertices), exact.triangles, process=False)
    else:
        pred = marching_cubes_mesh(net, source, args.resolution)
    mesh_s = time.perf_counter() - t1
    gt = trimesh.load(path, force="mesh", process=False)
    res = surface_metrics(pred, gt)
    res.update(
        mesh=path.stem,
        train_s=round(train_s, 1),
        steps=steps,
        width=args.width,
        depth=args.depth,
        surface="exact" if args.exact else f"marching cubes {args.resolution}^3",
        surface_s=round(mesh_s, 1),
        overrides=list(args.overrides),
        val_sdf_mae=json.loads((run_dir / "metrics.json").read_text()).get("val/sdf_mae"),
    )
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--meshes", nargs="*", default=None, help="mesh stems (default: all)")
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--resolution", type=int, default=256)
    ap.add_argument("--exact", action="store_true", help="evaluate the exact surface instead of marching cubes")
    ap.add_argument("overrides", nargs="*", help="extra Hydra overrides of train.yaml")
    ap.add_argument("--out", type=Path, default=ROOT / "outputs" / "train_meshes")
    args = ap.parse_args()
    if not SHARED.is_dir():
        print(f"skipping: {SHARED} not present")
        return
    torch.set_num_threads(2)
    paths = sorted(SHARED.glob("*.obj"))
    if args.meshes:
        paths = [p for p in paths if p.stem in args.meshes]
    rows = [run_mesh(p, args, args.out) for p in paths]
    print(f"machine: {platform.processor() or platform.machine()}, torch threads 2")
    print("| mesh | width x depth | train s | steps | surface (s) | Chamfer-L1 | normal cons. | F@1% |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['mesh']} | {r['width']}x{r['depth']} | {r['train_s']} | {r['steps']} "
            f"| {r['surface']} ({r['surface_s']}) "
            f"| {r['chamfer_l1']:.5f} "
            f"| {r['normal_consistency']:.4f} | {r['fscore_1pct']:.4f} |"
        )
    print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
