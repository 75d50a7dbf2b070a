"""Speech recipes: the tiny one trains through the real CLI and its run enhances a file; the paper ones validate."""

from __future__ import annotations

import contextlib
import io
import json

import pytest
import soundfile as sf

from tenfold.data.builtin import make_speech
from tenfold.engine.lightning_cli import run_lightning_cli
from tenfold.speech.cli import enhance_main

from conftest import REPO, run_tenfold

CONFIGS = REPO / "configs" / "speech"


def test_tiny_recipe_trains_and_its_run_enhances_a_file(tmp_path, capsys):
    run_tenfold(["fit", "--config", str(CONFIGS / "tiny.yaml"), "--trainer.max_steps", "2",
                 "--trainer.val_check_interval", "2", "--data.init_args.train_size", "8",
                 "--data.init_args.val_size", "2", "--trainer.enable_progress_bar", "false"], cwd=tmp_path)  # fmt: skip
    runs = list((tmp_path / "runs" / "speech" / "tiny").iterdir())
    metrics = json.loads((runs[0] / "metrics.json").read_text())
    assert metrics["_global_step"] == 2 and "val/si_snr" in metrics
    _, noisy = make_speech(1, seed=2, split="test", seconds=1.0)
    sf.write(tmp_path / "noisy.wav", noisy[0].numpy(), 16000)
    run = str(tmp_path / "runs" / "speech" / "tiny")
    assert enhance_main([str(tmp_path / "noisy.wav"), str(tmp_path / "clean.wav"), "--ckpt", run]) == 0
    out, sr = sf.read(tmp_path / "clean.wav")
    assert sr == 16000 and out.shape == (16000,)
    assert "real-time factor" in capsys.readouterr().out


@pytest.mark.parametrize("recipe, dataset", [("dns.yaml", "dns"), ("voicebank.yaml", "voicebank")])
def test_paper_recipes_validate_against_the_signatures(recipe, dataset, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed), pytest.raises(SystemExit) as done:
        run_lightning_cli(["fit", "--config", str(CONFIGS / recipe), "--print_config"])
    assert done.value.code == 0
    text = printed.getvalue()
    assert f"dataset: {dataset}" in text and "lr: 0.0002" in text and "batch_size: 24" in text
    with contextlib.redirect_stderr(io.StringIO()) as err, pytest.raises(SystemExit) as bad:
        run_lightning_cli(["fit", "--config", str(CONFIGS / recipe), "--model.init_args.grad_clp", "1"])
    assert bad.value.code != 0 and "grad_clp" in err.getvalue()
