"""HOITask: model building from the data, baseline reduction, evaluation mapping, training, backbones, recipe."""

from __future__ import annotations

import json
import math

import lightning.pytorch as pl
import numpy as np
import pytest
import torch

from tenfold.engine.optim import OptimConfig
from tenfold.engine.quick import quick_fit
from tenfold.hoi.data import HOIData, hoi_collate
from tenfold.hoi.hico_eval import upt_evaluate
from tenfold.hoi.rmlr import RmLR
from tenfold.hoi.task import HOITask, RandomTextEncoder, ResNetBackbone, SmallConvBackbone
from tenfold.hoi.upt import HOIDetections, UPTBaseline

from conftest import REPO, run_tenfold

DATA = dict(
    num_objects=3, num_verbs=4, train_size=64, val_size=32, test_size=16, batch_size=8, detection_hidden_size=16
)
SMALL_RMLR = dict(remine_size=16, remine_heads=4, roi_size=2, reason_heads=4)


def make_task(**kw) -> HOITask:
    optim = OptimConfig(opt="adamw", lr=2e-3, weight_decay=1e-4, sched="none")
    args = dict(hidden_state_size=16, representation_size=16, text_encoder="random-16", text_cache_dir=None,
                rmlr_kwargs=SMALL_RMLR, optim=optim)  # fmt: skip
    return HOITask(**{**args, **kw})


def test_model_is_built_from_the_data_and_all_off_is_the_baseline():
    data = HOIData(**DATA)
    task = make_task()
    torch.manual_seed(0)
    model = task.build(data.info, data.train_counts)
    assert isinstance(model, RmLR) and model.interaction_head.num_classes == 4
    assert model.interaction_head.correspondence[0].sum() == 0  # person: no valid verb as object
    base = UPTBaseline(model.interaction_head)
    assert model.state_dict().keys() == base.state_dict().keys()
    assert model.interaction_head.mbf_g.fc_1[0].in_features == 64  # small_cnn's last width
    full = make_task(remine=True, align=True, transfer=True, reason=True).build(data.info)
    assert {"remining", "projection", "reasoning"} <= {n for n, _ in full.named_children()}
    assert full.text_sentences.shape == (data.info.num_hois, 16)
    # centred text tables (spec 7): zero mean direction over classes, unit rows
    assert full.text_sentences.norm(dim=1).sub(1).abs().max() < 1e-5
    with pytest.raises(ValueError, match="train_counts"):
        make_task().build(data.info, torch.zeros(3))


def test_evaluation_maps_pairs_and_verbs_to_hoi_classes():
    data = HOIData(**DATA)
    task = make_task()
    task.build(data.info, data.train_counts)
    ds = data.dataset("val")
    batch = hoi_collate([ds[i] for i in range(4)])
    table = data.info.hoi_index()

    def perfect(b, wrong_verb=False):
        out = []
        for t in b.targets:
            hoi = t["hoi"]
            verbs = (hoi[:, 2] + 1) % 4 if wrong_verb else hoi[:, 2]
            out.append(HOIDetections(t["boxes"], hoi[:, :2].T, torch.ones(len(hoi)), verbs, t["labels"][hoi[:, 1]]))
        return out

    kept = {}
    for wrong, expect in ((False, 1.0), (True, 0.0)):
        task._eval_records = []
        task.forward = lambda b, wrong=wrong: perfect(b, wrong)  # a model that returns the GT (or wrong verbs)
        task._eval_step(batch)
        metrics = task.evaluate_records(task._eval_records)
        present = np.bincount(
            np.concatenate([table[t["labels"][t["hoi"][:, 1]], t["hoi"][:, 2]].numpy() for t in batch.targets]),
            minlength=data.info.num_hois,
        )
        assert np.allclose(metrics.ap[present > 0], expect)
        assert metrics.rare.tolist() == (data.train_counts < 10).tolist()
        kept[wrong] = (task._eval_records, metrics)
    records, metrics = kept[False]
    # the records are exactly what upt_evaluate needs: one detection per GT pair, boxes of the pair
    rec = records[0]
    t = batch.targets[0]
    assert np.allclose(rec["gt_boxes"][:, 4:], t["boxes"][t["hoi"][:, 1]].numpy())
    # an epoch without any detection scores 0 everywhere (not an error)
    none = [{**r, "det_class": r["det_class"][:0], "det_boxes": r["det_boxes"][:0], "det_scores": r["det_scores"][:0]}
            for r in records]  # fmt: skip
    assert task.evaluate_records(none).mAP == 0
    # the mapping agrees with calling the evaluator directly on the same arrays
    direct = upt_evaluate(
        np.concatenate([np.full(len(r["det_class"]), r["image"]) for r in records]),
        np.concatenate([r["det_class"] for r in records]),
        np.concatenate([r["det_boxes"] for r in records]),
        np.concatenate([r["det_scores"] for r in records]),
        np.concatenate([np.full(len(r["gt_class"]), r["image"]) for r in records]),
        np.concatenate([r["gt_class"] for r in records]),
        np.concatenate([r["gt_boxes"] for r in records]),
        num_classes=data.info.num_hois,
    )
    assert np.array_equal(direct.ap, metrics.ap)


def test_training_improves_val_map_and_logs_every_loss_term(tmp_path):
    data = HOIData(**DATA)
    before = quick_fit(make_task, data, max_steps=1, val_every=1, out_dir=tmp_path / "a", seed=0)
    after = quick_fit(make_task, data, max_steps=60, val_every=60, out_dir=tmp_path / "b", seed=0)
    assert after.final["val/map"] > before.final["val/map"] + 0.15
    assert {"val/map", "val/map_rare", "val/map_non_rare"} <= set(after.final)
    # the small CNN trains with the head
    pl.seed_everything(0, verbose=False)
    init = make_task().backbone  # quick_fit builds the task right after seeding: the same initial weights
    trained = after.task.backbone
    assert not torch.equal(init.body[0].weight, trained.body[0].weight)
    full = lambda: make_task(remine=True, align=True, transfer=True, reason=True)  # noqa: E731
    quick_fit(full, data, max_steps=10, val_every=10, out_dir=tmp_path / "c", seed=0)
    logged = (tmp_path / "c" / "metrics.csv").read_text().splitlines()[0].split(",")
    for name in ("focal", "sentence_alignment", "word_alignment", "sentence_transfer", "word_transfer", "loss"):
        assert f"train/{name}" in logged


def test_frozen_backbone_stays_in_eval_and_out_of_the_optimiser(tmp_path):
    task = make_task(freeze_backbone=True)
    task.build(HOIData(**DATA).info)
    task.train()
    assert not task.backbone.training and task.model.training
    names = {id(p) for p in task.trainable_modules().parameters()}
    assert not any(id(p) in names for p in task.backbone.parameters())
    assert all(not p.requires_grad for p in task.backbone.parameters())


def test_resnet_backbone_reads_local_weights_and_rejects_others(tmp_path):
    import torchvision

    torch.manual_seed(0)
    ref = torchvision.models.resnet50(weights=None)
    torch.save(ref.state_dict(), tmp_path / "r50.pth")
    net = ResNetBackbone(50, str(tmp_path / "r50.pth")).eval()
    x = torch.rand(1, 3, 64, 64)
    ref.eval()
    with torch.no_grad():
        expect = ref.layer4(ref.layer3(ref.layer2(ref.layer1(ref.maxpool(ref.relu(ref.bn1(ref.conv1(x))))))))
        assert torch.equal(net(x), expect) and expect.shape == (1, 2048, 2, 2)
    torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="ResNet-50"):
        ResNetBackbone(50, str(tmp_path / "bad.pth"))
    with pytest.raises(FileNotFoundError):
        ResNetBackbone(50, str(tmp_path / "none.pth"))
    with pytest.raises(ValueError, match="small_cnn"):
        HOITask(backbone="small_cnn", backbone_weights="x.pth")
    assert SmallConvBackbone()(torch.zeros(2, 3, 64, 64)).shape == (2, 64, 8, 8)


def test_random_text_encoder_is_deterministic_per_text():
    enc = RandomTextEncoder(8)
    a, b = enc.encode(["ride", "hold", "ride"]), enc.encode(["ride"])
    assert torch.equal(a[0], a[2]) and torch.equal(a[0], b[0]) and not torch.equal(a[0], a[1])
    assert torch.allclose(a.norm(dim=1), torch.ones(3))
    with pytest.raises(ValueError, match="text_encoder"):
        HOITask(text_encoder="clip")


def test_mismatched_simulated_feature_size_fails_before_training(tmp_path):
    with pytest.raises(ValueError, match="hidden_state_size"):
        quick_fit(lambda: make_task(hidden_state_size=32), HOIData(**DATA), max_steps=1, val_every=1, out_dir=tmp_path)


def test_tiny_recipe_parses_and_trains(tmp_path):
    fast = [
        "--trainer.max_steps", "4", "--trainer.val_check_interval", "4", "--data.init_args.train_size", "64",
        "--data.init_args.val_size", "16", "--data.init_args.test_size", "16",
        "--model.init_args.text_encoder", "random-32", "--model.init_args.text_cache_dir", str(tmp_path / "text"),
        "--run_dir", str(tmp_path / "run"),
    ]  # fmt: skip
    run_tenfold(["fit", "--config", str(REPO / "configs/rmlr/tiny.yaml"), *fast], tmp_path)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    flat = json.dumps(metrics)
    assert "val/map" in flat and "train/sentence_alignment" in flat
    assert list((tmp_path / "text").glob("text-random-32-*.pt"))  # the text tables were cached on disk
    value = metrics.get("val/map", metrics.get("metrics", {}).get("val/map"))
    assert value is None or not math.isnan(float(value))


@pytest.mark.parametrize("recipe", ["hicodet_rmlr_r50", "hicodet_upt_r50", "vcoco_rmlr_r50", "vcoco_upt_r50"])
def test_dataset_recipes_have_valid_keys_and_the_spec_schedule(recipe):
    import yaml

    cfg = yaml.safe_load((REPO / f"configs/rmlr/{recipe}.yaml").read_text())
    assert cfg["trainer"]["gradient_clip_val"] == 0.1 and cfg["trainer"]["max_epochs"] == 20
    model = dict(cfg["model"]["init_args"])
    optim = OptimConfig(**model.pop("optim"))
    assert (optim.opt, optim.lr, optim.weight_decay, optim.sched, optim.decay_epochs) == (
        "adamw",
        1e-4,
        1e-4,
        "step",
        10,
    )
    model["backbone_weights"] = None  # a placeholder path; every other key must be an HOITask argument
    task = HOITask(**model, optim=optim)
    assert task.freeze_backbone and task.backbone.num_channels == 2048
    assert task.uses_text == ("rmlr" in recipe)
    data = cfg["data"]["init_args"]
    assert data["dataset"] == recipe.split("_")[0]
    HOIData(**data)  # all keys accepted (paths are only read in setup)
