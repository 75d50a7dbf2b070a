"""``tenfold bench taylorsenet``: parameters, multiply-adds per second of audio (two conventions), CPU real-time factor.

Multiply-adds are counted on one second of 16-kHz input (101 frames x 161 bins):

* ``true GMAC/s``: what the hardware does, ``torch.utils.flop_counter`` FLOPs / 2 (a transposed convolution costs
  one multiply-add per *input* position, kernel tap and output channel);
* ``paper-style GMAC/s``: ptflops' older convention that the paper's "6.2 G" follows, where a transposed convolution
  is counted per *output* position (``output elements x C_in x kernel``), plus one operation per element of the
  PReLU, instance-norm and sigmoid outputs.

The real-time factor is end-to-end (compressed STFT, network, inverse STFT) processing time / audio duration. The
backend table times the paper model's pipeline on one thread in alternating rounds: eager, eager with PyTorch's
transposed-convolution kernel (the implementation before :class:`~tenfold.speech.taylorsenet.CausalConvTranspose2d`),
``torch.compile`` and ONNX Runtime (:mod:`tenfold.speech.backends`). The streaming table gives the compute time of
one :meth:`~tenfold.speech.stream.TaylorSEStream.step` (one 10-ms hop) of causal (cLN) models and their latency.
"""

from __future__ import annotations

import math
import os
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
import torch.nn as nn

from tenfold.bench import import_official, register_bench

__all__ = [
    "backend_rtf",
    "import_official_taylorsenet",
    "official_rtf",
    "paper_style_macs",
    "real_time_factor",
    "stream_frame_times",
    "usable_cpus",
]

TAYLORSENET_REPO = "Andong-Li-speech/TaylorSENet"


def paper_style_macs(model: nn.Module, spec: torch.Tensor) -> dict[str, int]:
    """Multiply-adds of ``model(spec)`` counted the ptflops way (transposed convolutions per output position).

    Returns:
        ``conv`` (Conv1d/2d), ``conv_transpose`` (output-based), ``elementwise`` (PReLU, norms, sigmoid outputs)
        and ``total``.
    """
    counts = {"conv": 0, "conv_transpose": 0, "elementwise": 0}

    def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        if isinstance(module, nn.Conv1d | nn.Conv2d):
            per_out = module.in_channels // module.groups * math.prod(module.kernel_size)
            counts["conv"] += output.numel() * per_out
        elif isinstance(module, nn.ConvTranspose2d):
            per_out = module.in_channels // module.groups * math.prod(module.kernel_size)
            # the official layer outputs k_t - 1 more frames, which its chomp drops; ptflops counted them
            frames = output.shape[2]
            counts["conv_transpose"] += output.numel() // frames * (frames + module.kernel_size[0] - 1) * per_out
        elif isinstance(module, nn.PReLU | nn.Sigmoid | nn.modules.instancenorm._InstanceNorm | nn.BatchNorm2d):
            counts["elementwise"] += output.numel()

    handles = [m.register_forward_hook(hook) for m in model.modules() if not list(m.children())]
    try:
        with torch.no_grad():
            model.eval()(spec)
    finally:
        for h in handles:
            h.remove()
    counts["total"] = sum(counts.values())
    return counts


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask: a container or ``taskset`` may allow fewer than exist)."""
    import os

    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # no affinity API (macOS, Windows)
        return os.cpu_count() or 1


def real_time_factor(model: nn.Module, seconds: float, threads: int, runs: int = 3) -> float:
    """Median end-to-end processing time of ``seconds`` of audio / ``seconds``, on ``threads`` CPU threads."""
    from tenfold.speech.stft import istft_decompress, stft_compress

    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        wave = torch.randn(1, round(seconds * 16000), generator=torch.Generator().manual_seed(0)) * 0.1
        model.eval()
        times = []
        with torch.no_grad():
            for i in range(runs + 1):
                start = time.perf_counter()
                istft_decompress(model(stft_compress(wave)), wave.shape[1])
                if i:  # the first pass warms up the kernels
                    times.append(time.perf_counter() - start)
        return sorted(times)[len(times) // 2] / seconds
    finally:
        torch.set_num_threads(old)


def _pipeline(net: Any, wave: torch.Tensor) -> Any:
    """One end-to-end pass (compressed STFT, network, inverse STFT) of ``wave`` (1, L) through ``net``."""
    from tenfold.speech.stft import istft_decompress, stft_compress

    def run() -> None:
        with torch.no_grad():
            istft_decompress(net(stft_compress(wave)), wave.shape[1])

    return run


class _PyTorchTransposedConv:
    """Context: the transposed convolutions run PyTorch's own kernel plus the official chomp.

    The baseline of :class:`~tenfold.speech.taylorsenet.CausalConvTranspose2d`'s rewrite.
    """

    def __enter__(self) -> None:
        from tenfold.speech.taylorsenet import CausalConvTranspose2d

        def forward(conv: CausalConvTranspose2d, x: torch.Tensor) -> torch.Tensor:
            y = nn.functional.conv_transpose2d(x, conv.weight, conv.bias, stride=(1, 2))
            return y[:, :, : y.shape[2] - (conv.kernel_size[0] - 1)]

        self._saved = CausalConvTranspose2d.forward
        CausalConvTranspose2d.forward = forward  # type: ignore[method-assign]

    def __exit__(self, *exc: object) -> None:
        from tenfold.speech.taylorsenet import CausalConvTranspose2d

        CausalConvTranspose2d.forward = self._saved  # type: ignore[method-assign]


def backend_rtf(
    seconds: float = 10.0, rounds: int = 5, backends: tuple[str, ...] = ("compile", "onnx")
) -> list[dict[str, Any]]:
    """Real-time factor of the paper model's whole pipeline on 1 thread, per backend.

    Eager, eager with PyTorch's transposed convolution kernel (before the rewrite), and ``backends``, timed in
    alternating rounds (median of ``rounds``). Each row also gives the ratio to eager and the output's largest
    deviation from eager, relative to its scale.
    """
    from contextlib import nullcontext

    from tenfold.speech.backends import inference_network
    from tenfold.speech.stft import stft_compress
    from tenfold.speech.taylorsenet import TaylorSENet

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        model = TaylorSENet().eval()
        wave = torch.randn(1, round(seconds * 16000), generator=torch.Generator().manual_seed(0)) * 0.1
        spec = stft_compress(wave)
        nets: dict[str, tuple[Any, Any]] = {"eager": (model, nullcontext), "eager, PyTorch ConvTranspose2d kernel":
                                            (model, _PyTorchTransposedConv)}  # fmt: skip
        setup = {}
        for name in backends:
            start = time.perf_counter()
            nets[name] = (inference_network(model, name, spec if name == "compile" else None), nullcontext)
            setup[name] = time.perf_counter() - start
        with torch.no_grad():
            reference = model(spec)
            deviation = {}
            for name, (net, ctx) in nets.items():
                with ctx():
                    deviation[name] = float((net(spec) - reference).abs().max() / reference.abs().max())
        times: dict[str, list[float]] = {name: [] for name in nets}
        for _ in range(rounds):
            for name, (net, ctx) in nets.items():
                with ctx():
                    run = _pipeline(net, wave)
                    start = time.perf_counter()
                    run()
                    times[name].append(time.perf_counter() - start)
    finally:
        torch.set_num_threads(old)
    rtf = {name: sorted(t)[len(t) // 2] / seconds for name, t in times.items()}
    return [
        {
            "backend": name,
            "RTF 1 thread": rtf[name],
            "speed vs eager": rtf["eager"] / rtf[name],
            "max deviation from eager": deviation[name],
            "setup s (export/compile)": setup.get(name, 0.0),
        }
        for name in nets
    ]


def stream_frame_times(frames: int = 200) -> list[dict[str, Any]]:
    """Per-frame compute time of :class:`~tenfold.speech.stream.TaylorSEStream` on 1 thread (causal, cLN models)."""
    from tenfold.speech.stream import frame_time_ms
    from tenfold.speech.taylorsenet import PAPER_CONFIG, SMALL_CONFIG, TaylorSENet

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    rows = []
    try:
        for name, cfg in (("paper, cLN (Q=3)", PAPER_CONFIG), ("small, cLN (Q=3)", SMALL_CONFIG)):
            torch.manual_seed(0)
            stream = TaylorSENet(**{**cfg, "norm_type": "cLN"}).eval().stream()
            for block in (1, 8):
                timing = frame_time_ms(stream, frames, block)
                for _ in range(2):
                    stream.step(torch.zeros(stream.hop_length))
                rows.append(
                    {
                        "model": name,
                        "hops per call": block,
                        "ms per 10-ms frame (median)": timing["median_ms"],
                        "ms per frame (p90)": timing["p90_ms"],
                        "real-time factor": timing["median_ms"] / 10.0,
                        "algorithmic latency ms": stream.algorithmic_latency_ms + 10.0 * (block - 1),
                        "cached elements": stream.cache_numel(),
                    }
                )
    finally:
        torch.set_num_threads(old)
    return rows


def import_official_taylorsenet(path: str | os.PathLike) -> ModuleType:
    """Import ``nets/TaylorSENet.py`` from a checkout of Andong-Li-speech/TaylorSENet.

    The file imports ``utils.utils`` from the repository's root, so modules of those names imported earlier (from
    another folder) are dropped from ``sys.modules`` first.

    Raises:
        OfficialCodeMissing: ``path`` is missing, is not the repository, or the import fails.
    """
    for name in [m for m in sys.modules if m.split(".")[0] in ("nets", "utils")]:
        del sys.modules[name]
    return import_official(
        path, "nets.TaylorSENet", repo=TAYLORSENET_REPO, expect=["nets/TaylorSENet.py", "utils/utils.py"]
    )


def official_rtf(
    official: str | os.PathLike,
    seconds: float = 10.0,
    rounds: int = 5,
    threads: tuple[int, ...] | None = None,
) -> list[dict[str, Any]]:
    """Real-time factor of the whole offline pipeline: the official network vs this one, same weights.

    The official ``TaylorSENet`` is built with the paper configuration and given this implementation's (seeded,
    random) weights with ``strict=True``; both run the same front end (:func:`~tenfold.speech.stft.stft_compress`
    / :func:`~tenfold.speech.stft.istft_decompress`: the official solver's old-API ``torch.stft`` calls no longer
    run), so the ratio is the networks'. Timed in alternating rounds (median of ``rounds``) at each thread count
    (default 1 and all usable); each timed pass follows an untimed one. A third row runs this network inside
    :func:`~tenfold.speech.enhance.keep_freed_memory` (the allocator keeps freed blocks: same outputs, no page
    faults on the large activations), entered and left around its passes of each round. Each row also gives the
    largest output difference from the official network, relative to its scale, on the timed input.

    Raises:
        OfficialCodeMissing: the official code cannot be imported from ``official``.
    """
    from contextlib import nullcontext

    from tenfold.speech.enhance import keep_freed_memory
    from tenfold.speech.stft import stft_compress
    from tenfold.speech.taylorsenet import PAPER_CONFIG, TaylorSENet

    module = import_official_taylorsenet(official)
    torch.manual_seed(0)
    ours = TaylorSENet().eval()
    off_cfg = {k: list(v) if isinstance(v, tuple) else v for k, v in PAPER_CONFIG.items()}
    off = module.TaylorSENet(**off_cfg).eval()
    off.load_state_dict(ours.state_dict(), strict=True)
    wave = torch.randn(1, round(seconds * 16000), generator=torch.Generator().manual_seed(0)) * 0.1
    kept = "tenfold eager, freed memory kept (keep_freed_memory)"
    nets = {"official": off, "tenfold eager": ours, kept: ours}
    contexts = {name: keep_freed_memory if name == kept else nullcontext for name in nets}
    with torch.no_grad():
        spec = stft_compress(wave)
        reference = off(spec)
        deviation = {name: float((net(spec) - reference).abs().max() / reference.abs().max())
                     for name, net in nets.items()}  # fmt: skip
    rows = []
    old = torch.get_num_threads()
    try:
        for n in threads or tuple(sorted({1, usable_cpus()})):
            torch.set_num_threads(n)
            runs = {name: _pipeline(net, wave) for name, net in nets.items()}
            times: dict[str, list[float]] = {name: [] for name in nets}
            for r in range(rounds + 1):  # round 0 warms up
                for name, run in runs.items():
                    with contexts[name]():
                        run()  # untimed: inside the context, the heap grows to the pass's needs once
                        start = time.perf_counter()
                        run()
                        if r:
                            times[name].append(time.perf_counter() - start)
            rtf = {name: sorted(t)[len(t) // 2] / seconds for name, t in times.items()}
            rows += [
                {
                    "threads": n,
                    "network": name,
                    "RTF": rtf[name],
                    "speed vs official": rtf["official"] / rtf[name],
                    "max deviation from official": deviation[name],
                }
                for name in nets
            ]
    finally:
        torch.set_num_threads(old)
    return rows


@register_bench(
    "taylorsenet",
    "TaylorSENet: params, GMAC per s of audio (true, paper-style), CPU real-time factor; offline backends (eager, "
    "compile, ONNX Runtime) on 1 thread; streaming per-frame time and latency",
)
def bench_taylorsenet(quick: bool, official: Path | None = None) -> dict[str, list[dict[str, Any]]]:
    """Paper and small configurations, the paper model's backends, the stream, and optionally the official code.

    RTF on 1 thread and on all usable threads; backends: quick runs eager only, on 4 s of audio. With
    ``official`` (a checkout of Andong-Li-speech/TaylorSENet) a last table times the official network on the same
    weights (:func:`official_rtf`); it is imported first, so a wrong folder is reported before anything is timed.
    """
    from tenfold.speech.taylorsenet import PAPER_CONFIG, SMALL_CONFIG, TaylorSENet
    from tenfold.utils.flops import count_flops, count_parameters

    if official is not None:
        import_official_taylorsenet(official)  # fail fast: run_bench then runs the rest without it
    all_threads = usable_cpus()
    seconds = 4.0 if quick else 10.0
    rows = []
    for name, cfg in (("paper (Q=3)", PAPER_CONFIG), ("paper, magnitude-only (Q=0)", {**PAPER_CONFIG, "order_num": 0}),
                      ("small (demo, Q=3)", SMALL_CONFIG)):  # fmt: skip
        torch.manual_seed(0)
        model = TaylorSENet(**cfg).eval()
        spec = torch.randn(1, 2, 101, 161)
        paper = paper_style_macs(model, spec)
        rows.append(
            {
                "config": name,
                "params": count_parameters(model),
                "true GMAC/s": count_flops(model, spec).macs / 1e9,
                "paper-style GMAC/s": paper["total"] / 1e9,
                "conv-only paper-style GMAC/s": (paper["conv"] + paper["conv_transpose"]) / 1e9,
                "RTF 1 thread": real_time_factor(model, seconds, 1, runs=2 if quick else 5),
                f"RTF {all_threads} threads": real_time_factor(model, seconds, all_threads, runs=2 if quick else 5),
            }
        )
    tables = {
        "models (eager)": rows,
        f"paper configuration, {seconds:g} s of audio, whole pipeline, 1 thread": backend_rtf(
            seconds, rounds=3 if quick else 5, backends=() if quick else ("compile", "onnx")
        ),
        "streaming (one 10-ms hop per call, 1 thread)": stream_frame_times(50 if quick else 200),
    }
    if official is not None:
        title = f"official network vs this one (same weights), {seconds:g} s of audio, whole pipeline"
        tables[title] = official_rtf(official, seconds, rounds=3 if quick else 5)
    return tables
