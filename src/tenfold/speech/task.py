"""The speech enhancement LightningModule (training glue only: model, loss and front end live in their files).

It follows the official ``solver.py``: STFT with power-law compression of the (already variance-normalised) batch,
the TaylorSENet forward, ``ComMagEuclideanLoss`` over valid frames, Adam with L2, gradient clipping at norm 5 and the
update skipped when a gradient is NaN/Inf; after each validation the learning rate is halved once when the dev
SI-SNR has not improved on the previous epoch's twice in a row, and training stops at three.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor
from torchmetrics import MeanMetric

from tenfold.engine.optim import OptimConfig, configure_optimizers, timm_scheduler_step
from tenfold.speech.loss import ComMagEuclideanLoss
from tenfold.speech.stft import STFTConfig, apply_scale, frame_counts, istft_decompress, stft_compress
from tenfold.speech.taylorsenet import PAPER_CONFIG, TaylorSENet, load_taylorsenet
from tenfold.utils.config import config_from

__all__ = ["EnhancementTask", "HalveOnPlateau", "official_optim", "si_snr"]


def official_optim() -> OptimConfig:
    """Adam, lr 2e-4, betas (0.9, 0.999), L2 weight decay 1e-7 on every parameter, constant lr (halving aside)."""
    return OptimConfig(opt="adam", lr=2e-4, weight_decay=1e-7, filter_bias_and_bn=False, sched="none")


def si_snr(clean: Tensor, estimate: Tensor, lengths: Tensor | None = None) -> Tensor:
    """The official validation SI-SNR in dB (no mean removal, 1e-8 floors), per utterance, over valid samples.

    ``s = <e, r> / (|r|^2 + 1e-8) r``; ``SI-SNR = 10 log10(|s|^2 + 1e-8) - 10 log10(|e - s|^2 + 1e-8)`` with r the
    clean reference and e the estimate. Reference first, as every metric of :mod:`tenfold.speech.metrics` (the
    value is symmetric in r and e up to the floors). Zero padding beyond ``lengths`` is masked out, so padded
    batches give each utterance's own value.
    """
    if lengths is not None:
        mask = (torch.arange(estimate.shape[-1], device=estimate.device) < lengths[:, None]).to(estimate.dtype)
        estimate, clean = estimate * mask, clean * mask
    e, r = estimate.double(), clean.double()
    scale = (e * r).sum(-1, keepdim=True) / (r.pow(2).sum(-1, keepdim=True) + 1e-8)
    target = scale * r
    return 10 * torch.log10(target.pow(2).sum(-1) + 1e-8) - 10 * torch.log10((e - target).pow(2).sum(-1) + 1e-8)


@dataclass
class HalveOnPlateau:
    """The official learning-rate halving and early stop on a validation metric (higher is better).

    A metric not above the *previous* epoch's increments a counter (an improvement resets it). At ``halve_after``
    the learning rate is halved once; at ``stop_after`` training stops (before any halving that epoch).

    Attributes:
        halve_after: counter value that halves the learning rate (official 2).
        stop_after: counter value that stops training (official 3).
        previous: last epoch's metric.
        no_improvement: the counter.
    """

    halve_after: int = 2
    stop_after: int = 3
    previous: float = float("-inf")
    no_improvement: int = 0

    def step(self, metric: float) -> tuple[bool, bool]:
        """Feed one epoch's metric; returns (halve the learning rate now, stop now)."""
        halve = False
        if metric <= self.previous:
            self.no_improvement += 1
            halve = self.no_improvement == self.halve_after
            if self.no_improvement >= self.stop_after:
                return False, True
        else:
            self.no_improvement = 0
        self.previous = metric
        return halve, False


class EnhancementTask(pl.LightningModule):
    """Train and evaluate TaylorSENet on (noisy, clean, lengths, c) batches (see :mod:`tenfold.speech.data`).

    Logs ``train/loss``; ``val/loss`` and ``val/si_snr`` (the official dev metric, dB); on test also ``test/pesq``,
    ``test/stoi``, ``test/si_sdr`` (and any other :data:`tenfold.speech.metrics.METRICS` in ``test_metrics``),
    computed on whole utterances at their original level.

    Args:
        model_kwargs: TaylorSENet arguments (default: the paper configuration).
        weights: optional checkpoint or official state dict to start from.
        alpha: RI weight of the loss.
        l_type: ``L2`` or ``L1``.
        power: power-law compression exponent of the front end (0.5).
        optim: optimiser (default :func:`official_optim`).
        grad_clip: global gradient-norm clip (<= 0 disables).
        skip_nonfinite: skip the update when any gradient is NaN/Inf (official).
        halve_after: validations without improvement that halve the lr (0 disables the halving and early stop).
        stop_after: validations without improvement that stop training.
        test_metrics: metrics of the test stage.
    """

    def __init__(
        self,
        model_kwargs: dict[str, Any] | None = None,
        weights: str | None = None,
        alpha: float = 0.5,
        l_type: str = "L2",
        power: float = 0.5,
        optim: OptimConfig | None = None,
        grad_clip: float = 5.0,
        skip_nonfinite: bool = True,
        halve_after: int = 2,
        stop_after: int = 3,
        test_metrics: tuple[str, ...] = ("pesq", "stoi", "si_sdr"),
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["optim"])
        self.optim = config_from(OptimConfig, optim) or official_optim()
        self.hparams["optim"] = asdict(self.optim)
        kwargs = {**PAPER_CONFIG, **(model_kwargs or {})}
        self.hparams["model_kwargs"] = {k: list(v) if isinstance(v, tuple) else v for k, v in kwargs.items()}
        self.model = load_taylorsenet(weights, **kwargs) if weights else TaylorSENet(**kwargs)
        self.loss = ComMagEuclideanLoss(alpha, l_type)
        self.stft = STFTConfig(power=power)
        self.plateau = HalveOnPlateau(halve_after, stop_after)
        self.val_loss, self.val_si_snr = MeanMetric(), MeanMetric()
        from tenfold.speech.metrics import SpeechMetrics

        self.test_quality = SpeechMetrics(16000, test_metrics)
        self.test_loss = MeanMetric()

    def forward(self, spec: Tensor) -> Tensor:
        """Compressed clean estimate (B, 2, T, F) of a compressed noisy spectrum."""
        return self.model(spec)

    @torch.no_grad()
    def enhance(self, noisy: Tensor, lengths: Tensor) -> Tensor:
        """Enhanced (still variance-normalised) waveforms (B, L) of normalised noisy ones, zero beyond ``lengths``."""
        est = self.model(stft_compress(noisy, self.stft))
        wave = istft_decompress(est, noisy.shape[-1], self.stft)
        return wave * (torch.arange(wave.shape[-1], device=wave.device) < lengths[:, None])

    def _loss(self, batch: tuple[Tensor, ...]) -> Tensor:
        noisy, clean, lengths, _ = batch
        est = self.model(stft_compress(noisy, self.stft))
        return self.loss(est, stft_compress(clean, self.stft), frame_counts(lengths, self.stft.hop_length))

    def training_step(self, batch: tuple[Tensor, ...], batch_idx: int) -> Tensor:  # noqa: D102
        loss = self._loss(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=batch[0].shape[0], sync_dist=True)
        return loss

    def validation_step(self, batch: tuple[Tensor, ...], batch_idx: int) -> None:  # noqa: D102
        noisy, clean, lengths, _ = batch
        self.val_loss.update(self._loss(batch), weight=noisy.shape[0])
        self.val_si_snr.update(si_snr(clean, self.enhance(noisy, lengths), lengths))
        self.log("val/loss", self.val_loss, batch_size=noisy.shape[0])
        self.log("val/si_snr", self.val_si_snr, prog_bar=True, batch_size=noisy.shape[0])

    def test_step(self, batch: tuple[Tensor, ...], batch_idx: int) -> None:  # noqa: D102
        noisy, clean, lengths, c = batch
        self.test_loss.update(self._loss(batch), weight=noisy.shape[0])
        enhanced = apply_scale(self.enhance(noisy, lengths), c, inverse=True)
        clean = apply_scale(clean, c, inverse=True)
        for i in range(noisy.shape[0]):  # utterances have their own lengths: the metrics score each alone
            n = int(lengths[i])
            self.test_quality.update(clean[i : i + 1, :n].cpu(), enhanced[i : i + 1, :n].cpu())
        self.log("test/loss", self.test_loss, batch_size=noisy.shape[0])

    def on_test_epoch_end(self) -> None:  # noqa: D102
        for name, value in self.test_quality.compute().items():
            self.log(f"test/{name}", value.float())
        self.test_quality.reset()

    def on_validation_epoch_end(self) -> None:
        """Official lr halving / early stop on the dev SI-SNR (skipped during the sanity check)."""
        if self.trainer.sanity_checking or self.plateau.halve_after <= 0:
            return
        metric = self.trainer.callback_metrics.get("val/si_snr")
        if metric is None:
            return
        halve, stop = self.plateau.step(float(metric))
        if stop:
            self.trainer.should_stop = True
        if halve:
            for optimizer in self.trainer.optimizers:
                for group in optimizer.param_groups:
                    group["lr"] = group["lr"] / 2

    def configure_gradient_clipping(
        self, optimizer: torch.optim.Optimizer, gradient_clip_val: Any = None, gradient_clip_algorithm: Any = None
    ) -> None:
        """Clip the global gradient norm, then skip the update if a gradient is NaN/Inf (the official order).

        The total norm that the clip returns is non-finite exactly when some gradient is, so one reduction answers
        both. A skipped update sets the gradients to None, so Adam leaves those parameters (and moments) alone.
        """
        params = [p for p in self.model.parameters() if p.grad is not None]
        if not params:
            return
        if self.hparams.grad_clip > 0:
            total = torch.nn.utils.clip_grad_norm_(params, self.hparams.grad_clip)
        else:
            total = torch.nn.utils.get_total_norm([p.grad for p in params])
        if self.hparams.skip_nonfinite and not torch.isfinite(total):
            for p in params:
                p.grad = None
            self.log("train/skipped_step", 1.0, batch_size=1)

    def configure_optimizers(self) -> Any:  # noqa: D102
        return configure_optimizers(self, self.model, self.optim)

    def lr_scheduler_step(self, scheduler: Any, metric: Any) -> None:  # noqa: D102
        timm_scheduler_step(self, scheduler)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:  # noqa: D102
        checkpoint["halve_on_plateau"] = asdict(self.plateau)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:  # noqa: D102
        if "halve_on_plateau" in checkpoint:
            self.plateau = HalveOnPlateau(**checkpoint["halve_on_plateau"])
