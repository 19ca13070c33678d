"""The ``grid_cpu`` preset as a user runs it, measured (issue 14).

Trains ``experiment=grid_cpu data.path=<shared mesh>`` (or ``--experiment mesh``: the 64x4 MLP) through
nsr's Hydra app (the preset's own budget, its progress bar off), then in the same process: the exact mesh
as the apps extract it (``mode=auto``, float64), marching cubes 256³ of the same network, and the metrics
of ``bench_grid.py`` on the exact mesh (Chamfer-L1 with 1M samples against the mesh's own floor, normal
consistency, F@0.5%, max |f|). Extra Hydra overrides follow ``--``, so two presets can run side by side,
each pinned to a core::

    OMP_NUM_THREADS=1 taskset -c 0 python experiments/preset_grid.py --mesh fandisk --out DIR_A &
    OMP_NUM_THREADS=1 taskset -c 1 python experiments/preset_grid.py --mesh fandisk --out DIR_B -- \\
        model.net.n_levels=6 model.net.min_resolution=8      # the levels before 2026-12-02

Skips cleanly (exit 0) when ../shared/meshes is absent. Prints one JSON row and writes ``DIR/result.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import trimesh

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "experiments"))

import bench_grid  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402

from nsr._config import config_dir  # noqa: E402
from nsr.eval.marching_cubes import marching_cubes  # noqa: E402
from nsr.eval.metrics import self_floor, unit_cube_chamfer  # noqa: E402
from nsr.extraction.surface import extract_mesh  # noqa: E402
from nsr.train import train  # noqa: E402
from nsr.training.data import MeshSource  # noqa: E402
from nsr.training.lightning import load_module_network  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mesh", default="fandisk", help="a mesh stem under ../shared/meshes")
    ap.add_argument("--out", type=Path, required=True, help="run directory (created)")
    ap.add_argument("--samples", type=int, default=1_000_000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--experiment", default="grid_cpu", help="the preset (e.g. mesh: the 64x4 MLP)")
    args = ap.parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    path = bench_grid.SHARED / f"{args.mesh}.obj"
    if not path.is_file():
        print(f"skipping: {path} not present")
        return 0
    torch.set_num_threads(args.threads)
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose("train", overrides=[f"experiment={args.experiment}", f"data.path={path}", f"run_dir={args.out}",
                                          "trainer.enable_progress_bar=false", "trainer.accelerator=cpu",
                                          "extract=none", "logger=csv", *extra])
    t0 = time.perf_counter()
    run_dir = train(cfg)
    row: dict = {"mesh": args.mesh, "experiment": args.experiment, "overrides": extra,
                 "train_s": round(time.perf_counter() - t0, 1),
                 "steps": json.loads((run_dir / "metrics.json").read_text())["global_step"]}
    net = load_module_network(run_dir / "checkpoints" / "last.ckpt").eval()
    row["params"] = sum(p.numel() for p in net.parameters())
    box = float(cfg.data.box)
    t1 = time.perf_counter()
    exact = extract_mesh(net, (-box, box), mode="auto", dtype=torch.float64, progress=False)
    row |= {"exact_s": round(time.perf_counter() - t1, 2), "mode": exact.stats["mode"],
            "polygons": len(exact.polygons), "max_abs_f": exact.stats["max_abs_f"]}
    with torch.no_grad():
        t1 = time.perf_counter()
        mc = marching_cubes(lambda x: net(x), (-box, box), 256)
        row |= {"mc256_s": round(time.perf_counter() - t1, 2), "mc256_triangles": len(mc.faces)}
    row["exact_over_mc256"] = round(row["exact_s"] / row["mc256_s"], 3)
    source = MeshSource(path, cfg.data.fit)
    gt = trimesh.load(path, force="mesh", process=False)
    pred = trimesh.Trimesh(source.to_shape_units(exact.vertices), exact.triangles, process=False)
    m = unit_cube_chamfer(pred, gt, args.samples)
    floor = self_floor(gt, args.samples)
    row |= {k: m[k] for k in ("chamfer_l1", "normal_consistency", "f_score@0.005")}
    row["chamfer_over_floor"] = m["chamfer_l1"] / floor["chamfer_l1"]
    print(json.dumps(row, default=float), flush=True)
    bench_grid.write_json(args.out / "result.json", row)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
