"""GreenMIM against the official code's stored outputs, checkpoint loading, and equality with timm's dense Swin.

The official outputs are float64 recordings (tests/fixtures/greenmim/README.md): our float64 runs are compared with
``assert_matches_official`` (1e-10 of each tensor's scale), and one float32 run with ``assert_float32_close``
(tests/helpers/parity.py).
"""

from __future__ import annotations

import argparse
import json
import math
import pickle
import zlib
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from parity import assert_float32_close, assert_matches_official

from tenfold.mim.convert import (
    checkpoint_filter_fn,
    encoder_state_dict,
    load_official,
    swap_merge_channel_order,
    timm_swin_kwargs,
    to_timm_state_dict,
    to_timm_swin,
)
from tenfold.mim.encoder import GreenSwin, GreenSwinConfig
from tenfold.mim.greenmim import GreenMIM, GreenMIMConfig, masked_pixel_loss, patchify, unpatchify
from tenfold.mim.masking import mask_from_noise

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "greenmim"
REFS = torch.load(FIXTURES / "official_outputs.pt", weights_only=True)
CASES = json.loads((FIXTURES / "official_meta.json").read_text())["cases"]
#: the model of the fixtures' ``tiny_w3`` case (96 px, window 3, 3x3 units of 32 px), for tests without recordings
TINY_W3 = GreenMIMConfig(
    encoder=GreenSwinConfig(img_size=96, embed_dim=16, depths=(2, 2, 2, 1), num_heads=(1, 2, 4, 8), window_size=3),
    decoder_embed_dim=32,
    decoder_num_heads=4,
)


def seeded(key: str, shape) -> torch.Tensor:
    """The key-seeded weight rule of the fixtures (README.md): a function of the key name and shape only."""
    g = torch.Generator().manual_seed(zlib.crc32(key.encode()))
    z = torch.randn(tuple(shape), generator=g)
    if key.endswith("relative_position_bias_table"):
        return 0.5 * z
    if len(shape) == 1:
        return 1 + 0.1 * z if ("norm" in key and key.endswith(".weight")) else 0.02 * z
    if key == "mask_token":
        return 0.02 * z
    return z / math.sqrt(math.prod(shape[1:]))


def _model(cfg: dict, ratio: float, **kw) -> GreenMIM:
    return GreenMIM(
        GreenMIMConfig(
            encoder=GreenSwinConfig(
                img_size=cfg["img_size"],
                embed_dim=cfg["embed_dim"],
                depths=cfg["depths"],
                num_heads=cfg["num_heads"],
                window_size=cfg["window_size"],
                **kw,
            ),
            decoder_embed_dim=cfg["dec_dim"],
            decoder_num_heads=cfg["dec_heads"],
            mask_ratio=ratio,
        )
    ).eval()


def _official_args() -> argparse.Namespace:
    """The ``args`` namespace the official ``main_pretrain.py`` saves beside the weights (2022 Swin-B script values;
    ``rank``, ``gpu``, ``distributed`` and ``dist_backend`` are added by MAE's ``init_distributed_mode``)."""
    return argparse.Namespace(
        batch_size=256,
        epochs=800,
        accum_iter=1,
        model="green_mim_swin_base_patch4_dec5121b1",  # the 2022 factory name
        input_size=224,
        mask_ratio=0.75,
        norm_pix_loss=True,
        weight_decay=0.05,
        lr=8e-4,
        blr=1e-4,
        min_lr=0.0,
        warmup_epochs=40,
        data_path="/mnt/cache/share/images/",
        output_dir="./ckpts/green_mim_swin_base_patch4_dec5121b1/in1k/ep800_40_lr1.0e-4_bs256_wd0.05_m0.75_",
        log_dir="./output_dir",
        device="cuda",
        seed=0,
        resume="",
        start_epoch=0,
        num_workers=10,
        pin_mem=True,
        save_freq=25,
        world_size=8,
        local_rank=0,
        dist_on_itp=False,
        dist_url="env://",
        rank=0,
        gpu=0,
        distributed=True,
        dist_backend="nccl",
    )


def _official_optimizer_state(model: GreenMIM, state: dict) -> dict:
    """A real AdamW state dict as the official run saves it: two groups (no decay for 1-D parameters and names with
    ``position_bias`` or ``token``), betas (0.9, 0.95), after one step, so every parameter has moments."""
    named = [(n, torch.nn.Parameter(state[n].clone())) for n, _ in model.named_parameters()]
    no_decay = [p for n, p in named if p.ndim == 1 or "position_bias" in n or "token" in n]
    decay = [p for n, p in named if not (p.ndim == 1 or "position_bias" in n or "token" in n)]
    opt = torch.optim.AdamW(
        [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": 0.05}], lr=8e-4, betas=(0.9, 0.95)
    )
    for _, p in named:
        p.grad = torch.full_like(p, 1e-3)
    opt.step()
    return opt.state_dict()


def _official_checkpoint(model: GreenMIM) -> dict:
    """An official-format file: MAE's ``misc.save_model`` dict ``{'model', 'optimizer', 'epoch', 'scaler', 'args'}``
    with seeded weights, the recomputed buffers included, a real AdamW state, a GradScaler state and the
    ``argparse.Namespace`` of the run."""
    state = {k: (v if k == "decoder_pos_embed" else seeded(k, v.shape)) for k, v in model.state_dict().items()}
    for i, layer in enumerate(model.encoder.layers):
        ws2 = layer.window_size**2
        for j in range(len(layer.blocks)):
            state[f"encoder.layers.{i}.blocks.{j}.attn.relative_position_index"] = torch.zeros(
                ws2, ws2, dtype=torch.long
            )
    scaler = {**torch.amp.GradScaler("cpu").state_dict(), "scale": 32768.0, "_growth_tracker": 1210}
    return {
        "model": state,
        "optimizer": _official_optimizer_state(model, state),
        "epoch": 799,
        "scaler": scaler,
        "args": _official_args(),
    }


def _inputs(meta: dict, num_units: int, dtype: torch.dtype = torch.float32):
    """The recorded inputs: images drawn in float32 and cast (as the recording did), the mask from float32 noise."""
    g = torch.Generator().manual_seed(meta["image_seed"])
    size = meta["config"]["img_size"]
    imgs = torch.randn(meta["batch"], 3, size, size, generator=g).to(dtype)
    noise = torch.rand(1, num_units, generator=torch.Generator().manual_seed(meta["noise_seed"]))
    return imgs, mask_from_noise(noise, meta["ratio"], meta["batch"])


def _seeded_model(tag: str, dtype: torch.dtype = torch.float64, **kw) -> GreenMIM:
    """The fixture case's model with the key-seeded float32 weights, cast to ``dtype`` (the recording's path)."""
    meta = CASES[tag]
    model = _model(meta["config"], meta["ratio"], **kw)
    load_official(_official_checkpoint(model), model, released_channel_order="/rowfirst/" in tag)
    return model.to(dtype)


def _refs(tag: str, *names: str) -> dict:
    return {name: REFS[f"{tag}/{name}"] for name in names}


@pytest.mark.parametrize("tag", [t for t in CASES if "/swin/" in t])
def test_encoder_prediction_loss_equal_official(tag, one_thread):
    model = _seeded_model(tag)
    imgs, um = _inputs(CASES[tag], model.num_units, torch.float64)
    assert torch.equal(um.mask[:1], REFS[f"{tag}/mask"])
    with torch.no_grad():
        out = model(imgs, um)
        latent = model.encoder(imgs, um.mask)
    ours = {"latent": latent, "pred": out.pred, "loss": out.loss.reshape(1)}
    assert_matches_official(ours, _refs(tag, "latent", "pred", "loss"), what=tag)


def test_float32_encoder_close_to_official(one_thread):
    """The one float32 check: our float32 encoder against the float64 recording. Depth 12 = the dependent
    rounding steps of tiny_w3's encoder: patch embedding + LayerNorm (1), 7 Swin blocks (7), 3 patch merges (3),
    the final LayerNorm (1); each step's own dot products (at most 4C = 512 terms here) are covered by the
    helper's safety factor. Measured: 5.3e-7 of the scale, bound 2.3e-5."""
    tag = "tiny_w3/swin/101"
    model = _seeded_model(tag, torch.float32)
    imgs, um = _inputs(CASES[tag], model.num_units, torch.float32)
    with torch.no_grad():
        latent = model.encoder(imgs, um.mask)
    assert latent.dtype == torch.float32
    assert_float32_close(latent, REFS[f"{tag}/latent"], depth=12, what=f"{tag} latent (float32 run)")


@pytest.mark.parametrize("tag", [t for t in CASES if "/rowfirst/" in t])
def test_released_channel_order_reproduces_pre_b981012_code(tag, one_thread):
    meta = CASES[tag]
    model = _model(meta["config"], meta["ratio"])
    ckpt = _official_checkpoint(model)
    imgs, um = _inputs(meta, model.num_units, torch.float64)
    load_official(ckpt, model, released_channel_order=True)
    model.double()
    with torch.no_grad():
        assert_matches_official(model.encoder(imgs, um.mask), REFS[f"{tag}/latent"], what=f"{tag} latent")
        load_official(ckpt, model, released_channel_order=False)  # without the swap the function differs
        assert (model.encoder(imgs, um.mask) - REFS[f"{tag}/latent"]).abs().max() > 1e-2


def test_swap_is_an_involution_on_blocks_1_and_2():
    state = {
        "layers.0.downsample.norm.weight": torch.arange(8.0),
        "layers.0.downsample.reduction.weight": torch.arange(16.0).view(2, 8),
    }
    swapped = swap_merge_channel_order(state)
    assert swapped["layers.0.downsample.norm.weight"].tolist() == [0, 1, 4, 5, 2, 3, 6, 7]
    assert swapped["layers.0.downsample.reduction.weight"][1].tolist() == [8, 9, 12, 13, 10, 11, 14, 15]
    again = swap_merge_channel_order(swapped)
    assert all(torch.equal(again[k], v) for k, v in state.items())


def test_checkpoint_filter_and_strict_errors(tmp_path):
    cfg = CASES["tiny_w3/swin/101"]["config"]
    model = _model(cfg, 0.75)
    ckpt = _official_checkpoint(model)
    path = tmp_path / "checkpoint-199.pth"
    torch.save(ckpt, path)
    enc = GreenSwin(TINY_W3.encoder)
    load_official(path, enc)  # the encoder alone from a pre-training file
    assert torch.equal(enc.norm.weight, ckpt["model"]["encoder.norm.weight"])
    filtered = checkpoint_filter_fn(ckpt)
    assert not any("relative_position_index" in k for k in filtered)
    bad = dict(ckpt["model"])
    bad.pop("decoder_pred.bias")
    with pytest.raises(ValueError, match="decoder_pred.bias"):
        load_official(bad, model)
    with pytest.raises(FileNotFoundError):
        load_official(tmp_path / "missing.pth", model)


def test_official_file_loads_through_every_path(tmp_path, one_thread):
    """A file as the official run writes it (argparse args, optimizer and scaler states) loads safely everywhere."""
    from tenfold.cli import main as tenfold_main
    from tenfold.mim.convert import convert_checkpoint

    cfg = CASES["tiny_w3/swin/101"]["config"]
    model = _model(cfg, 0.75)
    ckpt = _official_checkpoint(model)
    path = tmp_path / "checkpoint-799.pth"
    torch.save(ckpt, path)
    with pytest.raises(pickle.UnpicklingError, match="Namespace"):  # why a plain weights_only load is not enough
        torch.load(path, weights_only=True)
    assert load_official(path, model) is model
    assert all(torch.equal(v, ckpt["model"][k]) for k, v in model.state_dict().items() if k != "decoder_pos_embed")
    enc = GreenSwin(TINY_W3.encoder)
    load_official(path, enc)
    weights = ckpt["model"]
    assert torch.equal(enc.layers[1].blocks[0].attn.qkv.weight, weights["encoder.layers.1.blocks.0.attn.qkv.weight"])
    timm_file = convert_checkpoint(path, tmp_path / "timm.pth", img_size=96)
    timm_state = torch.load(timm_file, weights_only=True)
    # timm moves the downsample at the end of stage 0 to the start of stage 1
    reduction = weights["encoder.layers.0.downsample.reduction.weight"]
    assert torch.equal(timm_state["layers.1.downsample.reduction.weight"], reduction)
    swin_file = tmp_path / "swin.pth"
    assert tenfold_main(["greenmim-convert", str(path), str(swin_file), "--format", "swin"]) == 0
    swin_state = torch.load(swin_file, weights_only=True)
    assert set(swin_state) == set(enc.state_dict())
    assert all(torch.equal(v, ckpt["model"]["encoder." + k]) for k, v in swin_state.items())


@pytest.mark.parametrize("img, window, depths", [(96, 3, (2, 2, 2, 1)), (224, 7, (2, 2, 2, 2))])
def test_all_visible_encoder_equals_timm_swin(img, window, depths, tmp_path, one_thread):
    import timm

    torch.manual_seed(0)
    enc = GreenSwin(
        GreenSwinConfig(img_size=img, embed_dim=16, depths=depths, num_heads=(1, 2, 4, 8), window_size=window)
    ).eval()
    for name, p in enc.named_parameters():
        p.data.copy_(seeded(name, p.shape))
    timm_swin = to_timm_swin(enc).eval()
    x = torch.randn(2, 3, img, img)
    with torch.no_grad():
        ours = enc(x)
        ref = timm_swin.forward_features(x)
    torch.testing.assert_close(ours, ref.flatten(1, 2), atol=1e-5, rtol=0)
    # and the same weights through timm's own loader, from a Microsoft-layout file (what the official
    # extract_backbone.py writes): timm's filter moves the downsample layers and rebuilds the index buffers
    path = tmp_path / "swin_backbone.pth"
    torch.save(encoder_state_dict(enc), path)
    loaded = timm.create_model(
        "swin_tiny_patch4_window7_224",
        pretrained=True,
        pretrained_cfg_overlay={"file": str(path)},
        num_classes=0,
        **{k: v for k, v in timm_swin_kwargs(enc).items() if k != "patch_size"},
    ).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded.forward_features(x).flatten(1, 2), ours, atol=1e-5, rtol=0)


def test_to_timm_swin_refuses_grids_that_are_not_window_multiples():
    """At 256 px with window 7 the stage-0 grid is 64x64: timm pads its border windows, GreenSwin shrinks them."""
    enc = GreenSwin(
        GreenSwinConfig(img_size=256, embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8), window_size=7)
    ).eval()
    with pytest.raises(ValueError, match=r"stage 0 grid 64x64 .* not a multiple of window 7"):
        to_timm_swin(enc)
    # the reason: the same weights give a different function in timm at this size
    from timm.models.swin_transformer import SwinTransformer

    timm_swin = SwinTransformer(num_classes=0, **timm_swin_kwargs(enc)).eval()
    timm_swin.load_state_dict(to_timm_state_dict(encoder_state_dict(enc), timm_swin), strict=False)
    x = torch.randn(1, 3, 256, 256)
    with torch.no_grad():
        assert (timm_swin.forward_features(x).flatten(1, 2) - enc(x)).abs().max() > 1e-3


def test_masked_pixels_do_not_change_the_visible_encoding():
    """The encoder sees visible units only: replacing the pixels of masked units changes nothing."""
    torch.manual_seed(1)
    enc = GreenSwin(TINY_W3.encoder).eval()
    um = mask_from_noise(torch.rand(1, 9), 0.6, 2)
    x = torch.randn(2, 3, 96, 96)
    pix = um.mask[0].view(3, 3).repeat_interleave(32, 0).repeat_interleave(32, 1).bool()
    y = x.clone()
    y[:, :, pix] = torch.randn_like(y[:, :, pix])
    with torch.no_grad():
        torch.testing.assert_close(enc(x, um.mask), enc(y, um.mask))
        assert (enc(x) - enc(y)).abs().max() > 1e-3  # the dense model does see them


def test_decoder_orders_agree_only_when_noise_order_is_raster_order():
    torch.manual_seed(2)
    config = replace(TINY_W3, mask_ratio=0.6)
    official = GreenMIM(config).eval()
    fixed = GreenMIM(replace(config, official_decoder_order=False)).eval()
    fixed.load_state_dict(official.state_dict())
    latent = torch.randn(2, 3, 128)
    raster = mask_from_noise(torch.tensor([[0.1, 0.9, 0.2, 0.8, 0.7, 0.3, 0.6, 0.5, 0.95]]), 0.6, 2)  # kept 0, 2, 5
    shuffled = mask_from_noise(torch.tensor([[0.3, 0.9, 0.2, 0.8, 0.7, 0.1, 0.6, 0.5, 0.95]]), 0.6, 2)  # 5, 2, 0
    assert torch.equal(raster.mask, shuffled.mask)
    with torch.no_grad():
        torch.testing.assert_close(official.forward_decoder(latent, raster), fixed.forward_decoder(latent, raster))
        torch.testing.assert_close(fixed.forward_decoder(latent, raster), fixed.forward_decoder(latent, shuffled))
        assert (official.forward_decoder(latent, shuffled) - fixed.forward_decoder(latent, shuffled)).abs().max() > 1e-3


def test_masked_pixel_loss_formula_and_errors():
    torch.manual_seed(3)
    imgs = torch.randn(2, 3, 8, 8)
    pred = torch.randn(2, 4, 48)
    mask = torch.tensor([[1.0, 0, 0, 1], [0, 1, 0, 0]])
    t = patchify(imgs, 4)
    assert torch.equal(unpatchify(t, 4), imgs)
    assert torch.equal(t[0, 1, :3], imgs[0, :, 0, 4])  # (p, q, c) layout: first pixel of the unit at column 4
    norm = (t - t.mean(-1, keepdim=True)) / (t.var(-1, keepdim=True) + 1e-6).sqrt()
    expected = (((pred - norm) ** 2).mean(-1) * mask).sum() / 3
    torch.testing.assert_close(masked_pixel_loss(pred, imgs, mask, 4), expected)
    raw = (((pred - t) ** 2).mean(-1) * mask).sum() / 3
    torch.testing.assert_close(masked_pixel_loss(pred, imgs, mask, 4, norm_pix=False), raw)
    with pytest.raises(ValueError, match="removes no unit"):
        masked_pixel_loss(pred, imgs, torch.zeros(2, 4), 4)
    with pytest.raises(ValueError, match="do not agree"):
        masked_pixel_loss(pred[:, :3], imgs, mask, 4)


def test_per_sample_masks_equal_one_image_at_a_time():
    torch.manual_seed(4)
    model = GreenMIM(replace(TINY_W3, per_sample_mask=True)).eval()
    imgs = torch.randn(3, 3, 96, 96)
    um = model.random_mask(3, generator=torch.Generator().manual_seed(0))
    assert not torch.equal(um.mask[0], um.mask[1])
    with torch.no_grad():
        joint = model.encoder(imgs, um.mask)
        for b in range(3):
            single = model.encoder(imgs[b : b + 1], um.mask[b : b + 1])
            torch.testing.assert_close(joint[b : b + 1], single, atol=1e-5, rtol=1e-5)


def test_encoder_rejects_bad_sizes_and_masks():
    with pytest.raises(ValueError, match="multiple of the mask unit"):
        GreenSwin(replace(TINY_W3.encoder, img_size=100))
    enc = GreenSwin(TINY_W3.encoder)
    with pytest.raises(ValueError, match="mask must have shape"):
        enc(torch.randn(1, 3, 96, 96), torch.zeros(1, 16))


def test_clear_errors_for_all_masked_units_and_wrong_image_sizes():
    """A mask removing every unit used to fail in a reshape, a wrong image size in timm's assertion."""
    enc = GreenSwin(TINY_W3.encoder)
    x = torch.randn(2, 3, 96, 96)
    with pytest.raises(ValueError, match="mask row 0 removes all 9 units"):
        enc(x, torch.ones(1, 9))
    half = torch.zeros(2, 9)
    half[0, :5] = 1
    half[1] = 1
    with pytest.raises(ValueError, match="mask row 1 removes all 9 units"):
        enc(x, half)
    with pytest.raises(ValueError, match=r"images must have shape \(B, 3, 96, 96\).*got \(2, 3, 128, 128\)"):
        enc(torch.randn(2, 3, 128, 128))
    with pytest.raises(ValueError, match=r"got \(2, 1, 96, 96\)"):
        enc(torch.randn(2, 1, 96, 96))
    model = GreenMIM(TINY_W3)
    with pytest.raises(ValueError, match="img_size=96"):
        model(torch.randn(2, 3, 64, 64))
    all_masked = mask_from_noise(torch.rand(1, 9), 0.75, 2)._replace(mask=torch.ones(2, 9))
    with pytest.raises(ValueError, match="removes all 9 units"):
        model(x, all_masked)
    with pytest.raises(ValueError, match="nothing would be masked"):
        GreenMIM(replace(TINY_W3, mask_ratio=0.0))


def test_parameter_counts_match_the_spec():
    """Spec section 4: Swin-B/w7 pre-training model 92,022,968 parameters (encoder 86,743,224; decoder part
    5,279,744 with the fixed position embedding, which we hold as a buffer: 25,088 values)."""
    model = GreenMIM()
    enc = sum(p.numel() for p in model.encoder.parameters())
    total = sum(p.numel() for p in model.parameters()) + model.decoder_pos_embed.numel()
    assert enc == 86_743_224
    assert total == 92_022_968


def test_group_size_rule_and_attention_kernel_do_not_change_the_encoder(one_thread):
    """The searched group size packs differently and the explicit softmax is another kernel: both still compute the
    official encoder (the default path is compared in ``test_encoder_prediction_loss_equal_official``)."""
    tag = "swinb_struct_w7/swin/201"
    for kw in ({"group_size_rule": "search"}, {"fused_attn": False}):
        model = _seeded_model(tag, **kw)
        imgs, um = _inputs(CASES[tag], model.num_units, torch.float64)
        with torch.no_grad():
            latent = model.encoder(imgs, um.mask)
        assert_matches_official(latent, REFS[f"{tag}/latent"], what=f"{tag} latent with {kw}")
