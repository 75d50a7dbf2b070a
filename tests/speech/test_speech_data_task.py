"""Speech data (built-in, VoiceBank+DEMAND, DNS layouts; chunking; official fixed batches) and the task glue."""

from __future__ import annotations

import random

import lightning.pytorch as pl
import numpy as np
import pytest
import soundfile as sf
import torch

from tenfold.engine.optim import OptimConfig
from tenfold.speech.data import BuiltinSpeech, DNSFolder, PairedWavFolder, SpeechData, collate_pairs
from tenfold.speech.task import EnhancementTask, HalveOnPlateau, si_snr
from tenfold.speech.taylorsenet import SMALL_CONFIG, load_taylorsenet

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = {**SMALL_CONFIG, "c": 4, "cd1": 4, "dilations": [1], "order_num": 1}


def _tone_pair(seconds: float, sr: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    t = np.arange(round(seconds * sr)) / sr
    clean = 0.3 * np.sin(2 * np.pi * 220 * t) * (np.sin(2 * np.pi * 2 * t) > 0)
    return (clean + 0.05 * rng.standard_normal(t.size)).astype(np.float32), clean.astype(np.float32)


def test_builtin_items_are_variance_normalised_and_chunked():
    data = BuiltinSpeech(3, seed=1, split="val", seconds=1.0, chunk_seconds=0.5)
    noisy, clean, c = data[0]
    assert noisy.shape == clean.shape == (8000,)
    full = BuiltinSpeech(3, seed=1, split="val", seconds=1.0)
    n_full, c_full, scale = full[0]
    assert n_full.pow(2).mean().item() == pytest.approx(1.0, rel=1e-4)  # c = sqrt(L / sum(noisy^2))
    assert scale == c and scale.dtype == torch.float64
    torch.testing.assert_close(n_full / scale.float(), full.noisy[0], rtol=1e-5, atol=1e-6)
    # a chunk is a contiguous piece of the normalised utterance (scale computed on the whole utterance)
    starts = [i for i in range(8001) if torch.equal(n_full[i : i + 8000], noisy)]
    assert len(starts) == 1


def test_collate_pads_and_reports_lengths():
    items = [(torch.ones(5), torch.ones(5), torch.tensor(2.0, dtype=torch.float64)),
             (torch.ones(3), torch.ones(3), torch.tensor(1.0, dtype=torch.float64))]  # fmt: skip
    noisy, clean, lengths, c = collate_pairs(items)
    assert noisy.shape == (2, 5) and lengths.tolist() == [5, 3] and c.tolist() == [2.0, 1.0]
    assert noisy[1, 3:].abs().sum() == 0


def _fake_voicebank(root) -> None:
    for kind in ("trainset_28spk", "testset"):
        for side in ("noisy", "clean"):
            (root / f"{side}_{kind}_wav").mkdir()
    names = {"trainset_28spk": ["p226_001", "p227_001", "p287_002", "p230_010"], "testset": ["p232_001"]}
    for kind, stems in names.items():
        for i, stem in enumerate(stems):
            noisy, clean = _tone_pair(0.5, 48000, i)
            sf.write(root / f"noisy_{kind}_wav" / f"{stem}.wav", noisy, 48000)
            sf.write(root / f"clean_{kind}_wav" / f"{stem}.wav", clean, 48000)


def test_voicebank_layout_resampled_with_held_out_speakers(tmp_path):
    _fake_voicebank(tmp_path)
    dm = SpeechData(dataset="voicebank", root=str(tmp_path), chunk_seconds=None, batch_size=2, fixed_batches=False)
    dm.setup("fit")
    dm.setup("test")
    train, val, test = dm._splits["train"], dm._splits["val"], dm._splits["test"]
    assert [p.stem for p, _ in train.pairs] == ["p227_001", "p230_010"]
    assert [p.stem for p, _ in val.pairs] == ["p226_001", "p287_002"]
    assert len(test) == 1
    noisy, clean, _ = test[0]
    assert noisy.shape == (8000,)  # 0.5 s at 48 kHz -> 16 kHz
    batch = next(iter(dm.val_dataloader()))
    assert batch[0].shape == (2, 8000)
    (tmp_path / "clean_testset_wav" / "p232_001.wav").unlink()
    with pytest.raises(FileNotFoundError, match="no clean partner"):
        PairedWavFolder(tmp_path / "noisy_testset_wav", tmp_path / "clean_testset_wav")
    with pytest.raises(ValueError, match="root"):
        SpeechData(dataset="voicebank")


def test_voicebank_without_held_out_speakers_validates_on_the_test_set_or_not_at_all(tmp_path):
    _fake_voicebank(tmp_path)
    common = {"dataset": "voicebank", "root": str(tmp_path), "chunk_seconds": None, "fixed_batches": False}
    none = SpeechData(**common, val_speakers=[])
    none.setup("fit")
    assert len(none._splits["train"]) == 4  # all speakers train
    assert none.val_dataloader() == []
    on_test = SpeechData(**common, val_speakers=[], val_on_test=True)
    on_test.setup("fit")
    assert [p.stem for p, _ in on_test._splits["val"].pairs] == ["p232_001"]
    assert next(iter(on_test.val_dataloader()))[0].shape == (1, 8000)
    with pytest.raises(ValueError, match=r"val_speakers: \[\]"):
        SpeechData(**common, val_on_test=True)


@pytest.mark.filterwarnings("ignore:Total length of `list` across ranks is zero")
def test_voicebank_fit_without_validation_trains_and_skips_the_plateau_rule(tmp_path):
    _fake_voicebank(tmp_path)
    data = SpeechData(dataset="voicebank", root=str(tmp_path), chunk_seconds=0.25, batch_size=2, val_speakers=[])
    optim = OptimConfig(opt="adam", lr=1e-3, weight_decay=0.0, sched="none", filter_bias_and_bn=False)
    task = EnhancementTask(model_kwargs=TINY, optim=optim)
    trainer = pl.Trainer(max_steps=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)  # fmt: skip
    trainer.fit(task, datamodule=data)
    assert trainer.global_step == 2 and "val/si_snr" not in trainer.callback_metrics


def test_drop_last_and_validation_chunks_follow_the_official_loaders():
    official = SpeechData(train_size=8, val_size=3, seconds=1.0, chunk_seconds=None, batch_size=3, eval_batch_size=1,
                          val_chunk_seconds=0.5, val_batch_size=2)  # fmt: skip
    official.setup("fit")
    official.setup("test")
    # the official loader keeps the last, partial minibatch (drop_last = false)
    assert [b[0].shape[0] for b in official.train_dataloader()] == [3, 3, 2]
    # validation on random 0.5-s chunks in minibatches of val_batch_size; the test set stays whole, eval_batch_size
    assert [b[0].shape for b in official.val_dataloader()] == [(2, 8000), (1, 8000)]
    assert [b[0].shape for b in official.test_dataloader()][0] == (1, 16000)
    dropped = SpeechData(train_size=8, val_size=2, seconds=0.5, chunk_seconds=None, batch_size=3, drop_last=True)
    dropped.setup("fit")
    assert [b[0].shape[0] for b in dropped.train_dataloader()] == [3, 3]
    whole = SpeechData(train_size=8, val_size=2, seconds=1.0, chunk_seconds=None, batch_size=3, eval_batch_size=2)
    whole.setup("fit")
    assert [b[0].shape for b in whole.val_dataloader()] == [(2, 16000)]


def test_dns_layout_pairs_by_fileid(tmp_path):
    (tmp_path / "noisy").mkdir()
    (tmp_path / "clean").mkdir()
    for i in (3, 12):
        noisy, clean = _tone_pair(0.3, 16000, i)
        sf.write(tmp_path / "noisy" / f"book_00{i}_snr5_fileid_{i}.wav", noisy, 16000)
        sf.write(tmp_path / "clean" / f"clean_fileid_{i}.wav", clean, 16000)
    data = DNSFolder(tmp_path / "noisy", tmp_path / "clean")
    assert [(n.name, c.name) for n, c in data.pairs] == [
        ("book_0012_snr5_fileid_12.wav", "clean_fileid_12.wav"),
        ("book_003_snr5_fileid_3.wav", "clean_fileid_3.wav"),
    ]
    expected = sf.read(tmp_path / "clean" / "clean_fileid_12.wav", dtype="float32")[0]
    _, clean, c = data[0]
    torch.testing.assert_close(clean / c.float(), torch.from_numpy(expected), rtol=1e-5, atol=1e-6)
    sf.write(tmp_path / "noisy" / "stray.wav", np.zeros(100, np.float32), 16000)
    with pytest.raises(FileNotFoundError, match="fileid"):
        DNSFolder(tmp_path / "noisy", tmp_path / "clean")


def _epoch_batches(dm: SpeechData, epoch: int) -> list[list[float]]:
    loader = dm.train_dataloader()
    loader.sampler.set_epoch(epoch)
    return [sorted(b[2].tolist() + b[3].tolist()) for b in loader]


def test_official_fixed_minibatches_repeat_every_epoch():
    dm = SpeechData(train_size=8, val_size=2, seconds=0.5, chunk_seconds=None, batch_size=3)
    dm.setup("fit")
    official = list(range(8))  # the sorted file list, shuffled once as dataset/data.py does
    random.seed(1234)
    random.shuffle(official)
    assert dm._splits["train"].order == official
    assert _epoch_batches(dm, 0) == _epoch_batches(dm, 1)
    shuffled = SpeechData(train_size=8, val_size=2, seconds=0.5, chunk_seconds=None, batch_size=3, fixed_batches=False)
    shuffled.setup("fit")
    assert _epoch_batches(shuffled, 0) != _epoch_batches(shuffled, 1)


def test_halve_on_plateau_follows_the_official_counter():
    rule = HalveOnPlateau()
    seq = [1.0, 2.0, 2.0, 1.5, 1.7, 1.0, 0.9, 0.8]
    # 2.0 <= 2.0 (1), 1.5 (2: halve), 1.7 > 1.5 resets (previous epoch, not the best), 1.0 (1), 0.9 (2: halve),
    # 0.8 (3: stop)
    assert [rule.step(m) for m in seq] == [(False, False), (False, False), (False, False), (True, False),
                                           (False, False), (False, False), (True, False), (False, True)]  # fmt: skip


def test_official_si_snr_known_values_and_padding():
    g = torch.Generator().manual_seed(0)
    ref = torch.randn(1, 16000, generator=g, dtype=torch.float64)
    noise = torch.randn(1, 16000, generator=g, dtype=torch.float64)
    noise = noise - (noise * ref).sum() / ref.pow(2).sum() * ref  # orthogonal to the reference
    est = ref + noise * (ref.norm() / noise.norm()) / 10  # 20 dB
    assert si_snr(ref, est).item() == pytest.approx(20.0, abs=1e-6)
    assert si_snr(ref, 3 * est).item() == pytest.approx(20.0, abs=1e-6)
    padded = torch.cat([est, torch.randn(1, 500, generator=g, dtype=torch.float64)], 1)
    padded_ref = torch.cat([ref, torch.zeros(1, 500, dtype=torch.float64)], 1)
    assert si_snr(padded_ref, padded, torch.tensor([16000])).item() == pytest.approx(20.0, abs=1e-6)


def test_test_step_scores_enhanced_audio_against_the_clean_reference_first():
    from tenfold.speech.metrics import segmental_snr
    from tenfold.speech.stft import apply_scale

    data = BuiltinSpeech(2, seed=4, split="test", seconds=1.0)
    items = [data[0], (data[1][0][:12000], data[1][1][:12000], data[1][2])]  # unequal lengths: padded batch
    noisy, clean, lengths, c = collate_pairs(items)
    task = EnhancementTask(model_kwargs=TINY, test_metrics=("ssnr",))
    task.log = lambda *a, **k: None  # no trainer attached
    task.test_step((noisy, clean, lengths, c), 0)
    enhanced = apply_scale(task.enhance(noisy, lengths), c, inverse=True)
    clean = apply_scale(clean, c, inverse=True)
    pairs = [(clean[i, : int(n)], enhanced[i, : int(n)]) for i, n in enumerate(lengths)]
    expected = torch.cat([segmental_snr(r, e) for r, e in pairs]).mean()
    swapped = torch.cat([segmental_snr(e, r) for r, e in pairs]).mean()
    assert abs(swapped - expected) > 0.1  # segSNR is not symmetric: the check below tells the orders apart
    torch.testing.assert_close(task.test_quality.compute()["ssnr"], expected, rtol=0, atol=1e-9)


def test_nonfinite_gradients_skip_the_update_and_clipping_bounds_the_norm():
    task = EnhancementTask(model_kwargs=TINY, grad_clip=5.0)
    params = list(task.model.parameters())
    for p in params:
        p.grad = torch.full_like(p, 10.0)
    task.configure_gradient_clipping(None)
    total = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in params]))
    assert total.item() == pytest.approx(5.0, rel=1e-4)
    params[3].grad[0] = float("nan")
    task.log = lambda *a, **k: None  # no trainer attached
    task.configure_gradient_clipping(None)
    assert all(p.grad is None for p in params)


def test_nonfinite_check_reads_the_total_norm_of_the_clip_in_the_official_order(monkeypatch):
    """Official ``update_params``: clip, then look for NaN/Inf; the total norm the clip returns says it at once."""
    task = EnhancementTask(model_kwargs=TINY, grad_clip=5.0)
    task.log = lambda *a, **k: None
    params = list(task.model.parameters())
    calls = []

    def fake_clip(parameters, max_norm, *args, **kwargs):
        calls.append(max_norm)
        return torch.tensor(float("inf"))  # as if a gradient overflowed; the gradients themselves look finite

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", fake_clip)
    for p in params:
        p.grad = torch.ones_like(p)
    task.configure_gradient_clipping(None)
    assert calls == [5.0] and all(p.grad is None for p in params)
    calls.clear()
    for p in params:
        p.grad = torch.ones_like(p)
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", lambda *a, **k: calls.append(1) or torch.tensor(2.0))
    task.configure_gradient_clipping(None)
    assert calls == [1] and all(p.grad is not None for p in params)


def test_training_validation_test_and_checkpoint_round_trip(tmp_path):
    data = SpeechData(train_size=4, val_size=2, test_size=2, seconds=0.5, chunk_seconds=0.5, batch_size=2,
                      eval_batch_size=2)  # fmt: skip
    optim = OptimConfig(opt="adam", lr=1e-3, weight_decay=0.0, sched="none", filter_bias_and_bn=False)
    task = EnhancementTask(model_kwargs=TINY, optim=optim, test_metrics=("si_sdr", "ssnr"))
    trainer = pl.Trainer(max_steps=3, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                         default_root_dir=tmp_path)  # fmt: skip
    before = [p.detach().clone() for p in task.model.parameters()]
    trainer.fit(task, datamodule=data)
    assert any(not torch.equal(a, b) for a, b in zip(before, task.model.parameters(), strict=True))
    assert {"val/loss", "val/si_snr"} <= set(trainer.callback_metrics)
    metrics = trainer.test(task, datamodule=data, verbose=False)[0]
    assert {"test/loss", "test/si_sdr", "test/ssnr"} <= set(metrics)
    trainer.save_checkpoint(tmp_path / "last.ckpt")
    loaded = load_taylorsenet(tmp_path / "last.ckpt")
    spec = torch.randn(1, 2, 7, 161)
    with torch.no_grad():
        torch.testing.assert_close(loaded(spec), task.model.eval()(spec))
