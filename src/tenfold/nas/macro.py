"""A NAS-Bench-Macro-style space built as real modules, scored by actually training each proposal.

The network is :class:`~tenfold.models.nas_macro.MacroNet` (timm's ``nas_macro_cifar``, registered by ``import
tenfold.models``), the NAS-Bench-Macro layout that GINAS searches (arXiv:2304.10970, section 4.1): a 3x3 stem,
searchable layers with fixed channels and strides, each one of three operations (0 identity, 1 inverted residual
e3 k3, 2 inverted residual e6 k5), and a 1x1 head convolution, global pooling and a linear classifier.

The layer list, the widths (``width_mult``) and the data are the user's choice; :class:`TrainedMacroSpace` scores
an answer by training the model with tenfold's classification task (:class:`~tenfold.classification.task.
ClassificationTask` through :func:`~tenfold.engine.quick.quick_fit`) and returns its validation top-1 accuracy.
Its task description is :func:`tenfold.nas.prompts.macro_task`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tenfold.models.nas_macro import MACRO_LAYERS, MacroNet, make_op
from tenfold.nas.prompts import macro_task
from tenfold.nas.spaces import Evaluation, SearchSpace

__all__ = ["MACRO_LAYERS", "MacroNet", "TrainedMacroSpace", "make_op"]


class TrainedMacroSpace(SearchSpace):
    """A macro space whose answers are scored by training: validation top-1 (%) after a short run.

    Args:
        data_factory: builds the LightningDataModule for each run (same data every time).
        layers: ``(in, out, stride)`` per searchable layer (default NAS-Bench-Macro's 8).
        stem_chs: stem width; head_chs: head width (before ``width_mult``).
        width_mult: channel multiplier of the trained networks.
        num_classes: classes of the data.
        max_steps: optimiser steps per training run.
        lr: SGD learning rate (momentum 0.9, cosine schedule).
        seed: training seed (the same for every architecture, so differences come from the architecture).
        out_dir: folder for the runs' logs, one subfolder ``NNN-<key>`` per training. An existing subfolder (an
            earlier run, or a resumed search in the same folder) is never reused: the new one gets a suffix
            ``-2``, ``-3``...
        dataset: the data in words, for the prompt.
        max_time_s: wall-clock cap of one run.
    """

    name = "trained-macro"

    def __init__(
        self,
        data_factory: Callable[[], Any],
        layers: Sequence[Sequence[int]] = MACRO_LAYERS,
        stem_chs: int = 32,
        head_chs: int = 1280,
        width_mult: float = 1.0,
        num_classes: int = 10,
        max_steps: int = 200,
        lr: float = 0.1,
        seed: int = 0,
        out_dir: str | Path = "runs/nas-trained",
        dataset: str = "the user's image data",
        max_time_s: float | None = None,
    ) -> None:
        self.layers = [tuple(int(v) for v in lay) for lay in layers]
        MacroNet(
            ops=(0,) * len(self.layers), layers=self.layers, stem_chs=stem_chs, head_chs=head_chs, width_mult=0.05
        )  # fmt: skip  (fails now, not after a search started, if layers do not chain)
        self.choices = ((0, 1, 2),) * len(self.layers)
        self.data_factory = data_factory
        self.model_kwargs = {"layers": self.layers, "stem_chs": stem_chs, "head_chs": head_chs,
                             "width_mult": width_mult}  # fmt: skip
        self.num_classes = num_classes
        self.max_steps = max_steps
        self.lr = lr
        self.seed = seed
        self.out_dir = Path(out_dir)
        self.max_time_s = max_time_s
        self.task_prompt = macro_task(self.layers, stem_chs, head_chs, dataset)
        self.runs = 0

    def key(self, answer: Sequence[int]) -> str:  # noqa: D102
        return "".join(str(v) for v in self.validate(answer))

    def _fresh_run_dir(self, answer: Sequence[int]) -> Path:
        """``out_dir/NNN-<key>``, or with the first suffix ``-2``, ``-3``... that names no existing folder."""
        base = self.out_dir / f"{self.runs:03d}-{self.key(answer)}"
        path, n = base, 1
        while path.exists():
            n += 1
            path = base.with_name(f"{base.name}-{n}")
        return path

    def evaluate(self, answer: Sequence[int]) -> Evaluation:
        """Train the network of ``answer`` for ``max_steps`` steps; validation top-1 in percent.

        ``info`` holds the parameter count, the steps run, the seconds and ``run_dir``, the run's log folder (a new
        one: an existing folder is never written into).
        """
        from tenfold.classification import ClassificationTask
        from tenfold.engine.optim import OptimConfig
        from tenfold.engine.quick import quick_fit
        from tenfold.utils.flops import count_parameters

        answer = self.validate(answer)
        kwargs = {**self.model_kwargs, "ops": list(answer)}

        def make_task() -> ClassificationTask:
            optim = OptimConfig(opt="momentum", lr=self.lr, sched="cosine")
            return ClassificationTask(model="nas_macro_cifar", num_classes=self.num_classes, model_kwargs=kwargs,
                                      optim=optim)  # fmt: skip

        start = time.perf_counter()
        run_dir = self._fresh_run_dir(answer)
        run_dir.mkdir(parents=True)  # claimed now: fails rather than share a folder with a concurrent run
        run = quick_fit(make_task, self.data_factory(), max_steps=self.max_steps, val_every=self.max_steps,
                        out_dir=run_dir, seed=self.seed, max_time_s=self.max_time_s)  # fmt: skip
        self.runs += 1
        acc = 100.0 * run.final["val/acc1"]
        info = {"params": count_parameters(run.task.model), "steps": run.steps,
                "seconds": round(time.perf_counter() - start, 2), "run_dir": str(run_dir)}  # fmt: skip
        return Evaluation(acc=acc, report_acc=acc, rank=None, info=info)
