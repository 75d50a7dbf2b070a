"""``tenfold bench lightvit``: LightViT's size, multiply-adds (both conventions) and CPU throughput vs PVTv2-B0/DeiT-T.

All rows come from one process: the throughput ratios compare models measured minutes apart on the same machine.
"""

from __future__ import annotations

import copy
import os
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from tenfold.bench import import_official, register_bench

__all__ = [
    "LIGHTVIT_PAPER",
    "bench_lightvit",
    "import_official_lightvit",
    "lightvit_flops_rows",
    "lightvit_official_rows",
    "lightvit_port_rows",
    "lightvit_speed_rows",
]

#: The paper's table (Table 2 of 2207.05557) and README: params (M), "FLOPs" (GMACs), ImageNet top-1.
LIGHTVIT_PAPER = {
    "lightvit_tiny": (9.4, 0.7, 78.7),
    "lightvit_small": (19.2, 1.7, 80.9),
    "lightvit_base": (35.2, 3.9, 82.1),
    "pvt_v2_b0": (3.4, 0.6, 70.5),
    "deit_tiny_patch16_224": (5.7, 1.3, 72.2),
}
BASELINES = ("pvt_v2_b0", "deit_tiny_patch16_224")


def _all_threads() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _rounds(quick: bool, batch: int) -> dict[str, int]:
    """Alternation rounds x passes per round: about 30 timed passes at batch 1 and 12 at batch 8 (a third quick)."""
    per_round = 2 if batch > 1 else 5
    return {"rounds": 2 if quick else 6, "runs_per_round": per_round, "warmup": 2}


def _discarded_global_kv_macs(model: torch.nn.Module) -> int:
    """MACs of the official code's keys/values of the global tokens from ``qkv``, which it computes and discards."""
    from tenfold.models.lightvit import Block

    return sum(
        m.attn.num_tokens * m.attn.qkv.in_features * 2 * m.attn.qkv.in_features
        for m in model.modules()
        if isinstance(m, Block)
    )


def lightvit_flops_rows() -> list[dict[str, Any]]:
    """Params and GMACs at 224x224 of LightViT-T/S/B and the two baselines, next to the paper's table."""
    import timm

    import tenfold.models  # noqa: F401
    from tenfold.models.lightvit import official_flops
    from tenfold.utils.flops import count_flops, count_parameters

    rows = []
    x = torch.zeros(1, 3, 224, 224)
    for name, (p_params, p_flops, p_top1) in LIGHTVIT_PAPER.items():
        model = timm.create_model(name)
        true = count_flops(model, x).macs
        is_lightvit = name.startswith("lightvit")
        true_official = true + _discarded_global_kv_macs(model) if is_lightvit else true
        rows.append(
            {
                "model": name,
                "params": count_parameters(model),
                "GMACs official count": official_flops(model) / 1e9 if is_lightvit else float("nan"),
                "GMACs true (ours)": true / 1e9,
                "GMACs true (official code)": true_official / 1e9,
                "paper params (M)": p_params,
                "paper GMACs": p_flops,
                "paper top-1": p_top1,
            }
        )
    return rows


def _compiled(models: dict[str, torch.nn.Module]) -> dict[str, torch.nn.Module]:
    """Fresh compiled wrappers (compiled lazily at their first pass, i.e. under the measured thread count)."""
    from tenfold.utils.compile import compile_for_inference

    # inductor's CPU kernels bake in the thread count of their compilation: drop the graphs compiled for another
    torch._dynamo.reset()
    return {f"{name} (compiled)": compile_for_inference(model) for name, model in models.items()}


def lightvit_speed_rows(quick: bool = False, compile: bool = False) -> list[dict[str, Any]]:
    """Inference img/s of LightViT-T, PVTv2-B0 and DeiT-T at 224, batch 1 and 8, one thread and all threads.

    Each row gives one setting and mode (``eager``, or ``compiled`` with :func:`compile_for_inference`); ``ratio vs
    X`` is LightViT-T's throughput divided by X's in the same setting and mode. With ``compile`` the eager and the
    compiled models are timed in the same alternation, and the compiled rows add LightViT-T's speed-up over eager.
    """
    import timm

    import tenfold.models  # noqa: F401
    from tenfold.utils.throughput import compare_throughput

    names = ("lightvit_tiny", *BASELINES)
    models = {n: timm.create_model(n).eval() for n in names}
    modes = ("eager", "compiled") if compile else ("eager",)
    rows = []
    for threads in sorted({1, _all_threads()}):
        timed = {**models, **(_compiled(models) if compile else {})}
        for batch in (1, 8):
            speed = compare_throughput(timed, (3, 224, 224), batch_size=batch, threads=threads, **_rounds(quick, batch))
            for mode in modes:
                suffix = " (compiled)" if mode == "compiled" else ""
                row: dict[str, Any] = {"threads": threads, "batch": batch, "mode": mode}
                row.update({f"{n} img/s": speed[n + suffix].samples_per_s for n in names})
                lightvit = speed["lightvit_tiny" + suffix].samples_per_s
                for base in BASELINES:
                    row[f"ratio vs {base}"] = lightvit / speed[base + suffix].samples_per_s
                if compile:
                    row["lightvit_tiny vs eager"] = lightvit / speed["lightvit_tiny"].samples_per_s
                rows.append(row)
    return rows


def _port_attention_forward(self, x: torch.Tensor, H: int, W: int) -> torch.Tensor:
    """LightViT attention written the straightforward way, as the official code computes it.

    qkv on every token, q, k and v each partitioned into windows, explicit ``softmax(q k^T + bias) v`` products,
    the local output reversed.
    """
    B, N, C = x.shape
    NT, ws, h, d = self.num_tokens, self.window_size, self.num_heads, self.head_dim
    q, k, v = self.qkv(x).view(B, N, 3, h, d).permute(2, 0, 3, 1, 4).unbind(0)
    q_g, q_i, k_i, v_i = q[:, :, :NT], q[:, :, NT:], k[:, :, NT:], v[:, :, NT:]

    def windows(t: torch.Tensor) -> torch.Tensor:
        t = t.reshape(B, h, H // ws, ws, W // ws, ws, d).permute(0, 2, 4, 1, 3, 5, 6).contiguous()
        return t.view(-1, h, ws * ws, d)

    bias = self.relative_position_bias_table[self.relative_position_index].view(ws * ws, ws * ws, h)
    attn = (windows(q_i) * self.scale) @ windows(k_i).transpose(-2, -1) + bias.permute(2, 0, 1).unsqueeze(0)
    x_loc = (attn.softmax(-1) @ windows(v_i)).transpose(1, 2).reshape(-1, ws * ws, C)
    x_loc = x_loc.view(B, H // ws, W // ws, ws, ws, C).permute(0, 1, 3, 2, 4, 5).reshape(B, H * W, C)
    x_g = (((q_g * self.scale) @ k_i.transpose(-2, -1)).softmax(-1) @ v_i).transpose(1, 2).reshape(B, NT, C)
    k_g, v_g = self.kv_global(x_g).view(B, NT, 2, h, d).permute(2, 0, 3, 1, 4).unbind(0)
    x_b = (((q_i * self.scale) @ k_g.transpose(-2, -1)).softmax(-1) @ v_g).transpose(1, 2).reshape(B, H * W, C)
    return self.proj(torch.cat([x_g, x_loc + x_b], dim=1))


def lightvit_port_rows(quick: bool = False) -> list[dict[str, Any]]:
    """LightViT-T as implemented here vs the same weights run through a straightforward port of the attention.

    The port is the official code's way of computing the same function (see :func:`_port_attention_forward`); the
    two agree to float32 rounding, and the ratio shows what the vectorised windowing and fused attention buy.
    """
    import types

    import timm

    import tenfold.models  # noqa: F401
    from tenfold.models.lightvit import LightViTAttention
    from tenfold.utils.throughput import compare_throughput

    ours = timm.create_model("lightvit_tiny").eval()
    port = timm.create_model("lightvit_tiny").eval()
    port.load_state_dict(ours.state_dict())
    for m in port.modules():
        if isinstance(m, LightViTAttention):
            m.forward = types.MethodType(_port_attention_forward, m)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        max_diff = (ours(x) - port(x)).abs().max().item()
    rows = []
    for threads in sorted({1, _all_threads()}):
        for batch in (1, 8):
            speed = compare_throughput({"ours": ours, "port": port}, (3, 224, 224), batch_size=batch, threads=threads,
                                       **_rounds(quick, batch))  # fmt: skip
            r_ours, r_port = speed["ours"], speed["port"]
            rows.append(
                {
                    "threads": threads,
                    "batch": batch,
                    "tenfold img/s": r_ours.samples_per_s,
                    "straightforward port img/s": r_port.samples_per_s,
                    "speed-up": r_ours.samples_per_s / r_port.samples_per_s,
                    "max |logit diff|": max_diff,
                }
            )
    return rows


LIGHTVIT_REPO = "hunto/LightViT"
#: Where the official classification model lives: a recursive checkout of hunto/LightViT holds
#: hunto/image_classification_sota as its ``classification`` submodule; a checkout of the latter works too.
_OFFICIAL_DIRS = ("classification/lib/models", "lib/models")
# timm's registry tables: the official file registers ``lightvit_tiny/small/base`` under the names tenfold uses
_TIMM_REGISTRY_TABLES = (
    "_module_to_models",
    "_model_to_module",
    "_model_entrypoints",
    "_model_has_pretrained",
    "_model_default_cfgs",
    "_model_pretrained_cfgs",
    "_model_with_tags",
)


@contextmanager
def _timm_registry_kept() -> Iterator[None]:
    """Restore timm's model registry on exit, so importing the official file does not replace tenfold's models.

    The official ``lightvit.py`` decorates its entry points with timm's ``register_model``, which overwrites the
    registered ``lightvit_*`` names (with a warning); the official model is built from its module's functions.
    """
    from timm.models import _registry as registry

    saved = {name: copy.deepcopy(getattr(registry, name)) for name in _TIMM_REGISTRY_TABLES}
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Overwriting lightvit_", category=UserWarning)
            warnings.filterwarnings("ignore", category=FutureWarning)  # timm.models.layers / .registry moved
            yield
    finally:
        for name, table in saved.items():
            current = getattr(registry, name)
            current.clear()
            current.update(table)


def import_official_lightvit(path: str | os.PathLike) -> ModuleType:
    """Import the official LightViT classification module (``lib/models/lightvit.py``) from a checkout.

    ``path`` is a recursive checkout of hunto/LightViT (the model is in its ``classification`` submodule,
    hunto/image_classification_sota) or a checkout of hunto/image_classification_sota. The file is imported on
    its own (as the top-level module ``lightvit``; its only dependencies are torch and timm), not through its
    package, whose ``__init__`` imports every model of the framework. timm's registry is left as it was.

    Raises:
        OfficialCodeMissing: ``path`` is missing, holds neither layout, or the import fails.
    """
    root = Path(path).expanduser()
    for sub in _OFFICIAL_DIRS:
        if (root / sub / "lightvit.py").is_file():
            root, expect = root / sub, ["lightvit.py"]
            break
    else:  # raises, naming the folder and the file it expected
        expect = [f"{_OFFICIAL_DIRS[0]}/lightvit.py (git submodule update --init)"]
    sys.modules.pop("lightvit", None)  # a module of that name imported from another folder
    with _timm_registry_kept():
        return import_official(root, "lightvit", repo=LIGHTVIT_REPO, expect=expect)


def lightvit_official_rows(
    official: str | os.PathLike, quick: bool = False, compile: bool = False
) -> list[dict[str, Any]]:
    """LightViT-T here vs the official code on the same weights, and timm PVTv2-B0, in alternating rounds.

    The official model gets this implementation's (random, seeded) weights with ``strict=True``; the largest
    logit difference on two random images is reported in every row. Threads 1 and all usable, batch 1 and 8. Eager
    always; with ``compile`` the three models are also timed compiled (:func:`compile_for_inference`, with
    inductor's freezing, the official model too) in the same alternation, and each row adds the compiled
    throughputs and ``tenfold compiled / X`` ratios: over the official code as released (eager), over the official
    code compiled the same way, and over PVTv2-B0 compiled (the same mode).

    Raises:
        OfficialCodeMissing: the official code cannot be imported from ``official``.
    """
    import timm

    import tenfold.models  # noqa: F401
    from tenfold.utils.throughput import compare_throughput

    module = import_official_lightvit(official)
    torch.manual_seed(0)
    ours = timm.create_model("lightvit_tiny").eval()
    off = module.lightvit_tiny().eval()
    off.load_state_dict(ours.state_dict(), strict=True)
    models = {"tenfold": ours, "official": off, "pvt_v2_b0": timm.create_model("pvt_v2_b0").eval()}
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        max_diff = (ours(x) - off(x)).abs().max().item()
    rows = []
    for threads in sorted({1, _all_threads()}):
        timed = {**models, **(_compiled(models) if compile else {})}
        for batch in (1, 8):
            speed = compare_throughput(timed, (3, 224, 224), batch_size=batch, threads=threads,
                                       **_rounds(quick, batch))  # fmt: skip
            ips = {name: r.samples_per_s for name, r in speed.items()}
            row = {
                "threads": threads,
                "batch": batch,
                "tenfold img/s": ips["tenfold"],
                "official img/s": ips["official"],
                "pvt_v2_b0 img/s": ips["pvt_v2_b0"],
                "tenfold / official": ips["tenfold"] / ips["official"],
                "tenfold / pvt_v2_b0": ips["tenfold"] / ips["pvt_v2_b0"],
            }
            if compile:
                fast = ips["tenfold (compiled)"]
                row.update(
                    {
                        "tenfold compiled img/s": fast,
                        "official compiled img/s": ips["official (compiled)"],
                        "pvt_v2_b0 compiled img/s": ips["pvt_v2_b0 (compiled)"],
                        "tenfold compiled / official": fast / ips["official"],
                        "tenfold compiled / official compiled": fast / ips["official (compiled)"],
                        "tenfold compiled / pvt_v2_b0 compiled": fast / ips["pvt_v2_b0 (compiled)"],
                    }
                )
            row["max |logit diff|"] = max_diff
            rows.append(row)
    return rows


@register_bench("lightvit", "LightViT-T/S/B params, MACs (official and true counts), CPU img/s vs PVTv2-B0 / DeiT-T")
def bench_lightvit(quick: bool, compile: bool = False, official: Path | None = None) -> dict[str, list[dict[str, Any]]]:
    """Params and GMACs at 224, inference throughput and ratios, ours vs a straightforward port, and the official code.

    The first table has the paper's numbers beside ours; the second measures eager models, and also compiled ones
    with ``compile``; the third compares this implementation with a straightforward port of the official
    attention. With ``official`` (a checkout of hunto/LightViT, see :func:`import_official_lightvit`) a fourth
    table times the official model on the same weights (:func:`lightvit_official_rows`; with ``compile``, eager
    and compiled); it is imported first, so a wrong folder is reported before anything is timed.
    """
    tables: dict[str, list[dict[str, Any]]] = {}
    if official is not None:
        import_official_lightvit(official)  # fail fast: run_bench then runs the rest without it
    tables.update(
        {
            "Params and multiply-adds at 224x224": lightvit_flops_rows(),
            "CPU inference throughput at 224x224 (img/s); ratio = LightViT-T / baseline in the same mode": (
                lightvit_speed_rows(quick, compile)
            ),
            "LightViT-T: this implementation vs a straightforward port of the official attention": lightvit_port_rows(
                quick
            ),
        }
    )
    if official is not None:
        mode = "eager and compiled" if compile else "eager"
        title = f"LightViT-T: this implementation vs the official code (same weights) and PVTv2-B0, {mode}, img/s"
        tables[title] = lightvit_official_rows(official, quick, compile)
    return tables
