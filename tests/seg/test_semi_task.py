"""Fast checks of the semi-supervised segmentation task (tiny PRCL DeepLabV3+, 32x32 images)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tenfold.engine.optim import OptimConfig
from tenfold.seg.prcl import PRCLDeepLabV3Plus, ema_update_
from tenfold.seg.semi import SemiSupervisedSegTask
from tenfold.seg.task import SegmentationTask


def tiny_model(seed: int = 0) -> PRCLDeepLabV3Plus:
    torch.manual_seed(seed)
    return PRCLDeepLabV3Plus(
        num_classes=3,
        backbone="resnet18",
        output_stride=16,
        atrous_rates=(1, 2, 3),
        aspp_channels=16,
        low_channels=8,
        decoder_channels=16,
        representation_dim=8,
    )


def batch(seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(2, 3, 32, 32, generator=g)
    labels = torch.randint(0, 3, (2, 32, 32), generator=g)
    labels[:, :2] = 255
    return {"labelled": (images, labels), "unlabelled": torch.rand(2, 3, 32, 32, generator=g)}


def test_bad_method_and_eval_settings_are_named() -> None:
    with pytest.raises(ValueError, match="method must be one of"):
        SemiSupervisedSegTask(tiny_model(), method="fixmatch")
    with pytest.raises(ValueError, match="eval_model"):
        SemiSupervisedSegTask(tiny_model(), eval_model="teacher")
    with pytest.raises(ValueError, match="eval_crop"):
        SemiSupervisedSegTask(tiny_model(), eval_mode="random_crop")


def test_uncertainty_head_has_its_own_lr_group_and_teacher_is_not_optimised() -> None:
    task = SemiSupervisedSegTask(tiny_model(), method="prcl", optim=OptimConfig(opt="sgd", lr=3.2e-3, sched="none"))
    opt = task.configure_optimizers()
    head = {id(p) for p in task.uncertainty_head.parameters()}
    teacher = {id(p) for p in task.ema.parameters()}
    groups = [{id(p) for p in g["params"]} for g in opt.param_groups]
    head_groups = [g for g, ids in zip(opt.param_groups, groups, strict=True) if ids & head]
    assert len(head_groups) == 1 and {id(p) for p in head_groups[0]["params"]} == head
    assert head_groups[0]["lr"] == 5e-5
    assert all(g["lr"] == pytest.approx(3.2e-3) for g in opt.param_groups if g is not head_groups[0])
    assert not any(ids & teacher for ids in groups)


def test_ema_step_zero_copies_student() -> None:
    task = SemiSupervisedSegTask(tiny_model(), method="mean_teacher")
    with torch.no_grad():
        for p in task.model.parameters():
            p.add_(1.0)
    decay = ema_update_(task.ema, task.model, 0)
    assert decay == 0.0
    for t, s in zip(task.ema.parameters(), task.model.parameters(), strict=True):
        assert torch.equal(t, s)


def test_supervised_equals_segmentation_task_ce() -> None:
    b = batch()
    semi = SemiSupervisedSegTask(tiny_model(), method="supervised")
    base = SegmentationTask(tiny_model(), aux_weight=0.0)
    semi.train(), base.train()
    loss = semi.training_step(b, 0)
    images, labels = b["labelled"]
    x = (images - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor([0.229, 0.224, 0.225]).view(
        1, 3, 1, 1
    )
    expected, _, _ = base.compute_loss(x, labels)
    assert torch.allclose(loss, expected, atol=1e-6)
    assert semi.ema is None and semi.uncertainty_head is None


def test_eval_uses_ema_teacher_by_default() -> None:
    task = SemiSupervisedSegTask(tiny_model(), method="mean_teacher").eval()
    with torch.no_grad():
        for p in task.ema.parameters():
            p.mul_(0.5)
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        ema_logits = F.interpolate(task.ema(x).logits, size=(32, 32), mode="bilinear", align_corners=True)
        student_logits = task.model.predict(x) if hasattr(task.model, "predict") else None
        got = task.predict_logits(x)
    assert torch.allclose(got, ema_logits, atol=1e-6)
    assert student_logits is None or not torch.allclose(got, student_logits)
    task.eval_model = "student"
    with torch.no_grad():
        assert not torch.allclose(task.predict_logits(x), ema_logits)


def test_prcl_step_gives_gradients_to_student_and_head_not_teacher() -> None:
    task = SemiSupervisedSegTask(
        tiny_model(), method="prcl", un_threshold=0.0, weak_threshold=0.0, num_queries=8, num_negatives=16
    ).train()
    loss = task.training_step(batch(), 0)
    loss.backward()
    assert all(p.grad is None for p in task.ema.parameters())
    assert task.uncertainty_head.fc1.grad is not None and task.uncertainty_head.fc1.grad.abs().sum() > 0
    assert task.model.representation[3].weight.grad.abs().sum() > 0


def test_prcl_term_weight_follows_rampdown() -> None:
    task = SemiSupervisedSegTask(
        tiny_model(), method="prcl", un_threshold=0.0, weak_threshold=0.0, num_queries=8, num_negatives=16
    ).train()
    b = batch(1)
    images_l, labels_l = b["labelled"]
    for epoch, weight in ((0, 1.0), (100, 0.2865047968601901), (250, 0.0)):
        parts: dict = {}
        total = task._semi_loss(task.normalize(images_l), labels_l, b["unlabelled"], epoch, parts)
        assert float(parts["prcl_weight"]) == pytest.approx(weight, rel=1e-6)
        assert float(total.detach()) == pytest.approx(
            float(parts["ce"] + parts["unsup"] + weight * parts["prcl"]), rel=1e-5
        )
        assert float(parts["prcl"]) > 0


class _Pairs(torch.utils.data.Dataset):
    """Two fixed labelled + unlabelled samples: one batch per epoch, the same every epoch."""

    def __len__(self) -> int:
        return 2

    def __getitem__(self, i: int) -> dict:
        b = batch(10 + i)
        return {"labelled": (b["labelled"][0][0], b["labelled"][1][0]), "unlabelled": b["unlabelled"][0]}


def _fit(task: SemiSupervisedSegTask, steps: int, root, ckpt: str | None = None) -> None:
    import lightning.pytorch as pl

    trainer = pl.Trainer(
        max_steps=steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        default_root_dir=str(root),
        accelerator="cpu",
    )
    trainer.fit(task, train_dataloaders=torch.utils.data.DataLoader(_Pairs(), batch_size=2), ckpt_path=ckpt)
    if ckpt is None:
        trainer.save_checkpoint(str(root / "mid.ckpt"))


def test_resume_restores_ema_teacher(tmp_path) -> None:
    def make() -> SemiSupervisedSegTask:
        return SemiSupervisedSegTask(
            tiny_model(), method="prcl", un_threshold=0.0, weak_threshold=0.0, num_queries=4, num_negatives=8
        )

    full = make()
    _fit(full, 3, tmp_path / "a")
    first = make()
    _fit(first, 2, tmp_path / "b")
    resumed = make()
    _fit(resumed, 3, tmp_path / "c", ckpt=str(tmp_path / "b" / "mid.ckpt"))
    assert not torch.equal(next(full.ema.parameters()), next(make().ema.parameters()))
    for (name, a), b in zip(full.ema.state_dict().items(), resumed.ema.state_dict().values(), strict=True):
        assert torch.allclose(a, b, atol=1e-6), name
    for a, b in zip(full.uncertainty_head.parameters(), resumed.uncertainty_head.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-6)


CONFIGS = __import__("pathlib").Path(__file__).resolve().parents[2] / "configs" / "prcl"


def _model_section(name: str) -> SemiSupervisedSegTask:
    import yaml
    from jsonargparse import ArgumentParser

    parser = ArgumentParser()
    parser.add_argument("--model", type=SemiSupervisedSegTask)
    config = parser.parse_object({"model": yaml.safe_load((CONFIGS / name).read_text())["model"]})
    return parser.instantiate_classes(config).model


def test_voc_recipe_model_section_matches_the_official_build() -> None:
    task = _model_section("voc_prcl_r101_662.yaml")
    assert sum(p.numel() for p in task.model.parameters()) == 59_520_693  # spec section 4, official classes
    assert sum(p.numel() for p in task.uncertainty_head.parameters()) == 143_874
    assert (task.un_threshold, task.weak_threshold, task.prcl_loss.temperature) == (0.97, 0.7, 100.0)
    assert task.iters_per_epoch == 84 and task.semi_eval_mode == "random_crop" and task.eval_crop == (321, 321)


def test_tiny_recipe_parses_through_the_cli(tmp_path, monkeypatch) -> None:
    import contextlib
    import io

    from tenfold.engine.lightning_cli import run_lightning_cli

    monkeypatch.chdir(tmp_path)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed), pytest.raises(SystemExit) as done:
        run_lightning_cli(["fit", "--config", str(CONFIGS / "tiny.yaml"), "--print_config"])
    assert done.value.code == 0
    assert "class_path: tenfold.seg.semi.SemiSupervisedSegTask" in printed.getvalue()


def _semi_data() -> SemiSegmentationData:  # noqa: F821
    from tenfold.data.semi import SemiSegmentationData

    # 4 labelled of 16 at batch 2 (n_l = 2), epoch of int(12 / 2 / 2) = 3 passes = 6 steps
    return SemiSegmentationData(
        dataset="builtin", num_classes=3, train_size=16, labelled=4, val_size=4, test_size=4, image_size=32,
        epoch_images=12, batch_size=2,
    )  # fmt: skip


def _fit_data(task: SemiSupervisedSegTask, steps: int, root, ckpt: str | None = None) -> pl.Trainer:  # noqa: F821
    """Fit with the engine's RNG callback; a checkpoint every 4 steps in ``root`` (as ``tenfold fit`` does)."""
    import lightning.pytorch as pl

    from tenfold.engine.callbacks import RNGState

    every = pl.callbacks.ModelCheckpoint(dirpath=str(root), every_n_train_steps=4, save_top_k=-1, save_last=False)
    trainer = pl.Trainer(
        max_steps=steps, max_epochs=-1, logger=False, enable_progress_bar=False, callbacks=[every, RNGState()],
        enable_model_summary=False, limit_val_batches=0, default_root_dir=str(root), accelerator="cpu",
    )  # fmt: skip
    trainer.fit(task, datamodule=_semi_data(), ckpt_path=ckpt)
    return trainer


def test_fit_with_the_semi_data_module_resumes_mid_epoch_exactly(tmp_path) -> None:
    """trainer.fit on SemiSegmentationData: epoch length from the data, kill mid-epoch, resume == uninterrupted."""

    def make() -> SemiSupervisedSegTask:
        torch.manual_seed(0)
        return SemiSupervisedSegTask(
            tiny_model(), method="prcl", un_threshold=0.0, weak_threshold=0.0, num_queries=4, num_negatives=8,
            epoch_images=12, total_epochs=3,
        )  # fmt: skip

    full = make()
    trainer = _fit_data(full, 8, tmp_path / "a")
    assert full.iters_per_epoch == 6 and len(trainer.train_dataloader) == 6  # the data module's epoch, not 12 // 2
    assert float(trainer.callback_metrics["train/ema_decay"]) == pytest.approx(1 - 1 / 8)  # 8th update: step 7
    (mid,) = (tmp_path / "a").glob("*step=4.ckpt")  # written during training, mid-way through epoch 0
    resumed = make()
    _fit_data(resumed, 8, tmp_path / "c", ckpt=str(mid))
    assert not torch.equal(next(full.model.parameters()), next(make().model.parameters()))
    for part in ("model", "ema", "uncertainty_head"):
        a_sd, b_sd = getattr(full, part).state_dict(), getattr(resumed, part).state_dict()
        for name, a in a_sd.items():
            assert torch.equal(a, b_sd[name]), f"{part}.{name}"
