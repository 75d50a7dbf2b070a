"""What is specific to the CIFAR ResNets / WRNs: sizes from the papers, official key names, local checkpoints."""

from __future__ import annotations

import pickle
import subprocess
import sys

import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F

import tenfold.models
from tenfold.models import resnet_cifar
from tenfold.models.resnet_cifar import CifarResNet, CifarWideResNet, checkpoint_filter_fn
from tenfold.utils.flops import count_flops

# Parameter counts with 100 classes and multiply-adds at 32x32, from the DIST spec's "cheap-to-verify" list
# (the CRD / DIST CIFAR-100 tables).
PAPER_PARAMS = {
    "resnet8x4": 1_233_540,
    "resnet32x4": 7_433_860,
    "resnet20": 278_324,
    "resnet56": 861_620,
    "wrn_40_1": 569_780,
    "wrn_40_2": 2_255_156,
}
PAPER_MACS = {"resnet8x4": 177.1e6, "resnet32x4": 1.083e9}


pytestmark = pytest.mark.usefixtures("one_thread")


class _Opaque:
    """An arbitrary pickled object: a weights-only loader must refuse it."""


def _expected_resnet_keys(depth: int, widths: tuple[int, ...]) -> list[str]:
    """The reference ResNet's state-dict keys, in order, written out from the architecture description."""
    bn = ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]
    keys = ["conv1.weight", *[f"bn1.{s}" for s in bn]]
    n = (depth - 2) // 6
    in_chs = widths[0]
    for stage, out_chs in enumerate(widths[1:], start=1):
        for j in range(n):
            p = f"layer{stage}.{j}"
            keys += [f"{p}.conv1.weight", *[f"{p}.bn1.{s}" for s in bn], f"{p}.conv2.weight"]
            keys += [f"{p}.bn2.{s}" for s in bn]
            if j == 0 and (stage > 1 or in_chs != out_chs):
                keys += [f"{p}.downsample.0.weight", *[f"{p}.downsample.1.{s}" for s in bn]]
        in_chs = out_chs
    return keys + ["fc.weight", "fc.bias"]


def _expected_wrn_keys(depth: int, k: int) -> list[str]:
    """The reference WRN's state-dict keys, in order: pre-activation blocks with a 1x1 ``convShortcut``."""
    bn = ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]
    keys = ["conv1.weight"]
    widths = (16, 16 * k, 32 * k, 64 * k)
    for stage in (1, 2, 3):
        for j in range((depth - 4) // 6):
            p = f"block{stage}.layer.{j}"
            keys += [*[f"{p}.bn1.{s}" for s in bn], f"{p}.conv1.weight", *[f"{p}.bn2.{s}" for s in bn]]
            keys += [f"{p}.conv2.weight"]
            if j == 0 and widths[stage - 1] != widths[stage]:
                keys += [f"{p}.convShortcut.weight"]
    return keys + [f"bn1.{s}" for s in bn] + ["fc.weight", "fc.bias"]


def _randomised(name: str, seed: int = 1) -> nn.Module:
    torch.manual_seed(seed)
    model = timm.create_model(name)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return model.eval()


def _assert_same_weights(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def test_registered_names():
    expected = {"resnet8x4", "resnet32x4", "resnet20", "resnet56", "resnet110", "wrn_40_2", "wrn_40_1", "wrn_16_2"}
    assert expected <= set(tenfold.models.list_models())


def test_names_do_not_collide_with_timm():
    # timm warns "Overwriting <name> in registry" when a registration replaces an existing model.
    code = "import timm, timm.models; import tenfold.models"
    proc = subprocess.run(
        [sys.executable, "-W", "error:Overwriting", "-c", code], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]


@pytest.mark.parametrize("name", sorted(PAPER_PARAMS))
def test_parameter_count_matches_paper(name):
    model = timm.create_model(name, num_classes=100)
    assert sum(p.numel() for p in model.parameters()) == PAPER_PARAMS[name]


@pytest.mark.parametrize("name", sorted(PAPER_MACS))
def test_macs_match_paper(name):
    macs = count_flops(timm.create_model(name), torch.zeros(1, 3, 32, 32)).macs
    assert macs == pytest.approx(PAPER_MACS[name], rel=1e-3)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("resnet8", _expected_resnet_keys(8, (16, 16, 32, 64))),
        ("resnet20", _expected_resnet_keys(20, (16, 16, 32, 64))),
        ("resnet8x4", _expected_resnet_keys(8, (32, 64, 128, 256))),
        ("resnet32x4", _expected_resnet_keys(32, (32, 64, 128, 256))),
        ("wrn_16_2", _expected_wrn_keys(16, 2)),
        ("wrn_40_1", _expected_wrn_keys(40, 1)),
        ("wrn_40_2", _expected_wrn_keys(40, 2)),
    ],
)
def test_state_dict_keys_are_the_official_ones(name, expected):
    assert list(timm.create_model(name).state_dict()) == expected


def test_official_shapes():
    sd = timm.create_model("resnet8x4").state_dict()
    assert sd["conv1.weight"].shape == (32, 3, 3, 3)
    assert sd["layer1.0.conv1.weight"].shape == (64, 32, 3, 3)
    assert sd["layer3.0.downsample.0.weight"].shape == (256, 128, 1, 1)
    assert sd["fc.weight"].shape == (100, 256)
    sd = timm.create_model("wrn_40_2").state_dict()
    assert sd["block1.layer.0.conv1.weight"].shape == (32, 16, 3, 3)
    assert sd["block1.layer.0.convShortcut.weight"].shape == (32, 16, 1, 1)
    assert "block1.layer.1.convShortcut.weight" not in sd
    assert sd["block3.layer.5.conv2.weight"].shape == (128, 128, 3, 3)
    assert sd["bn1.weight"].shape == (128,)
    assert sd["fc.weight"].shape == (100, 128)


def test_wide_block_shortcut_uses_preactivated_input():
    # Written from the WRN definition: with a width change the 1x1 shortcut sees relu(bn1(x)), not x.
    torch.manual_seed(0)
    block = _randomised("wrn_16_2").block2.layer[0]
    x = torch.randn(2, 32, 16, 16)

    def bn(m: nn.BatchNorm2d, t: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(t, m.running_mean, m.running_var, m.weight, m.bias, training=False, eps=m.eps)

    act = F.relu(bn(block.bn1, x))
    inner = F.relu(bn(block.bn2, F.conv2d(act, block.conv1.weight, stride=2, padding=1)))
    expected = F.conv2d(inner, block.conv2.weight, padding=1) + F.conv2d(act, block.convShortcut.weight, stride=2)
    with torch.no_grad():
        torch.testing.assert_close(block(x), expected)


def test_basic_block_is_post_activation():
    torch.manual_seed(0)
    block = _randomised("resnet8").layer2[0]
    x = torch.randn(2, 16, 16, 16)

    def bn(m: nn.BatchNorm2d, t: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(t, m.running_mean, m.running_var, m.weight, m.bias, training=False, eps=m.eps)

    inner = F.relu(bn(block.bn1, F.conv2d(x, block.conv1.weight, stride=2, padding=1)))
    shortcut = bn(block.downsample[1], F.conv2d(x, block.downsample[0].weight, stride=2))
    expected = F.relu(bn(block.bn2, F.conv2d(inner, block.conv2.weight, padding=1)) + shortcut)
    with torch.no_grad():
        torch.testing.assert_close(block(x), expected)


def test_named_taps_for_distillation():
    model = timm.create_model("resnet8x4").eval()
    seen: dict[str, list[torch.Tensor]] = {"relu": [], "layer3": []}
    for name in seen:
        model.get_submodule(name).register_forward_hook(lambda m, i, o, name=name: seen[name].append(o.clone()))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        feats = model.forward_features(x)
    assert [t.shape for t in seen["relu"]] == [(2, 32, 32, 32)]  # the stem activation, once
    torch.testing.assert_close(seen["layer3"][0], feats)

    wrn = timm.create_model("wrn_40_1").eval()
    taps = []
    wrn.relu.register_forward_hook(lambda m, i, o: taps.append(o.clone()))
    with torch.no_grad():
        feats = wrn.forward_features(x)
    torch.testing.assert_close(taps[0], feats)  # WRN's `relu` is the final pre-activation norm


def test_other_input_sizes_work():
    # The reference pools a fixed 8x8 window; adaptive pooling keeps 32x32 identical and allows other sizes.
    model = timm.create_model("resnet20").eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 100)
        x = torch.randn(2, 3, 32, 32)
        feats = model.forward_features(x)
        torch.testing.assert_close(model(x), model.fc(F.avg_pool2d(feats, 8).flatten(1)))


def test_bad_depths_raise():
    with pytest.raises(ValueError, match="6n \\+ 2"):
        CifarResNet(depth=10)
    with pytest.raises(ValueError, match="6n \\+ 4"):
        CifarWideResNet(depth=12)


def test_grad_checkpointing_gives_the_same_gradients():
    x = torch.randn(2, 3, 32, 32)
    grads = []
    for enable in (False, True):
        torch.manual_seed(0)
        model = timm.create_model("wrn_16_1").train()
        model.set_grad_checkpointing(enable)
        model(x).square().mean().backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b)


def test_wrn_block_dropout():
    model = timm.create_model("wrn_16_1", drop_rate=0.3)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        model.train()
        assert not torch.equal(model(x), model(x))
        model.eval()
        assert torch.equal(model(x), model(x))


def test_checkpoint_filter_unwraps_and_strips_prefix():
    sd = {"conv1.weight": torch.zeros(1), "fc.bias": torch.ones(1)}
    assert checkpoint_filter_fn(sd) == sd
    for wrapped in (
        {"model": sd, "epoch": 240},
        {"state_dict": {f"module.{k}": v for k, v in sd.items()}},
        {"net": sd, "acc": 0.7},
        {"state_dict": {"model": sd}},
    ):
        assert checkpoint_filter_fn(wrapped) == sd


@pytest.mark.parametrize("name", ["resnet8x4", "wrn_16_2"])
@pytest.mark.parametrize(
    "wrap",
    [
        lambda sd: {"model": sd, "epoch": 240, "optimizer": {"state": {}, "param_groups": []}},
        lambda sd: {"state_dict": {f"module.{k}": v for k, v in sd.items()}},
        lambda sd: {"net": sd, "acc": torch.tensor(73.1)},
    ],
    ids=["model", "state_dict-module", "net"],
)
def test_load_local_file_through_timm(tmp_path, name, wrap):
    source = _randomised(name, seed=3)
    path = tmp_path / "ckpt.pth"
    torch.save(wrap(source.state_dict()), path)
    loaded = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path))).eval()
    _assert_same_weights(source, loaded)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), source(x))


def test_load_into_a_different_class_count_keeps_the_backbone(tmp_path):
    source = _randomised("resnet8", seed=4)
    path = tmp_path / "ckpt.pth"
    torch.save({"model": source.state_dict()}, path)
    model = timm.create_model("resnet8", pretrained=True, num_classes=10, pretrained_cfg_overlay=dict(file=str(path)))
    assert model.fc.weight.shape == (10, 64)
    torch.testing.assert_close(model.layer3[0].conv2.weight, source.layer3[0].conv2.weight)


@pytest.mark.parametrize("change", ["extra", "missing"])
def test_strict_loading_names_the_bad_key(tmp_path, change):
    sd = _randomised("resnet8x4").state_dict()
    if change == "extra":
        sd["layer3.0.attention.weight"] = torch.zeros(3)
        message, key = "Unexpected key", "layer3.0.attention.weight"
    else:
        del sd["layer2.0.downsample.1.running_var"]
        message, key = "Missing key", "layer2.0.downsample.1.running_var"
    path = tmp_path / "ckpt.pth"
    torch.save({"model": sd}, path)
    with pytest.raises(RuntimeError, match=message) as info:
        timm.create_model("resnet8x4", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    assert key in str(info.value)


def test_loading_refuses_arbitrary_pickles(tmp_path):
    # timm's loader uses torch.load(weights_only=True): a checkpoint carrying a foreign object is refused.
    path = tmp_path / "ckpt.pth"
    torch.save({"model": timm.create_model("resnet8").state_dict(), "extra": _Opaque()}, path)
    # (timm re-raises torch's UnpicklingError as a RuntimeError that names the refused global)
    with pytest.raises((RuntimeError, pickle.UnpicklingError), match="_Opaque"):
        timm.create_model("resnet8", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))


def test_missing_file_is_named(tmp_path):
    path = tmp_path / "nope.pth"
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        timm.create_model("resnet20", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))


def test_default_cfg_has_no_url():
    for name in resnet_cifar.default_cfgs:
        cfg = timm.models.get_pretrained_cfg(name)
        assert not cfg.url and not cfg.hf_hub_id and not cfg.file
        assert cfg.num_classes == 100 and cfg.input_size == (3, 32, 32)
        assert cfg.mean == (0.5071, 0.4867, 0.4408) and cfg.std == (0.2675, 0.2565, 0.2761)


def test_forward_intermediates_indices_and_norm():
    model = timm.create_model("wrn_16_2").eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        (block1,) = model.forward_intermediates(x, indices=[1], stop_early=True, intermediates_only=True)
        torch.testing.assert_close(block1, model.block1(model.conv1(x)))
        last_raw, last_norm = (model.forward_intermediates(x, indices=1, norm=n)[1][0] for n in (False, True))
        feats = model.forward_features(x)
    torch.testing.assert_close(last_norm, feats)  # norm=True applies WRN's final bn1 + relu
    torch.testing.assert_close(last_raw, model.block3(model.block2(block1)))
    with pytest.raises(ValueError, match="NCHW"):
        model.forward_intermediates(x, output_fmt="NHWC")
