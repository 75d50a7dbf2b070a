"""The optimiser factory: timm names, per-step schedules whose length follows the trainer's budget."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from tenfold.engine.optim import OptimConfig, _schedule_length, configure_optimizers


def _module(num_batches=10, max_epochs=4, max_steps=-1, accumulate=1, limit=1.0):
    loader = list(range(num_batches))
    trainer = SimpleNamespace(
        datamodule=SimpleNamespace(train_dataloader=lambda: loader),
        limit_train_batches=limit, accumulate_grad_batches=accumulate, max_epochs=max_epochs, max_steps=max_steps,
        global_step=0,
    )  # fmt: skip
    return SimpleNamespace(trainer=trainer)


def test_schedule_length():
    assert _schedule_length(_module().trainer) == (10, 4)
    assert _schedule_length(_module(max_epochs=-1, max_steps=25).trainer) == (10, 2.5)
    assert _schedule_length(_module(max_epochs=2, max_steps=100).trainer) == (10, 2)
    assert _schedule_length(_module(accumulate=2).trainer) == (5, 4)
    assert _schedule_length(_module(limit=3).trainer) == (3, 4)
    with pytest.raises(ValueError, match="max_epochs or trainer.max_steps"):
        _schedule_length(_module(max_epochs=-1).trainer)


def test_cosine_reaches_min_lr_at_the_last_step_and_multistep_decays_at_milestones():
    model = torch.nn.Linear(3, 2)
    module = _module(num_batches=10, max_epochs=-1, max_steps=40)
    out = configure_optimizers(module, model, OptimConfig(opt="momentum", lr=0.1, sched="cosine", min_lr=0.0))
    opt, sched = out["optimizer"], out["lr_scheduler"]["scheduler"]
    assert isinstance(opt, torch.optim.SGD) and not opt.defaults["nesterov"]
    sched.step_update(num_updates=20)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.05, rel=1e-6)  # half-way through a cosine
    sched.step_update(num_updates=40)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-9)

    module = _module(num_batches=10, max_epochs=240)
    cfg = OptimConfig(opt="momentum", lr=0.05, sched="multistep", decay_milestones=[150, 180, 210], decay_rate=0.1)
    sched = configure_optimizers(module, model, cfg)["lr_scheduler"]["scheduler"]
    group = sched.optimizer.param_groups[0]
    # timm's multistep switches one update before the milestone (bisect on t + 1): 1 of 1500 updates, noted in docs
    for update, lr in ((0, 0.05), (1498, 0.05), (1500, 0.005), (1800, 0.0005), (2100, 0.00005)):
        sched.step_update(num_updates=update)
        assert group["lr"] == pytest.approx(lr, rel=1e-6), update


def test_weight_decay_groups():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    filtered = configure_optimizers(_module(), model, OptimConfig(sched="none", weight_decay=5e-4))
    assert sorted(g["weight_decay"] for g in filtered.param_groups) == [0.0, 5e-4]
    everything = configure_optimizers(
        _module(), model, OptimConfig(sched="none", weight_decay=5e-4, filter_bias_and_bn=False)
    )
    assert [g["weight_decay"] for g in everything.param_groups] == [5e-4]


def test_layer_decay_and_betas_reach_the_optimizer():
    import timm

    from tenfold.engine.optim import OptimConfig, configure_optimizers

    model = timm.create_model("swin_tiny_patch4_window7_224", num_classes=10)
    cfg = OptimConfig(opt="adamw", lr=1e-3, weight_decay=0.05, sched="none", layer_decay=0.9, opt_betas=(0.9, 0.95))
    opt = configure_optimizers(None, model, cfg)
    names = {id(p): n for n, p in model.named_parameters()}
    lr_of = {names[id(p)]: g["lr"] for g in opt.param_groups for p in g["params"]}
    assert lr_of["head.fc.weight"] == pytest.approx(1e-3)
    assert lr_of["patch_embed.proj.weight"] < lr_of["layers.2.blocks.0.attn.qkv.weight"] < lr_of["head.fc.weight"]
    layers = len({g["lr_scale"] for g in opt.param_groups})
    assert lr_of["patch_embed.proj.weight"] == pytest.approx(1e-3 * 0.9 ** (layers - 1))
    assert all(g["betas"] == (0.9, 0.95) for g in opt.param_groups)


def test_warmup_prefix_gives_the_mae_half_cycle_cosine():
    import math

    model = torch.nn.Linear(3, 2)
    module = _module(num_batches=1, max_epochs=800)
    cfg = OptimConfig(opt="adamw", lr=1.0, sched="cosine", warmup_epochs=40, warmup_lr=0.0, min_lr=0.0,
                      warmup_prefix=True)  # fmt: skip
    sched = configure_optimizers(module, model, cfg)["lr_scheduler"]["scheduler"]
    group = sched.optimizer.param_groups[0]
    for epoch in (20, 40, 400, 700, 799):
        sched.step_update(num_updates=epoch)
        mae = epoch / 40 if epoch < 40 else 0.5 * (1 + math.cos(math.pi * (epoch - 40) / 760))  # MAE's lr_sched
        assert group["lr"] == pytest.approx(mae, abs=1e-6), epoch
