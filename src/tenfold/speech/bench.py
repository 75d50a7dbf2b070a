"""``tenfold bench taylorsenet``: parameters, multiply-adds per second of audio (two conventions), CPU real-time factor.

Multiply-adds are counted on one second of 16-kHz input (101 frames x 161 bins):

* ``true GMAC/s``: what the hardware does, ``torch.utils.flop_counter`` FLOPs / 2 (a transposed convolution costs
  one multiply-add per *input* position, kernel tap and output channel);
* ``paper-style GMAC/s``: ptflops' older convention that the paper's "6.2 G" follows, where a transposed convolution
  is counted per *output* position (``output elements x C_in x kernel``), plus one operation per element of the
  PReLU, instance-norm and sigmoid outputs.

The real-time factor is end-to-end (compressed STFT, network, inverse STFT) processing time / audio duration.
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch
import torch.nn as nn

from tenfold.bench import register_bench

__all__ = ["paper_style_macs", "real_time_factor", "usable_cpus"]


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
            counts["conv_transpose"] += output.numel() * per_out
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


@register_bench("taylorsenet", "TaylorSENet: params, GMAC per s of audio (true, paper-style), CPU real-time factor")
def bench_taylorsenet(quick: bool) -> list[dict[str, Any]]:
    """Paper and small configurations, measured in one run (RTF on 1 thread and on all usable threads)."""
    from tenfold.speech.taylorsenet import PAPER_CONFIG, SMALL_CONFIG, TaylorSENet
    from tenfold.utils.flops import count_flops, count_parameters

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
    return rows
