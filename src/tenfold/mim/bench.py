"""``tenfold bench greenmim``: encoder forward+backward, GreenMIM (visible units only) against a SimMIM-style Swin.

The baseline is timm's ``SwinTransformer`` of the same size processing all patches, masked ones replaced by a
learned mask token (SimMIM). GreenMIM runs :class:`~tenfold.mim.encoder.GreenSwin` on the 25 % visible units
(mask ratio 0.75, one mask per batch, 12 of 49 units at 224 px). With ``--official PATH`` (a checkout of
LayneH/GreenMIM that the user supplies), the official encoder runs on the same weights, images and mask, side by
side with ours.

* Time: one subprocess on one thread builds every model and times their forward+backward passes in alternating
  rounds (one pass of each model per round, after a warm-up pass), so a change of machine load hits all alike;
  the median per model is reported. (:func:`tenfold.utils.throughput.compare_throughput` times inference passes
  only, so the rounds are run here.)
* Activation memory: the bytes of the tensors autograd saves for backward (parameters excluded, each storage
  counted once), read with ``torch.autograd.graph.saved_tensors_hooks`` in the timing process: the memory the
  forward pass holds until backward, exact and independent of the allocator.
* Peak memory: the rise of a fresh process's peak resident set size (VmHWM) during its first forward+backward,
  over the resident size with the model and inputs in place (one subprocess per model); it covers activations,
  weight gradients and workspace, and is also given without the weight gradients (the same size for all).

Paper (GPU): about 2.7x faster and about 70 % less memory than SimMIM for Swin-B.
"""

from __future__ import annotations

import json
import subprocess
import sys
import types
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tenfold.bench import import_official, register_bench
from tenfold.utils.throughput import alternate_times, saved_tensor_bytes

#: Architectures compared (all at 224 px, window 7, 4-px patches).
SIZES: dict[str, dict[str, Any]] = {
    "swin_base": {"embed_dim": 128, "depths": (2, 2, 18, 2), "num_heads": (4, 8, 16, 32)},
    "swin_tiny": {"embed_dim": 96, "depths": (2, 2, 6, 2), "num_heads": (3, 6, 12, 24)},
}
#: Sizes of a full and of a quick run.
FULL_SIZES, QUICK_SIZES = ["swin_base", "swin_tiny"], ["swin_tiny"]
PAPER = {"speed ratio": 2.7, "memory saving (%)": 70.0}
OFFICIAL_REPO = "LayneH/GreenMIM"
#: Files of the official checkout the comparison needs (``modeling/__init__.py`` is not run: it imports the Twins
#: model, which needs spconv).
OFFICIAL_FILES = (
    "modeling/green_swin_models.py",
    "modeling/group_window_attention.py",
    "modeling/base_green_models.py",
    "util/pos_embed.py",
)
METHODS = ("simmim", "greenmim", "official")


def import_official_swin(root: str | Path | None) -> types.ModuleType:
    """Import the official ``modeling/green_swin_models.py`` from a GreenMIM checkout at ``root``.

    The package ``modeling`` is registered without running its ``__init__`` (which imports the Twins model and
    spconv); the Swin files need only torch and timm. Import it in a benchmark process (its modules stay in
    ``sys.modules``).

    Args:
        root: the checkout (None: none given).

    Raises:
        OfficialCodeMissing: no folder, a file of :data:`OFFICIAL_FILES` missing, or the import failing.
    """
    if root is not None and (Path(root) / "modeling").is_dir():
        folder = str((Path(root) / "modeling").resolve())
        loaded = sys.modules.get("modeling")
        if loaded is None or list(getattr(loaded, "__path__", [])) != [folder]:
            for name in [m for m in sys.modules if m == "modeling" or m.startswith("modeling.")]:
                del sys.modules[name]
            package = types.ModuleType("modeling")
            package.__path__ = [folder]
            sys.modules["modeling"] = package
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # the official code imports timm.models.layers
        return import_official(root, "modeling.green_swin_models", repo=OFFICIAL_REPO, expect=OFFICIAL_FILES)


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise ValueError(f"{field} not found in /proc/self/status")


def _inputs(batch: int) -> tuple[Any, Any]:
    import torch

    from tenfold.mim.masking import random_unit_mask

    images = torch.randn(batch, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    return images, random_unit_mask(batch, 49, 0.75, generator=torch.Generator().manual_seed(0))


def _build(method: str, size: str, batch: int, official: str | None = None) -> tuple[Any, Callable[[], Any]]:
    """(model, loss closure) of one method; GreenMIM's weights are seeded, the official encoder gets the same."""
    from functools import partial

    import torch
    from timm.models.swin_transformer import SwinTransformer

    from tenfold.mim.encoder import GreenSwin, GreenSwinConfig

    arch = SIZES[size]
    images, um = _inputs(batch)
    if method == "simmim":
        torch.manual_seed(0)
        model = SwinTransformer(img_size=224, window_size=7, num_classes=0, **arch)
        model.mask_token = torch.nn.Parameter(torch.zeros(1, 1, 1, arch["embed_dim"]))
        w = um.mask.view(batch, 7, 7).repeat_interleave(8, 1).repeat_interleave(8, 2).unsqueeze(-1)

        def dense_step() -> torch.Tensor:
            x = model.patch_embed(images)  # (B, 56, 56, C)
            x = x * (1 - w) + model.mask_token * w
            return model.norm(model.layers(x)).pow(2).mean()

        return model, dense_step
    torch.manual_seed(0)
    ours = GreenSwin(GreenSwinConfig(img_size=224, window_size=7, **arch))
    if method == "greenmim":
        return ours, lambda: ours(images, um.mask).pow(2).mean()
    if method != "official":
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    mod = import_official_swin(official)
    model = mod.SwinTransformer(
        img_size=224,
        window_size=7,
        num_classes=0,
        drop_path_rate=0.0,
        norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
        embed_dim=arch["embed_dim"],
        depths=list(arch["depths"]),
        num_heads=list(arch["num_heads"]),
    )
    missing, unexpected = model.load_state_dict(ours.state_dict(), strict=False)
    if unexpected or any("relative_position_index" not in k for k in missing):
        raise RuntimeError(f"the official encoder's keys differ from ours: missing {missing}, unexpected {unexpected}")
    mask = um.mask.bool()
    return model, lambda: model(images, mask).pow(2).mean()


def saved_activation_mib(step: Callable[[], Any], model: Any) -> float:
    """MiB of the tensors autograd keeps for the backward of ``step()`` (each storage once, parameters excluded).

    Runs ``step().backward()`` once and clears the gradients afterwards.
    """
    nbytes, loss = saved_tensor_bytes(step, model.parameters())
    loss.backward()
    model.zero_grad(set_to_none=True)
    return nbytes / 2**20


def _timing_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """In this process: every method of ``spec`` built, activation memory, alternating timing, output agreement."""
    import torch

    torch.set_num_threads(1)
    built = {m: _build(m, spec["size"], spec["batch"], spec.get("official")) for m in spec["methods"]}
    models = {m: b[0] for m, b in built.items()}
    steps = {m: b[1] for m, b in built.items()}
    out: dict[str, Any] = {"saved_mib": {m: saved_activation_mib(steps[m], models[m]) for m in steps}}
    out["seconds"] = alternate_times(
        {m: (lambda s=step: s().backward()) for m, step in steps.items()},
        spec["rounds"],
        after={m: (lambda mod=mod: mod.zero_grad(set_to_none=True)) for m, mod in models.items()},
    )
    if "official" in built:
        images, um = _inputs(spec["batch"])
        with torch.no_grad():
            ours = models["greenmim"](images, um.mask)
            theirs = models["official"](images, um.mask.bool())
        out["max_abs_diff"] = float((ours - theirs).abs().max())
    return out


def _memory_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """In this (fresh) process: peak resident rise of one first forward+backward, weight-gradient size, MACs."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    torch.set_num_threads(1)
    model, step = _build(spec["method"], spec["size"], spec["batch"], spec.get("official"))
    base = _status_kib("VmRSS")
    step().backward()
    peak = _status_kib("VmHWM")
    model.zero_grad(set_to_none=True)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        step()
    return {
        "peak_mib": (peak - base) / 1024,
        "grad_mib": sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad) / 2**20,
        "gmacs": counter.get_total_flops() / 2e9 / spec["batch"],
    }


WORKERS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {"timing": _timing_worker, "memory": _memory_worker}


def _subprocess(kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    """Run a worker in a fresh one-thread Python process (clean peak-memory readings, official code kept out)."""
    import os

    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    proc = subprocess.run(
        [sys.executable, "-m", "tenfold.mim.bench", kind, json.dumps(spec)],
        capture_output=True,
        text=True,
        check=False,
        env={"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", **env},
    )
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark worker {kind} {spec} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _in_process(kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    """Run a worker here (tests: tiny sizes; peak-memory rises are then the test process's, not meaningful)."""
    return WORKERS[kind](spec)


def _saving(green: float, dense: float) -> float:
    """Percent saved, ``100 (1 - green / dense)``; NaN when the baseline measured no rise (nothing to compare)."""
    return 100 * (1 - green / dense) if dense > 0 else float("nan")


def bench_rows(
    sizes: list[str],
    rounds: int,
    batch: int = 2,
    official: str | Path | None = None,
    run: Callable[[str, dict[str, Any]], dict[str, Any]] | None = None,
) -> list[dict[str, Any]] | dict[str, list[dict[str, Any]]]:
    """One row per size: the SimMIM-style dense encoder and GreenMIM measured side by side, with their ratios.

    Args:
        sizes: keys of :data:`SIZES`.
        rounds: alternating timed rounds (one forward+backward of each model per round; medians reported).
        batch: images per pass.
        official: a checkout of LayneH/GreenMIM: a second table compares the official encoder with ours.
        run: ``(kind, spec) -> result`` for the ``timing`` and ``memory`` workers; default one subprocess each,
            :func:`_in_process` runs them here (tests).

    Returns:
        The rows, or with ``official`` the titled tables ``{"GreenMIM vs SimMIM-style dense Swin": ...,
        "tenfold vs official GreenMIM (LayneH/GreenMIM)": ...}``.

    Raises:
        OfficialCodeMissing: ``official`` is not an importable checkout (checked before anything is measured).
    """
    run = run or _subprocess
    methods = ["simmim", "greenmim"]
    if official is not None:
        import_official_swin(official)  # a wrong folder fails here, naming what is missing
        official = str(Path(official).resolve())
        methods.append("official")
    rows, official_rows = [], []
    for size in sizes:
        timing = run(
            "timing", {"size": size, "batch": batch, "rounds": rounds, "methods": methods, "official": official}
        )
        mem = {m: run("memory", {"size": size, "method": m, "batch": batch, "official": official}) for m in methods}
        sec, saved = timing["seconds"], timing["saved_mib"]
        dense, green = mem["simmim"], mem["greenmim"]
        rows.append(
            {
                f"encoder (224 px, batch {batch}, 1 CPU thread)": size,
                "SimMIM-style s/iter": sec["simmim"],
                "GreenMIM s/iter": sec["greenmim"],
                "speed ratio (SimMIM / GreenMIM)": sec["simmim"] / sec["greenmim"],
                "SimMIM activations MiB": saved["simmim"],
                "GreenMIM activations MiB": saved["greenmim"],
                "activation saving (%)": _saving(saved["greenmim"], saved["simmim"]),
                "SimMIM peak MiB": dense["peak_mib"],
                "GreenMIM peak MiB": green["peak_mib"],
                "peak saving (%)": _saving(green["peak_mib"], dense["peak_mib"]),
                "peak saving without weight grads (%)": _saving(
                    green["peak_mib"] - green["grad_mib"], dense["peak_mib"] - dense["grad_mib"]
                ),
                "GMACs/img SimMIM": dense["gmacs"],
                "GMACs/img GreenMIM": green["gmacs"],
                "FLOP ratio (SimMIM / GreenMIM)": dense["gmacs"] / green["gmacs"],
                "paper speed ratio (GPU, Swin-B)": PAPER["speed ratio"],
                "paper memory saving (%)": PAPER["memory saving (%)"],
            }
        )
        if official is not None:
            theirs = mem["official"]
            official_rows.append(
                {
                    f"encoder (224 px, batch {batch}, 1 CPU thread)": size,
                    "official s/iter": sec["official"],
                    "tenfold s/iter": sec["greenmim"],
                    "speed-up (official / tenfold)": sec["official"] / sec["greenmim"],
                    "official speed ratio vs SimMIM-style": sec["simmim"] / sec["official"],
                    "tenfold speed ratio vs SimMIM-style": sec["simmim"] / sec["greenmim"],
                    "official activations MiB": saved["official"],
                    "tenfold activations MiB": saved["greenmim"],
                    "official activation saving vs SimMIM (%)": _saving(saved["official"], saved["simmim"]),
                    "tenfold activation saving vs SimMIM (%)": _saving(saved["greenmim"], saved["simmim"]),
                    "official peak MiB": theirs["peak_mib"],
                    "tenfold peak MiB": green["peak_mib"],
                    "max abs diff of outputs (official vs tenfold)": timing["max_abs_diff"],
                }
            )
    if official is None:
        return rows
    return {
        "GreenMIM vs SimMIM-style dense Swin": rows,
        f"tenfold vs official GreenMIM ({OFFICIAL_REPO})": official_rows,
    }


@register_bench("greenmim", "GreenMIM encoder fwd+bwd on visible units vs SimMIM-style dense Swin (time, memory)")
def bench_greenmim(quick: bool, official: Path | None = None) -> Any:
    """Swin-B and Swin-T at 224 px (quick: Swin-T only, fewer rounds); ratios are dense over GreenMIM.

    Args:
        quick: Swin-T only, 2 rounds.
        official: a checkout of LayneH/GreenMIM to time side by side (same weights, images and mask).

    Raises:
        OfficialCodeMissing: ``official`` cannot be imported (``tenfold bench`` then skips that comparison).
    """
    return bench_rows(QUICK_SIZES if quick else FULL_SIZES, rounds=2 if quick else 5, official=official)


if __name__ == "__main__":
    print(json.dumps(WORKERS[sys.argv[1]](json.loads(sys.argv[2]))))
