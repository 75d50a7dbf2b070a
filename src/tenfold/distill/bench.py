"""``tenfold bench diffkd``: what DiffKD costs on top of KD, as ratios measured in the same run.

* Extra parameters and multiply-adds of the DiffKD blocks of the official ResNet-34 -> ResNet-18 integration (the
  feature block on ``layer4``, 512 -> 512 channels with a 1024-channel autoencoder at 7x7, and the logits block on
  ``fc``), next to the spec's numbers (7.64 M parameters and about 1.11 G multiply-adds per image for the feature
  block).
* Training-step time of a ResNet-18 student distilled from a ResNet-34 with the DiffKD feature block, and with the
  full recipe (feature + logits blocks), over the same student with KD only, on the same batch (224 px, batch 8,
  one thread, the setting of issue 18). tenfold's fast execution (the default) and its reference execution
  (``fast=False``, the official sequence of operations) are timed in alternating rounds in one process, with the
  official code too when ``--official PATH`` is given. Memory is the size of the distinct non-parameter tensors
  autograd saves for the backward pass.
* With ``--official PATH``: the official ``DiffKD`` module loaded with the same weights as tenfold's, the largest
  differences of their outputs (same inputs, same seed), and its step time side by side. PATH is a checkout of
  ``hunto/DiffKD`` (the standalone ``diffkd.py``, ``diffkd_modules.py``, ``scheduling_ddim.py`` of commits
  2393a4a..5367f44), of ``hunto/image_classification_sota`` (``lib/models/losses/diffkd``), or of ``hunto/DiffKD``
  with its ``classification`` submodule.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from tenfold.bench import import_official, register_bench
from tenfold.utils.throughput import alternate_times, saved_tensor_bytes

REPO = "hunto/DiffKD"
STANDALONE_FILES = ("diffkd.py", "diffkd_modules.py", "scheduling_ddim.py")
FRAMEWORK_DIR = Path("lib/models/losses")


def import_official_diffkd(root: str | Path | None) -> tuple[ModuleType, str]:
    """Import the official ``diffkd`` module from a checkout, whichever of its two layouts it has.

    Args:
        root: the checkout (``None``: none given).

    Returns:
        The module and its layout: ``"standalone"`` (returns ``(refined, ddim, target, rec)``) or
        ``"framework"`` (the classification framework's copy, returns ``(refined, target, ddim, rec)``).

    Raises:
        OfficialCodeMissing: no folder, a folder without either layout, or a failed import (see
            :func:`tenfold.bench.import_official`).
    """
    path = None if root is None else Path(root).expanduser()
    base, module, layout, expect = path, "diffkd", "standalone", list(STANDALONE_FILES)
    if path is not None and not (path / "diffkd.py").exists():
        for sub in (FRAMEWORK_DIR, Path("classification") / FRAMEWORK_DIR):
            if (path / sub / "diffkd" / "__init__.py").exists():
                base, layout = path / sub, "framework"
                expect = ["diffkd/__init__.py"] + [f"diffkd/{f}" for f in STANDALONE_FILES]
                break
    # a module of that name imported from elsewhere (another checkout) must not be reused
    for name in ("diffkd", "diffkd_modules", "scheduling_ddim"):
        loaded = sys.modules.get(name)
        if loaded is not None and base is not None and not str(getattr(loaded, "__file__", "")).startswith(str(base)):
            del sys.modules[name]
    return import_official(base, module, repo=REPO, expect=expect), layout


class OfficialDiffKDTerm(nn.Module):
    """The official ``DiffKD`` block as a distillation term: ``kd + ddim (+ rec)``, as the official ``KDLoss`` sums.

    Args:
        block: an official ``DiffKD`` instance.
        kind: ``"feature"`` (MSE to the target) or ``"logits"`` ((B, K) inputs, tau^2 KL batchmean, tau 1).
        layout: ``"standalone"`` or ``"framework"`` (their return orders differ).
    """

    def __init__(self, block: nn.Module, kind: str, layout: str) -> None:
        super().__init__()
        self.block, self.kind, self.layout = block, kind, layout

    def outputs(self, student: torch.Tensor, teacher: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``(refined, target, ddim, rec, kd, total)`` of one forward."""
        if self.kind == "logits":
            student, teacher = student[..., None, None], teacher[..., None, None]
        out = self.block(student, teacher)
        refined, target, ddim, rec = (out[0], out[2], out[1], out[3]) if self.layout == "standalone" else out
        if self.kind == "feature":
            kd = F.mse_loss(refined, target)
        else:
            p_t = F.softmax(target.flatten(1), dim=1)
            kd = F.kl_div(F.log_softmax(refined.flatten(1), dim=1), p_t, reduction="batchmean")
        total = kd + ddim + (rec if rec is not None else 0)
        return refined, target, ddim, rec, kd, total

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        """Scalar ``kd + ddim (+ rec)``."""
        return self.outputs(student, teacher)[-1]


def _compare_outputs(official: ModuleType, layout: str, batch: int, size: int) -> list[dict[str, Any]]:
    """Ours (fast and reference) vs the official block, same weights, inputs and seed: largest differences."""
    from tenfold.distill import DiffKDLoss

    rows = []
    hw = max(size // 32, 1)
    for kind, shape, ours_kw, off_kw in (
        ("feature", (batch, 512, hw, hw), {"use_ae": True, "ae_channels": 1024}, {"kernel_size": 3, "use_ae": True,
                                                                                  "ae_channels": 1024}),
        ("logits", (batch, 1000), {}, {"kernel_size": 1, "use_ae": False}),
    ):  # fmt: skip
        torch.manual_seed(0)
        off = OfficialDiffKDTerm(official.DiffKD(shape[1], shape[1], **off_kw), kind, layout).train()
        state = off.block.state_dict()
        generator = torch.Generator().manual_seed(1)
        student, teacher = torch.randn(shape, generator=generator), torch.randn(shape, generator=generator)
        results = {}
        for name, fast in (("official", None), ("tenfold", True), ("tenfold reference", False)):
            if fast is not None:
                module = DiffKDLoss(shape[1], shape[1], kind=kind, proj_norm="proj.weight" not in state, fast=fast,
                                    **ours_kw).train()  # fmt: skip
                module.load_state_dict(state, strict=True)
            x = student.clone().requires_grad_(True)
            torch.manual_seed(2)
            if fast is None:
                refined, _, ddim, _, kd, total = off.outputs(x, teacher)
            else:
                parts = module.forward_parts(x, teacher)
                kd, ddim, total = parts.kd, parts.ddim, parts.total
            total.backward()
            results[name] = {"kd": kd.detach(), "ddim": ddim.detach(), "total": total.detach(), "grad": x.grad}
        ref = results["official"]
        for name in ("tenfold", "tenfold reference"):
            got = results[name]
            scale = ref["grad"].abs().max().item()
            rows.append({
                "block": f"{kind} ({'x'.join(map(str, shape))})", "vs official": name,
                "max |d total loss|": abs(got["total"] - ref["total"]).item(),
                "max |d kd|": abs(got["kd"] - ref["kd"]).item(), "max |d ddim|": abs(got["ddim"] - ref["ddim"]).item(),
                "max |d student grad| / scale": (got["grad"] - ref["grad"]).abs().max().item() / scale,
            })  # fmt: skip
    return rows


@register_bench("diffkd", "DiffKD over KD: extra params/MACs (R34->R18 blocks) and step time ratios, ours vs official")
def bench_diffkd(quick: bool, official: Path | None = None) -> dict[str, list[dict[str, Any]]]:
    """Measure the DiffKD blocks and KD-vs-DiffKD training steps (ResNet-34 -> ResNet-18, 224 px, batch 8, 1 thread).

    Args:
        quick: batch 2 at 64 px, 2 rounds (a smoke run; its numbers mean little).
        official: a checkout of the official code (see the module docstring) to compare and time side by side.

    Raises:
        OfficialCodeMissing: ``official`` given but not importable (raised before anything is measured).
    """
    import tenfold.models  # noqa: F401
    from tenfold.distill import DiffKDLoss, DistillationTask, DistillTerm, KDLoss
    from tenfold.utils.flops import count_flops, count_parameters

    off_module, layout = import_official_diffkd(official) if official is not None else (None, "")
    batch, size, rounds = (2, 64, 2) if quick else (8, 224, 5)
    old_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        tables: dict[str, list[dict[str, Any]]] = {}
        feature = DiffKDLoss(512, 512, kind="feature", use_ae=True, ae_channels=1024).eval()
        logits = DiffKDLoss(1000, 1000, kind="logits", tau=1.0).eval()
        with torch.random.fork_rng():
            feature_macs = count_flops(feature, (torch.randn(1, 512, 7, 7), torch.randn(1, 512, 7, 7))).macs
            logits_macs = count_flops(logits, (torch.randn(1, 1000), torch.randn(1, 1000))).macs
        tables["DiffKD blocks (R34 -> R18 integration)"] = [
            {"what": "feature block (512->512, AE 1024, 7x7)", "params (M)": count_parameters(feature) / 1e6,
             "MACs / image (G)": feature_macs / 1e9, "spec": "7.64 M, ~1.11 G"},
            {"what": "logits block (1000 classes)", "params (M)": count_parameters(logits) / 1e6,
             "MACs / image (G)": logits_macs / 1e9, "spec": "23.32 M"},
        ]  # fmt: skip
        del feature, logits

        generator = torch.Generator().manual_seed(0)
        images = torch.randn(batch, 3, size, size, generator=generator)
        labels = torch.randint(0, 1000, (batch,), generator=generator)
        common = {"student": "resnet18", "teacher": "resnet34", "num_classes": 1000, "allow_random_teacher": True,
                  "input_size": (3, 64, 64)}  # fmt: skip

        def feature_term(impl: str) -> DistillTerm:
            return DistillTerm(_block(impl, "feature"), student="layer4", teacher="layer4", name="diffkd_feature")

        def logits_term(impl: str) -> DistillTerm:
            return DistillTerm(_block(impl, "logits"), name="diffkd_logits")

        def _block(impl: str, kind: str) -> nn.Module:
            kw = {"use_ae": True, "ae_channels": 1024} if kind == "feature" else {}
            ours = DiffKDLoss(512 if kind == "feature" else 1000, 512 if kind == "feature" else 1000, kind=kind,
                              fast=impl != "tenfold reference", **kw)  # fmt: skip
            if impl != "official":
                return ours
            off_kw = (
                {"kernel_size": 3, "use_ae": True, "ae_channels": 1024} if kind == "feature" else {"kernel_size": 1}
            )
            block = off_module.DiffKD(ours.student_channels, ours.teacher_channels, **off_kw)
            if "proj.weight" not in block.state_dict():
                block.load_state_dict(ours.state_dict(), strict=True)
            return OfficialDiffKDTerm(block, kind, layout)

        impls = ["tenfold", "tenfold reference"] + (["official"] if off_module is not None else [])
        tasks = {"KD (tau 4)": DistillationTask(**common, terms=[DistillTerm(KDLoss(tau=4.0))])}
        for impl in impls:
            tasks[f"DiffKD feature, {impl}"] = DistillationTask(**common, terms=[feature_term(impl)])
        for impl in impls:
            tasks[f"DiffKD feature + logits, {impl}"] = DistillationTask(
                **common, terms=[feature_term(impl), logits_term(impl)]
            )

        def make_step(task: DistillationTask) -> Callable[[], None]:
            task.train()
            optimizer = torch.optim.SGD([p for p in task.parameters() if p.requires_grad], lr=1e-3)

            def step() -> None:
                optimizer.zero_grad(set_to_none=True)
                loss, _, _ = task.compute_loss(images, labels)
                loss.backward()
                optimizer.step()

            return step

        medians = alternate_times({name: make_step(task) for name, task in tasks.items()}, rounds)
        base = medians["KD (tau 4)"]
        rows = []
        for name, task in tasks.items():
            memory, _ = saved_tensor_bytes(lambda t=task: t.compute_loss(images, labels), task.parameters())
            row = {"step": name, "step (s)": medians[name], "time ratio vs KD": medians[name] / base,
                   "saved activations (MiB)": memory / 2**20}  # fmt: skip
            if off_module is not None and name != "KD (tau 4)":
                recipe = name.rsplit(", ", 1)[0]
                row["time vs official"] = medians[name] / medians[f"{recipe}, official"]
            rows.append(row)
        title = f"train step, R34 -> R18, batch {batch}, {size} px, 1 thread, median of {rounds} alternating rounds"
        tables[title] = rows
        if off_module is not None:
            tables["outputs vs official (same weights, inputs and seed; float32)"] = _compare_outputs(
                off_module, layout, max(batch, 8), size
            )
        return tables
    finally:
        torch.set_num_threads(old_threads)
