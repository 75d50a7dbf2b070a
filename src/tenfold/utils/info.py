"""What ``tenfold info`` prints: the software, the threads and the devices of this machine."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import sys

__all__ = ["collect_info"]

_PACKAGES = (
    "torch", "torchvision", "lightning", "torchmetrics", "timm", "jsonargparse", "numpy", "scikit-learn",
    "safetensors", "matplotlib", "tensorboard", "rich",
    # optional, used by later families
    "diffusers", "openai", "sentence-transformers", "open_clip_torch", "pesq", "pystoi", "soundfile",
)  # fmt: skip


def collect_info() -> dict[str, str]:
    """Versions of Python and of each relevant package (or ``not installed``), threads and devices."""
    import torch

    info = {
        "tenfold": importlib.metadata.version("tenfold"),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu cores (os)": str(os.cpu_count()),
        "torch threads": str(torch.get_num_threads()),
        "torch interop threads": str(torch.get_num_interop_threads()),
        "cuda available": str(torch.cuda.is_available()),
    }
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            info[f"cuda:{i}"] = torch.cuda.get_device_name(i)
    info["mps available"] = str(torch.backends.mps.is_available())
    info["distributed backends"] = ", ".join(
        b
        for b, ok in (("gloo", torch.distributed.is_gloo_available()), ("nccl", torch.distributed.is_nccl_available()))
        if ok
    )
    for package in _PACKAGES:
        try:
            info[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            info[package] = "not installed"
    return info
