"""Frame-by-frame (streaming) TaylorSENet: one 10-ms hop in, one 10-ms hop out, with cached states.

:meth:`TaylorSENet.stream` (or :class:`TaylorSEStream`) turns a causal TaylorSENet into a streaming enhancer whose
concatenated output equals the offline pipeline (variance scale, compressed STFT, network, decompressed iSTFT) of
the whole utterance, to float rounding. Nothing in the model is rewritten: the stream runs the model's own forward
on one frame at a time, on a copy of the module tree that shares the model's parameters and in which every layer
that looks back in time keeps a small cache:

* the causal zero paddings of the 2-D convolutions and the S-TCNs' dilated convolutions become buffers of the last
  ``k - 1`` (``(kd1 - 1) * dilation``) input frames;
* a causal transposed convolution over time (kernel k_t > 1) keeps its last ``k_t - 1`` inputs and returns only
  the new frames;
* a cumulative layer norm (``norm_type="cLN"``) keeps its running sums and count.

The front end keeps the input samples of the next analysis window (the first frame's reflect padding reads one
sample of the second hop) and a 320-sample overlap-add buffer for the inverse STFT. Every cache has a fixed
size: the memory does not grow with the input's length.

Causality: the paper configuration normalises with instance norm over the whole utterance (``norm_type="IN"``), so
each frame depends on later ones; such a model, or one with non-causal S-TCNs (``is_causal=False``), cannot stream
and :class:`TaylorSEStream` raises an error naming the layers. Train with ``norm_type="cLN"`` (the official
cumulative layer norm) or ``"BN"`` for a streamable model. The official variance normalisation scale
``c = sqrt(L / sum x^2)`` needs the whole utterance too; a stream takes ``scale`` as a fixed number (the offline
pipeline with the same scale is what it reproduces).

Latency: the algorithmic latency is the analysis window (320 samples, 20 ms) plus the model's look-ahead (none):
each :meth:`TaylorSEStream.step` returns the hop that ended one hop before the one it was given.
"""

from __future__ import annotations

import copy
import math
import time
from typing import Any

import torch
import torch.nn as nn
from torch import Tensor

from tenfold.speech.stft import STFTConfig, compress
from tenfold.speech.taylorsenet import CausalConvTranspose2d, CumulativeLayerNorm, TaylorSENet

__all__ = ["StreamStats", "TaylorSEStream", "non_causal_layers"]


# --------------------------------------------------------------------------------------------------------------
# Cached layers (they replace their offline counterparts in the stream's copy of the module tree)
# --------------------------------------------------------------------------------------------------------------


class _CachedLayer(nn.Module):
    """A layer with a fixed-size cache of past frames; ``reset`` empties it."""

    def reset(self) -> None:
        """Forget the past (the next frame is frame 0 of a new utterance)."""
        raise NotImplementedError

    def cache(self) -> list[Tensor]:
        """The cached tensors (their sizes do not depend on how many frames were processed)."""
        raise NotImplementedError


class _PastFrames(_CachedLayer):
    """Causal zero padding of ``n`` past frames (time axis 2) as a cache: prepends the last ``n`` input frames."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n = n
        self.past: Tensor | None = None

    def reset(self) -> None:  # noqa: D102
        self.past = None

    def cache(self) -> list[Tensor]:  # noqa: D102
        return [] if self.past is None else [self.past]

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        if self.past is None:
            shape = list(x.shape)
            shape[2] = self.n
            self.past = x.new_zeros(shape)
        y = torch.cat((self.past, x), dim=2)
        self.past = y[:, :, -self.n :]
        return y


class _CachedConvTranspose(_CachedLayer):
    """A :class:`CausalConvTranspose2d` with time kernel k > 1 on new frames: caches the last k-1 inputs.

    Output frame t is ``sum_j W_j x_{t-j}`` (j < k); on the cached and the T new inputs the layer's last T output
    frames are exactly those of the new frames.
    """

    def __init__(self, conv: CausalConvTranspose2d) -> None:
        super().__init__()
        self.conv = conv
        self.k = conv.kernel_size[0]
        self.past: Tensor | None = None

    def reset(self) -> None:  # noqa: D102
        self.past = None

    def cache(self) -> list[Tensor]:  # noqa: D102
        return [] if self.past is None else [self.past]

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        if self.past is None:
            self.past = x.new_zeros((x.shape[0], x.shape[1], self.k - 1, x.shape[3]))
        y = torch.cat((self.past, x), dim=2)
        self.past = y[:, :, -(self.k - 1) :]
        return self.conv(y)[:, :, self.k - 1 :]


class _CachedCumulativeNorm(_CachedLayer):
    """:class:`CumulativeLayerNorm` continued across calls: keeps the running sums and the entry count."""

    def __init__(self, norm: CumulativeLayerNorm) -> None:
        super().__init__()
        self.norm = norm
        self.sums: Tensor | None = None  # (2, B, 1, 1[, 1]): running sum of the entries and of their squares
        self.count = 0

    def reset(self) -> None:  # noqa: D102
        self.sums, self.count = None, 0

    def cache(self) -> list[Tensor]:  # noqa: D102
        return [] if self.sums is None else [self.sums]

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        step_sum, step_pow, per_frame = self.norm.frame_sums(x)
        cum_sum, cum_pow = step_sum.cumsum(2), step_pow.cumsum(2)
        if self.sums is not None:
            cum_sum, cum_pow = cum_sum + self.sums[0], cum_pow + self.sums[1]
        t = x.shape[2]
        count = (torch.arange(1, t + 1, device=x.device, dtype=x.dtype) + self.count) * per_frame
        self.sums = torch.stack((cum_sum[:, :, -1:], cum_pow[:, :, -1:]))
        self.count += t
        return self.norm.normalise(x, cum_sum, cum_pow, count)


# --------------------------------------------------------------------------------------------------------------
# Causality check and conversion
# --------------------------------------------------------------------------------------------------------------


def non_causal_layers(model: nn.Module) -> dict[str, list[str]]:
    """The layers of ``model`` whose output at frame t depends on later frames, grouped by the reason.

    Returns:
        {reason: [module paths]}; empty for a causal model. Reasons: instance norm over the utterance
        (``norm_type='IN'``), S-TCN padding of future frames (``is_causal=False``), zero padding or a transposed
        convolution that reaches future frames. Batch norm streams: the stream runs in eval mode (running
        statistics, frame by frame).
    """
    found: dict[str, list[str]] = {}

    def add(reason: str, name: str) -> None:
        found.setdefault(reason, []).append(name)

    for name, m in model.named_modules():
        if isinstance(m, nn.modules.instancenorm._InstanceNorm):
            add("instance norm over the whole utterance (norm_type='IN')", name)
        elif isinstance(m, nn.ConstantPad1d) and m.padding[1] > 0:
            add("S-TCN padding of future frames (is_causal=False)", name)
        elif isinstance(m, nn.ZeroPad2d) and m.padding[3] > 0:
            add("zero padding of future frames", name)
        elif isinstance(m, nn.Conv1d | nn.Conv2d | nn.ConvTranspose2d) and m.padding[0] != 0:
            add("convolution with built-in time padding", name)
        elif isinstance(m, nn.ConvTranspose2d) and not isinstance(m, CausalConvTranspose2d) and m.kernel_size[0] > 1:
            add("transposed convolution over time without the causal chomp", name)
    return found


def _convert(module: nn.Module) -> None:
    """Replace, in place, every layer of ``module``'s tree that looks back in time by its cached version."""
    for name, child in list(module.named_children()):
        if isinstance(child, nn.ZeroPad2d):
            left, right, top, _ = child.padding
            if left or right:  # a frequency padding stays as it is; the time part becomes a cache
                raise ValueError(f"cannot stream a ZeroPad2d that pads frequency too: {child}")
            setattr(module, name, _PastFrames(top))
        elif isinstance(child, nn.ConstantPad1d):
            setattr(module, name, _PastFrames(child.padding[0]))
        elif isinstance(child, CausalConvTranspose2d) and child.kernel_size[0] > 1:
            setattr(module, name, _CachedConvTranspose(child))
        elif isinstance(child, CumulativeLayerNorm):
            setattr(module, name, _CachedCumulativeNorm(child))
        else:
            _convert(child)


def _streaming_copy(model: TaylorSENet) -> TaylorSENet:
    """A copy of ``model``'s module tree with cached layers, sharing its parameters and buffers (no weight copy)."""
    memo: dict[int, Any] = {id(t): t for t in (*model.parameters(), *model.buffers())}
    net = copy.deepcopy(model, memo)
    _convert(net)
    return net.eval()


# --------------------------------------------------------------------------------------------------------------
# The stream
# --------------------------------------------------------------------------------------------------------------


class StreamStats:
    """Per-frame compute time of a stream (running totals: constant memory).

    Attributes:
        frames: network frames processed.
        total_s: seconds spent in :meth:`TaylorSEStream.step` / :meth:`TaylorSEStream.flush` (front end included).
        max_s: the slowest call.
    """

    def __init__(self) -> None:
        self.frames = 0
        self.total_s = 0.0
        self.max_s = 0.0

    @property
    def mean_ms(self) -> float:
        """Mean compute time per frame (ms); real time needs less than the hop (10 ms)."""
        return 1000.0 * self.total_s / max(self.frames, 1)

    def as_dict(self) -> dict[str, float]:
        """``frames``, ``mean_ms`` and ``max_ms``."""
        return {"frames": self.frames, "mean_ms": self.mean_ms, "max_ms": 1000.0 * self.max_s}


class TaylorSEStream:
    """Streaming enhancer over a causal TaylorSENet: :meth:`step` takes one hop (160 samples) and returns one.

    The output of call k is the enhanced hop k-1 (call 0 returns silence), so the stream's output is the offline
    enhancement delayed by one hop; :meth:`flush` ends the utterance (the last frame's reflect padding needs the
    end) and returns the rest. ``stream.step`` outputs ``[1:]`` + ``flush()`` equal, to float rounding,
    ``istft_decompress(model(stft_compress(scale * wave)), L) / scale``.

    Example::

        stream = model.stream(scale=20.0)
        for hop in hops:                # (160,) or (B, 160) tensors
            play(stream.step(hop))
        play(stream.flush())

    Args:
        model: a causal TaylorSENet (e.g. ``norm_type="cLN"``, ``is_causal=True``); its parameters are shared.
        scale: the variance normalisation scale ``c`` (the official ``sqrt(L / sum x^2)`` needs the whole
            utterance; a stream uses a fixed value), a number or one per batch item (B,). The input is multiplied
            by it, the output divided.
        power: the compression exponent the model was trained with (0.5 officially).

    Raises:
        ValueError: the model has non-causal layers (named, with the reason), or ``scale``/``power`` are not > 0.
    """

    def __init__(self, model: TaylorSENet, *, scale: float | Tensor = 1.0, power: float = 0.5) -> None:
        bad = non_causal_layers(model)
        if bad:
            reasons = "; ".join(f"{why}: {len(paths)} layer(s), e.g. {paths[0]}" for why, paths in bad.items())
            raise ValueError(
                f"this TaylorSENet cannot stream, it has non-causal parts: {reasons}. A streamable model needs "
                "norm_type='cLN' (or 'BN') and is_causal=True"
            )
        scales = torch.as_tensor(scale, dtype=torch.float64).flatten()
        if scales.numel() == 0 or not bool((scales > 0).all()):
            raise ValueError(f"scale must be > 0, got {scale}")
        self.cfg = STFTConfig(power=power)
        if self.cfg.win_length != 2 * self.cfg.hop_length or self.cfg.n_fft != model.fft_num:
            raise ValueError(f"the stream needs win_length = 2 hop_length = n_fft = fft_num, got {self.cfg}")
        self.model = model
        self.scale = scales.view(-1, 1).to(next(model.parameters()).device)  # (1 or B, 1), float64
        self.net = _streaming_copy(model)
        self._layers = [m for m in self.net.modules() if isinstance(m, _CachedLayer)]
        param = next(model.parameters())
        self.dtype, self.device = param.dtype, param.device
        hop, win = self.cfg.hop_length, self.cfg.win_length
        self.window = torch.hann_window(win, dtype=self.dtype, device=self.device)
        sq = self.window**2
        self._envelope = sq[:hop] + sq[hop:]  # two frames overlap every output sample but the last partial hop
        self.stats = StreamStats()
        self.reset()

    # -- properties ---------------------------------------------------------------------------------------------

    @property
    def hop_length(self) -> int:
        """Samples per :meth:`step` (160 = 10 ms at 16 kHz)."""
        return self.cfg.hop_length

    @property
    def lookahead_frames(self) -> int:
        """Future frames the network reads (0: it is causal)."""
        return 0

    @property
    def algorithmic_latency_ms(self) -> float:
        """Window (20 ms) + look-ahead (0 frames).

        The delay from a sample's arrival to its enhanced output, compute time excluded.
        """
        samples = self.cfg.win_length + self.lookahead_frames * self.cfg.hop_length
        return 1000.0 * samples / self.cfg.sample_rate

    def reset(self) -> None:
        """Start a new utterance: empty every cache and buffer (the timing statistics are kept)."""
        for layer in self._layers:
            layer.reset()
        self._tail: Tensor | None = None  # the last win_length input samples (scaled), absolute start below
        self._tail_start = 0
        self._received = 0
        self._next_frame = 0
        self._ola: Tensor | None = None  # overlap-add of the frames so far, padded samples [hop t, hop t + win)
        self._mono: bool | None = None
        self._ended = False

    def cache_tensors(self) -> list[Tensor]:
        """Every tensor the stream keeps between calls (network caches, input tail, overlap-add buffer)."""
        extra = [t for t in (self._tail, self._ola) if t is not None]
        return [t for layer in self._layers for t in layer.cache()] + extra

    def cache_numel(self) -> int:
        """Total number of cached elements: constant once the caches are filled (after the first two calls)."""
        return sum(t.numel() for t in self.cache_tensors())

    # -- processing ---------------------------------------------------------------------------------------------

    def _as_batch(self, samples: Tensor) -> Tensor:
        if samples.dim() not in (1, 2):
            raise ValueError(f"samples must be (n,) or (B, n), got shape {tuple(samples.shape)}")
        mono = samples.dim() == 1
        if self._mono is None:
            self._mono = mono
        elif mono != self._mono:
            raise ValueError("the stream started with " + ("mono (n,)" if self._mono else "batched (B, n)") +
                             f" samples and got shape {tuple(samples.shape)}")  # fmt: skip
        x = samples.reshape(-1, samples.shape[-1]).to(self.device)
        if self._tail is not None and x.shape[0] != self._tail.shape[0]:
            raise ValueError(f"the stream has batch size {self._tail.shape[0]}, got {x.shape[0]}")
        if self.scale.shape[0] not in (1, x.shape[0]):
            raise ValueError(f"{self.scale.shape[0]} scales for a batch of {x.shape[0]}")
        return (x.double() * self.scale).to(self.dtype)  # in float64 and cast back, as apply_scale

    def _push(self, x: Tensor) -> None:
        self._tail = x if self._tail is None else torch.cat((self._tail, x), dim=1)
        self._received += x.shape[1]

    def _trim(self) -> None:
        """Drop the input samples no later frame reads.

        Frame t starts at sample hop t - win/2; the last frame's reflect padding reads one sample before that.
        """
        needed = max(0, self.cfg.hop_length * self._next_frame - self.cfg.win_length // 2 - 1)
        drop = needed - self._tail_start
        if drop > 0:
            self._tail, self._tail_start = self._tail[:, drop:], needed

    def _frame(self, t: int, length: int | None) -> Tensor:
        """Samples of analysis frame t (absolute ``[hop t - win/2, hop t + win/2)``, reflected at the ends)."""
        hop, half = self.cfg.hop_length, self.cfg.win_length // 2
        idx = torch.arange(hop * t - half, hop * t + half, device=self.device)
        idx = idx.abs()  # reflect at the start: sample -i is sample i
        if length is not None:
            idx = torch.where(idx >= length, 2 * (length - 1) - idx, idx)
        return self._tail[:, idx - self._tail_start]

    @torch.no_grad()
    def _run_frames(self, frames: list[Tensor]) -> Tensor:
        """Network over analysis frames (B, win) in order; returns their windowed inverse FFTs (B, n, win)."""
        x = torch.stack(frames, dim=1) * self.window  # (B, n, win)
        spec = torch.view_as_real(torch.fft.rfft(x, n=self.cfg.n_fft))  # (B, n, F, 2)
        spec = spec.permute(0, 3, 1, 2)  # (B, 2, n, F)
        if self.cfg.power != 1.0:
            spec = compress(spec, self.cfg.power)
        out = self.net(spec.contiguous())
        if self.cfg.power != 1.0:
            out = compress(out, 1.0 / self.cfg.power)
        frames_out = torch.fft.irfft(torch.view_as_complex(out.permute(0, 2, 3, 1).contiguous()), n=self.cfg.n_fft)
        return frames_out[..., : self.cfg.win_length] * self.window

    def _overlap_add(self, frames: Tensor) -> Tensor:
        """Add frames (B, n, win) to the overlap-add buffer; return the output samples they complete."""
        hop = self.cfg.hop_length
        done = []
        for i in range(frames.shape[1]):
            t = self._next_frame
            self._next_frame += 1
            if self._ola is None:
                self._ola = frames.new_zeros((frames.shape[0], self.cfg.win_length))
            self._ola = self._ola + frames[:, i]
            if t > 0:  # the first half of frame 0 is the centre padding, which the inverse STFT trims
                done.append(self._ola[:, :hop] / self._envelope)
            self._ola = torch.cat((self._ola[:, hop:], self._ola.new_zeros((self._ola.shape[0], hop))), dim=1)
        return torch.cat(done, dim=1) if done else self._ola.new_zeros((self._ola.shape[0], 0))

    def _finish(self, y: Tensor) -> Tensor:
        y = (y.double() / self.scale).to(self.dtype)
        return y[0] if self._mono else y

    def step(self, samples: Tensor) -> Tensor:
        """Enhance one hop: ``samples`` (hop,) or (B, hop) in, the previous enhanced hop out (silence at first).

        A block of k hops (k * hop samples) is also accepted and returns k hops, the same samples as k calls: the
        network then runs on k frames at once (less overhead per frame, k - 1 hops more latency).

        Raises:
            ValueError: not a whole number of hops, a batch size or layout other than the first call's, or a call
                after :meth:`flush` without :meth:`reset`.
        """
        if self._ended:
            raise ValueError("the stream was flushed; call reset() to start a new utterance")
        if samples.shape[-1] == 0 or samples.shape[-1] % self.hop_length:
            raise ValueError(
                f"step takes one hop of {self.hop_length} samples (or a block of whole hops), got shape "
                f"{tuple(samples.shape)}"
            )
        start = time.perf_counter()
        x = self._as_batch(samples)
        first = self._received == 0
        self._push(x)
        hop = self.cfg.hop_length
        # frame t needs samples up to hop t + win/2 - 1; frame 0 needs sample win/2 for its reflect padding
        ready = [t for t in range(self._next_frame, self._received // hop) if t > 0 or self._received > hop]
        y = self._overlap_add(self._run_frames([self._frame(t, None) for t in ready])) if ready else x[:, :0]
        if first:  # the one-hop delay: nothing of the first hop is final before the second arrives
            y = torch.cat((x.new_zeros((x.shape[0], hop)), y), dim=1)
        self._trim()
        self._time(start, len(ready))
        return self._finish(y)

    def flush(self, samples: Tensor | None = None) -> Tensor:
        """End the utterance with its last (partial, < hop) samples; return every output sample not returned yet.

        The output then totals the input's length (after dropping the first call's hop of silence).

        Raises:
            ValueError: the utterance has at most ``n_fft // 2`` samples (too short for the centred STFT, as offline),
                or ``samples`` is a hop or longer.
        """
        if self._ended:
            raise ValueError("the stream was flushed already; call reset() to start a new utterance")
        start = time.perf_counter()
        if samples is not None and samples.shape[-1]:
            if samples.shape[-1] >= self.hop_length:
                raise ValueError(f"flush takes fewer than {self.hop_length} samples, got {samples.shape[-1]}")
            self._push(self._as_batch(samples))
        length = self._received
        if length <= self.cfg.n_fft // 2:
            raise ValueError(
                f"an utterance of {length} samples is too short for the centred STFT (reflect padding of "
                f"{self.cfg.n_fft // 2}); need at least {self.cfg.n_fft // 2 + 1} samples"
            )
        self._ended = True
        hop = self.cfg.hop_length
        last = length // hop  # offline frames 0 .. L // hop
        todo = list(range(self._next_frame, last + 1))
        y = self._overlap_add(self._run_frames([self._frame(t, length) for t in todo]))
        rest = length - (last * hop)  # samples after the last full hop: covered by the last frame alone
        if rest:
            sq = self.window**2
            y = torch.cat((y, self._ola[:, :rest] / sq[hop : hop + rest]), dim=1)
        self._time(start, len(todo))
        return self._finish(y)

    def _time(self, start: float, frames: int) -> None:
        spent = time.perf_counter() - start
        self.stats.frames += frames
        self.stats.total_s += spent
        self.stats.max_s = max(self.stats.max_s, spent)

    def enhance(self, wave: Tensor, block: int = 1) -> Tensor:
        """Stream a whole waveform (L,) or (B, L) (from a reset) and return its enhancement, aligned.

        Args:
            wave: the input.
            block: hops per :meth:`step` call (the last call takes what is left of the whole hops).

        Raises:
            ValueError: see :meth:`step` and :meth:`flush`.
        """
        self.reset()
        hop = self.hop_length * block
        full = wave.shape[-1] // self.hop_length * self.hop_length
        outs = [self.step(wave[..., i : min(i + hop, full)]) for i in range(0, full, hop)]
        outs.append(self.flush(wave[..., full:]))
        return torch.cat(outs, dim=-1)[..., self.hop_length :]


def frame_time_ms(stream: TaylorSEStream, frames: int = 200, block: int = 1) -> dict[str, float]:
    """Median and 90th-percentile compute time per frame (ms) of :meth:`TaylorSEStream.step` on noise.

    ``frames // block`` calls of ``block`` hops each (the time per call divided by ``block``), after two warm-up
    calls; the stream is reset before and after.
    """
    hop = stream.hop_length
    g = torch.Generator().manual_seed(0)
    stream.reset()
    times = []
    for i in range(max(frames // block, 1) + 2):
        x = torch.randn(block * hop, generator=g) * 0.1
        start = time.perf_counter()
        stream.step(x)
        if i >= 2:
            times.append((time.perf_counter() - start) / block)
    stream.reset()
    times.sort()
    return {"median_ms": 1000 * times[len(times) // 2], "p90_ms": 1000 * times[math.floor(0.9 * (len(times) - 1))]}
