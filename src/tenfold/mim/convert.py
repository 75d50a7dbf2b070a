"""GreenMIM weights: official checkpoints -> our modules, and our encoder -> timm's ``SwinTransformer``.

All checkpoint knowledge of the family lives here (:func:`checkpoint_filter_fn`). The official files are MAE's
``misc.save_model`` dicts ``{'model': state_dict, 'optimizer', 'epoch', 'scaler', 'args'}`` whose keys are ours
(``encoder.*`` in Microsoft Swin layout plus the decoder) with the ``relative_position_index`` buffers added.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from tenfold.mim.encoder import GreenSwin
from tenfold.mim.greenmim import GreenMIM
from tenfold.utils.checkpoint import load_checkpoint, load_state_dict_strict

__all__ = [
    "check_window_grids",
    "checkpoint_filter_fn",
    "encoder_state_dict",
    "load_official",
    "swap_merge_channel_order",
    "timm_swin_kwargs",
    "to_timm_state_dict",
    "to_timm_swin",
]

#: Buffers the official/Microsoft checkpoints carry that are recomputed here (dropped on load, as the official
#: ``util/extract_backbone.py`` does).
RECOMPUTED = ("relative_position_index", "relative_coords_table", "attn_mask")


def _unwrap(state: Mapping[str, Any]) -> dict[str, Any]:
    for key in ("model", "state_dict"):
        if key in state and isinstance(state[key], Mapping):
            state = state[key]
    return dict(state)


def checkpoint_filter_fn(state_dict: Mapping[str, Any], model: nn.Module | None = None) -> dict[str, Tensor]:
    """Official GreenMIM checkpoint -> keys of ``model`` (a :class:`GreenMIM`, or a :class:`GreenSwin` encoder).

    Unwraps ``model``/``state_dict`` nesting and drops the recomputed buffers. For an encoder, a pre-training
    checkpoint keeps only its ``encoder.*`` keys, without the prefix (what the official ``extract_backbone`` does).

    Args:
        state_dict: the loaded file (any nesting).
        model: the target; None keeps all keys.

    Returns:
        The filtered state dict.
    """
    state = {k: v for k, v in _unwrap(state_dict).items() if not any(n in k for n in RECOMPUTED)}
    if isinstance(model, GreenSwin) and any(k.startswith("encoder.") for k in state):
        state = {k[len("encoder.") :]: v for k, v in state.items() if k.startswith("encoder.")}
    return state


def swap_merge_channel_order(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Convert patch-merging weights trained with the row-first channel order to Swin's order (or back).

    Before commit b981012 the official merge concatenated the 2x2 cell as [(0,0), (0,1), (1,0), (1,1)]; since then
    (and in Swin) it is [(0,0), (1,0), (0,1), (1,1)]. The released GreenMIM checkpoints predate the change, so to
    reproduce their pre-trained function in a Swin-order model, the channel blocks 1 and 2 (C wide each) of every
    ``downsample.norm.{weight,bias}`` and of the input columns of ``downsample.reduction.weight`` are swapped.
    The swap is its own inverse. The official fine-tuning did not apply it (spec pitfall 5).

    Args:
        state_dict: any state dict with ``...downsample.norm.*`` / ``...downsample.reduction.weight`` keys.

    Returns:
        A new dict; other tensors are shared, not copied.
    """
    out = dict(state_dict)
    for key, value in state_dict.items():
        if not re.search(r"downsample\.(norm\.(weight|bias)|reduction\.weight)$", key):
            continue
        c = value.shape[-1] // 4
        perm = torch.cat(
            [torch.arange(0, c), torch.arange(2 * c, 3 * c), torch.arange(c, 2 * c), torch.arange(3 * c, 4 * c)]
        )
        out[key] = value.index_select(value.dim() - 1, perm.to(value.device))
    return out


def load_official(
    source: str | Path | Mapping[str, Any], model: nn.Module, released_channel_order: bool = False
) -> nn.Module:
    """Load an official GreenMIM checkpoint (file or dict) into our :class:`GreenMIM` or :class:`GreenSwin`, strictly.

    Args:
        source: path of a ``.pth`` (read with ``weights_only=True``) or an already loaded dict.
        model: the target module (its configuration must match the checkpoint's).
        released_channel_order: the file was trained with the pre-b981012 row-first merge order (true of the
            released Swin-B/w7, Swin-B/w14 and Swin-L/w14 files): apply :func:`swap_merge_channel_order`.

    Returns:
        ``model``, loaded.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: keys or shapes do not fit.
    """
    origin = str(source) if isinstance(source, (str, Path)) else "(in memory)"
    if isinstance(source, (str, Path)):
        source = load_checkpoint(source)  # weights_only; clear errors for missing, corrupt or unsafe files
    state = checkpoint_filter_fn(source, model)
    if released_channel_order:
        state = swap_merge_channel_order(state)
    load_state_dict_strict(model, dict(state), source=origin)
    return model


def encoder_state_dict(source: nn.Module | Mapping[str, Any]) -> dict[str, Tensor]:
    """The Microsoft-layout Swin backbone of a GreenMIM model, checkpoint or encoder (``encoder.`` stripped).

    The ``relative_position_index`` buffers are not included (our modules do not save them; Swin/SimMIM/timm
    loaders recompute them), so load it into a Microsoft Swin with ``strict=False`` or through SimMIM's loader.
    """
    if isinstance(source, GreenMIM):
        source = source.encoder
    if isinstance(source, nn.Module):
        return {k: v.detach().clone() for k, v in source.state_dict().items()}
    state = checkpoint_filter_fn(source)
    if any(k.startswith("encoder.") for k in state):
        state = {k[len("encoder.") :]: v for k, v in state.items() if k.startswith("encoder.")}
    return state


def timm_swin_kwargs(encoder: GreenSwin, norm_eps: float | None = None) -> dict[str, Any]:
    """Arguments of timm's ``SwinTransformer`` with the architecture of ``encoder``.

    Args:
        encoder: our encoder.
        norm_eps: LayerNorm epsilon of the timm model; None keeps the encoder's (1e-6, exact equality). The
            official SimMIM fine-tuning used PyTorch's default 1e-5 (spec pitfall 10).
    """
    from functools import partial

    eps = encoder.norm.eps if norm_eps is None else norm_eps
    return {
        "img_size": encoder.img_size,
        "patch_size": encoder.patch_size,
        "embed_dim": encoder.embed_dim,
        "depths": encoder.depths,
        "num_heads": encoder.num_heads,
        "window_size": encoder.window_size,
        "norm_layer": partial(nn.LayerNorm, eps=eps),
    }


def to_timm_state_dict(encoder_state: Mapping[str, Tensor], timm_model: nn.Module) -> dict[str, Tensor]:
    """Our (Microsoft-layout) encoder weights -> timm's layout, through timm's own ``checkpoint_filter_fn``.

    timm moves ``layers.i.downsample`` (end of stage i) to ``layers.{i+1}.downsample`` (start of stage i+1); no
    tensor changes.
    """
    from timm.models.swin_transformer import checkpoint_filter_fn as timm_filter

    return timm_filter(dict(encoder_state), timm_model)


def check_window_grids(encoder: GreenSwin) -> None:
    """Raise ValueError unless every stage grid of ``encoder`` is a multiple of its window or at most the window.

    Those are the sizes at which our encoder with no mask and timm's ``SwinTransformer`` compute the same function
    (see :func:`to_timm_swin`).
    """
    ws = encoder.window_size
    for i, layer in enumerate(encoder.layers):
        side = layer.resolution[0]
        if side > ws and side % ws:
            raise ValueError(
                f"stage {i} grid {side}x{side} (img_size {encoder.img_size} / patch {encoder.patch_size} / 2^{i}) is "
                f"not a multiple of window {ws}: timm's Swin pads the border windows (the padding takes part in "
                f"attention) while GreenSwin uses smaller border windows, so timm's model would compute a different "
                f"function; choose an img_size whose stage grids are multiples of {ws} or no larger than it (e.g. a "
                f"multiple of {encoder.mask_unit * ws} px)"
            )


def to_timm_swin(source: GreenSwin | GreenMIM, num_classes: int = 0, norm_eps: float | None = None, **kwargs: Any):
    """A timm ``SwinTransformer`` with the weights of our encoder (for fine-tuning or dense inference).

    Args:
        source: our encoder or pre-training model.
        num_classes: classifier outputs (0: no head); a new head keeps timm's initialisation.
        norm_eps: see :func:`timm_swin_kwargs`.
        **kwargs: further timm arguments (``drop_path_rate``...).

    Returns:
        ``timm.models.swin_transformer.SwinTransformer``, backbone loaded strictly. With all units visible it computes
        what ``encoder(x)`` computes (tested to 1e-5).

    Raises:
        ValueError: a stage grid is larger than the window but not a multiple of it (e.g. 256 px with window 7:
            64x64 tokens at stage 0). timm pads such a map to whole windows and the zero padding takes part in the
            attention of the border windows, whereas GreenSwin (like the official code) uses smaller border
            windows, so the same weights would compute a different function.
    """
    from timm.models.swin_transformer import SwinTransformer

    encoder = source.encoder if isinstance(source, GreenMIM) else source
    check_window_grids(encoder)
    model = SwinTransformer(num_classes=num_classes, **{**timm_swin_kwargs(encoder, norm_eps), **kwargs})
    state = to_timm_state_dict(encoder_state_dict(encoder), model)
    head = {k: v for k, v in model.state_dict().items() if k.startswith("head.")}
    own = {k for k in model.state_dict() if "relative_position_index" not in k and "attn_mask" not in k}
    missing = sorted(own - set(state) - set(head))
    unexpected = sorted(set(state) - own)
    if missing or unexpected:
        raise ValueError(f"encoder weights do not fit timm's Swin: missing {missing[:8]}, unexpected {unexpected[:8]}")
    model.load_state_dict({**state, **head}, strict=False)
    return model


def infer_encoder_config(encoder_state: Mapping[str, Tensor], img_size: int = 224) -> dict[str, Any]:
    """Architecture of a Microsoft-layout Swin state dict: embed_dim, depths, num_heads, window size, patch size.

    The window is read from the first stage's bias table ((2 ws - 1)^2 rows); ``img_size`` cannot be read from
    the weights and is taken as given.
    """
    proj = encoder_state.get("patch_embed.proj.weight")
    if proj is None:
        raise ValueError("not a Swin encoder state dict: 'patch_embed.proj.weight' is missing")
    depths, heads = [], []
    i = 0
    while any(k.startswith(f"layers.{i}.blocks.") for k in encoder_state):
        blocks = {int(m.group(1)) for k in encoder_state if (m := re.match(rf"layers\.{i}\.blocks\.(\d+)\.", k))}
        depths.append(max(blocks) + 1)
        heads.append(encoder_state[f"layers.{i}.blocks.0.attn.relative_position_bias_table"].shape[1])
        i += 1
    table = encoder_state["layers.0.blocks.0.attn.relative_position_bias_table"].shape[0]
    window = (round(table**0.5) + 1) // 2
    return {
        "img_size": img_size,
        "patch_size": proj.shape[-1],
        "embed_dim": proj.shape[0],
        "depths": tuple(depths),
        "num_heads": tuple(heads),
        "window_size": window,
    }


def convert_checkpoint(
    source: str | Path,
    out: str | Path,
    fmt: str = "timm",
    released_channel_order: bool = False,
    num_classes: int = 0,
    img_size: int = 224,
    norm_eps: float = 1e-5,
) -> Path:
    """Convert an official (or tenfold) GreenMIM pre-training checkpoint into a fine-tuning backbone file.

    Args:
        source: the pre-training file (MAE ``{'model': ...}`` dict, a plain state dict, or a tenfold Lightning
            checkpoint of :class:`~tenfold.mim.task.GreenMIMTask`).
        out: file to write (``.pth``/``.pt``; must not exist). Written atomically.
        fmt: ``timm`` (timm ``SwinTransformer`` keys, for ``ClassificationTask(model='swin_base_patch4_window7_224',
            weights=out)``) or ``swin`` (Microsoft/SimMIM layout, a plain state dict as the official
            ``util/extract_backbone.py`` writes). Neither holds the ``relative_position_index`` buffers (nor
            ``attn_mask``): our modules do not save them, and the Swin/SimMIM and timm loaders rebuild them (SimMIM's
            ``remap_pretrained_keys_swin`` deletes them from any file and loads with ``strict=False``).
        released_channel_order: apply :func:`swap_merge_channel_order` (released files; see there).
        num_classes: timm only: add a freshly initialised ``head.fc`` with this many classes, so that the file loads
            strictly into a classifier (timm's default initialisation, seed 0); 0 writes the backbone alone.
        img_size: input size of the timm model (not stored in the weights).
        norm_eps: LayerNorm epsilon of the timm model used for the conversion (the weights do not depend on it).

    Returns:
        ``out``.

    Raises:
        FileNotFoundError: ``source`` does not exist.
        FileExistsError: ``out`` exists.
        ValueError: an unknown format or weights that are not a GreenMIM/Swin encoder.
    """
    from tenfold.utils.checkpoint import load_checkpoint, save_checkpoint

    if fmt not in ("timm", "swin"):
        raise ValueError(f"format must be 'timm' or 'swin', got {fmt!r}")
    out = Path(out)
    if out.exists():
        raise FileExistsError(f"{str(out)!r} exists; choose a new file name")
    raw = load_checkpoint(source)
    if isinstance(raw, Mapping) and "pytorch-lightning_version" in raw:
        raw = {k[len("model.") :]: v for k, v in raw["state_dict"].items() if k.startswith("model.")}
    state = encoder_state_dict(raw)
    if released_channel_order:
        state = swap_merge_channel_order(state)
    if fmt == "swin":
        save_checkpoint(state, out)
        return out
    from functools import partial

    from timm.models.swin_transformer import SwinTransformer

    cfg = infer_encoder_config(state, img_size)
    torch.manual_seed(0)
    model = SwinTransformer(num_classes=num_classes, norm_layer=partial(nn.LayerNorm, eps=norm_eps), **cfg)
    converted = to_timm_state_dict(state, model)
    if num_classes:
        converted.update({k: v for k, v in model.state_dict().items() if k.startswith("head.")})
    _load_strict_subset(model, converted)
    save_checkpoint(converted, out)
    return out


def _load_strict_subset(model: nn.Module, state: Mapping[str, Tensor]) -> None:
    """Strict load, except for timm's non-persistent buffers and an absent head."""
    own = {k: v for k, v in model.state_dict().items() if not any(n in k for n in RECOMPUTED)}
    missing = sorted(k for k in set(own) - set(state) if not k.startswith("head."))
    unexpected = sorted(set(state) - set(own))
    wrong = [k for k, v in state.items() if k in own and v.shape != own[k].shape]
    if missing or unexpected or wrong:
        raise ValueError(
            f"weights do not fit timm's Swin: missing {missing[:8]}, unexpected {unexpected[:8]}, "
            f"wrong shapes {wrong[:8]}"
        )
    model.load_state_dict(state, strict=False)
