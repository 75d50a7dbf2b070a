"""LightViT: the blocks against naive references written from the spec, input sizes, the dense backbone, loading.

Parity with the official code's outputs lives in ``test_lightvit_official.py``; the timm contract (forward,
backward, heads, features) in ``test_models_contract.py``.
"""

from __future__ import annotations

import math

import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F

import tenfold.models  # noqa: F401
from tenfold.models.lightvit import (
    LightViT,
    LightViTAttention,
    LightViTBackbone,
    ResidualMergePatch,
    load_lightvit_checkpoint,
    official_flops,
    relative_position_index,
)

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = dict(embed_dims=(16, 32, 48), num_layers=(1, 2, 1), num_heads=(1, 2, 3), mlp_ratios=(4, 4, 4), num_tokens=3)


def _small(**kw) -> LightViT:
    torch.manual_seed(0)
    return LightViT(**{**SMALL, "window_size": 2, "neck_dim": 24, "num_classes": 5, **kw}).eval()


def _randomise(module: nn.Module, seed: int = 0) -> nn.Module:
    """Give every float parameter a random value (zero biases would hide bias bugs)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.3)
    return module


# ---------------------------------------------------------------------------------------------------------------
# naive references (loops over windows and tokens; float64)


def _naive_attention(attn: LightViTAttention, x: torch.Tensor, H: int, W: int, pad: bool) -> torch.Tensor:
    B, N, C = x.shape
    NT, ws, h = attn.num_tokens, attn.window_size, attn.num_heads
    d = C // h
    x_glb, x_img = x[:, :NT], x[:, NT:].reshape(B, H, W, C)
    Hp, Wp = (H + (-H) % ws, W + (-W) % ws) if pad else (H, W)
    x_img = F.pad(x_img, (0, 0, 0, Wp - W, 0, Hp - H))
    qkv_img = attn.qkv(x_img)  # (B, Hp, Wp, 3C)
    q, k, v = qkv_img[..., :C], qkv_img[..., C : 2 * C], qkv_img[..., 2 * C :]
    table = attn.relative_position_bias_table
    local = torch.zeros(B, Hp, Wp, C, dtype=x.dtype)
    for r0 in range(0, Hp, ws):
        for c0 in range(0, Wp, ws):
            cells = [(r0 + i, c0 + j) for i in range(ws) for j in range(ws)]
            for hd in range(h):
                sl = slice(hd * d, (hd + 1) * d)
                for yi, xi in cells:
                    logits = []
                    for yj, xj in cells:
                        rel = (yi - yj + ws - 1) * (2 * ws - 1) + (xi - xj + ws - 1)
                        logits.append((q[:, yi, xi, sl] * k[:, yj, xj, sl]).sum(-1) / math.sqrt(d) + table[rel, hd])
                    a = torch.stack(logits, -1).softmax(-1)  # (B, ws*ws)
                    vals = torch.stack([v[:, yj, xj, sl] for yj, xj in cells], 1)  # (B, ws*ws, d)
                    local[:, yi, xi, sl] = (a[..., None] * vals).sum(1)
    local = local[:, :H, :W].reshape(B, H * W, C)
    q_i, k_i, v_i = (t[:, :H, :W].reshape(B, H * W, C) for t in (q, k, v))
    q_g = attn.qkv(x_glb)[..., :C]
    glb = torch.zeros(B, NT, C, dtype=x.dtype)
    bcast = torch.zeros(B, H * W, C, dtype=x.dtype)
    for hd in range(h):
        sl = slice(hd * d, (hd + 1) * d)
        a = (q_g[..., sl] @ k_i[..., sl].transpose(1, 2) / math.sqrt(d)).softmax(-1)
        glb[..., sl] = a @ v_i[..., sl]
    kv = attn.kv_global(glb)
    k_g, v_g = kv[..., :C], kv[..., C:]
    for hd in range(h):
        sl = slice(hd * d, (hd + 1) * d)
        a = (q_i[..., sl] @ k_g[..., sl].transpose(1, 2) / math.sqrt(d)).softmax(-1)
        bcast[..., sl] = a @ v_g[..., sl]
    return attn.proj(torch.cat([glb, local + bcast], 1))


def test_relative_position_index_is_the_swin_formula():
    ws = 3
    idx = relative_position_index(ws).view(ws * ws, ws * ws)
    for i in range(ws * ws):
        for j in range(ws * ws):
            (yi, xi), (yj, xj) = divmod(i, ws), divmod(j, ws)
            assert idx[i, j] == (yi - yj + ws - 1) * (2 * ws - 1) + (xi - xj + ws - 1)
    assert relative_position_index(7).shape == (2401,) and relative_position_index(7).dtype == torch.int64


@pytest.mark.parametrize(("H", "W", "pad"), [(4, 6, False), (6, 4, False), (5, 3, True), (2, 2, False)])
def test_attention_equals_naive_window_loop(H, W, pad):
    attn = _randomise(LightViTAttention(12, num_tokens=3, num_heads=3, window_size=2, qkv_bias=True, pad=pad)).double()
    x = torch.randn(2, 3 + H * W, 12, dtype=torch.float64)
    torch.testing.assert_close(attn(x, H, W), _naive_attention(attn, x, H, W, pad), rtol=1e-10, atol=1e-10)


def test_attention_rejects_grids_off_the_window_unless_padding():
    attn = LightViTAttention(8, num_tokens=2, num_heads=2, window_size=7)
    with pytest.raises(ValueError, match="multiple of the window 7, got 6x14"):
        attn(torch.randn(1, 2 + 6 * 14, 8), 6, 14)


def test_merge_equals_maxpool3d_and_swin_slicing():
    merge = _randomise(ResidualMergePatch(6, 10, num_tokens=2)).double()
    B, H, W, C = 2, 4, 6, 6
    x = torch.randn(B, 2 + H * W, C, dtype=torch.float64)
    out, grid = merge(x, H, W)
    img = x[:, 2:].reshape(B, H, W, C)
    res = merge.res_proj(nn.MaxPool3d((2, 2, 1), (2, 2, 1))(img).reshape(B, -1, C))
    quads = torch.cat([img[:, 0::2, 0::2], img[:, 1::2, 0::2], img[:, 0::2, 1::2], img[:, 1::2, 1::2]], -1)
    ref = merge.reduction(merge.norm(quads.reshape(B, -1, 4 * C))) + res
    assert grid == (2, 3)
    torch.testing.assert_close(out[:, 2:], ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out[:, :2], merge.proj(merge.norm2(x[:, :2])), rtol=1e-12, atol=1e-12)


def test_merge_pads_odd_grids_only_when_asked():
    x = torch.randn(1, 2 + 5 * 3, 6)
    with pytest.raises(ValueError, match="even token grid, got 5x3"):
        ResidualMergePatch(6, 8, num_tokens=2)(x, 5, 3)
    out, grid = ResidualMergePatch(6, 8, num_tokens=2, pad=True)(x, 5, 3)
    assert grid == (3, 2) and out.shape == (1, 2 + 6, 8)


def test_layer_norm_epsilons_follow_the_official_model():
    model = _small()
    eps = {name: m.eps for name, m in model.named_modules() if isinstance(m, nn.LayerNorm)}
    assert eps["norm"] == eps["stages.0.0.norm1"] == eps["stages.1.2.norm2"] == 1e-6
    assert eps["patch_embed.norm"] == eps["stages.0.0.mlp.attn.norm"] == eps["stages.1.0.norm"] == 1e-5
    assert eps["stages.1.0.norm2"] == eps["neck.1"] == 1e-5


def test_initialisation_is_the_official_one():
    torch.manual_seed(0)
    model = timm.create_model("lightvit_tiny")
    # every Linear trunc-normal(0.02) with zero bias, the head included (official apply() without names)
    for name in ("head", "neck.0", "stages.2.6.attn.qkv"):
        lin = model.get_submodule(name)
        assert 0.017 < lin.weight.std().item() < 0.023, name
        assert torch.count_nonzero(lin.bias) == 0, name
    assert 0.017 < model.global_token.std().item() < 0.023
    assert 0.015 < model.stages[0][0].attn.relative_position_bias_table.std().item() < 0.025


def test_pooling_includes_the_global_tokens():
    model = _small()
    x = torch.randn(2, 3, 128, 64)
    with torch.no_grad():
        tokens = model.forward_features(x)
        assert tokens.shape == (2, 3 + 4 * 2, 48)  # NT global tokens + (128/32) x (64/32) image tokens
        pooled = model.forward_head(tokens, pre_logits=True)
        torch.testing.assert_close(pooled, model.neck(tokens).mean(1))
        assert not torch.allclose(pooled, model.neck(tokens[:, 3:]).mean(1))


def test_classifier_rejects_sizes_off_the_window_grid_with_the_valid_sizes():
    model = timm.create_model("lightvit_tiny").eval()
    with pytest.raises(ValueError, match=r"multiples of 224.*224x448.*got 200x264"):
        model(torch.randn(1, 3, 200, 264))
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        model(torch.randn(3, 224, 224))
    with torch.no_grad():
        assert model(torch.randn(1, 3, 224, 448)).shape == (1, 1000)  # non-square multiples are valid


def test_drop_path_schedule_and_identity_when_zero():
    model = timm.create_model("lightvit_base", drop_path_rate=0.3)
    paths = [b.drop_path for s in model.stages for b in s if hasattr(b, "drop_path")]
    assert len(paths) == 3 + 8 + 6 and isinstance(paths[0], nn.Identity)  # rate 0 for the first block
    rates = [p.drop_prob for p in paths[1:]]
    torch.testing.assert_close(torch.tensor(rates), torch.linspace(0, 0.3, 17)[1:])
    assert isinstance(timm.create_model("lightvit_tiny").stages[1][1].drop_path, nn.Identity)


def test_grad_checkpointing_gives_the_same_gradients():
    model = _small().train()
    x = torch.randn(2, 3, 64, 128)
    grads = []
    for enable in (False, True):
        model.zero_grad()
        model.set_grad_checkpointing(enable)
        model(x).square().sum().backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b)


def test_no_weight_decay_reaches_the_optimiser_groups():
    from tenfold.engine.optim import OptimConfig, configure_optimizers

    model = _small()
    no_decay = model.no_weight_decay()
    assert "global_token" in no_decay and "stages.1.2.attn.relative_position_bias_table" in no_decay
    opt = configure_optimizers(None, model, OptimConfig(opt="adamw", lr=1e-3, weight_decay=0.04, sched="none"))
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    assert not decayed & no_decay
    assert "stages.0.0.attn.qkv.weight" in decayed and "head.weight" in decayed
    assert not any(n.endswith(".bias") for n in decayed)


# ---------------------------------------------------------------------------------------------------------------
# dense backbone


def test_features_only_is_the_padded_dense_backbone():
    model = timm.create_model("lightvit_tiny", features_only=True).eval()
    assert isinstance(model, LightViTBackbone)
    assert model.feature_info.channels() == [64, 128, 256] and model.feature_info.reduction() == [8, 16, 32]
    keys = list(model.state_dict())
    assert "norm0.weight" in keys and "norm2.bias" in keys and not any(k.startswith(("neck.", "head.")) for k in keys)
    with torch.no_grad():
        maps = model(torch.randn(1, 3, 200, 264))
    assert [tuple(m.shape) for m in maps] == [(1, 64, 25, 33), (1, 128, 13, 17), (1, 256, 7, 9)]


def test_backbone_last_block_drops_global_tokens_and_stem_bn_stays_frozen():
    model = LightViTBackbone(**SMALL, window_size=2).train()
    blocks = [b for s in model.stages for b in s if hasattr(b, "last_block")]
    assert [b.last_block for b in blocks] == [False, False, False, True]
    assert not any(m.training for m in model.patch_embed.modules() if isinstance(m, nn.BatchNorm2d))
    before = model.patch_embed.stem[1].running_mean.clone()
    model(torch.randn(2, 3, 40, 24))
    assert torch.equal(before, model.patch_embed.stem[1].running_mean)


def test_backbone_equals_classifier_body_on_window_multiples():
    """Where nothing needs padding, the backbone's maps are the classifier's stage outputs (same weights)."""
    cls = _small()
    dense = LightViTBackbone(**SMALL, window_size=2, out_indices=(0, 1)).eval()
    state = {k: v for k, v in cls.state_dict().items() if not k.startswith(("norm.", "neck.", "head."))}
    dense.load_state_dict({**dense.state_dict(), **state})
    x = torch.randn(1, 3, 128, 64)
    with torch.no_grad():
        maps = cls.forward_intermediates(x, intermediates_only=True)
        ours = dense(x)
    for i in (0, 1):
        torch.testing.assert_close(ours[i], dense.get_submodule(f"norm{i}")(maps[i].flatten(2).transpose(1, 2))
                                   .transpose(1, 2).reshape(maps[i].shape))  # fmt: skip


# ---------------------------------------------------------------------------------------------------------------
# checkpoints


@pytest.fixture(scope="module")
def tiny_state():
    torch.manual_seed(1)
    return timm.create_model("lightvit_tiny").state_dict()


@pytest.mark.parametrize("wrap", ["raw", "state_dict", "model", "module."])
def test_released_formats_load_strictly(tmp_path, tiny_state, wrap):
    state = {"module." + k: v for k, v in tiny_state.items()} if wrap == "module." else tiny_state
    payload = state if wrap in ("raw", "module.") else {wrap: state, "epoch": 299}
    path = tmp_path / "lightvit_tiny.ckpt"
    torch.save(payload, path)
    model = load_lightvit_checkpoint(timm.create_model("lightvit_tiny"), path)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in tiny_state.items())
    via_timm = timm.create_model("lightvit_tiny", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    assert all(torch.equal(via_timm.state_dict()[k], v) for k, v in tiny_state.items())


def test_classifier_weights_load_into_the_backbone(tmp_path, tiny_state):
    path = tmp_path / "t.ckpt"
    torch.save({"state_dict": tiny_state}, path)
    dense = timm.create_model("lightvit_tiny", features_only=True, pretrained=True,
                              pretrained_cfg_overlay=dict(file=str(path)))  # fmt: skip
    assert torch.equal(dense.state_dict()["stages.2.3.attn.qkv.weight"], tiny_state["stages.2.3.attn.qkv.weight"])
    # a detector checkpoint (mmdet) keeps the backbone entries under backbone.
    torch.save({"state_dict": {"backbone." + k: v for k, v in dense.state_dict().items()} | {"neck.x": torch.ones(1)}},
               path)  # fmt: skip
    again = load_lightvit_checkpoint(LightViTBackbone(), path)
    assert torch.equal(again.state_dict()["norm1.weight"], dense.state_dict()["norm1.weight"])


def test_a_file_that_does_not_fit_lists_missing_unexpected_and_shapes(tmp_path, tiny_state):
    bad = dict(tiny_state)
    del bad["stages.1.3.mlp.fc1.weight"]
    bad["extra.weight"] = torch.zeros(1)
    bad["head.weight"] = torch.zeros(10, 1280)
    path = tmp_path / "bad.pth"
    torch.save(bad, path)
    with pytest.raises(ValueError) as err:
        load_lightvit_checkpoint(timm.create_model("lightvit_tiny"), path)
    msg = str(err.value)
    assert "stages.1.3.mlp.fc1.weight" in msg and "extra.weight" in msg and "head.weight: file (10, 1280)" in msg


def test_pickled_objects_and_missing_files_are_refused(tmp_path):
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"x": torch.zeros(1)}, "obj": nn.Linear(1, 1)}, path)
    with pytest.raises(ValueError):
        load_lightvit_checkpoint(timm.create_model("lightvit_tiny"), path)
    with pytest.raises(FileNotFoundError):
        timm.create_model("lightvit_tiny", pretrained=True, pretrained_cfg_overlay=dict(file=str(tmp_path / "no")))
    with pytest.raises(ValueError, match="pretrained_cfg_overlay"):
        timm.create_model("lightvit_small", pretrained=True)


# ---------------------------------------------------------------------------------------------------------------
# counts and export


def test_parameter_counts_and_official_convention_flops():
    expected = {
        "lightvit_tiny": (9_377_698, 0.733),
        "lightvit_small": (19_200_248, 1.743),
        "lightvit_base": (35_195_653, 3.923),
    }  # fmt: skip  (spec section 2.7)
    for name, (params, gmacs) in expected.items():
        model = timm.create_model(name)
        assert sum(p.numel() for p in model.parameters()) == params
        assert official_flops(model) / 1e9 == pytest.approx(gmacs, abs=6e-4)


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning", "ignore::DeprecationWarning")
def test_onnx_export_gives_the_same_logits(tmp_path):
    import onnxruntime as ort  # a dev dependency: a missing install must fail, not skip

    model = timm.create_model("lightvit_tiny").eval()
    x = torch.randn(2, 3, 224, 224)
    path = tmp_path / "lightvit_tiny.onnx"
    torch.onnx.export(model, (x,), str(path), input_names=["images"], output_names=["logits"], dynamo=False,
                      dynamic_axes={"images": {0: "batch"}})  # fmt: skip
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x2 = torch.randn(3, 3, 224, 224)
    for inp in (x, x2):
        (out,) = session.run(None, {"images": inp.numpy()})
        with torch.no_grad():
            torch.testing.assert_close(torch.from_numpy(out), model(inp), rtol=1e-4, atol=1e-4)


def test_drop_rate_acts_in_the_ffn_only_as_officially():
    torch.manual_seed(0)
    model = LightViT(**SMALL, window_size=2, neck_dim=24, num_classes=5, drop_rate=0.5).train()
    dropouts = {n for n, m in model.named_modules() if isinstance(m, nn.Dropout)}
    assert dropouts and all(".mlp.drop" in n for n in dropouts)  # none after attn.proj, none before the head
    x = torch.randn(2, 3, 64, 64)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), model(x))
