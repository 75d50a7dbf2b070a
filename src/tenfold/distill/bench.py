"""``tenfold bench diffkd``: what DiffKD costs on top of KD, as ratios measured in the same run.

* Extra parameters and multiply-adds of the DiffKD blocks of the official ResNet-34 -> ResNet-18 integration (the
  feature block on ``layer4``, 512 -> 512 channels with a 1024-channel autoencoder at 7x7, and the logits block on
  ``fc``), next to the spec's numbers (7.64 M parameters and about 1.11 G multiply-adds per image for the feature
  block).
* Training-step time and activation memory of a ResNet-18 student distilled from a ResNet-34 with DiffKD (both
  blocks) against the same student with KD only, on the same batch. Memory is the size of the distinct non-parameter
  tensors autograd saves for the backward pass; time is the median of timed steps.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch

from tenfold.bench import register_bench


def _saved_tensor_bytes(fn, params: list[torch.Tensor]) -> int:
    """Bytes of the distinct non-parameter storages autograd saves for backward while ``fn`` runs.

    A proxy of training activation memory on the CPU: each storage counts once however often it is saved, and
    the parameters (which exist anyway) are left out.
    """
    skip = {p.untyped_storage().data_ptr() for p in params}
    storages: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in skip:
            storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(storages.values())


def _step_cost(task, images, labels, runs: int) -> tuple[float, float]:
    params = [p for p in task.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=1e-3)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss, _, _ = task.compute_loss(images, labels)
        loss.backward()
        optimizer.step()

    step()  # warm-up
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    optimizer.zero_grad(set_to_none=True)
    memory = _saved_tensor_bytes(lambda: task.compute_loss(images, labels), list(task.parameters()))
    return statistics.median(times), memory / 2**20


@register_bench("diffkd", "DiffKD over KD: extra params/MACs (R34->R18 blocks) and step time/memory ratios")
def bench_diffkd(quick: bool) -> list[dict[str, Any]]:
    """Measure the DiffKD blocks and a KD-vs-DiffKD training step (ResNet-34 -> ResNet-18, 224x224)."""
    import tenfold.models  # noqa: F401
    from tenfold.distill import DiffKDLoss, DistillationTask, DistillTerm, KDLoss
    from tenfold.utils.flops import count_flops, count_parameters

    rows: list[dict[str, Any]] = []
    feature = DiffKDLoss(512, 512, kind="feature", use_ae=True, ae_channels=1024).eval()
    logits = DiffKDLoss(1000, 1000, kind="logits", tau=1.0).eval()
    with torch.random.fork_rng():
        feature_macs = count_flops(feature, (torch.randn(1, 512, 7, 7), torch.randn(1, 512, 7, 7))).macs
        logits_macs = count_flops(logits, (torch.randn(1, 1000), torch.randn(1, 1000))).macs
    rows.append({"what": "DiffKD feature block (512->512, AE 1024, 7x7)", "params (M)": count_parameters(feature) / 1e6,
                 "MACs / image (G)": feature_macs / 1e9, "spec": "7.64 M, ~1.11 G"})  # fmt: skip
    rows.append({"what": "DiffKD logits block (1000 classes)", "params (M)": count_parameters(logits) / 1e6,
                 "MACs / image (G)": logits_macs / 1e9, "spec": "23.32 M"})  # fmt: skip

    batch, size, runs = (4, 224, 2) if quick else (16, 224, 5)
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(batch, 3, size, size, generator=generator)
    labels = torch.randint(0, 1000, (batch,), generator=generator)
    common = {"student": "resnet18", "teacher": "resnet34", "num_classes": 1000, "allow_random_teacher": True,
              "input_size": (3, 64, 64)}  # fmt: skip
    kd = DistillationTask(**common, terms=[DistillTerm(KDLoss(tau=4.0))])
    diffkd = DistillationTask(
        **common,
        terms=[
            DistillTerm(DiffKDLoss(512, 512, kind="feature", use_ae=True, ae_channels=1024), student="layer4",
                        teacher="layer4", name="diffkd_feature"),
            DistillTerm(DiffKDLoss(1000, 1000, kind="logits"), name="diffkd_logits"),
        ],
    )  # fmt: skip
    base_time, base_mem = _step_cost(kd.train(), images, labels, runs)
    time_s, mem = _step_cost(diffkd.train(), images, labels, runs)
    rows.append({"what": f"train step, KD (R34->R18, batch {batch}, {size}px, cpu)", "step (s)": base_time,
                 "saved activations (MiB)": base_mem, "time ratio": 1.0, "memory ratio": 1.0})  # fmt: skip
    rows.append({"what": "train step, DiffKD feature + logits", "step (s)": time_s, "saved activations (MiB)": mem,
                 "time ratio": time_s / base_time, "memory ratio": mem / base_mem})  # fmt: skip
    return rows
