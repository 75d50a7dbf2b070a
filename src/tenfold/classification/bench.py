"""``tenfold bench models``: size, multiply-adds and CPU throughput of the CIFAR model zoo, as ratios."""

from __future__ import annotations

from typing import Any

import torch

from tenfold.bench import register_bench

ZOO = ("resnet8x4", "resnet20", "resnet56", "resnet110", "resnet32x4", "wrn_40_1", "wrn_40_2")
BASELINE = "resnet8x4"


@register_bench("models", "CIFAR model zoo: params, MACs at 32x32, CPU throughput; ratios against resnet8x4")
def bench_models(quick: bool) -> list[dict[str, Any]]:
    """Measure every zoo model in one run; ratios are against :data:`BASELINE` measured in the same run."""
    import timm

    import tenfold.models  # noqa: F401
    from tenfold.utils.flops import count_flops, count_parameters
    from tenfold.utils.throughput import measure_throughput

    rows = []
    for name in ZOO:
        model = timm.create_model(name, num_classes=100)
        macs = count_flops(model, torch.randn(1, 3, 32, 32)).macs
        speed = measure_throughput(model, (3, 32, 32), batch_size=64, warmup=2 if quick else 5, runs=3 if quick else 15)
        rows.append(
            {
                "model": name,
                "params (M)": count_parameters(model) / 1e6,
                "MACs (M)": macs / 1e6,
                "img/s (bs64, cpu)": speed.samples_per_s,
            }
        )
    base = next(r for r in rows if r["model"] == BASELINE)
    for row in rows:
        row["MACs ratio"] = row["MACs (M)"] / base["MACs (M)"]
        row["speed ratio"] = row["img/s (bs64, cpu)"] / base["img/s (bs64, cpu)"]
    return rows
