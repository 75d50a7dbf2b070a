"""MasKD: parity with the official code (float64 recordings), parameter counts and state-dict layout from the spec,
released token formats, the warm-up counter across checkpoints, stage 1 through a forward hook on an FPN, input
checks and mixed precision.

Official outputs: ``tests/fixtures/maskd/official_outputs.pt`` (hunto/MasKD @ b5af34f run in float64; provenance in
the fixture's README). Expected counts and keys come from the spec (``specs/dist_maskd.md`` sections 2.6-2.9, 4, 5).
"""

from __future__ import annotations

import math
import zlib
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from parity import assert_float32_close, assert_matches_official
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from tenfold.distill import MasKDLoss, MasKDSegLoss, MaskedFeatures, MaskModule, SegMaskModule, dice_coeff
from tenfold.distill.maskd import masked_distance, token_masks
from tenfold.utils.checkpoint import save_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")

FIXTURES = Path(__file__).parents[1] / "fixtures" / "maskd"
OFFICIAL = torch.load(FIXTURES / "official_outputs.pt", weights_only=True)
MMDET_TOKENS = FIXTURES / "stage1_tokens_mmdet.pth"
C, T, LEVELS = 16, 6, 3
DET = OFFICIAL["det"]
DET_INPUTS = OFFICIAL["det_inputs"]

# Dependent rounding steps of the detection loss in float32: forward token dot product (16 terms), sigmoid, the
# product with the student mask, difference and square, the H*W reduction (bmm), the mask area and the division,
# the mean over C, the weighting branch (3x3 conv of 144-term dot products, pooling, 1x1 conv, softmax), the
# weighted sum over T, the mean over N and the sum over levels (13); the backward retraces them (13 more).
FLOAT32_DEPTH = 26


def released_format_tokens() -> torch.Tensor:
    """The segmentation tokens of the ``released_format`` case: key-seeded, float32, times 3.

    The official release (``segmentation/work_dirs/dv3-r101/``, not shipped here) holds trained tokens, whose masks
    are sharp, unlike those of the N(0, 0.01) init; the factor 3 makes these masks mostly saturated as well."""
    return torch.randn(8, 19, generator=torch.Generator().manual_seed(zlib.crc32(b"mask_token"))) * 3


def write_released_format(path: Path, tokens: torch.Tensor) -> Path:
    """A token file in the layout of the released one: a raw ``OrderedDict`` ``{'mask_token': (8, 19)}``."""
    torch.save(OrderedDict(mask_token=tokens), path)
    return path


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


def _det_loss(case: dict, dtype=torch.float64) -> MasKDLoss:
    loss = MasKDLoss(channels=(C,) * LEVELS, trainable_tokens=True, **case["kwargs"])
    init = OFFICIAL["init_state_dict"]
    if case["kwargs"]["weight_mask"]:
        loss.load_tokens(MMDET_TOKENS)
    else:
        loss.load_tokens({k: v for k, v in init.items() if ".prob." not in k})
    loss.to(dtype)
    with torch.no_grad():
        for module in loss.mask_modules:
            module.mask_token.mul_(case["token_scale"])
    return loss


def _run_det(case: dict, dtype=torch.float64):
    """Our loss over the recorded successive calls: per call the weighted loss, student grads, param grads."""
    loss = _det_loss(case, dtype)
    out = []
    for i, rec in enumerate(case["calls"]):
        inputs = DET_INPUTS[i]
        loss.zero_grad()
        assert int(loss.num_calls) == rec["iter_before"]
        students = [x.to(dtype).clone().requires_grad_(True) for x in inputs["student"]]
        teachers = [x.to(dtype) for x in inputs["teacher"]]
        # the official loss_weight is our task weight: the recording used loss_weight = case["loss_weight"]
        value = case["loss_weight"] * loss(tuple(students), tuple(teachers))
        value.backward()
        got = {"loss": value.detach(), "student_grad": [s.grad for s in students]}
        if "param_grads" in rec:
            got["param_grads"] = {k: p.grad for k, p in loss.named_parameters()}
        with torch.no_grad():
            got["teacher_masks"] = [m.forward_mask(y) for m, y in zip(loss.mask_modules, teachers, strict=True)]
            got["student_masks"] = [m.forward_mask(y) for m, y in zip(loss.mask_modules, students, strict=True)]
            if loss.weight_mask:
                got["weights"] = [m.forward_prob(y) for m, y in zip(loss.mask_modules, teachers, strict=True)]
        out.append(got)
    return loss, out


# ---------------------------------------------------------------------------------------------------------------
# Parity with the official code (float64)
# ---------------------------------------------------------------------------------------------------------------


def test_fixture_is_the_float64_recording():
    assert OFFICIAL["meta"]["commit"].startswith("b5af34f") and OFFICIAL["meta"]["dtype"] == "float64"
    assert DET["default"]["calls"][0]["loss"].dtype == torch.float64
    assert set(DET) == {"default", "sharp_tokens", "no_weight_mask"}


def test_seeded_init_equals_official_init():
    # the same seed draws the same tokens and conv weights as the official MasKDLoss (randn, then normal_(0, 0.01);
    # default conv init, then the fan-out normal init)
    torch.manual_seed(OFFICIAL["meta"]["init_seed"])
    ours = MasKDLoss(channels=(C,) * LEVELS, num_tokens=T, custom_mask_warmup=2)
    state = ours.state_dict()
    for key, value in OFFICIAL["init_state_dict"].items():
        assert torch.equal(state[key], value), key
    torch.manual_seed(OFFICIAL["stage1"]["init_seed"])
    stage1 = MaskModule(C, num_tokens=T, weight_mask=True)
    for key, value in OFFICIAL["stage1"]["cases"]["weight_mask=True"]["state_dict"].items():
        assert torch.equal(stage1.state_dict()[key], value), key


@pytest.mark.parametrize("name", sorted(DET))
def test_detection_loss_matches_official_over_successive_calls(name):
    case = DET[name]
    loss, ours = _run_det(case)
    warmup = case["kwargs"]["custom_mask_warmup"]
    for i, (got, rec) in enumerate(zip(ours, case["calls"], strict=True)):
        what = f"{name} call {i} ({'customised' if i >= warmup else 'teacher'} mask)"
        expected = {k: rec[k] for k in got}
        assert_matches_official(got, expected, what=what)
    assert int(loss.num_calls) == len(case["calls"])


def test_student_mask_is_stop_gradient():
    """After the switch, the recorded gradient is the one with the student mask held constant; letting the gradient
    flow through the student mask would change it far beyond the tolerance."""
    case, call = DET["default"], 2
    loss = _det_loss(case)
    inputs = DET_INPUTS[call]
    students = [x.clone().requires_grad_(True) for x in inputs["student"]]
    total = 0
    for y_s, y_t, module in zip(students, inputs["teacher"], loss.mask_modules, strict=True):
        mask = module.forward_mask(y_t) * module.forward_mask(y_s)  # no stop-gradient
        e = masked_distance(y_s, y_t, mask)
        total = total + (e.mean(-1) * module.forward_prob(y_t)).sum(-1).mean()
    (case["loss_weight"] * total).backward()
    official = case["calls"][call]["student_grad"]
    assert min(_rel(s.grad, g) for s, g in zip(students, official, strict=True)) > 1e-4
    # the loss value itself does not depend on the stop-gradient
    assert_matches_official(case["loss_weight"] * total.detach(), case["calls"][call]["loss"], what="value")


def test_frozen_tokens_get_no_gradient():
    loss = MasKDLoss(channels=(C,) * LEVELS, custom_mask_warmup=0)
    assert not any(p.requires_grad for p in loss.parameters())
    inputs = DET_INPUTS[0]
    students = [x.float().requires_grad_(True) for x in inputs["student"]]
    loss.train()(students, [x.float() for x in inputs["teacher"]]).backward()
    assert all(p.grad is None for p in loss.parameters())
    assert all(s.grad is not None and s.grad.abs().sum() > 0 for s in students)


@pytest.mark.parametrize("weight_mask", [True, False])
def test_stage1_mask_module_matches_official(weight_mask):
    stage1 = OFFICIAL["stage1"]
    rec = stage1["cases"][f"weight_mask={weight_mask}"]
    module = MaskModule(C, num_tokens=T, weight_mask=weight_mask)
    module.load_state_dict(rec["state_dict"], strict=True)
    module.double()
    x = stage1["input"].clone().requires_grad_(True)
    masked, dice = module(x)
    objective = (masked * stage1["probe"]).sum() + dice
    objective.backward()
    got = {
        "masked": masked.detach(),
        "dice": dice.detach(),
        "objective": objective.detach(),
        "input_grad": x.grad,
        "param_grads": {k: p.grad for k, p in module.named_parameters()},
        "mask": module.forward_mask(stage1["input"]).detach(),
    }
    assert_matches_official(got, {k: rec[k] for k in got}, what=f"stage 1, weight_mask={weight_mask}")


def test_dice_matches_official():
    stage1 = OFFICIAL["stage1"]
    for key in ("dice_out", "dice_out_razor", "dice_out_seg"):  # the three official copies agree
        assert_matches_official(dice_coeff(stage1["dice_in"]), stage1[key], what=key)


@pytest.mark.parametrize("name", ["random_tokens", "released_format"])
def test_segmentation_loss_matches_official(name, tmp_path):
    seg = OFFICIAL["seg"]
    rec = seg["cases"][name]
    loss = MasKDSegLoss(trainable_tokens=True)
    if name == "released_format":  # a file in the released layout, written here from the key-seeded rule
        loss.load_tokens(write_released_format(tmp_path / "tokens.pth", released_format_tokens()))
    else:  # the recorded raw {'mask_token'} dict
        loss.load_tokens({"mask_token": rec["tokens"]})
    assert torch.equal(loss.mask_module.mask_token.detach(), rec["tokens"])
    loss.double()
    z_s = seg["student"].clone().requires_grad_(True)
    value = loss(z_s, seg["teacher"])
    value.backward()
    aux = seg["aux_student"].clone().requires_grad_(True)
    kd_total = 1.0 * loss(seg["student"], seg["teacher"]) + 0.4 * loss(aux, seg["aux_teacher"])  # lambda_kd = 1
    kd_total.backward()
    stage1 = loss.mask_module
    stage1.zero_grad()
    z_t = seg["teacher"].clone().requires_grad_(True)
    masked, dice = stage1(z_t)
    objective = (masked * seg["student"]).sum() + dice
    objective.backward()
    got = {
        "loss": value.detach(),
        "student_grad": z_s.grad,
        "kd_total": kd_total.detach(),
        "kd_total_grad_aux": aux.grad,
        "stage1_masked": masked.detach(),
        "stage1_dice": dice.detach(),
        "stage1_objective": objective.detach(),
        "stage1_input_grad": z_t.grad,
        "stage1_token_grad": stage1.mask_token.grad,
    }
    assert_matches_official(got, {k: rec[k] for k in got}, what=f"segmentation, {name}")


def test_float32_run_close_to_official_float64():
    case = DET["default"]
    _, ours = _run_det(case, torch.float32)
    for i, (got, rec) in enumerate(zip(ours, case["calls"], strict=True)):
        for key in ("loss", "student_grad"):
            assert_float32_close(got[key], rec[key], depth=FLOAT32_DEPTH, what=f"call {i} {key} (float32 run)")
        # The weighting branch's gradients are left to the float64 check: they are proportional to the centred
        # per-token distances a_t - sum_s w_s a_s (the softmax gradient), which cancel to about 1/100 of a_t here,
        # so any float32 run (the official one too) carries ~100 eps32 there. The tokens' gradients do not cancel.
        if "param_grads" in rec:
            tokens = {k: v for k, v in got["param_grads"].items() if k.endswith("mask_token")}
            expected = {k: rec["param_grads"][k] for k in tokens}
            assert_float32_close(tokens, expected, depth=FLOAT32_DEPTH, what=f"call {i} token grads (float32 run)")


# ---------------------------------------------------------------------------------------------------------------
# Parameter counts and state-dict layout (spec 2.6, 4, 5)
# ---------------------------------------------------------------------------------------------------------------


def _numel(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_parameter_counts_from_the_spec():
    level = MaskModule(256, num_tokens=6, weight_mask=True)
    assert _numel(level) == 593_158
    assert level.mask_token.numel() == 1_536 and _numel(level.prob[0]) == 590_080 and _numel(level.prob[2]) == 1_542
    assert _numel(MasKDLoss()) == 2_965_790
    assert _numel(MaskedFeatures()) == 2_965_790
    assert _numel(SegMaskModule()) == 152 and _numel(MasKDSegLoss()) == 152


def _official_det_shapes(levels=5, c=256, t=6) -> dict[str, tuple[int, ...]]:
    shapes = {}
    for i in range(levels):
        shapes[f"mask_modules.{i}.mask_token"] = (t, c)
        shapes[f"mask_modules.{i}.prob.0.weight"] = (c, c, 3, 3)
        shapes[f"mask_modules.{i}.prob.0.bias"] = (c,)
        shapes[f"mask_modules.{i}.prob.2.weight"] = (t, c, 1, 1)
        shapes[f"mask_modules.{i}.prob.2.bias"] = (t,)
    return shapes


def test_state_dict_keys_are_the_official_ones():
    expected = _official_det_shapes()
    state = MasKDLoss().state_dict()
    assert {k: tuple(v.shape) for k, v in state.items() if k != "num_calls"} == expected
    assert set(state) - set(expected) == {"num_calls"}
    official_mode = MasKDLoss(official_counter_reset=True).state_dict()
    assert {k: tuple(v.shape) for k, v in official_mode.items()} == expected
    assert {k: tuple(v.shape) for k, v in MaskedFeatures().state_dict().items()} == expected
    assert {k: tuple(v.shape) for k, v in SegMaskModule().state_dict().items()} == {"mask_token": (8, 19)}
    assert set(MasKDSegLoss().state_dict()) == {"mask_module.mask_token"}


def test_init_statistics():
    torch.manual_seed(0)
    module = MaskModule(256, num_tokens=6)
    assert abs(module.mask_token.std().item() - 0.01) < 0.001
    for conv, fan_out in ((module.prob[0], 9 * 256), (module.prob[2], 6)):
        assert abs(conv.weight.std().item() / math.sqrt(2 / fan_out) - 1) < 0.05
        assert torch.count_nonzero(conv.bias) == 0


def test_dice_is_about_one_at_init():
    torch.manual_seed(0)
    module = MaskModule(256, num_tokens=6)
    _, dice = module(torch.randn(2, 256, 12, 10))
    assert 0.99 < dice.item() <= 1.0
    assert dice_coeff(torch.full((2, 4, 30), 0.5)).item() == pytest.approx(1.0, abs=1e-9)
    disjoint = torch.eye(4).repeat_interleave(3, dim=1)[None]  # 4 disjoint binary masks
    assert dice_coeff(disjoint).item() == 0.0


# ---------------------------------------------------------------------------------------------------------------
# Released token formats
# ---------------------------------------------------------------------------------------------------------------


def test_mmdet_token_checkpoint_loads_strictly():
    # the file the official MasKDLoss(pretrained=...) read when the fixture was recorded: {'meta', 'state_dict',
    # 'optimizer'}, detector keys beside the tokens, and a prefix before `mask_modules`
    ckpt = torch.load(MMDET_TOKENS, weights_only=True)
    assert set(ckpt) == {"meta", "state_dict", "optimizer"}
    assert any(k.startswith("distiller.losses.loss_maskd_fpn.mask_modules.") for k in ckpt["state_dict"])
    loss = MasKDLoss(channels=(C,) * LEVELS, pretrained=str(MMDET_TOKENS))
    for key, value in OFFICIAL["init_state_dict"].items():
        assert torch.equal(loss.state_dict()[key], value), key
    assert not any(p.requires_grad for p in loss.parameters())


def test_full_size_stage1_checkpoint_loads_into_default_loss(tmp_path):
    # the stage-1 output of the official hook: mask_modules.{0..4} straight in the detector's state dict
    torch.manual_seed(1)
    stage1 = MaskedFeatures()
    state = {"backbone.conv1.weight": torch.zeros(4, 3, 1, 1), "neck.fpn_convs.0.conv.bias": torch.zeros(4)}
    state.update(stage1.state_dict())
    path = tmp_path / "iter_2000.pth"
    save_checkpoint({"meta": {"iter": 2000}, "state_dict": state, "optimizer": {"state": {}}}, path)
    loss = MasKDLoss(pretrained=str(path))
    for key, value in stage1.state_dict().items():
        assert torch.equal(loss.state_dict()[key], value)
    assert int(loss.num_calls) == 0


def test_released_segmentation_tokens_load_unchanged(tmp_path):
    # the released file's layout (raw OrderedDict, one key, no prefix), written here: the file itself is not shipped
    path = write_released_format(tmp_path / "released_tokens.pth", released_format_tokens())
    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert isinstance(raw, OrderedDict) and list(raw) == ["mask_token"] and raw["mask_token"].shape == (8, 19)
    assert raw["mask_token"].dtype == torch.float32
    loss = MasKDSegLoss(pretrained=str(path))  # strict: exactly {'mask_token'}
    assert torch.equal(loss.mask_module.mask_token.detach(), raw["mask_token"])
    assert torch.equal(raw["mask_token"], OFFICIAL["seg"]["cases"]["released_format"]["tokens"])
    # a tenfold checkpoint of the loss (prefixed keys) loads too
    again = MasKDSegLoss()
    again.load_tokens({"state_dict": {"losses.maskd.mask_module.mask_token": raw["mask_token"]}})
    assert torch.equal(again.mask_module.mask_token.detach(), raw["mask_token"])


def test_bad_token_files_name_the_keys(tmp_path):
    good = {f"pre.{k}": v for k, v in MasKDLoss(channels=(C,) * 2).state_dict().items()}
    loss = MasKDLoss(channels=(C,) * 2)
    missing = {k: v for k, v in good.items() if not k.endswith("1.prob.2.bias")}
    with pytest.raises(ValueError, match=r"missing keys: mask_modules\.1\.prob\.2\.bias"):
        loss.load_tokens({"state_dict": missing})
    extra = {**good, "pre.mask_modules.2.mask_token": torch.zeros(T, C)}
    with pytest.raises(ValueError, match=r"unexpected keys: mask_modules\.2\.mask_token"):
        loss.load_tokens(extra)
    wrong = {**good, "pre.mask_modules.0.mask_token": torch.zeros(8, C)}
    with pytest.raises(ValueError, match=r"mask_modules\.0\.mask_token: file \(8, 16\) vs model \(6, 16\)"):
        loss.load_tokens(wrong)
    with pytest.raises(ValueError, match="no key containing 'mask_modules'"):
        loss.load_tokens({"backbone.weight": torch.zeros(1)})
    clash = {**good, "other.mask_modules.0.mask_token": torch.zeros(T, C)}
    with pytest.raises(ValueError, match="both give 'mask_modules.0.mask_token'"):
        loss.load_tokens(clash)
    with pytest.raises(FileNotFoundError):
        loss.load_tokens(tmp_path / "absent.pth")
    unsafe = tmp_path / "unsafe.pth"
    torch.save({"state_dict": {"mask_modules.0.mask_token": torch.zeros(T, C)}, "obj": nn.Linear(1, 1)}, unsafe)
    with pytest.raises(ValueError, match="weights_only"):
        loss.load_tokens(unsafe)
    with pytest.raises(ValueError, match=r"mask_token: file \(8, 18\) vs model \(8, 19\)"):
        MasKDSegLoss().load_tokens({"mask_token": torch.zeros(8, 18)})
    with pytest.raises(ValueError, match="unexpected keys: extra"):
        MasKDSegLoss().load_tokens({"mask_token": torch.zeros(8, 19), "extra": torch.zeros(1)})


# ---------------------------------------------------------------------------------------------------------------
# The warm-up counter
# ---------------------------------------------------------------------------------------------------------------


def _call(loss: MasKDLoss, i: int = 0) -> torch.Tensor:
    inputs = DET_INPUTS[i]
    return loss([x.float() for x in inputs["student"]], [x.float() for x in inputs["teacher"]])


def test_counter_counts_training_calls_only():
    loss = MasKDLoss(channels=(C,) * LEVELS, custom_mask_warmup=2)
    loss.eval()
    _call(loss)
    assert int(loss.num_calls) == 0 and not loss.custom_mask_active
    loss.train()
    first = _call(loss)
    _call(loss)
    assert int(loss.num_calls) == 2 and loss.custom_mask_active
    assert not torch.allclose(_call(loss), first)  # the same input, now with the customised mask
    never = MasKDLoss(channels=(C,) * LEVELS, custom_mask=False)
    never.load_state_dict(loss.state_dict())
    for _ in range(3):
        assert torch.equal(_call(never), first)


def test_counter_survives_checkpoints_and_resets_with_the_official_flag(tmp_path):
    loss = MasKDLoss(channels=(C,) * LEVELS, custom_mask_warmup=3)
    for _ in range(3):
        _call(loss)
    path = tmp_path / "loss.pt"
    save_checkpoint({"state_dict": loss.state_dict()}, path)
    resumed = MasKDLoss(channels=(C,) * LEVELS, custom_mask_warmup=3)
    resumed.load_state_dict(torch.load(path, weights_only=True)["state_dict"])
    assert int(resumed.num_calls) == 3 and resumed.custom_mask_active
    assert torch.equal(_call(resumed), _call(loss))
    # nested in a parent module (as in a task checkpoint)
    parent = nn.ModuleDict({"maskd": MasKDLoss(channels=(C,) * LEVELS, custom_mask_warmup=3)})
    parent.load_state_dict({f"maskd.{k}": v for k, v in loss.state_dict().items()})
    assert parent["maskd"].custom_mask_active

    official = MasKDLoss(channels=(C,) * LEVELS, custom_mask_warmup=3, official_counter_reset=True)
    for _ in range(4):
        _call(official)
    assert int(official.num_calls) == 4 and "num_calls" not in official.state_dict()
    official.load_state_dict(official.state_dict())  # a resume: the warm-up starts again
    assert int(official.num_calls) == 0 and not official.custom_mask_active


# ---------------------------------------------------------------------------------------------------------------
# Stage 1 on an FPN through a forward hook
# ---------------------------------------------------------------------------------------------------------------


class TinyDetector(nn.Module):
    """Two conv stages, torchvision's FPN (an OrderedDict of 3 levels plus 'pool') and a shared 1x1 head."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.ModuleList([nn.Conv2d(3, 8, 3, 2, 1), nn.Conv2d(8, 16, 3, 2, 1), nn.Conv2d(16, 32, 3, 2, 1)])
        self.fpn = FeaturePyramidNetwork([8, 16, 32], 16, extra_blocks=LastLevelMaxPool())
        self.head = nn.Conv2d(16, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = OrderedDict()
        for i, conv in enumerate(self.body):
            x = torch.relu(conv(x))
            feats[str(i)] = x
        levels = self.fpn(feats)
        return sum(self.head(f).square().mean() for f in levels.values())


def test_masked_features_on_a_torchvision_fpn():
    torch.manual_seed(0)
    detector = TinyDetector().requires_grad_(False)
    images = torch.randn(2, 3, 32, 32)
    masker = MaskedFeatures(channels=(16,) * 4, num_tokens=3)
    hook = masker.attach(detector, "fpn")
    with hook:
        task_loss = detector(images)
    dice = masker.dice_loss()
    # by hand: the head sees every level ('0', '1', '2', 'pool') replaced by its masked version
    levels = detector.fpn(OrderedDict((str(i), f) for i, f in enumerate(_body(detector, images))))
    assert list(levels) == ["0", "1", "2", "pool"]
    outs = [m(f) for m, f in zip(masker.mask_modules, levels.values(), strict=True)]
    expected = sum(detector.head(o.features).square().mean() for o in outs)
    torch.testing.assert_close(task_loss, expected)
    torch.testing.assert_close(dice, sum(o.dice for o in outs))
    assert len(masker.dice_terms) == 4
    (task_loss + dice).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in masker.parameters())
    assert all(p.grad is None for p in detector.parameters())
    # outside the block the detector is untouched
    plain = detector(images)
    assert not torch.allclose(plain, task_loss)
    torch.testing.assert_close(plain, sum(detector.head(f).square().mean() for f in levels.values()))
    # the learned tokens are what the stage-2 loss loads
    MasKDLoss(channels=(16,) * 4, num_tokens=3).load_tokens(masker.state_dict())
    # entering again starts a new collection
    with hook:
        detector(images)
    assert len(masker.dice_terms) == 4


def _body(detector: TinyDetector, x: torch.Tensor) -> list[torch.Tensor]:
    feats = []
    for conv in detector.body:
        x = torch.relu(conv(x))
        feats.append(x)
    return feats


def test_masked_features_checks_names_and_levels():
    detector = TinyDetector()
    with pytest.raises(ValueError, match="no submodule 'fnp'"):
        MaskedFeatures(channels=(16,) * 4).attach(detector, "fnp")
    with pytest.raises(ValueError, match="4 levels"):
        with MaskedFeatures(channels=(16,) * 5).attach(detector, "fpn"):
            detector(torch.randn(1, 3, 32, 32))
    with pytest.raises(ValueError, match="nothing|no level was masked"):
        MaskedFeatures(channels=(16,)).dice_loss()
    masked, _ = MaskedFeatures(channels=(4, 4)).forward((torch.randn(1, 4, 3, 3), torch.randn(1, 4, 2, 2)))
    assert isinstance(masked, tuple) and len(masked) == 2


def test_stage1_tokens_learn_to_diversify():
    torch.manual_seed(0)
    module = MaskModule(8, num_tokens=3)
    x = torch.randn(4, 8, 6, 6)
    optimiser = torch.optim.Adam(module.parameters(), lr=0.05)
    start = module(x).dice.item()
    for _ in range(40):
        optimiser.zero_grad()
        module(x).dice.backward()
        optimiser.step()
    assert start > 0.99 and module(x).dice.item() < 0.5 * start


# ---------------------------------------------------------------------------------------------------------------
# Input checks, contract, precision
# ---------------------------------------------------------------------------------------------------------------


def test_bad_inputs_raise_naming_the_problem():
    loss = MasKDLoss(channels=(C,) * LEVELS)
    s, t = DET_INPUTS[0]["student"], DET_INPUTS[0]["teacher"]
    with pytest.raises(ValueError, match="3 levels .* got 2 student and 3 teacher levels"):
        loss(s[:2], t)
    with pytest.raises(ValueError, match=r"level 1: student shape \(2, 16, 3, 4\) != teacher shape \(2, 16, 3, 3\)"):
        loss([s[0], torch.randn(2, 16, 3, 4), s[2]], t)
    with pytest.raises(ValueError, match=r"level 0: expected shape \(N, 16, H, W\)"):
        loss([torch.randn(2, 8, 5, 4), *s[1:]], [torch.randn(2, 8, 5, 4), *t[1:]])
    with pytest.raises(ValueError, match="different keys"):
        loss(dict(zip("abc", s, strict=True)), dict(zip("abd", t, strict=True)))
    with pytest.raises(ValueError, match="custom_mask_warmup"):
        MasKDLoss(custom_mask_warmup=-1)
    with pytest.raises(ValueError, match="at least one level"):
        MasKDLoss(channels=())
    with pytest.raises(ValueError, match="shape"):
        MasKDSegLoss()(torch.randn(1, 19, 4, 4), torch.randn(1, 19, 4, 5))
    with pytest.raises(ValueError, match=r"\(N, 19, H, W\)"):
        MasKDSegLoss()(torch.randn(1, 18, 4, 4), torch.randn(1, 18, 4, 4))
    with pytest.raises(ValueError, match="weight_mask=False"):
        MaskModule(4, weight_mask=False).forward_prob(torch.randn(1, 4, 2, 2))
    with pytest.raises(ValueError, match="at least 2 masks"):
        MaskModule(4, num_tokens=1)(torch.randn(1, 4, 2, 2))
    with pytest.raises(ValueError, match="channels and num_tokens"):
        MaskModule(4, num_tokens=0)


@pytest.mark.parametrize("make", [lambda: MasKDLoss(channels=(5,), custom_mask_warmup=0), MasKDSegLoss])
def test_loss_contract_on_one_map(make):
    """What tests/distill/test_losses_contract.py checks, for one (N, C, H, W) map: finite, backpropagates, rejects
    mismatched shapes."""
    loss = make()
    c = 5 if isinstance(loss, MasKDLoss) else 19
    gen = torch.Generator().manual_seed(0)
    z_s = (2 * torch.randn(2, c, 3, 3, generator=gen)).requires_grad_(True)
    z_t = 2 * torch.randn(2, c, 3, 3, generator=gen)
    value = loss(z_s, z_t)
    assert value.ndim == 0 and torch.isfinite(value)
    value.backward()
    assert torch.isfinite(z_s.grad).all() and z_s.grad.abs().sum() > 0
    for other in ((2, c + 1, 3, 3), (3, c, 3, 3)):
        with pytest.raises(ValueError, match="shape"):
            loss(torch.randn(other), z_t)
        with pytest.raises(ValueError, match="shape"):
            loss(z_s.detach(), torch.randn(other))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_and_half_inputs_are_finite(dtype):
    torch.manual_seed(0)
    loss = MasKDLoss(channels=(C,) * LEVELS, custom_mask_warmup=0)
    seg = MasKDSegLoss()
    stage1 = MaskedFeatures(channels=(C,) * LEVELS, num_tokens=T)
    inputs = DET_INPUTS[0]
    students = [x.float().requires_grad_(True) for x in inputs["student"]]
    conv = nn.Conv2d(C, C, 1)
    with torch.autocast("cpu", dtype=dtype):
        aligned = [conv(s) for s in students]  # half precision under autocast
        assert aligned[0].dtype == dtype
        value = loss(aligned, [x.float() for x in inputs["teacher"]])
        masked, dice = stage1([x.float() for x in inputs["teacher"]])
        seg_value = seg(torch.randn(2, 19, 6, 6), torch.randn(2, 19, 6, 6))
    assert value.dtype == torch.float32 and torch.isfinite(value)
    assert torch.isfinite(dice) and all(torch.isfinite(m).all() for m in masked)
    assert seg_value.dtype == torch.float32 and torch.isfinite(seg_value)
    value.backward()
    assert all(torch.isfinite(s.grad).all() for s in students)
    half = loss([x.to(dtype) for x in inputs["student"]], [x.to(dtype) for x in inputs["teacher"]])
    assert half.dtype == torch.float32 and torch.isfinite(half)
    reference = loss([x.float() for x in inputs["student"]], [x.float() for x in inputs["teacher"]])
    assert _rel(half, reference) < 0.05


def test_token_masks_and_distance_shapes():
    tokens = torch.randn(3, 4)
    x = torch.randn(2, 4, 5, 6).to(memory_format=torch.channels_last)  # non-contiguous layouts work
    masks = token_masks(tokens, x)
    assert masks.shape == (2, 3, 5, 6) and ((masks > 0) & (masks < 1)).all()
    assert masked_distance(x, torch.zeros_like(x), masks).shape == (2, 3, 4)
    assert "custom_mask_warmup=1000" in repr(MasKDLoss()) and "num_classes=19" in repr(MasKDSegLoss())
