"""The distillation task: frozen teacher, taps and connectors, resume, export, recipes, DDP."""

from __future__ import annotations

import json
import math

import lightning.pytorch as pl
import pytest
import timm
import torch
from safetensors.torch import load_file

from tenfold.data.datamodules import ClassificationData
from tenfold.distill import DistillationTask, DistillTerm, DISTLoss, FeatureTaps, KDLoss
from tenfold.distill.export import export_student
from tenfold.engine.optim import OptimConfig
from tenfold.utils.checkpoint import load_checkpoint

from conftest import REPO, run_tenfold

DATA = {"dataset": "builtin", "num_classes": 10, "train_size": 256, "val_size": 64, "batch_size": 32}


@pytest.fixture(scope="module")
def teacher_file(tmp_path_factory):
    torch.manual_seed(0)
    teacher = timm.create_model("resnet20", num_classes=10)
    # give the BN statistics non-default values so that an update would show
    for module in teacher.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    path = tmp_path_factory.mktemp("teacher") / "teacher.pth"
    torch.save(teacher.state_dict(), path)
    return path


def _task(teacher_file, terms, **kw):
    return DistillationTask(
        student="resnet8", teacher="resnet20", num_classes=10, teacher_weights=str(teacher_file), terms=terms,
        optim=OptimConfig(opt="momentum", lr=0.05, sched="none"), **kw,
    )  # fmt: skip


def _trainer(tmp_path, max_steps, **kw):
    return pl.Trainer(
        accelerator="cpu", devices=1, max_steps=max_steps, max_epochs=-1, logger=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, use_distributed_sampler=False, limit_val_batches=1,
        default_root_dir=tmp_path, **kw,
    )  # fmt: skip


def test_teacher_weights_and_bn_statistics_never_change(teacher_file, tmp_path):
    task = _task(teacher_file, [DistillTerm(KDLoss(tau=4.0)), DistillTerm(DISTLoss(tau=1.0), weight=2.0)])
    before_teacher = {k: v.clone() for k, v in task.teacher.state_dict().items()}
    before_student = {k: v.clone() for k, v in task.student.state_dict().items()}
    _trainer(tmp_path, 6, enable_checkpointing=False).fit(task, datamodule=ClassificationData(**DATA))
    saved = torch.load(teacher_file, weights_only=True)
    for key, value in task.teacher.state_dict().items():
        assert torch.equal(value, before_teacher[key]) and torch.equal(value, saved[key]), key
    assert not task.teacher.training and task.student.training
    assert all(not p.requires_grad for p in task.teacher.parameters())
    moved = [k for k, v in task.student.state_dict().items() if not torch.equal(v, before_student[k])]
    assert any("running_mean" in k for k in moved) and any(k.endswith("weight") for k in moved)


def test_resume_restores_teacher_connectors_and_student(teacher_file, tmp_path):
    def terms():  # a FitNet-style feature term through a learnable connector, plus DIST on the logits
        return [DistillTerm(torch.nn.MSELoss(), student="layer3", teacher="layer3", connector=True, name="fitnet"),
                DistillTerm(DISTLoss(tau=4.0), weight=2.0)]  # fmt: skip

    pl.seed_everything(0)
    full = _task(teacher_file, terms())
    ckpt = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "ck", every_n_train_steps=3, save_top_k=-1)
    _trainer(tmp_path, 6, callbacks=[ckpt]).fit(full, datamodule=ClassificationData(**DATA))
    assert (tmp_path / "ck" / "epoch=0-step=3.ckpt").is_file()

    pl.seed_everything(123)  # a different initialisation of student and connectors, and a different teacher
    resumed = _task(teacher_file, terms())
    with torch.no_grad():
        for p in resumed.teacher.parameters():
            p.add_(1.0)
    assert not torch.equal(resumed.connectors["fitnet"][0].weight, full.connectors["fitnet"][0].weight)
    _trainer(tmp_path, 6, enable_checkpointing=False).fit(
        resumed, datamodule=ClassificationData(**DATA), ckpt_path=tmp_path / "ck" / "epoch=0-step=3.ckpt"
    )
    for prefix in ("teacher", "connectors", "student"):
        a, b = getattr(full, prefix).state_dict(), getattr(resumed, prefix).state_dict()
        for key in a:
            torch.testing.assert_close(b[key], a[key], rtol=0, atol=0, msg=f"{prefix}.{key}")


def test_unknown_tap_and_mismatched_shapes_fail_at_construction(teacher_file):
    with pytest.raises(ValueError, match="layer9"):
        _task(teacher_file, [DistillTerm(torch.nn.MSELoss(), student="layer9", teacher="layer3")])
    with pytest.raises(ValueError, match="connector"):
        _task(teacher_file, [DistillTerm(torch.nn.MSELoss(), student="layer2", teacher="layer3")])
    with pytest.raises(ValueError, match="teacher_weights"):
        DistillationTask(student="resnet8", teacher="resnet20", num_classes=10)
    with pytest.raises(ValueError, match="distinct names"):
        _task(teacher_file, [DistillTerm(KDLoss()), DistillTerm(KDLoss(tau=1.0))])


def test_taps_record_only_inside_the_context():
    model = timm.create_model("resnet8", num_classes=10)
    taps = FeatureTaps(model, ["layer2", "logits"])
    x = torch.randn(2, 3, 32, 32)
    with taps:
        model(x)
    assert taps["layer2"].shape == (2, 32, 16, 16)
    taps.clear()
    model(x)  # hooks are gone: nothing is recorded outside the block
    with pytest.raises(KeyError, match="layer2"):
        taps["layer2"]
    assert not model.layer2._forward_hooks


def test_export_student_loads_strictly_into_the_plain_model(teacher_file, tmp_path):
    task = _task(teacher_file, [DistillTerm(KDLoss())])
    trainer = _trainer(tmp_path, 2, enable_checkpointing=False)
    trainer.fit(task, datamodule=ClassificationData(**DATA))
    ckpt = tmp_path / "distill.ckpt"
    trainer.save_checkpoint(ckpt)
    out = export_student(ckpt, tmp_path / "student.safetensors")
    weights = load_file(out)
    assert set(weights) == set(task.student.state_dict())  # no teacher, connector or prefix
    # num_classes goes in the overlay too, else timm treats 10 != 100 (the cfg default) as fine-tuning and
    # re-initialises the classifier
    overlay = {"file": str(out), "num_classes": 10}
    plain = timm.create_model("resnet8", pretrained=True, num_classes=10, pretrained_cfg_overlay=overlay)
    plain.eval()
    task.eval()
    x = torch.randn(3, 3, 32, 32)
    torch.testing.assert_close(plain(x), task(x), rtol=0, atol=0)
    with pytest.raises(FileExistsError):
        export_student(ckpt, out)


def test_tiny_recipes_and_two_process_distillation(tmp_path):
    fast = ["--data.init_args.train_size", "256", "--data.init_args.val_size", "64", "--trainer.max_steps", "4",
            "--trainer.max_epochs", "-1", "--trainer.val_check_interval", "4", "--data.init_args.batch_size", "32",
            "--trainer.enable_progress_bar", "false", "--trainer.num_sanity_val_steps", "0"]  # fmt: skip
    run_tenfold(["fit", "--config", str(REPO / "configs/distill/tiny_teacher.yaml"), *fast], tmp_path)
    teacher_ckpt = next((tmp_path / "runs" / "distill" / "tiny_teacher").glob("*/checkpoints/last.ckpt"))
    teacher_state = {k: v for k, v in load_checkpoint(teacher_ckpt)["state_dict"].items() if k.startswith("model.")}
    for recipe in ("ce", "kd", "dist", "diffkd"):
        run_tenfold(["fit", "--config", str(REPO / f"configs/distill/tiny_{recipe}.yaml"), *fast], tmp_path)
    dist_run = next((tmp_path / "runs" / "distill" / "tiny_dist").iterdir())
    metrics = json.loads((dist_run / "metrics.json").read_text())
    assert "train/distloss" in metrics and metrics["val/teacher_acc1"] > 0
    assert {"train/distloss_inter", "train/distloss_intra"} <= set(metrics)  # the parts of a loss are logged
    diffkd = json.loads(next((tmp_path / "runs" / "distill" / "tiny_diffkd").glob("*/metrics.json")).read_text())
    for part in ("kd", "ddim", "rec"):
        assert math.isfinite(diffkd[f"train/diffkd_feature_{part}"]), part
    assert "train/diffkd_logits_ddim" in diffkd and "train/diffkd_logits_rec" not in diffkd  # no AE on logits

    ddp = ["--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", "ddp",
           "--data.init_args.batch_size", "16", "--run_dir", "ddp"]  # fmt: skip
    # DDP raises on parameters that get no gradient (the frozen teacher must not count): the run must succeed
    run_tenfold(["fit", "--config", str(REPO / "configs/distill/tiny_dist.yaml"), *fast, *ddp], tmp_path)
    ckpt = load_checkpoint(tmp_path / "ddp" / "checkpoints" / "last.ckpt")
    assert ckpt["global_step"] == 4
    for key, value in teacher_state.items():
        assert torch.equal(ckpt["state_dict"]["teacher." + key[len("model.") :]], value), key

    out = tmp_path / "student.safetensors"
    run_tenfold(["export-student", str(tmp_path / "ddp" / "checkpoints" / "last.ckpt"), str(out)], tmp_path)
    assert set(load_file(out)) == set(timm.create_model("resnet8", num_classes=10).state_dict())


def test_official_kd_student_with_diffkd_keys_loads_as_plain_model(tmp_path):
    """Official students carry `_diff.*` (DiffKD blocks) and `_align.*` keys; the plain model loads the rest."""
    torch.manual_seed(0)
    student = timm.create_model("resnet18", num_classes=10)
    state = {**student.state_dict(), "_diff.layer4.trans.weight": torch.randn(4, 4, 1, 1),
             "_diff.fc.proj.0.bias": torch.randn(4)}  # fmt: skip
    path = tmp_path / "official_student.pth"
    torch.save({"epoch": 99, "model": state, "ema_model": None}, path)
    from tenfold.classification.task import create_model

    loaded = create_model("resnet18", 10, str(path))
    for key, value in student.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    del state["fc.weight"]  # anything else missing still fails, naming the key
    torch.save({"model": state}, path)
    with pytest.raises(ValueError, match="fc.weight"):
        create_model("resnet18", 10, str(path))
