"""The demo: its lockstep (two trainings of different speeds stop at the same step) and its saved model files."""

from __future__ import annotations

import threading
import time

from tenfold.speech.demo import _Lockstep


def test_lockstep_stops_a_fast_and_a_slow_process_at_the_same_step(tmp_path):
    deadline = time.time() + 0.4
    done: dict[int, int] = {}
    peak_lead = {0: 0, 3: 0}

    def train(order: int, peer: int, seconds_per_step: float) -> None:
        lockstep = _Lockstep(str(tmp_path), order, peer, deadline, patience_s=10.0)
        steps = 0
        while steps < 10_000:
            lockstep.before_step(steps)
            peer_steps = lockstep._read(f"progress{peer}") or 0
            peak_lead[order] = max(peak_lead[order], steps - peer_steps)
            time.sleep(seconds_per_step)
            steps += 1
            if lockstep.after_step(steps):
                break
        done[order] = steps

    threads = [threading.Thread(target=train, args=(0, 3, 0.002)), threading.Thread(target=train, args=(3, 0, 0.01))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert done[0] == done[3] and 10 < done[0] < 10_000  # stopped by the deadline, at equal counts
    assert max(peak_lead.values()) <= 1  # the fast one never ran more than one step ahead


def test_the_demo_model_file_is_self_describing_and_enhance_takes_it_as_it_is(tmp_path, monkeypatch, capsys):
    """The demo's ``order3/model.pt`` works in ``tenfold enhance`` with no --config (issue 12)."""
    import numpy as np
    import soundfile as sf
    import torch

    import tenfold.engine.quick
    from tenfold.cli import main
    from tenfold.data.synthetic import make_speech
    from tenfold.engine.quick import QuickRun
    from tenfold.speech.demo import _train_worker
    from tenfold.speech.enhance import enhance_waveform
    from tenfold.speech.taylorsenet import SMALL_CONFIG, TaylorSENet
    from tenfold.utils.checkpoint import load_checkpoint

    def untrained(make, data, **kwargs):  # what is saved matters here, not the training (tested elsewhere)
        kwargs["out_dir"].mkdir(parents=True, exist_ok=True)  # as quick_fit's logger does
        task = make()
        torch.nn.init.normal_(task.model.zeroorderblock.de.last_conv[3].bias)  # weights unlike a fresh model's
        return QuickRun(history=[], final={}, seconds=0.0, steps=0, task=task)

    monkeypatch.setattr(tenfold.engine.quick, "quick_fit", untrained)
    threads = torch.get_num_threads()
    try:
        run = _train_worker(3, 1, 0, str(tmp_path / "order3"), 60.0)  # the demo's Q=3 model
    finally:
        torch.set_num_threads(threads)
    assert run["weights"] == str(tmp_path / "order3" / "model.pt")
    clean, _ = make_speech(1, seed=3, split="test", seconds=0.5)
    sf.write(tmp_path / "noisy.wav", clean[0].numpy(), 16000, subtype="FLOAT")
    code = main(["enhance", str(tmp_path / "noisy.wav"), str(tmp_path / "out.wav"), "--ckpt", run["weights"]])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    assert "architecture: the checkpoint's own" in printed.out and "compression power 0.5 (from the" in printed.out
    saved = load_checkpoint(run["weights"])  # weights_only loading
    assert saved["hyper_parameters"]["model_kwargs"]["order_num"] == 3 and saved["hyper_parameters"]["power"] == 0.5
    # the saved weights were used: the output is the small Q=3 model's with the file's weights
    reference = TaylorSENet(**{**SMALL_CONFIG, "order_num": 3}).eval()
    reference.load_state_dict(saved["state_dict"])
    expected = enhance_waveform(reference, clean[0]).numpy()
    np.testing.assert_allclose(sf.read(tmp_path / "out.wav", dtype="float32")[0], expected, atol=1e-5)
