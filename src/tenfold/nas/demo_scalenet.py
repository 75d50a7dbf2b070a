"""Demo ``scalenet``: ScaleNet's joint base + scaling search against EfficientNet's compound rule, at equal FLOPs.

The tiny pipeline of spec section 7 on scikit-learn's digits (the data ``tenfold search --space scalenet`` uses):
train the tiny super-supernet briefly with the hierarchical sampler, run the joint search (base GA alternating with
the per-stage scaling grid, scored by the official proxy) for FLOPs levels F0, 2 F0, 4 F0 (scaling stages 0..2),
and compare the found family with the same searched base scaled by EfficientNet's compound rule (alpha 1.2,
beta 1.1, gamma 1.15 mapped to the nearest allowed multipliers). Every selected network is retrained from scratch
(``scalenet_tiny_searched`` with the classification task, 3 seeds). A stage-0-only search of the best base on the
same supernet (the per-FLOPs-level baseline's search) gives the search-cost comparison and baseline (a).
"""

from __future__ import annotations

import itertools
import json
import math
import random
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from tenfold.engine.demo import DemoContext, DemoResult, plot_curves, register_demo
from tenfold.nas.scalenet import ScaleNetSpace, is_feasible, official_flops, scale_basenet, scaling_values

SEEDS = (0, 1, 2)
#: EfficientNet's compound coefficients (depth alpha, width beta, resolution gamma; alpha beta^2 gamma^2 ~ 2).
COMPOUND = (1.2, 1.1, 1.15)
SUPERNET_STEPS = 120  # --full: x5, and the same for the retraining steps
RETRAIN_STEPS = 40
RETRAIN_BATCH = 32  # 40 x 32 images: the retraining of 8 networks x 3 seeds dominates the demo's time
RECALIBRATION_BATCHES = 16  # of RETRAIN_BATCH training images, before evaluating a retrained network
PROXY_BATCHES = 2  # of 64 validation images (the CLI's default is 4)
SEARCH = {"pop_size": 6, "n_gens": 2, "admm_iter": 2, "n_init": 4}
DIGITS = "digits"


def compound_strategy(
    space: ScaleNetSpace,
    basenet: Sequence[int],
    stage: int,
    coefficients: tuple[float, float, float] = COMPOUND,
    flops_fn: Callable[[ScaleNetSpace, Sequence[Any]], int] = official_flops,
) -> tuple[int, int, int]:
    """EfficientNet's compound rule at ``phi = stage`` mapped to the nearest allowed scaling triple of the stage.

    The rule asks for depth ``alpha**s``, width ``beta**s`` and resolution ``r0 * gamma**s`` (so that FLOPs grow by
    about ``(alpha beta^2 gamma^2)**s = 1.92**s``). Among the stage's (depth, width, resolution) index triples whose
    scaled network is FLOPs-feasible for ``basenet`` (``|F - 2**s F(base)| <= err_scale * 2**s``, the grid search's
    rule), the one nearest to the rule's point in log space (sum of squared log ratios) is returned; if none is
    feasible, the triple whose FLOPs are closest to ``2**s F(base)``.

    Args:
        space: the space (``flops_constraint`` and ``err_scale`` set).
        basenet: repaired base op encoding.
        stage: scaling stage in ``1..space.max_scaling_stage``.
        coefficients: ``(alpha, beta, gamma)``.
        flops_fn: FLOPs counter.

    Returns:
        ``(depth index, width index, resolution index)`` into the stage's lists.

    Raises:
        ValueError: ``stage`` outside ``1..max_scaling_stage``.
    """
    if not 1 <= stage <= space.max_scaling_stage:
        raise ValueError(f"stage must be in [1, {space.max_scaling_stage}], got {stage}")
    from tenfold.nas.scalenet_search import grid_points

    alpha, beta, gamma = coefficients
    r0 = space.resolutions[0][0]
    f_base = flops_fn(space, [*basenet, 1.0, r0])

    def distance(idx: tuple[int, int, int]) -> float:
        d_m, c_m, r = scaling_values(space, stage, idx)
        return (
            math.log(d_m / alpha**stage) ** 2
            + math.log(c_m / beta**stage) ** 2
            + math.log(r / (r0 * gamma**stage)) ** 2
        )

    def scaled(idx: tuple[int, int, int]) -> list[Any]:
        return scale_basenet(space, basenet, *scaling_values(space, stage, idx))

    grid = grid_points(space, stage)
    feasible = [i for i in grid if is_feasible(space, basenet, scaled(i), stage, space.err_scale, flops_fn)]
    if feasible:
        return min(feasible, key=distance)
    return min(grid, key=lambda i: abs(flops_fn(space, scaled(i)) - 2**stage * f_base))


def stage0_search(
    space: ScaleNetSpace, score_fn: Callable[[list[Any]], float], n: int, seed: int
) -> tuple[list[int], float, int]:
    """The per-level baseline's search at F0: ``n`` random feasible bases scored alone at stage 0 (c_m 1, r0).

    Returns:
        ``(best base, its proxy score, proxy evaluations)``.

    Raises:
        ValueError: fewer than ``n`` distinct feasible bases were found.
    """
    from tenfold.nas.scalenet_search import get_init_basenet

    bases = get_init_basenet(space, random.Random(seed), n)
    r0 = space.resolutions[0][0]
    scores = [score_fn([*b, 1.0, r0]) for b in bases]
    best = max(range(len(bases)), key=lambda i: scores[i])
    return bases[best], scores[best], len(bases)


def recalibrate_bn(model: Any, batches: Iterable[Any]) -> None:
    """Re-estimate every BatchNorm's running statistics as the plain average over ``batches`` (train mode, no grad).

    After a few dozen steps at lr 0.1 the running statistics (momentum 0.1) lag the weights so much that eval-mode
    accuracy of the deeper networks is at chance while training accuracy is not; the usual one-shot-NAS fix
    (a forward pass over training images with cumulative averaging) is applied before evaluation. Weights and the
    modules' momenta and train/eval mode are left unchanged.

    Args:
        model: a network with ``nn.BatchNorm2d`` layers.
        batches: image tensors (B, C, H, W), already normalised.
    """
    import torch

    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in bns]
    was = model.training
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    try:
        with torch.no_grad():
            for images in batches:
                model(images)
    finally:
        for m, momentum in zip(bns, momenta, strict=True):
            m.momentum = momentum
        model.train(was)


def _top1(model: Any, data: Any, split: str) -> float:
    """Top-1 (%) of ``model`` on the data's ``split`` (``"val"`` or ``"test"``; eval mode, no augmentation)."""
    import torch

    data.setup("validate" if split == "val" else "test")
    loader = data.val_dataloader() if split == "val" else data.test_dataloader()
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for batch in loader:
            images, labels = data.on_after_batch_transfer(batch, 0)
            correct += int((model(images).argmax(1) == labels).sum())
            total += labels.numel()
    return 100.0 * correct / total


def _retrain(encoding: list[Any], seed: int, steps: int, out_dir: Path) -> tuple[float, float]:
    """Train ``scalenet_tiny_searched(encoding)`` from scratch on the digits at its resolution: (val, test) top-1 %.

    BN statistics are re-estimated on the training images (:func:`recalibrate_bn`) before both evaluations.
    """
    from tenfold.classification import ClassificationTask
    from tenfold.data.datamodules import ClassificationData
    from tenfold.engine.optim import OptimConfig
    from tenfold.engine.quick import quick_fit

    data = ClassificationData(dataset=DIGITS, image_size=int(encoding[-1]), batch_size=RETRAIN_BATCH,
                              eval_batch_size=512, augment="none", shuffle_seed=seed)  # fmt: skip

    def task() -> ClassificationTask:
        return ClassificationTask(model="scalenet_tiny_searched", num_classes=10, model_kwargs={"encoding": encoding},
                                  optim=OptimConfig(opt="momentum", lr=0.1, sched="cosine"))  # fmt: skip

    run = quick_fit(task, data, max_steps=steps, val_every=steps, out_dir=out_dir, seed=seed)
    model = run.task.model
    loader = itertools.islice(data.train_dataloader(), RECALIBRATION_BATCHES)
    recalibrate_bn(model, (data.on_after_batch_transfer(batch, 0)[0] for batch in loader))
    return _top1(model, data, "val"), _top1(model, data, "test")


def level_of(space: ScaleNetSpace, encoding: Sequence[Any]) -> int:
    """The FLOPs level ``s`` (target ``2**s F0``) nearest to ``encoding``'s official MAdds in log2."""
    ratio = official_flops(space, encoding) / space.flops_constraint
    return min(range(space.max_scaling_stage + 1), key=lambda s: abs(math.log2(ratio) - s))


@register_demo(
    "scalenet",
    budget_s=100.0,
    title="ScaleNet: joint base + scaling search vs the compound rule (digits)",
    threads=1,
)
def scalenet_demo(ctx: DemoContext) -> DemoResult:
    """Supernet, joint search, compound-rule baselines, retraining with 3 seeds, the search-cost ratio and tau."""
    from scipy.stats import kendalltau

    from tenfold.data.datamodules import ClassificationData
    from tenfold.engine.optim import OptimConfig
    from tenfold.engine.quick import quick_fit
    from tenfold.nas.cli import median_base_flops
    from tenfold.nas.scalenet import evaluate_candidate, space_from_name
    from tenfold.nas.scalenet_search import search
    from tenfold.nas.scalenet_task import ScaleNetSupernetTask

    start = time.perf_counter()
    scale = 5 if ctx.full else 1
    supernet_steps, retrain_steps = SUPERNET_STEPS * scale, RETRAIN_STEPS * scale

    # 1. the tiny super-supernet (configs/scalenet/tiny_supernet.yaml, shorter)
    train_data = ClassificationData(dataset=DIGITS, image_size=32, batch_size=64, eval_batch_size=256,
                                    augment="crop_flip")  # fmt: skip
    sn_run = quick_fit(
        lambda: ScaleNetSupernetTask(space="tiny", num_classes=10, seed=ctx.seed, warmup_steps=supernet_steps // 20,
                                     optim=OptimConfig(opt="momentum", lr=0.1, momentum=0.9, weight_decay=4e-5)),
        train_data, max_steps=supernet_steps, val_every=supernet_steps, out_dir=ctx.out_dir / "supernet",
        seed=ctx.seed,
    )  # fmt: skip
    supernet = sn_run.task.supernet
    f0 = median_base_flops(supernet.space, seed=ctx.seed)
    # the CLI's tolerances: 10 % of F0 (base, family score), 20 % (grid), times 2^s for the scaled members
    space = space_from_name("tiny", num_classes=10, flops_constraint=f0)
    supernet.space = space
    t_supernet = sn_run.seconds

    # proxy set: the first validation batches, as `tenfold search --space scalenet` builds it
    proxy = ClassificationData(dataset=DIGITS, image_size=32, batch_size=64, eval_batch_size=64, augment="none")
    proxy.setup("validate")
    batches = []
    for images, labels, _ in proxy.val_dataloader():
        batches.append(proxy.on_after_batch_transfer((images, labels, None), 0))
        if len(batches) == PROXY_BATCHES:
            break

    def score(e: list[Any]) -> float:
        return evaluate_candidate(supernet, e, batches)

    proxy_memo: dict[str, float] = {}

    def proxy_of(e: list[Any]) -> float:  # the tables' proxy column (not counted as search cost)
        return proxy_memo[str(e)] if str(e) in proxy_memo else proxy_memo.setdefault(str(e), score(e))

    # 2. the joint search
    t0 = time.perf_counter()
    st = search(space, score, ctx.out_dir / "search_state.json", seed=ctx.seed, **SEARCH)
    t_joint = time.perf_counter() - t0
    joint_evals = len(st["cache"])
    evals_per_level = [0] * (space.max_scaling_stage + 1)
    for key in st["cache"]:
        evals_per_level[level_of(space, json.loads(key))] += 1
    base = st["topk"][0][1]
    strategy = {int(k): tuple(v) for k, v in st["strategy"].items()}

    # per-level baseline's search (a): the best base alone at F0, with the joint GA's evaluation budget per round
    t0 = time.perf_counter()
    n_level = SEARCH["pop_size"] * (1 + SEARCH["n_gens"]) * SEARCH["admm_iter"]
    base_a, _, level_evals = stage0_search(space, score, n_level, ctx.seed)
    t_level = time.perf_counter() - t0

    # 3. the families: ScaleNet (searched strategy), (b) compound rule on the ScaleNet base, (a) on the stage-0 base
    r0 = space.resolutions[0][0]
    levels = range(space.max_scaling_stage + 1)
    picks = {"ScaleNet (joint)": (base, lambda b, s: strategy[s]),
             "(b) compound, ScaleNet base": (base, lambda b, s: compound_strategy(space, b, s)),
             "(a) compound, stage-0 base": (base_a, lambda b, s: compound_strategy(space, b, s))}  # fmt: skip
    families: dict[str, list[tuple[float, list[Any]]]] = {}
    for method, (b, pick) in picks.items():
        families[method] = [(1.0, [*b, 1.0, r0])]
        for s in levels[1:]:
            d_m, c_m, r = scaling_values(space, s, pick(b, s))
            families[method].append((d_m, scale_basenet(space, b, d_m, c_m, r)))
    retrain_methods = list(families)

    # 4. retraining from scratch, 3 seeds (a network shared by two families is trained once)
    done: dict[str, tuple[list[float], list[float]]] = {}
    rows: list[dict[str, Any]] = []
    curves: dict[str, tuple[list[float], list[float]]] = {}
    for method, family in families.items():
        xs, ys = [], []
        for s, (d_m, enc) in zip(levels, family, strict=True):
            key = str(enc)
            if method in retrain_methods and key not in done:
                runs = [_retrain(enc, seed, retrain_steps, ctx.out_dir / "retrain" / f"{len(done)}-seed{seed}")
                        for seed in SEEDS]  # fmt: skip
                done[key] = ([v for v, _ in runs], [t for _, t in runs])
            flops = official_flops(space, enc)
            row: dict[str, Any] = {
                "level": f"{2**s}F0", "method": method, "d_m / c_m / r": f"{d_m:g} / {enc[-2]:g} / {enc[-1]}",
                "MAdds (k)": flops / 1e3, "target (k)": 2**s * f0 / 1e3, "proxy top-1 (%)": proxy_of(enc),
            }  # fmt: skip
            if key in done:
                vals, tests = done[key]
                row["val top-1 (%)"] = f"{statistics.fmean(vals):.2f} ± {statistics.stdev(vals):.2f}"
                row["test top-1 (%)"] = f"{statistics.fmean(tests):.2f} ± {statistics.stdev(tests):.2f}"
                row["_test"] = tests
                xs.append(flops / 1e3)
                ys.append(statistics.fmean(tests))
            else:
                row["val top-1 (%)"] = row["test top-1 (%)"] = "not retrained"
            rows.append(row)
        if xs:
            curves[method] = (xs, ys)
    plot = plot_curves(curves, ctx.out_dir / "test_top1_vs_madds.png", xlabel="MAdds (k, official counter)",
                       ylabel="test top-1 (%), mean of 3 seeds", title="ScaleNet vs compound rule")  # fmt: skip

    # 5. proxy ranking: Kendall tau (b) of the supernet proxy vs the retrained test top-1, over the distinct networks
    tau = float(kendalltau([proxy_memo[k] for k in done], [statistics.fmean(done[k][1]) for k in done]).statistic)

    # 6. search cost: ScaleNet = 1 supernet + 1 joint search; per-level baseline = (supernet + search) per level
    n_levels = len(levels)
    cost = {
        "scalenet_steps": sn_run.steps, "scalenet_evals": joint_evals, "baseline_steps": n_levels * sn_run.steps,
        "baseline_evals": n_levels * level_evals, "scalenet_s": t_supernet + t_joint,
        "baseline_s": n_levels * (t_supernet + t_level),
    }  # fmt: skip
    same = families["ScaleNet (joint)"] == families["(b) compound, ScaleNet base"]
    notes = _notes(rows, cost, f0, supernet_steps, retrain_steps, sn_run.final, t_joint, t_level,
                   time.perf_counter() - start, same, evals_per_level, tau, len(done))  # fmt: skip
    for row in rows:
        row.pop("_test", None)
    return DemoResult(rows=rows, plots=[plot], notes=notes)


def _notes(
    rows: list[dict[str, Any]],
    cost: dict[str, float],
    f0: float,
    supernet_steps: int,
    retrain_steps: int,
    supernet_val: dict[str, float],
    t_joint: float,
    t_level: float,
    total_s: float,
    same: bool,
    evals_per_level: Sequence[int],
    tau: float,
    n_networks: int,
) -> str:
    tests = [r["_test"] for r in rows if "_test" in r]
    noise = 2 * max(statistics.stdev(t) for t in tests)
    by = {(r["level"], r["method"]): statistics.fmean(r["_test"]) for r in rows if "_test" in r}
    madds = {(r["level"], r["method"]): r["MAdds (k)"] for r in rows}
    verdicts, separated = [], False
    for level in dict.fromkeys(r["level"] for r in rows):
        ours = by.get((level, "ScaleNet (joint)"))
        for method in ("(b) compound, ScaleNet base", "(a) compound, stage-0 base"):
            other = by.get((level, method))
            if ours is None or other is None or (level == "1F0" and method.startswith("(b)")):
                continue
            word = "beats" if ours - other > noise else "trails" if other - ours > noise else "is within noise of"
            separated |= word != "is within noise of"
            verdicts.append(
                f"{level}: ScaleNet {ours:.2f} % ({madds[level, 'ScaleNet (joint)']:.0f}k) {word} {method[:3]} "
                f"{other:.2f} % ({madds[level, method]:.0f}k)"
            )
    ratio_evals = cost["baseline_evals"] / max(cost["scalenet_evals"], 1)
    ratio_total = cost["baseline_s"] / cost["scalenet_s"]
    per_level = ", ".join(f"{2**s}F0: {n}" for s, n in enumerate(evals_per_level))
    return (
        f"Digits (scikit-learn; 32 px for the supernet and the proxy, resized on the fly to 16-20 px), the tiny space "
        f"(`ScaleNetSpace.tiny()`: spec section 7's base space with scaling lists that reach the FLOPs targets; "
        f"F0 = median official MAdds of 200 random bases = {f0 / 1e3:.1f}k; levels F0, 2F0, 4F0 = scaling stages "
        f"0-2). Super-supernet: {supernet_steps} steps of batch 64 (hierarchical sampler, s-softmax, SGD lr 0.1 "
        f"warm-up + cosine; its validation sub-network reaches {100 * supernet_val['val/acc1']:.1f} % top-1, so the "
        f"proxy is weak at this length). Joint search (`search` with the CLI's proxy score and tolerances: 10 % of "
        f"F0 for the base and the family score, 20 % for the grid, times 2^s): pop {SEARCH['pop_size']}, "
        f"{SEARCH['n_gens']} generations, {SEARCH['admm_iter']} alternations, {SEARCH['n_init']} initial bases, "
        f"proxy = {PROXY_BATCHES} validation batches of 64 (BN batch statistics, 2 coupled calls summed); distinct "
        f"proxy evaluations per FLOPs level: {per_level} (the family score leaves the base itself out, as official). "
        "Compound rule: EfficientNet's alpha 1.2, beta 1.1, gamma 1.15 at phi = s, mapped to the stage's nearest "
        "(log distance) allowed depth / width / resolution among those within the grid's tolerance of 2^s F(base) "
        "(else the one with the closest MAdds). (a) = the best base of the stage-0-only search with the compound "
        f"rule. Every network retrained from scratch: `scalenet_tiny_searched` with the classification task, "
        f"{retrain_steps} SGD steps (lr 0.1 cosine, batch {RETRAIN_BATCH}, no augmentation) at its own resolution, "
        f"seeds {list(SEEDS)}, BN statistics re-estimated on {RECALIBRATION_BATCHES * RETRAIN_BATCH} training "
        "images before evaluation (without it the deeper "
        "networks score at chance after so few steps); val / test = the digits' 15 % / 15 % held-out splits. Equal "
        "steps favour the small networks: the larger levels are less converged. "
        + (
            "The joint search's strategy equals the compound rule's mapping at every stage here, so rows (b) repeat "
            "ScaleNet's networks and numbers. "
            if same
            else ""
        )
        + f"Result: {'; '.join(verdicts)}. Differences under {noise:.2f} points (twice the largest std) are noise"
        + (
            ". "
            if separated
            else ", so no family is separated from another at this scale: the demo shows the pipeline end to end "
            "and the cost count, not the paper's ImageNet margins. "
        )
        + f"Proxy ranking: Kendall tau-b between the supernet proxy top-1 and the retrained test top-1 (mean of 3 "
        f"seeds) over the {n_networks} distinct retrained networks = {tau:.2f} (levels mixed; spec section 7 expects "
        "it clearly positive). "
        + f"Search cost, counted: ScaleNet = 1 supernet ({cost['scalenet_steps']:.0f} steps) + 1 joint search "
        f"({cost['scalenet_evals']:.0f} distinct proxy evaluations, {t_joint:.1f} s); the per-level baseline = one "
        f"supernet + one search per FLOPs level = {cost['baseline_steps']:.0f} steps + {cost['baseline_evals']:.0f} "
        "evaluations. Only the level-F0 search was run (a random search over as many feasible bases as the joint "
        f"GA's pop x (1 + generations) x alternations, {cost['baseline_evals'] / 3:.0f} evaluations, "
        f"{t_level:.1f} s); the other two levels' searches are counted as equal to it and the three per-level "
        "supernets as equal to ours, not run. Ratios (baseline / ScaleNet): supernet steps "
        f"{cost['baseline_steps'] / cost['scalenet_steps']:.2f}x, proxy evaluations {ratio_evals:.2f}x, wall-clock "
        f"of supernet + search {ratio_total:.2f}x (paper: >= 2.53x in GPU-days). Total {total_s:.1f} s."
    )
