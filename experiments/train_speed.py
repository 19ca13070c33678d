"""Training steps per second of each model config, measured in one process, interleaved.

Every network is built from its Hydra config (``model=relu_mlp``, ``skip_mlp``, ``residual_mlp``,
``grid_mlp`` and ``experiment=grid_cpu``), with its own optimizer and parameter groups, and
trained on the same batches (clamped-L1 SDF + surface terms, as ``experiment=mesh``; the
``grid_cpu`` rows with their preset's eikonal and normal weights, see ``OWN_LOSS``). Rounds
of ``--steps`` steps alternate between the networks, so a loaded machine slows them alike: the
ratios to ``relu_mlp`` are what to read; absolute rates depend on the load.

    python experiments/train_speed.py --threads 1 --rounds 6
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import hydra
import torch
from hydra import compose, initialize_config_dir

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's nsr and conf/

from nsr._config import config_dir  # noqa: E402
from nsr.training.losses import ImplicitLoss  # noqa: E402

CONFIGS = {"relu_mlp": ["model=relu_mlp"], "skip_mlp": ["model=skip_mlp"], "residual_mlp": ["model=residual_mlp"],
           "grid_mlp": ["model=grid_mlp"], "grid_cpu": ["experiment=grid_cpu", "data.path=x.obj"],
           "grid_cpu, loss.normal=0": ["experiment=grid_cpu", "data.path=x.obj", "loss.normal=0"]}
# these train with their config's eikonal and normal weights (what the preset trains with, a
# double backward when either is on); the others with the plain loss, eikonal and normal off
OWN_LOSS = {"grid_cpu", "grid_cpu, loss.normal=0"}


def _batch(n: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """Points of a sphere of radius 0.3 in [-0.5, 0.5]^3: a fifth on the surface."""
    s = torch.nn.functional.normalize(torch.randn(n // 5, 3, generator=gen), dim=1)
    p = torch.rand(n - n // 5, 3, generator=gen) - 0.5
    return {"surface": 0.3 * s, "normals": s, "points": p, "sdf": p.norm(dim=1) - 0.3}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=2048)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=6)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    modules, opts, losses = {}, {}, {}
    plain = ImplicitLoss(eikonal=0.0, normal=0.0)
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        for name, overrides in CONFIGS.items():
            cfg = compose("train", overrides=overrides)
            modules[name] = hydra.utils.instantiate(cfg.model, _partial_=True)(loss=ImplicitLoss())
            conf = modules[name].configure_optimizers()
            opts[name] = conf["optimizer"] if isinstance(conf, dict) else conf
            losses[name] = (ImplicitLoss(eikonal=cfg.loss.eikonal, normal=cfg.loss.normal) if name in OWN_LOSS
                            else plain)
    gen = torch.Generator().manual_seed(0)
    batches = [_batch(args.batch, gen) for _ in range(args.steps)]

    def step(name: str, batch: dict[str, torch.Tensor]) -> None:
        opts[name].zero_grad()
        losses[name](modules[name].net, batch)["loss"].backward()
        opts[name].step()

    for name in modules:  # warm-up
        step(name, batches[0])
    spent = dict.fromkeys(modules, 0.0)
    for _ in range(args.rounds):
        for name in modules:
            t0 = time.perf_counter()
            for b in batches:
                step(name, b)
            spent[name] += time.perf_counter() - t0
    n = args.rounds * args.steps
    ref = n / spent["relu_mlp"]
    print(f"{platform.processor() or platform.machine()}, {args.threads} thread(s), batch {args.batch}, "
          f"{n} steps each in {args.rounds} interleaved rounds")
    print("| config | parameters | eikonal, normal | steps/s | ratio to relu_mlp |\n|---|---:|---|---:|---:|")
    for name, module in modules.items():
        rate = n / spent[name]
        w = losses[name].weights
        print(f"| {name} | {sum(p.numel() for p in module.net.parameters()):,} | {w['eikonal']:g}, {w['normal']:g} "
              f"| {rate:.1f} | {rate / ref:.2f} |")


if __name__ == "__main__":
    main()
