"""`tenfold bench lightvit|taylorsenet --official PATH` with tiny fake "official" checkouts written here.

The fakes reproduce what the benchmarks rely on in the real repositories (hunto/LightViT with its classification
submodule; Andong-Li-speech/TaylorSENet): the file layout, the import lines (timm's old ``register_model`` under the
names tenfold registers; ``from utils.utils import ...``), the entry points and the state-dict names. Their models
are tenfold's own plus a known output offset, so the reported differences are known; timing is replaced by a
clock-free stand-in (real timing is tested in tests/utils/test_throughput.py).
"""

from __future__ import annotations

import sys
import textwrap
from types import SimpleNamespace

import pytest
import torch

import tenfold.bench as bench
from tenfold.cli import main

LIGHTVIT_FAKE = """
from timm.models.registry import register_model  # the official file's import (timm's old path)
from timm.models import create_model
from tenfold.models.lightvit import LightViT


class OfficialLightViT(LightViT):
    def forward(self, x):
        return super().forward(x) + {offset}


@register_model
def lightvit_tiny(pretrained=False, **kwargs):
    return OfficialLightViT(embed_dims=[64, 128, 256], num_layers=[2, 6, 6], num_heads=[2, 4, 8],
                            mlp_ratios=[8, 4, 4], num_tokens=8, **kwargs)
"""

TAYLORSENET_FAKE = """
from utils.utils import NormSwitch  # the official file's import, from the repository's root
from tenfold.speech.taylorsenet import TaylorSENet as _Ours


class TaylorSENet(_Ours):
    def __init__(self, **kwargs):  # the official class takes lists
        assert all(not isinstance(v, tuple) for v in kwargs.values())
        super().__init__(**{{k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}})

    def forward(self, inputs):
        return super().forward(inputs) + NormSwitch * {offset}
"""


def _write(root, files: dict[str, str]):
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(textwrap.dedent(text))
    return root


def _fake_lightvit(root, offset: float, layout: str = "classification/lib/models"):
    return _write(root, {f"{layout}/lightvit.py": LIGHTVIT_FAKE.format(offset=offset), "README.md": "LightViT\n"})


def _fake_taylorsenet(root, offset: float):
    return _write(root, {"nets/TaylorSENet.py": TAYLORSENET_FAKE.format(offset=offset),
                         "utils/utils.py": "NormSwitch = 1.0\n"})  # fmt: skip


@pytest.fixture
def clock_free_throughput(monkeypatch):
    """compare_throughput replaced: img/s = a fixed rate per model name x batch (the ratios are then known)."""
    import tenfold.utils.throughput as throughput

    rates = {"tenfold": 3.0, "official": 2.0, "pvt_v2_b0": 1.5}
    calls = []

    def fake(models, input_shape, *, batch_size, threads, **kwargs):
        calls.append((tuple(models), batch_size, threads))

        # a compiled model ("<name> (compiled)") runs at twice its eager rate, plus 1 for tenfold's
        def rate(name):
            base = name.removesuffix(" (compiled)")
            return rates[base] if base == name else 2 * rates[base] + (base == "tenfold")

        return {name: SimpleNamespace(samples_per_s=rate(name) * batch_size) for name in models}

    monkeypatch.setattr(throughput, "compare_throughput", fake)
    return calls


def test_lightvit_official_table_same_weights_logit_diff_and_ratios(tmp_path, monkeypatch, clock_free_throughput):
    import timm

    import tenfold.models.bench as mb
    from tenfold.models.lightvit import LightViT

    monkeypatch.setattr(mb, "_all_threads", lambda: 2)
    repo = _fake_lightvit(tmp_path / "LightViT", offset=0.25)
    rows = mb.lightvit_official_rows(repo, quick=True)
    assert [(r["threads"], r["batch"]) for r in rows] == [(1, 1), (1, 8), (2, 1), (2, 8)]
    assert [c[0] for c in clock_free_throughput] == [("tenfold", "official", "pvt_v2_b0")] * 4
    assert [(c[1], c[2]) for c in clock_free_throughput] == [(1, 1), (8, 1), (1, 2), (8, 2)]
    for row in rows:
        assert row["tenfold img/s"] == 3.0 * row["batch"] and row["official img/s"] == 2.0 * row["batch"]
        assert row["tenfold / official"] == pytest.approx(1.5)
        assert row["tenfold / pvt_v2_b0"] == pytest.approx(2.0)
        # the fake adds 0.25 to the same network: the weights were shared, else the difference would be far larger
        assert row["max |logit diff|"] == pytest.approx(0.25, abs=1e-4)
    # the official file registered lightvit_tiny with timm; tenfold's registration is back
    assert type(timm.create_model("lightvit_tiny")) is LightViT
    # a checkout of image_classification_sota itself (lib/models) works too, and replaces the module imported above
    other = _fake_lightvit(tmp_path / "image_classification_sota", offset=0.5, layout="lib/models")
    assert mb.import_official_lightvit(other).__file__.startswith(str(other))
    assert str(other / "lib" / "models") not in sys.path


def test_lightvit_official_table_compiled_columns(tmp_path, monkeypatch, clock_free_throughput):
    import tenfold.models.bench as mb

    compiled_per_threads = []

    def fake_compiled(models):  # one fresh set of compiled wrappers per thread setting, for all three models
        compiled_per_threads.append(tuple(models))
        return {f"{name} (compiled)": model for name, model in models.items()}

    monkeypatch.setattr(mb, "_all_threads", lambda: 2)
    monkeypatch.setattr(mb, "_compiled", fake_compiled)
    rows = mb.lightvit_official_rows(_fake_lightvit(tmp_path / "LightViT", offset=0.25), quick=True, compile=True)
    assert compiled_per_threads == [("tenfold", "official", "pvt_v2_b0")] * 2
    names = ("tenfold", "official", "pvt_v2_b0")
    assert [c[0] for c in clock_free_throughput] == [(*names, *(f"{n} (compiled)" for n in names))] * 4
    for row in rows:
        assert row["tenfold compiled img/s"] == 7.0 * row["batch"]
        assert row["tenfold compiled / official"] == pytest.approx(7.0 / 2.0)  # over the official code as released
        assert row["tenfold compiled / official compiled"] == pytest.approx(7.0 / 4.0)
        assert row["tenfold compiled / pvt_v2_b0 compiled"] == pytest.approx(7.0 / 3.0)
        assert row["tenfold / official"] == pytest.approx(1.5)  # the eager columns are unchanged


def test_lightvit_official_missing_is_skipped_naming_the_folder(tmp_path, monkeypatch, capsys):
    import tenfold.models.bench as mb

    # the rest of the benchmark, stubbed: only the official part is under test
    monkeypatch.setattr(mb, "lightvit_flops_rows", lambda: [{"model": "m"}])
    monkeypatch.setattr(mb, "lightvit_speed_rows", lambda quick, compile: [{"speed": 1}])
    monkeypatch.setattr(mb, "lightvit_port_rows", lambda quick: [{"port": 1}])
    monkeypatch.setattr(mb, "lightvit_official_rows", lambda *a: pytest.fail("must not time without the code"))
    wrong = tmp_path / "LightViT"
    (wrong / "detection").mkdir(parents=True)  # a checkout without its classification submodule
    with pytest.raises(bench.OfficialCodeMissing, match="classification/lib/models/lightvit.py"):
        mb.bench_lightvit(True, official=wrong)
    result = bench.run_bench("lightvit", quick=True, official=wrong)
    assert len(result) == 4 and all(len(rows) == 1 for rows in result.values())
    skipped = result["official comparison"][0]
    assert skipped["status"] == "skipped" and str(wrong) in skipped["reason"]
    assert "hunto/LightViT" in skipped["reason"] and "submodule" in skipped["reason"]
    assert main(["bench", "lightvit", "--quick", "--official", str(tmp_path / "absent")]) == 0
    out = capsys.readouterr().out
    assert "official comparison" in out and str(tmp_path / "absent") in out and "no such folder" in out


def test_taylorsenet_official_rtf_same_weights_and_table_shape(tmp_path):
    from tenfold.speech.bench import official_rtf
    from tenfold.speech.stft import stft_compress
    from tenfold.speech.taylorsenet import TaylorSENet

    repo = _fake_taylorsenet(tmp_path / "TaylorSENet", offset=0.125)
    rows = official_rtf(repo, seconds=0.3, rounds=1, threads=(1,))
    names = ["official", "tenfold eager", "tenfold eager, freed memory kept (keep_freed_memory)"]
    assert [r["network"] for r in rows] == names and {r["threads"] for r in rows} == {1}
    assert rows[0]["speed vs official"] == 1 and rows[0]["max deviation from official"] == 0
    for row in rows:
        assert row["RTF"] > 0 and row["speed vs official"] == pytest.approx(rows[0]["RTF"] / row["RTF"])
    # the deviation of the fake's +0.125 relative to its output's scale, computed here from the same weights/input
    torch.manual_seed(0)
    ours = TaylorSENet().eval()
    wave = torch.randn(1, round(0.3 * 16000), generator=torch.Generator().manual_seed(0)) * 0.1
    with torch.no_grad():
        scale = (ours(stft_compress(wave)) + 0.125).abs().max().item()
    for row in rows[1:]:
        assert row["max deviation from official"] == pytest.approx(0.125 / scale, rel=1e-4)

    # another checkout: its own utils.utils and nets are imported, not the first one's cached modules
    other = _fake_taylorsenet(tmp_path / "other", offset=0.5)
    (other / "utils" / "utils.py").write_text("NormSwitch = 2.0\n")
    rows = official_rtf(other, seconds=0.3, rounds=1, threads=(1,))
    assert rows[1]["max deviation from official"] == pytest.approx(1.0 / (scale - 0.125 + 1.0), rel=1e-4)


def test_taylorsenet_official_missing_is_skipped_naming_the_folder(tmp_path, monkeypatch):
    import tenfold.speech.bench as sb

    wrong = _write(tmp_path / "not_it", {"nets/other.py": ""})
    with pytest.raises(bench.OfficialCodeMissing, match="nets/TaylorSENet.py"):
        sb.bench_taylorsenet(True, official=wrong)
    assert "taylorsenet" in bench.official_benches()
    calls = []

    def stub(quick, official=None):  # the rest of the benchmark is slow; run_bench's skip path is what is tested
        calls.append(official)
        if official is not None:
            sb.import_official_taylorsenet(official)
        return {"models (eager)": [{"x": 1}]}

    monkeypatch.setitem(bench._REGISTRY, "taylorsenet", (stub, "stub"))
    result = bench.run_bench("taylorsenet", official=wrong)
    assert calls == [wrong, None]
    assert result["models (eager)"] == [{"x": 1}]
    reason = result["official comparison"][0]["reason"]
    assert str(wrong) in reason and "Andong-Li-speech/TaylorSENet" in reason
