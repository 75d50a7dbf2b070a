"""``tenfold bench greenmim``: encoder forward+backward, GreenMIM (visible units only) against a SimMIM-style Swin.

The baseline is timm's ``SwinTransformer`` of the same size processing all patches, masked ones replaced by a
learned mask token (SimMIM). GreenMIM runs :class:`~tenfold.mim.encoder.GreenSwin` on the 25 % visible units
(mask ratio 0.75, one mask per batch). Each configuration runs in its own subprocess on one thread: the peak
memory is the rise of the process's peak resident set size (VmHWM) during the first forward+backward, over the
resident size with the model and inputs in place, so it covers activations, weight gradients and workspace;
the saving is also given without the weight gradients (the same size for both). Wall time is
the median of several forward+backward passes after one warm-up. Paper (GPU): about 2.7x faster and about 70 %
less memory than SimMIM for Swin-B.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from typing import Any

from tenfold.bench import register_bench

#: Architectures compared (all at 224 px, window 7, 4-px patches).
SIZES: dict[str, dict[str, Any]] = {
    "swin_base": {"embed_dim": 128, "depths": (2, 2, 18, 2), "num_heads": (4, 8, 16, 32)},
    "swin_tiny": {"embed_dim": 96, "depths": (2, 2, 6, 2), "num_heads": (3, 6, 12, 24)},
}
PAPER = {"speed ratio": 2.7, "memory saving (%)": 70.0}


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise ValueError(f"{field} not found in /proc/self/status")


def _worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Measure one (size, method) pair in this process: peak memory rise, median time, forward MACs."""
    import statistics
    import time

    import torch
    from timm.models.swin_transformer import SwinTransformer
    from torch.utils.flop_counter import FlopCounterMode

    from tenfold.mim.encoder import GreenSwin, GreenSwinConfig
    from tenfold.mim.masking import random_unit_mask

    torch.set_num_threads(1)
    torch.manual_seed(0)
    arch = SIZES[spec["size"]]
    b, img = spec["batch"], 224
    images = torch.randn(b, 3, img, img)
    um = random_unit_mask(b, 49, 0.75, generator=torch.Generator().manual_seed(0))
    if spec["method"] == "greenmim":
        model = GreenSwin(GreenSwinConfig(img_size=img, window_size=7, **arch))

        def step() -> torch.Tensor:
            return model(images, um.mask).pow(2).mean()

    else:
        model = SwinTransformer(img_size=img, window_size=7, num_classes=0, **arch)
        mask_token = torch.nn.Parameter(torch.zeros(1, 1, 1, arch["embed_dim"]))
        w = um.mask.view(b, 7, 7).repeat_interleave(8, 1).repeat_interleave(8, 2).unsqueeze(-1)

        def step() -> torch.Tensor:
            x = model.patch_embed(images)  # (B, 56, 56, C)
            x = x * (1 - w) + mask_token * w
            return model.norm(model.layers(x)).pow(2).mean()

    base = _status_kib("VmRSS")
    step().backward()
    peak = _status_kib("VmHWM")
    model.zero_grad(set_to_none=True)
    times = []
    for _ in range(spec["runs"]):
        start = time.perf_counter()
        step().backward()
        times.append(time.perf_counter() - start)
        model.zero_grad(set_to_none=True)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        step()
    grad_mib = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
    return {
        "seconds": statistics.median(times),
        "peak_mib": (peak - base) / 1024,
        "grad_mib": grad_mib,
        "gmacs": counter.get_total_flops() / 2e9 / b,
    }


def _measure(spec: dict[str, Any]) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, "-m", "tenfold.mim.bench", json.dumps(spec)],
        capture_output=True,
        text=True,
        check=False,
        env={"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", **_env()},
    )
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark worker {spec} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}


def _saving(green: float, dense: float) -> float:
    """Percent saved, ``100 (1 - green / dense)``; NaN when the baseline measured no rise (nothing to compare)."""
    return 100 * (1 - green / dense) if dense > 0 else float("nan")


def bench_rows(
    sizes: list[str], runs: int, batch: int = 2, measure: Callable[[dict[str, Any]], dict[str, Any]] | None = None
) -> list[dict[str, Any]]:
    """One row per size: the SimMIM-style dense encoder and GreenMIM measured side by side, with their ratios.

    ``measure`` defaults to one subprocess per measurement (clean peak-memory readings).

    Args:
        sizes: keys of :data:`SIZES`.
        runs: timed forward+backward passes per measurement (median reported).
        batch: images per pass.
        measure: ``spec -> {"seconds", "peak_mib", "grad_mib", "gmacs"}``; :func:`_worker` runs in-process (tests).
    """
    measure = measure or _measure
    rows = []
    for size in sizes:
        res = {m: measure({"size": size, "method": m, "batch": batch, "runs": runs}) for m in ("simmim", "greenmim")}
        dense, green = res["simmim"], res["greenmim"]
        rows.append(
            {
                f"encoder (224 px, batch {batch}, 1 CPU thread)": size,
                "SimMIM-style s/iter": dense["seconds"],
                "GreenMIM s/iter": green["seconds"],
                "speed ratio (SimMIM / GreenMIM)": dense["seconds"] / green["seconds"],
                "SimMIM peak MiB": dense["peak_mib"],
                "GreenMIM peak MiB": green["peak_mib"],
                "memory saving (%)": _saving(green["peak_mib"], dense["peak_mib"]),
                "saving without weight grads (%)": _saving(
                    green["peak_mib"] - green["grad_mib"], dense["peak_mib"] - dense["grad_mib"]
                ),
                "GMACs/img SimMIM": dense["gmacs"],
                "GMACs/img GreenMIM": green["gmacs"],
                "FLOP ratio (SimMIM / GreenMIM)": dense["gmacs"] / green["gmacs"],
                "paper speed ratio (GPU, Swin-B)": PAPER["speed ratio"],
                "paper memory saving (%)": PAPER["memory saving (%)"],
            }
        )
    return rows


@register_bench("greenmim", "GreenMIM encoder fwd+bwd on visible units vs SimMIM-style dense Swin (time, memory)")
def bench_greenmim(quick: bool) -> list[dict[str, Any]]:
    """Swin-B and Swin-T at 224 px (quick: Swin-T only, fewer runs); ratios are dense over GreenMIM."""
    return bench_rows(["swin_tiny"] if quick else ["swin_base", "swin_tiny"], runs=2 if quick else 5)


if __name__ == "__main__":
    print(json.dumps(_worker(json.loads(sys.argv[1]))))
