"""Demo ``greenmim``: a tiny GreenMIM pre-training on built-in images, its loss curve and a reconstruction picture."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tenfold.engine.demo import DemoContext, DemoResult, register_demo, torch_threads

#: The tiny model: 96-px images, 4-px patches, three stages (mask unit 16 px, 6x6 units, 9 kept at ratio 0.75),
#: window 3, so stages 1-2 (144 and 36 visible tokens) run in grouping mode and stage 3 in masking mode.
TINY = {
    "img_size": 96,
    "patch_size": 4,
    "embed_dim": 16,
    "depths": [2, 2, 2],
    "num_heads": [1, 2, 4],
    "window_size": 3,
    "decoder_embed_dim": 64,
    "decoder_num_heads": 4,
    "norm_pix_loss": False,
}


def make_task(official_decoder_order: bool = True, lr: float = 1e-3):
    """The tiny pre-training task (AdamW (0.9, 0.95), weight decay 0.05, constant lr)."""
    from tenfold.engine.optim import OptimConfig
    from tenfold.mim.task import GreenMIMTask

    optim = OptimConfig(opt="adamw", lr=lr, weight_decay=0.05, sched="none")
    return GreenMIMTask(**TINY, official_decoder_order=official_decoder_order, optim=optim)


def make_data(source: str = "gradients", batch_size: int = 16):
    """Built-in unlabelled 96-px images (64 validation images, fixed validation masks)."""
    from tenfold.mim.data import MIMImageData

    return MIMImageData(
        source=source, image_size=96, train_size=2048, val_size=64, batch_size=batch_size, eval_batch_size=64
    )


def _plot_curves(histories: dict[str, list[dict[str, float]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for label, history in histories.items():
        ax.plot([h["step"] for h in history], [h["val/loss"] for h in history], marker="o", ms=3, label=label)
    ax.set_xlabel("training step")
    ax.set_ylabel("validation masked-unit MSE")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def reconstruction_figure(tasks: dict[str, Any], data: Any, path: Path, num_images: int = 4) -> None:
    """Masked input, each task's prediction (visible units pasted back) and the target, for validation images.

    Args:
        tasks: column title -> trained :class:`~tenfold.mim.task.GreenMIMTask` (same mask rule and unit size).
        data: the data module whose validation images are shown.
        path: PNG file to write.
        num_images: rows.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    from tenfold.mim.greenmim import unpatchify

    data.setup("validate")
    images = torch.stack([data._splits["val"][i][0] for i in range(num_images)])
    images = (images - data.mean) / data.std
    first = next(iter(tasks.values())).model
    um = first.random_mask(num_images, generator=torch.Generator().manual_seed(0))
    unit = first.unit
    pix = um.mask.view(num_images, *first.encoder.unit_grid)
    pix = pix.repeat_interleave(unit, 1).repeat_interleave(unit, 2).bool().unsqueeze(1)
    columns = [("masked input", torch.where(pix, torch.full_like(images, float("nan")), images))]
    for title, task in tasks.items():
        model = task.model.eval()
        with torch.no_grad():
            pred = unpatchify(model(images, um).pred, unit)
        columns.append((title, torch.where(pix, pred, images)))
    columns.append(("target", images))
    fig, axes = plt.subplots(num_images, len(columns), figsize=(2 * len(columns), 2 * num_images))
    for r in range(num_images):
        lo, hi = images[r].min(), images[r].max()
        for c, (title, t) in enumerate(columns):
            shown = ((t[r] - lo) / (hi - lo)).clamp(0, 1).nan_to_num(0.5).permute(1, 2, 0).numpy()
            axes[r, c].imshow(shown)
            axes[r, c].axis("off")
            if r == 0:
                axes[r, c].set_title(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


@register_demo("greenmim", budget_s=60.0, title="GreenMIM: tiny Swin pre-training on visible patches only")
def greenmim_demo(ctx: DemoContext) -> DemoResult:
    """Pre-train the tiny GreenMIM on smooth built-in images (official and fixed decoder order) and on the scenes."""
    # the tiny model gains nothing from more threads, and on a loaded 2-core machine OpenMP workers spinning
    # against other processes made steps up to 15x slower
    with torch_threads(1):
        return _run(ctx)


def _run(ctx: DemoContext) -> DemoResult:
    from tenfold.engine.quick import quick_fit

    steps = 300 * (10 if ctx.full else 1)
    runs = [
        ("gradients, official decoder order", "gradients", True),
        ("gradients, fixed decoder order", "gradients", False),
        ("built-in scenes, official order", "builtin", True),
    ]
    rows, histories, trained = [], {}, {}
    for i, (label, source, official) in enumerate(runs):
        data = make_data(source)
        result = quick_fit(
            lambda official=official: make_task(official),
            data,
            max_steps=steps,
            val_every=25,
            out_dir=ctx.out_dir / f"run{i}",
            seed=ctx.seed,
            max_time_s=ctx.budget_s / len(runs),
        )
        start = _initial_val_loss(result.task, data, ctx.seed)
        history = [{"step": 0.0, "val/loss": start}, *result.history]
        histories[label] = history
        end = history[-1]["val/loss"]
        rows.append(
            {
                "run": label,
                "steps": result.steps,
                "seconds": round(result.seconds, 1),
                "val loss at step 0": start,
                "final val loss": end,
                "final / start": end / start,
            }
        )
        if source == "gradients":
            trained[label.split(", ")[1]] = (result.task, data)
    curve = ctx.out_dir / "loss_curve.png"
    _plot_curves(histories, curve)
    picture = ctx.out_dir / "reconstruction.png"
    shown = {f"prediction ({k})": task for k, (task, _) in trained.items()}
    reconstruction_figure(shown, next(iter(trained.values()))[1], picture)
    official, fixed = rows[0]["final val loss"], rows[1]["final val loss"]
    notes = (
        "Tiny GreenMIM (96-px images, 4-px patches, 3 stages, window 3, mask unit 16 px, 9 of 36 units visible, "
        "batch 16, AdamW lr 1e-3 betas (0.9, 0.95), wd 0.05, pixel MSE without per-patch normalisation). "
        "Validation MSE on 64 held-out images with fixed masks. 'gradients' are the spec's smooth synthetic images "
        "(colour + linear gradient + noise), whose masked units are predictable from the visible ones; the built-in "
        "classification scenes are cluttered, so less of a masked unit can be inferred and the loss falls less.\n\n"
        "The official decoder order (the default, kept for reproducing official numbers) places the encoder's "
        "raster-ordered visible tokens as if they were in noise order, so the decoder does not know which visible "
        f"unit is where (spec pitfall 1). Here it ends at {official:.3f} against {fixed:.3f} with each visible token "
        "in its own place: with 9 visible units the official order learns little beyond the image's mean colour, "
        "while the fixed order learns the gradient. The picture shows validation images: masked input, the "
        "predictions of both gradient runs with the visible units pasted back, and the target."
    )
    return DemoResult(rows=rows, plots=[curve, picture], notes=notes)


def _initial_val_loss(task: Any, data: Any, seed: int) -> float:
    """Validation loss of a freshly initialised task with the same seed (the curve's starting point)."""
    import lightning.pytorch as pl
    import torch

    pl.seed_everything(seed, verbose=False)
    fresh = make_task(task.hparams.official_decoder_order)
    data.setup("validate")
    loader = data.val_dataloader()
    total, count = 0.0, 0
    fresh.eval()
    with torch.no_grad():
        for batch_idx, batch in enumerate(loader):
            images = (batch[0] - data.mean) / data.std
            gen = torch.Generator().manual_seed(fresh.val_mask_seed * 1_000_003 + batch_idx)
            loss = fresh.model(images, fresh.model.random_mask(images.shape[0], generator=gen)).loss
            total += float(loss) * images.shape[0]
            count += images.shape[0]
    return total / count
