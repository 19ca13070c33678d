"""``python -m nsr.demo`` (``make demo``): the full default job in a few minutes on a CPU.

Train the default experiment (``train.yaml`` + ``experiment=default``, composed with Hydra's
compose API), extract the exact zero-level mesh (:func:`nsr.extract.run_extract`), compare it
with marching cubes at small resolutions (:func:`nsr.compare.run_compare`), render pictures,
and print a summary table and the path of every output.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, open_dict

from nsr._config import config_dir

DEMO_RESOLUTIONS = (32, 64, 128)


def compose_train(overrides: Sequence[str] = ()) -> DictConfig:
    """``train.yaml`` composed with ``experiment=default`` and ``overrides``."""
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return compose(config_name="train", overrides=["experiment=default", *overrides])


def train_default(out: Path, overrides: Sequence[str] = ()) -> Path:
    """Train the default experiment into ``out/train``; returns the run directory.

    The training run's own mesh export is switched off: the demo extracts it next.
    """
    from nsr.train import train

    cfg = compose_train(["extract=none", "logger=none", *overrides])
    with open_dict(cfg):
        cfg.run_dir = str(out / "train")
    return Path(train(cfg))


def _render_slice(run_dir: Path, bounds: Any, mesh_path: Path, out: Path) -> Path | None:
    """Field on the plane z = 0 with the exact mesh's crossing segments, ``(K, 2, 2)``."""
    import trimesh

    from nsr.networks import as_network
    from nsr.render import render_slice

    net = as_network(run_dir / "checkpoints" / "last.ckpt")
    segments = None
    if mesh_path.is_file():
        mesh = trimesh.load(mesh_path, force="mesh", process=False)
        if len(mesh.faces):
            segments = trimesh.intersections.mesh_plane(mesh, [0, 0, 1], [0, 0, 0])[:, :, :2]
    return render_slice(net, bounds, 2, 0.0, out / "slice_z0.png", segments=segments)


def summary_table(compare: dict[str, Any]) -> str:
    """Short fixed-width table of the comparison rows."""
    head = f"{'method':<16}{'res':>5}{'time s':>9}{'faces':>9}{'max|f| verts':>14}{'CD-L1':>11}"
    lines = [head, "-" * len(head)]
    for r in compare["rows"]:
        res = "-" if r["resolution"] is None else str(r["resolution"])
        lines.append(
            f"{r['method']:<16}{res:>5}{r['total_s']:>9.2f}{r['n_faces']:>9d}"
            f"{r['abs_f_vertices_max'] or float('nan'):>14.1e}{r['chamfer_l1']:>11.2e}"
        )
    return "\n".join(lines)


def run_demo(out: Path, resolutions: Sequence[int] = DEMO_RESOLUTIONS,
             overrides: Sequence[str] = ()) -> dict[str, Any]:  # fmt: skip
    """Train, extract, compare, render into ``out``; returns the stats of each stage."""
    from nsr.compare import run_compare
    from nsr.extract import run_extract

    timings: dict[str, float] = {}
    t = time.perf_counter()
    run_dir = train_default(out, overrides)
    timings["train_s"] = time.perf_counter() - t
    t = time.perf_counter()
    extract = run_extract({"net": str(run_dir), "out_dir": str(out / "extract"), "polygons": True})
    timings["extract_s"] = time.perf_counter() - t
    t = time.perf_counter()
    compare = run_compare({"net": str(run_dir), "out_dir": str(out / "compare"),
                           "resolutions": list(resolutions), "n_samples": 50_000})  # fmt: skip
    timings["compare_s"] = time.perf_counter() - t
    slice_png = _render_slice(run_dir, extract["bounds"], out / "extract" / "mesh.obj", out)
    files = sorted(str(p) for p in run_dir.rglob("*") if p.is_file() and ".hydra" not in p.parts)
    files += extract["files"] + [str(out / "extract" / "stats.json")]
    files += compare["files"] + [str(out / "compare" / "compare.json")]
    files += [str(slice_png)] if slice_png else []
    return {"run_dir": str(run_dir), "extract": extract, "compare": compare,
            "timings": timings, "files": files}  # fmt: skip


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m nsr.demo [--out DIR] [--resolutions 32 64 128] [overrides...]``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=f"outputs/demo/{time.strftime('%Y-%m-%d_%H-%M-%S')}")
    parser.add_argument("--resolutions", type=int, nargs="+", default=list(DEMO_RESOLUTIONS))
    parser.add_argument("overrides", nargs="*", help="train.yaml overrides (trainer.max_epochs=4)")
    args = parser.parse_args(argv)
    out = Path(args.out).resolve()
    result = run_demo(out, args.resolutions, args.overrides)
    ex = result["extract"]
    print("\nnsr demo: default experiment, exact mesh vs marching cubes")
    print(f"exact mesh: {ex.get('n_vertices')} vertices, {ex.get('n_polygons')} polygons, "
          f"watertight={ex.get('watertight')}, "
          f"max |f| at vertices={ex.get('abs_f_vertices_max')}")  # fmt: skip
    print(f"distances against: {result['compare']['reference']}\n")
    print(summary_table(result["compare"]))
    t = result["timings"]
    print(f"\ntrain {t['train_s']:.1f} s, extract {t['extract_s']:.1f} s, "
          f"compare {t['compare_s']:.1f} s\noutputs:")  # fmt: skip
    for f in result["files"]:
        print(f"  {f}")


if __name__ == "__main__":
    main()
