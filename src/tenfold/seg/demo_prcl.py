"""Demo ``prcl``: supervised only vs mean teacher vs PRCL on built-in scenes with 1/8 of the labels, 3 seeds.

Built-in scenes of 32 px (background + 4 shapes), 128 training images of which 16 (1/8) are labelled, a tiny
DeepLabV3+ with PRCL's representation and uncertainty heads. Per seed, one short supervised warm-up ("burn-in") is
shared by the three arms, which then train the same number of steps with the same data order; the semi-supervised
arms start their EMA teacher from the warm student and are evaluated with it (official). After each PRCL run the
uncertainty head's variance is compared on the unlabelled training pixels whose pseudo-label (the EMA teacher's
prediction) is wrong vs right, using the labels the training never saw, overall and within each true class.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from tenfold.engine.demo import DemoContext, DemoResult, register_demo

SEEDS = (0, 1, 2)
NUM_CLASSES = 5
IMAGE_SIZE = 32
TRAIN_SIZE = 128
LABELLED = 16  # 1/8
WARMUP_STEPS = 80  # shared supervised burn-in; --full: x5, and the same below
STEPS = 120
#: PRCL's temperature and uncertainty lr in the demo: the official 100 and 5e-5 leave the uncertainty head untrained
#: in 120 steps (sigma^2 stays ~0.5 everywhere), so the demo uses the spec's visible-effect setting (section 7).
TEMPERATURE = 0.5
UNCERTAINTY_LR = 5e-3
EPOCH_IMAGES = 80  # 16 labelled at batch 8: 5 passes of 2 batches = 10 steps per "epoch"
ANALYSIS_IMAGES = 64
METHODS = {"supervised": "supervised only", "mean_teacher": "mean teacher", "prcl": "mean teacher + PRCL"}


def _data(seed: int) -> Any:
    from tenfold.data.semi import SemiSegmentationData

    return SemiSegmentationData(
        dataset="builtin", num_classes=NUM_CLASSES, train_size=TRAIN_SIZE, labelled=LABELLED, val_size=64,
        test_size=64, image_size=IMAGE_SIZE, difficulty=0.5, epoch_images=EPOCH_IMAGES, batch_size=8,
        eval_batch_size=64, shuffle_seed=seed,
    )  # fmt: skip


def _net() -> Any:
    """Tiny PRCL DeepLabV3+: timm's test ResNet (16-24-32-48), output stride 8, 32-channel heads."""
    from tenfold.seg.prcl import PRCLDeepLabV3Plus

    return PRCLDeepLabV3Plus(
        num_classes=NUM_CLASSES, backbone="test_resnet", backbone_source="timm", output_stride=8,
        atrous_rates=(1, 2, 3), aspp_channels=32, low_channels=16, decoder_channels=32, representation_dim=32,
        backbone_kwargs={"channels": [16, 24, 32, 48]},
    )  # fmt: skip


def _task(method: str, steps: int, warm: dict[str, Any] | None = None) -> Any:
    """The arm's task; ``warm`` (a student state dict) initialises the student and, by copy, the EMA teacher."""
    from tenfold.engine.optim import OptimConfig
    from tenfold.seg.semi import SemiSupervisedSegTask

    net = _net()
    if warm is not None:
        net.load_state_dict(warm)
    return SemiSupervisedSegTask(
        net, method=method, optim=OptimConfig(opt="sgd", lr=0.05, momentum=0.9, weight_decay=5e-4, sched="none"),
        un_threshold=0.9, num_queries=32, num_negatives=64, temperature=TEMPERATURE, uncertainty_lr=UNCERTAINTY_LR,
        strong_scale_range=(0.75, 1.25), epoch_images=EPOCH_IMAGES,
        total_epochs=max(1, steps * 8 // EPOCH_IMAGES), eval_model="student" if method == "supervised" else "ema",
    )  # fmt: skip


def variance_by_pseudo_label(task: Any, images: Any, labels: Any) -> dict[str, Any]:
    """Mean predicted variance on pixels whose pseudo-label is wrong vs right.

    Pseudo-labels: the EMA teacher's argmax on the unlabelled images (eval mode), upsampled to the image; variance:
    the uncertainty head on the student's decoder features, averaged over its dimensions; both compared at the
    feature resolution (labels resized by nearest neighbour, as the PRCL loss does).

    Args:
        task: a trained :class:`~tenfold.seg.semi.SemiSupervisedSegTask` with ``method="prcl"``.
        images: uint8 (N, 3, H, W) unlabelled images.
        labels: (N, H, W) their true labels (255 ignored).

    Returns:
        ``{"wrong": mean sigma^2, "right": ..., "within_class_gap": mean over true classes of (wrong - right),
        weighted by the class's wrong pixels (removes the effect of classes having different variance levels),
        "wrong_pixels": n, "right_pixels": n, "sigma_wrong": tensor, "sigma_right": tensor}``.
    """
    import torch
    import torch.nn.functional as F

    from tenfold.seg.task import upsample_logits

    x = task.normalize(images.float().div(255))
    task.eval()
    with torch.no_grad():
        teacher = task.ema
        pseudo = upsample_logits(teacher, teacher(x).logits, x.shape[-2:]).argmax(1)
        out = task.model.forward_prcl(x)
        sigma = task.uncertainty_head(out.features).mean(1)  # (N, h, w)
    size = sigma.shape[-2:]
    pseudo_s = F.interpolate(pseudo[:, None].float(), size=size, mode="nearest")[:, 0].long()
    true_s = F.interpolate(labels[:, None].float(), size=size, mode="nearest")[:, 0].long()
    valid = true_s != 255
    wrong = valid & (pseudo_s != true_s)
    right = valid & (pseudo_s == true_s)
    gaps, weights = [], []
    for c in true_s[valid].unique().tolist():
        w, r = wrong & (true_s == c), right & (true_s == c)
        if w.any() and r.any():
            gaps.append(float(sigma[w].mean() - sigma[r].mean()))
            weights.append(int(w.sum()))
    within = sum(g * n for g, n in zip(gaps, weights, strict=True)) / sum(weights) if weights else float("nan")
    return {
        "wrong": float(sigma[wrong].mean()) if wrong.any() else float("nan"),
        "right": float(sigma[right].mean()) if right.any() else float("nan"),
        "within_class_gap": within,
        "wrong_pixels": int(wrong.sum()),
        "right_pixels": int(right.sum()),
        "sigma_wrong": sigma[wrong],
        "sigma_right": sigma[right],
    }


def plot_variance(sigma_right: Any, sigma_wrong: Any, path: str | Path) -> Path:
    """Histograms (density) of the mean predicted variance on right and wrong pseudo-labels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    lo = float(torch.cat([sigma_right, sigma_wrong]).min())
    hi = float(torch.cat([sigma_right, sigma_wrong]).max())
    bins = torch.linspace(lo, hi if hi > lo else lo + 1e-6, 41).tolist()
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=100)
    ax.hist(sigma_right.numpy(), bins=bins, density=True, alpha=0.6, label=f"right ({sigma_right.numel()} px)")
    ax.hist(sigma_wrong.numpy(), bins=bins, density=True, alpha=0.6, label=f"wrong ({sigma_wrong.numel()} px)")
    ax.axvline(float(sigma_right.mean()), color="C0", linestyle="--")
    ax.axvline(float(sigma_wrong.mean()), color="C1", linestyle="--")
    ax.set_xlabel("predicted variance sigma^2 (mean over dimensions)")
    ax.set_ylabel("density")
    ax.set_title("PRCL uncertainty on unlabelled pixels by pseudo-label correctness (3 seeds)", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


@register_demo(
    "prcl", budget_s=75.0, title="Semi-supervised segmentation: supervised vs mean teacher vs PRCL", threads=1
)
def prcl_demo(ctx: DemoContext) -> DemoResult:
    """Three arms x three seeds, the mIoU table, and the variance on wrong vs right pseudo-labels."""
    import torch

    from tenfold.engine.quick import quick_fit

    scale = 5 if ctx.full else 1
    steps, warmup = STEPS * scale, WARMUP_STEPS * scale
    rows: list[dict[str, Any]] = []
    variance: list[dict[str, Any]] = []
    warm, warm_miou = {}, []
    for seed in SEEDS:
        run = quick_fit(
            lambda: _task("supervised", warmup), _data(seed), max_steps=warmup, val_every=warmup,
            out_dir=ctx.out_dir / f"warmup-seed{seed}", seed=seed,
        )  # fmt: skip
        warm[seed] = {k: v.clone() for k, v in run.task.model.state_dict().items()}
        warm_miou.append(run.final["val/miou"])
    for method, label in METHODS.items():
        mious, seconds = [], []
        for seed in SEEDS:
            data = _data(seed)
            run = quick_fit(
                lambda method=method, seed=seed: _task(method, steps, warm[seed]), data, max_steps=steps,
                val_every=steps, out_dir=ctx.out_dir / f"{method}-seed{seed}", seed=seed,
            )  # fmt: skip
            mious.append(run.final["val/miou"])
            seconds.append(run.seconds)
            if method == "prcl":
                pool = data.unlabelled_dataset()
                n = min(ANALYSIS_IMAGES, len(pool))
                variance.append(variance_by_pseudo_label(run.task, pool.images[:n], pool.masks[:n]))
        rows.append(
            {
                "method": label, "val mIoU mean": statistics.fmean(mious), "val mIoU std": statistics.stdev(mious),
                "per-seed mIoU": ", ".join(f"{m:.3f}" for m in mious), "seeds": len(SEEDS), "steps": steps,
                "labelled / unlabelled": f"{LABELLED} / {TRAIN_SIZE - LABELLED}",
                "s / run": round(statistics.fmean(seconds), 1),
            }
        )  # fmt: skip
    sigma_right = torch.cat([v["sigma_right"] for v in variance])
    sigma_wrong = torch.cat([v["sigma_wrong"] for v in variance])
    plot = plot_variance(sigma_right, sigma_wrong, ctx.out_dir / "variance_by_pseudo_label.png")
    return DemoResult(rows=rows, plots=[plot], notes=_notes(rows, variance, steps, warmup, warm_miou))


def _notes(
    rows: list[dict[str, Any]], variance: list[dict[str, Any]], steps: int, warmup: int, warm_miou: list[float]
) -> str:
    sup, mt, prcl = (r["val mIoU mean"] for r in rows)
    noise = 2 * max(r["val mIoU std"] for r in rows)
    per_seed = "; ".join(
        f"seed {s}: wrong {v['wrong']:.4f} vs right {v['right']:.4f} ({v['wrong_pixels']} vs {v['right_pixels']} px), "
        f"within true classes {v['within_class_gap']:+.4f}"
        for s, v in zip(SEEDS, variance, strict=True)
    )
    higher = sum(v["wrong"] > v["right"] for v in variance)
    higher_within = sum(v["within_class_gap"] > 0 for v in variance)

    def compare(a: float, b: float) -> str:
        return "beats" if a - b > noise else "trails" if b - a > noise else "is within noise of"

    return (
        f"Built-in scenes of {IMAGE_SIZE} px (background + 4 shapes), {LABELLED} of {TRAIN_SIZE} training images "
        f"labelled (1/8). Per seed a supervised warm-up of {warmup} steps (val mIoU "
        f"{statistics.fmean(warm_miou):.3f} on average) is shared by the arms, which then train {steps} steps of 8 "
        "labelled (+ 8 unlabelled) images, SGD Nesterov lr 0.05 with the official per-epoch poly, seeds "
        f"{list(SEEDS)} (same warm weights and data order in every arm). Mean teacher: EMA 0.99 of the parameters "
        "(teacher = the warm student at the start), ClassMix of the teacher's pseudo-labels on the weak view, the "
        "strong augmentation, the attention-threshold loss (threshold 0.9 for the tiny model, spec section 7); "
        f"PRCL adds the probabilistic contrastive loss (32 anchors and 64 negatives per class) at temperature "
        f"{TEMPERATURE} with uncertainty lr {UNCERTAINTY_LR:g}: with the official 100 and 5e-5 the head does not "
        "train in this budget (sigma^2 stays ~0.5 everywhere, and PRCL equals the mean teacher to 1e-3 mIoU). "
        f"Validation mIoU: supervised {sup:.3f}, mean teacher {mt:.3f}, PRCL {prcl:.3f}; with 3 seeds, differences "
        f"under {noise:.3f} (twice the largest std) are noise: mean teacher {compare(mt, sup)} supervised, PRCL "
        f"{compare(prcl, mt)} mean teacher. At this scale the teacher's pseudo-labels are mostly background (the "
        "scenes are ~87 % background) and the strong branch learns them: the spec's +5 to +15 mIoU for the mean "
        "teacher is expected after ~600 steps at 64 px, which does not fit the demo's budget. "
        f"Uncertainty (the plot): the mean predicted variance on unlabelled training pixels whose pseudo-label is "
        f"wrong vs right (true labels held out from training), at the feature resolution: {per_seed}. Higher on the "
        f"wrong pixels overall in {higher} of {len(variance)} seeds, and within true classes (pixels of the same "
        f"class, wrongly minus rightly pseudo-labelled, weighted by wrong pixels) in {higher_within} of "
        f"{len(variance)}. The overall comparison is confounded by class: object pixels get lower variance than "
        "background ones, and most wrong pseudo-labels are object pixels called background; the within-class gap "
        "removes that. The paper's effect (uncertain embeddings on wrong pseudo-labels, down-weighted in the "
        "prototypes and the loss) is reported here as measured, not assumed."
    )
