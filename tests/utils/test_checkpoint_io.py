"""Safe checkpoint loading: plain values and tensors, argparse.Namespace of training scripts, nothing else."""

from __future__ import annotations

import argparse

import pytest
import torch

from tenfold.utils.checkpoint import load_checkpoint


def test_training_script_args_namespace_loads(tmp_path):
    path = tmp_path / "checkpoint-799.pth"
    args = argparse.Namespace(lr=1.5e-4, mask_ratio=0.75, model="green_mim_swin_base")
    torch.save({"model": {"w": torch.ones(2)}, "epoch": 799, "args": args, "optimizer": {"state": {}}}, path)
    loaded = load_checkpoint(path)
    assert isinstance(loaded["args"], argparse.Namespace) and loaded["args"].mask_ratio == 0.75
    assert torch.equal(loaded["model"]["w"], torch.ones(2))


def test_namespace_holding_an_object_is_still_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"args": argparse.Namespace(module=torch.nn.Linear(1, 1))}, path)
    with pytest.raises(ValueError, match="pickled object"):
        load_checkpoint(path)


def _linear(features: int = 3, bias: bool = True) -> torch.nn.Linear:
    return torch.nn.Linear(2, features, bias=bias)


def test_save_model_writes_weights_and_config_that_load_model_rebuilds(tmp_path):
    from tenfold.utils.checkpoint import MODEL_FILE_FORMAT, load_model, save_model

    model = _linear(5)
    path = save_model(tmp_path / "sub" / "model.pt", model, {"features": 5}, architecture="Linear", power=0.3)
    raw = load_checkpoint(path)  # weights_only: the file holds tensors and plain values only
    assert raw["format"] == MODEL_FILE_FORMAT and raw["architecture"] == "Linear"
    assert raw["hyper_parameters"] == {"model_kwargs": {"features": 5}, "power": 0.3}
    assert [p.name for p in path.parent.iterdir()] == ["model.pt"]  # atomic: no temporary file left
    # the file's own configuration wins over the one given for plain state dicts
    loaded = load_model(path, _linear, config={"features": 3})
    assert loaded.self_described and loaded.config == {"features": 5} and loaded.hparams["power"] == 0.3
    assert not loaded.model.training
    torch.testing.assert_close(loaded.model.weight, model.weight)
    # a plain state dict carries no configuration: the given one is used
    torch.save(_linear(4).state_dict(), tmp_path / "plain.pth")
    plain = load_model(tmp_path / "plain.pth", _linear, config={"features": 4})
    assert not plain.self_described and plain.model.weight.shape == (4, 2) and plain.hparams == {}


def test_save_model_refuses_what_weights_only_loading_would_refuse(tmp_path):
    from tenfold.utils.checkpoint import save_model

    with pytest.raises(ValueError, match=r"config\.act holds a ReLU"):
        save_model(tmp_path / "m.pt", _linear(), {"act": torch.nn.ReLU()}, architecture="Linear")
    with pytest.raises(ValueError, match="entry 'w' holds str"):
        save_model(tmp_path / "m.pt", {"w": "x"}, {}, architecture="Linear")
    assert not (tmp_path / "m.pt").exists()


def test_a_mismatched_state_dict_names_the_known_configurations_it_fits(tmp_path):
    from tenfold.utils.checkpoint import fitting_configs, load_model

    torch.save(_linear(7, bias=False).state_dict(), tmp_path / "w.pth")
    known = {"'wide'": {"features": 7}, "'wide, no bias'": {"features": 7, "bias": False}, "'bad'": {"oops": 1}}
    with pytest.raises(ValueError, match=r"these weights fit 'wide, no bias' \(not the configuration used: .*"
                                         r"missing keys: bias"):  # fmt: skip
        load_model(tmp_path / "w.pth", _linear, config={"features": 7}, known_configs=known)
    # a function of the state dict may supply the candidates; none fitting leaves the plain listing
    with pytest.raises(ValueError, match="do not fit Linear") as info:
        load_model(tmp_path / "w.pth", _linear, known_configs=lambda state: {"'narrow'": {"features": 1}})
    assert "these weights fit" not in str(info.value)
    assert fitting_configs(_linear(7, bias=False).state_dict(), _linear, known) == ["'wide, no bias'"]


def test_a_model_file_serves_as_a_timm_model_weights_file(tmp_path):
    """The distillation demo's teacher file: ``teacher_weights=`` (timm's loader) reads it as it is."""
    from tenfold.classification.task import create_model
    from tenfold.utils.checkpoint import save_model

    torch.manual_seed(0)
    teacher = create_model("resnet8", num_classes=10)
    path = save_model(tmp_path / "teacher.pth", teacher.state_dict(), {"num_classes": 10}, architecture="resnet8")
    loaded = create_model("resnet8", 10, str(path))
    for name, value in teacher.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name], value)
