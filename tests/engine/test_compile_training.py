"""Compiled training: CompileModel / compile_module equal eager, keep checkpoint keys, fall back once; --compile."""

from __future__ import annotations

import copy
import warnings

import lightning.pytorch as pl
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from tenfold.classification.task import ClassificationTask
from tenfold.cli import main
from tenfold.engine.callbacks import CompileModel
from tenfold.engine.optim import OptimConfig
from tenfold.utils.checkpoint import load_checkpoint
from tenfold.utils.compile import CompileFallbackWarning, compile_module, inductor_cache_dir, is_compiled_in_place

from conftest import FAST


def _tiny_net() -> nn.Module:
    # small on purpose: inductor compiles its forward and backward in seconds (the graphs are then cached)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(8, 10),
    )  # fmt: skip


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(4, 3, 8, 8, generator=g), torch.randint(0, 10, (4,), generator=g)


NO_FALLBACK = pytest.mark.filterwarnings("error::tenfold.utils.compile.CompileFallbackWarning")


@NO_FALLBACK
def test_compiled_training_steps_equal_eager_and_keep_the_keys():
    torch.manual_seed(0)
    eager = _tiny_net()
    compiled = copy.deepcopy(eager)
    compile_module(compiled)
    assert is_compiled_in_place(compiled) and not is_compiled_in_place(eager)
    opts = {m: torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9) for m in (eager, compiled)}
    x, y = _batch()
    for _ in range(2):  # two steps: the second runs on weights the first (compiled) update produced
        losses = {}
        for m, opt in opts.items():
            opt.zero_grad()
            out = m(x)
            losses[m] = nn.functional.cross_entropy(out, y)
            losses[m].backward()
            opt.step()
        torch.testing.assert_close(losses[compiled], losses[eager], rtol=1e-5, atol=1e-5)
    assert list(compiled.state_dict()) == list(eager.state_dict())  # no "_orig_mod." prefix
    for (name, a), b in zip(compiled.state_dict().items(), eager.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5, msg=name)  # weights, BN running stats
    for a, b in zip(compiled.parameters(), eager.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-5)


def _task() -> ClassificationTask:
    task = ClassificationTask(model="resnet8", num_classes=10, optim=OptimConfig(opt="sgd", lr=0.1, sched="none"))
    task.model = _tiny_net()
    return task


@NO_FALLBACK
def test_compiled_fit_writes_eager_checkpoints(tmp_path):
    torch.manual_seed(0)
    task = _task()
    x, y = _batch()
    loader = DataLoader(TensorDataset(x.repeat(2, 1, 1, 1), y.repeat(2)), batch_size=4)
    callback = CompileModel()
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_steps=2, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=[callback])  # fmt: skip
    trainer.fit(task, train_dataloaders=loader)
    assert callback.compiled == ["model"]  # the network, not the metrics
    assert is_compiled_in_place(task.model)
    path = tmp_path / "compiled.ckpt"
    trainer.save_checkpoint(path)
    state = load_checkpoint(path)["state_dict"]
    fresh = _task()
    assert list(state) == list(fresh.state_dict())
    fresh.load_state_dict(state, strict=True)  # into an eager task
    assert not is_compiled_in_place(fresh.model)
    for name, value in task.state_dict().items():
        torch.testing.assert_close(fresh.state_dict()[name], value, rtol=0, atol=0, msg=name)
    assert not any(torch.equal(state[k], v) for k, v in _task().state_dict().items() if k.endswith("weight"))


class _Breaks(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 2)

    def forward(self, x):
        if x.shape[-1] != 3:
            raise ValueError(f"expected 3 features, got {x.shape[-1]}")
        torch._dynamo.graph_break()  # refused under fullgraph=True
        return self.lin(x)


def test_a_module_that_cannot_compile_falls_back_once():
    module = _Breaks()
    compile_module(module, backend="eager", fullgraph=True)
    x = torch.randn(4, 3)
    with pytest.warns(CompileFallbackWarning, match="_Breaks.*running it eagerly") as record:
        out = module(x)
    assert len([w for w in record if issubclass(w.category, CompileFallbackWarning)]) == 1
    torch.testing.assert_close(out, module.lin(x))
    with warnings.catch_warnings():
        warnings.simplefilter("error", CompileFallbackWarning)
        torch.testing.assert_close(module(x), module.lin(x))  # eager from now on, silently


def test_a_user_error_is_raised_and_does_not_switch_compilation_off():
    module = _Breaks()
    compile_module(module, backend="eager")  # graph breaks allowed: it compiles
    with warnings.catch_warnings():
        warnings.simplefilter("error", CompileFallbackWarning)
        with pytest.raises(ValueError, match="expected 3 features, got 5"):
            module(torch.randn(2, 5))
    assert not module._compiled_call_impl.failed


def test_a_deep_copy_of_a_compiled_module_runs_eagerly():
    module = compile_module(_tiny_net(), backend="eager")
    clone = copy.deepcopy(module)
    assert is_compiled_in_place(module) and not is_compiled_in_place(clone)


def test_unknown_module_names_are_refused_with_suggestions():
    task = _task()
    with pytest.raises(ValueError, match="no submodule 'modle'.*'model'"):
        CompileModel(modules=["modle"]).targets(task)
    assert list(CompileModel(modules=["model.0"]).targets(task)) == ["model.0"]
    with pytest.raises(ValueError, match="found no network"):
        CompileModel().targets(pl.LightningModule())


def test_cache_dir(tmp_path, monkeypatch):
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert inductor_cache_dir() == tmp_path / "xdg" / "tenfold" / "inductor"
    assert inductor_cache_dir(tmp_path / "run") == tmp_path / "run"  # an explicit folder wins
    assert inductor_cache_dir() == tmp_path / "run"  # and is kept (the variable inductor reads)
    import os

    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "run")


def test_compile_flag_of_the_command_line(tmp_path, monkeypatch):
    import tenfold.utils.compile as compile_mod

    seen = []
    monkeypatch.setattr(compile_mod, "compile_module", lambda module, **kw: seen.append((module, kw)) or module)
    monkeypatch.chdir(tmp_path)
    steps = ["--trainer.max_steps", "1", "--trainer.max_epochs", "-1", "--trainer.limit_val_batches", "1"]
    assert main(["fit", *FAST, *steps, "--run_dir", "plain"]) == 0
    assert seen == []
    assert main(["fit", *FAST, *steps, "--run_dir", "compiled", "--compile", "true"]) == 0
    assert len(seen) == 1 and type(seen[0][0]).__name__ == "CifarResNet" and seen[0][1]["backend"] == "inductor"
    keys = list(load_checkpoint(tmp_path / "compiled" / "checkpoints" / "last.ckpt")["state_dict"])
    assert keys == list(load_checkpoint(tmp_path / "plain" / "checkpoints" / "last.ckpt")["state_dict"])
