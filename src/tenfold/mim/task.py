"""GreenMIM pre-training as a LightningModule (training glue only: the method is :mod:`tenfold.mim.greenmim`)."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import lightning.pytorch as pl
import torch
from torchmetrics import MeanMetric

from tenfold.engine.optim import OptimConfig, configure_optimizers, timm_scheduler_step
from tenfold.mim.greenmim import GreenMIM, GreenMIMConfig
from tenfold.utils.config import config_from

__all__ = ["GreenMIMTask"]


class GreenMIMTask(pl.LightningModule):
    """Pre-train a Swin encoder with GreenMIM on unlabelled images (labels of the batch are ignored).

    Logs ``train/loss`` (masked-unit MSE) and ``val/loss``; validation draws its masks from a fixed seed per batch,
    so validation losses of different steps and runs are comparable.

    Training masks come from a generator owned by the task, seeded in :meth:`setup` with ``mask_seed + global_rank``:
    under DDP every process draws its own mask per step, as the official run does (it seeds each process with
    ``seed + rank``; the global RNG, seeded identically on every rank by ``seed_everything``, would give all GPUs the
    same mask). The generator's state goes into checkpoints (one state per rank) so that a resumed run continues
    the same mask sequence.

    Args:
        greenmim: the model (:class:`~tenfold.mim.greenmim.GreenMIMConfig`, the encoder's settings nested under
            ``encoder``); None: Swin-B/w7 with the official decoder, mask and loss.
        optim: optimiser and schedule (timm names); None: AdamW lr 1.5e-4, betas (0.9, 0.95) (``opt_betas``, the
            official value), weight decay 0.05, cosine. A given ``optim`` sets its own betas: without ``opt_betas``
            timm's default (0.9, 0.999) applies, so the recipes set ``opt_betas: [0.9, 0.95]``. Weight decay skips
            1-D parameters, the relative-position bias tables and the mask token (``GreenMIM.no_weight_decay``), as
            the official code does.
        val_mask_seed: seed of the validation masks.
        mask_seed: base seed of the training masks (rank r uses ``mask_seed + r``); None: the run's seed, i.e.
            LightningCLI's ``seed_everything`` (read back as ``torch.initial_seed()`` in :meth:`setup`).
    """

    #: checkpoint key of the mask generator states
    MASK_RNG_KEY = "greenmim_mask_rng"

    def __init__(
        self,
        greenmim: GreenMIMConfig | None = None,
        optim: OptimConfig | None = None,
        val_mask_seed: int = 0,
        mask_seed: int | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["greenmim", "optim"])
        config = config_from(GreenMIMConfig, greenmim) or GreenMIMConfig()
        self.hparams["greenmim"] = asdict(config)
        self.optim = config_from(OptimConfig, optim) or OptimConfig(
            opt="adamw", lr=1.5e-4, weight_decay=0.05, sched="cosine", opt_betas=(0.9, 0.95)
        )
        self.hparams["optim"] = asdict(self.optim)
        self.model = GreenMIM(config)
        self.val_mask_seed = val_mask_seed
        self.mask_seed = mask_seed
        self.mask_generator: torch.Generator | None = None
        self._mask_rank: int | None = None
        self._mask_base_seed: int | None = None
        self.val_loss = MeanMetric()

    def setup(self, stage: str) -> None:
        """Seed this process's training-mask generator with ``mask_seed + global_rank`` (once per rank).

        A second ``fit`` of the same task keeps the generator where it is, so its masks do not repeat.
        """
        if self.mask_generator is not None and self._mask_rank == self.global_rank:
            return
        base = self.mask_seed if self.mask_seed is not None else torch.initial_seed()
        self._mask_base_seed, self._mask_rank = base, self.global_rank
        self.mask_generator = torch.Generator().manual_seed((base + self.global_rank) % 2**64)

    def _generator(self) -> torch.Generator:
        if self.mask_generator is None:  # used without a trainer (no setup call)
            self.setup("fit")
        assert self.mask_generator is not None
        return self.mask_generator

    def training_mask(self, batch_size: int, device: torch.device | str | None = None):
        """The next training :class:`~tenfold.mim.masking.UnitMask`, from this process's generator."""
        return self.model.random_mask(batch_size, generator=self._generator(), device=device)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Store the mask generator state of every rank (gathered: under DDP only rank 0 writes the file)."""
        state = self._generator().get_state()
        world = self.trainer.world_size if self._trainer is not None else 1
        if world > 1:
            states = self.all_gather(state.to(self.device)).cpu().reshape(world, -1)
        else:
            states = state.unsqueeze(0)
        checkpoint[self.MASK_RNG_KEY] = {"states": states, "base_seed": self._mask_base_seed}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restore this rank's mask generator state; a file from another world size re-seeds ranks beyond it."""
        saved = checkpoint.get(self.MASK_RNG_KEY)
        if saved is None:  # a checkpoint from before the generator existed: keep the fresh seed
            return
        generator = self._generator()
        states = saved["states"]
        if self.global_rank < states.shape[0]:
            # a fresh contiguous copy: set_state on a row view of a larger tensor crashes (torch 2.14)
            generator.set_state(states[self.global_rank].to(device="cpu", dtype=torch.uint8).clone())

    def forward(self, images: torch.Tensor):
        """:class:`~tenfold.mim.greenmim.GreenMIMOutput` of (B, 3, H, W) normalised images with a random mask."""
        return self.model(images)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:  # noqa: D102
        images = batch[0] if isinstance(batch, (tuple, list)) else batch
        loss = self.model(images, self.training_mask(images.shape[0], images.device)).loss
        self.log("train/loss", loss, prog_bar=True, batch_size=images.shape[0], sync_dist=True)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:  # noqa: D102
        images = batch[0] if isinstance(batch, (tuple, list)) else batch
        gen = torch.Generator().manual_seed(self.val_mask_seed * 1_000_003 + batch_idx)
        unit_mask = self.model.random_mask(images.shape[0], generator=gen, device=images.device)
        loss = self.model(images, unit_mask).loss
        self.val_loss.update(loss, weight=images.shape[0])
        self.log("val/loss", self.val_loss, prog_bar=True, batch_size=images.shape[0])

    def configure_optimizers(self) -> Any:  # noqa: D102
        return configure_optimizers(self, self.model, self.optim)

    def lr_scheduler_step(self, scheduler: Any, metric: Any) -> None:  # noqa: D102
        timm_scheduler_step(self, scheduler)
