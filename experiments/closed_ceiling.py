"""The best score a *closed* surface can get against an open ground truth (issue 14).

A network's zero-level set is closed (or ends on the box), so over a scan's holes it puts caps that
the ground truth does not have. This script measures what that costs by itself: each shared mesh
with holes gets them closed as ``data.holes=fill`` closes them for training
(``nsr.training.data.cap_holes``: a fan from each boundary loop's centroid, flat where the loop is
planar), and the filled mesh is scored against the open one with the metrics of ``bench_grid.py``
(1M samples each, Occupancy Networks convention, in the ground truth's unit cube), beside the mesh's
own floor (the ground truth against itself). The filled mesh's row is a ceiling for any closed
reconstruction whose caps are no smaller than these: Chamfer-L1 ÷ floor cannot go below it, normal
consistency and F-score cannot go above it.

    python experiments/closed_ceiling.py [--meshes stanford-bunny spot] [--samples 1000000]

Skips cleanly (exit 0) when ../shared/meshes is absent. Prints one JSON row per mesh.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import trimesh

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nsr.eval.metrics import self_floor, unit_cube_chamfer  # noqa: E402
from nsr.training.data import cap_holes  # noqa: E402

SHARED = ROOT.parent / "shared" / "meshes"
KEYS = ("chamfer_l1", "normal_consistency", "f_score@0.005", "f_score@0.01")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--meshes", nargs="+", default=["stanford-bunny", "spot", "fandisk", "rocker-arm"])
    ap.add_argument("--samples", type=int, default=1_000_000)
    args = ap.parse_args(argv)
    if not SHARED.is_dir():
        print(f"skipping: {SHARED} not present")
        return 0
    for name in args.meshes:
        gt = trimesh.load(SHARED / f"{name}.obj", force="mesh", process=False)
        row: dict = {"mesh": name}
        floor = self_floor(gt, args.samples)
        row |= {f"floor_{k}": floor[k] for k in KEYS}
        v, f, row["holes"] = cap_holes(gt.vertices, gt.faces)
        filled = trimesh.Trimesh(v, f, process=False)
        if row["holes"]:
            row["cap_triangles"] = len(f) - len(gt.faces)
            row["cap_area_share"] = float(filled.area / gt.area - 1.0)
            closed = unit_cube_chamfer(filled, gt, args.samples)
            row |= {f"closed_{k}": closed[k] for k in KEYS}
            row["closed_chamfer_over_floor"] = closed["chamfer_l1"] / floor["chamfer_l1"]
        print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
