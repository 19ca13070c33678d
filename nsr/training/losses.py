"""Training losses for implicit surface networks (SDF convention: negative inside).

Terms, each weighted from config (``conf/loss/``), zero weight = not computed:

* ``sdf``: DeepSDF clamped L1, ``|clamp(f, -d, d) - clamp(s, -d, d)|`` on points with a known
  signed distance ``s``.
* ``surface``: ``|f|`` on surface samples.
* ``eikonal``: ``(|grad f| - 1)^2`` on all samples (IGR, Gropp et al. 2020).
* ``normal``: ``1 - cos(grad f, n)`` on surface samples with normals.
* ``gradient``: ``1 - cos(grad f, grad s)`` on near-surface samples where the signed
  distance's gradient is known (the normal of the nearest surface point): the normal loss
  carried onto the cells around the surface, where the exact mesh's facets take their normals.
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
    """DeepSDF clamped L1 between predicted and target signed distances.

    Parameters
    ----------
    pred : (N,) float Tensor
        Network values.
    target : (N,) float Tensor
        Known signed distances.
    clamp : float or None
        Both are clamped to ``[-clamp, clamp]`` first; ``None`` or 0: no clamping.

    Returns
    -------
    () float Tensor
        ``mean |clamp(pred) - clamp(target)|``.

    Examples
    --------
    >>> import torch
    >>> from nsr.training.losses import sdf_l1
    >>> sdf_l1(torch.tensor([0.0, 0.5]), torch.tensor([0.05, -0.5]), clamp=0.1)  # (0.05 + 0.2) / 2
    tensor(0.1250)
    """
    if clamp is not None and clamp > 0:
        pred, target = pred.clamp(-clamp, clamp), target.clamp(-clamp, clamp)
    return (pred - target).abs().mean()


def eikonal(grad: Tensor) -> Tensor:
    """Eikonal penalty: how far gradients are from unit length.

    Parameters
    ----------
    grad : (N, D) float Tensor
        Gradients of the network at ``N`` points.

    Returns
    -------
    () float Tensor
        ``mean (|grad| - 1)^2``.

    Examples
    --------
    >>> import torch
    >>> from nsr.training.losses import eikonal
    >>> eikonal(torch.tensor([[0.6, 0.8], [2.0, 0.0]]))  # (0 + 1) / 2
    tensor(0.5000)
    """
    return ((torch.linalg.vector_norm(grad, dim=-1) - 1.0) ** 2).mean()


def normal_alignment(grad: Tensor, normals: Tensor) -> Tensor:
    """Normal alignment: ``mean (1 - cos)`` between gradients and normals.

    Parameters
    ----------
    grad : (N, D) float Tensor
        Gradients of the network at surface samples.
    normals : (N, D) float Tensor
        Unit normals there.

    Returns
    -------
    () float Tensor
        In ``[0, 2]``; 0 when every gradient points along its normal.

    Examples
    --------
    >>> import torch
    >>> from nsr.training.losses import normal_alignment
    >>> normal_alignment(torch.tensor([[2.0, 0.0], [0.0, 1.0]]), torch.tensor([[1.0, 0.0], [1.0, 0.0]]))
    tensor(0.5000)
    """
    return (1.0 - F.cosine_similarity(grad, normals, dim=-1, eps=1e-8)).mean()


def occupancy_bce(pred: Tensor, target_sdf: Tensor, temperature: float = 0.01) -> Tensor:
    """BCE of ``sigmoid(-f / temperature)`` against inside labels ``target_sdf < 0``.

    Parameters
    ----------
    pred : (N,) float Tensor
        Network values (negative inside).
    target_sdf : (N,) float Tensor
        Known signed distances; only their signs are used.
    temperature : float
        Scale of the logits ``-pred / temperature``.

    Returns
    -------
    () float Tensor
        Mean binary cross-entropy.

    Examples
    --------
    >>> import torch
    >>> from nsr.training.losses import occupancy_bce
    >>> right = occupancy_bce(torch.tensor([-0.1, 0.1]), torch.tensor([-0.2, 0.3]))
    >>> wrong = occupancy_bce(torch.tensor([0.1, -0.1]), torch.tensor([-0.2, 0.3]))
    >>> bool(right < 1e-3), bool(wrong > 1)
    (True, True)
    """
    return F.binary_cross_entropy_with_logits(-pred / temperature, (target_sdf < 0).to(pred.dtype))


def input_gradient(f: Tensor, x: Tensor, create_graph: bool = True) -> Tensor:
    """Gradient of per-point outputs with respect to their inputs.

    Parameters
    ----------
    f : (N,) float Tensor
        Outputs, ``f[i]`` depending on ``x[i]`` only.
    x : (N, D) float Tensor
        Inputs with ``requires_grad``.
    create_graph : bool
        Keep the graph so that a loss on the gradient can be back-propagated.

    Returns
    -------
    (N, D) float Tensor
        ``d f[i] / d x[i]``.

    Examples
    --------
    >>> import torch
    >>> from nsr.training.losses import input_gradient
    >>> x = torch.tensor([[3.0, 4.0]], requires_grad=True)
    >>> input_gradient(x.norm(dim=1), x, create_graph=False)
    tensor([[0.6000, 0.8000]])
    """
    (g,) = torch.autograd.grad(f.sum(), x, create_graph=create_graph)
    return g


class ImplicitLoss(nn.Module):
    """Weighted sum of the terms above; ``forward`` returns a dict with ``loss`` (the total).

    Parameters
    ----------
    sdf, surface, eikonal, normal, occupancy, offsurface, gradient : float
        Weight of each term (module docstring); 0 skips the term.
    clamp : float or None
        Clamp of the ``sdf`` term (:func:`sdf_l1`).
    temperature : float
        Temperature of the ``occupancy`` term (:func:`occupancy_bce`).
    offsurface_alpha : float
        ``alpha`` of the ``offsurface`` term ``exp(-alpha |f|)``.

    Raises
    ------
    ValueError
        If a weight is negative.

    Examples
    --------
    A signed distance that is exact gives zero loss:

    >>> import torch
    >>> from nsr.training.losses import ImplicitLoss
    >>> sphere = lambda x: x.norm(dim=1) - 0.5
    >>> surface = torch.tensor([[0.5, 0.0, 0.0], [0.0, 0.0, -0.5]])
    >>> points = torch.tensor([[0.1, 0.2, 0.2], [0.0, 0.8, 0.0]])
    >>> batch = {"surface": surface, "normals": surface / 0.5, "points": points, "sdf": sphere(points)}
    >>> terms = ImplicitLoss()(sphere, batch)
    >>> sorted(terms), round(float(terms["loss"].detach()), 6)
    (['eikonal', 'loss', 'normal', 'sdf', 'surface'], 0.0)
    """

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
        gradient: float = 0.0,
    ) -> None:
        super().__init__()
        self.weights = {
            "sdf": float(sdf),
            "surface": float(surface),
            "eikonal": float(eikonal),
            "normal": float(normal),
            "occupancy": float(occupancy),
            "offsurface": float(offsurface),
            "gradient": float(gradient),
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
        """Loss terms of ``net`` on one batch.

        Parameters
        ----------
        net : callable
            Maps ``(N, D)`` points to ``(N,)`` values, differentiably.
        batch : dict of str to Tensor
            ``surface`` ``(S, D)`` surface samples, ``normals`` ``(S, D)`` (NaN rows: unknown),
            ``points`` ``(P, D)`` off-surface samples, ``sdf`` ``(P,)`` their signed distances
            (NaN: unknown); optionally ``gradients`` ``(P, D)``, the signed distance's unit
            gradient at the points (NaN rows: unknown), for the ``gradient`` term.

        Returns
        -------
        dict of str to () Tensor
            ``loss`` (the weighted total) and each computed term, unweighted.

        Examples
        --------
        >>> import torch
        >>> from nsr.training.losses import ImplicitLoss
        >>> loss = ImplicitLoss(sdf=0, eikonal=0, normal=0)  # the surface term only
        >>> batch = {"surface": torch.tensor([[1.0, 0.0]]), "normals": torch.full((1, 2), float("nan")),
        ...          "points": torch.zeros(0, 2), "sdf": torch.zeros(0)}
        >>> loss(lambda x: x.sum(dim=1) - 0.5, batch)
        {'loss': tensor(0.5000), 'surface': tensor(0.5000)}
        """
        w = self.weights
        surf, pts, sdf = batch["surface"], batch["points"], batch["sdf"]
        need_grad = w["eikonal"] > 0 or w["normal"] > 0 or w["gradient"] > 0
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
            targets = batch.get("gradients")
            if w["gradient"] > 0 and targets is not None:
                has_g = torch.isfinite(targets).all(-1)
                if has_g.any():
                    terms["gradient"] = normal_alignment(g[surf.shape[0] :][has_g], targets[has_g])
        total = sum((w[k] * v for k, v in terms.items()), f.new_zeros(()))
        return {"loss": total, **terms}
