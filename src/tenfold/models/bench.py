"""``tenfold bench lightvit``: LightViT's size, multiply-adds (both conventions) and CPU throughput vs PVTv2-B0/DeiT-T.

All rows come from one process: the throughput ratios compare models measured minutes apart on the same machine.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from tenfold.bench import register_bench

__all__ = ["LIGHTVIT_PAPER", "bench_lightvit", "lightvit_flops_rows", "lightvit_speed_rows"]

#: The paper's table (Table 2 of 2207.05557) and README: params (M), "FLOPs" (GMACs), ImageNet top-1.
LIGHTVIT_PAPER = {
    "lightvit_tiny": (9.4, 0.7, 78.7),
    "lightvit_small": (19.2, 1.7, 80.9),
    "lightvit_base": (35.2, 3.9, 82.1),
    "pvt_v2_b0": (3.4, 0.6, 70.5),
    "deit_tiny_patch16_224": (5.7, 1.3, 72.2),
}
BASELINES = ("pvt_v2_b0", "deit_tiny_patch16_224")


def _discarded_global_kv_macs(model: torch.nn.Module) -> int:
    """MACs of the official code's keys/values of the global tokens from ``qkv``, which it computes and discards."""
    from tenfold.models.lightvit import Block

    return sum(
        m.attn.num_tokens * m.attn.qkv.in_features * 2 * m.attn.qkv.in_features
        for m in model.modules()
        if isinstance(m, Block)
    )


def lightvit_flops_rows() -> list[dict[str, Any]]:
    """Params and GMACs at 224x224 of LightViT-T/S/B and the two baselines, next to the paper's table."""
    import timm

    import tenfold.models  # noqa: F401
    from tenfold.models.lightvit import official_flops
    from tenfold.utils.flops import count_flops, count_parameters

    rows = []
    x = torch.zeros(1, 3, 224, 224)
    for name, (p_params, p_flops, p_top1) in LIGHTVIT_PAPER.items():
        model = timm.create_model(name)
        true = count_flops(model, x).macs
        is_lightvit = name.startswith("lightvit")
        true_official = true + _discarded_global_kv_macs(model) if is_lightvit else true
        rows.append(
            {
                "model": name,
                "params": count_parameters(model),
                "GMACs official count": official_flops(model) / 1e9 if is_lightvit else float("nan"),
                "GMACs true (ours)": true / 1e9,
                "GMACs true (official code)": true_official / 1e9,
                "paper params (M)": p_params,
                "paper GMACs": p_flops,
                "paper top-1": p_top1,
            }
        )
    return rows


def lightvit_speed_rows(quick: bool = False) -> list[dict[str, Any]]:
    """Inference img/s of LightViT-T, PVTv2-B0 and DeiT-T at 224, batch 1 and 8, one thread and all threads.

    Each row gives one setting; ``ratio vs X`` is LightViT-T's throughput divided by X's in that setting.
    """
    import timm

    import tenfold.models  # noqa: F401
    from tenfold.utils.throughput import measure_throughput

    names = ("lightvit_tiny", *BASELINES)
    models = {n: timm.create_model(n).eval() for n in names}
    all_threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    rows = []
    for threads in sorted({1, all_threads}):
        for batch in (1, 8):
            runs = (3 if quick else 10) if batch == 8 else (5 if quick else 30)
            speed = {
                n: measure_throughput(m, (3, 224, 224), batch_size=batch, threads=threads, warmup=2, runs=runs)
                for n, m in models.items()
            }
            row: dict[str, Any] = {"threads": threads, "batch": batch}
            row.update({f"{n} img/s": r.samples_per_s for n, r in speed.items()})
            for base in BASELINES:
                row[f"ratio vs {base}"] = speed["lightvit_tiny"].samples_per_s / speed[base].samples_per_s
            rows.append(row)
    return rows


@register_bench("lightvit", "LightViT-T/S/B params, MACs (official and true counts), CPU img/s vs PVTv2-B0 / DeiT-T")
def bench_lightvit(quick: bool) -> list[dict[str, Any]]:
    """Two tables: params and GMACs at 224 (with the paper's numbers), then inference throughput and ratios."""
    return {
        "Params and multiply-adds at 224x224": lightvit_flops_rows(),
        "CPU inference throughput at 224x224 (img/s); ratio = LightViT-T / baseline": lightvit_speed_rows(quick),
    }
