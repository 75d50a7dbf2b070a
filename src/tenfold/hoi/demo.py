"""Demo ``rmlr``: the UPT baseline vs + re-mining vs full RmLR on built-in HOI scenes, 3 seeds.

Built-in scenes (:func:`~tenfold.data.synthetic.hoi.make_hoi`, 64 px): 1-2 stick figures and 1-3 objects of 6
classes; 8 verbs, each the side of the person on which the object touches it (the arm reaches towards it), so 48 HOI
classes (verb, object). The detector stage is simulated: GT boxes jittered by 10 % of their size, 2 false positives
per image, detection features = a label embedding + noise (what a detector keeps: identity, no pose). The feature
map comes from a small CNN (stride 8) trained with the head. Rare classes are those with fewer than 10 training
pairs (HICO-DET's rule), counted on the training split.

Arms (same data, data order and seeds; only the flags differ): the UPT baseline (every RmLR part off, exactly
:class:`~tenfold.hoi.upt.UPTBaseline`); + re-mining of the pair features from the map; full RmLR (re-mining,
sentence/word alignment, knowledge transfer, reasoning with the text bank; MiniLM text, centred, loss weights 0.2).
Validation mAP is UPT's protocol (:func:`~tenfold.hoi.hico_eval.upt_evaluate`).
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from tenfold.engine.demo import DemoContext, DemoResult, register_demo

SEEDS = (0, 1, 2)
STEPS = 120
VAL_EVERY = 40
DATA = dict(
    num_objects=6, num_verbs=8, train_size=384, val_size=128, test_size=64, box_noise=0.1, batch_size=16,
    detection_hidden_size=32,
)  # fmt: skip
TEXT_WEIGHT = 0.2  # spec 7: keep the text terms small; 0.5 lowered Full mAP here
ARMS: dict[str, tuple[str, dict[str, bool]]] = {
    "baseline": ("UPT baseline (all parts off)", {}),
    "remine": ("+ re-mining", {"remine": True}),
    "full": (
        "full RmLR (re-mine + align + transfer + reason)",
        dict(remine=True, align=True, transfer=True, reason=True),
    ),
}


def make_task(flags: dict[str, bool], text_encoder: str = "all-MiniLM-L6-v2", text_cache_dir: str | None = None) -> Any:
    """The demo's small task (d_u = 32, d_p = 32, re-mining width 32, 2 x 2 RoI cells) with the given RmLR flags."""
    from tenfold.engine.optim import OptimConfig
    from tenfold.hoi.task import HOITask

    w = TEXT_WEIGHT
    kwargs = {} if text_cache_dir is None else {"text_cache_dir": text_cache_dir}
    return HOITask(
        backbone="small_cnn", hidden_state_size=32, representation_size=32, text_encoder=text_encoder, **flags,
        rmlr_kwargs=dict(remine_size=32, remine_heads=4, roi_size=2, reason_heads=4, sentence_alignment_weight=w,
                         word_alignment_weight=w, sentence_transfer_weight=w, word_transfer_weight=w),
        optim=OptimConfig(opt="adamw", lr=1e-3, weight_decay=1e-4, sched="none"), **kwargs,
    )  # fmt: skip


def run_arms(
    arms: dict[str, tuple[str, dict[str, bool]]],
    seeds: tuple[int, ...],
    *,
    steps: int,
    val_every: int,
    out_dir: Path,
    data_kwargs: dict[str, Any],
    text_encoder: str = "all-MiniLM-L6-v2",
    text_cache_dir: str | None = None,
) -> dict[str, list[Any]]:
    """Train every arm on every seed (:func:`~tenfold.engine.quick.quick_fit`); the runs per arm, in seed order."""
    from tenfold.engine.quick import quick_fit
    from tenfold.hoi.data import HOIData

    runs: dict[str, list[Any]] = {}
    for arm, (_, flags) in arms.items():
        for seed in seeds:
            data = HOIData(**data_kwargs, shuffle_seed=seed)
            run = quick_fit(
                lambda flags=flags: make_task(flags, text_encoder, text_cache_dir), data, max_steps=steps,
                val_every=val_every, out_dir=out_dir / f"{arm}-seed{seed}", seed=seed,
            )  # fmt: skip
            runs.setdefault(arm, []).append(run)
    return runs


def _mean_std(xs: list[float]) -> tuple[float, float]:
    return statistics.fmean(xs), statistics.stdev(xs) if len(xs) > 1 else 0.0


def summarize(runs: dict[str, list[Any]], labels: dict[str, str]) -> list[dict[str, Any]]:
    """One row per arm: Full / Rare / Non-rare validation mAP (%) as mean +- std over seeds, per-seed Full, time."""
    rows = []
    for arm, rs in runs.items():
        row: dict[str, Any] = {"model": labels[arm]}
        for key, name in (("val/map", "Full"), ("val/map_rare", "Rare"), ("val/map_non_rare", "Non-rare")):
            m, s = _mean_std([100 * r.final[key] for r in rs])
            row[f"{name} mAP"] = f"{m:.1f} ± {s:.1f}"
            row[f"_{name}"] = (m, s)
        row["per-seed Full"] = ", ".join(f"{100 * r.final['val/map']:.1f}" for r in rs)
        row["s / run"] = round(statistics.fmean(r.seconds for r in rs), 1)
        rows.append(row)
    return rows


def compare(a: tuple[float, float], b: tuple[float, float]) -> str:
    """``above`` / ``below`` / ``within noise of``: the gap against twice the larger std (3 seeds)."""
    noise = 2 * max(a[1], b[1])
    return "above" if a[0] - b[0] > noise else "below" if b[0] - a[0] > noise else "within noise of"


@register_demo("rmlr", budget_s=90.0, title="HOI detection: UPT baseline vs re-mining vs full RmLR", threads=1)
def rmlr_demo(ctx: DemoContext) -> DemoResult:
    """Three arms x three seeds on built-in scenes; the mAP table and the validation curves."""
    from tenfold.engine.demo import plot_curves

    scale = 4 if ctx.full else 1
    data = {**DATA, "train_size": DATA["train_size"] * (2 if ctx.full else 1)}
    runs = run_arms(
        ARMS, SEEDS, steps=STEPS * scale, val_every=VAL_EVERY * scale, out_dir=ctx.out_dir, data_kwargs=data
    )
    labels = {k: v[0] for k, v in ARMS.items()}
    rows = summarize(runs, labels)
    curves = {}
    for arm, rs in runs.items():
        steps = [h["step"] for h in rs[0].history]
        curves[labels[arm]] = (
            steps,
            [statistics.fmean(100 * r.history[i]["val/map"] for r in rs) for i in range(len(steps))],
        )
    title = "built-in HOI scenes, mean of 3 seeds"
    plot = plot_curves(curves, ctx.out_dir / "val_map.png", ylabel="validation mAP, Full (%)", title=title)
    counts = _train_counts(data)
    notes = _notes(rows, STEPS * scale, counts)
    table = [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows]
    return DemoResult(rows=table, plots=[plot], notes=notes)


def _train_counts(data_kwargs: dict[str, Any]) -> Any:
    from tenfold.hoi.data import HOIData

    return HOIData(**data_kwargs).train_counts


def _notes(rows: list[dict[str, Any]], steps: int, counts: Any) -> str:
    base, rem, full = rows
    rare = int((counts < 10).sum())
    return (
        f"Built-in scenes of 64 px, {DATA['num_objects']} object classes x {DATA['num_verbs']} verbs = "
        f"{len(counts)} HOI classes, {DATA['train_size']} training / {DATA['val_size']} validation images; {rare} "
        f"classes are rare (< 10 training pairs; {int(counts.min())} to {int(counts.max())} pairs per class). The "
        "detector is simulated (GT boxes jittered by 10 %, 2 false positives per image, label-embedding features), "
        f"the map comes from a small CNN trained with the head. {steps} AdamW steps of 16 images, lr 1e-3, seeds "
        f"{list(SEEDS)}; the arms differ only in RmLR's flags. UPT-protocol validation mAP (%). "
        f"Re-mining is {compare(rem['_Full'], base['_Full'])} the baseline on Full "
        f"({rem['_Full'][0]:.1f} vs {base['_Full'][0]:.1f}) and {compare(rem['_Rare'], base['_Rare'])} it on Rare; "
        f"full RmLR is {compare(full['_Full'], rem['_Full'])} re-mining alone on Full and "
        f"{compare(full['_Rare'], rem['_Rare'])} it on Rare ({full['_Rare'][0]:.1f} vs {rem['_Rare'][0]:.1f}) "
        "(gaps under twice the larger std are called noise). What this scale can show: the verb is visible both in "
        "the box geometry (the spatial encodings of the baseline see it, blurred by the box noise) and in the image "
        "(the arm and the contact point), which only re-mining reads. The text parts cannot help much here: the "
        "object names are arbitrary ('object3') and the verb names are not related to the geometry the verbs "
        "encode, so the text bank carries no knowledge that transfers to rare classes; the spec's small-scale "
        "experiments found text gains of at most about one std, and only with centred embeddings (used here). "
        "The paper's ablation direction (re-mining > baseline; text alignment helps Rare) is therefore reported "
        "as measured, not assumed."
    )
