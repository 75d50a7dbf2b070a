"""Demo ``classification``: the baseline task on built-in scenes and on scikit-learn's digits.

It also backs the difficulty claim of the built-in generator: a small CNN trained briefly must stay clearly below a
bigger model trained longer on the same data, otherwise distillation and architecture choices could not show.
"""

from __future__ import annotations

from dataclasses import dataclass

from tenfold.engine.demo import DemoContext, DemoResult, plot_curves, register_demo, top1_curve


@dataclass(frozen=True)
class _Run:
    label: str
    dataset: str
    model: str
    steps: int
    lr: float = 0.1


#: Settings shared with the distillation demo (same data, so the bigger model can serve as its teacher).
BUILTIN = {"dataset": "builtin", "num_classes": 10, "train_size": 5000, "val_size": 1000, "batch_size": 64,
           "eval_batch_size": 500}  # fmt: skip
TEACHER_KEY = "classification/builtin10/resnet20"


def train(run: _Run, ctx: DemoContext, seed: int):
    """Train one classifier of the demo; returns the task and its :class:`~tenfold.engine.quick.QuickRun`."""
    from tenfold.classification import ClassificationTask
    from tenfold.data.datamodules import ClassificationData
    from tenfold.engine.optim import OptimConfig
    from tenfold.engine.quick import quick_fit

    data = ClassificationData(**{**BUILTIN, "dataset": run.dataset})

    def make_task() -> ClassificationTask:
        optim = OptimConfig(opt="momentum", lr=run.lr, sched="cosine")
        return ClassificationTask(model=run.model, num_classes=10, optim=optim)

    result = quick_fit(
        make_task, data, max_steps=run.steps, val_every=max(10, run.steps // 5),
        out_dir=ctx.out_dir / f"{run.model}-{run.dataset}-{seed}", seed=seed, max_time_s=ctx.budget_s,
    )  # fmt: skip
    return result.task, result


def teacher_run(ctx: DemoContext) -> _Run:
    """The bigger model trained longer: the classification demo's reference and the distillation teacher."""
    return _Run("bigger CNN, longer (resnet20)", "builtin", "resnet20", 400 * (10 if ctx.full else 1))


@register_demo(
    "classification", budget_s=100.0, title="Classification baseline (built-in scenes, digits)", group="classification"
)
def classification_demo(ctx: DemoContext) -> DemoResult:
    """Train a small CNN briefly and a bigger one longer on built-in scenes, and a small CNN on digits."""
    import torch

    from tenfold.utils.flops import count_flops, count_parameters

    scale = 10 if ctx.full else 1
    runs = [
        _Run("small CNN, short (resnet8)", "builtin", "resnet8", 150 * scale),
        teacher_run(ctx),
        _Run("small CNN on digits (resnet8)", "digits", "resnet8", 100 * scale),
    ]
    rows, histories = [], {}
    for run in runs:
        task, result = train(run, ctx, ctx.seed)
        if run == teacher_run(ctx):
            ctx.shared[TEACHER_KEY] = (task.model.state_dict(), result.final["val/acc1"])
        histories[run.label] = result.history
        rows.append(
            {
                "run": run.label,
                "data": run.dataset,
                "params (M)": count_parameters(task.model) / 1e6,
                "MACs (M)": count_flops(task.model, torch.randn(1, 3, 32, 32)).macs / 1e6,
                "steps": result.steps,
                "seconds": round(result.seconds, 1),
                "val top-1 (%)": 100 * result.final["val/acc1"],
            }
        )
    plot = ctx.out_dir / "val_top1.png"
    plot_curves({label: top1_curve(h) for label, h in histories.items()}, plot)
    small, big = rows[0]["val top-1 (%)"], rows[1]["val top-1 (%)"]
    verdict = "clearly below" if big - small >= 5 else "NOT clearly below"
    notes = (
        f"On the built-in 10-class scenes (5000 training images, batch 64, seed {ctx.seed}) the small CNN trained "
        f"briefly reaches {small:.1f} % and stays {verdict} the bigger model trained longer ({big:.1f} %, "
        f"{big - small:+.1f} points), so the data leaves room for distillation and architecture choices to show. "
        "Digits is the one real dataset that ships offline (scikit-learn, 8x8 upsampled to 32x32)."
    )
    return DemoResult(rows=rows, plots=[plot], notes=notes)
