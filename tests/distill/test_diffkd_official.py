"""DiffKD against the official implementation's recorded outputs (``tests/fixtures/diffkd/official_outputs.pt``).

The fixture was produced once, outside this repository, by the official ``hunto/DiffKD`` code (commit 2393a4a,
``diffkd.py`` + ``diffkd_modules.py`` + ``scheduling_ddim.py``); see the README next to it. Each case holds the
official module's initial state dict, fixed inputs, the torch seeds of one training-mode and one eval-mode forward,
and what the official code computed: refined student, target, ddim / rec / KD losses, gradients of
``kd + ddim (+ rec)`` w.r.t. the student and every parameter, and every buffer after the training forward.

Here tenfold's module loads that state dict with ``strict=True``, is seeded identically and must reproduce every
quantity to rtol 1e-5 / atol 1e-6, so the random draws must also happen in the official order
(randn init noise -> randn ddim noise -> randint timesteps).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from tenfold.distill.diffkd import DiffKD, DiffKDLoss

pytestmark = pytest.mark.usefixtures("one_thread")

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "diffkd" / "official_outputs.pt"
EMB = "model.time_embedding.weight"
TOL = dict(rtol=1e-5, atol=1e-6)


def _load():
    return torch.load(FIXTURE, weights_only=True)


DATA = _load()
CASES = sorted(DATA["cases"])


def close(actual, expected, what):
    torch.testing.assert_close(actual, expected, **TOL, msg=lambda m: f"{what}: {m}")


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


def check_grads(module, expected, what):
    grads = dict(module.named_parameters())
    assert set(grads) == set(expected["param_grads"]) | {EMB}, what
    for name, g in expected["param_grads"].items():
        actual = grads[name].grad
        close(actual if actual is not None else torch.zeros_like(grads[name]), g, f"{what}: grad of {name}")
    emb = grads[EMB].grad
    rows = expected["embedding_grad"]["rows"]
    close(emb[rows], expected["embedding_grad"]["values"], f"{what}: grad of {EMB} (used rows)")
    others = torch.ones(emb.shape[0], dtype=torch.bool)
    others[rows] = False
    close(emb[others], torch.zeros_like(emb[others]), f"{what}: grad of {EMB} (unused rows)")


def check_buffers(module, expected, what):
    buffers = dict(module.named_buffers())
    assert set(buffers) == set(expected), what
    for name, b in expected.items():
        close(buffers[name], b, f"{what}: buffer {name}")


def check_block(block, case, what):
    """Train forward + backward and eval forward of a :class:`DiffKD` block against the official record."""
    kind, exp = case["kind"], case["outputs"]
    teacher = as4d(case["teacher"], kind)
    student = case["student"].clone().requires_grad_(True)

    block.train()
    torch.manual_seed(case["seed"])
    out = block(as4d(student, kind), teacher)
    kd = kd_loss(kind, case["tau"], out.refined, out.target)
    total = kd + out.ddim_loss + (out.rec_loss if out.rec_loss is not None else 0)
    total.backward()

    close(out.refined, exp["refined"], f"{what}: refined")
    close(out.target, exp["target"], f"{what}: target")
    close(out.ddim_loss, exp["ddim_loss"], f"{what}: ddim_loss")
    assert (out.rec_loss is None) == ("rec_loss" not in exp), what
    if out.rec_loss is not None:
        close(out.rec_loss, exp["rec_loss"], f"{what}: rec_loss")
    close(kd, exp["kd_loss"], f"{what}: kd_loss")
    close(total, exp["total_loss"], f"{what}: total")
    close(student.grad, exp["student_grad"], f"{what}: student grad")
    check_grads(block, exp, what)
    check_buffers(block, exp["buffers_after"], what)

    block.eval()
    torch.manual_seed(case["eval_seed"])
    with torch.no_grad():
        ev = block(as4d(case["student"], kind), teacher)
    close(ev.refined, exp["eval_refined"], f"{what}: eval refined")
    close(ev.target, exp["eval_target"], f"{what}: eval target")
    close(ev.ddim_loss, exp["eval_ddim_loss"], f"{what}: eval ddim_loss")
    if ev.rec_loss is not None:
        close(ev.rec_loss, exp["eval_rec_loss"], f"{what}: eval rec_loss")


def check_loss(module, case, what):
    """``DiffKDLoss.forward_parts`` (train mode) against the official record: terms and gradients of the total."""
    exp = case["outputs"]
    student = case["student"].clone().requires_grad_(True)
    module.train()
    torch.manual_seed(case["seed"])
    parts = module.forward_parts(student, case["teacher"])
    parts.total.backward()
    close(parts.kd, exp["kd_loss"], f"{what}: kd")
    close(parts.ddim, exp["ddim_loss"], f"{what}: ddim")
    if parts.rec is not None or "rec_loss" in exp:
        close(parts.rec, exp["rec_loss"], f"{what}: rec")
    close(parts.total, exp["total_loss"], f"{what}: total")
    close(student.grad, exp["student_grad"], f"{what}: student grad")
    check_grads(module, exp, what)
    check_buffers(module, exp["buffers_after"], what)


def test_fixture_is_plain_and_small():
    assert FIXTURE.stat().st_size < 300_000
    assert DATA["meta"]["commit"] == "2393a4abfc1dd9507faf10a44db33070cc5f8373"
    assert CASES == ["feature_ae", "feature_noae", "logits"]


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
    block = DiffKD(**case["kwargs"], proj_norm=False)
    block.load_state_dict(case["state_dict"], strict=True)
    check_block(block, case, name)


@pytest.mark.parametrize("name", CASES)
def test_diffkd_loss_matches_official(name):
    case = DATA["cases"][name]
    module = loss_module(case)
    module.load_state_dict(case["state_dict"], strict=True)
    check_loss(module, case, name)


def test_default_proj_is_the_classification_frameworks():
    """The default layout (conv + BN, keys proj.0/proj.1) is the spec's; the standalone one needs proj_norm=False."""
    case = DATA["cases"]["feature_ae"]
    with pytest.raises(RuntimeError, match="proj.weight"):
        DiffKD(**case["kwargs"]).load_state_dict(case["state_dict"], strict=True)
    assert {"proj.0.weight", "proj.1.running_var"} <= set(DiffKD(**case["kwargs"]).state_dict())
