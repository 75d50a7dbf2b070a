"""Lightning training of ScaleNet's super-supernet (spec 2.3, 2.4, 3): one hierarchical sample per step.

``tenfold fit --config configs/scalenet/tiny_supernet.yaml`` trains the tiny space on the digits;
``configs/scalenet/imagenet_supernet.yaml`` holds the paper's settings. The trained checkpoint is what
``tenfold search --space scalenet --supernet CKPT`` searches (:func:`load_supernet`).

Differences from the official loop (``tools/trainer/imagenet/trainer.py``), all documented in docs/scalenet.md:

* The sub-network of step ``t`` comes from ``random.Random(f"{seed}:{t}")``: every process draws the same one
  without a broadcast, and a resumed run draws the same sequence as an uninterrupted one.
* The batch is resized on the fly (bilinear, antialiased) to the sampled resolution, unless the data already gives
  a ``{resolution: images}`` dict as the official loader does (a per-resolution ``RandomResizedCrop``).
* Gradients of the ops off the sampled path are ``None`` (Lightning zeroes gradients with ``set_to_none``), so SGD
  leaves them untouched; under the official PyTorch 1.x ``zero_grad`` they kept zero gradients and still received
  weight decay and momentum. The official ``set_subnet`` (``requires_grad`` toggling) is not needed for that and
  is not called, so DDP (``ddp_find_unused_parameters_true``) sees a fixed set of trainable parameters.
* The slicing counters of the n-laterally coupled modules are saved in the checkpoint (``scalenet_coupling``).
"""

from __future__ import annotations

import random
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch
from torch.optim.lr_scheduler import LambdaLR

from tenfold.classification.task import ClassifierTaskBase
from tenfold.engine.optim import OptimConfig, configure_optimizers
from tenfold.nas.scalenet import (
    ScaleNetSpace,
    ScaleNetSuperNet,
    at_resolution,
    official_lr_factor,
    official_param_groups,
    official_state_dict,
    proxy_logits,
    s_softmax_loss,
    sample_subnet,
    space_from_name,
)
from tenfold.utils.checkpoint import load_checkpoint
from tenfold.utils.config import config_from

__all__ = ["ScaleNetSupernetTask", "load_supernet", "step_rng"]

COUPLING_KEY = "scalenet_coupling"


def step_rng(seed: int, step: int) -> random.Random:
    """The sampler's RNG of training step ``step`` (a string seed: stable across processes and Python runs)."""
    return random.Random(f"{seed}:{step}")


class ScaleNetSupernetTask(ClassifierTaskBase):
    """Train the super-supernet with the hierarchical sampler and the s-softmax loss.

    Every step samples one sub-network (:func:`~tenfold.nas.scalenet.sample_subnet` with :func:`step_rng`),
    resizes the batch to its resolution and takes one SGD step on the s-softmax loss of that path (asynchronous
    n = 2 coupling: one call per step). Optimiser: ``optim`` (timm names; the paper uses ``sgd`` = Nesterov, lr
    0.12, momentum 0.9, weight decay 4e-5) with the official weight-decay multipliers as parameter groups (conv
    weights x2, conv biases and BN 0, Linear x1; ``optim.filter_bias_and_bn`` does not apply) and the official
    per-iteration schedule (linear warm-up from 0 over ``warmup_steps``, then cosine to 0 at
    ``trainer.max_steps``); ``optim.sched`` and ``optim.warmup_*`` are ignored.

    Validation reports the proxy top-1 (BN batch statistics, n calls summed) of one fixed sub-network, the
    ``val_stage`` sample of :func:`step_rng` ``(seed, -1 - val_stage)`` draws (a rough health signal: the search
    scores candidates with :func:`~tenfold.nas.scalenet.evaluate_candidate`).

    Args:
        space: ``"tiny"`` or ``"paper"`` (:func:`~tenfold.nas.scalenet.space_from_name`).
        num_classes: classifier outputs (linked from the data module by the CLI).
        seed: seed of the per-step sampler.
        warmup_steps: linear warm-up length in iterations (paper 375).
        optim: optimiser settings (``opt``, ``lr``, ``momentum``, ``weight_decay``).
        val_stage: scaling stage of the validation sub-network.

    Raises:
        ValueError: an unknown space or a ``val_stage`` outside the space.
    """

    def __init__(
        self,
        space: str = "tiny",
        num_classes: int = 10,
        seed: int = 0,
        warmup_steps: int = 375,
        optim: OptimConfig | None = None,
        val_stage: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["optim"])
        self.optim = config_from(OptimConfig, optim) or OptimConfig(opt="sgd", lr=0.12, weight_decay=4e-5)
        self.hparams["optim"] = asdict(self.optim)
        self.space = space_from_name(space, num_classes=num_classes)
        if not 0 <= val_stage <= self.space.max_scaling_stage:
            raise ValueError(f"val_stage must be in [0, {self.space.max_scaling_stage}], got {val_stage}")
        if warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
        self.supernet = ScaleNetSuperNet(self.space)
        self.val_encoding = self._val_encoding(seed, val_stage)
        self.init_metrics(num_classes)

    def _val_encoding(self, seed: int, stage: int) -> list[Any]:
        sizes = [len(w) for w in self.space.width_multipliers]
        for k in range(10000):  # the first draw that falls in the requested stage
            # the sampler's first draw picks the stage (widths alone may be shared by two stages, e.g. 1.0)
            u = step_rng(seed, -1 - k).randint(0, sum(sizes) - 1)
            if sum(sizes[:stage]) <= u < sum(sizes[: stage + 1]):
                return sample_subnet(self.space, step_rng(seed, -1 - k))
        raise ValueError(f"no sample of scaling stage {stage} in 10000 draws")

    def sample(self, step: int) -> list[Any]:
        """The sub-network encoding of training step ``step``."""
        return sample_subnet(self.space, step_rng(self.hparams.seed, step))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Proxy logits (B, num_classes) of the validation sub-network."""
        return proxy_logits(self.supernet, x, self.val_encoding)

    def trainable_modules(self) -> torch.nn.Module:  # noqa: D102
        return self.supernet

    def training_step(self, batch: tuple[Any, torch.Tensor], batch_idx: int) -> torch.Tensor:  # noqa: D102
        images, labels = batch
        encoding = self.sample(self.global_step)
        logits = self.supernet(at_resolution(images, int(encoding[-1])), encoding)
        loss = s_softmax_loss(logits, labels)
        self.train_metrics.update(logits.detach(), labels)
        self.log("train/loss", loss, prog_bar=True, batch_size=labels.numel(), sync_dist=True)
        self.log_dict(self.train_metrics, on_step=False, on_epoch=True)
        return loss

    def configure_optimizers(self) -> Any:  # noqa: D102
        groups = official_param_groups(self.supernet, self.optim.weight_decay)
        optimizer = configure_optimizers(self, groups, replace(self.optim, sched="none"))
        total = self.trainer.max_steps
        if total is None or total <= 0:
            raise ValueError("set trainer.max_steps: the super-supernet schedule is per iteration (paper: 750000)")
        warmup = self.hparams.warmup_steps
        # Lightning steps the scheduler after each update; the official loop sets the lr of iteration t (from 1)
        scheduler = LambdaLR(optimizer, lambda k: official_lr_factor(k + 1, warmup, total))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def lr_scheduler_step(self, scheduler: Any, metric: Any) -> None:  # noqa: D102
        scheduler.step()

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:  # noqa: D102
        checkpoint[COUPLING_KEY] = self.supernet.coupling_state()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:  # noqa: D102
        if COUPLING_KEY in checkpoint:
            self.supernet.load_coupling_state(checkpoint[COUPLING_KEY])


def load_supernet(path: str | Path, space: ScaleNetSpace | None = None) -> ScaleNetSuperNet:
    """A trained super-supernet from a :class:`ScaleNetSupernetTask` checkpoint or an official one.

    Args:
        path: a Lightning checkpoint of the task (space and class count from its hyper-parameters, slicing counters
            restored), or an official ``{'step', 'state_dict'}`` file (``module.`` keys; then ``space`` is needed).
        space: the space (required for official checkpoints; overrides the task's otherwise, e.g. to set F0).

    Raises:
        FileNotFoundError: no such file.
        ValueError: an official checkpoint without ``space``, or keys that do not fit.
    """
    if not Path(path).is_file():
        raise FileNotFoundError(f"supernet checkpoint {str(path)!r} does not exist")
    ckpt = load_checkpoint(path)
    if "pytorch-lightning_version" in ckpt:
        hp = ckpt["hyper_parameters"]
        space = space or space_from_name(hp["space"], num_classes=hp["num_classes"])
        state = {k.removeprefix("supernet."): v for k, v in ckpt["state_dict"].items() if k.startswith("supernet.")}
    elif space is None:
        raise ValueError(f"{path}: an official checkpoint needs the space (pass space=...)")
    else:
        state = official_state_dict(ckpt)
    net = ScaleNetSuperNet(space, init=False)
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ValueError(
            f"supernet checkpoint {str(path)!r} does not fit the {space.num_blocks}-block space: {err}"
        ) from err
    if COUPLING_KEY in ckpt:
        net.load_coupling_state(ckpt[COUPLING_KEY])
    return net
