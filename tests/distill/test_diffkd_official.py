"""DiffKD against the official implementation's outputs, recorded in float64 (``tests/fixtures/diffkd/``).

The fixture was produced once, outside this repository, by the official ``hunto/DiffKD`` code (commit 2393a4a,
``diffkd.py`` + ``diffkd_modules.py`` + ``scheduling_ddim.py``) run in double precision; see the README next to it.
Each case holds the official module's initial state dict, fixed inputs, the torch seeds of one training-mode and one
eval-mode forward, the random draws the official forwards made, and what the official code computed: refined
student, target, ddim / rec / KD losses, gradients of ``kd + ddim (+ rec)`` w.r.t. the student and every parameter,
every buffer after the training forward, and the eval forward's outputs.

Here tenfold's module loads that state dict with ``strict=True``, runs in float64 seeded identically, and must
reproduce every quantity to 1e-10 of its scale (``parity.assert_matches_official``), so the random draws must also
happen in the official order (randn init noise -> randn ddim noise -> randint timesteps). One float32 run, given
the recorded draws, is bounded against the same float64 values (``parity.assert_float32_close``).
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from parity import FP64_RTOL, assert_float32_close, assert_matches_official

from tenfold.distill.diffkd import DiffKD, DiffKDLoss

pytestmark = pytest.mark.usefixtures("one_thread")

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "diffkd" / "official_outputs.pt"
EMB = "model.time_embedding.weight"
DATA = torch.load(FIXTURE, weights_only=True)
CASES = sorted(DATA["cases"])

# Dependent rounding steps of the longest chain, counting each conv, BN, linear, softmax, residual add and
# scheduler multiply-add as one step. Feature blocks (kernel 3): trans (1), noise adapter (bottleneck of 3 conv +
# 3 BN + add, pool, linear, softmax: 10), the noise mix (1), 5 DDIM steps of [time-embedding add, two bottlenecks
# (7 each), conv, BN: 17, plus the scheduler's x0 / eps / x_prev updates: 6] (115), proj (1), the MSE (1): 129
# forward; the gradient of trans (and of the student) retraces all of it: 258. Logit blocks (kernel 1): trans (1),
# adapter (2 conv + 2 BN, linear, softmax: 6), mix (1), 5 x [embedding add, 4 conv + 3 BN, scheduler 6: 14] (70),
# proj (1), log-softmax / softmax / KL (3): 82 forward, 164 with the backward.
FLOAT32_DEPTH = {"feature": 258, "logits": 164}


@contextmanager
def default_dtype(dtype: torch.dtype):
    """The official (and our) ddim-loss noise is drawn with the default dtype; the recording ran with float64."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def as4d(x, kind):
    return x[..., None, None] if kind == "logits" else x


def kd_loss(kind, tau, refined, target):
    """The official classification integration's KD term (spec 2.7): MSE (feature), tau^2 KL batchmean (logits)."""
    if kind == "feature":
        return F.mse_loss(refined, target)
    log_p_s = F.log_softmax(refined.flatten(1) / tau, dim=1)
    p_t = F.softmax(target.flatten(1) / tau, dim=1)
    return tau**2 * F.kl_div(log_p_s, p_t, reduction="batchmean")


def loss_module(case):
    kw = case["kwargs"]
    if case["kind"] == "logits":
        return DiffKDLoss(
            kw["student_channels"], kw["teacher_channels"], kind="logits", tau=case["tau"], proj_norm=False
        )
    return DiffKDLoss(
        kw["student_channels"],
        kw["teacher_channels"],
        kind="feature",
        use_ae=kw["use_ae"],
        ae_channels=kw.get("ae_channels"),
        proj_norm=False,
    )


def loaded(module, case, dtype):
    module = module.to(dtype)
    module.load_state_dict(case["state_dict"], strict=True)  # float32 initial weights: exact in either dtype
    return module


def draws(case, phase, dtype):
    """The official forward's random draws (``phase`` "train" / "eval") as keyword arguments, floats in ``dtype``."""
    return {k: v.to(dtype) if v.is_floating_point() else v for k, v in case["draws"][phase].items()}


def grads_and_buffers(module, case):
    """Gradients and buffers in the fixture's layout; the time embedding's unused rows must be exactly zero."""
    params = dict(module.named_parameters())
    assert set(params) == set(case["outputs"]["param_grads"]) | {EMB}
    grads = {n: p.grad if p.grad is not None else torch.zeros_like(p) for n, p in params.items() if n != EMB}
    emb, rows = params[EMB].grad, case["outputs"]["embedding_grad"]["rows"]
    unused = torch.ones(emb.shape[0], dtype=torch.bool)
    unused[rows] = False
    # index_add of the used rows only: the others are exact zeros on any CPU
    assert torch.count_nonzero(emb[unused]) == 0, "gradient reaches time-embedding rows no timestep used"
    return {
        "param_grads": grads,
        "embedding_grad": {"rows": rows, "values": emb[rows]},
        "buffers_after": dict(module.named_buffers()),
    }


def run_block(block, case, *, inject: bool = False) -> dict:
    """Train forward + backward and eval forward of a :class:`DiffKD` block, in the fixture's ``outputs`` layout.

    Seeded as the official run, or (``inject``) given the official run's draws in the block's dtype.
    """
    kind, dtype = case["kind"], block.trans.weight.dtype
    teacher = as4d(case["teacher"].to(dtype), kind)
    student = case["student"].to(dtype).clone().requires_grad_(True)

    block.train()
    torch.manual_seed(case["seed"])
    out = block(as4d(student, kind), teacher, **(draws(case, "train", dtype) if inject else {}))
    kd = kd_loss(kind, case["tau"], out.refined, out.target)
    total = kd + out.ddim_loss + (out.rec_loss if out.rec_loss is not None else 0)
    total.backward()
    res = {"refined": out.refined, "target": out.target, "ddim_loss": out.ddim_loss, "kd_loss": kd}
    res.update(total_loss=total, student_grad=student.grad, **grads_and_buffers(block, case))
    if out.rec_loss is not None:
        res["rec_loss"] = out.rec_loss

    block.eval()
    torch.manual_seed(case["eval_seed"])
    with torch.no_grad():
        ev = block(as4d(case["student"].to(dtype), kind), teacher, **(draws(case, "eval", dtype) if inject else {}))
    res.update(eval_refined=ev.refined, eval_target=ev.target, eval_ddim_loss=ev.ddim_loss)
    if ev.rec_loss is not None:
        res["eval_rec_loss"] = ev.rec_loss
    return {k: v.detach() if torch.is_tensor(v) else v for k, v in res.items()}


def check_float64(actual: dict, expected: dict, what: str) -> None:
    """Every recorded quantity to 1e-10 of its scale; parameter gradients also to 1e-10 of the whole gradient's.

    In training mode BatchNorm cancels any per-channel shift, so the gradient of every bias in front of a BN is
    exactly zero in exact arithmetic and computed as a rounding residual (1e-18 .. 1e-15 of the largest parameter
    gradient G); the noise adapter's one-channel bottleneck makes ``block.1.weight`` another near-cancellation
    (1e-9 G). Their rounding error scales with the size of the summed terms, not with the result, so each parameter
    gradient may also differ by 1e-10 G (``atol``); every other gradient is still held to 1e-10 of its own scale.
    """
    exp_grads = expected["param_grads"]
    g_scale = max(g.abs().max().item() for g in exp_grads.values())
    assert_matches_official(
        {k: v for k, v in actual.items() if k != "param_grads"},
        {k: v for k, v in expected.items() if k != "param_grads"},
        what=what,
    )
    assert_matches_official(actual["param_grads"], exp_grads, what=f"{what} grad", atol=FP64_RTOL * g_scale)


def test_fixture_is_plain_small_and_float64():
    assert FIXTURE.stat().st_size < 350_000
    assert DATA["meta"]["commit"] == "2393a4abfc1dd9507faf10a44db33070cc5f8373"
    assert DATA["meta"]["dtype"] == "float64"
    assert CASES == ["feature_ae", "feature_noae", "logits"]
    for case in DATA["cases"].values():
        assert case["outputs"]["refined"].dtype == case["outputs"]["param_grads"]["trans.weight"].dtype == torch.float64


@pytest.mark.parametrize("name", CASES)
def test_official_state_dict_loads_strictly(name):
    """Checkpoint interchangeability: the official state dict (keys, shapes) loads with strict=True."""
    case = DATA["cases"][name]
    block = DiffKD(**case["kwargs"], proj_norm=False)
    block.load_state_dict(case["state_dict"], strict=True)
    assert list(block.state_dict()) == list(case["state_dict"])


@pytest.mark.parametrize("name", CASES)
def test_diffkd_block_matches_official(name):
    case = DATA["cases"][name]
    block = loaded(DiffKD(**case["kwargs"], proj_norm=False), case, torch.float64)
    with default_dtype(torch.float64):
        actual = run_block(block, case)
    check_float64(actual, case["outputs"], name)


@pytest.mark.parametrize("name", CASES)
def test_diffkd_loss_matches_official(name):
    """``DiffKDLoss.forward_parts`` (train mode): the terms and the gradients of the total."""
    case = DATA["cases"][name]
    module = loaded(loss_module(case), case, torch.float64)
    student = case["student"].clone().requires_grad_(True)
    module.train()
    with default_dtype(torch.float64):
        torch.manual_seed(case["seed"])
        parts = module.forward_parts(student, case["teacher"])
        parts.total.backward()
    actual = {"kd_loss": parts.kd, "ddim_loss": parts.ddim, "total_loss": parts.total, "student_grad": student.grad}
    if parts.rec is not None:
        actual["rec_loss"] = parts.rec
    actual = {k: v.detach() for k, v in actual.items()} | grads_and_buffers(module, case)
    # no eval outputs here; a rec_loss missing on either side fails the key check
    expected = {
        k: v for k, v in case["outputs"].items() if not k.startswith("eval_") and k not in ("refined", "target")
    }
    check_float64(actual, expected, name)


def test_float32_run_close_to_official_float64():
    """Our float32 path (float32 weights, inputs and the official draws rounded to float32) vs the float64 record.

    Parameter gradients are bounded as one vector (the gradient of the loss w.r.t. all parameters, scale G): the
    BN-cancelled and near-cancelled ones (see :func:`check_float64`) are float32 rounding residuals of order
    eps32 * G, meaningless against their own scale.
    """
    for name in CASES:
        case, exp = DATA["cases"][name], DATA["cases"][name]["outputs"]
        depth = FLOAT32_DEPTH[case["kind"]]
        actual = run_block(loaded(DiffKD(**case["kwargs"], proj_norm=False), case, torch.float32), case, inject=True)
        assert actual["refined"].dtype == actual["param_grads"]["trans.weight"].dtype == torch.float32
        names = list(exp["param_grads"])
        assert_float32_close(
            torch.cat([actual["param_grads"][n].flatten() for n in names]),
            torch.cat([exp["param_grads"][n].flatten() for n in names]),
            depth=depth,
            what=f"{name} parameter gradients (float32 run)",
        )
        for key, expected in exp.items():
            if key != "param_grads":
                assert_float32_close(actual[key], expected, depth=depth, what=f"{name}: {key} (float32 run)")


def test_default_proj_is_the_classification_frameworks():
    """The default layout (conv + BN, keys proj.0/proj.1) is the spec's; the standalone one needs proj_norm=False."""
    case = DATA["cases"]["feature_ae"]
    with pytest.raises(RuntimeError, match="proj.weight"):
        DiffKD(**case["kwargs"]).load_state_dict(case["state_dict"], strict=True)
    assert {"proj.0.weight", "proj.1.running_var"} <= set(DiffKD(**case["kwargs"]).state_dict())
