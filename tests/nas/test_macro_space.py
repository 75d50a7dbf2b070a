"""The real-module macro space: parameters and MACs equal NAS-Bench-Macro's table; scoring by real training."""

from __future__ import annotations

import json
import os
import random

import pytest
import timm
import torch

from tenfold.nas.ginas import GINAS
from tenfold.nas.llm import ChatBackend, ChatReply
from tenfold.nas.macro import MACRO_LAYERS, MacroNet, TrainedMacroSpace, make_op
from tenfold.nas.spaces import MacroBenchSpace
from tenfold.utils.flops import count_flops, count_parameters

pytestmark = pytest.mark.usefixtures("one_thread")


def test_params_and_macs_match_the_benchmark_table(tables):
    with open(tables / "nas_bench_macro_cifar10.json") as f:
        table = json.load(f)
    keys = ["00000000", "22222222", *random.Random(0).sample(sorted(table), 6)]
    x = torch.randn(1, 3, 32, 32)
    for key in keys:
        model = MacroNet(ops=[int(c) for c in key]).eval()
        assert count_parameters(model) == table[key]["params"], key
        assert count_flops(model, x).macs == table[key]["flops"], key


def test_timm_registration_and_surface():
    model = timm.create_model("nas_macro_cifar", ops=[2, 1, 0, 0, 1, 2, 0, 1], width_mult=0.25, num_classes=7)
    x = torch.randn(2, 3, 32, 32)
    assert model(x).shape == (2, 7)
    assert model.forward_features(x).shape == (2, 320, 4, 4)
    model.reset_classifier(0)
    assert model(x).shape == (2, 320)
    with pytest.raises(ValueError, match="no released weights"):
        timm.create_model("nas_macro_cifar", pretrained=True)
    with pytest.raises(ValueError, match="unknown operation 3"):
        make_op(3, 8, 8, 1)
    with pytest.raises(ValueError, match="layer 3 takes 16 channels but receives 8"):
        MacroNet(ops=[0, 0], layers=[(4, 8, 1), (16, 16, 1)], stem_chs=4)


def test_the_table_prompt_describes_macronets_default_layers():
    assert MacroBenchSpace.layers == MACRO_LAYERS  # MacroNet's default: the network of the table (test above)


def test_import_tenfold_models_registers_it():
    # the model contract (tests/models/test_models_contract.py) covers what `import tenfold.models` registers. In
    # this process tenfold.nas.macro has imported the family already, so run the package's code again, afresh
    import importlib.util

    import tenfold.models
    from tenfold.models import nas_macro

    spec = importlib.util.spec_from_file_location("tenfold_models_afresh", tenfold.models.__file__)
    afresh = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(afresh)
    assert getattr(afresh, "nas_macro", None) is nas_macro
    assert "nas_macro_cifar" in tenfold.models.list_models()


def test_identity_op_is_identity_when_shapes_match():
    x = torch.randn(2, 8, 6, 6)
    assert torch.equal(make_op(0, 8, 8, 1)(x), x)
    assert make_op(0, 8, 16, 2)(x).shape == (2, 16, 3, 3)


class Scripted(ChatBackend):
    """Replies from a list (an in-process stand-in for a model)."""

    def __init__(self, replies):
        self.replies = list(replies)

    def complete(self, messages, on_error=None):
        return ChatReply(self.replies.pop(0))


def _tiny_space(tmp_path):
    from tenfold.data.datamodules import ClassificationData

    def data():
        return ClassificationData(dataset="digits", batch_size=32, eval_batch_size=300, image_size=8)

    return TrainedMacroSpace(data, layers=[(4, 8, 2), (8, 8, 1)], stem_chs=4, head_chs=16, max_steps=4,
                             out_dir=tmp_path, dataset="digits")  # fmt: skip


def test_ginas_on_a_real_training_space(tmp_path):
    space = _tiny_space(tmp_path / "runs")
    assert space.size == 9 and "layer3: 8 -> 8 channels, stride 1" in space.task_prompt
    transcript = tmp_path / "ginas.jsonl"
    result = GINAS(space, Scripted(["[1, 2]", "[0, 0]", "[1, 2]", "[2, 0]"]), budget=3, transcript=transcript).run()
    assert [r.answer for r in result.records] == [[1, 2], [0, 0], [2, 0]]
    assert result.stats["repeats"] == 1
    for record in result.records:
        assert 0.0 <= record.acc <= 100.0 and record.rank is None and record.info["steps"] == 4
    params = {r.key: r.info["params"] for r in result.records}
    assert params["00"] < params["20"]
    assert [r.info["run_dir"] for r in result.records] == [str(tmp_path / "runs" / d) for d in ("000-12", "001-00",
                                                                                                 "002-20")]  # fmt: skip
    # the same training seed scores the same architecture the same; an existing run folder is never reused
    (tmp_path / "runs" / "003-12").mkdir()
    (tmp_path / "runs" / "003-12" / "keep.txt").write_text("user file")
    again = space.evaluate([1, 2])
    assert again.acc == result.records[0].acc and again.info["run_dir"] == str(tmp_path / "runs" / "003-12-2")
    assert os.listdir(tmp_path / "runs" / "003-12") == ["keep.txt"]
    assert (tmp_path / "runs" / "003-12-2" / "metrics.csv").is_file()
    # resuming with a larger budget trains only the new proposal: the recorded scores are reused, not retrained
    fresh = _tiny_space(tmp_path / "runs")
    resumed = GINAS(fresh, Scripted(["[2, 2]"]), budget=4, transcript=transcript, resume=True).run()
    assert fresh.runs == 1 and [r.key for r in resumed.records] == ["12", "00", "20", "22"]
    assert resumed.records[3].info["run_dir"] == str(tmp_path / "runs" / "000-22")
    assert [r.acc for r in resumed.records[:3]] == [r.acc for r in result.records]


def test_demo_with_and_without_an_endpoint(tmp_path, chat_server, monkeypatch):
    import tenfold.nas.demo as demo
    from tenfold.engine.demo import DemoContext

    monkeypatch.setattr(demo, "DEMO_STEPS", 3)
    monkeypatch.setattr(demo, "DEMO_BUDGET", 2)
    for var in ("TENFOLD_LLM_MODEL", "TENFOLD_LLM_BASE_URL", "TENFOLD_LLM_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    result = demo.ginas_demo(DemoContext(out_dir=tmp_path / "a", budget_s=60))
    assert [r["optimizer"] for r in result.rows] == ["regularised evolution (pop 3, tournament 2)"]
    assert result.rows[0]["evaluations"] == 2
    assert "GINAS (the chat LLM) was **skipped**" in result.notes and "TENFOLD_LLM_MODEL" in result.notes
    assert result.plots[0].is_file()

    monkeypatch.setenv("TENFOLD_LLM_MODEL", "fake")
    monkeypatch.setenv("TENFOLD_LLM_API_KEY", "sk-demo-secret")
    with chat_server([{"reply": "[2, 1, 2, 1, 0]"}, {"reply": "Try [1, 1, 1, 1, 1]."}]) as server:
        monkeypatch.setenv("TENFOLD_LLM_BASE_URL", server.base_url)
        result = demo.ginas_demo(DemoContext(out_dir=tmp_path / "b", budget_s=60))
    assert [r["optimizer"] for r in result.rows][1] == "GINAS (fake)"
    assert result.rows[1]["evaluations"] == 2 and "skipped" not in result.notes
    transcript = (tmp_path / "b" / "ginas_transcript.jsonl").read_text()
    assert "Try [1, 1, 1, 1, 1]." in transcript and "sk-demo-secret" not in transcript
