"""Inference latency and throughput of a model on synthetic input.

These are measurements of one machine at one moment. Report them, or compare two models measured in the same
process as a ratio; never assert on them in tests.

Why not ``torch.utils.benchmark.Timer``: it offers the mean over N passes (``timeit``, which also runs two
untimed passes per call) or time-budgeted blocks (``blocked_autorange``); neither yields a fixed number of per-pass
samples, which the median/IQR here and the fixed-count alternation of :func:`compare_throughput` need. What Timer
would add (CUDA synchronisation, thread setting) is the few lines below.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

__all__ = ["ThroughputResult", "alternate_times", "compare_throughput", "measure_throughput", "saved_tensor_bytes"]


@dataclass
class ThroughputResult:
    """Result of :func:`measure_throughput`.

    Attributes:
        batch_size: samples per forward pass.
        threads: ``torch.get_num_threads()`` during the measurement.
        device: the device the passes ran on (``"cpu"``, ``"cuda:0"``...).
        median_s: median seconds per forward pass.
        iqr_s: inter-quartile range of the seconds per pass (spread of the timings).
        samples_per_s: ``batch_size / median_s``.
        runs: number of timed passes.
    """

    batch_size: int
    threads: int
    device: str
    median_s: float
    iqr_s: float
    samples_per_s: float
    runs: int


def measure_throughput(
    model: nn.Module,
    input_shape: tuple[int, ...],
    *,
    batch_size: int = 1,
    device: str | torch.device = "cpu",
    threads: int | None = None,
    warmup: int = 5,
    runs: int = 20,
    dtype: torch.dtype = torch.float32,
) -> ThroughputResult:
    """Time ``runs`` inference passes of ``model`` on a random batch of shape ``(batch_size, *input_shape)``.

    The model runs in eval mode under ``torch.inference_mode()``; ``warmup`` untimed passes come first. Each
    timed pass is measured on its own with ``time.perf_counter`` (on CUDA, with ``torch.cuda.synchronize()``
    before and after). The model is not moved: it must already be on ``device`` and in ``dtype``. Training
    flags and the thread count are restored afterwards, also on error.

    Args:
        model: the module to time.
        input_shape: shape of one sample, without the batch dimension, e.g. ``(3, 32, 32)``.
        batch_size: samples per pass.
        device: where the input is created.
        threads: if given, ``torch.set_num_threads(threads)`` for the measurement only.
        warmup: untimed passes before timing.
        runs: timed passes.
        dtype: floating dtype of the input.

    Returns:
        Median and inter-quartile range of the per-pass times, and the samples per second at the median.

    Raises:
        ValueError: ``batch_size``, ``runs`` or ``threads`` below 1, ``warmup`` below 0, an empty or
            non-positive ``input_shape``, a non-floating ``dtype``, or model parameters on another device or
            dtype than the input.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if runs < 1:
        raise ValueError(f"runs must be >= 1, got {runs}")
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0, got {warmup}")
    if threads is not None and threads < 1:
        raise ValueError(f"threads must be >= 1 or None, got {threads}")
    if not input_shape or any(int(d) < 1 for d in input_shape):
        raise ValueError(f"input_shape must be a non-empty shape of positive sizes (no batch), got {input_shape}")
    if not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating dtype, got {dtype}")
    device = torch.device(device)
    param = next(model.parameters(), None)
    wrong_device = param is not None and (
        param.device.type != device.type or (device.index is not None and param.device.index != device.index)
    )
    if param is not None and (wrong_device or param.dtype != dtype):
        raise ValueError(
            f"the model's parameters are {param.dtype} on {param.device}, the input would be {dtype} on "
            f"{device}; move the model first (model.to(device, dtype))"
        )
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    modes = {m: m.training for m in model.modules()}
    old_threads = torch.get_num_threads()
    try:
        if threads is not None:
            torch.set_num_threads(threads)
        used_threads = torch.get_num_threads()
        model.eval()
        times = []
        with torch.inference_mode():
            x = torch.randn(batch_size, *input_shape, device=device, dtype=dtype)
            for _ in range(warmup):
                model(x)
            for _ in range(runs):
                sync()
                start = time.perf_counter()
                model(x)
                sync()
                times.append(time.perf_counter() - start)
    finally:
        torch.set_num_threads(old_threads)
        for m, training in modes.items():
            m.training = training

    median = statistics.median(times)
    if len(times) > 1:
        q1, _, q3 = statistics.quantiles(times, n=4, method="inclusive")
    else:
        q1 = q3 = times[0]
    return ThroughputResult(
        batch_size=batch_size,
        threads=used_threads,
        device=str(device),
        median_s=median,
        iqr_s=q3 - q1,
        samples_per_s=batch_size / median if median > 0 else float("inf"),
        runs=len(times),
    )


def compare_throughput(
    models: dict[str, nn.Module],
    input_shape: tuple[int, ...],
    *,
    batch_size: int = 1,
    threads: int | None = None,
    rounds: int = 5,
    runs_per_round: int = 3,
    warmup: int = 2,
) -> dict[str, ThroughputResult]:
    """Time several CPU models in alternation, so that a change of machine load hits all of them alike.

    Each of ``rounds`` rounds times ``runs_per_round`` passes of every model in turn; a model's result pools its
    passes over all rounds. Ratios of the returned ``samples_per_s`` are then fair on a shared machine, where
    timing one model after another would credit whichever ran in a quiet moment.

    Args:
        models: name -> module (on the CPU, float32).
        input_shape: shape of one sample, without the batch dimension.
        batch_size: samples per pass.
        threads: ``torch.set_num_threads`` for the measurement only.
        rounds: alternation rounds (>= 1).
        runs_per_round: timed passes of each model per round (>= 1).
        warmup: untimed passes of each model before the first round.

    Returns:
        name -> :class:`ThroughputResult` over all the model's timed passes.

    Raises:
        ValueError: no models, or ``rounds`` / ``runs_per_round`` below 1 (and what :func:`measure_throughput`
            rejects).
    """
    if not models:
        raise ValueError("compare_throughput needs at least one model")
    if rounds < 1 or runs_per_round < 1:
        raise ValueError(f"rounds and runs_per_round must be >= 1, got {rounds} and {runs_per_round}")
    pooled: dict[str, list[ThroughputResult]] = {name: [] for name in models}
    for r in range(rounds):
        for name, model in models.items():
            pooled[name].append(
                measure_throughput(model, input_shape, batch_size=batch_size, threads=threads,
                                   warmup=warmup if r == 0 else 0, runs=runs_per_round)
            )  # fmt: skip
    out = {}
    for name, results in pooled.items():
        # the median of per-round medians, weighted alike: robust to one disturbed round
        median = statistics.median(res.median_s for res in results)
        spread = statistics.median(res.iqr_s for res in results)
        out[name] = ThroughputResult(
            batch_size=batch_size,
            threads=results[0].threads,
            device="cpu",
            median_s=median,
            iqr_s=spread,
            samples_per_s=batch_size / median if median > 0 else float("inf"),
            runs=sum(res.runs for res in results),
        )
    return out


def alternate_times(
    steps: dict[str, Callable[[], Any]],
    rounds: int,
    *,
    warmup: int = 1,
    after: dict[str, Callable[[], Any]] | None = None,
) -> dict[str, float]:
    """Median seconds per call of each step (a training step, say), the steps timed in turn in every round.

    The counterpart of :func:`compare_throughput` for arbitrary closures: one call of each step per round, so a
    change of machine load hits every step alike.

    Args:
        steps: name -> closure to time.
        rounds: timed calls of each (>= 1).
        warmup: untimed calls of each first.
        after: name -> untimed closure run after each call of that step (e.g. clearing gradients).

    Raises:
        ValueError: ``rounds`` below 1 or ``warmup`` below 0.
    """
    if rounds < 1 or warmup < 0:
        raise ValueError(f"rounds must be >= 1 and warmup >= 0, got rounds={rounds}, warmup={warmup}")
    after = after or {}
    times: dict[str, list[float]] = {name: [] for name in steps}
    for r in range(warmup + rounds):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            elapsed = time.perf_counter() - start
            if name in after:
                after[name]()
            if r >= warmup:
                times[name].append(elapsed)
    return {name: statistics.median(t) for name, t in times.items()}


def saved_tensor_bytes(fn: Callable[[], Any], params: Iterable[torch.Tensor] = ()) -> tuple[int, Any]:
    """Bytes of the distinct storages autograd saves for backward while ``fn()`` runs, and ``fn()``'s result.

    A proxy of training activation memory that does not depend on the allocator: each storage counts once however
    often it is saved, and the storages of ``params`` (which exist anyway) are left out.
    """
    skip = {p.untyped_storage().data_ptr() for p in params}
    storages: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in skip:
            storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        result = fn()
    return sum(storages.values()), result
