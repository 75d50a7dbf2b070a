"""compile_for_inference: compiled outputs equal eager ones; a model that cannot compile falls back with a warning."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tenfold.utils.compile import CompileFallbackWarning, compile_for_inference


class _Small(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        x = torch.relu(self.bn(self.conv(x)))
        return self.fc(x.mean((2, 3)))


class _Uncompilable(nn.Module):
    def forward(self, x):
        torch._dynamo.graph_break()  # with fullgraph=True, dynamo refuses the graph break
        return x * 2


def test_compiled_matches_eager_and_is_eval():
    torch.manual_seed(0)
    model = _Small()
    model.train()
    x = torch.randn(2, 3, 8, 8)
    fast = compile_for_inference(model, x)
    assert not model.training  # eval semantics: BatchNorm uses running statistics
    with torch.no_grad():
        expected = model(x)
        got = fast(x)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert fast is not model  # it really compiled


def test_failure_falls_back_with_one_warning():
    model = _Uncompilable()
    x = torch.randn(3)
    with pytest.warns(CompileFallbackWarning, match="running it eagerly"):
        fast = compile_for_inference(model, x, fullgraph=True, backend="eager")
    assert fast is model


def test_lazy_fallback_keeps_the_models_parameters():
    model = _Small()
    lazy = compile_for_inference(model, backend="eager")
    assert list(lazy.state_dict()) == ["eager." + k for k in model.state_dict()]
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(lazy(x), model(x))


@pytest.mark.parametrize("freeze", [True, False])
def test_freezing_bakes_in_the_weights_and_can_be_switched_off(freeze):
    torch.manual_seed(0)
    model = _Small()
    x = torch.randn(2, 3, 8, 8)
    fast = compile_for_inference(model, x, freeze=freeze)
    with torch.inference_mode():
        before = model(x)
        torch.testing.assert_close(fast(x), before, rtol=1e-5, atol=1e-5)
        model.conv.weight.mul_(2.0)  # weight updates after compiling
        model.fc.weight.mul_(3.0)
        after = model(x)
        got = fast(x)
    assert (after - before).abs().max() > 0.1
    # frozen: the graph runs on the folded / packed copies made when compiling; unfrozen: on the live parameters
    torch.testing.assert_close(got, before if freeze else after, rtol=1e-5, atol=1e-5)
