"""MasKD for torchvision detectors: detection data (built-in scenes, COCO layout), detector building, stage 1 (tokens
of a frozen teacher, exported in the released key layout), stage 2 (loss wiring, frozen teacher and tokens, the
warm-up counter across a resume), construction-time wiring errors, and the recipes (COCO ones parse, tiny ones train
through ``tenfold fit``)."""

from __future__ import annotations

import contextlib
import io
import json
import math
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
import torchvision
import yaml
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

from tenfold.data.detection import DetectionData, coco_target, list_collate
from tenfold.data.sampling import ResumableDataLoader
from tenfold.data.synthetic import make_hoi
from tenfold.distill import MasKDLoss
from tenfold.distill.detection import (
    DetectionDistillationTask,
    DetectionTask,
    DetectorConfig,
    MaskTokenTask,
    build_detector,
    fpn_levels,
)
from tenfold.engine.lightning_cli import run_lightning_cli
from tenfold.engine.optim import OptimConfig
from tenfold.utils.checkpoint import load_checkpoint

from conftest import REPO, run_tenfold

pytestmark = pytest.mark.usefixtures("one_thread")

NUM_CLASSES = 6  # label 0 unused, persons 1, four object classes 2..5
DATA = {"num_objects": 4, "image_size": 64, "train_size": 8, "val_size": 4, "batch_size": 2}
SMALL = {"min_size": 64, "max_size": 64}
CONFIGS = REPO / "configs" / "maskd"


def tiny(backbone: str = "resnet18", name: str = "retinanet", **kw) -> DetectorConfig:
    return DetectorConfig(name=name, backbone=backbone, **SMALL, **kw)


@pytest.fixture(scope="module")
def teacher_file(tmp_path_factory):
    """A random RetinaNet-R18 teacher whose BatchNorm statistics are not the defaults (an update would show)."""
    torch.manual_seed(0)
    teacher = build_detector(tiny(), NUM_CLASSES)
    for module in teacher.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    path = tmp_path_factory.mktemp("teacher") / "teacher.pth"
    torch.save(teacher.state_dict(), path)
    return path


def _trainer(root: Path, max_steps: int, **kw) -> pl.Trainer:
    return pl.Trainer(
        accelerator="cpu", devices=1, max_steps=max_steps, max_epochs=-1, logger=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, use_distributed_sampler=False, limit_val_batches=0,
        default_root_dir=root, **kw,
    )  # fmt: skip


# -- data -----------------------------------------------------------------------------------------------------------


def test_builtin_scenes_are_torchvision_targets_with_seeded_flips():
    data = DetectionData(**DATA)
    data.setup("fit")
    assert data.num_classes == NUM_CLASSES
    loader = data.train_dataloader()
    assert isinstance(loader, ResumableDataLoader)
    images, targets = next(iter(loader))
    assert isinstance(images, list) and isinstance(targets, list) and len(images) == 2
    assert images[0].dtype == torch.float32 and images[0].shape == (3, 64, 64) and 0 <= images[0].min() <= 1

    raw_images, raw_targets = make_hoi(8, 4, seed=0, split="train", image_size=64)
    dataset = data._splits["train"]
    flipped = 0
    for i in range(8):
        image, target = dataset[(i, 0)]
        assert torch.equal(target["labels"], raw_targets[i]["labels"] + 1)  # persons 1: 0 is the background
        raw = raw_images[i].float() / 255
        if torch.equal(image, raw):
            assert torch.equal(target["boxes"], raw_targets[i]["boxes"])
        else:  # mirrored image, mirrored boxes: x -> 64 - x
            flipped += 1
            assert torch.equal(image, raw.flip(-1))
            b = raw_targets[i]["boxes"]
            assert torch.equal(target["boxes"], torch.stack([64 - b[:, 2], b[:, 1], 64 - b[:, 0], b[:, 3]], 1))
        again, _ = dataset[(i, 0)]
        assert torch.equal(again, image)  # the flip is a function of (seed, epoch, index) only
    assert 0 < flipped < 8
    data.setup("validate")
    v_images, _ = next(iter(data.val_dataloader()))
    assert torch.equal(v_images[0], make_hoi(4, 4, seed=0, split="val", image_size=64)[0][0].float() / 255)


def _write_coco(root: Path) -> None:
    from PIL import Image

    for split in ("train", "val"):
        (root / f"{split}2017").mkdir(parents=True)
        for i in (1, 2):
            Image.new("RGB", (40, 30), (i * 60, 10, 10)).save(root / f"{split}2017" / f"{i:012d}.jpg")
    (root / "annotations").mkdir()
    anns = [
        {"id": 1, "image_id": 1, "category_id": 18, "bbox": [2.0, 3.0, 10.0, 5.0], "area": 50.0, "iscrowd": 0},
        {"id": 2, "image_id": 1, "category_id": 1, "bbox": [0.0, 0.0, 20.0, 20.0], "area": 400.0, "iscrowd": 1},
        {"id": 3, "image_id": 1, "category_id": 3, "bbox": [5.0, 5.0, 0.5, 4.0], "area": 2.0, "iscrowd": 0},
        {"id": 4, "image_id": 2, "category_id": 1, "bbox": [1.0, 1.0, 8.0, 8.0], "area": 64.0, "iscrowd": 1},
    ]
    for split in ("train", "val"):
        payload = {
            "images": [{"id": i, "file_name": f"{i:012d}.jpg", "width": 40, "height": 30} for i in (1, 2)],
            "annotations": anns,
            "categories": [{"id": c, "name": str(c)} for c in (1, 3, 18)],
        }
        (root / "annotations" / f"instances_{split}2017.json").write_text(json.dumps(payload))


def test_coco_layout_gives_xyxy_boxes_without_crowds_and_names_a_missing_layout(tmp_path):
    import pycocotools  # noqa: F401  (a dependency: the COCO reader needs it)

    _write_coco(tmp_path / "coco")
    data = DetectionData(dataset="coco", root=str(tmp_path / "coco"), batch_size=1, flip=False)
    assert data.num_classes == 91
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints while indexing
        data.setup("fit")
    train, val = data._splits["train"], data._splits["val"]
    assert len(train) == 1 and len(val) == 2  # image 2 has only a crowd region: dropped from training only
    image, target = train[0]
    assert image.shape == (3, 30, 40) and image.dtype == torch.float32 and image.max() <= 1
    assert target["boxes"].tolist() == [[2.0, 3.0, 12.0, 8.0]] and target["labels"].tolist() == [18]
    assert val[1][1]["boxes"].shape == (0, 4) and int(val[1][1]["image_id"]) == 2
    images, targets = list_collate([train[0], val[1]])
    assert len(images) == 2 and targets[1]["labels"].numel() == 0

    (tmp_path / "coco" / "annotations" / "instances_val2017.json").unlink()
    broken = DetectionData(dataset="coco", root=str(tmp_path / "coco"))
    with pytest.raises(FileNotFoundError, match=r"instances_val2017\.json.*expected the COCO 2017 layout"):
        with contextlib.redirect_stdout(io.StringIO()):
            broken.setup("fit")
    with pytest.raises(ValueError, match="root"):
        DetectionData(dataset="coco")
    assert coco_target([], 5)["boxes"].shape == (0, 4)


# -- detectors ------------------------------------------------------------------------------------------------------


def test_meta_architectures_match_torchvision_builders_and_load_backbone_weights(tmp_path):
    from torchvision.models import detection

    for name, builder in (
        ("retinanet", detection.retinanet_resnet50_fpn),
        ("fasterrcnn", detection.fasterrcnn_resnet50_fpn),
    ):
        ours = build_detector(DetectorConfig(name=name, backbone="resnet50"), 91).state_dict()
        theirs = builder(weights=None, weights_backbone=None, num_classes=91).state_dict()
        assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in theirs.items()}, name

    # the ImageNet ResNet goes into backbone.body; torchvision's rule: frozen BN and 3 trainable stages
    resnet = torchvision.models.resnet18(num_classes=1000)
    torch.save(resnet.state_dict(), tmp_path / "resnet18.pth")
    model = build_detector(tiny(backbone_weights=str(tmp_path / "resnet18.pth")), NUM_CLASSES)
    body = model.backbone.body
    assert torch.equal(body.layer3[0].conv1.weight, resnet.layer3[0].conv1.weight)
    assert torch.equal(body.bn1.running_var, resnet.bn1.running_var) and isinstance(body.bn1, FrozenBatchNorm2d)
    assert not body.conv1.weight.requires_grad and not body.layer1[0].conv1.weight.requires_grad
    assert body.layer2[0].conv1.weight.requires_grad
    # the R101 teachers of the recipes: 5 FPN levels of 256 channels (P3-P7 for RetinaNet)
    from tenfold.distill.detection import _probe

    keys, levels = fpn_levels(_probe(build_detector(DetectorConfig(backbone="resnet101", **SMALL), 91), "backbone"))
    assert keys == ["0", "1", "2", "p6", "p7"] and [x.shape[1] for x in levels] == [256] * 5
    with pytest.raises(ValueError, match="retinanet_resnet50_fpn"):
        build_detector(DetectorConfig(name="retinanet_r50"), 91)
    with pytest.raises(ValueError, match="backbone"):
        build_detector(DetectorConfig(name="retinanet_resnet50_fpn", backbone="resnet101"), 91)


class _LrLog(pl.Callback):
    def __init__(self) -> None:
        self.lrs: list[float] = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self.lrs.append(optimizer.param_groups[0]["lr"])


@pytest.mark.parametrize("sched", ["none", "cosine"])
def test_linear_warmup_by_iterations_is_mmdets(tmp_path, sched):
    """lr_k = scheduled_lr_k * (1 - (1 - k / W) * (1 - ratio)) for k < W (mmdet's linear warm-up), then the schedule."""
    optim = OptimConfig(opt="momentum", lr=0.01, weight_decay=1e-4, filter_bias_and_bn=False, sched=sched)
    task = DetectionTask(model=tiny(), num_classes=NUM_CLASSES, optim=optim, warmup_iters=3, warmup_ratio=0.001,
                         evaluate=False)  # fmt: skip
    log = _LrLog()
    _trainer(tmp_path, 5, callbacks=[log], enable_checkpointing=False).fit(task, datamodule=DetectionData(**DATA))
    # the schedule alone: constant, or timm's per-update cosine over the 5 updates (min_lr 0)
    scheduled = [0.01 if sched == "none" else 0.005 * (1 + math.cos(math.pi * k / 5)) for k in range(5)]
    factors = [1 - (1 - k / 3) * (1 - 0.001) for k in range(3)] + [1.0, 1.0]
    assert log.lrs == pytest.approx([s * f for s, f in zip(scheduled, factors, strict=True)], rel=1e-9)


# -- stage 1 --------------------------------------------------------------------------------------------------------


def test_stage1_trains_only_the_tokens_of_a_frozen_teacher_and_exports_them(teacher_file, tmp_path):
    pl.seed_everything(0)
    task = MaskTokenTask(teacher=tiny(), teacher_weights=str(teacher_file), num_classes=NUM_CLASSES, evaluate=False)
    assert task.optim.opt == "adam" and task.optim.lr == 0.01 and task.optim.weight_decay == 1e-3
    assert task.optim.min_lr == 1e-6 and not task.optim.filter_bias_and_bn
    before_teacher = {k: v.clone() for k, v in task.teacher.state_dict().items()}
    before_tokens = {k: v.clone() for k, v in task.masker.state_dict().items()}
    trainer = _trainer(tmp_path, 3, enable_checkpointing=False)
    trainer.fit(task, datamodule=DetectionData(**DATA))

    for key, value in task.teacher.state_dict().items():  # weights and BatchNorm statistics never move
        assert torch.equal(value, before_teacher[key]), key
    assert task.teacher.training  # the detector computes its losses...
    assert all(not m.training for m in task.teacher.modules() if isinstance(m, nn.BatchNorm2d))  # ...with BN frozen
    assert all(not p.requires_grad for p in task.teacher.parameters())
    optimised = {id(p) for g in trainer.optimizers[0].param_groups for p in g["params"]}
    assert optimised == {id(p) for p in task.masker.parameters()}
    assert all(not torch.equal(v, before_tokens[k]) for k, v in task.masker.state_dict().items())
    assert {"train/dice", "train/classification", "train/bbox_regression"} <= set(trainer.callback_metrics)

    # the export has the released mmdet layout and stage 2 loads it (and the Lightning checkpoint) strictly
    export = load_checkpoint(tmp_path / "tokens.pth")
    assert set(export) == {"meta", "state_dict"} and export["meta"]["levels"] == ["0", "1", "2", "p6", "p7"]
    expected = {f"mask_modules.{i}.{p}" for i in range(5) for p in ("mask_token", "prob.0.weight", "prob.0.bias",
                                                                      "prob.2.weight", "prob.2.bias")}  # fmt: skip
    assert set(export["state_dict"]) == expected
    loss = MasKDLoss()
    loss.load_tokens(str(tmp_path / "tokens.pth"))
    for key, value in task.masker.state_dict().items():
        assert torch.equal(loss.state_dict()[key], value), key
    # masking really reaches the heads: the teacher's losses on masked levels are not its plain losses
    data = DetectionData(**DATA)
    data.setup("fit")
    images, targets = list_collate([data._splits["train"][(i, 0)] for i in (0, 1)])
    with torch.no_grad():
        with task.masker.attach(task.teacher, "backbone"):
            masked = task.teacher(images, targets)
        plain = task.teacher(images, targets)
    assert not torch.equal(masked["bbox_regression"], plain["bbox_regression"])


# -- stage 2 --------------------------------------------------------------------------------------------------------


def _stage2(
    teacher_file, tokens, warmup: int = 0, reset: bool = False, trainable: bool = False, **kw
) -> DetectionDistillationTask:
    maskd = MasKDLoss(custom_mask_warmup=warmup, official_counter_reset=reset, trainable_tokens=trainable)
    optim = OptimConfig(opt="momentum", lr=0.01, weight_decay=1e-4, filter_bias_and_bn=False, sched="none")
    return DetectionDistillationTask(
        student=tiny(), teacher=tiny(), num_classes=NUM_CLASSES, teacher_weights=str(teacher_file), tokens=tokens,
        maskd=maskd, maskd_weight=7.0, evaluate=False, allow_random_tokens=tokens is None, optim=optim, **kw,
    )  # fmt: skip


@pytest.fixture(scope="module")
def tokens_file(tmp_path_factory):
    """Tokens as stage 1 exports them, with a recognisable value."""
    torch.manual_seed(1)
    loss = MasKDLoss()
    with torch.no_grad():
        for module in loss.mask_modules:
            module.mask_token.normal_(0, 0.1)
    path = tmp_path_factory.mktemp("tokens") / "tokens.pth"
    torch.save({"meta": {}, "state_dict": {k: v for k, v in loss.state_dict().items() if k != "num_calls"}}, path)
    return path


def test_stage2_loss_is_detection_plus_weighted_maskd_with_teacher_and_tokens_frozen(
    teacher_file, tokens_file, tmp_path
):
    pl.seed_everything(0)
    # trainable tokens receive gradients (as officially), yet the optimiser leaves them out (official lr_mult=0)
    task = _stage2(
        teacher_file, str(tokens_file), warmup=0, trainable=True, init_student_from_teacher=["backbone.fpn", "head"]
    )
    tokens = load_checkpoint(tokens_file)["state_dict"]
    for key, value in tokens.items():
        assert torch.equal(task.maskd.state_dict()[key], value), key
    teacher = task.teacher.state_dict()
    assert all(torch.equal(v, teacher[k]) for k, v in task.student.state_dict().items() if k.startswith("head."))
    assert not torch.equal(task.student.backbone.body.conv1.weight, task.teacher.backbone.body.conv1.weight)
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.bias is not None) for c in task.align] == [
        (256, 256, (1, 1), True)
    ] * 5

    # the total, recomputed by hand from the student's losses and the MasKD term on the aligned levels
    task.train()
    data = DetectionData(**DATA)
    data.setup("fit")
    images, targets = list_collate([data._splits["train"][(i, 0)] for i in (0, 1)])
    pl.seed_everything(0)
    total, logs = task.compute_loss(images, targets)
    assert int(task.maskd.num_calls) == 1 and float(logs["custom_mask"]) == 1.0
    with torch.no_grad():
        t_levels = task.teacher.backbone(task.teacher.transform(images)[0].tensors)
        student = task.student.train()
        pl.seed_everything(0)
        s_levels = student.backbone(student.transform(images, targets)[0].tensors)
        check = MasKDLoss(custom_mask_warmup=0)
        check.load_tokens(str(tokens_file))
        expected = check([c(x) for c, x in zip(task.align, s_levels.values(), strict=True)], list(t_levels.values()))
    torch.testing.assert_close(logs["maskd"], expected)
    det = sum(v for k, v in logs.items() if k in ("classification", "bbox_regression"))
    torch.testing.assert_close(total, det + 7.0 * logs["maskd"])

    before = {k: v.clone() for k, v in task.state_dict().items()}
    trainer = _trainer(tmp_path, 2, enable_checkpointing=False)
    trainer.fit(task, datamodule=DetectionData(**DATA))
    optimised = {id(p) for g in trainer.optimizers[0].param_groups for p in g["params"]}
    assert optimised == {id(p) for p in [*task.student.parameters(), *task.align.parameters()]}
    after = task.state_dict()
    for key in before:
        moved = not torch.equal(after[key], before[key])
        if key.startswith("teacher.") or (key.startswith("maskd.") and key != "maskd.num_calls"):
            assert not moved, key  # frozen: teacher weights and BN statistics, the tokens and weighting branch
    assert not torch.equal(after["align.0.weight"], before["align.0.weight"])
    assert not task.teacher.training and task.student.training


@pytest.mark.filterwarnings("ignore:Be aware that when using `ckpt_path`")
@pytest.mark.parametrize("reset", [False, True], ids=["counter_saved", "official_reset"])
def test_warmup_counter_continues_after_resume_unless_official_reset(teacher_file, tokens_file, tmp_path, reset):
    pl.seed_everything(0)
    first = _stage2(teacher_file, str(tokens_file), warmup=3, reset=reset)
    ckpt = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "ck", every_n_train_steps=2, save_top_k=-1)
    _trainer(tmp_path, 2, callbacks=[ckpt]).fit(first, datamodule=DetectionData(**DATA))
    saved = load_checkpoint(tmp_path / "ck" / "epoch=0-step=2.ckpt")["state_dict"]
    assert ("maskd.num_calls" in saved) is not reset
    assert not first.maskd.custom_mask_active  # 2 calls < warm-up 3

    resumed = _stage2(teacher_file, str(tokens_file), warmup=3, reset=reset)
    trainer = _trainer(tmp_path, 4, enable_checkpointing=False)
    trainer.fit(resumed, datamodule=DetectionData(**DATA), ckpt_path=tmp_path / "ck" / "epoch=0-step=2.ckpt")
    assert trainer.global_step == 4
    # saved: calls 2 and 3 after the resume -> 4 in all, the customised mask switched on at the 4th call (index 3)
    # official: the counter restarts at 0 -> 2 calls, still in the warm-up
    assert int(resumed.maskd.num_calls) == (2 if reset else 4)
    assert resumed.maskd.custom_mask_active is (not reset)
    assert float(trainer.callback_metrics["train/custom_mask"]) == (0.0 if reset else 1.0)


def test_wiring_errors_fail_at_construction(teacher_file, tokens_file, tmp_path):
    with pytest.raises(ValueError, match="backbon.*closest names"):
        _stage2(teacher_file, str(tokens_file), student_module="backbon")
    with pytest.raises(ValueError, match="channels"):
        DetectionDistillationTask(student=tiny(), teacher=tiny(), num_classes=NUM_CLASSES, allow_random_teacher=True,
                                  allow_random_tokens=True, maskd=MasKDLoss(channels=(256,) * 4))  # fmt: skip
    with pytest.raises(ValueError, match="do not match teacher levels"):  # P2-P6 vs P3-P7
        DetectionDistillationTask(student=tiny(name="fasterrcnn"), teacher=tiny(), num_classes=NUM_CLASSES,
                                  allow_random_teacher=True, allow_random_tokens=True)  # fmt: skip
    with pytest.raises(ValueError, match="resize"):
        other = DetectorConfig(backbone="resnet18", min_size=96, max_size=96)
        DetectionDistillationTask(student=tiny(), teacher=other, num_classes=NUM_CLASSES, allow_random_teacher=True,
                                  allow_random_tokens=True)  # fmt: skip
    with pytest.raises(ValueError, match="tokens is required"):
        DetectionDistillationTask(student=tiny(), teacher=tiny(), num_classes=NUM_CLASSES, allow_random_teacher=True)
    with pytest.raises(ValueError, match="teacher_weights is required"):
        MaskTokenTask(teacher=tiny(), num_classes=NUM_CLASSES)
    with pytest.raises(ValueError, match="neck"):
        MaskTokenTask(teacher=tiny(), num_classes=NUM_CLASSES, fpn_module="neck", allow_random_teacher=True)
    with pytest.raises(ValueError, match="mask_modules"):  # a file that holds no tokens
        _stage2(teacher_file, str(teacher_file))
    task = MaskTokenTask(teacher=tiny(), num_classes=NUM_CLASSES, allow_random_teacher=True, evaluate=False)
    with pytest.raises(ValueError, match="num_classes=7"):  # the data's class count is checked before any step
        _trainer(tmp_path, 1, enable_checkpointing=False).fit(
            task, datamodule=DetectionData(**{**DATA, "num_objects": 5})
        )


# -- recipes --------------------------------------------------------------------------------------------------------


def _printed(recipe: str, *extra: str) -> dict:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as done:
        run_lightning_cli(["fit", "--config", str(CONFIGS / recipe), *extra, "--print_config"])
    assert done.value.code == 0, recipe
    return yaml.safe_load(out.getvalue())


def test_recipes_parse_with_the_official_settings(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    recipes = sorted(
        p.name for p in CONFIGS.glob("*.yaml") if "det" in p.name or p.name.startswith(("retinanet_", "faster_rcnn_"))
    )
    assert len(recipes) == 7
    cfg = {name: _printed(name) for name in recipes}
    retina = cfg["retinanet_r101_r50_maskd.yaml"]
    args = retina["model"]["init_args"]
    assert args["maskd_weight"] == 7.0 and args["maskd"]["init_args"]["custom_mask_warmup"] == 7000
    assert args["teacher"]["backbone"] == "resnet101" and args["student"]["backbone"] == "resnet50"
    assert args["init_student_from_teacher"] == ["backbone.fpn", "head"] and args["warmup_iters"] == 1000
    assert retina["trainer"]["gradient_clip_val"] == 35 and retina["trainer"]["max_epochs"] == 24
    optim = args["optim"]
    assert (optim["opt"], optim["lr"], optim["momentum"], optim["weight_decay"]) == ("momentum", 0.02, 0.9, 1e-4)
    assert optim["sched"] == "multistep" and optim["decay_milestones"] == [16, 22]
    assert retina["data"]["init_args"]["dataset"] == "coco" and retina["data"]["init_args"]["batch_size"] == 2
    faster = cfg["faster_rcnn_r101_r50_maskd.yaml"]["model"]["init_args"]
    assert faster["maskd_weight"] == 1.0 and faster["maskd"]["init_args"]["custom_mask_warmup"] == 7330
    stage1 = cfg["retinanet_r101_r50_stage1.yaml"]
    s1 = stage1["model"]["init_args"]
    assert s1["optim"]["opt"] == "adam" and s1["optim"]["min_lr"] == 1e-6 and stage1["trainer"]["max_steps"] == 2000
    with contextlib.redirect_stderr(io.StringIO()) as err, pytest.raises(SystemExit) as bad:
        run_lightning_cli(
            ["fit", "--config", str(CONFIGS / "tiny_det_maskd.yaml"), "--model.init_args.maskd_wieght", "1"]
        )
    assert bad.value.code != 0 and "maskd_wieght" in err.getvalue()


def test_tiny_recipes_train_through_the_cli_and_chain(tmp_path):
    fast = ["--trainer.max_steps", "3", "--trainer.val_check_interval", "3", "--data.init_args.train_size", "24",
            "--data.init_args.val_size", "8", "--trainer.enable_progress_bar", "false"]  # fmt: skip
    runs = tmp_path / "runs" / "maskd"
    for recipe in ("tiny_det_teacher", "tiny_det_stage1", "tiny_det_maskd"):
        run_tenfold(["fit", "--config", str(CONFIGS / f"{recipe}.yaml"), *fast], tmp_path)
        assert next((runs / recipe).glob("*/checkpoints/last.ckpt")).is_file(), recipe
    teacher = load_checkpoint(next((runs / "tiny_det_teacher").glob("*/checkpoints/last.ckpt")))["state_dict"]
    stage1 = load_checkpoint(next((runs / "tiny_det_stage1").glob("*/checkpoints/last.ckpt")))["state_dict"]
    tokens = load_checkpoint(next((runs / "tiny_det_stage1").glob("*/tokens.pth")))["state_dict"]
    maskd = load_checkpoint(next((runs / "tiny_det_maskd").glob("*/checkpoints/last.ckpt")))
    state = maskd["state_dict"]
    for key, value in teacher.items():  # the same frozen teacher in both stages
        assert torch.equal(stage1["teacher." + key[6:]], value) and torch.equal(state["teacher." + key[6:]], value)
    for key, value in tokens.items():  # stage 2 distils with the tokens stage 1 exported
        assert torch.equal(state["maskd." + key], value) and torch.equal(stage1["masker." + key], value)
    assert maskd["global_step"] == 3 and int(state["maskd.num_calls"]) == 3
    metrics = json.loads(next((runs / "tiny_det_maskd").glob("*/metrics.json")).read_text())
    assert {"train/maskd", "train/maskd_level4", "train/classification", "val/map"} <= set(metrics)
