"""ClassificationTask with mixup / CutMix: soft-target loss, label smoothing folded in, clear errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tenfold.classification import ClassificationTask, MixupConfig


def test_mixup_loss_is_soft_target_cross_entropy_on_mixed_images(monkeypatch):
    torch.manual_seed(0)
    task = ClassificationTask(model="resnet8", num_classes=4, label_smoothing=0.1,
                              mixup=MixupConfig(mixup_alpha=0.2, cutmix_alpha=0.0, prob=1.0))  # fmt: skip
    task.log = task.log_dict = lambda *a, **k: None  # no trainer attached
    images, labels = torch.randn(6, 3, 32, 32), torch.tensor([0, 1, 2, 3, 0, 1])
    lam = 0.7
    monkeypatch.setattr(task._mix, "_params_per_batch", lambda: (lam, False))
    loss = task.training_step((images.clone(), labels), 0)  # timm mixes in place
    mixed = lam * images + (1 - lam) * images.flip(0)
    onehot = F.one_hot(labels, 4).float() * 0.9 + 0.1 / 4
    soft = lam * onehot + (1 - lam) * onehot.flip(0)
    expected = torch.sum(-soft * F.log_softmax(task(mixed), -1), -1).mean()
    torch.testing.assert_close(loss, expected)


def test_mixup_without_alphas_is_plain_cross_entropy():
    torch.manual_seed(0)
    task = ClassificationTask(model="resnet8", num_classes=4, label_smoothing=0.1, mixup=MixupConfig())
    task.log = task.log_dict = lambda *a, **k: None
    assert task._mix is None
    images, labels = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    loss = task.training_step((images, labels), 0)
    torch.testing.assert_close(loss, F.cross_entropy(task(images), labels, label_smoothing=0.1))


def test_mixup_errors():
    with pytest.raises(ValueError, match="mixup_alpha"):
        MixupConfig(mixup_alpha=-1)
    with pytest.raises(ValueError, match="mode"):
        MixupConfig(mixup_alpha=0.2, mode="row")
    task = ClassificationTask(model="resnet8", num_classes=4, mixup=MixupConfig(cutmix_alpha=1.0))
    with pytest.raises(ValueError, match="even batch size, got 3"):
        task.training_step((torch.randn(3, 3, 32, 32), torch.tensor([0, 1, 2])), 0)
