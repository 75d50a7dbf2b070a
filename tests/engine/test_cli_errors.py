"""Bad input fails before any work, with a message that names the problem."""

from __future__ import annotations

import pickle

import pytest
import torch

from tenfold.cli import main
from tenfold.utils.checkpoint import load_checkpoint

from conftest import FAST, TINY, run_tenfold


def _fails(capsys, args, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code != 0
    return capsys.readouterr().err


def test_unknown_key_on_command_line(capsys, tmp_path, monkeypatch):
    err = _fails(capsys, ["fit", "--config", str(TINY), "--model.init_args.lrr", "0.1"], tmp_path, monkeypatch)
    assert "lrr" in err
    assert not (tmp_path / "runs").exists()  # no run folder, no work


@pytest.mark.parametrize(
    ("override", "suggested"),
    [
        (["--model.lrr", "0.1"], "did you mean --model.optim.lr?"),  # a nested dataclass key, by its last segment
        (["--model.init_args.optim.lrr", "0.1"], "did you mean --model.optim.lr?"),
        (["--trainer.max_epochz", "3"], "did you mean --trainer.max_epochs"),  # unknown to every parser level
        (["--data.init_args.batchsize", "3"], "did you mean --data.batch_size"),
    ],
)
def test_a_typo_prints_the_error_and_the_closest_keys_not_the_usage(capsys, tmp_path, monkeypatch, override, suggested):
    err = _fails(capsys, ["fit", "--config", str(TINY), *override], tmp_path, monkeypatch)
    assert suggested in err, err
    assert "usage:" not in err and len(err.strip().splitlines()) == 2, err  # the error line and the --help tip
    assert "tenfold fit --help" in err


def test_a_wrong_type_is_one_line_naming_key_type_and_value(capsys, tmp_path, monkeypatch):
    err = _fails(capsys, ["fit", "--config", str(TINY), "--trainer.max_epochs", "three"], tmp_path, monkeypatch)
    assert err.splitlines()[0] == "tenfold fit: error: --trainer.max_epochs: Expected a <class 'int'>; got 'three'"


def test_unknown_key_in_recipe(capsys, tmp_path, monkeypatch):
    recipe = TINY.read_text().replace("batch_size: 64", "batchsize: 64")
    path = tmp_path / "typo.yaml"
    path.write_text(recipe)
    err = _fails(capsys, ["fit", "--config", str(path)], tmp_path, monkeypatch)
    assert "batchsize" in err


def test_wrong_type(capsys, tmp_path, monkeypatch):
    err = _fails(capsys, ["fit", "--config", str(TINY), "--trainer.max_epochs", "three"], tmp_path, monkeypatch)
    assert "max_epochs" in err and "three" in err


def test_wrong_type_in_nested_dataclass(capsys, tmp_path, monkeypatch):
    err = _fails(capsys, ["fit", "--config", str(TINY), "--model.init_args.optim.lr", "fast"], tmp_path, monkeypatch)
    assert "lr" in err and "fast" in err


def test_missing_dataset_path(capsys, tmp_path, monkeypatch):
    missing = tmp_path / "no-cifar-here"
    monkeypatch.chdir(tmp_path)
    code = main(
        ["fit", *FAST, "--data.init_args.dataset", "cifar10", "--data.init_args.root", str(missing),
         "--model.init_args.num_classes", "10"]
    )  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err
    assert str(missing) in err


def test_class_count_mismatch(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = main(["fit", *FAST, "--model.init_args.num_classes", "7"])
    assert code == 2
    assert "10 classes" in capsys.readouterr().err


def test_corrupt_checkpoint(capsys, tmp_path, monkeypatch):
    bad = tmp_path / "corrupt.ckpt"
    good = {"state_dict": {"w": torch.ones(3)}}
    torch.save(good, bad)
    bad.write_bytes(bad.read_bytes()[:40])  # truncated mid-file
    monkeypatch.chdir(tmp_path)
    code = main(["validate", *FAST, "--ckpt_path", str(bad)])
    assert code == 2
    err = capsys.readouterr().err
    assert "corrupt" in err and str(bad) in err


class Payload:  # any class: unpickling it would run arbitrary code in general
    def __init__(self):
        self.x = 1


def test_checkpoint_with_pickled_object_is_refused(tmp_path):
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"w": torch.ones(2)}, "extra": Payload()}, path)
    with pytest.raises(ValueError, match="pickled object"):
        load_checkpoint(path)
    # a plain pickle (not a torch zip file) is refused too
    raw = tmp_path / "raw.pt"
    raw.write_bytes(pickle.dumps({"extra": Payload()}))
    with pytest.raises(ValueError, match=str(raw)):
        load_checkpoint(raw)


def test_pickled_object_refused_on_resume(tmp_path):
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "extra": Payload(), "hyper_parameters": {}}, path)
    proc = run_tenfold(["validate", *FAST, "--ckpt_path", str(path)], tmp_path, check=False)
    assert proc.returncode == 2
    assert "pickled object" in proc.stderr


def test_missing_checkpoint(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = main(["fit", *FAST, "--ckpt_path", "last"])
    assert code == 2
    assert "cannot resume" in capsys.readouterr().err


def test_safe_loading_keeps_plain_values(tmp_path):
    path = tmp_path / "ok.ckpt"
    obj = {"state_dict": {"w": torch.arange(3)}, "epoch": 2, "name": "x", "lr": [0.1, 0.01], "nested": {"a": (1, 2)}}
    torch.save(obj, path)
    loaded = load_checkpoint(path)
    assert loaded["epoch"] == 2 and loaded["name"] == "x" and loaded["nested"]["a"] == (1, 2)
    assert torch.equal(loaded["state_dict"]["w"], torch.arange(3))
