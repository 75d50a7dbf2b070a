"""Demo ``lightvit``: a small LightViT against a DeiT-style ViT of similar size, same data, steps and seed.

Both train on the built-in 10-class scenes at 64x64 with the same AdamW recipe; the table gives their size,
multiply-adds, CPU inference throughput (measured in the same process) and validation accuracy.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from tenfold.engine.demo import DemoContext, DemoResult, plot_curves, register_demo, top1_curve

#: The spec's CPU configuration of LightViT (section 7): 3 stages of one block, window 2, 4 global tokens.
LIGHTVIT_MICRO = dict(embed_dims=[32, 64, 96], num_layers=[1, 1, 1], num_heads=[1, 2, 3], mlp_ratios=[4, 4, 4],
                      num_tokens=4, window_size=2, neck_dim=128)  # fmt: skip
#: A DeiT-style ViT (class token, learned position embedding, patch 8) of about the same size; head dim 32 as above.
VIT_MICRO = dict(img_size=64, patch_size=8, embed_dim=64, depth=6, num_heads=2, mlp_ratio=4.0)

IMAGE_SIZE = 64
DATA = {"dataset": "builtin", "num_classes": 10, "train_size": 4096, "val_size": 1000, "batch_size": 64,
        "eval_batch_size": 500, "image_size": IMAGE_SIZE}  # fmt: skip


@dataclass(frozen=True)
class _Arm:
    label: str
    model: str
    kwargs: dict[str, Any] = field(default_factory=dict)


ARMS = (
    _Arm("LightViT (micro)", "lightvit_tiny", LIGHTVIT_MICRO),
    _Arm("DeiT-style ViT (micro)", "vit_tiny_patch16_224", VIT_MICRO),
)


@register_demo("lightvit", budget_s=70.0, title="LightViT vs a DeiT-style ViT of similar size (built-in scenes)")
def lightvit_demo(ctx: DemoContext) -> DemoResult:
    """Train both models for the same steps, then measure accuracy, size, MACs and throughput."""
    import torch

    from tenfold.classification import ClassificationTask
    from tenfold.data.datamodules import ClassificationData
    from tenfold.engine.optim import OptimConfig
    from tenfold.engine.quick import quick_fit
    from tenfold.utils.flops import count_flops, count_parameters
    from tenfold.utils.throughput import measure_throughput

    steps = 180 * (10 if ctx.full else 1)
    data = ClassificationData(**DATA)
    rows, histories = [], {}
    start = time.monotonic()
    for i, arm in enumerate(ARMS):

        def make_task(arm: _Arm = arm) -> ClassificationTask:
            optim = OptimConfig(opt="adamw", lr=2e-3, weight_decay=0.04, sched="cosine", min_lr=1e-5)
            return ClassificationTask(model=arm.model, num_classes=10, model_kwargs=arm.kwargs, label_smoothing=0.1,
                                      optim=optim)  # fmt: skip

        # the first arm gets half the budget, the second what is left: on a quiet machine both finish their steps;
        # on a loaded one the note says the steps differ
        limit = ctx.budget_s / len(ARMS) if i == 0 else max(ctx.budget_s - (time.monotonic() - start), 10.0)
        result = quick_fit(
            make_task, data, max_steps=steps, val_every=max(30, steps // 6), out_dir=ctx.out_dir / arm.model,
            seed=ctx.seed, max_time_s=limit,
        )  # fmt: skip
        model = result.task.model.eval()
        x = torch.randn(1, 3, IMAGE_SIZE, IMAGE_SIZE)
        speed = measure_throughput(model, (3, IMAGE_SIZE, IMAGE_SIZE), batch_size=64, threads=1, warmup=2, runs=5)
        histories[arm.label] = result.history
        rows.append(
            {
                "model": arm.label,
                "params (M)": count_parameters(model) / 1e6,
                "MACs (M)": count_flops(model, x).macs / 1e6,
                "steps": result.steps,
                "train s": round(result.seconds, 1),
                "img/s (bs64, 1 thread)": speed.samples_per_s,
                "val top-1 (%)": 100 * result.final["val/acc1"],
            }
        )
    plot = ctx.out_dir / "lightvit_val_top1.png"
    title = f"built-in scenes {IMAGE_SIZE}x{IMAGE_SIZE}, same steps and seed"
    plot_curves({label: top1_curve(h) for label, h in histories.items()}, plot, title=title)
    light, vit = rows
    same = light["steps"] == vit["steps"]
    step_note = f"{light['steps']} steps" if same else (
        f"UNEQUAL steps ({light['steps']} vs {vit['steps']}: the time budget ran out on a loaded machine)"
    )  # fmt: skip
    notes = (
        f"Both models: built-in 10-class scenes at {IMAGE_SIZE}x{IMAGE_SIZE} (4096 training images), AdamW lr 2e-3, "
        f"weight decay 0.04, cosine, label smoothing 0.1, batch 64, {step_note}, seed {ctx.seed}. "
        f"LightViT {light['val top-1 (%)']:.1f} % vs DeiT-style ViT {vit['val top-1 (%)']:.1f} % "
        f"({light['val top-1 (%)'] - vit['val top-1 (%)']:+.1f} points) at "
        f"{light['params (M)'] / vit['params (M)']:.2f}x the parameters and "
        f"{light['img/s (bs64, 1 thread)'] / vit['img/s (bs64, 1 thread)']:.2f}x the CPU throughput. "
        "A few hundred steps on CPU only show early learning speed; the paper's claims (ImageNet accuracy, GPU "
        "speed) need the ImageNet recipe (`configs/lightvit/imagenet_lightvit_tiny.yaml`)."
    )
    return DemoResult(rows=rows, plots=[plot], notes=notes)
