"""Training losses for implicit surface networks (SDF convention: negative inside).

Terms, each weighted from config (``conf/loss/``), zero weight = not computed:

* ``sdf``: DeepSDF clamped L1, ``|clamp(f, -d, d) - clamp(s, -d, d)|`` on points with a known
  signed distance ``s``.
* ``surface``: ``|f|`` on surface samples.
* ``eikonal``: ``(|grad f| - 1)^2`` on all samples (IGR, Gropp et al. 2020).
* ``normal``: ``1 - cos(grad f, n)`` on surface samples with normals.
* ``occupancy``: BCE with logits ``-f / temperature`` against ``s < 0`` (inside), an
  alternative to ``sdf``; the zero level stays the surface.
* ``offsurface``: ``exp(-alpha |f|)`` on off-surface samples (SIREN), for point clouds.

Gradients come from ``torch.autograd.grad(..., create_graph=True)`` on the inputs.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def sdf_l1(pred: Tensor, target: Tensor, clamp: float | None = 0.1) -> Tensor:
    """DeepSDF clamped L1 between ``(N,)`` predictions and targets."""
    if clamp is not None and clamp > 0:
        pred, target = pred.clamp(-clamp, clamp), target.clamp(-clamp, clamp)
    return (pred - target).abs().mean()


def eikonal(grad: Tensor) -> Tensor:
    """``mean (|grad| - 1)^2`` of ``(N, D)`` gradients."""
    return ((torch.linalg.vector_norm(grad, dim=-1) - 1.0) ** 2).mean()


def normal_alignment(grad: Tensor, normals: Tensor) -> Tensor:
    """``mean (1 - cos)`` between ``(N, D)`` gradients and unit normals."""
    return (1.0 - F.cosine_similarity(grad, normals, dim=-1, eps=1e-8)).mean()


def occupancy_bce(pred: Tensor, target_sdf: Tensor, temperature: float = 0.01) -> Tensor:
    """BCE of ``sigmoid(-f / temperature)`` against inside labels ``target_sdf < 0``."""
    return F.binary_cross_entropy_with_logits(-pred / temperature, (target_sdf < 0).to(pred.dtype))


def input_gradient(f: Tensor, x: Tensor, create_graph: bool = True) -> Tensor:
    """``d f / d x``: ``(N,)`` outputs of ``(N, D)`` inputs -> ``(N, D)``."""
    (g,) = torch.autograd.grad(f.sum(), x, create_graph=create_graph)
    return g


class ImplicitLoss(nn.Module):
    """Weighted sum of the terms above; ``forward`` returns a dict with ``loss`` (the total)."""

    def __init__(
        self,
        sdf: float = 1.0,
        surface: float = 1.0,
        eikonal: float = 0.1,
        normal: float = 0.1,
        occupancy: float = 0.0,
        offsurface: float = 0.0,
        clamp: float | None = 0.1,
        temperature: float = 0.01,
        offsurface_alpha: float = 100.0,
    ) -> None:
        super().__init__()
        self.weights = {
            "sdf": float(sdf),
            "surface": float(surface),
            "eikonal": float(eikonal),
            "normal": float(normal),
            "occupancy": float(occupancy),
            "offsurface": float(offsurface),
        }
        if any(w < 0 for w in self.weights.values()):
            raise ValueError(f"loss weights must be >= 0, got {self.weights}")
        self.clamp, self.temperature, self.alpha = (
            clamp,
            float(temperature),
            float(offsurface_alpha),
        )

    def forward(
        self, net: Callable[[Tensor], Tensor], batch: dict[str, Tensor]
    ) -> dict[str, Tensor]:
        """Loss terms for ``batch`` (keys ``surface``, ``normals``, ``points``, ``sdf``)."""
        w = self.weights
        surf, pts, sdf = batch["surface"], batch["points"], batch["sdf"]
        need_grad = w["eikonal"] > 0 or w["normal"] > 0
        x = torch.cat([surf, pts]).detach().requires_grad_(need_grad)
        f = net(x)
        f_surf, f_pts = f[: surf.shape[0]], f[surf.shape[0] :]
        terms: dict[str, Tensor] = {}
        known = torch.isfinite(sdf)
        if w["surface"] > 0:
            terms["surface"] = f_surf.abs().mean()
        if w["sdf"] > 0 and known.any():
            terms["sdf"] = sdf_l1(f_pts[known], sdf[known], self.clamp)
        if w["occupancy"] > 0 and known.any():
            terms["occupancy"] = occupancy_bce(f_pts[known], sdf[known], self.temperature)
        if w["offsurface"] > 0 and f_pts.numel():
            terms["offsurface"] = torch.exp(-self.alpha * f_pts.abs()).mean()
        if need_grad:
            g = input_gradient(f, x, create_graph=torch.is_grad_enabled())
            if w["eikonal"] > 0:
                terms["eikonal"] = eikonal(g)
            normals = batch["normals"]
            has_n = torch.isfinite(normals).all(-1)
            if w["normal"] > 0 and has_n.any():
                terms["normal"] = normal_alignment(g[: surf.shape[0]][has_n], normals[has_n])
        total = sum((w[k] * v for k, v in terms.items()), f.new_zeros(()))
        return {"loss": total, **terms}
