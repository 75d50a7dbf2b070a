"""``tenfold bench models`` and ``tenfold bench engine``: the CIFAR zoo's costs and the engine's per-step overhead.

``models``: size, multiply-adds and CPU throughput of the CIFAR model zoo, as ratios. ``engine``: the training-step
time of ``tenfold fit`` (Lightning) over a plain PyTorch loop on the tiny classification recipe.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2

from tenfold.bench import register_bench

ZOO = ("resnet8x4", "resnet20", "resnet56", "resnet110", "resnet32x4", "wrn_40_1", "wrn_40_2")
BASELINE = "resnet8x4"


@register_bench("models", "CIFAR model zoo: params, MACs at 32x32, CPU throughput; ratios against resnet8x4")
def bench_models(quick: bool, compile: bool = False) -> list[dict[str, Any]]:
    """Measure every zoo model in one run; ratios are against :data:`BASELINE` measured in the same run.

    With ``compile``, each model is also timed compiled (:func:`~tenfold.utils.compile.compile_for_inference`), in
    alternation with its eager self, and the row adds the compiled throughput and its speed-up over eager.
    """
    import timm

    import tenfold.models  # noqa: F401
    from tenfold.utils.compile import compile_for_inference
    from tenfold.utils.flops import count_flops, count_parameters
    from tenfold.utils.throughput import compare_throughput, measure_throughput

    rows = []
    for name in ZOO:
        model = timm.create_model(name, num_classes=100)
        macs = count_flops(model, torch.randn(1, 3, 32, 32)).macs
        speed = measure_throughput(model, (3, 32, 32), batch_size=64, warmup=2 if quick else 5, runs=3 if quick else 15)
        row = {
            "model": name,
            "params (M)": count_parameters(model) / 1e6,
            "MACs (M)": macs / 1e6,
            "img/s (bs64, cpu)": speed.samples_per_s,
        }
        if compile:
            pair = {"eager": model, "compiled": compile_for_inference(model)}
            both = compare_throughput(pair, (3, 32, 32), batch_size=64, rounds=2 if quick else 5, runs_per_round=3)
            row["img/s compiled"] = both["compiled"].samples_per_s
            row["compiled / eager"] = both["compiled"].samples_per_s / both["eager"].samples_per_s
        rows.append(row)
    base = next(r for r in rows if r["model"] == BASELINE)
    for row in rows:
        row["MACs ratio"] = row["MACs (M)"] / base["MACs (M)"]
        row["speed ratio"] = row["img/s (bs64, cpu)"] / base["img/s (bs64, cpu)"]
    return rows


# --------------------------------------------------------------------------------------------------------------
# engine overhead: a Lightning training step of ClassificationTask vs a plain PyTorch loop

#: The recipe the engine benchmark runs (the repository's tiny classification recipe).
TINY_RECIPE = Path(__file__).resolve().parents[3] / "configs" / "classification" / "tiny.yaml"


def _now() -> tuple[float, float]:
    """Wall-clock and process CPU seconds.

    The CPU time of a one-thread run hardly depends on what else the machine runs, so on a shared machine it
    compares two loops far more steadily than the wall clock; it includes the engine's helper threads (a progress
    bar's refresh thread), which the wall clock of the main thread would hide when a core is free.
    """
    return time.perf_counter(), time.process_time()


class StepClock(pl.Callback):
    """Record wall and CPU time (:func:`_now`) at the start of every training batch (after it was fetched)."""

    def __init__(self) -> None:
        self.stamps: list[tuple[float, float]] = []

    def on_train_batch_start(  # noqa: D102
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self.stamps.append(_now())

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:  # noqa: D102
        self.stamps.append(_now())


def _seconds_per_step(stamps: list[float], skip: int) -> float:
    """Mean seconds per step after ``skip`` warm-up steps: periodic costs (logging every n steps) count in full."""
    if len(stamps) - 1 <= skip:
        raise ValueError(f"need more than {skip} timed steps, got {len(stamps) - 1}")
    return (stamps[-1] - stamps[skip]) / (len(stamps) - 1 - skip)


def _per_step(stamps: list[tuple[float, float]], skip: int) -> tuple[float, float]:
    """(wall, CPU) seconds per step of :func:`_now` stamps."""
    return _seconds_per_step([w for w, _ in stamps], skip), _seconds_per_step([c for _, c in stamps], skip)


def _recipe(path: Path) -> dict[str, Any]:
    import yaml

    if not path.is_file():
        raise FileNotFoundError(f"the engine benchmark runs the recipe {path}, which does not exist (run it from a "
                                "checkout of the repository)")  # fmt: skip
    return yaml.safe_load(path.read_text())


def lightning_seconds_per_step(
    steps: int, out_dir: Path, skip: int = 5, extra_args: tuple[str, ...] = (), recipe: Path = TINY_RECIPE
) -> tuple[float, float]:
    """``tenfold fit`` of ``recipe`` (in process, the CLI's loggers, callbacks and progress bar) for ``steps`` steps.

    Validation and periodic checkpoints are switched off (the plain loop has neither); the final checkpoint is
    written after the last timed step. ``extra_args`` are further command-line overrides.

    Returns:
        Wall-clock and process CPU seconds per step.
    """
    from tenfold.engine.lightning_cli import run_lightning_cli

    args = ["fit", "--config", str(recipe), "--trainer.max_steps", str(steps), "--trainer.max_epochs", "-1",
            "--trainer.limit_val_batches", "0", "--trainer.num_sanity_val_steps", "0",
            "--checkpoint.every_n_train_steps", str(10 * steps), "--run_dir", str(out_dir),
            "--trainer.callbacks+=tenfold.classification.bench.StepClock", *extra_args]  # fmt: skip
    cli = run_lightning_cli(args)
    clock = next(c for c in cli.trainer.callbacks if isinstance(c, StepClock))
    return _per_step(clock.stamps, skip)


def plain_seconds_per_step(steps: int, skip: int = 5, recipe: Path = TINY_RECIPE) -> tuple[float, float]:
    """Seconds per step of a plain PyTorch loop on the model, data, optimiser and schedule of ``recipe``.

    The data module's augmentation and normalisation are applied as in training; each step is forward,
    cross-entropy, backward, optimiser step and scheduler update.

    Returns:
        Wall-clock and process CPU seconds per step.
    """
    import torch.nn.functional as F

    from tenfold.classification.task import ClassificationTask
    from tenfold.data.datamodules import ClassificationData
    from tenfold.engine.optim import OptimConfig
    from tenfold.utils.config import config_from

    cfg = _recipe(recipe)
    pl.seed_everything(cfg.get("seed_everything", 0), verbose=False)
    model_args = cfg["model"]["init_args"]
    task = ClassificationTask(**model_args)
    data = ClassificationData(**cfg["data"]["init_args"])
    data.setup("fit")
    loader = data.train_dataloader()
    model = task.model.train()
    optim = config_from(OptimConfig, model_args.get("optim")) or OptimConfig()
    updates_per_epoch = len(loader)
    optimizer = create_optimizer_v2(model, opt=optim.opt, lr=optim.lr, weight_decay=optim.weight_decay,
                                    momentum=optim.momentum, filter_bias_and_bn=optim.filter_bias_and_bn)  # fmt: skip
    scheduler, _ = create_scheduler_v2(optimizer, sched=optim.sched, num_epochs=steps / updates_per_epoch,
                                       warmup_epochs=optim.warmup_epochs, warmup_lr=optim.warmup_lr,
                                       min_lr=optim.min_lr, step_on_epochs=False,
                                       updates_per_epoch=updates_per_epoch)  # fmt: skip
    mean, std = data.mean, data.std
    stamps: list[tuple[float, float]] = []
    step, epoch = 0, 0
    while step < steps:
        loader.sampler.set_epoch(epoch)
        for images, labels, index in loader:
            stamps.append(_now())
            images = data._crop_flip(images, index, epoch)  # what the data module's on_after_batch_transfer does
            images = (images - mean) / std
            loss = F.cross_entropy(model(images), labels, label_smoothing=task.label_smoothing)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step += 1
            scheduler.step_update(num_updates=step)
            if step == steps:
                break
        epoch += 1
    stamps.append(_now())
    return _per_step(stamps, skip)


#: Lightning runs of the engine benchmark's ``variants``: name -> extra command-line overrides.
ENGINE_VARIANTS: dict[str, tuple[str, ...]] = {
    "  without progress bar": ("--trainer.enable_progress_bar", "false"),
    "  without progress bar and loggers": ("--trainer.enable_progress_bar", "false", "--trainer.logger", "false"),
}
PLAIN = "plain PyTorch loop"
LIGHTNING = "tenfold fit (Lightning)"


def engine_overhead_rows(
    quick: bool = False, steps: int | None = None, rounds: int | None = None, variants: bool = False
) -> list[dict[str, Any]]:
    """Seconds per training step of ``tenfold fit`` on the tiny recipe vs a plain PyTorch loop, on one thread.

    Each round trains both from the same seed for ``steps`` steps (Lightning first, then plain, the order reversed
    every other round); the table gives, for process CPU time and for wall-clock time, the median over rounds of each
    loop's mean seconds per step (after 5 warm-up steps) and the overhead ``lightning / plain - 1``. CPU time is the
    steadier measure on a shared machine. With ``variants`` the Lightning run is repeated with parts of the engine
    switched off (:data:`ENGINE_VARIANTS`), to show where the overhead goes.
    """
    import statistics
    import tempfile

    steps = steps or (20 if quick else 60)
    rounds = rounds or (1 if quick else 3)
    runs: dict[str, tuple[str, ...]] = {LIGHTNING: (), **(ENGINE_VARIANTS if variants else {})}
    times: dict[str, list[tuple[float, float]]] = {PLAIN: [], **{name: [] for name in runs}}
    old_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for r in range(rounds):
                order = [PLAIN, *runs] if r % 2 else [*runs, PLAIN]
                for i, name in enumerate(order):
                    if name == PLAIN:
                        times[name].append(plain_seconds_per_step(steps))
                    else:
                        out = Path(tmp) / f"round{r}-run{i}"
                        times[name].append(lightning_seconds_per_step(steps, out, extra_args=runs[name]))
    finally:
        torch.set_num_threads(old_threads)
    plain_wall = statistics.median(w for w, _ in times[PLAIN])
    plain_cpu = statistics.median(c for _, c in times[PLAIN])
    rows = []
    for name, values in times.items():
        wall = statistics.median(w for w, _ in values)
        cpu = statistics.median(c for _, c in values)
        rows.append({"loop": name, "CPU ms / step": 1e3 * cpu, "CPU overhead %": 100 * (cpu / plain_cpu - 1),
                     "wall ms / step": 1e3 * wall, "wall overhead %": 100 * (wall / plain_wall - 1),
                     "rounds": len(values), "steps": steps})  # fmt: skip
    return rows


@register_bench("engine", "tenfold fit (Lightning) vs a plain PyTorch loop on the tiny classification recipe, 1 thread")
def bench_engine(quick: bool) -> list[dict[str, Any]]:
    """The engine's per-step overhead (see :func:`engine_overhead_rows`), with the progress-bar / logger variants."""
    return engine_overhead_rows(quick, variants=True)
