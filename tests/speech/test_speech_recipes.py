"""Speech recipes: the tiny one trains through the real CLI and its run enhances a file; the paper ones validate."""

from __future__ import annotations

import contextlib
import csv
import io
import json

import pytest
import soundfile as sf
import torch
import yaml
from lightning.pytorch.callbacks import ModelCheckpoint

from tenfold.data.synthetic import make_speech
from tenfold.engine.lightning_cli import run_lightning_cli
from tenfold.speech.cli import enhance_main, run_checkpoint

from conftest import REPO, run_tenfold

CONFIGS = REPO / "configs" / "speech"


def test_tiny_recipe_keeps_the_best_checkpoint_and_enhance_uses_it(tmp_path, capsys):
    run_tenfold(["fit", "--config", str(CONFIGS / "tiny.yaml"), "--trainer.max_steps", "4",
                 "--trainer.val_check_interval", "2", "--data.init_args.train_size", "8",
                 "--data.init_args.val_size", "2", "--trainer.enable_progress_bar", "false"], cwd=tmp_path)  # fmt: skip
    runs = list((tmp_path / "runs" / "speech" / "tiny").iterdir())
    metrics = json.loads((runs[0] / "metrics.json").read_text())
    assert metrics["_global_step"] == 4 and "val/si_snr" in metrics
    # the validations at steps 2 and 4, from the CSV log: the best one must be the kept checkpoint
    with open(next((runs[0] / "logs").glob("version_*/metrics.csv"))) as f:
        scores = {int(r["step"]) + 1: float(r["val/si_snr"]) for r in csv.DictReader(f) if r["val/si_snr"]}
    assert sorted(scores) == [2, 4]
    best_step = max(scores, key=scores.get)
    kept = sorted(p.name for p in (runs[0] / "checkpoints").iterdir())
    assert kept == sorted([f"best-step{best_step:07d}.ckpt", "last.ckpt"])
    _, noisy = make_speech(1, seed=2, split="test", seconds=1.0)
    sf.write(tmp_path / "noisy.wav", noisy[0].numpy(), 16000)
    run = str(tmp_path / "runs" / "speech" / "tiny")
    assert enhance_main([str(tmp_path / "noisy.wav"), str(tmp_path / "clean.wav"), "--ckpt", run]) == 0
    out, sr = sf.read(tmp_path / "clean.wav")
    assert sr == 16000 and out.shape == (16000,)
    printed = capsys.readouterr().out
    assert f"best-step{best_step:07d}.ckpt (best checkpoint of the run by val/si_snr" in printed
    assert "real-time factor" in printed


def test_run_without_a_monitored_checkpoint_falls_back_to_last(tmp_path):
    ckpts = tmp_path / "run" / "checkpoints"
    ckpts.mkdir(parents=True)
    periodic = "ModelCheckpoint{'monitor': None, 'mode': 'min', 'every_n_train_steps': 500}"
    torch.save({"callbacks": {periodic: {"monitor": None, "best_model_path": str(ckpts / "step0000500.ckpt")}}},
               ckpts / "last.ckpt")  # fmt: skip
    torch.save({}, ckpts / "step0000500.ckpt")
    path, why = run_checkpoint(tmp_path / "run")
    assert path == ckpts / "last.ckpt" and "kept no best checkpoint" in why
    # a moved run: the saved best path is stale, the file is found by name beside last.ckpt
    monitored = "ModelCheckpoint{'monitor': 'val/si_snr', 'mode': 'max'}"
    torch.save({"callbacks": {monitored: {"monitor": "val/si_snr", "best_model_score": torch.tensor(3.5),
                                          "best_model_path": "/elsewhere/checkpoints/best-step0000500.ckpt"}}},
               ckpts / "last.ckpt")  # fmt: skip
    torch.save({}, ckpts / "best-step0000500.ckpt")
    path, why = run_checkpoint(tmp_path / "run")
    assert path == ckpts / "best-step0000500.ckpt" and "val/si_snr = 3.5" in why


@pytest.mark.parametrize("recipe, dataset", [("dns.yaml", "dns"), ("voicebank.yaml", "voicebank")])
def test_paper_recipes_validate_against_the_signatures(recipe, dataset, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed), pytest.raises(SystemExit) as done:
        run_lightning_cli(["fit", "--config", str(CONFIGS / recipe), "--print_config"])
    assert done.value.code == 0
    text = printed.getvalue()
    assert f"dataset: {dataset}" in text and "lr: 0.0002" in text and "batch_size: 24" in text
    # the official best-dev-model rule: the checkpoint section builds a ModelCheckpoint Lightning accepts
    section = yaml.safe_load(text)["checkpoint"]
    assert section["monitor"] == "val/si_snr" and section["mode"] == "max" and section["save_top_k"] == 1
    callback = ModelCheckpoint(**{k: v for k, v in section.items() if k != "dirpath"})
    assert callback.save_last and callback.every_n_epochs == 1 and callback._every_n_train_steps == 0
    with contextlib.redirect_stderr(io.StringIO()) as err, pytest.raises(SystemExit) as bad:
        run_lightning_cli(["fit", "--config", str(CONFIGS / recipe), "--model.init_args.grad_clp", "1"])
    assert bad.value.code != 0 and "grad_clp" in err.getvalue()
