"""Demo ``greenmim``: tiny GreenMIM pre-training on built-in images, with loss curves and a reconstruction picture.

It also times a training step against a dense SimMIM-style encoder of the same size.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from tenfold.engine.demo import DemoContext, DemoResult, plot_curves, register_demo
from tenfold.mim.encoder import GreenSwinConfig
from tenfold.mim.greenmim import GreenMIMConfig

#: The tiny model: 96-px images, 4-px patches, three stages (mask unit 16 px, 6x6 units, 9 kept at ratio 0.75),
#: window 3, so stages 1-2 (144 and 36 visible tokens) run in grouping mode and stage 3 in masking mode.
TINY = GreenMIMConfig(
    encoder=GreenSwinConfig(
        img_size=96, patch_size=4, embed_dim=16, depths=(2, 2, 2), num_heads=(1, 2, 4), window_size=3
    ),
    decoder_embed_dim=64,
    decoder_num_heads=4,
    norm_pix_loss=False,
)

#: The spec's section-7 model (``model_img96_ws3`` of the official reference data): four stages, depths
#: [2, 2, 2, 1], window 3, mask unit 32 px, so 3x3 units of which int(9 * 0.25) = 2 stay visible; decoder as the
#: reference configuration ``tiny_w3`` of tests/fixtures/greenmim (32-d, 1 block, 4 heads).
SPEC7 = GreenMIMConfig(
    encoder=GreenSwinConfig(
        img_size=96, patch_size=4, embed_dim=16, depths=(2, 2, 2, 1), num_heads=(1, 2, 4, 8), window_size=3
    ),
    decoder_embed_dim=32,
    decoder_num_heads=4,
    norm_pix_loss=False,
)

#: What the spec (section 7) states for SPEC7 on its smooth images.
SPEC7_EXPECTED = "1.08 -> about 0.42 within 100 steps, 0.41-0.45 up to 600"


def make_task(official_decoder_order: bool = True, lr: float = 1e-3, config: GreenMIMConfig | None = None):
    """A tiny pre-training task (AdamW (0.9, 0.95), weight decay 0.05, constant lr); ``config`` defaults to TINY."""
    from tenfold.engine.optim import OptimConfig
    from tenfold.mim.task import GreenMIMTask

    optim = OptimConfig(opt="adamw", lr=lr, weight_decay=0.05, sched="none", opt_betas=(0.9, 0.95))
    greenmim = replace(config or TINY, official_decoder_order=official_decoder_order)
    return GreenMIMTask(greenmim, optim=optim)


def make_data(source: str = "gradients", batch_size: int = 16):
    """Built-in unlabelled 96-px images (64 validation images, fixed validation masks)."""
    from tenfold.mim.data import MIMImageData

    return MIMImageData(
        source=source, image_size=96, train_size=2048, val_size=64, batch_size=batch_size, eval_batch_size=64
    )


def plot_loss_curves(histories: dict[str, list[dict[str, float]]], path: Path) -> Path:
    """PNG of validation loss against step, one line per run (``label -> [{"step", "val/loss"}, ...]``)."""
    curves = {label: ([h["step"] for h in hist], [h["val/loss"] for h in hist]) for label, hist in histories.items()}
    return plot_curves(curves, path, ylabel="validation masked-unit MSE")


def step_times(config: GreenMIMConfig, batch_size: int = 16, steps: int = 20, warmup: int = 3) -> dict[str, float]:
    """Median seconds per training step of GreenMIM and of a dense SimMIM-style model with the same encoder.

    A step is forward, loss, backward and AdamW, in one plain loop per model (no Lightning), on this process's threads.

    The dense baseline is timm's ``SwinTransformer`` on all patches with masked ones replaced by a learned mask token
    (SimMIM), and a linear head from each final-stage token to its unit's pixels (what SimMIM's 1x1 conv and pixel
    shuffle compute); its loss is the same masked-unit MSE. Both draw one mask per batch at ratio 0.75.

    Returns:
        ``{"greenmim": s, "dense": s}``.
    """
    import statistics

    import torch
    from timm.models.swin_transformer import SwinTransformer

    from tenfold.mim.data import make_gradient_images
    from tenfold.mim.greenmim import GreenMIM, masked_pixel_loss

    enc = config.encoder
    torch.manual_seed(0)
    images = make_gradient_images(batch_size, enc.img_size, seed=5)
    green = GreenMIM(config)
    unit, grid = green.unit, green.encoder.unit_grid
    arch = {k: getattr(enc, k) for k in ("img_size", "patch_size", "embed_dim", "depths", "num_heads", "window_size")}
    dense = SwinTransformer(num_classes=0, norm_layer=torch.nn.LayerNorm, **arch)
    mask_token = torch.nn.Parameter(torch.zeros(1, 1, 1, enc.embed_dim))
    head = torch.nn.Linear(dense.num_features, unit * unit * 3)
    up = enc.img_size // enc.patch_size // grid[0]

    def green_loss(um: Any) -> torch.Tensor:
        return green(images, um).loss

    def dense_loss(um: Any) -> torch.Tensor:
        w = um.mask.view(batch_size, *grid).repeat_interleave(up, 1).repeat_interleave(up, 2).unsqueeze(-1)
        x = dense.patch_embed(images)  # (B, H, W, C)
        x = dense.norm(dense.layers(x * (1 - w) + mask_token * w))  # (B, h, w, C_final)
        return masked_pixel_loss(head(x.flatten(1, 2)), images, um.mask, unit, norm_pix=False)

    out = {}
    for name, loss_fn, params in (
        ("greenmim", green_loss, list(green.parameters())),
        ("dense", dense_loss, [*dense.parameters(), mask_token, *head.parameters()]),
    ):
        opt = torch.optim.AdamW(params, lr=1e-3, betas=(0.9, 0.95), weight_decay=0.05)
        gen = torch.Generator().manual_seed(0)
        times = []
        for i in range(warmup + steps):
            um = green.random_mask(batch_size, generator=gen)
            start = time.perf_counter()
            loss = loss_fn(um)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if i >= warmup:
                times.append(time.perf_counter() - start)
        out[name] = statistics.median(times)
    return out


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


@register_demo("greenmim", budget_s=60.0, title="GreenMIM: tiny Swin pre-training on visible patches only", threads=1)
def greenmim_demo(ctx: DemoContext) -> DemoResult:
    """Pre-train tiny GreenMIMs on smooth built-in images (official and fixed decoder order; the spec's model)."""
    from tenfold.engine.quick import quick_fit

    started = time.perf_counter()
    steps = 300 * (10 if ctx.full else 1)
    runs = [
        ("3 stages, official decoder order", TINY, True),
        ("3 stages, fixed decoder order", TINY, False),
        ("spec section 7 (4 stages, 3x3 units), official order", SPEC7, True),
    ]
    # per-step cost of GreenMIM against the dense SimMIM-style encoder, measured first, outside the budgets of runs
    timing = {id(TINY): step_times(TINY), id(SPEC7): step_times(SPEC7)}
    reserve = 4.0  # figures and the initial validation losses
    rows, histories, trained = [], {}, {}
    for i, (label, config, official) in enumerate(runs):
        data = make_data("gradients")
        left = ctx.budget_s - (time.perf_counter() - started) - reserve
        result = quick_fit(
            lambda config=config, official=official: make_task(official, config=config),
            data,
            max_steps=steps,
            val_every=25,
            out_dir=ctx.out_dir / f"run{i}",
            seed=ctx.seed,
            max_time_s=max(left / (len(runs) - i), 1.0),
        )
        start = _initial_val_loss(result.task, data, ctx.seed)
        history = [{"step": 0.0, "val/loss": start}, *result.history]
        histories[label] = history
        end = history[-1]["val/loss"]
        at100 = next((h["val/loss"] for h in history if h["step"] == 100), float("nan"))
        t = timing[id(config)]
        rows.append(
            {
                "run": label,
                "steps": result.steps,
                "seconds": round(result.seconds, 1),
                "val loss at step 0": start,
                "at step 100": at100,
                "final val loss": end,
                "final / start": end / start,
                "spec expects": SPEC7_EXPECTED if config is SPEC7 else "",
                "GreenMIM ms/step": 1000 * t["greenmim"],
                "dense SimMIM-style ms/step": 1000 * t["dense"],
            }
        )
        if config is TINY:
            trained[label.split(", ")[1]] = (result.task, data)
    curve = plot_loss_curves(histories, ctx.out_dir / "loss_curve.png")
    picture = ctx.out_dir / "reconstruction.png"
    shown = {f"prediction ({k})": task for k, (task, _) in trained.items()}
    reconstruction_figure(shown, next(iter(trained.values()))[1], picture)
    official, fixed, spec = (r["final val loss"] for r in rows)
    t_tiny, t_spec = timing[id(TINY)], timing[id(SPEC7)]
    notes = (
        "Tiny GreenMIMs on the spec's smooth synthetic images (96 px: colour + linear gradient + noise, already "
        "normalised; masked units are predictable from the visible ones), batch 16, AdamW lr 1e-3 betas (0.9, 0.95), "
        "wd 0.05, pixel MSE without per-patch normalisation, mask ratio 0.75 (one mask per batch). Validation MSE on "
        "64 held-out images with fixed masks. The 3-stage model has 4-px patches, window 3, a 16-px mask unit and 9 "
        "of 36 units visible; the spec's section-7 model has 4 stages (depths [2, 2, 2, 1]), a 32-px unit and only 2 "
        "of 9 units visible.\n\n"
        "The official decoder order (the default, kept for reproducing official numbers) places the encoder's "
        "raster-ordered visible tokens as if they were in noise order, so the decoder does not know which visible "
        f"unit is where (spec pitfall 1). On the 3-stage model it ends at {official:.3f} against {fixed:.3f} with "
        "each visible token in its own place: with 9 visible units the official order learns little beyond the "
        "image's mean colour, while the fixed order learns the gradient (see reconstruction.png: masked input, both "
        "predictions with the visible units pasted back, target).\n\n"
        f"The spec's section-7 model ends at {spec:.3f} after {rows[2]['steps']} steps (at step 100: "
        f"{rows[2]['at step 100']:.3f}); the spec states {SPEC7_EXPECTED} (measured with the official code on its "
        "own synthetic images, whose exact amplitudes are not given: E[x^2] = 1.15 there, about 1.18 here).\n\n"
        f"Time per training step (median, plain loop, 1 thread, batch 16): GreenMIM {1000 * t_tiny['greenmim']:.1f} "
        f"ms against {1000 * t_tiny['dense']:.1f} ms for the dense SimMIM-style encoder (timm Swin on all patches with "
        f"a mask token) on the 3-stage model, {1000 * t_spec['greenmim']:.1f} against {1000 * t_spec['dense']:.1f} ms "
        "on the spec's model. At this size a step is many small operations whose fixed per-call cost does not "
        "shrink with the visible tokens (the grouping itself is about 2 ms of a GreenMIM step), so the saving is "
        "far below the 4x fewer FLOPs; `tenfold bench greenmim` measures Swin-B and Swin-T at 224 px."
    )
    return DemoResult(rows=rows, plots=[curve, picture], notes=notes)


def _initial_val_loss(task: Any, data: Any, seed: int) -> float:
    """Validation loss of a freshly initialised task with the same seed (the curve's starting point)."""
    import lightning.pytorch as pl
    import torch

    pl.seed_everything(seed, verbose=False)
    config = task.model.config
    fresh = make_task(config.official_decoder_order, config=config)
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
