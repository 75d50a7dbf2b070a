"""LightViT's inference paths: compiled equals eager, and the cached position bias follows its table."""

from __future__ import annotations

import pytest
import torch

from tenfold.models.lightvit import LightViT, LightViTAttention
from tenfold.utils.compile import compile_for_inference

# the spec's CPU-demo configuration (windows of 2 on 8x8, 4x4, 2x2 grids): every code path of the model, small
SMALL = dict(img_size=64, embed_dims=(32, 64, 96), num_layers=(1, 1, 1), num_heads=(1, 2, 3), mlp_ratios=(4, 4, 4),
             num_tokens=4, window_size=2, neck_dim=128, num_classes=4)  # fmt: skip


@pytest.mark.slow  # about 90 s of inductor compilation on a cold cache; the compiled path itself is covered fast by
# tests/utils/test_compile.py and tests/engine/test_compile_training.py
@pytest.mark.filterwarnings("error::tenfold.utils.compile.CompileFallbackWarning")
def test_compiled_lightvit_equals_eager():
    torch.manual_seed(0)
    model = LightViT(**SMALL).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        expected = model(x)
        fast = compile_for_inference(model, x)
        got = fast(x)
    assert fast is not model
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def _naive_bias(attn: LightViTAttention) -> torch.Tensor:
    L = attn.window_size**2
    return attn.relative_position_bias_table[attn.relative_position_index].view(L, L, -1).permute(2, 0, 1)


def test_position_bias_is_cached_without_grad_and_follows_the_table():
    torch.manual_seed(0)
    attn = LightViTAttention(16, num_tokens=2, num_heads=2, window_size=3)
    with torch.no_grad():
        first = attn.position_bias()
        assert attn.position_bias() is first  # reused while the table is unchanged
        torch.testing.assert_close(first, _naive_bias(attn), rtol=0, atol=0)
        attn.relative_position_bias_table.add_(1.0)  # an in-place update (optimiser step, load_state_dict)
        second = attn.position_bias()
        torch.testing.assert_close(second, _naive_bias(attn), rtol=0, atol=0)
        assert not torch.equal(second, first)
        attn.double()
        assert attn.position_bias().dtype == torch.float64
    bias = attn.position_bias()  # with autograd: gathered afresh, and it carries the gradient to the table
    bias.sum().backward()
    assert attn.relative_position_bias_table.grad is not None
    assert attn.relative_position_bias_table.grad.abs().sum() > 0
