"""A run killed part-way and resumed with `--ckpt_path last` ends exactly where the uninterrupted run ends."""

from __future__ import annotations

import json

import torch

from tenfold.utils.checkpoint import load_checkpoint

from conftest import FAST, run_tenfold

# 2 epochs of 16 steps; checkpoints every 6 steps; the crash comes at step 21, so the resume starts mid-epoch 2
# from the step-18 checkpoint: data order, augmentation, optimiser, cosine schedule and loops must all continue.
RUN = [*FAST, "--trainer.max_epochs", "2", "--checkpoint.every_n_train_steps", "6"]


def _final_weights(run_dir):
    ckpt = load_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    return ckpt["global_step"], ckpt["state_dict"], ckpt["optimizer_states"][0]


def test_kill_and_resume_matches_uninterrupted(tmp_path):
    run_tenfold(["fit", *RUN, "--run_dir", "full"], tmp_path)

    killed = run_tenfold(
        ["fit", *RUN, "--run_dir", "crash", "--trainer.callbacks+=tenfold_test_callbacks.KillAtStep",
         "--trainer.callbacks.step", "21"],
        tmp_path, check=False,
    )  # fmt: skip
    assert killed.returncode == -9, killed.stderr[-2000:]  # really killed, not a clean exit
    step_at_crash = load_checkpoint(tmp_path / "crash" / "checkpoints" / "last.ckpt")["global_step"]
    assert step_at_crash == 18
    assert not (tmp_path / "crash" / "metrics.json").exists()  # the crashed run never finished

    run_tenfold(["fit", *RUN, "--run_dir", "crash", "--ckpt_path", "last"], tmp_path)

    step_a, weights_a, optim_a = _final_weights(tmp_path / "full")
    step_b, weights_b, optim_b = _final_weights(tmp_path / "crash")
    assert step_a == step_b == 32
    assert weights_a.keys() == weights_b.keys()
    for key in weights_a:
        torch.testing.assert_close(weights_b[key], weights_a[key], rtol=0, atol=0, msg=f"weight {key} differs")
    for pid, state in optim_a["state"].items():
        torch.testing.assert_close(optim_b["state"][pid]["momentum_buffer"], state["momentum_buffer"], rtol=0, atol=0)
    metrics_a = json.loads((tmp_path / "full" / "metrics.json").read_text())
    metrics_b = json.loads((tmp_path / "crash" / "metrics.json").read_text())
    for key in ("val/acc1", "val/loss", "val/acc5"):
        assert metrics_b[key] == metrics_a[key], key
    # the resumed run logged into a new version folder instead of overwriting the crashed run's logs
    assert sorted(p.name for p in (tmp_path / "crash" / "logs").iterdir()) == ["version_0", "version_1"]


def test_fit_refuses_to_overwrite_a_run(tmp_path):
    run_dir = tmp_path / "taken"
    run_dir.mkdir()
    (run_dir / "precious.txt").write_text("keep me")
    proc = run_tenfold(["fit", *FAST, "--trainer.max_steps", "1", "--run_dir", str(run_dir)], tmp_path, check=False)
    assert proc.returncode != 0
    assert "already exists" in proc.stderr and str(run_dir) in proc.stderr
    assert (run_dir / "precious.txt").read_text() == "keep me"
    assert sorted(p.name for p in run_dir.iterdir()) == ["precious.txt"]


def test_every_run_ends_with_one_current_last_checkpoint(tmp_path):
    # (max_steps, every_n_train_steps) -> the files the run must leave: "last" always holds the final step, and
    # never a second copy (Lightning >= 2.6 writes last-v1.ckpt if "last" is saved behind its back)
    cases = {
        (5, 500): ["last.ckpt"],
        (12, 6): ["last.ckpt", "step0000012.ckpt"],
        (8, 6): ["last.ckpt", "step0000006.ckpt"],
    }
    for (steps, every), files in cases.items():
        run_dir = tmp_path / f"run-{steps}-{every}"
        run_tenfold(["fit", *FAST, "--trainer.max_steps", str(steps), "--checkpoint.every_n_train_steps", str(every),
                     "--trainer.limit_val_batches", "0", "--run_dir", str(run_dir)], tmp_path)  # fmt: skip
        assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == files, (steps, every)
        assert load_checkpoint(run_dir / "checkpoints" / "last.ckpt")["global_step"] == steps, (steps, every)
