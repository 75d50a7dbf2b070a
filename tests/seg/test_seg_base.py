"""The segmentation base: networks (shapes, dilation, parity with torchvision, official key names), inference,
mIoU, the task's losses and schedule, and the recipes through the real command line (fit, resume, DDP validate)."""

from __future__ import annotations

import contextlib
import io
import json
import math
from types import SimpleNamespace

import pytest
import timm
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from tenfold.seg.inference import slide_inference, whole_inference, window_grid
from tenfold.seg.metrics import SegmentationScores, iou_from_confusion
from tenfold.seg.models import (
    DeepLabV3,
    DeepLabV3Plus,
    build_segmenter,
    checkpoint_filter_fn,
    dilate_resnet_,
    load_segmenter_weights,
)
from tenfold.utils.checkpoint import load_checkpoint

from conftest import REPO, run_tenfold, shared_path

pytestmark = pytest.mark.usefixtures("one_thread")

CONFIGS = REPO / "configs" / "seg"


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# ---------------------------------------------------------------------------------------------------------------
# networks
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backbone", ["resnet18", "resnet50"])
@pytest.mark.parametrize("output_stride", [8, 16])
def test_output_stride_and_aux_shapes(backbone, output_stride):
    x = torch.randn(2, 3, 64, 96)
    v3 = DeepLabV3(num_classes=7, backbone=backbone, output_stride=output_stride).eval()
    out = v3(x)
    assert out.logits.shape == (2, 7, 64 // output_stride, 96 // output_stride)
    assert out.aux.shape == (2, 7, 64 // output_stride, 96 // output_stride)
    assert v3.predict(x).shape == (2, 7, 64, 96)
    plus = DeepLabV3Plus(num_classes=7, backbone=backbone, output_stride=output_stride, aux_head=True).eval()
    out = plus(x)
    assert out.logits.shape == (2, 7, 16, 24)  # DeepLabV3+ decodes at 1/4 whatever the output stride
    assert out.aux.shape == (2, 7, 64 // output_stride, 96 // output_stride)
    assert DeepLabV3Plus(num_classes=7, backbone=backbone, output_stride=output_stride)(x).aux is None


def test_timm_backbone_shapes():
    model = DeepLabV3(num_classes=5, backbone="resnet18", backbone_source="timm", output_stride=8).eval()
    out = model(torch.randn(1, 3, 64, 64))
    assert out.logits.shape == (1, 5, 8, 8) and out.aux.shape == (1, 5, 8, 8)
    with pytest.raises(ValueError, match="unknown timm backbone 'resnet18x'"):
        DeepLabV3(backbone="resnet18x", backbone_source="timm")
    with pytest.raises(ValueError, match="output_stride must be 8, 16 or 32"):
        DeepLabV3(backbone="resnet18", output_stride=4)


def _conv_geometry(resnet: nn.Module) -> list[tuple]:
    return [(n, m.stride, m.dilation, m.padding) for n, m in resnet.named_modules() if isinstance(m, nn.Conv2d)]


@pytest.mark.parametrize("output_stride, flags", [(8, [False, True, True]), (16, [False, False, True])])
def test_conv_editing_dilation_equals_torchvision_flag_on_bottlenecks(output_stride, flags):
    """The rule used for ResNet-18/34 (PRCL's dilate_scale) is torchvision's replace_stride_with_dilation."""
    edited = dilate_resnet_(torchvision.models.resnet50(weights=None), output_stride)
    flagged = torchvision.models.resnet50(weights=None, replace_stride_with_dilation=flags)
    assert _conv_geometry(edited) == _conv_geometry(flagged)


def test_basic_block_dilation_values():
    net = dilate_resnet_(torchvision.models.resnet18(weights=None), 8)
    # first block of each dilated stage: the former stride-2 conv keeps dilation d/2, the rest get d
    assert (net.layer3[0].conv1.stride, net.layer3[0].conv1.dilation) == ((1, 1), (1, 1))
    assert net.layer3[0].conv2.dilation == (2, 2) and net.layer3[1].conv1.dilation == (2, 2)
    assert (net.layer4[0].conv1.dilation, net.layer4[0].conv1.padding) == ((2, 2), (2, 2))
    assert net.layer4[1].conv2.dilation == (4, 4) and net.layer4[0].downsample[0].stride == (1, 1)
    net16 = dilate_resnet_(torchvision.models.resnet18(weights=None), 16)
    assert net16.layer3[0].conv1.stride == (2, 2) and net16.layer4[1].conv1.dilation == (2, 2)


@pytest.mark.parametrize("depth", [50, 101])
def test_parameters_and_outputs_equal_torchvision_deeplabv3(depth):
    tv = getattr(torchvision.models.segmentation, f"deeplabv3_resnet{depth}")(
        weights=None, weights_backbone=None, num_classes=19, aux_loss=True
    )
    ours = DeepLabV3(num_classes=19, backbone=f"resnet{depth}")
    assert n_params(ours) == n_params(tv)
    ours.load_state_dict(tv.state_dict(), strict=True)  # same names, same shapes
    if depth == 50:
        x = torch.randn(1, 3, 49, 71)
        with torch.no_grad():
            expected, got = tv.eval()(x), ours.eval()(x)
        torch.testing.assert_close(ours.upsample(got.logits, x.shape[-2:]), expected["out"], rtol=0, atol=0)
        torch.testing.assert_close(ours.upsample(got.aux, x.shape[-2:]), expected["aux"], rtol=0, atol=0)


def test_deeplabv3plus_carries_prcl_names_and_parameter_counts():
    """PRCL's DeepLabv3Plus_with_un (R101, OS16, VOC): the spec's counts and the official key list, strictly."""
    model = DeepLabV3Plus(num_classes=21, backbone="resnet101", output_stride=16)
    # prcl.md section 4: backbone 42,500,160; ASPP 15,535,104; project 12,384; classifier 706,325
    assert (n_params(model.backbone), n_params(model.ASPP)) == (42_500_160, 15_535_104)
    assert (n_params(model.project), n_params(model.classifier)) == (12_384, 706_325)
    keys = json.loads(shared_path("specs/keys/prcl_state_dict_keys_voc.json").read_text())["model"]
    official = {"model": {k: torch.zeros(shape) for k, shape in keys.items()}, "ema": {}, "epoch": 3}
    mapped = checkpoint_filter_fn(official)
    # representation.* is PRCL's own head (its subclass adds it); everything else is the base network
    base = {k: v for k, v in mapped.items() if not k.startswith("representation.")}
    assert len(mapped) - len(base) == 8
    own = model.state_dict()
    assert set(base) == set(own)
    assert all(tuple(base[k].shape) == tuple(own[k].shape) for k in own)
    assert model.ASPP.convs[1][0].dilation == (6, 6) and model.ASPP.convs[3][0].dilation == (18, 18)
    assert len(model.ASPP.project) == 3  # PRCL's ASPP projection has no dropout


def test_cirkd_checkpoint_names_map_onto_the_cirkd_configuration():
    """CIRKD DeepLabV3-R18 (deep stem v1s, 512-channel ASPP, FCN aux on layer3); names/shapes from CIRKD's source."""
    model = DeepLabV3(num_classes=19, backbone="resnet18", backbone_source="timm",
                      backbone_kwargs={"stem_type": "deep", "stem_width": 64}, aspp_channels=512,
                      head_dropout=0.1, pool_align_corners=True, align_corners=True)  # fmt: skip
    cirkd = {
        "pretrained.conv1.weight": (64, 3, 3, 3),
        "pretrained.bn1.running_var": (64,),
        "pretrained.conv2.weight": (64, 64, 3, 3),
        "pretrained.conv3.weight": (128, 64, 3, 3),
        "pretrained.bn3.weight": (128,),
        "pretrained.layer1.0.conv1.weight": (64, 128, 3, 3),
        "pretrained.layer1.0.downsample.0.weight": (64, 128, 1, 1),
        "pretrained.layer4.1.bn2.bias": (512,),
        "head.aspp.b0.0.weight": (512, 512, 1, 1),
        "head.aspp.b2.block.0.weight": (512, 512, 3, 3),
        "head.aspp.b2.block.1.running_mean": (512,),
        "head.aspp.b4.gap.1.weight": (512, 512, 1, 1),
        "head.aspp.b4.gap.2.weight": (512,),
        "head.aspp.project.0.weight": (512, 2560, 1, 1),
        "head.block.0.weight": (512, 512, 3, 3),
        "head.block.1.weight": (512,),
        "head.block.4.weight": (19, 512, 1, 1),
        "head.block.4.bias": (19,),
        "auxlayer.block.0.weight": (64, 256, 3, 3),
        "auxlayer.block.4.weight": (19, 64, 1, 1),
    }
    mapped = checkpoint_filter_fn({"state_dict": {f"module.{k}": torch.zeros(s) for k, s in cirkd.items()}})
    own = model.state_dict()
    for key, value in mapped.items():
        assert key in own, key
        assert tuple(own[key].shape) == tuple(value.shape), key
    assert model.classifier[0].convs[1][0].dilation == (12, 12)  # OS 8 rates (12, 24, 36), as CIRKD


def test_pretrained_backbone_files_load_strictly(tmp_path):
    reference = torchvision.models.resnet18(weights=None)
    torch.save({"state_dict": reference.state_dict()}, tmp_path / "r18.pth")  # fc.* is dropped
    model = DeepLabV3(num_classes=3, backbone="resnet18", pretrained_backbone=str(tmp_path / "r18.pth"))
    torch.testing.assert_close(model.backbone.layer4[1].conv2.weight, reference.layer4[1].conv2.weight)
    timm_ref = timm.create_model("resnet18")
    torch.save(timm_ref.state_dict(), tmp_path / "timm_r18.pth")
    model = DeepLabV3(num_classes=3, backbone="resnet18", backbone_source="timm",
                      pretrained_backbone=str(tmp_path / "timm_r18.pth"))  # fmt: skip
    torch.testing.assert_close(model.backbone.layer3[0].conv1.weight, timm_ref.layer3[0].conv1.weight)
    bad = {k: v for k, v in reference.state_dict().items() if not k.startswith("layer4.")}
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="missing keys: layer4"):
        DeepLabV3(num_classes=3, backbone="resnet18", pretrained_backbone=str(tmp_path / "bad.pth"))
    with pytest.raises(FileNotFoundError, match="nowhere.pth"):
        DeepLabV3(num_classes=3, backbone="resnet18", pretrained_backbone=str(tmp_path / "nowhere.pth"))


def test_build_segmenter_and_weights_round_trip(tmp_path):
    model = build_segmenter("deeplabv3plus", num_classes=4, backbone="resnet18", output_stride=16)
    assert isinstance(model, DeepLabV3Plus) and model.init_config["output_stride"] == 16
    torch.save({"model": model.state_dict()}, tmp_path / "w.pth")
    other = DeepLabV3Plus(num_classes=4, backbone="resnet18", output_stride=16)
    load_segmenter_weights(other, str(tmp_path / "w.pth"))
    torch.testing.assert_close(other.classifier[3].weight, model.classifier[3].weight)
    with pytest.raises(ValueError, match="unknown segmentation architecture 'pspnet'"):
        build_segmenter("pspnet")
    with pytest.raises(ValueError, match="do not fit DeepLabV3Plus"):
        load_segmenter_weights(DeepLabV3Plus(num_classes=5, backbone="resnet18"), str(tmp_path / "w.pth"))


# ---------------------------------------------------------------------------------------------------------------
# inference
# ---------------------------------------------------------------------------------------------------------------


def test_window_grid_by_hand():
    assert window_grid(10, 4, 3) == [(0, 4), (3, 7), (6, 10)]
    assert window_grid(11, 4, 3) == [(0, 4), (3, 7), (6, 10), (7, 11)]  # the last window ends at the border
    assert window_grid(3, 4, 2) == [(0, 3)]  # smaller than the window: one clipped window


@pytest.mark.parametrize("flip", [False, True])
def test_sliding_window_equals_whole_image_when_one_window_covers_it(flip):
    model = DeepLabV3Plus(num_classes=4, backbone="resnet18", output_stride=16).eval()
    x = torch.randn(2, 3, 48, 64)
    with torch.no_grad():
        whole = whole_inference(model.predict, x, flip=flip)
        slide = slide_inference(model.predict, x, window=(64, 96), stride=(32, 32), flip=flip)
    torch.testing.assert_close(slide, whole, rtol=0, atol=0)
    if flip:  # flipping really averages two different predictions
        assert not torch.equal(whole, model.predict(x))


def test_overlapping_windows_are_averaged():
    # a per-pixel predictor gives every window the whole-image logits at each pixel, so averaging must reproduce them
    conv = nn.Conv2d(3, 5, 1)
    x = torch.randn(2, 3, 23, 31)
    with torch.no_grad():
        slide = slide_inference(conv, x, window=(8, 12), stride=(5, 7), flip=True, max_batch=3)
        torch.testing.assert_close(slide, conv(x), rtol=1e-6, atol=1e-6)
    # a predictor that reports each window's own position: the average of overlapping windows, by hand
    calls = []

    def offsets(crops):
        calls.append(crops.shape[0])
        return crops[:, :1] * 0 + crops[:, :1, :1, :1]  # each crop's top-left value, broadcast

    ramp = torch.arange(10.0).view(1, 1, 1, 10).expand(1, 3, 1, 10).contiguous()
    out = slide_inference(offsets, ramp, window=(1, 4), stride=(1, 3))
    # windows start at columns 0, 3, 6 -> values 0, 3, 6; column 3 is in windows 0 and 1, column 6 in 1 and 2
    assert out.flatten().tolist() == [0, 0, 0, 1.5, 3, 3, 4.5, 6, 6, 6]
    assert sum(calls) == 3


# ---------------------------------------------------------------------------------------------------------------
# scores
# ---------------------------------------------------------------------------------------------------------------


def test_miou_from_a_hand_computed_confusion_matrix():
    # (target, prediction) counts; rows of the confusion matrix are targets:
    #   [[3, 1, 0],
    #    [0, 2, 1],
    #    [1, 0, 2]]          + 3 ignored pixels (label 255) predicted as class 1, which must count nowhere
    pairs = [(0, 0)] * 3 + [(0, 1)] + [(1, 1)] * 2 + [(1, 2)] + [(2, 0)] + [(2, 2)] * 2 + [(255, 1)] * 3
    target = torch.tensor([t for t, _ in pairs]).view(1, 1, -1)
    pred = torch.tensor([p for _, p in pairs]).view(1, 1, -1)
    scores = SegmentationScores(3)
    scores.update(pred, target)
    result = scores.compute()
    # IoU_c = TP / (row + column - TP): class 0: 3 / (4 + 4 - 3) = 0.6; class 1: 2 / (3 + 3 - 2) = 0.5;
    # class 2: 2 / (3 + 3 - 2) = 0.5; mIoU = 1.6 / 3; pixel accuracy = 7 / 10
    assert result["iou"].tolist() == pytest.approx([0.6, 0.5, 0.5])
    assert float(result["miou"]) == pytest.approx(1.6 / 3)
    assert float(result["acc"]) == pytest.approx(0.7)
    # the same from logits (B, C, H, W), in two batches
    logits = F.one_hot(pred.clamp_max(2), 3).permute(0, 3, 1, 2).float()
    split = SegmentationScores(3)
    split.update(logits[..., :6], target[..., :6])
    split.update(logits[..., 6:], target[..., 6:])
    assert torch.equal(split.compute()["iou"], result["iou"])


def test_absent_class_is_nan_and_left_out_of_the_mean():
    iou = iou_from_confusion(torch.tensor([[2, 0, 0], [1, 1, 0], [0, 0, 0]]))
    assert iou[0] == pytest.approx(2 / 3) and iou[1] == pytest.approx(0.5) and math.isnan(iou[2])
    scores = SegmentationScores(3)
    scores.update(torch.tensor([[0, 0, 0, 1]]), torch.tensor([[0, 0, 1, 1]]))
    assert float(scores.compute()["miou"]) == pytest.approx((2 / 3 + 1 / 2) / 2)


# ---------------------------------------------------------------------------------------------------------------
# task: losses and schedule
# ---------------------------------------------------------------------------------------------------------------


def _tiny_task(**kwargs):
    from tenfold.seg.task import SegmentationTask

    model = DeepLabV3(num_classes=3, backbone="resnet18", output_stride=16, aspp_channels=16)
    return SegmentationTask(model=model, **kwargs)


def test_loss_is_ce_plus_weighted_aux_and_ignores_255():
    task = _tiny_task(aux_weight=0.4)
    x = torch.randn(2, 3, 32, 32)
    labels = torch.randint(0, 3, (2, 32, 32))
    labels[:, :8] = 255
    out = task(x)
    total, parts = task.segmentation_loss(out, labels)
    up = F.interpolate(out.logits, (32, 32), mode="bilinear", align_corners=False)
    up_aux = F.interpolate(out.aux, (32, 32), mode="bilinear", align_corners=False)
    keep = labels != 255
    ce = F.cross_entropy(up.permute(0, 2, 3, 1)[keep], labels[keep])
    aux = F.cross_entropy(up_aux.permute(0, 2, 3, 1)[keep], labels[keep])
    torch.testing.assert_close(parts["ce"], ce)
    torch.testing.assert_close(total, ce + 0.4 * aux)
    with pytest.raises(ValueError, match="aux_weight must be >= 0"):
        _tiny_task(aux_weight=-1)
    with pytest.raises(ValueError, match="needs eval_window and eval_stride"):
        _tiny_task(eval_mode="slide")


def test_poly_schedule_is_the_official_min_lr_form():
    from tenfold.engine.optim import OptimConfig

    task = _tiny_task(optim=OptimConfig(opt="momentum", lr=0.02, sched="poly", decay_rate=0.9, min_lr=1e-4))
    loader = list(range(100))  # 100 updates per epoch
    task.trainer = SimpleNamespace(
        datamodule=SimpleNamespace(train_dataloader=lambda: loader), limit_train_batches=None,
        accumulate_grad_batches=1, max_epochs=None, max_steps=400, global_step=0,
    )  # fmt: skip
    setup = task.configure_optimizers()
    optimizer, scheduler = setup["optimizer"], setup["lr_scheduler"]["scheduler"]
    for it in (0, 1, 150, 399):
        scheduler.step_update(num_updates=it)
        official = 1e-4 + (0.02 - 1e-4) * (1 - it / 400) ** 0.9  # MasKD train_kd.py adjust_lr
        assert optimizer.param_groups[0]["lr"] == pytest.approx(official, rel=1e-12), it


# ---------------------------------------------------------------------------------------------------------------
# recipes through the command line
# ---------------------------------------------------------------------------------------------------------------

# a small variant of the tiny recipe: 48 training images of 32 px, batches of 8 (6 steps an epoch), a narrow head
FAST = [
    "--config", str(CONFIGS / "tiny.yaml"),
    "--model.init_args.model.init_args.aspp_channels", "16",
    "--model.init_args.model.init_args.decoder_channels", "16",
    "--data.init_args.image_size", "32", "--data.init_args.crop_size", "[32, 32]",
    "--data.init_args.train_size", "48", "--data.init_args.val_size", "13",
    "--data.init_args.batch_size", "8", "--data.init_args.eval_batch_size", "1",
    "--trainer.max_steps", "8", "--trainer.val_check_interval", "8",
    "--checkpoint.every_n_train_steps", "4",
    "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
    "--trainer.num_sanity_val_steps", "0",
]  # fmt: skip


def test_tiny_recipe_fits_resumes_exactly_and_validates_the_same_in_two_processes(tmp_path):
    run_tenfold(["fit", *FAST, "--run_dir", "full"], tmp_path)
    metrics = json.loads((tmp_path / "full" / "metrics.json").read_text())
    assert metrics["_global_step"] == 8 and 0 <= metrics["val/miou"] <= 1
    assert {"val/iou/background", "val/iou/class3", "val/acc", "train/aux"} <= set(metrics)

    # killed at step 6 (after the step-4 checkpoint), resumed mid-epoch: the same final weights
    killed = run_tenfold(["fit", *FAST, "--run_dir", "crash", "--trainer.callbacks+=tenfold_test_callbacks.KillAtStep",
                          "--trainer.callbacks.step", "6"], tmp_path, check=False)  # fmt: skip
    assert killed.returncode == -9, killed.stderr[-2000:]
    run_tenfold(["fit", *FAST, "--run_dir", "crash", "--ckpt_path", "last"], tmp_path)
    full = load_checkpoint(tmp_path / "full" / "checkpoints" / "last.ckpt")
    resumed = load_checkpoint(tmp_path / "crash" / "checkpoints" / "last.ckpt")
    assert full["global_step"] == resumed["global_step"] == 8
    for key, value in full["state_dict"].items():
        torch.testing.assert_close(resumed["state_dict"][key], value, rtol=0, atol=0, msg=key)
    assert json.loads((tmp_path / "crash" / "metrics.json").read_text())["val/miou"] == metrics["val/miou"]

    # 13 validation images over 2 processes (7 + 6, no padding): the same confusion matrix as one process
    ckpt = str(tmp_path / "full" / "checkpoints" / "last.ckpt")
    ddp = ["--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", "ddp"]
    run_tenfold(["validate", *FAST, "--ckpt_path", ckpt, "--run_dir", "val1"], tmp_path)
    run_tenfold(["validate", *FAST, *ddp, "--ckpt_path", ckpt, "--run_dir", "val2"], tmp_path)
    one = json.loads((tmp_path / "val1" / "metrics.json").read_text())
    two = json.loads((tmp_path / "val2" / "metrics.json").read_text())
    assert one["val/miou"] == metrics["val/miou"]
    scores = [k for k in one if k.startswith(("val/iou/", "val/miou", "val/acc"))]
    assert len(scores) == 7 and all(two[k] == one[k] for k in scores), {k: (one[k], two[k]) for k in scores}
    assert two["val/loss"] == pytest.approx(one["val/loss"], abs=1e-6)


@pytest.mark.parametrize(
    "recipe, expected",
    [
        ("tiny.yaml", ["dataset: builtin", "class_path: tenfold.seg.models.DeepLabV3Plus", "sched: poly"]),
        ("cityscapes_deeplabv3_r101.yaml", ["dataset: cityscapes", "backbone: resnet101s", "max_steps: 40000",
                                            "lr: 0.02", "min_lr: 0.0001", "batch_size: 2", "aspp_channels: 512"]),
        ("cityscapes_deeplabv3_r18.yaml", ["dataset: cityscapes", "backbone: resnet18", "stem_type: deep",
                                           "max_steps: 40000", "aux_weight: 0.4", "crop_size:\n    - 512\n    - 1024"]),
        ("voc_deeplabv3plus_r101.yaml", ["dataset: voc", "class_path: tenfold.seg.models.DeepLabV3Plus",
                                         "train_split: train_aug", "opt: sgd", "crop_size:\n    - 321\n    - 321"]),
    ],
)  # fmt: skip
def test_recipes_parse_against_the_signatures(recipe, expected, tmp_path, monkeypatch):
    from tenfold.engine.lightning_cli import run_lightning_cli

    monkeypatch.chdir(tmp_path)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed), pytest.raises(SystemExit) as done:
        run_lightning_cli(["fit", "--config", str(CONFIGS / recipe), "--print_config"])
    assert done.value.code == 0
    text = printed.getvalue()
    for snippet in expected:
        assert snippet in text, snippet
    with contextlib.redirect_stderr(io.StringIO()) as err, pytest.raises(SystemExit) as bad:
        run_lightning_cli(["fit", "--config", str(CONFIGS / recipe), "--model.init_args.aux_wieght", "1"])
    assert bad.value.code != 0 and "aux_wieght" in err.getvalue()
