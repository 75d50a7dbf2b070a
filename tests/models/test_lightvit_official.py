"""LightViT equals the official code: stored official outputs (``tests/fixtures/lightvit``, see its README).

The official T/S/B models and the official dense backbone were run on "key-seeded" weights, a deterministic function
of each state_dict key and shape (:func:`key_seeded_state_dict`, reproduced here without the official code; two
scales, as each hides bugs the other shows), and on seeded inputs; the spec's small demo configuration was run on the
official random initialisation, whose state_dict is stored as an official-format (float32) checkpoint. The official
code ran in float64 (weights drawn in float32, then widened exactly; inputs likewise). Our models load these weights
with ``strict=True``, run in float64, and must give the same logits, intermediate features, train-mode outputs,
BatchNorm statistics and dense feature maps to 1e-10 of each tensor's scale (``parity.assert_matches_official``); one
float32 run is checked against the float64 recording with a depth-derived bound (``parity.assert_float32_close``).
"""

from __future__ import annotations

import json
import math
import zlib
from collections.abc import Mapping
from pathlib import Path

import pytest
import timm
import torch
from parity import assert_float32_close, assert_matches_official

import tenfold.models  # noqa: F401  (registers lightvit_* with timm)
from tenfold.models.lightvit import LightViT, LightViTBackbone, load_lightvit_checkpoint, official_flops

from conftest import shared_path

pytestmark = pytest.mark.usefixtures("one_thread")

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures" / "lightvit"
NAMES = ("lightvit_tiny", "lightvit_small", "lightvit_base")
PARAMS = {"lightvit_tiny": 9_377_698, "lightvit_small": 19_200_248, "lightvit_base": 35_195_653}
RULES = ("std002", "fanin")


def key_seeded_state_dict(template: Mapping[str, torch.Tensor], rule: str) -> dict[str, torch.Tensor]:
    """Deterministic weights for every entry of ``template`` (in order), from its key name and shape alone.

    Identical to the fixture generator. ``relative_position_index`` and ``num_batches_tracked`` keep their
    constructed values; every other tensor is drawn from ``g = torch.Generator().manual_seed(zlib.crc32(key))``:
    ``running_var = 0.5 + rand``, ``running_mean = 0.1 randn``, a 1-D ``*.weight`` (LayerNorm / BatchNorm scale)
    ``= 1 + 0.1 randn``; then under rule ``"std002"`` everything else is ``0.02 randn`` (the official init scale:
    small block outputs, so LayerNorm epsilons show), and under rule ``"fanin"`` a Linear/Conv ``*.weight`` is
    ``randn / sqrt(fan_in)``, ``relative_position_bias_table`` and ``global_token`` are ``randn``, and biases
    ``0.02 randn`` (activations of order one and sharp attention, so window and token routing show).
    """
    if rule not in RULES:
        raise ValueError(f"rule must be one of {RULES}, got {rule!r}")
    out = {}
    for key, ref in template.items():
        if key.endswith(("relative_position_index", "num_batches_tracked")):
            out[key] = ref.clone()
            continue
        g = torch.Generator().manual_seed(zlib.crc32(key.encode()))
        shape = tuple(ref.shape)
        if key.endswith("running_var"):
            val = 0.5 + torch.rand(shape, generator=g)
        elif key.endswith("running_mean"):
            val = 0.1 * torch.randn(shape, generator=g)
        elif key.endswith(".weight") and ref.dim() == 1:
            val = 1.0 + 0.1 * torch.randn(shape, generator=g)
        elif rule == "fanin" and key.endswith(".weight"):
            val = torch.randn(shape, generator=g) / math.sqrt(ref.numel() // shape[0])
        elif rule == "fanin" and key.endswith(("relative_position_bias_table", "global_token")):
            val = torch.randn(shape, generator=g)
        else:
            val = 0.02 * torch.randn(shape, generator=g)
        out[key] = val.to(ref.dtype)
    return out


def seeded_input(shape: tuple[int, ...], seed: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """The generator's inputs: ``torch.randn(shape)`` (float32) from a generator seeded with ``seed``, then widened."""
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to(dtype)


def load_fixture(name: str) -> dict:
    path = FIXTURES / name
    if not path.is_file():
        pytest.fail(f"missing fixture {path} (see tests/fixtures/lightvit/README.md)")
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def paper() -> dict:
    return load_fixture("paper_cfgs_outputs.pt")


def seeded_model(name: str, rule: str, dtype: torch.dtype = torch.float64, **kwargs) -> LightViT:
    """``name`` with the key-seeded weights of ``rule`` (drawn in float32 as in the generator), cast to ``dtype``."""
    model = timm.create_model(name, pretrained=False, **kwargs)
    model.load_state_dict(key_seeded_state_dict(model.state_dict(), rule), strict=True)
    return model.to(dtype)


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_keys_order_shapes_and_dtypes_equal_the_official_lists(name):
    official = json.loads(shared_path("specs/keys/lightvit_checkpoint_keys.json").read_text())[name]
    model = timm.create_model(name, pretrained=False)
    ours = [[k, list(v.shape), str(v.dtype).removeprefix("torch.")] for k, v in model.state_dict().items()]
    assert [k for k, _, _ in ours] == [k for k, _, _ in official]  # names and order
    assert ours == official
    assert sum(p.numel() for p in model.parameters()) == PARAMS[name]


def test_the_official_parameter_counts_are_the_paper_ones(paper):
    assert paper["params"] == PARAMS


@pytest.mark.parametrize("name", NAMES)
def test_relative_position_index_buffers_equal_the_official_one(paper, name):
    expected = paper["relative_position_index_ws7"]
    model = timm.create_model(name, pretrained=False)
    state = model.state_dict()
    keys = [k for k in state if k.endswith("relative_position_index")]
    assert len(keys) == sum(model.num_layers)  # one per block
    for key in keys:
        assert torch.equal(state[key], expected), key


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("name", NAMES)
def test_eval_logits_equal_the_official_model(paper, name, rule):
    model = seeded_model(name, rule).eval()
    with torch.no_grad():
        logits = model(seeded_input((2, 3, 224, 224), paper["meta"]["seeds"]["paper_224"]))
    assert_matches_official(logits, paper[rule][name], what=f"{name} eval logits ({rule})")


def test_float32_eval_logits_are_within_the_float32_bound_of_the_official_float64_ones(paper):
    # The one float32 check: T, rule fanin (activations of order one and sharp attention, the less forgiving rule).
    # depth 23 = the weighted layers on the path from pixels to logits, each adding its own rounding to the stream:
    # the stem's 4 convolutions and its projection (5), 14 blocks, 2 merges, the neck's Linear and the head (2).
    model = seeded_model("lightvit_tiny", "fanin", dtype=torch.float32).eval()
    with torch.no_grad():
        logits = model(seeded_input((2, 3, 224, 224), paper["meta"]["seeds"]["paper_224"], torch.float32))
    assert logits.dtype == torch.float32
    assert_float32_close(logits, paper["fanin"]["lightvit_tiny"], depth=23, what="lightvit_tiny logits (float32 run)")


@pytest.mark.parametrize("rule", RULES)
def test_non_square_input_equals_the_official_model(paper, rule):
    model = seeded_model("lightvit_tiny", rule).eval()
    with torch.no_grad():
        logits = model(seeded_input((1, 3, 224, 448), paper["meta"]["seeds"]["tiny_nonsquare"]))
    assert_matches_official(logits, paper[rule]["lightvit_tiny_224x448"], what=f"224x448 logits ({rule})")


@pytest.mark.parametrize("rule", RULES)
def test_train_mode_logits_and_stem_batchnorm_statistics_equal_the_official_model(paper, rule):
    model = seeded_model("lightvit_tiny", rule, drop_path_rate=0.0).train()
    with torch.no_grad():
        logits = model(seeded_input((2, 3, 224, 224), paper["meta"]["seeds"]["tiny_train"]))
    assert_matches_official(logits, paper[rule]["lightvit_tiny_train"], what=f"train-mode logits ({rule})")
    expected = paper[rule]["lightvit_tiny_train_bn"]
    assert len(expected) == 12  # stem.{1,4,7,10} x (running_mean, running_var, num_batches_tracked)
    state = model.state_dict()
    assert_matches_official({k: state[k] for k in expected}, expected, what=f"stem BatchNorm statistics ({rule})")


def test_intermediate_features_equal_the_official_model(paper):
    ref = load_fixture("tiny_intermediates.pt")
    model = seeded_model("lightvit_tiny", ref["rule"]).eval()
    modules = dict(model.named_modules())
    seen: dict[str, object] = {}
    names = ["patch_embed", "stages.0.0", "stages.0.1", "stages.1.0", "stages.1.6", "stages.2.6", "norm", "neck"]
    handles = [modules[n].register_forward_hook(lambda m, i, o, n=n: seen.__setitem__(n, o)) for n in names]
    handles.append(modules["head"].register_forward_pre_hook(lambda m, i: seen.__setitem__("pre_logits", i[0])))
    x = seeded_input((2, 3, 224, 224), paper["meta"]["seeds"]["paper_224"])
    with torch.no_grad():
        logits = model(x)
        tokens = model.forward_features(x)
        pooled = model.forward_head(tokens, pre_logits=True)
    for h in handles:
        h.remove()
    for n in names:
        out = seen[n]
        if isinstance(ref.get(n + ".hw"), torch.Tensor):  # stem and merge return (tokens, (H, W)) as officially
            assert tuple(out[1]) == tuple(ref[n + ".hw"].tolist()), n
            out = out[0]
        assert out.shape[1:] == ref[n].shape[1:], n
        assert_matches_official(out[:1], ref[n], what=n)
    assert_matches_official(seen["pre_logits"], ref["pre_logits"], what="pre_logits")  # the whole batch of 2
    assert_matches_official(tokens[:1], ref["norm"], what="forward_features")  # timm convention: normed tokens
    assert_matches_official(pooled, ref["pre_logits"], what="forward_head(pre_logits=True)")
    assert_matches_official(logits, ref["logits"], what="logits")


@pytest.fixture(scope="module")
def small_cfg() -> dict:
    return load_fixture("small_cfg_outputs.pt")


@pytest.mark.parametrize("wrap", ["state_dict", "model", "raw", "module_prefix"])
def test_official_checkpoint_of_the_small_config_loads_strictly_and_reproduces_outputs(tmp_path, small_cfg, wrap):
    ckpt = load_fixture("small_cfg_checkpoint.pth")
    state = ckpt["state_dict"]
    assert list(state) == list(LightViT(**small_cfg["config"]).state_dict())  # official key order
    payload = {
        "state_dict": ckpt,
        "model": {"model": state, "epoch": 299},
        "raw": state,
        "module_prefix": {"state_dict": {f"module.{k}": v for k, v in state.items()}},
    }[wrap]
    path = tmp_path / "official.pth"
    torch.save(payload, path)
    torch.manual_seed(123)  # a different initialisation: every value must come from the file
    model = LightViT(**small_cfg["config"])
    assert sum(p.numel() for p in model.parameters()) == small_cfg["params"] == 284_477
    load_lightvit_checkpoint(model, path)  # the float32 file into the float32 model, strictly
    model.double()  # the recording is the official model loaded from the same file, then run in float64
    x = seeded_input((4, 3, 64, 64), small_cfg["meta"]["seeds"]["small_cfg_input"])
    with torch.no_grad():
        assert_matches_official(model.eval()(x), small_cfg["logits_eval"], what=f"small cfg eval logits ({wrap})")
        assert_matches_official(model.train()(x), small_cfg["logits_train"], what=f"small cfg train logits ({wrap})")
    expected = small_cfg["bn_after_train"]
    state = model.state_dict()
    assert_matches_official({k: state[k] for k in expected}, expected, what=f"small cfg BatchNorm statistics ({wrap})")


def test_official_checkpoint_loads_through_timm_pretrained_file(small_cfg):
    cfg = dict(small_cfg["config"])
    # the overlay's num_classes tells timm the file's head has 4 classes (else it would drop the head weights)
    overlay = dict(file=str(FIXTURES / "small_cfg_checkpoint.pth"), num_classes=cfg["num_classes"])
    model = timm.create_model("lightvit_tiny", pretrained=True, pretrained_cfg_overlay=overlay, **cfg).double()
    x = seeded_input((4, 3, 64, 64), small_cfg["meta"]["seeds"]["small_cfg_input"])
    with torch.no_grad():
        assert_matches_official(model.eval()(x), small_cfg["logits_eval"], what="small cfg eval logits (timm file)")


@pytest.fixture(scope="module")
def dense() -> dict:
    return load_fixture("dense_outputs.pt")


def dense_backbone(dense: dict) -> LightViTBackbone:
    model = LightViTBackbone(num_tokens=8, out_indices=(0, 1, 2))
    assert [(k, list(v.shape)) for k, v in model.state_dict().items()] == [tuple(kv) for kv in dense["keys"]]
    model.load_state_dict(key_seeded_state_dict(model.state_dict(), dense["rule"]), strict=True)
    return model.double().eval()


@pytest.mark.parametrize(
    "tag, shape, seed_name",
    [("200x264", (1, 3, 200, 264), "dense_200x264"), ("224x224", (1, 3, 224, 224), "dense_224")],
)
def test_dense_backbone_maps_equal_the_official_detection_backbone(dense, tag, shape, seed_name):
    model = dense_backbone(dense)
    with torch.no_grad():
        maps = model(seeded_input(shape, dense["meta"]["seeds"][seed_name]))
    expected = dense[tag]
    assert [m.shape for m in maps] == [e.shape for e in expected]
    assert_matches_official(list(maps), expected, what=f"dense maps {tag}")


def test_official_convention_flops_equal_the_official_count():
    official = json.loads((FIXTURES / "official_flops.json").read_text())
    for name in NAMES:
        model = timm.create_model(name, pretrained=False)
        assert official_flops(model) == official[name]["flops_224"], name
        assert official[name]["params"] == PARAMS[name]
    # the paper's table: 0.7 / 1.7 / 3.9 G, i.e. 0.733 / 1.743 / 3.923 G multiply-adds
    assert [round(official[n]["flops_224"] / 1e9, 3) for n in NAMES] == [0.733, 1.743, 3.923]
