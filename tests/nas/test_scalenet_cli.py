"""``tenfold search --space scalenet``: results files, state file, resume after a kill."""

from __future__ import annotations

import json

import lightning.pytorch as pl
import pytest
import torch

import tenfold.nas.scalenet as sn
from tenfold.nas.cli import search_main
from tenfold.nas.scalenet_task import ScaleNetSupernetTask

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def supernet_ckpt(tmp_path_factory):
    torch.manual_seed(0)
    task = ScaleNetSupernetTask("tiny", num_classes=10, warmup_steps=1)
    x, y = torch.randn(16, 3, 24, 24), torch.arange(16) % 10

    class Data(pl.LightningDataModule):
        def train_dataloader(self):
            return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8)

    trainer = pl.Trainer(accelerator="cpu", max_steps=2, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)  # fmt: skip
    trainer.fit(task, datamodule=Data())
    path = tmp_path_factory.mktemp("sn") / "supernet.ckpt"
    trainer.save_checkpoint(path)
    return path


def _argv(ckpt, out, *extra):
    return ["--space", "scalenet", "--supernet", str(ckpt), "--out", str(out), "--pop-size", "8", "--n-gens", "2",
            "--admm-iter", "2", "--n-init", "4", "--proxy-batches", "1", "--batch-size", "32", "--image-size", "24",
            *extra]  # fmt: skip


def test_search_writes_results_and_resumes_after_a_kill(supernet_ckpt, tmp_path, monkeypatch):
    real, calls, evaluated = sn.evaluate_candidates, [], []

    def counted(supernet, encodings, *args, **kwargs):
        calls.append(1)
        evaluated.extend(encodings)
        return real(supernet, encodings, *args, **kwargs)

    monkeypatch.setattr(sn, "evaluate_candidates", counted)
    assert search_main(_argv(supernet_ckpt, tmp_path / "a")) == 0
    n_calls = len(calls)  # batched scorings (one per population, generation or grid with new candidates)
    assert n_calls >= 2
    res = json.loads((tmp_path / "a" / "results.json").read_text())
    assert [f["stage"] for f in res["family"]] == [0, 1, 2]
    assert res["family"][0]["encoding"][:-2] == res["base"] and res["evaluations"] > 0
    f0 = res["flops_constraint"]
    assert abs(res["family"][0]["flops"] - f0) <= 0.1 * f0  # the selected base is feasible
    # with the CLI's tolerances (10 % / 20 % of F0) the search's proxy evaluations reach every scaled FLOPs level:
    # a feasible member of stage s has 2^s F(b) +- 20 % 2^s F0 with F(b) = F0 +- 10 %, i.e. 0.7-1.3 x 2^s F0
    space = sn.ScaleNetSpace.tiny(flops_constraint=f0)
    per_level = [0, 0, 0]
    for enc in evaluated:
        ratio = sn.official_flops(space, enc) / f0
        per_level[min(range(3), key=lambda s: abs(ratio - 2**s))] += 1
        assert any(0.7 * 2**s <= ratio <= 1.3 * 2**s for s in (1, 2)), ratio  # only scaled members are searched
    assert per_level[0] == 0 and min(per_level[1:]) >= 3, per_level
    for f in res["family"][1:]:
        assert (
            f["target"] == f0 * 2 ** f["stage"] and f["resolution"] in sn.ScaleNetSpace.tiny().resolutions[f["stage"]]
        )
    assert (tmp_path / "a" / "summary.md").read_text().startswith("ScaleNet search: F0")
    state = json.loads((tmp_path / "a" / "state.json").read_text())
    assert state["round"] == 2 and state["topk"][0][1] == res["base"]
    with pytest.raises(FileExistsError, match="exists"):
        search_main(_argv(supernet_ckpt, tmp_path / "a"))

    calls.clear()

    def dies(*args, **kwargs):
        calls.append(1)
        if len(calls) == n_calls:  # during the last generation
            raise KeyboardInterrupt  # the process is killed during the search
        return real(*args, **kwargs)

    monkeypatch.setattr(sn, "evaluate_candidates", dies)
    with pytest.raises(KeyboardInterrupt):
        search_main(_argv(supernet_ckpt, tmp_path / "b"))
    assert not (tmp_path / "b" / "results.json").exists() and (tmp_path / "b" / "state.json").exists()
    monkeypatch.setattr(sn, "evaluate_candidates", real)
    assert search_main(_argv(supernet_ckpt, tmp_path / "b", "--resume")) == 0
    resumed = json.loads((tmp_path / "b" / "results.json").read_text())
    for key in ("base", "strategy", "family", "family_score", "evaluations"):
        assert resumed[key] == res[key], key


def test_bad_options(supernet_ckpt, tmp_path):
    with pytest.raises(FileNotFoundError, match="no search state"):
        search_main(_argv(supernet_ckpt, tmp_path / "none", "--resume"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        search_main(_argv(tmp_path / "missing.ckpt", tmp_path / "c"))
    with pytest.raises(ValueError, match="--proxy-batches"):
        search_main(_argv(supernet_ckpt, tmp_path / "d", "--proxy-batches", "0"))
