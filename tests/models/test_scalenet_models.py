"""ScaleNet standalone networks (tenfold.models.scalenet): layouts, timm registration, loading, training."""

from __future__ import annotations

import subprocess
import sys

import lightning.pytorch as pl
import pytest
import timm
import torch

from tenfold.classification import ClassificationTask
from tenfold.data.datamodules import ClassificationData
from tenfold.models.scalenet import PAPER_LAYOUT, TINY_LAYOUT, ScaleNetModel
from tenfold.nas.scalenet import ScaleNetSpace, official_flops, scalenet_from_encoding, true_flops

pytestmark = pytest.mark.usefixtures("one_thread")

TINY_ENC = [0, 1, 2, 1, 0, 2, 0, 0, 0, 1, 1, 2, 0, 0, 0, 0, 1.25, 20]


def test_registered_layouts_equal_the_search_spaces():
    for layout, space in ((PAPER_LAYOUT, ScaleNetSpace.paper()), (TINY_LAYOUT, ScaleNetSpace.tiny())):
        kwargs = space.model_kwargs()
        assert {k: kwargs[k] for k in layout} == layout
    assert sum(s[0] for s in PAPER_LAYOUT["stages"]) + 4 == 43


def test_timm_entrypoint_builds_the_encoding():
    model = timm.create_model("scalenet_tiny_searched", encoding=TINY_ENC)
    same = scalenet_from_encoding(TINY_ENC, "tiny")
    assert model.resolution == 20 and model.encoding == TINY_ENC
    assert [p.shape for p in model.parameters()] == [p.shape for p in same.parameters()]
    # stage2 layer 1 is skipped (id, same shape): 3 MBConvs in stage1, 1 in stage2, 3 in stage3
    assert [len(stage) for stage in model.blocks] == [3, 1, 3]
    assert model.stem[0].out_channels == 10  # ceil(8 * 1.25)
    assert model.blocks[0][0].expand[0].out_channels == 30  # hidden ceil(round(8 * 3) * 1.25)
    assert model.blocks[0][0].se_reduce.out_channels == 7  # 30 // 4
    paper = [0, 1, 0, *([2, 2, 0, 0, 0, 0, 0] * 5), 3, 0, 0, 0, 0, 1.0, 224]
    net = timm.create_model("scalenet_searched", encoding=paper)
    assert true_flops(net, 224) == official_flops(ScaleNetSpace.paper(), paper)  # the counters agree at c_m = 1


def test_bad_encodings_name_the_problem():
    with pytest.raises(ValueError, match="18 entries, expected 43 op indices"):
        timm.create_model("scalenet_searched", encoding=TINY_ENC)
    with pytest.raises(ValueError, match=r"encoding\[2\] = 3 is not an op index in \[0, 3\)"):
        ScaleNetModel([0, 1, 3, *TINY_ENC[3:]], **TINY_LAYOUT)
    with pytest.raises(ValueError, match=r"encoding\[0\] = 1"):
        ScaleNetModel([1, *TINY_ENC[1:]], **TINY_LAYOUT)
    with pytest.raises(ValueError, match="c_m > 0"):
        ScaleNetModel([*TINY_ENC[:-2], 0.0, 16], **TINY_LAYOUT)
    with pytest.raises(ValueError, match="must start with 'id'"):
        ScaleNetModel(TINY_ENC, **{**TINY_LAYOUT, "ops": ("ir_3x3_se", "id", "ir_5x5_se")})


def test_weights_round_trip_through_timm_loader(tmp_path):
    torch.manual_seed(0)
    model = timm.create_model("scalenet_tiny_searched", encoding=TINY_ENC).eval()
    torch.save(model.state_dict(), tmp_path / "w.pth")
    loaded = timm.create_model(
        "scalenet_tiny_searched", pretrained=True, pretrained_cfg_overlay={"file": str(tmp_path / "w.pth")},
        encoding=TINY_ENC,
    ).eval()  # fmt: skip
    x = torch.randn(2, 3, 20, 20)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        timm.create_model("scalenet_tiny_searched", pretrained=True, pretrained_cfg_overlay={"file": "no.pth"})


def test_models_package_does_not_import_nas():
    code = "import sys, tenfold.models; print(sorted(m for m in sys.modules if m.startswith('tenfold.nas')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_two_steps_of_the_classification_task():
    pl.seed_everything(0, verbose=False)
    task = ClassificationTask(model="scalenet_tiny_searched", num_classes=10, model_kwargs={"encoding": TINY_ENC})
    before = {k: v.clone() for k, v in task.model.state_dict().items()}
    data = ClassificationData(dataset="digits", image_size=20, batch_size=16, augment="none")
    trainer = pl.Trainer(accelerator="cpu", max_steps=2, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)  # fmt: skip
    trainer.fit(task, datamodule=data)
    assert trainer.global_step == 2
    after = task.model.state_dict()
    for name in ("stem.0.weight", "blocks.2.0.se_reduce.weight", "head_conv.0.weight", "fc.weight"):
        assert not torch.equal(before[name], after[name]), f"{name} did not train"
    assert torch.isfinite(trainer.callback_metrics["train/loss"])
