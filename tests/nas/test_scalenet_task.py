"""ScaleNet super-supernet training task and proxy evaluator."""

from __future__ import annotations

import math

import lightning.pytorch as pl
import pytest
import torch

from tenfold.nas.scalenet import (
    ScaleNetSpace,
    ScaleNetSuperNet,
    evaluate_candidate,
    official_lr_factor,
    s_softmax_loss,
)
from tenfold.nas.scalenet_task import ScaleNetSupernetTask, load_supernet

pytestmark = pytest.mark.usefixtures("one_thread")


class _Data(pl.LightningDataModule):
    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.x, self.y = torch.randn(32, 3, 24, 24, generator=g), torch.arange(32) % 10

    def train_dataloader(self):
        return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(self.x, self.y), batch_size=8)


def _trainer(max_steps: int, **kw) -> pl.Trainer:
    kw.setdefault("enable_checkpointing", False)
    return pl.Trainer(accelerator="cpu", max_steps=max_steps, logger=False, enable_progress_bar=False,
                      enable_model_summary=False, limit_val_batches=0, **kw)  # fmt: skip


def _task() -> ScaleNetSupernetTask:
    torch.manual_seed(0)
    return ScaleNetSupernetTask("tiny", num_classes=10, seed=3, warmup_steps=2,
                                optim={"opt": "sgd", "lr": 0.1, "weight_decay": 1e-3})  # fmt: skip


def test_lr_factor_is_the_official_schedule():
    assert official_lr_factor(1, 375, 750000) == pytest.approx(1 / 375)
    assert official_lr_factor(375, 375, 750000) == pytest.approx(1.0)
    mid = (375 + 750000) / 2
    assert official_lr_factor(int(mid), 375, 750000) == pytest.approx(0.5, abs=1e-5)
    assert official_lr_factor(750000, 375, 750000) == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="must exceed warmup_steps"):
        official_lr_factor(1, 10, 10)


def test_param_groups_and_schedule():
    task = _task()
    trainer = _trainer(4)
    trainer.fit(task, datamodule=_Data())
    opt = trainer.optimizers[0]
    convs = [m.weight for m in task.supernet.modules() if isinstance(m, torch.nn.Conv2d)]
    by_id = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    assert all(by_id[id(w)] == pytest.approx(2e-3) for w in convs)
    head = task.supernet.net.head_linear1[0].module[0]
    assert by_id[id(head.weight)] == by_id[id(head.bias)] == pytest.approx(1e-3)
    bn = [m for m in task.supernet.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert all(by_id[id(m.weight)] == 0.0 for m in bn)
    se_bias = task.supernet.net.backbone_stage1_0[1].se.squeeze_conv.bias
    assert by_id[id(se_bias)] == 0.0
    assert len(by_id) == len(list(task.supernet.parameters()))
    # after 4 steps the scheduler has set the lr of iteration 5 (warm-up 2, cosine to 0 at 4)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1 * official_lr_factor(5, 2, 4))


def test_unsampled_ops_get_no_gradient():
    task = _task()
    enc = task.sample(0)
    x, y = torch.randn(4, 3, enc[-1], enc[-1]), torch.arange(4)
    task.supernet.zero_grad(set_to_none=True)
    loss = s_softmax_loss(task.supernet(x, enc), y)
    loss.backward()
    for idx, block in zip(enc[:-2], task.supernet.net, strict=True):
        for j, op in enumerate(block):
            grads = [p.grad for p in op.parameters()]
            if j != idx:
                assert all(g is None for g in grads)
    chosen = task.supernet.net.backbone_stage2_0[enc[5]]
    assert enc[5] > 0 and any(p.grad is not None and p.grad.abs().sum() > 0 for p in chosen.parameters())


def test_sampler_sequence_and_resume_equal_uninterrupted(tmp_path):
    from lightning.pytorch.callbacks import ModelCheckpoint

    a, b = _task(), _task()
    assert [a.sample(t) for t in range(5)] == [b.sample(t) for t in range(5)]
    assert a.sample(0) != a.sample(1)
    full = _task()
    full_trainer = _trainer(8)
    full_trainer.fit(full, datamodule=_Data())

    class Kill(pl.Callback):
        def on_train_batch_start(self, trainer, *args):
            if trainer.global_step == 5:
                raise RuntimeError("killed")

    # checkpoint at step 4 = the end of epoch 0 (4 batches): the plain test loader is not resumable mid-epoch
    # (Lightning restarts its epoch, so a mid-epoch checkpoint would replay batches)
    part = _task()
    ckpt_cb = ModelCheckpoint(dirpath=tmp_path, filename="step{step}", every_n_train_steps=4, save_top_k=-1)
    with pytest.raises(RuntimeError, match="killed"):
        _trainer(8, callbacks=[Kill(), ckpt_cb], enable_checkpointing=True).fit(part, datamodule=_Data())
    (ckpt,) = tmp_path.glob("step*4*.ckpt")
    resumed = _task()
    resumed_trainer = _trainer(8)
    resumed_trainer.fit(resumed, datamodule=_Data(), ckpt_path=ckpt)
    # every weight, every BN buffer (running statistics, batch counts), every slicing counter and the optimiser's
    # momentum buffers equal the uninterrupted run's (steps 5-7 have a non-zero lr, so a replayed or skipped batch
    # or a wrong slice phase would show in the weights; the last step's lr factor is 0 but its batch still moves
    # the BN statistics and the momentum)
    ours = resumed.state_dict()
    for k, v in full.state_dict().items():
        torch.testing.assert_close(ours[k], v, rtol=0, atol=0, msg=k)
    assert any("running_var" in k for k in ours)
    assert resumed.supernet.coupling_state() == full.supernet.coupling_state()
    mom_full = [s["momentum_buffer"] for s in full_trainer.optimizers[0].state.values() if "momentum_buffer" in s]
    mom_res = [s["momentum_buffer"] for s in resumed_trainer.optimizers[0].state.values() if "momentum_buffer" in s]
    assert len(mom_full) == len(mom_res) > 0
    for x, y in zip(mom_full, mom_res, strict=True):
        torch.testing.assert_close(y, x, rtol=0, atol=0)
    net = load_supernet(ckpt)
    assert net.coupling_state() != [0] * len(net.coupling_state())  # counters restored from the checkpoint
    with pytest.raises(ValueError, match="needs the space"):
        torch.save({"step": 1, "state_dict": {}}, tmp_path / "off.pth")
        load_supernet(tmp_path / "off.pth")


class _Fake(torch.nn.Module):
    """Returns scripted logits by call parity; records the BN reset, the mode and the grad state."""

    def __init__(self, logits):
        super().__init__()
        self.space = ScaleNetSpace.tiny()  # n_coupling 2
        self.logits, self.calls, self.resets, self.modes = logits, 0, 0, []

    def reset_bn(self):
        self.resets += 1

    def forward(self, x, enc):
        self.modes.append((self.training, torch.is_grad_enabled(), x.shape[-1]))
        out = self.logits[self.calls]
        self.calls += 1
        return out


def test_evaluate_candidate_hand_computed():
    # batch 1: pass 1 alone predicts [0, 1], pass 2 alone [1, 1]; their sum [[1, 3], [0, 2]] predicts [1, 1]
    # against labels [0, 1] -> 50 %. batch 2 (one image): sum [2, 1] -> class 0 = label -> 100 %.
    logits = [torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([[0.0, 3.0], [0.0, 1.0]]),
              torch.tensor([[1.0, 1.0]]), torch.tensor([[1.0, 0.0]])]  # fmt: skip
    fake = _Fake(logits).eval()
    batches = [(torch.zeros(2, 3, 32, 32), torch.tensor([0, 1])), (torch.zeros(1, 3, 32, 32), torch.tensor([0]))]
    score = evaluate_candidate(fake, [0] * 16 + [1.0, 20], batches)
    assert score == pytest.approx(75.0)  # mean over batches, not over the 3 images (66.7 %)
    assert fake.resets == 1 and fake.modes == [(True, False, 20)] * 4
    assert not fake.training  # mode restored
    with pytest.raises(ValueError, match="at least one proxy batch"):
        evaluate_candidate(fake, [0] * 16 + [1.0, 20], [])


def test_evaluate_candidate_uses_batch_statistics_and_both_slices():
    torch.manual_seed(0)
    net = ScaleNetSuperNet(ScaleNetSpace.tiny())
    enc = [0, 1, 2, 1, 0, 2, 2, 2, 0, 1, 1, 1, 0, 0, 0, 0, 1.5, 20]
    x = torch.randn(8, 3, 20, 20)
    y = torch.arange(8) % 10
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.fill_(5.0)
    s1 = evaluate_candidate(net.eval(), enc, [(x, y)])
    with torch.no_grad():
        net.train()
        manual = net(x, enc) + net(x, enc)
    assert s1 == pytest.approx(100.0 * (manual.argmax(1) == y).double().mean().item())
    assert math.isclose(evaluate_candidate(net, enc, [(x, y)]), s1)  # counters back in phase after 2 calls


DDP_SCRIPT = """
import os, sys, json, torch, torch.distributed as dist
from tenfold.nas.scalenet import ScaleNetSpace, ScaleNetSuperNet, evaluate_candidates, sample_subnet
import random
def run(rank, port, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    torch.manual_seed(0)
    net = ScaleNetSuperNet(ScaleNetSpace.tiny())
    rng = random.Random(0)
    encs = [sample_subnet(net.space, rng) for _ in range(5)]
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randn(8, 3, 24, 24, generator=g), torch.arange(8) % 10)]
    scores = evaluate_candidates(net, encs, batches)
    json.dump(scores, open(f"{out}/rank{rank}.json", "w"))
    dist.destroy_process_group()
if __name__ == "__main__":
    run(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3])
"""


def test_candidates_spread_over_two_gloo_processes(tmp_path):
    import json
    import random
    import socket
    import subprocess
    import sys

    from tenfold.nas.scalenet import evaluate_candidates, sample_subnet

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    (tmp_path / "ddp.py").write_text(DDP_SCRIPT)
    procs = [
        subprocess.Popen([sys.executable, str(tmp_path / "ddp.py"), str(rank), str(port), str(tmp_path)])
        for rank in range(2)
    ]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    r0 = json.loads((tmp_path / "rank0.json").read_text())
    r1 = json.loads((tmp_path / "rank1.json").read_text())
    torch.manual_seed(0)
    net = ScaleNetSuperNet(ScaleNetSpace.tiny())
    rng = random.Random(0)
    encs = [sample_subnet(net.space, rng) for _ in range(5)]
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randn(8, 3, 24, 24, generator=g), torch.arange(8) % 10)]
    single = evaluate_candidates(net, encs, batches)
    assert r0 == r1 == pytest.approx(single, abs=1e-9)
    assert len(set(single)) > 1  # the candidates really differ, so an order mix-up would show


def test_validation_subnet_comes_from_the_requested_scaling_stage():
    # the tiny space's width 1.0 belongs to stages 0 and 1: the stage is read from the sampler's first draw
    for seed in range(6):
        enc = ScaleNetSupernetTask("tiny", seed=seed, val_stage=0).val_encoding
        assert enc[-2:] == [1.0, 16], (seed, enc)
        enc = ScaleNetSupernetTask("tiny", seed=seed, val_stage=2).val_encoding
        assert enc[-2] in ScaleNetSpace.tiny().width_multipliers[2] and enc[-1] in (16, 18, 20)
    with pytest.raises(ValueError, match="val_stage"):
        ScaleNetSupernetTask("tiny", val_stage=3)
