r"""DiffKD: knowledge diffusion for distillation (Huang et al., NeurIPS 2023, arXiv 2305.15712).

The student's feature is treated as a noisy version of the teacher's. A small noise-prediction network (the
denoiser) is trained on the teacher's features with the DDPM loss; the same network then denoises the
(projected) student feature for a few DDIM steps, and the KD loss compares that denoised feature with the
teacher's. A linear autoencoder compresses the teacher feature (feature maps only) and a noise adapter decides, per
sample, how much fresh Gaussian noise to mix into the student feature before denoising.

Follows the official code: https://github.com/hunto/image_classification_sota (commit 6cb1441,
``lib/models/losses/diffkd/*`` and the ``diffkd`` branch of ``lib/models/losses/kd_loss.py``) and the standalone
https://github.com/hunto/DiffKD (commit 7fcf2e5). Submodule and parameter names are the official ones, so an
official ``DiffKD`` state dict (e.g. the ``_diff.layer4.*`` keys of a released student, with the prefix removed)
loads with ``strict=True`` into :class:`DiffKD` and :class:`DiffKDLoss`.

The DDIM scheduler is diffusers' :class:`~diffusers.DDIMScheduler` with every argument pinned
(:func:`make_ddim_scheduler`); the official repository ships a copy of it with one extra method, whose
difference is written here as :func:`adaptive_noise_mix`.
"""

from __future__ import annotations

import copy
import math
from typing import Literal, NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers import DDIMScheduler

__all__ = [
    "DDIMStep",
    "DiffKD",
    "DiffKDLoss",
    "DiffKDOutput",
    "DiffKDParts",
    "PointwiseConv2d",
    "adaptive_noise_mix",
    "ddim_coefficients",
    "ddim_denoise",
    "make_ddim_scheduler",
    "sampling_timesteps",
]

TIME_EMBEDDING_SIZE = 1280
"""Rows of the denoiser's timestep embedding table (official constant; bounds ``num_train_timesteps``)."""


# ---------------------------------------------------------------------------------------------------------------
# Scheduler: diffusers' DDIM, pinned, plus the one official non-standard step
# ---------------------------------------------------------------------------------------------------------------


def make_ddim_scheduler(num_train_timesteps: int = 1000, inference_steps: int = 5) -> DDIMScheduler:
    r"""Build the DDIM scheduler of diffusers exactly as the official DiffKD one, timesteps already set.

    The official code builds its copy of the scheduler with ``num_train_timesteps``, ``clip_sample=False`` and
    ``beta_schedule="linear"`` and keeps the other defaults of diffusers at the time. Every argument is pinned
    here so that a change of diffusers' defaults (``clip_sample`` defaults to ``True`` in diffusers) cannot change
    the schedule:

    .. math::
        \beta_i = \mathrm{linspace}(10^{-4}, 0.02, N)_i \ (\text{float32}),\qquad
        \bar\alpha_t = \prod_{i \le t} (1 - \beta_i),\qquad \bar\alpha_{-1} := 1 \ (\text{set\_alpha\_to\_one}).

    ``set_timesteps(2 * inference_steps)`` is called once here ("leading" spacing, ``steps_offset=0``): the
    timesteps are ``arange(2n)[::-1] * (N // 2n)``, e.g. ``[900, 800, ..., 0]`` for N = 1000, n = 5, and the DDIM
    step size is ``N // 2n`` = 100. DiffKD then runs only the second half, :func:`sampling_timesteps`.

    Args:
        num_train_timesteps: N, the length of the training diffusion chain (official 1000).
        inference_steps: n, the number of DDIM denoising steps applied to the student feature (official 5).

    Returns:
        A :class:`diffusers.DDIMScheduler` whose ``timesteps`` hold the 2n-step schedule.
    """
    scheduler = DDIMScheduler(
        num_train_timesteps=num_train_timesteps,
        beta_start=0.0001,
        beta_end=0.02,
        beta_schedule="linear",
        trained_betas=None,
        clip_sample=False,
        set_alpha_to_one=True,
        steps_offset=0,
        prediction_type="epsilon",
        thresholding=False,
        dynamic_thresholding_ratio=0.995,
        clip_sample_range=1.0,
        sample_max_value=1.0,
        timestep_spacing="leading",
        rescale_betas_zero_snr=False,
    )
    scheduler.set_timesteps(2 * inference_steps)
    return scheduler


def sampling_timesteps(scheduler: DDIMScheduler) -> torch.Tensor:
    """The timesteps DiffKD denoises over: the second half of the scheduler's ``timesteps``.

    Official quirk kept as is: the pipeline asks for ``2n`` steps and skips the first ``n``, so the student start
    point is treated as the sample at ``t = (n - 1) * N // 2n`` (t = 400 for N = 1000, n = 5), not at t = N - 1.

    Args:
        scheduler: A scheduler from :func:`make_ddim_scheduler` (``set_timesteps`` already called).

    Returns:
        (n,) long tensor, descending, ending at 0 (``[400, 300, 200, 100, 0]`` for the official setting).
    """
    timesteps = scheduler.timesteps
    return timesteps[len(timesteps) // 2 :]


def adaptive_noise_mix(feat: torch.Tensor, noise: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    r"""Adaptive noise matching: mix the student feature with Gaussian noise, per sample.

    .. math::
        x_\text{init} = \gamma \, s + (1 - \gamma)\, \epsilon,\qquad \gamma \in (0, 1)^B

    This is the one method the official scheduler copy adds and DiffKD uses (``add_noise_diff2``). Variable
    mapping: ``feat`` = s (the projected student feature, official ``original_samples``), ``noise`` = epsilon,
    ``gamma`` = the noise adapter's output (official ``timesteps``, although it is a weight, not a timestep).

    Departures from the paper and from DDPM, kept as in the official code: the weights are linear (gamma and
    1 - gamma), not the variance-preserving ``sqrt(alpha_bar)`` and ``sqrt(1 - alpha_bar)`` of ``add_noise``, and
    the result is fed to the denoiser as the sample at a fixed timestep (see :func:`sampling_timesteps`) whatever
    gamma is. A larger gamma keeps more of the student feature (less noise); the author's reply in
    hunto/DiffKD issue #3 describes the opposite, the code is followed here.

    Args:
        feat: (B, C, H, W) student feature s.
        noise: Gaussian noise of the same shape.
        gamma: (B,) mixing weights.

    Returns:
        (B, C, H, W) starting sample of the DDIM chain.

    Raises:
        ValueError: If ``noise`` does not match ``feat`` or ``gamma`` is not (B,).
    """
    if noise.shape != feat.shape:
        raise ValueError(f"noise must have the feature's shape {tuple(feat.shape)}, got {tuple(noise.shape)}")
    if gamma.shape != feat.shape[:1]:
        raise ValueError(f"gamma must have shape ({feat.shape[0]},), got {tuple(gamma.shape)}")
    gamma = gamma.reshape(-1, *([1] * (feat.ndim - 1)))
    return gamma * feat + (1 - gamma) * noise


def ddim_denoise(
    model: nn.Module, scheduler: DDIMScheduler, sample: torch.Tensor, timesteps: torch.Tensor
) -> torch.Tensor:
    r"""Deterministic DDIM (eta = 0) over ``timesteps`` with an epsilon-predicting ``model``; differentiable.

    Each step is diffusers' ``DDIMScheduler.step(eps_hat, t, x, eta=0, use_clipped_model_output=True)``:

    .. math::
        \hat x_0 = \frac{x_t - \sqrt{1-\bar\alpha_t}\,\hat\epsilon}{\sqrt{\bar\alpha_t}},\quad
        \epsilon' = \frac{x_t - \sqrt{\bar\alpha_t}\,\hat x_0}{\sqrt{1-\bar\alpha_t}},\quad
        x_{t-k} = \sqrt{\bar\alpha_{t-k}}\,\hat x_0 + \sqrt{1-\bar\alpha_{t-k}}\,\epsilon'

    with k the scheduler's step size and ``alpha_bar_{t-k} = 1`` when t - k < 0 (so the last step returns x0_hat).
    Not run under ``no_grad``: the KD loss trains the denoiser through every step, as officially. A float64
    ``sample`` is stepped with float64 coefficients computed from the same (float32-built) alpha-bar table.

    Args:
        model: Called as ``model(x, t)`` with a 0-d long timestep; returns the predicted noise, shaped like x.
        scheduler: A scheduler from :func:`make_ddim_scheduler`.
        sample: (B, C, H, W) starting sample.
        timesteps: Descending timesteps, e.g. :func:`sampling_timesteps`.

    Returns:
        The denoised sample, shaped like ``sample``.
    """
    if sample.dtype == torch.float64 and scheduler.alphas_cumprod.dtype != torch.float64:
        # diffusers' step reads alpha_bar_t from the scheduler's float32 table as a 0-d tensor, so sqrt(alpha_bar)
        # and sqrt(1 - alpha_bar) would be rounded to float32 (relative error ~1e-7) even in a float64 run. A
        # float64 copy of the same table keeps that arithmetic in float64; float32 and lower precisions are stepped
        # with float32 coefficients as before. A shallow copy, so the caller's scheduler is left as it was.
        scheduler = copy.copy(scheduler)
        scheduler.alphas_cumprod = scheduler.alphas_cumprod.to(torch.float64)
        scheduler.final_alpha_cumprod = torch.as_tensor(scheduler.final_alpha_cumprod).to(torch.float64)
    for t in timesteps:
        eps = model(sample, t.to(sample.device))
        sample = scheduler.step(eps, t, sample, eta=0.0, use_clipped_model_output=True).prev_sample
    return sample


def _channels_last(x: torch.Tensor) -> torch.Tensor:
    """``x`` in channels-last memory (same values; no copy if it already is, e.g. any (B, C, 1, 1) tensor)."""
    return x.contiguous(memory_format=torch.channels_last) if x.ndim == 4 else x


class DDIMStep(NamedTuple):
    """One deterministic DDIM step in closed form, ``x_{t-k} = a * x_t + b * eps_hat`` (:func:`ddim_coefficients`).

    Attributes:
        t: the timestep the step starts from.
        a: coefficient of the sample, ``sqrt(alpha_bar_{t-k} / alpha_bar_t)``.
        b: coefficient of the predicted noise, ``sqrt(1 - alpha_bar_{t-k}) - sqrt(alpha_bar_{t-k} (1 - alpha_bar_t)
            / alpha_bar_t)``.
    """

    t: int
    a: float
    b: float


def ddim_coefficients(scheduler: DDIMScheduler, timesteps: torch.Tensor) -> list[DDIMStep]:
    r"""The DDIM steps of :func:`ddim_denoise` as two coefficients each, computed once in float64.

    With eta = 0 and no clipping, diffusers' step (x0_hat, then eps' re-derived from it, then x_prev) is linear in
    the sample and the predicted noise:

    .. math::
        x_{t-k} = \sqrt{\frac{\bar\alpha_{t-k}}{\bar\alpha_t}}\, x_t
            + \Big(\sqrt{1-\bar\alpha_{t-k}} - \sqrt{\frac{\bar\alpha_{t-k}(1-\bar\alpha_t)}{\bar\alpha_t}}\Big)
            \hat\epsilon

    (eps' equals eps_hat in exact arithmetic). The alpha-bar values are the scheduler's own (float32-built) table
    entries, ``alpha_bar_{-k} = final_alpha_cumprod`` (1). One multiply and one multiply-add per step instead of
    diffusers' nine tensor operations plus about twenty 0-d ones; the result differs from diffusers' only by float
    rounding (a few float32 epsilons per step).

    Args:
        scheduler: A scheduler from :func:`make_ddim_scheduler`.
        timesteps: Descending timesteps, e.g. :func:`sampling_timesteps`.

    Returns:
        One :class:`DDIMStep` per timestep, in order.
    """
    table = scheduler.alphas_cumprod
    stride = scheduler.config.num_train_timesteps // scheduler.num_inference_steps
    final = float(torch.as_tensor(scheduler.final_alpha_cumprod))
    steps = []
    for t in (int(t) for t in timesteps):
        abar = float(table[t])
        abar_prev = float(table[t - stride]) if t - stride >= 0 else final
        a = math.sqrt(abar_prev / abar)
        b = math.sqrt(1.0 - abar_prev) - math.sqrt(abar_prev * (1.0 - abar) / abar)
        steps.append(DDIMStep(t, a, b))
    return steps


# ---------------------------------------------------------------------------------------------------------------
# Building blocks (official names)
# ---------------------------------------------------------------------------------------------------------------


class PointwiseConv2d(nn.Conv2d):
    """A 1x1 convolution (an ``nn.Conv2d``: same parameters, state-dict keys and initialisation) run as a GEMM.

    With ``gemm=True`` (the default) the input is viewed channels-last as (B, H, W, C_in) rows and multiplied by
    the (C_out, C_in) weight with ``F.linear``: one matrix product forward, and one each for the input and the
    weight gradient over all B * H * W positions. Why: on the CPU, PyTorch sends 1x1 convolutions with batches
    below 16 on one thread to its slow (THNN) kernel, which builds the weight gradient from one small product per
    sample (for logits, (B, K, 1, 1), a rank-1 update of the whole weight per sample). The output is channels-last;
    an input in another layout is copied to channels-last once. The result equals the convolution's up to float
    rounding (another summation order). ``gemm=False`` runs ``nn.Conv2d.forward``.

    Args:
        in_channels: C_in.
        out_channels: C_out.
        bias: Learnable bias (as ``nn.Conv2d``).
    """

    def __init__(self, in_channels: int, out_channels: int, bias: bool = True) -> None:
        super().__init__(in_channels, out_channels, 1, bias=bias)
        self.gemm = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, H, W) -> (B, C_out, H, W) (channels-last with ``gemm``)."""
        if not self.gemm or x.ndim != 4:
            return super().forward(x)
        rows = x.permute(0, 2, 3, 1)  # a view for a channels-last x (and for any x with H = W = 1)
        if not rows.is_contiguous():
            rows = rows.contiguous()
        return F.linear(rows, self.weight.flatten(1), self.bias).permute(0, 3, 1, 2)


class Bottleneck(nn.Module):
    """Residual 1x1 -> 3x3 -> 1x1 conv bottleneck with BN; ``block(x) + x`` with no activation after the add.

    Differs from a ResNet bottleneck: the width is ``in_channels // reduction`` and there is no final ReLU.
    Keys ``block.{0,1,3,4,6,7}``.
    """

    def __init__(self, in_channels: int, out_channels: int, reduction: int = 4) -> None:
        super().__init__()
        mid = in_channels // reduction
        self.block = nn.Sequential(
            PointwiseConv2d(in_channels, mid),
            nn.BatchNorm2d(mid),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid, mid, 3, padding=1),
            nn.BatchNorm2d(mid),
            nn.ReLU(inplace=True),
            PointwiseConv2d(mid, out_channels),
            nn.BatchNorm2d(out_channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, H, W) -> (B, C_out, H, W); needs C_out == C_in for the residual."""
        return self.block(x) + x


class AutoEncoder(nn.Module):
    """Linear autoencoder for teacher features: encoder 1x1 conv + BN, decoder 1x1 conv.

    Keys ``encoder.0``, ``encoder.1``, ``decoder.0``.
    """

    def __init__(self, channels: int, latent_channels: int) -> None:
        super().__init__()
        self.encoder = nn.Sequential(PointwiseConv2d(channels, latent_channels), nn.BatchNorm2d(latent_channels))
        self.decoder = nn.Sequential(PointwiseConv2d(latent_channels, channels))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, C_t, H, W) -> latent (B, C_ae, H, W) and reconstruction (B, C_t, H, W)."""
        latent = self.encoder(x)
        return latent, self.decoder(latent)


class DiffusionModel(nn.Module):
    """Light-weight noise-prediction network: ``pred(x + E[t])``, E a (1280, C) embedding table.

    ``kernel_size=3`` (feature maps): two :class:`Bottleneck` (reduction 4), a 1x1 conv and a BN.
    ``kernel_size=1`` (logits as (B, K, 1, 1)): 1x1 convs C -> 4C -> C -> 4C -> C with BN/ReLU, no residual.
    The denoiser is not conditioned on the student.
    """

    def __init__(self, channels_in: int, kernel_size: int = 3) -> None:
        super().__init__()
        c = channels_in
        self.kernel_size = kernel_size
        self.time_embedding = nn.Embedding(TIME_EMBEDDING_SIZE, c)
        if kernel_size == 3:
            self.pred = nn.Sequential(Bottleneck(c, c), Bottleneck(c, c), PointwiseConv2d(c, c), nn.BatchNorm2d(c))
        else:
            self.pred = nn.Sequential(
                PointwiseConv2d(c, 4 * c),
                nn.BatchNorm2d(4 * c),
                nn.ReLU(inplace=True),
                PointwiseConv2d(4 * c, c),
                nn.BatchNorm2d(c),
                PointwiseConv2d(c, 4 * c),
                nn.BatchNorm2d(4 * c),
                nn.ReLU(inplace=True),
                PointwiseConv2d(4 * c, c),
            )

    def forward(self, x: torch.Tensor, t: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        """Predict the noise in ``x`` (B, C, H, W) at timestep ``t`` (0-d, or (B,) per sample).

        ``emb``: the embedding rows of ``t``, (C,) or (B, C), if the caller looked them up already (one lookup
        for several calls, hence one gradient of the table); ``t`` is then not read.
        """
        if emb is None:
            emb = self.time_embedding(t.long())
        return self.pred(x + emb[..., None, None])


class NoiseAdapter(nn.Module):
    """Predicts the per-sample mixing weight gamma = ``softmax(pred(flatten(feat(s))))[:, 0]`` in (0, 1).

    ``kernel_size=3``: ``feat`` = Bottleneck (reduction 8) + global average pooling. ``kernel_size=1``:
    ``feat`` = 1x1 convs C -> 2C -> C with BN/ReLU and no pooling (1x1 inputs only). ``pred`` = Linear(C, 2).
    """

    def __init__(self, channels: int, kernel_size: int = 3) -> None:
        super().__init__()
        c = channels
        if kernel_size == 3:
            self.feat = nn.Sequential(Bottleneck(c, c, reduction=8), nn.AdaptiveAvgPool2d(1))
        else:
            self.feat = nn.Sequential(
                PointwiseConv2d(c, 2 * c),
                nn.BatchNorm2d(2 * c),
                nn.ReLU(inplace=True),
                PointwiseConv2d(2 * c, c),
                nn.BatchNorm2d(c),
            )
        self.pred = nn.Linear(c, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> gamma (B,)."""
        return self.pred(self.feat(x).flatten(1)).softmax(dim=1)[:, 0]


# ---------------------------------------------------------------------------------------------------------------
# DiffKD block
# ---------------------------------------------------------------------------------------------------------------


class DiffKDOutput(NamedTuple):
    """Result of :meth:`DiffKD.forward` (the official classification framework's order).

    Attributes:
        refined: (B, C, H, W) denoised, projected student feature (carries the student's gradient).
        target: (B, C, H, W) what ``refined`` is matched to: the detached AE latent, or the detached teacher.
        ddim_loss: Scalar DDPM epsilon-prediction loss of the denoiser on ``target``.
        rec_loss: Scalar AE reconstruction loss, or ``None`` without AE.
        gamma: (B,) noise-adapter weights (extra, for logging; not in the official tuple).
    """

    refined: torch.Tensor
    target: torch.Tensor
    ddim_loss: torch.Tensor
    rec_loss: torch.Tensor | None
    gamma: torch.Tensor


class DiffKD(nn.Module):
    r"""The DiffKD block: denoise the student feature with a diffusion model trained on the teacher's.

    With S the student and T the teacher feature, ``forward(S, T)`` computes (spec section 2.6):

    1. s = trans(S) (1x1 conv to the latent width C).
    2. With AE: (z, T_hat) = ae(T), rec = mean((T - T_hat)^2), target = detach(z); else target = T, rec = None.
    3. eps_init ~ N(0, I); gamma = noise_adapter(s); x = gamma s + (1 - gamma) eps_init
       (:func:`adaptive_noise_mix`); x = DDIM over [400, 300, 200, 100, 0] (:func:`ddim_denoise`).
    4. refined = proj(x).
    5. eps ~ N(0, I) (target's shape); t ~ U{0, ..., N-1} per sample;
       ddim_loss = mean((model(sqrt(abar_t) target + sqrt(1 - abar_t) eps, t) - eps)^2).

    Random draws happen in this order only: ``randn`` (eps_init), ``randn`` (eps), ``randint`` (t), so a seeded
    run reproduces the official one. Each can be injected instead (``init_noise``, ``ddim_noise``,
    ``ddim_timesteps``); the remaining draws keep their order.

    Args:
        student_channels: C_s, channels of the student feature (for logits: the number of classes).
        teacher_channels: C_t, channels of the teacher feature.
        kernel_size: 3 for feature maps (bottleneck denoiser), 1 for (B, K, 1, 1) logits (1x1 MLP denoiser).
        inference_steps: n, DDIM steps run on the student feature (official 5).
        num_train_timesteps: N, length of the diffusion chain (official 1000; at most 1280, the size of the
            timestep embedding table).
        use_ae: Compress the teacher feature with a linear autoencoder and diffuse in its latent space.
        ae_channels: Latent width of the AE; ``None`` means ``teacher_channels // 2``. The official ImageNet
            recipes use 1024 for every teacher (an expansion for 512-channel ResNet-34 features).
        proj_norm: ``proj`` = 1x1 conv + BatchNorm, as in the classification framework whose recipes and
            checkpoints the spec follows (default); ``False`` gives the standalone DiffKD repository's bare 1x1 conv
            (commit 2393a4a), so weights of either official code load with ``strict=True``.
        fast: The faster execution (default), same mathematics, different float rounding (within a few float32
            epsilons of the reference; tested to 1e-5): 1x1 convolutions as matrix products on channels-last
            tensors (:class:`PointwiseConv2d`), each DDIM step as one multiply and one multiply-add with
            coefficients computed once (:func:`ddim_coefficients`), and one timestep-embedding lookup per forward
            for all six denoiser calls (one gradient of the table instead of six). ``False``: the reference
            execution, the official sequence of operations (``nn.Conv2d`` kernels, diffusers' ``step``). Can be
            switched later through the :attr:`fast` attribute; outputs are NCHW-contiguous either way.

    Raises:
        ValueError: On an unknown kernel size, non-positive widths or steps, ``2 * inference_steps >
            num_train_timesteps``, ``num_train_timesteps > 1280``, or a latent width below 8 with kernel 3.

    Fidelity:
        - State dict keys, shapes and order are the official ones: ``ae`` (if used), ``trans``, ``model``,
          ``noise_adapter``, ``proj`` (``proj`` = conv + BN as in the classification framework; the standalone
          repository's bare conv with ``proj_norm=False``). The scheduler holds no state-dict entries.
        - Train and eval run the same code; only BatchNorm differs. In training mode every BN of ``model`` sees 6
          batches per forward (5 denoising steps on the student chain, 1 on the noised target), and its running
          statistics mix both, as officially.
        - Gradients: the AE learns only from ``rec_loss`` (its latent is detached); ``ddim_loss`` trains only the
          denoiser; the KD loss on ``refined`` reaches ``proj``, all denoising steps of ``model``,
          ``noise_adapter`` (through gamma), ``trans`` and the student. The teacher input is detached here (the
          official code relies on a no-grad teacher; the values are the same).
        - The student start point is treated as x_400 although the adapter's linear mix is not on the DDPM noise
          path (see :func:`adaptive_noise_mix`, :func:`sampling_timesteps`); kept, not "fixed".
        - The official return order is ``(refined, target, ddim_loss, rec_loss)`` (classification framework);
          the standalone repository returns ``(refined, ddim_loss, target, rec_loss)``.

    Example:
        >>> block = DiffKD(256, 512, kernel_size=3, use_ae=True, ae_channels=256)
        >>> refined, target, ddim_loss, rec_loss, gamma = block(torch.randn(2, 256, 7, 7), torch.randn(2, 512, 7, 7))
    """

    def __init__(
        self,
        student_channels: int,
        teacher_channels: int,
        kernel_size: int = 3,
        inference_steps: int = 5,
        num_train_timesteps: int = 1000,
        use_ae: bool = False,
        ae_channels: int | None = None,
        proj_norm: bool = True,
        fast: bool = True,
    ) -> None:
        super().__init__()
        if kernel_size not in (1, 3):
            raise ValueError(f"kernel_size must be 3 (feature maps) or 1 (logits), got {kernel_size!r}")
        for name, value in (("student_channels", student_channels), ("teacher_channels", teacher_channels)):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value!r}")
        if inference_steps < 1:
            raise ValueError(f"inference_steps must be >= 1, got {inference_steps!r}")
        if not 2 * inference_steps <= num_train_timesteps <= TIME_EMBEDDING_SIZE:
            raise ValueError(
                f"num_train_timesteps must lie in [2 * inference_steps, {TIME_EMBEDDING_SIZE}] = "
                f"[{2 * inference_steps}, {TIME_EMBEDDING_SIZE}], got {num_train_timesteps!r}"
            )
        if use_ae and ae_channels is None:
            ae_channels = teacher_channels // 2
        latent = ae_channels if use_ae else teacher_channels
        if latent is None or latent < 1:
            raise ValueError(f"ae_channels must be >= 1, got {ae_channels!r}")
        if kernel_size == 3 and latent < 8:
            raise ValueError(
                f"kernel_size=3 needs a latent width >= 8 (bottlenecks of width C // 4 and C // 8), got {latent}"
            )
        self.student_channels = student_channels
        self.teacher_channels = teacher_channels
        self.latent_channels = latent
        self.kernel_size = kernel_size
        self.inference_steps = inference_steps
        self.num_train_timesteps = num_train_timesteps
        self.use_ae = bool(use_ae)

        # Registration order = official state_dict order.
        if self.use_ae:
            self.ae = AutoEncoder(teacher_channels, latent)
        self.trans = PointwiseConv2d(student_channels, latent)
        self.model = DiffusionModel(latent, kernel_size)
        self.noise_adapter = NoiseAdapter(latent, kernel_size)
        # two official layouts: conv + BN (classification framework, keys proj.0/proj.1) or a bare conv (the
        # standalone DiffKD repository, keys proj.weight/proj.bias)
        self.proj = (
            nn.Sequential(PointwiseConv2d(latent, latent), nn.BatchNorm2d(latent))
            if proj_norm
            else PointwiseConv2d(latent, latent)
        )
        # A plain object, not a module: no parameters, no state-dict entries.
        self.scheduler = make_ddim_scheduler(num_train_timesteps, inference_steps)
        self._ddim_steps = ddim_coefficients(self.scheduler, sampling_timesteps(self.scheduler))
        self.fast = fast

    @property
    def fast(self) -> bool:
        """Whether the fast execution runs (see the ``fast`` argument); settable."""
        return self._fast

    @fast.setter
    def fast(self, value: bool) -> None:
        self._fast = bool(value)
        for module in self.modules():
            if isinstance(module, PointwiseConv2d):
                module.gemm = self._fast

    def _check_inputs(self, student: torch.Tensor, teacher: torch.Tensor) -> None:
        if student.ndim != 4 or teacher.ndim != 4:
            raise ValueError(
                f"DiffKD expects 4-D (B, C, H, W) features, got {tuple(student.shape)} and {tuple(teacher.shape)}"
            )
        if student.shape[1] != self.student_channels or teacher.shape[1] != self.teacher_channels:
            raise ValueError(
                f"DiffKD was built for {self.student_channels} student / {self.teacher_channels} teacher channels, "
                f"got {student.shape[1]} and {teacher.shape[1]}"
            )
        if student.shape[0] != teacher.shape[0] or student.shape[2:] != teacher.shape[2:]:
            raise ValueError(
                "student and teacher features must share batch and spatial size, got "
                f"{tuple(student.shape)} and {tuple(teacher.shape)}"
            )
        if self.kernel_size == 1 and student.shape[2:] != (1, 1):
            raise ValueError(f"kernel_size=1 (logits) needs 1x1 spatial inputs, got {tuple(student.shape[2:])}")

    def forward(
        self,
        student: torch.Tensor,
        teacher: torch.Tensor,
        *,
        init_noise: torch.Tensor | None = None,
        ddim_noise: torch.Tensor | None = None,
        ddim_timesteps: torch.Tensor | None = None,
    ) -> DiffKDOutput:
        """Denoise the student feature and compute the diffusion and reconstruction losses.

        Args:
            student: (B, C_s, H, W) student feature.
            teacher: (B, C_t, H, W) teacher feature (detached here).
            init_noise: Optional (B, C, H, W) eps_init for the adaptive noise mix (default: drawn).
            ddim_noise: Optional (B, C, H, W) eps of the diffusion loss (default: drawn).
            ddim_timesteps: Optional (B,) integer timesteps of the diffusion loss in [0, N) (default: drawn).

        Returns:
            :class:`DiffKDOutput` ``(refined, target, ddim_loss, rec_loss, gamma)``.

        Raises:
            ValueError: On inputs of the wrong rank, channels, batch/spatial mismatch, non-1x1 inputs with
                kernel 1, or injected tensors of the wrong shape or range.
        """
        self._check_inputs(student, teacher)
        teacher = teacher.detach()
        if self._fast:
            # channels-last from here on: every 1x1 convolution is then a GEMM on a view (PointwiseConv2d)
            student, teacher = _channels_last(student), _channels_last(teacher)
        s = self.trans(student)
        if self.use_ae:
            latent, reconstruction = self.ae(teacher)
            rec_loss: torch.Tensor | None = F.mse_loss(reconstruction, teacher)
            target = latent.detach()
        else:
            rec_loss = None
            target = teacher

        if init_noise is None:
            init_noise = torch.randn(s.shape, device=s.device, dtype=s.dtype)
        if not self._fast:
            gamma = self.noise_adapter(s)
            x = adaptive_noise_mix(s, init_noise, gamma)
            x = ddim_denoise(self.model, self.scheduler, x, sampling_timesteps(self.scheduler))
            refined = self.proj(x)
            ddim_loss = self.ddim_loss(target, noise=ddim_noise, timesteps=ddim_timesteps)
            return DiffKDOutput(refined, target, ddim_loss, rec_loss, gamma)

        # Fast execution. The diffusion loss's draws are made now, still after the start noise and in the same
        # order (the chain itself draws nothing), so that one embedding lookup serves all six denoiser calls.
        ddim_noise, ddim_timesteps = self._ddim_draws(target, ddim_noise, ddim_timesteps)
        steps = self._ddim_steps
        rows = torch.tensor([step.t for step in steps], dtype=torch.long, device=s.device)
        emb = self.model.time_embedding(torch.cat([rows, ddim_timesteps]))
        gamma = self.noise_adapter(s)
        x = adaptive_noise_mix(s, _channels_last(init_noise), gamma)
        for i, step in enumerate(steps):
            eps = self.model(x, rows[i], emb=emb[i])
            x = torch.add(x * step.a, eps, alpha=step.b)  # the DDIM step in closed form (ddim_coefficients)
        refined = self.proj(x)
        ddim_loss = self._ddim_loss(target, _channels_last(ddim_noise), ddim_timesteps, emb[len(steps) :])
        return DiffKDOutput(refined.contiguous(), target.contiguous(), ddim_loss, rec_loss, gamma)

    def ddim_loss(
        self, target: torch.Tensor, noise: torch.Tensor | None = None, timesteps: torch.Tensor | None = None
    ) -> torch.Tensor:
        r"""DDPM epsilon-prediction loss of the denoiser on a (detached) target.

        .. math::
            L = \mathrm{mean}\big((\epsilon_\theta(\sqrt{\bar\alpha_t}\,x_0 + \sqrt{1-\bar\alpha_t}\,\epsilon, t)
                - \epsilon)^2\big),\quad \epsilon \sim N(0, I),\ t \sim U\{0, \dots, N-1\} \text{ per sample}

        Args:
            target: (B, C, H, W) clean sample x0.
            noise: Optional eps of the same shape (default: ``randn``, drawn before ``timesteps``).
            timesteps: Optional (B,) integer timesteps in [0, N) (default: ``randint``).

        Returns:
            Scalar loss.

        Raises:
            ValueError: If an injected tensor has the wrong shape or out-of-range timesteps.
        """
        noise, timesteps = self._ddim_draws(target, noise, timesteps)
        return self._ddim_loss(target, noise, timesteps, self.model.time_embedding(timesteps))

    def _ddim_draws(
        self, target: torch.Tensor, noise: torch.Tensor | None, timesteps: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The diffusion loss's noise and (long) timesteps: drawn (noise first) or the injected ones, checked."""
        batch = target.shape[0]
        if noise is None:
            # Official: float32 noise whatever the target's dtype.
            noise = torch.randn(target.shape, device=target.device)
        elif noise.shape != target.shape:
            raise ValueError(f"ddim_noise must have shape {tuple(target.shape)}, got {tuple(noise.shape)}")
        if timesteps is None:
            timesteps = torch.randint(0, self.num_train_timesteps, (batch,), device=target.device)
        elif timesteps.shape != (batch,) or timesteps.min() < 0 or timesteps.max() >= self.num_train_timesteps:
            raise ValueError(
                f"ddim_timesteps must be ({batch},) integers in [0, {self.num_train_timesteps}), "
                f"got shape {tuple(timesteps.shape)}"
            )
        return noise, timesteps.long()

    def _ddim_loss(
        self, target: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor, emb: torch.Tensor
    ) -> torch.Tensor:
        noisy = self.scheduler.add_noise(target, noise, timesteps)
        return F.mse_loss(self.model(noisy, timesteps, emb=emb), noise)

    def extra_repr(self) -> str:
        """Constructor values shown by ``repr``."""
        return (
            f"student_channels={self.student_channels}, teacher_channels={self.teacher_channels}, "
            f"latent_channels={self.latent_channels}, kernel_size={self.kernel_size}, "
            f"inference_steps={self.inference_steps}, num_train_timesteps={self.num_train_timesteps}, "
            f"use_ae={self.use_ae}, fast={self.fast}"
        )


# ---------------------------------------------------------------------------------------------------------------
# Loss wrapper
# ---------------------------------------------------------------------------------------------------------------


class DiffKDParts(NamedTuple):
    """The terms of one DiffKD distillation block (for logging).

    Attributes:
        kd: KD loss between the refined student and the target: MSE (feature) or tau^2 KL batchmean (logits).
        ddim: Diffusion (epsilon-prediction) loss of the denoiser.
        rec: AE reconstruction loss (feature kind with AE), else ``None``.
        total: ``kd + ddim (+ rec)``, each with weight 1 as officially.
    """

    kd: torch.Tensor
    ddim: torch.Tensor
    rec: torch.Tensor | None
    total: torch.Tensor


class DiffKDLoss(DiffKD):
    r"""DiffKD as a distillation loss term: ``loss(student, teacher) = kd + ddim (+ rec)``.

    It is a :class:`DiffKD` block (same submodules, official state-dict keys) whose ``forward`` returns the
    official per-block sum. Its parameters are meant to be optimised together with the student.

    .. math::
        L = L_\text{kd} + L_\text{ddim} + L_\text{rec},\qquad
        L_\text{kd} = \begin{cases}
            \mathrm{mean}\big((\hat S - z_T)^2\big) & \text{feature}\\
            \frac{\tau^2}{B}\sum_{b,k} p^T_{bk} \big(\log p^T_{bk} - \log \mathrm{softmax}(\hat S_b/\tau)_k\big)
            & \text{logits},\ p^T = \mathrm{softmax}(T/\tau)
        \end{cases}

    with S_hat the refined student (:meth:`DiffKD.forward`) and z_T the detached target.

    ``kind="feature"``: (B, C_s, H, W) features, 3x3 bottleneck denoiser, AE on by default (official
    ``ae_channels=1024``). ``kind="logits"``: (B, K) logits, viewed as (B, K, 1, 1); 1x1 MLP denoiser, no AE.

    Args:
        student_channels: Student channels (classes for logits).
        teacher_channels: Teacher channels (classes for logits).
        kind: ``"feature"`` or ``"logits"``.
        inference_steps: DDIM steps on the student (official 5).
        num_train_timesteps: Diffusion chain length (official 1000).
        use_ae: Use the autoencoder; ``None`` = official choice (feature: yes, logits: no).
        ae_channels: AE latent width (official 1024 for every ImageNet teacher); ignored without AE.
        tau: KL temperature for logits (official 1); must stay 1.0 for features.
        proj_norm: see :class:`DiffKD` (``False``: the standalone repository's bare ``proj`` conv).
        fast: see :class:`DiffKD` (``False``: the reference execution, the official sequence of operations).

    Raises:
        ValueError: On an unknown ``kind``, tau <= 0, tau != 1 for features, or AE on logits, plus the
            :class:`DiffKD` checks.

    Fidelity:
        - Official ``KDLoss(kd_method='diffkd')`` sums ``kd + ddim + rec`` per block with weight 1; the KD weight
          of the whole term is left to the task.
        - Logit KL: teacher probabilities detached, ``reduction='batchmean'`` (sum / B), times tau^2.

    Example:
        >>> feat_loss = DiffKDLoss(512, 512, kind="feature", ae_channels=1024)
        >>> loss = feat_loss(torch.randn(2, 512, 7, 7), torch.randn(2, 512, 7, 7))
        >>> logit_loss = DiffKDLoss(100, 100, kind="logits")
        >>> kd, ddim, rec, total = logit_loss.forward_parts(torch.randn(4, 100), torch.randn(4, 100))
    """

    def __init__(
        self,
        student_channels: int,
        teacher_channels: int,
        kind: Literal["feature", "logits"] = "feature",
        inference_steps: int = 5,
        num_train_timesteps: int = 1000,
        use_ae: bool | None = None,
        ae_channels: int | None = 1024,
        tau: float = 1.0,
        proj_norm: bool = True,
        fast: bool = True,
    ) -> None:
        if kind not in ("feature", "logits"):
            raise ValueError(f"kind must be 'feature' or 'logits', got {kind!r}")
        if not (math.isfinite(tau) and tau > 0):
            raise ValueError(f"tau must be a finite number > 0, got {tau!r}")
        if kind == "feature" and tau != 1.0:
            raise ValueError(f"tau applies to kind='logits' only; the feature loss is an MSE, got tau={tau!r}")
        if use_ae is None:
            use_ae = kind == "feature"
        if kind == "logits" and use_ae:
            raise ValueError("kind='logits' has no autoencoder (1x1 inputs); pass use_ae=False or None")
        super().__init__(
            student_channels,
            teacher_channels,
            kernel_size=3 if kind == "feature" else 1,
            inference_steps=inference_steps,
            num_train_timesteps=num_train_timesteps,
            use_ae=use_ae,
            ae_channels=ae_channels if use_ae else None,
            proj_norm=proj_norm,
            fast=fast,
        )
        self.kind = kind
        self.tau = float(tau)

    def forward_parts(
        self,
        student: torch.Tensor,
        teacher: torch.Tensor,
        *,
        init_noise: torch.Tensor | None = None,
        ddim_noise: torch.Tensor | None = None,
        ddim_timesteps: torch.Tensor | None = None,
    ) -> DiffKDParts:
        """Compute the loss and its terms.

        Args:
            student: (B, C_s, H, W) features, or (B, K) logits.
            teacher: Teacher tensor of the matching kind (detached here).
            init_noise: See :meth:`DiffKD.forward` (latent shape; (B, K, 1, 1) for logits).
            ddim_noise: See :meth:`DiffKD.forward`.
            ddim_timesteps: See :meth:`DiffKD.forward`.

        Returns:
            :class:`DiffKDParts` ``(kd, ddim, rec, total)``.

        Raises:
            ValueError: On inputs of the wrong rank or shape for this ``kind``.
        """
        if self.kind == "logits":
            if student.ndim != 2 or teacher.ndim != 2:
                raise ValueError(
                    f"kind='logits' expects (B, K) logits, got {tuple(student.shape)} and {tuple(teacher.shape)}"
                )
            student, teacher = student[..., None, None], teacher[..., None, None]
        out = super().forward(
            student, teacher, init_noise=init_noise, ddim_noise=ddim_noise, ddim_timesteps=ddim_timesteps
        )
        if self.kind == "feature":
            kd = F.mse_loss(out.refined, out.target)
        else:
            log_p_s = F.log_softmax(out.refined.flatten(1) / self.tau, dim=1)
            p_t = F.softmax(out.target.flatten(1) / self.tau, dim=1)
            kd = self.tau**2 * F.kl_div(log_p_s, p_t, reduction="batchmean")
        total = kd + out.ddim_loss
        if out.rec_loss is not None:
            total = total + out.rec_loss
        return DiffKDParts(kd, out.ddim_loss, out.rec_loss, total)

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        """Scalar loss ``kd + ddim (+ rec)``; see :meth:`forward_parts`."""
        return self.forward_parts(student, teacher).total

    def extra_repr(self) -> str:
        """Constructor values shown by ``repr``."""
        return f"kind={self.kind!r}, tau={self.tau}, " + super().extra_repr()
