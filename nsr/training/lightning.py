"""Lightning pieces: :class:`ShapeDataModule` (samples) and :class:`ImplicitShapeModule` (training).

Both are DDP-safe: no global state, every batch generated from ``(seed, epoch, index)`` so the
data does not depend on the number of processes, metrics logged with ``sync_dist=True``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from nsr.checkpoints import network_spec
from nsr.training.data import ShapeSource, batch_generator, make_source, sample_points, split_counts
from nsr.training.losses import ImplicitLoss
from nsr.training.shapes import Shape

RegularizerTerm = Callable[[L.LightningModule], dict[str, Tensor]]


class _BatchDataset(Dataset):
    """``length`` whole batches; item ``i`` is drawn from ``batch_generator(seed, epoch, i)``.

    With a ``pool`` (dict of pre-sampled tensors) items are random subsets of the pool;
    otherwise fresh points are sampled. ``resample=False`` keeps ``epoch`` at 0 (same
    batches every epoch).
    """

    def __init__(
        self,
        source: ShapeSource,
        counts: dict[str, int],
        sigmas: Sequence[float],
        box: float,
        seed: int,
        length: int,
        pool: dict[str, Tensor] | None = None,
        resample: bool = True,
    ) -> None:
        self.source, self.counts, self.sigmas, self.box = source, counts, list(sigmas), box
        self.seed, self.length, self.pool, self.resample = seed, length, pool, resample
        self.epoch = 0

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        gen = batch_generator(self.seed, self.epoch if self.resample else 0, index)
        if self.pool is None:
            return sample_points(self.source, self.counts, self.sigmas, self.box, gen)
        p = self.pool
        i_s = torch.randint(0, p["surface"].shape[0], (self.counts["surface"],), generator=gen)
        n_q = self.counts["near"] + self.counts["uniform"]
        i_q = torch.randint(0, p["points"].shape[0], (n_q,), generator=gen)
        return {
            "surface": p["surface"][i_s],
            "normals": p["normals"][i_s],
            "points": p["points"][i_q],
            "sdf": p["sdf"][i_q],
            "gradients": p["gradients"][i_q],
        }


class _ValDataset(Dataset):
    """One fixed validation batch: uniform points (IoU) and near-surface points (SDF MAE)."""

    def __init__(self, batch: dict[str, Tensor]) -> None:
        self.batch = batch

    def __len__(self) -> int:
        return 1

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        return self.batch


class ShapeDataModule(L.LightningDataModule):
    """Training samples of one shape (see :mod:`nsr.training.data`); the source is built and validated
    in ``__init__`` so bad input fails before any training.

    ``sampling``: ``batch_size``, ``steps_per_epoch``, ``fractions`` (surface / near / uniform),
    ``sigmas`` (box-relative), ``mode`` (``resample``: new points every batch and epoch;
    ``pool``: subsets of ``pool_size`` points drawn once), ``seed``, ``n_val``.

    Parameters
    ----------
    kind, shape, path, box, fit, n_rays, require_normals, sign, shell_thickness, max_ambiguous, winding_backend, holes
        The source, see :func:`nsr.training.data.make_source`.
    dim : int
        Expected dimension of the shape.
    sampling : dict, optional
        The keys above.

    Raises
    ------
    nsr.training.data.ShapeError
        On a bad source.
    ValueError
        On a dimension mismatch or bad sampling settings.

    Examples
    --------
    >>> from nsr.training.lightning import ShapeDataModule
    >>> from nsr.training.shapes import Sphere
    >>> dm = ShapeDataModule(shape=Sphere(0.3), sampling={"batch_size": 64, "steps_per_epoch": 2, "n_val": 40})
    >>> dm.setup()
    >>> batch = next(iter(dm.train_dataloader()))
    >>> {k: tuple(v.shape) for k, v in batch.items()}  # 0.2 of 64 on the surface, the rest off it
    {'surface': (13, 3), 'normals': (13, 3), 'points': (51, 3), 'sdf': (51,), 'gradients': (51, 3)}
    >>> len(dm.train_dataloader())
    2
    """

    def __init__(
        self,
        kind: str = "analytic",
        shape: Shape | None = None,
        path: str | None = None,
        dim: int = 3,
        box: float = 0.5,
        fit: float = 0.45,
        n_rays: int = 11,
        require_normals: bool = True,
        sampling: dict[str, Any] | None = None,
        sign: str = "auto",
        shell_thickness: float = 0.01,
        max_ambiguous: float = 0.05,
        winding_backend: str = "auto",
        holes: str = "auto",
    ) -> None:
        super().__init__()
        self.source = make_source(kind, shape, path, box, fit, n_rays, require_normals, sign, shell_thickness,
                                  max_ambiguous, winding_backend, holes)
        if self.source.dim != dim:
            raise ValueError(f"data.dim={dim} but the shape is {self.source.dim}-dimensional")
        self.kind, self.dim, self.box = kind, dim, float(box)
        s = dict(sampling or {})
        self.batch_size = int(s.get("batch_size", 4096))
        self.steps_per_epoch = int(s.get("steps_per_epoch", 100))
        self.sigmas = [float(v) for v in s.get("sigmas", [0.01, 0.003])]
        self.fractions = {k: float(v) for k, v in dict(s.get("fractions", {})).items()} or {
            "surface": 0.2,
            "near": 0.5,
            "uniform": 0.3,
        }
        self.mode = str(s.get("mode", "resample"))
        if self.mode not in ("resample", "pool"):
            raise ValueError(f"sampling.mode must be resample or pool, got {self.mode!r}")
        self.pool_size = int(s.get("pool_size", 200_000))
        self.seed = int(s.get("seed", 0))
        self.n_val = int(s.get("n_val", 20_000))
        if self.batch_size < 2 or self.steps_per_epoch < 1:
            raise ValueError("sampling.batch_size must be >= 2 and steps_per_epoch >= 1")
        self.counts = split_counts(self.batch_size, self.fractions, len(self.sigmas))
        self._train: _BatchDataset | None = None
        self._val: _ValDataset | None = None

    def setup(self, stage: str | None = None) -> None:
        """Build the training and validation datasets (once; ``pool`` mode samples its pool here).

        Parameters
        ----------
        stage : str, optional
            Lightning's stage name (unused).
        """
        if self._train is None:
            pool = None
            if self.mode == "pool":
                counts = split_counts(self.pool_size, self.fractions, len(self.sigmas))
                pool = sample_points(
                    self.source, counts, self.sigmas, self.box, batch_generator(self.seed, -1, 0)
                )
            self._train = _BatchDataset(
                self.source,
                self.counts,
                self.sigmas,
                self.box,
                self.seed,
                self.steps_per_epoch,
                pool,
                resample=self.mode == "resample",
            )
        if self._val is None:
            self._val = _ValDataset(self.validation_batch())

    def validation_batch(self) -> dict[str, Tensor]:
        """Fixed validation samples: ``uniform``/``uniform_sdf`` and ``near``/``near_sdf``.

        Returns
        -------
        dict of str to Tensor
            ``uniform`` ``(n_val, D)``, ``uniform_sdf`` ``(n_val,)``, ``near`` ``(n_val // 4, D)``,
            ``near_sdf`` ``(n_val // 4,)``; the same on every call.

        Examples
        --------
        >>> from nsr.training.lightning import ShapeDataModule
        >>> from nsr.training.shapes import Sphere
        >>> dm = ShapeDataModule(shape=Sphere(0.3), sampling={"batch_size": 64, "steps_per_epoch": 2, "n_val": 40})
        >>> {k: tuple(v.shape) for k, v in dm.validation_batch().items()}
        {'uniform': (40, 3), 'uniform_sdf': (40,), 'near': (10, 3), 'near_sdf': (10,)}
        """
        gen = batch_generator(self.seed + 1, -2, 0)
        n = self.n_val
        uni = sample_points(self.source, {"surface": 1, "near": 0, "uniform": n}, [], self.box, gen)
        small = [min(self.sigmas)] if self.sigmas else [0.003]
        near = sample_points(
            self.source, {"surface": n // 4, "near": n // 4, "uniform": 0}, small, self.box, gen
        )
        if not self.source.has_sdf:  # point clouds: distance 0 on the surface
            near = {"points": near["surface"], "sdf": torch.zeros(near["surface"].shape[0])}
        return {
            "uniform": uni["points"],
            "uniform_sdf": uni["sdf"],
            "near": near["points"],
            "near_sdf": near["sdf"],
        }

    def set_epoch(self, epoch: int) -> None:
        """New samples per epoch in ``resample`` mode (called by the module each epoch).

        Parameters
        ----------
        epoch : int
            The epoch about to start.

        Examples
        --------
        >>> import torch
        >>> from nsr.training.lightning import ShapeDataModule
        >>> from nsr.training.shapes import Sphere
        >>> dm = ShapeDataModule(shape=Sphere(0.3), sampling={"batch_size": 64, "steps_per_epoch": 2, "n_val": 40})
        >>> dm.setup()
        >>> first = next(iter(dm.train_dataloader()))["points"]
        >>> dm.set_epoch(1)
        >>> bool(torch.equal(first, next(iter(dm.train_dataloader()))["points"]))
        False
        """
        if self._train is not None:
            self._train.epoch = epoch

    def train_dataloader(self) -> DataLoader:
        """``steps_per_epoch`` batches (each already a full batch dict; call :meth:`setup` first).

        Returns
        -------
        torch.utils.data.DataLoader
            Yields dicts as :func:`nsr.training.data.sample_points` returns them.
        """
        assert self._train is not None, "call setup() first"
        return DataLoader(self._train, batch_size=None, shuffle=False, num_workers=0)

    def val_dataloader(self) -> DataLoader:
        """One batch: :meth:`validation_batch` (call :meth:`setup` first).

        Returns
        -------
        torch.utils.data.DataLoader
        """
        assert self._val is not None, "call setup() first"
        return DataLoader(self._val, batch_size=None, shuffle=False, num_workers=0)


class ImplicitShapeModule(L.LightningModule):
    """Trains ``self.net`` (any network ``(N, D) -> (N,)``) with ``self.loss``.

    The Hydra model config nests the network as ``model.net`` (its own ``_target_``) and the
    optimizer and scheduler as ``_partial_`` factories, as the lightning-hydra-template does:
    ``optimizer(params=...)`` and ``scheduler(optimizer=...)``. ``param_groups`` gives some of
    the network's parameters their own optimizer settings, by name prefix (e.g. a grid
    encoding's tables ``{"encoding": {"lr": 1e-2}}``). ``regularizer_terms``: callables
    ``module -> {name: tensor}`` whose values are added to the loss and logged as ``reg/<name>``.

    The checkpoint records the network as ``hparams["net"]`` (its class and constructor options,
    :func:`nsr.checkpoints.network_spec`), from which :func:`load_module_network` and
    :func:`nsr.networks.load_network` rebuild nsr's own network classes without importing any
    name read from the file. Other networks train as well; their checkpoints hold the weights,
    which you load into your own class.

    Parameters
    ----------
    net : torch.nn.Module
        The network trained.
    loss : ImplicitLoss
        The loss.
    optimizer : callable, optional
        ``optimizer(params=...)``; default Adam with ``lr=1e-3``.
    scheduler : callable, optional
        ``scheduler(optimizer=...)``.
    scheduler_interval : {"epoch", "step"}
        When the scheduler steps.
    param_groups : mapping of str to mapping, optional
        ``{prefix: options}``: the parameters of ``net`` whose name is ``prefix`` or starts with
        ``prefix.`` form a group with these optimizer options (e.g. ``lr``); the rest keep the
        optimizer's defaults.
    transform : dict, optional
        The source's transform (stored in the checkpoint).
    config : dict, optional
        The run's configuration (stored in the checkpoint).

    Raises
    ------
    TypeError
        If ``net`` is not an ``nn.Module``.
    ValueError
        If a ``param_groups`` prefix names no parameter, or two prefixes overlap.

    Examples
    --------
    >>> import torch
    >>> from nsr.training.lightning import ImplicitShapeModule
    >>> from nsr.training.losses import ImplicitLoss
    >>> from nsr.networks import ReLUMLP
    >>> module = ImplicitShapeModule(ReLUMLP(3, 8, 2), ImplicitLoss())
    >>> module.hparams["net"], type(module.configure_optimizers()).__name__
    ({'_target_': 'nsr.networks.ReLUMLP', 'in_dim': 3, 'width': 8, 'depth': 2}, 'Adam')

    A grid network whose tables learn 10x faster than its MLP:

    >>> from functools import partial
    >>> from nsr.pl.encoding import GridMLP
    >>> net = GridMLP(in_dim=3, width=8, depth=1, n_levels=2, max_resolution=8)
    >>> module = ImplicitShapeModule(net, ImplicitLoss(), optimizer=partial(torch.optim.Adam, lr=1e-3),
    ...                              param_groups={"encoding": {"lr": 1e-2}})
    >>> [(len(g["params"]), g["lr"]) for g in module.configure_optimizers().param_groups]
    [(1, 0.01), (4, 0.001)]
    """

    def __init__(
        self,
        net: nn.Module,
        loss: ImplicitLoss,
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        scheduler: Callable[..., Any] | None = None,
        scheduler_interval: str = "epoch",
        param_groups: Mapping[str, Mapping[str, Any]] | None = None,
        transform: dict[str, Any] | None = None,
        config: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(net, nn.Module):
            hint = (" (a checkpoint's network record: rebuild it with nsr.training.lightning.load_module_network(path))"
                    if isinstance(net, Mapping) else "")
            raise TypeError(f"net must be a torch.nn.Module, got {type(net).__name__}{hint}")
        self.net: nn.Module = net
        self.loss = loss
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.scheduler_interval = scheduler_interval
        self.param_groups = {str(k): dict(v) for k, v in (param_groups or {}).items()}
        self._parameter_groups()  # a prefix naming nothing fails here, before any training
        self.regularizer_terms: list[RegularizerTerm] = []
        spec = network_spec(net)
        if spec.get("_rebuildable_") is False:
            warnings.warn(f"checkpoints of this run hold the weights of {spec['_target_']}, but nsr cannot "
                          f"rebuild it from them ({spec['_why_']}); load them into your own class", stacklevel=2)
        self.save_hyperparameters({"transform": transform or {}, "config": config or {}, "net": spec}, logger=False)

    def forward(self, x: Tensor) -> Tensor:
        """Signed distance predicted by the network (box units).

        Parameters
        ----------
        x : (N, D) float Tensor
            Points.

        Returns
        -------
        (N,) float Tensor

        Examples
        --------
        >>> import torch
        >>> from nsr.training.lightning import ImplicitShapeModule
        >>> from nsr.training.losses import ImplicitLoss
        >>> from nsr.networks import ReLUMLP
        >>> ImplicitShapeModule(ReLUMLP(3, 8, 2), ImplicitLoss())(torch.zeros(4, 3)).shape
        torch.Size([4])
        """
        return self.net(x)

    def on_train_epoch_start(self) -> None:
        """Tell the data module the epoch, so that ``resample`` mode draws new points (a Lightning hook)."""
        dm = getattr(self.trainer, "datamodule", None)
        if dm is not None and hasattr(dm, "set_epoch"):
            dm.set_epoch(self.current_epoch)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        """Loss of one batch plus the regularizer terms; logs each term.

        Parameters
        ----------
        batch : dict of str to Tensor
            From :class:`ShapeDataModule` (see :meth:`nsr.training.losses.ImplicitLoss.forward`).
        batch_idx : int
            Index of the batch in the epoch.

        Returns
        -------
        () Tensor
            The total loss.
        """
        n = int(batch["points"].shape[0] + batch["surface"].shape[0])
        terms = self.loss(self.net, batch)
        loss = terms.pop("loss")
        for name, value in terms.items():
            self.log(f"train/{name}", value, batch_size=n, sync_dist=True)
        for term in self.regularizer_terms:
            for name, value in term(self).items():
                loss = loss + value
                self.log(f"reg/{name}", value, batch_size=n, sync_dist=True)
        self.log("train/loss", loss, prog_bar=True, batch_size=n, sync_dist=True)
        return loss

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        """Log ``val/sdf_mae`` near the surface and, where the SDF is known, ``val/iou`` of the inside.

        Parameters
        ----------
        batch : dict of str to Tensor
            :meth:`ShapeDataModule.validation_batch`.
        batch_idx : int
            Always 0.
        """
        mae = (self.net(batch["near"]) - batch["near_sdf"]).abs().mean()
        self.log("val/sdf_mae", mae, prog_bar=True, batch_size=1, sync_dist=True)
        sdf_u = batch["uniform_sdf"]
        if torch.isfinite(sdf_u).all():
            pred, gt = self.net(batch["uniform"]) < 0, sdf_u < 0
            iou = (pred & gt).sum() / (pred | gt).sum().clamp(min=1)
            self.log("val/iou", iou.float(), prog_bar=True, batch_size=1, sync_dist=True)

    def _parameter_groups(self) -> list[dict[str, Any]]:
        """The optimizer's parameter groups: one per ``param_groups`` prefix, then the rest."""
        named = list(self.net.named_parameters())
        taken: dict[str, str] = {}
        groups = []
        for prefix, options in self.param_groups.items():
            names = [n for n, _ in named if n == prefix or n.startswith(prefix + ".")]
            if not names:
                tops = sorted({n.split(".")[0] for n, _ in named})
                raise ValueError(f"param_groups: {prefix!r} names no parameter of {type(self.net).__name__} "
                                 f"(its parameters start with {', '.join(tops)})")
            clash = [n for n in names if n in taken]
            if clash:
                raise ValueError(f"param_groups: {prefix!r} and {taken[clash[0]]!r} both take {clash[0]}")
            taken.update(dict.fromkeys(names, prefix))
            groups.append({"params": [p for n, p in named if n in names], **options})
        rest = [p for n, p in named if n not in taken]
        return groups + ([{"params": rest}] if rest else [])

    def configure_optimizers(self) -> Any:
        """The optimizer, and the scheduler monitoring ``val/sdf_mae`` if one is configured.

        Returns
        -------
        torch.optim.Optimizer or dict
            Lightning's optimizer configuration.
        """
        factory = self.optimizer_factory or (lambda params: torch.optim.Adam(params, lr=1e-3))
        params = self._parameter_groups() if self.param_groups else self.parameters()
        opt = factory(params=params)
        if self.scheduler_factory is None:
            return opt
        sched = self.scheduler_factory(optimizer=opt)
        return {
            "optimizer": opt,
            "lr_scheduler": {
                "scheduler": sched,
                "interval": self.scheduler_interval,
                "monitor": "val/sdf_mae",
            },
        }


def load_module_network(path: str | Path) -> nn.Module:
    """Rebuild the trained network from an nsr checkpoint file, as a module (trainable, in eval mode).

    The checkpoint is read with ``weights_only=True``; its network is rebuilt from the class and
    options it records, from nsr's own classes only (:func:`nsr.checkpoints.build_network`:
    any other class named in the file is refused, never imported). Checkpoints written before
    the network was recorded by class hold a ``ReLUMLP`` and are rebuilt as one.

    Parameters
    ----------
    path : str or Path
        A checkpoint written by nsr's training.

    Returns
    -------
    torch.nn.Module
        The network with the trained weights, on the CPU, in eval mode.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    nsr.networks.NetworkError
        If the file is not such a checkpoint or names a class nsr does not rebuild.

    Examples
    --------
    >>> import tempfile, torch
    >>> from pathlib import Path
    >>> from nsr.training.lightning import ImplicitShapeModule, load_module_network
    >>> from nsr.training.losses import ImplicitLoss
    >>> from nsr.pl.models import SkipMLP
    >>> module = ImplicitShapeModule(SkipMLP(3, 16, 4), ImplicitLoss())
    >>> ckpt = {"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     torch.save(ckpt, Path(tmp) / "last.ckpt")
    ...     net = load_module_network(Path(tmp) / "last.ckpt")
    >>> x = torch.rand(5, 3)
    >>> type(net).__name__, bool(torch.equal(net(x), module.eval()(x)))
    ('SkipMLP', True)
    """
    from nsr.checkpoints import module_from_checkpoint, read_checkpoint
    from nsr.networks import NetworkError

    try:
        return module_from_checkpoint(read_checkpoint(path))
    except NetworkError as err:
        raise NetworkError(f"{path}: {err}" if str(path) not in str(err) else str(err)) from None


class TimeCosineLR(L.Callback):
    """Cosine learning-rate decay over a wall-clock budget instead of a step count.

    ``lr = eta_min + (lr0 - eta_min) * (1 + cos(pi * t / budget_s)) / 2`` with ``t`` the
    training time so far; ends at ``eta_min`` when the budget (e.g. ``trainer.max_time``) is
    spent, whatever the machine's speed. Use with ``scheduler: null``.

    Parameters
    ----------
    budget_s : float
        The training time budget, seconds.
    eta_min : float
        Learning rate at the end of the budget.

    Raises
    ------
    ValueError
        If ``budget_s <= 0``.

    Examples
    --------
    Once the budget is spent the learning rate is ``eta_min``:

    >>> import time, torch
    >>> from types import SimpleNamespace
    >>> from nsr.training.lightning import TimeCosineLR
    >>> opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    >>> trainer = SimpleNamespace(optimizers=[opt])
    >>> schedule = TimeCosineLR(budget_s=1e-6, eta_min=1e-5)
    >>> schedule.on_train_start(trainer, None)
    >>> time.sleep(0.01)
    >>> schedule.on_train_batch_start(trainer, None, None, 0)
    >>> opt.param_groups[0]["lr"]
    1e-05
    """

    def __init__(self, budget_s: float, eta_min: float = 1e-5) -> None:
        if budget_s <= 0:
            raise ValueError(f"budget_s must be > 0, got {budget_s}")
        self.budget_s, self.eta_min = float(budget_s), float(eta_min)
        self._t0: float | None = None
        self._lr0: list[float] = []

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Start the clock and remember each parameter group's initial learning rate.

        Parameters
        ----------
        trainer : lightning.Trainer
            Its ``optimizers`` are scheduled.
        pl_module : LightningModule
            Unused.
        """
        import time

        self._t0 = time.monotonic()
        self._lr0 = [g["lr"] for opt in trainer.optimizers for g in opt.param_groups]

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        """Set every parameter group's learning rate for the time spent so far.

        Parameters
        ----------
        trainer : lightning.Trainer
            Its ``optimizers`` are scheduled.
        pl_module : LightningModule
        batch : Any
        batch_idx : int
        """
        import math
        import time

        now = time.monotonic()
        t0 = self._t0 if self._t0 is not None else now
        frac = min((now - t0) / self.budget_s, 1.0)
        scale = 0.5 * (1.0 + math.cos(math.pi * frac))
        groups = [g for opt in trainer.optimizers for g in opt.param_groups]
        for g, lr0 in zip(groups, self._lr0):
            g["lr"] = self.eta_min + (lr0 - self.eta_min) * scale


class StepTimer(L.Callback):
    """Wall time of the training steps, two ways.

    :attr:`times`: from ``on_train_batch_start`` to ``on_train_batch_end`` (forward,
    backward, optimizer step, logging and the callbacks' batch hooks; place the timer before
    other callbacks, Lightning calls them in order, so that their work in
    ``on_train_batch_start``, e.g. an exact-surface re-extraction, is counted).
    :attr:`loop_times`: from one ``on_train_batch_end`` to the next within an epoch, i.e. a
    whole loop iteration including fetching the batch (the first step of each epoch, which
    would include validation and checkpointing, is left out). With ``path`` both are written
    there as JSON at the end of training (see :meth:`summary`).

    Parameters
    ----------
    path : str, optional
        JSON file written at the end of training.

    Examples
    --------
    >>> from nsr.training.lightning import StepTimer
    >>> timer = StepTimer()
    >>> for i in range(3):  # what Lightning calls around each step
    ...     timer.on_train_batch_start(None, None, None, i)
    ...     timer.on_train_batch_end(None, None, None, None, i)
    >>> len(timer.times), len(timer.loop_times), timer.summary()["steps"]
    (3, 2, 3)
    """

    def __init__(self, path: str | None = None) -> None:
        self.path = path
        self.times: list[float] = []
        self.loop_times: list[float] = []
        self._t0: float | None = None
        self._last_end: float | None = None

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Leave the first loop iteration of the epoch out of :attr:`loop_times`.

        Parameters
        ----------
        trainer : lightning.Trainer
        pl_module : LightningModule
        """
        self._last_end = None

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        """Start timing a step (see the class example).

        Parameters
        ----------
        trainer : lightning.Trainer
        pl_module : LightningModule
        batch : Any
        batch_idx : int
        """
        import time

        self._t0 = time.perf_counter()

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
        batch_idx: int,
    ) -> None:
        """Record the step's time and the loop iteration's (see the class example).

        Parameters
        ----------
        trainer : lightning.Trainer
        pl_module : LightningModule
        outputs : Any
        batch : Any
        batch_idx : int
        """
        import time

        now = time.perf_counter()
        if self._t0 is not None:
            self.times.append(now - self._t0)
            self._t0 = None
        if self._last_end is not None:
            self.loop_times.append(now - self._last_end)
        self._last_end = now

    def summary(self) -> dict[str, Any]:
        """``steps``, ``mean_s``, ``median_s``, ``total_s`` of :attr:`times` and
        ``loop_mean_s``, ``loop_median_s`` of :attr:`loop_times`.

        Returns
        -------
        dict of str to Any
            Seconds; NaN means and medians before any step.

        Examples
        --------
        >>> from nsr.training.lightning import StepTimer
        >>> timer = StepTimer()
        >>> timer.times = [0.5, 1.0, 3.0]
        >>> {k: v for k, v in timer.summary().items() if not k.startswith("loop")}
        {'steps': 3, 'mean_s': 1.5, 'median_s': 1.0, 'total_s': 4.5}
        """
        import statistics

        def stats(t: list[float]) -> tuple[float, float]:
            return (sum(t) / len(t), statistics.median(t)) if t else (float("nan"),) * 2

        (mean, median), (loop_mean, loop_median) = stats(self.times), stats(self.loop_times)
        return {"steps": len(self.times), "mean_s": mean, "median_s": median,
                "total_s": sum(self.times), "loop_mean_s": loop_mean, "loop_median_s": loop_median}

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Write :meth:`summary` and the raw times to ``path`` (rank 0 only).

        Parameters
        ----------
        trainer : lightning.Trainer
        pl_module : LightningModule
        """
        if self.path is None or not trainer.is_global_zero:
            return
        import json

        out = Path(self.path)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({**self.summary(), "times": self.times,
                                   "loop_times": self.loop_times}))
