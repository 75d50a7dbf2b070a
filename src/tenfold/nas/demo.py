"""Demo ``ginas``: architecture search by real training on built-in data, with regularised evolution and the LLM.

A small NAS-Bench-Macro-style space (5 searchable layers, 3 operations each, 243 networks) is scored by training
each proposal briefly with tenfold's classification task on scikit-learn's bundled digits (the built-in real
dataset; the procedural scenes need far longer training than a demo has before architectures separate).
Regularised evolution runs always; GINAS runs too when a chat endpoint is configured through the environment
(``TENFOLD_LLM_MODEL``, optionally ``TENFOLD_LLM_BASE_URL`` and ``TENFOLD_LLM_API_KEY``), on the same budget, data
and training seed.
"""

from __future__ import annotations

import time
from typing import Any

from tenfold.engine.demo import DemoContext, DemoResult, register_demo

#: The demo's searchable layers: (in, out, stride); stem 16 channels, head 128; 16x16 images (digits upsampled).
DEMO_LAYERS = ((16, 24, 2), (24, 24, 1), (24, 48, 2), (48, 48, 1), (48, 48, 1))
#: SGD steps per trained network (``--full``: 5x) and trainings per optimiser (``--full``: 10).
DEMO_STEPS = 120
DEMO_BUDGET = 6


def _space(ctx: DemoContext, steps: int, max_time_s: float) -> Any:
    from tenfold.data.datamodules import ClassificationData
    from tenfold.nas.macro import TrainedMacroSpace

    def data() -> ClassificationData:
        return ClassificationData(dataset="digits", batch_size=32, eval_batch_size=500, image_size=16,
                                  data_seed=ctx.seed)  # fmt: skip

    return TrainedMacroSpace(
        data, layers=DEMO_LAYERS, stem_chs=16, head_chs=128, width_mult=1.0, max_steps=steps, lr=0.1,
        seed=ctx.seed, out_dir=ctx.out_dir / "runs", max_time_s=max_time_s,
        dataset="handwritten digits (10 classes; 8x8 grey images upsampled to 16x16; about 1260 training and 270 "
        "validation images)",
    )  # fmt: skip


def _row(label: str, result: Any, seconds: float) -> dict[str, Any]:
    best = result.best()
    return {
        "optimizer": label,
        "evaluations": len(result.records),
        "best val top-1 (%)": best.acc,
        "best ops": "".join(map(str, best.answer)),
        "params (k)": best.info.get("params", 0) / 1e3,
        "mean val top-1 (%)": sum(r.acc for r in result.records) / len(result.records),
        "seconds": round(seconds, 1),
    }


@register_demo("ginas", budget_s=45.0, title="GINAS: architecture search by real training (built-in data)")
def ginas_demo(ctx: DemoContext) -> DemoResult:
    """Regularised evolution, and GINAS when an endpoint is configured, on a real-training macro space."""
    from tenfold.nas.baselines import regularized_evolution
    from tenfold.nas.cli import plot_curves
    from tenfold.nas.ginas import GINAS
    from tenfold.nas.llm import ENV_MODEL, ChatError, chat_from_env

    start = time.perf_counter()
    chat = chat_from_env()
    optimizers = 2 if chat is not None else 1
    steps = DEMO_STEPS * (5 if ctx.full else 1)
    budget = 10 if ctx.full else DEMO_BUDGET
    share = 0.9 * ctx.budget_s / optimizers  # seconds per optimiser; the last evaluation may overrun a little
    space = _space(ctx, steps, max_time_s=share / 3)
    rows, curves, notes = [], {}, []

    t0 = time.perf_counter()
    deadline = t0 + share
    evo = regularized_evolution(space, budget, seed=ctx.seed, population=3, sample=2,
                                stop=lambda: time.perf_counter() > deadline)  # fmt: skip
    rows.append(_row("regularised evolution (pop 3, tournament 2)", evo, time.perf_counter() - t0))
    curves["regularised evolution"] = [evo.curve()]

    if chat is None:
        notes.append(
            f"GINAS (the chat LLM) was **skipped**: no endpoint is configured (`{ENV_MODEL}` is not set). Set "
            "`TENFOLD_LLM_MODEL` (and `TENFOLD_LLM_BASE_URL` for a local or non-OpenAI server, "
            "`TENFOLD_LLM_API_KEY` for a key) to run it on the same budget; see docs/ginas.md."
        )
    else:
        t0 = time.perf_counter()
        deadline = t0 + share
        try:
            ginas = GINAS(space, chat, budget=budget, transcript=ctx.out_dir / "ginas_transcript.jsonl",
                          stop=lambda: time.perf_counter() > deadline)  # fmt: skip
            result = ginas.run()
        except ChatError as err:
            notes.append(f"GINAS could not run: the endpoint failed ({err}).")
        else:
            if result.records:
                rows.append(_row(f"GINAS ({chat.model})", result, time.perf_counter() - t0))
                curves["GINAS"] = [result.curve()]
            notes.append(f"GINAS chat statistics: {result.stats}; transcript `ginas_transcript.jsonl`.")

    plot = ctx.out_dir / "best_so_far.png"
    plot_curves(curves, plot, "real-training macro space, built-in data")
    notes.insert(
        0,
        f"Search space: 5 searchable layers x 3 operations (identity, IR e3 k3, IR e6 k5) = {space.size} networks, "
        f"each trained {steps} SGD steps (batch 32, seed {ctx.seed}) on scikit-learn's bundled digits (about 1260 "
        "training images, 16x16) and scored by validation top-1 (about 270 images); budget "
        f"{budget} trainings per optimiser, stopped early at the time limit. One short training per network is a "
        "noisy score: the demo shows the harness working end to end on real training, not a ranking of "
        "optimisers (the 200-trial benchmark-table comparison is in docs/ginas.md). "
        f"Total {time.perf_counter() - start:.1f} s.",
    )
    return DemoResult(rows=rows, plots=[plot], notes="\n\n".join(notes))
