"""Exact-surface regularizers (issue 7): baseline training vs each regularizer, on meshes.

Usage: ``python experiments/regularizers.py [--meshes stanford-bunny fandisk]
[--variants baseline smooth quality:1e-3 ...] [--pre-epochs 40] [--epochs 40] [--every 10]
[--term-every 1] [--surface-batch N] [--fit-samples N] [--with-fit W] [--seed S]
[--background false|thread|process] [--threads 1]``.
Skips cleanly (exit 0) when ../shared/meshes is absent.

Protocol (everything through ``nsr.train.train`` and the Hydra configs): one shared
pretraining run per mesh (``experiment=mesh``, no regularizer, ``--pre-epochs``), then every
variant resumes from its last checkpoint for ``--epochs`` more epochs with the same optimizer
state and the same step-based cosine decay of the learning rate to ``--eta-min``:
``baseline`` (``regularizer=none``) and each of ``regularizer=area|smooth|quality|fit|
eikonal``; a variant is ``name`` (weight from ``--w-<name>``) or ``name:weight`` (sweeps;
``smooth:weight:normalize`` / ``smooth:weight:sum`` for the length-normalized (default,
``--smooth-normalize``) or summed smoothness, ``fit:weight:point`` or
``fit:weight:plane`` for the fit's distance, ``quality:weight:angles`` for its angle
penalty alone). Re-extraction every
``--every`` steps, regularizers in the loss every ``--term-every`` steps (weights times
``--term-every``); ``--with-fit W`` adds the exact-mesh fit at weight ``W`` to each
variant (``regularizer=all`` with the other three nulled). Then the exact surface of each
final network is extracted (float64) and measured:

* Chamfer-L1, normal consistency, F@1% against the ground-truth mesh (ONet convention: both
  normalized by the ground truth's bounding box to the unit cube, 100k area-weighted samples
  each, scipy cKDTree; F-score threshold 1% of the cube side);
* mean dihedral angle between adjacent exact polygons (angle between their exact region
  normals, degrees), 5th percentile of the per-triangle minimum angle (degrees, fan
  triangles), polygon count;
* time per training step of the resumed run (``nsr.training.lightning.StepTimer``): ``s/step`` from
  batch start to batch end (includes re-extractions and the terms), ``loop s/step`` a whole
  loop iteration with data loading; both as means over all steps, and as a ratio to the
  baseline of the same invocation.

Pictures: ``<out>/<mesh>/<mesh>_side_by_side.png`` (exact meshes). Rows:
``<out>/results.json`` and ``<out>/table.md``.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
import trimesh
from hydra import compose, initialize_config_dir
from scipy.spatial import cKDTree

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nsr import geometry as G  # noqa: E402
from nsr._config import config_dir  # noqa: E402

SHARED = ROOT.parent / "shared" / "meshes"
VARIANTS = ("baseline", "area", "smooth", "quality", "fit", "eikonal")
ALL_INDEX = {"area": 0, "smooth": 1, "quality": 2, "fit": 3, "eikonal": 4}  # conf/regularizer/all.yaml


def unit_cube_metrics(pred: trimesh.Trimesh, gt: trimesh.Trimesh, n: int = 100_000) -> dict:
    """Chamfer-L1, normal consistency, F@1% (ONet convention, GT unit cube)."""
    lo, hi = gt.bounds
    c, s = (lo + hi) / 2, 1.0 / float((hi - lo).max())
    gt = trimesh.Trimesh((gt.vertices - c) * s, gt.faces, process=False)
    pred = trimesh.Trimesh((pred.vertices - c) * s, pred.faces, process=False)
    if len(pred.faces) == 0:
        return {"chamfer_l1": float("nan"), "normal_consistency": float("nan"), "f1pct": 0.0}
    p_pts, p_face = trimesh.sample.sample_surface(pred, n, seed=1)
    g_pts, g_face = trimesh.sample.sample_surface(gt, n, seed=2)
    p_n, g_n = pred.face_normals[p_face], gt.face_normals[g_face]
    d_pg, i_pg = cKDTree(g_pts).query(p_pts)
    d_gp, i_gp = cKDTree(p_pts).query(g_pts)
    nc = 0.5 * (np.abs((p_n * g_n[i_pg]).sum(1)).mean() + np.abs((g_n * p_n[i_gp]).sum(1)).mean())
    prec, rec = (d_pg < 0.01).mean(), (d_gp < 0.01).mean()
    return {
        "chamfer_l1": float((d_pg.mean() + d_gp.mean()) / 2),
        "normal_consistency": float(nc),
        "f1pct": float(2 * prec * rec / max(prec + rec, 1e-12)),
    }


def exact_stats(net: torch.nn.Module, box: float) -> tuple[dict, object]:
    """Exact surface of ``net`` in ``[-box, box]^3`` and its geometry statistics."""
    from nsr.extraction.surface import extract_mesh
    from nsr.networks import as_network

    t0 = time.perf_counter()
    with torch.no_grad():
        mesh = extract_mesh(as_network(net), (-box, box), mode="surface", dtype=torch.float64,
                            progress=False)
    out = {"extract_s": time.perf_counter() - t0, "polygons": len(mesh.polygons)}
    if mesh.is_empty:
        return out | {"dihedral_mean_deg": float("nan"), "min_angle_p5_deg": float("nan")}, mesh
    s = G.SurfaceStructure.from_mesh(mesh)
    with torch.no_grad():
        n = G.region_normals(as_network(net, dtype=torch.float64), s.polygon_patterns)
        inner = s.interior_edges
        dih = G.dihedral_angles(n, s.edge_polygons[inner])
        ang = G.triangle_angles(s.vertices0, s.triangles).min(1).values
    out["dihedral_mean_deg"] = float(torch.rad2deg(dih).mean()) if inner.numel() else float("nan")
    out["min_angle_p5_deg"] = float(np.percentile(np.degrees(ang.numpy()), 5))
    return out, mesh


def compose_cfg(overrides: list[str]):  # noqa: ANN201
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return compose("train", overrides=overrides)


def run_mesh(path: Path, args: argparse.Namespace) -> list[dict]:
    from nsr.train import train
    from nsr.training.data import MeshSource
    from nsr.training.lightning import load_module_network

    out = args.out / path.stem
    common = [
        "experiment=mesh",
        f"data.path={path}",
        f"model.net.width={args.width}",
        f"model.net.depth={args.depth}",
        "data.sampling.mode=pool",
        f"data.sampling.pool_size={args.pool}",
        f"data.sampling.batch_size={args.batch}",
        f"data.sampling.steps_per_epoch={args.steps_per_epoch}",
        "data.sampling.n_val=4000",
        "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false",
        "trainer.accelerator=cpu",
        "trainer.max_time=null",
        "extract=none",
        "logger=none",
    ]
    pre_dir = out / "pretrain"
    t0 = time.perf_counter()
    pre_cfg = compose_cfg(common + [f"run_dir={pre_dir}", f"trainer.max_epochs={args.pre_epochs}"])
    if not (args.reuse_pretrain and (pre_dir / "checkpoints" / "last.ckpt").is_file()):
        train(pre_cfg)
    print(f"{path.stem}: pretrain {time.perf_counter() - t0:.0f}s", flush=True)
    ckpt = pre_dir / "checkpoints" / "last.ckpt"
    gt = trimesh.load(path, force="mesh", process=False)
    source = MeshSource(path, float(pre_cfg.data.fit))
    box = float(pre_cfg.data.box)
    rows, meshes, titles, polys = [], [], [], []
    n_steps = args.epochs * args.steps_per_epoch
    for spec in args.variants:
        # "name" (weight from --w-<name>) or "name:weight" (sweeps), "name:weight:normalize"
        variant, *extra = spec.split(":")
        weight = float(extra[0]) if extra else args.weights.get(variant, 0.0)
        normalize = "normalize" in extra[1:] or (args.smooth_normalize and "sum" not in extra[1:])
        run_dir = out / spec.replace(":", "_")
        ov = common + [
            f"run_dir={run_dir}",
            f"trainer.max_epochs={args.pre_epochs + args.epochs}",
            f"ckpt_path={ckpt}",
            f"seed={args.seed}",
            # the same step-based cosine decay for every variant (the time-based one of
            # experiment=mesh would decay slower variants faster)
            "~callbacks.time_lr",
            "+model.scheduler._target_=torch.optim.lr_scheduler.CosineAnnealingLR",
            "+model.scheduler._partial_=true",
            f"+model.scheduler.T_max={n_steps}",
            f"+model.scheduler.eta_min={args.eta_min}",
            "model.scheduler_interval=step",
            "+callbacks.step_timer._target_=nsr.training.lightning.StepTimer",
            f"+callbacks.step_timer.path={run_dir / 'step_times.json'}",
        ]
        # --with-fit: the combined config with only this regularizer and the fit left in
        combine = args.with_fit is not None and variant not in ("baseline", "fit", "all")
        i = ALL_INDEX[variant] if combine else 0
        if combine:
            run_dir = run_dir.with_name(run_dir.name + f"_fit{args.with_fit:g}")
            ov = [o for o in ov if not o.startswith(("run_dir=", "+callbacks.step_timer.path="))] + [
                f"run_dir={run_dir}", f"+callbacks.step_timer.path={run_dir / 'step_times.json'}"]
        if variant != "baseline":
            ov += [
                f"regularizer={'all' if combine else variant}",
                f"regularizer.every_n_steps={args.every}",
                f"regularizer.term_every_n_steps={args.term_every}",
                f"regularizer.reuse_gradient={str(args.reuse_gradient).lower()}",
                f"regularizer.background={args.background}",
                f"regularizer.dtype={args.dtype}",
                f"+regularizer.worker_nice={args.worker_nice}",
                f"regularizer.frozen_jacobian={str(args.frozen_jacobian).lower()}",
                f"regularizer.surface_batch={args.surface_batch or 'null'}",
            ]
            if args.fit_samples is not None and (variant in ("fit", "all") or combine):
                ov.append(f"regularizer.regularizers.{ALL_INDEX['fit'] if variant == 'all' or combine else 0}"
                          f".n_samples={args.fit_samples}")
            if variant == "all":  # all five at their --w-<name> weights
                ov += [f"regularizer.regularizers.{j}.weight={args.weights[name]}" for name, j in ALL_INDEX.items()]
                ov += [f"regularizer.regularizers.{j}.ramp_steps={args.ramp}" for j in ALL_INDEX.values()]
                ov += [f"regularizer.regularizers.{ALL_INDEX['fit']}.distance={args.fit_distance}",
                       f"regularizer.regularizers.{ALL_INDEX['smooth']}.normalize={str(normalize).lower()}"]
            else:
                ov += [f"regularizer.regularizers.{i}.weight={weight}",
                       f"regularizer.regularizers.{i}.ramp_steps={args.ramp}"]
            if combine:
                f = ALL_INDEX["fit"]
                ov += [f"regularizer.regularizers.{j}=null" for name, j in ALL_INDEX.items()
                       if name not in (variant, "fit")]
                ov += [f"regularizer.regularizers.{f}.weight={args.with_fit}",
                       f"regularizer.regularizers.{f}.ramp_steps={args.ramp}",
                       f"regularizer.regularizers.{f}.distance={args.fit_distance}"]
            ov.append(f"regularizer.extract_kwargs.mode={args.extract_mode}")
            if args.tiles is not None:
                ov.append(f"+regularizer.extract_kwargs.tiles={args.tiles}")
            if variant == "fit":
                dist = "plane" if "plane" in extra[1:] else "point" if "point" in extra[1:] \
                    else args.fit_distance
                ov.append(f"regularizer.regularizers.{i}.distance={dist}")
            if variant == "quality" and "angles" in extra[1:]:  # the angle penalty only
                ov += [f"regularizer.regularizers.{i}.edge_weight=0",
                       f"regularizer.regularizers.{i}.polygon_weight=0"]
            if variant == "smooth" and normalize:
                ov.append(f"regularizer.regularizers.{i}.normalize=true")
        cfg = compose_cfg(ov)
        shutil.rmtree(run_dir, ignore_errors=True)  # a stale last.ckpt would be read back
        t0 = time.perf_counter()
        train(cfg)
        wall = time.perf_counter() - t0
        metrics = json.loads((run_dir / "metrics.json").read_text())
        steps = int(metrics["global_step"]) - args.pre_epochs * args.steps_per_epoch
        timer = json.loads((run_dir / "step_times.json").read_text())
        net = load_module_network(run_dir / "checkpoints" / "last.ckpt").eval()
        stats, mesh = exact_stats(net, box)
        verts = source.to_shape_units(np.asarray(mesh.vertices))
        tm = trimesh.Trimesh(verts, np.asarray(mesh.triangles), process=False)
        row = {
            "mesh": path.stem,
            "variant": variant + (" (normalized)" if variant == "smooth" and normalize else "")
            + (f" ({extra[1]})" if variant in ("fit", "quality") and len(extra) > 1 else "")
            + (f" + fit {args.with_fit:g}" if combine else ""),
            "weight": 0.0 if variant == "baseline" else weight,
            "steps": steps,
            "s_per_step": timer["mean_s"],
            "median_step_s": timer["median_s"],
            "loop_s_per_step": timer["loop_mean_s"],
            "fit_s_per_step": float(metrics["train_s"]) / max(steps, 1),
            "extractions": metrics.get("reg_cost/extractions", 0.0),
            "last_lag_steps": metrics.get("reg_cost/lag_steps", 0.0),
            "invalid_fraction": metrics.get("reg_cost/invalid_fraction", 0.0),
            "wall_s": wall,
            **unit_cube_metrics(tm, gt),
            **stats,
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
        meshes.append(tm)
        titles.append(f"{variant}" + ("" if variant == "baseline" else f" {weight:g}")
                      + f": {len(mesh.polygons)} polygons")
        polys.append(None)
    try:
        from nsr.eval.render import render_side_by_side

        render_side_by_side(meshes, titles, out / f"{path.stem}_side_by_side.png", panel=300,
                            polygons=polys)
    except Exception as err:  # noqa: BLE001 - pictures are optional
        print(f"rendering failed: {err}")
    return rows


def step_costs(path: Path, args: argparse.Namespace, repeats: int = 5) -> dict:
    """Median seconds of one plain training step, one extraction and each regularizer term
    (forward + backward), measured back to back on the pretrained network of ``path``."""
    import hydra

    from nsr import regularizers as R
    from nsr.training.lightning import load_module_network

    ckpt = args.out / path.stem / "pretrain" / "checkpoints" / "last.ckpt"
    cfg = compose_cfg([
        "experiment=mesh", f"data.path={path}", f"model.net.width={args.width}",
        f"model.net.depth={args.depth}", "data.sampling.mode=pool", "data.sampling.pool_size=20000",
        f"data.sampling.batch_size={args.batch}", "data.sampling.n_val=1000",
    ])
    dm = hydra.utils.instantiate(cfg.data)
    dm.setup("fit")
    batch = dm.train_dataloader().dataset[0]
    loss_fn = hydra.utils.instantiate(cfg.loss)
    net = load_module_network(ckpt).train()
    target = dm.source.sample_surface(100_000, torch.Generator().manual_seed(0))[0]
    regs = {"area": R.AreaRegularizer(), "smooth": R.SmoothnessRegularizer(),
            "quality": R.QualityRegularizer(), "fit": R.FitRegularizer(target=target),
            "eikonal": R.EikonalRegularizer()}
    cb = R.ExactRegularizerCallback([], bounds=float(cfg.data.box), extract_kwargs={"mode": args.extract_mode})

    def timed(fn) -> float:
        ts = []
        for _ in range(repeats):
            net.zero_grad()
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
        return float(np.median(ts))

    out = {"mesh": path.stem, "plain_step_s": timed(lambda: loss_fn(net, batch)["loss"].backward())}
    out["extract_s"] = timed(lambda: cb.refresh(net))
    out["polygons"] = cb.structure.n_polygons if cb.structure is not None else 0
    for name, r in regs.items():
        out[f"{name}_term_s"] = timed(
            lambda r=r: R.regularizer_terms(net, cb.structure, [r])[r.name].backward())
        # as configured by --dtype / --frozen-jacobian (the Hydra defaults)
        out[f"{name}_term_fast_s"] = timed(
            lambda r=r: R.regularizer_terms(
                net, cb.structure, [r], dtype=getattr(torch, args.dtype),
                frozen_jacobian=args.frozen_jacobian)[r.name].backward())
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--meshes", nargs="*", default=["stanford-bunny", "fandisk"])
    ap.add_argument("--variants", nargs="*", default=list(VARIANTS),
                    help="name or name:weight (e.g. smooth:1e-3), or smooth:weight:normalize")
    ap.add_argument("--pre-epochs", type=int, default=40)
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--steps-per-epoch", type=int, default=25)
    ap.add_argument("--batch", type=int, default=2048)
    ap.add_argument("--pool", type=int, default=100_000)
    ap.add_argument("--every", type=int, default=10, help="re-extraction every N steps")
    ap.add_argument("--term-every", type=int, default=1,
                    help="regularizers in the loss every N steps (weights x N)")
    ap.add_argument("--background", choices=["false", "thread", "process"], default="false",
                    help="re-extract in a worker (thread or process) or synchronously")
    ap.add_argument("--reuse-gradient", action=argparse.BooleanOptionalAction, default=False,
                    help="add the last term's gradient in every step instead of weight x N in the term step")
    ap.add_argument("--with-fit", type=float, default=None,
                    help="add the exact-mesh fit with this weight to each regularizer variant")
    ap.add_argument("--worker-nice", type=int, default=10, help="niceness of the worker process")
    ap.add_argument("--dtype", default="float32", help="dtype of the differentiable geometry")
    ap.add_argument("--frozen-jacobian", action=argparse.BooleanOptionalAction, default=True,
                    help="cheaper differentiable vertices (exact gradient on a fresh structure)")
    ap.add_argument("--extract-mode", choices=["track", "surface"], default="track",
                    help="extract_mesh mode of the callback's re-extraction")
    ap.add_argument("--tiles", type=int, default=None, help="surface mode: extract_mesh tiles (default: its own)")
    ap.add_argument("--surface-batch", type=int, default=None,
                    help="shared edges per term (a random patch of the surface each step; default: all)")
    ap.add_argument("--fit-samples", type=int, default=None, help="the fit's samples per term (default: its own)")
    ap.add_argument("--ramp", type=int, default=0, help="ramp_steps of the regularizer")
    ap.add_argument("--smooth-normalize", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--fit-distance", choices=["point", "plane"], default="point")
    ap.add_argument("--eta-min", type=float, default=1e-4,
                    help="final lr of the resumed runs' cosine decay")
    ap.add_argument("--threads", type=int, default=2, help="torch threads")
    ap.add_argument("--seed", type=int, default=0, help="seed of the resumed runs (sample pool, batches)")
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--depth", type=int, default=3)
    ap.add_argument("--w-area", type=float, default=1e-3)
    ap.add_argument("--w-smooth", type=float, default=7e-2)
    ap.add_argument("--w-quality", type=float, default=1e-4)
    ap.add_argument("--w-fit", type=float, default=10.0)
    ap.add_argument("--w-eikonal", type=float, default=1e-2)
    ap.add_argument("--costs", action="store_true",
                    help="only time step / extraction / terms on the pretrained networks")
    ap.add_argument("--reuse-pretrain", action="store_true", help="keep an existing pretraining")
    ap.add_argument("--out", type=Path, default=ROOT / "outputs" / "regularizers")
    args = ap.parse_args()
    args.weights = {
        "area": args.w_area, "smooth": args.w_smooth, "quality": args.w_quality,
        "fit": args.w_fit, "eikonal": args.w_eikonal,
    }
    if not SHARED.is_dir():
        print(f"skipping: {SHARED} not present")
        return
    torch.set_num_threads(args.threads)
    if args.costs:
        for stem in args.meshes:
            if (SHARED / f"{stem}.obj").is_file():
                print(json.dumps(step_costs(SHARED / f"{stem}.obj", args)), flush=True)
        return
    rows = []
    for stem in args.meshes:
        path = SHARED / f"{stem}.obj"
        if not path.is_file():
            print(f"skipping {stem}: {path} not present")
            continue
        rows += run_mesh(path, args)
    print(f"machine: {platform.machine()} {platform.processor()}, torch threads {args.threads}")
    print("| mesh | variant | weight | Chamfer-L1 | NC | F@1% | mean dihedral ° | "
          "p5 min angle ° | polygons | s/step | x baseline | loop s/step | x baseline |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    base = {r["mesh"]: r for r in rows if r["variant"] == "baseline"}
    for r in rows:
        b = base.get(r["mesh"])
        ratio = r["s_per_step"] / b["s_per_step"] if b else float("nan")
        loop = r["loop_s_per_step"] / b["loop_s_per_step"] if b else float("nan")
        print(f"| {r['mesh']} | {r['variant']} | {r['weight']:g} | {r['chamfer_l1']:.5f} | "
              f"{r['normal_consistency']:.4f} | {r['f1pct']:.4f} | {r['dihedral_mean_deg']:.2f} | "
              f"{r['min_angle_p5_deg']:.2f} | {r['polygons']} | {r['s_per_step']:.4f} | "
              f"{ratio:.2f} | {r['loop_s_per_step']:.4f} | {loop:.2f} |")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(rows, indent=1))
    lines = [f"| {r['mesh']} | {r['variant']} | {r['weight']:g} | {r['chamfer_l1']:.5f} | "
             f"{r['normal_consistency']:.4f} | {r['f1pct']:.4f} | {r['dihedral_mean_deg']:.2f} | "
             f"{r['min_angle_p5_deg']:.2f} | {r['polygons']} | {r['s_per_step']:.4f} |"
             for r in rows]
    (args.out / "table.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
