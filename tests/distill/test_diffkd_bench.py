"""``tenfold bench diffkd --official PATH``: the official import, the skipped path and the tables' shape.

The "official" package here is a tiny stand-in written by the test (the real checkout is never vendored): a
``DiffKD`` with the official constructor and the standalone repository's return order, computed by tenfold's
reference execution, so that the comparison table must show exact zeros for the reference and float rounding
for the fast execution.
"""

from __future__ import annotations

import sys

import pytest
import torch

from tenfold.bench import OfficialCodeMissing, official_benches, run_bench
from tenfold.distill import bench as diffkd_bench

pytestmark = pytest.mark.usefixtures("one_thread")

FAKE_DIFFKD = '''
from tenfold.distill.diffkd import DiffKD as _Ours


class DiffKD(_Ours):
    """Official signature and standalone return order (refined, ddim_loss, target, rec_loss)."""

    def __init__(self, student_channels, teacher_channels, kernel_size=3, inference_steps=5,
                 num_train_timesteps=1000, use_ae=False, ae_channels=None):
        super().__init__(student_channels, teacher_channels, kernel_size, inference_steps, num_train_timesteps,
                         use_ae, ae_channels, fast=False)

    def forward(self, student_feat, teacher_feat):
        out = super().forward(student_feat, teacher_feat)
        return out.refined, out.ddim_loss, out.target, out.rec_loss
'''


@pytest.fixture
def fake_official(tmp_path, monkeypatch):
    root = tmp_path / "DiffKD"
    root.mkdir()
    (root / "diffkd.py").write_text(FAKE_DIFFKD)
    (root / "diffkd_modules.py").write_text("")
    (root / "scheduling_ddim.py").write_text("")
    yield root
    for name in ("diffkd", "diffkd_modules", "scheduling_ddim"):
        sys.modules.pop(name, None)


def test_missing_or_wrong_checkout_is_reported_before_anything_is_measured(tmp_path):
    assert "diffkd" in official_benches()
    with pytest.raises(OfficialCodeMissing, match="no such folder"):
        diffkd_bench.bench_diffkd(True, official=tmp_path / "absent")
    (tmp_path / "other").mkdir()
    with pytest.raises(OfficialCodeMissing, match="scheduling_ddim.py"):
        diffkd_bench.bench_diffkd(True, official=tmp_path / "other")


def test_framework_layout_is_found(tmp_path):
    package = tmp_path / "sota" / "lib" / "models" / "losses" / "diffkd"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("from .diffkd import DiffKD\n")
    (package / "diffkd.py").write_text("class DiffKD:\n    pass\n")
    for name in ("diffkd_modules.py", "scheduling_ddim.py"):
        (package / name).write_text("")
    try:
        module, layout = diffkd_bench.import_official_diffkd(tmp_path / "sota")
        assert layout == "framework"
        assert module.__file__.startswith(str(package))
    finally:
        for name in [n for n in sys.modules if n == "diffkd" or n.startswith("diffkd.")]:
            sys.modules.pop(name)


def test_official_term_follows_the_return_order(fake_official):
    module, layout = diffkd_bench.import_official_diffkd(fake_official)
    assert layout == "standalone"
    torch.manual_seed(0)
    block = module.DiffKD(8, 12, kernel_size=3, use_ae=True, ae_channels=8)
    term = diffkd_bench.OfficialDiffKDTerm(block, "feature", layout)
    s, t = torch.randn(3, 8, 4, 4), torch.randn(3, 12, 4, 4)
    torch.manual_seed(1)
    refined, target, ddim, rec, kd, total = term.outputs(s, t)
    torch.manual_seed(1)
    out = block.__class__.__mro__[1].forward(block, s, t)  # tenfold's own result, official order
    assert torch.equal(refined, out.refined) and torch.equal(target, out.target)
    assert torch.equal(ddim, out.ddim_loss) and torch.equal(rec, out.rec_loss)
    assert torch.equal(total, torch.nn.functional.mse_loss(out.refined, out.target) + out.ddim_loss + out.rec_loss)


def test_bench_with_official_times_side_by_side_and_compares_outputs(fake_official):
    tables = run_bench("diffkd", quick=True, official=fake_official)
    blocks, steps, outputs = tables.values()
    assert [r["what"].split(" (")[0] for r in blocks] == ["feature block", "logits block"]
    assert blocks[0]["params (M)"] == pytest.approx(7.64, abs=0.01)  # spec: 7.64 M
    assert blocks[0]["MACs / image (G)"] == pytest.approx(1.11, abs=0.01)  # spec: about 1.11 G
    names = [r["step"] for r in steps]
    assert names[0] == "KD (tau 4)"
    for recipe in ("DiffKD feature", "DiffKD feature + logits"):
        for impl in ("tenfold", "tenfold reference", "official"):
            assert f"{recipe}, {impl}" in names
    by_name = {r["step"]: r for r in steps}
    kd = by_name["KD (tau 4)"]
    for name, row in by_name.items():
        # ratios are of medians measured in the same run (values are timings: reported, never asserted)
        assert row["time ratio vs KD"] == pytest.approx(row["step (s)"] / kd["step (s)"])
        if name != "KD (tau 4)":
            official = by_name[name.rsplit(", ", 1)[0] + ", official"]
            assert row["time vs official"] == pytest.approx(row["step (s)"] / official["step (s)"])
            assert row["saved activations (MiB)"] > kd["saved activations (MiB)"]
    assert len(outputs) == 4
    for row in outputs:
        if row["vs official"] == "tenfold reference":  # the stand-in runs the same operations: exactly equal
            assert row["max |d total loss|"] == row["max |d student grad| / scale"] == 0.0
        else:  # the fast execution: float rounding only
            assert 0 <= row["max |d total loss|"] < 1e-4
            assert row["max |d student grad| / scale"] < 1e-3
