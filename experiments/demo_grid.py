"""Study (issue 14): would a grid network make a better `make demo`?

Runs the demo (:func:`nsr.demo.main`) with its own network (``mlp``: :data:`nsr.demo.DEMO_OVERRIDES`) or
with the ``grid_cpu`` network of 2026-12-01 in their place (``grid``: 6 levels 8..96, 2^14-row tables, MLP 32x2,
lr 2e-3, batch 2048, ``EPOCHS`` epochs of 50 steps, the normal loss at ``NORMAL``), so the two can run side by
side, each pinned to a core::

    OMP_NUM_THREADS=1 taskset -c 0 python experiments/demo_grid.py mlp outputs/demo_mlp &
    OMP_NUM_THREADS=1 taskset -c 1 python experiments/demo_grid.py grid outputs/demo_grid 360 0

Findings are in ``experiments/RESULTS.md`` ("`make demo` with a grid network?").
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import nsr.demo as demo  # noqa: E402


def grid_overrides(epochs: int, normal: float) -> tuple[str, ...]:
    """The demo's training with the ``grid_cpu`` network instead of its MLP."""
    return (
        "data=bracket", "model=grid_mlp",
        "model.net.n_levels=6", "model.net.max_resolution=96", "model.net.table_size=16384",
        "model.optimizer.lr=2e-3", "loss.eikonal=0", f"loss.normal={normal}",
        "data.sampling.mode=pool", "data.sampling.batch_size=2048", "data.sampling.steps_per_epoch=50",
        "data.sampling.fractions={surface:0.2,near:0.6,uniform:0.2}",
        f"trainer.max_epochs={epochs}", "trainer.check_val_every_n_epoch=25",
    )


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[0] not in ("mlp", "grid"):
        print(__doc__)
        return 2
    kind, out = argv[0], argv[1]
    if kind == "grid":
        epochs = int(argv[2]) if len(argv) > 2 else 360
        normal = float(argv[3]) if len(argv) > 3 else 0.0
        demo.DEMO_OVERRIDES = grid_overrides(epochs, normal)
    t = time.perf_counter()
    demo.main(["--out", out])
    print("WALL", round(time.perf_counter() - t, 1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
