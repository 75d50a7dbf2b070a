r"""``tenfold search``: GINAS and the baselines on a benchmark table, many trials, a paper-style table and a plot.

Example::

    tenfold search --space nas-bench-macro --table ~/tables/nas_bench_macro_cifar10.json \\
        --optimizer random,evolution,local --budget 10 --trials 200
    TENFOLD_LLM_MODEL=gpt-4 TENFOLD_LLM_API_KEY=... tenfold search --space nas-bench-macro --table ~/tables \\
        --optimizer ginas --trials 3

ScaleNet's joint base/scaling search on a trained super-supernet has its own options (``--space scalenet``)::

    tenfold search --space scalenet --supernet runs/scalenet/tiny_supernet/<time>/checkpoints/last.ckpt \\
        --data digits --out runs/scalenet-search [--resume]

For the benchmark tables, writes ``results.json`` (every trial, its records and curve, the summary rows),
``summary.md`` and ``best_so_far.png`` into ``--out`` (default ``runs/search-<time>``), and, for GINAS, one
transcript per trial under ``transcripts/``. A GINAS trial that never got a valid answer is reported as failed
(``failed_trials``) and left out of the statistics. When the chat endpoint fails for good
(:class:`~tenfold.nas.llm.ChatError`), the finished trials are written, a one-line error says to rerun with
``--resume``, and the exit code is 2.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["plot_curves", "scalenet_search_main", "search_main"]

OPTIMIZERS = ("ginas", "random", "evolution", "local")


def _parser() -> argparse.ArgumentParser:
    from tenfold.nas.llm import ENV_API_KEY, ENV_BASE_URL, ENV_MODEL, ENV_TEMPERATURE, ENV_TIMEOUT
    from tenfold.nas.spaces import RANK_MODES, SPACES

    p = argparse.ArgumentParser(
        prog="tenfold search",
        description="Architecture search on a benchmark table with GINAS (a chat LLM as the optimiser) or a "
        "baseline; prints mean and std over trials of the best architecture's accuracy and rank.",
    )
    p.add_argument("--space", required=True, choices=list(SPACES), help="benchmark")
    p.add_argument("--table", required=True, help="the benchmark's table file, or a folder holding it")
    p.add_argument("--optimizer", default="ginas",
                   help=f"one or more of {', '.join(OPTIMIZERS)}, comma-separated (default ginas)")  # fmt: skip
    p.add_argument("--budget", type=int, default=10, help="architectures evaluated per trial (paper: 10)")
    p.add_argument("--trials", type=int, default=1, help="independent trials per optimiser")
    p.add_argument("--seed", type=int, default=0, help="seed of trial 0 (trial i uses seed + i)")
    p.add_argument("--out", help="output folder (must not exist unless --resume; default runs/search-<time>)")
    p.add_argument("--resume", action="store_true", help="continue the GINAS transcripts in --out")
    p.add_argument("--rank-mode", choices=list(RANK_MODES), default="official",
                   help="official: the GENIUS scripts' ranks (ties in numpy argsort order); competition: tied "
                   "entries share a rank (default official)")  # fmt: skip
    g = p.add_argument_group("GINAS chat backend")
    g.add_argument("--backend", choices=["openai", "replay", "console"], default="openai",
                   help="openai: any OpenAI-compatible endpoint; replay: a recorded run; console: a human")  # fmt: skip
    g.add_argument("--base-url", default=os.environ.get(ENV_BASE_URL),
                   help=f"endpoint root, e.g. http://127.0.0.1:8000/v1 (default ${ENV_BASE_URL})")  # fmt: skip
    g.add_argument("--model", default=os.environ.get(ENV_MODEL), help=f"served model name (default ${ENV_MODEL})")
    g.add_argument("--api-key-env", default=ENV_API_KEY,
                   help=f"variable holding the key (default {ENV_API_KEY}); never written anywhere")  # fmt: skip
    # string defaults go through type=float, so a malformed variable fails like a malformed option
    g.add_argument("--temperature", type=float, default=os.environ.get(ENV_TEMPERATURE) or "0",
                   help=f"sampling temperature (paper: 0; default ${ENV_TEMPERATURE}, else 0)")  # fmt: skip
    g.add_argument("--timeout", type=float, default=os.environ.get(ENV_TIMEOUT) or "120",
                   help=f"seconds per request (default ${ENV_TIMEOUT}, else 120)")  # fmt: skip
    g.add_argument("--retries", type=int, default=3, help="retries of a timed-out or failed request")
    g.add_argument("--backoff", type=float, default=2.0, help="first retry wait in seconds (doubles each retry)")
    g.add_argument("--max-corrections", type=int, default=3, help="follow-ups after an invalid or repeated answer")
    g.add_argument("--no-dedupe", action="store_true",
                   help="official behaviour: evaluate a repeated proposal again (spends budget)")  # fmt: skip
    g.add_argument("--replay", help="with --backend replay: a transcript, or a folder of trial-NNN.jsonl files")
    return p


def _chat(args: argparse.Namespace, trial: int) -> Any:
    from tenfold.nas.llm import ConsoleChat, OpenAIChat, ReplayChat

    if args.backend == "console":
        return ConsoleChat()
    if args.backend == "replay":
        if not args.replay:
            raise ValueError("--backend replay needs --replay TRANSCRIPT (or a folder of trial-NNN.jsonl files)")
        path = Path(args.replay)
        if path.is_dir():
            path = path / f"trial-{trial:03d}.jsonl"
        elif args.trials > 1:
            raise ValueError("--replay names one transcript: use --trials 1, or give the folder of trial transcripts")
        return ReplayChat(path)
    if not args.model:
        raise ValueError("GINAS needs a chat model: pass --model (and --base-url for a non-OpenAI endpoint) or set "
                         "TENFOLD_LLM_MODEL / TENFOLD_LLM_BASE_URL")  # fmt: skip
    return OpenAIChat(args.model, base_url=args.base_url, api_key_env=args.api_key_env,
                      temperature=args.temperature, timeout=args.timeout, retries=args.retries,
                      backoff_s=args.backoff)  # fmt: skip


def plot_curves(curves: dict[str, list[list[dict[str, Any]]]], path: Path, title: str = "") -> None:
    """Mean best-so-far reported accuracy and rank against iterations, one line per optimiser (the paper's figures).

    Trials with an empty curve (nothing evaluated) are left out and counted in the legend ("2 trials, 1 failed");
    an optimiser whose every trial failed still gets a legend entry saying so. A trial that stopped before the
    longest one keeps its last best-so-far value (nothing else was evaluated).

    Args:
        curves: optimiser name -> one :meth:`~tenfold.nas.result.SearchResult.curve` per trial.
        path: the PNG to write (atomically).
        title: figure title.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from tenfold.utils.checkpoint import atomic_write

    fig, (ax_acc, ax_rank) = plt.subplots(1, 2, figsize=(10, 4))
    has_ranks = False
    for name, trials in curves.items():
        done = [c for c in trials if c]
        failed = len(trials) - len(done)
        if not done:
            ax_acc.plot([], [], linestyle="none", marker="x", label=f"{name} (all {failed} trials failed)")
            continue
        length = max(len(c) for c in done)
        padded = [c + [c[-1]] * (length - len(c)) for c in done]
        steps = np.arange(1, length + 1)
        acc = np.array([[p["report_acc"] for p in c] for c in padded])
        label = f"{name} ({len(done)} trials" + (f", {failed} failed)" if failed else ")")
        ax_acc.plot(steps, acc.mean(0), marker="o", label=label)
        if len(done) > 1:
            ax_acc.fill_between(steps, acc.mean(0) - acc.std(0), acc.mean(0) + acc.std(0), alpha=0.15)
        if all(p["rank"] is not None for c in padded for p in c):
            has_ranks = True
            rank = np.array([[p["rank"] for p in c] for c in padded], dtype=float)
            ax_rank.plot(steps, np.median(rank, 0), marker="o", label=name)
    ax_acc.set_xlabel("iteration (architectures evaluated)")
    ax_acc.set_ylabel("best-so-far accuracy (%), mean over trials")
    ax_rank.set_xlabel("iteration (architectures evaluated)")
    ax_rank.set_ylabel("best-so-far rank, median over trials")
    if has_ranks:
        ax_rank.set_yscale("log")
        ax_rank.invert_yaxis()
    for ax in (ax_acc, ax_rank):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    if not has_ranks:  # real training has no ranks
        ax_rank.set_visible(False)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    with atomic_write(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def table_rows(summaries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The printed table: optimiser, trials, accuracy mean ± std, rank mean ± std and median.

    A ``failed trials`` column appears when some trial evaluated nothing; such trials are not in the statistics.
    """
    show_failed = any(s.get("failed_trials") for s in summaries)
    rows = []
    for s in summaries:
        row = {"optimizer": s["optimizer"], "trials": s["trials"], "budget": s["budget"]}
        if show_failed:
            row["failed trials"] = s.get("failed_trials", 0)
        if s["acc_mean"] is None:
            row["best acc (%)"] = "none: every trial failed"
        else:
            row["best acc (%)"] = f"{s['acc_mean']:.2f} ± {s['acc_std']:.2f}"
        if "rank_mean" in s:
            row["rank"] = f"{s['rank_mean']:.0f} ± {s['rank_std']:.0f}"
            row["median rank"] = f"{s['rank_median']:g}"
            row["best rank"] = s["best_rank"]
        rows.append(row)
    return rows


def _write_outputs(out: Path, space: Any, args: argparse.Namespace, trials: dict[str, list[Any]]) -> None:
    """Print the table and write ``summary.md``, ``results.json`` and ``best_so_far.png`` for ``trials``."""
    from tenfold.engine.demo import markdown_table
    from tenfold.nas.result import summarize, write_json
    from tenfold.utils.checkpoint import atomic_write

    summaries = [summarize(results) for results in trials.values() if results]
    rows = table_rows(summaries)
    optimum = space.best()[1] if hasattr(space, "best") else None
    header = f"{space.name}: budget {args.budget}, {args.trials} trial(s)"
    if optimum is not None:
        header += f"; best in the table {optimum.report_acc:.2f}% (rank 1 of {space.size})"
    failed = [f"{s['optimizer']}: {s['failed_trials']} of {s['trials']}" for s in summaries if s["failed_trials"]]
    text = f"{header}\n\n{markdown_table(rows)}"
    if failed:
        text += (
            f"\nFailed trials (no valid answer, left out of the statistics): {'; '.join(failed)}. See their "
            "transcripts.\n"
        )
    print(text)
    with atomic_write(out / "summary.md") as tmp:
        tmp.write_text(text)
    write_json(
        {"space": space.describe(), "budget": args.budget, "trials": args.trials, "seed": args.seed,
         "summary": summaries, "results": {k: [r.to_dict() for r in v] for k, v in trials.items()}},
        out / "results.json",
    )  # fmt: skip
    plot_curves({k: [r.curve() for r in v] for k, v in trials.items()}, out / "best_so_far.png", header)
    print(f"results: {out / 'results.json'}  plot: {out / 'best_so_far.png'}")


def search_main(argv: list[str]) -> int:
    """Run ``tenfold search`` with ``argv`` (the arguments after ``search``); returns the exit code.

    Returns:
        0, or 2 when the chat endpoint failed for good (the finished trials are written; rerun with ``--resume``).
    """
    from tenfold.nas.baselines import BASELINES
    from tenfold.nas.ginas import GINAS
    from tenfold.nas.llm import ChatError
    from tenfold.nas.spaces import load_space

    if _space_of(argv) == "scalenet":
        return scalenet_search_main(argv)
    args = _parser().parse_args(argv)
    optimizers = [o.strip() for o in args.optimizer.split(",") if o.strip()]
    unknown = [o for o in optimizers if o not in OPTIMIZERS]
    if unknown or not optimizers:
        raise ValueError(f"unknown optimizer(s) {unknown or args.optimizer!r}; expected some of {list(OPTIMIZERS)}")
    if args.budget < 1 or args.trials < 1:
        raise ValueError(f"--budget and --trials must be >= 1, got {args.budget} and {args.trials}")
    space = load_space(args.space, args.table, rank_mode=args.rank_mode)
    out = Path(args.out) if args.out else Path("runs") / time.strftime("search-%Y%m%d-%H%M%S")
    if out.exists() and not args.resume:
        raise FileExistsError(f"output folder {str(out)!r} exists; choose another --out, or pass --resume")
    if args.resume and not out.is_dir():
        raise FileNotFoundError(f"--resume: output folder {str(out)!r} does not exist")
    out.mkdir(parents=True, exist_ok=True)

    trials: dict[str, list[Any]] = {}
    failure = None
    for name in optimizers:
        trials[name] = []
        for t in range(args.trials):
            if name == "ginas":
                transcript = out / "transcripts" / f"trial-{t:03d}.jsonl"
                resume = args.resume and transcript.exists()
                try:
                    ginas = GINAS(space, _chat(args, t), budget=args.budget, max_corrections=args.max_corrections,
                                  dedupe=not args.no_dedupe, transcript=transcript, resume=resume)  # fmt: skip
                    result = ginas.run()
                except ChatError as err:
                    failure = (t, " ".join(str(err).split()))  # one line, whatever the server's error body holds
                    break
            else:
                result = BASELINES[name](space, args.budget, args.seed + t)
            trials[name].append(result)
            if name == "ginas":
                if result.records:
                    best = result.best()
                    print(f"ginas trial {t}: {len(result.records)} evaluations, best {best.report_acc:.2f}% "
                          f"(rank {best.rank}); {result.stats}")  # fmt: skip
                else:
                    print(f"ginas trial {t}: FAILED, no valid answer in {result.stats['rounds']} rounds; "
                          f"{result.stats}; see {out / 'transcripts' / f'trial-{t:03d}.jsonl'}")  # fmt: skip
        if failure is not None:
            break
    trials = {k: v for k, v in trials.items() if v}
    if trials:
        _write_outputs(out, space, args, trials)
    if failure is not None:
        t, message = failure
        finished = sum(len(v) for v in trials.values())
        where = f"written to {out}" if finished else "none written"
        print(f"tenfold search: the chat endpoint failed in ginas trial {t}: {message}. Finished trials: "
              f"{finished} ({where}). Fix the endpoint, then rerun the same command with --resume to continue "
              "from the transcripts.", file=sys.stderr)  # fmt: skip
        return 2
    return 0


def _space_of(argv: list[str]) -> str | None:
    for i, a in enumerate(argv):
        if a == "--space" and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith("--space="):
            return a.split("=", 1)[1]
    return None


def _scalenet_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tenfold search --space scalenet",
        description="ScaleNet's joint search (base GA alternating with a per-stage scaling grid) on a trained "
        "super-supernet, scored by the official proxy (BN batch statistics, 2 coupled calls summed).",
    )
    p.add_argument("--space", required=True, choices=["scalenet"])
    p.add_argument("--supernet", required=True, help="checkpoint of `tenfold fit` with ScaleNetSupernetTask")
    p.add_argument("--data", default="digits", choices=["digits", "builtin"], help="proxy set: its validation split")
    p.add_argument("--image-size", type=int, default=32, help="proxy images before resizing to each resolution")
    p.add_argument("--proxy-batches", type=int, default=4, help="proxy batches per candidate")
    p.add_argument("--batch-size", type=int, default=64, help="proxy batch size (official 64 per GPU)")
    p.add_argument("--flops-constraint", type=float,
                   help="base FLOPs target F0 in multiply-adds (default: the checkpoint space's; for the tiny "
                   "space without one, the median FLOPs of 200 random repaired bases)")  # fmt: skip
    p.add_argument("--pop-size", type=int, default=16, help="GA population (paper 64)")
    p.add_argument("--n-gens", type=int, default=6, help="GA generations per round (paper 40)")
    p.add_argument("--admm-iter", type=int, default=3, help="alternation rounds (paper 8)")
    p.add_argument("--n-init", type=int, default=8, help="random feasible bases of the initial strategy (paper 20)")
    p.add_argument("--seed", type=int, default=0, help="seed of the search")
    p.add_argument("--out", help="output folder (must not exist unless --resume; default runs/scalenet-search-<time>)")
    p.add_argument("--resume", action="store_true", help="continue the search state in --out")
    return p


def median_base_flops(space: Any, n: int = 200, seed: int = 0) -> float:
    """Median official FLOPs of ``n`` random repaired bases at stage 0 (the demo's F0 rule, spec section 7)."""
    import random
    import statistics

    from tenfold.nas.scalenet import check_basenet, official_flops

    rng = random.Random(seed)
    r0 = space.resolutions[0][0]
    flops = [
        official_flops(space, [*check_basenet(space, [rng.randint(0, c - 1) for c in space.block_choices()]), 1.0, r0])
        for _ in range(n)
    ]
    return float(statistics.median(flops))


def scalenet_search_main(argv: list[str]) -> int:
    """``tenfold search --space scalenet``: returns the exit code (0).

    Writes ``state.json`` (the resumable search state), ``results.json`` (best base, per-stage strategy, the
    scaled family with FLOPs and proxy scores, evaluation count) and ``summary.md`` into ``--out``. Under
    ``torchrun`` (``WORLD_SIZE > 1``) a gloo process group is started, every process runs the search and the
    candidates of each population / generation / grid are spread over the processes; rank 0 writes the files.
    """
    from dataclasses import replace

    import torch

    from tenfold.data.datamodules import ClassificationData
    from tenfold.engine.demo import markdown_table
    from tenfold.nas.result import write_json
    from tenfold.nas.scalenet import (
        evaluate_candidate,
        evaluate_candidates,
        official_flops,
        scale_basenet,
        scaling_values,
    )
    from tenfold.nas.scalenet_search import search
    from tenfold.nas.scalenet_task import load_supernet
    from tenfold.utils.checkpoint import atomic_write

    args = _scalenet_parser().parse_args(argv)
    if args.proxy_batches < 1 or args.batch_size < 1:
        raise ValueError(f"--proxy-batches and --batch-size must be >= 1, got {args.proxy_batches}, {args.batch_size}")
    out = Path(args.out) if args.out else Path("runs") / time.strftime("scalenet-search-%Y%m%d-%H%M%S")
    if out.exists() and not args.resume:
        raise FileExistsError(f"output folder {str(out)!r} exists; choose another --out, or pass --resume")
    if args.resume and not (out / "state.json").is_file():
        raise FileNotFoundError(f"--resume: no search state {str(out / 'state.json')!r}")
    dist = torch.distributed
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("gloo")
    rank = dist.get_rank() if dist.is_initialized() else 0
    supernet = load_supernet(args.supernet)
    space = supernet.space
    f0 = args.flops_constraint or space.flops_constraint or median_base_flops(space, seed=args.seed)
    space = replace(space, flops_constraint=f0, err_base=space.err_base or 0.1 * f0,
                    err_scale=space.err_scale or 0.2 * f0)  # fmt: skip
    supernet.space = space
    data = ClassificationData(dataset=args.data, image_size=args.image_size, eval_batch_size=args.batch_size,
                              batch_size=args.batch_size, augment="none")  # fmt: skip
    data.setup("validate")
    batches = []
    for images, labels, _ in data.val_dataloader():
        batches.append(data.on_after_batch_transfer((images, labels, None), 0))
        if len(batches) == args.proxy_batches:
            break
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    st = search(space, lambda e: evaluate_candidate(supernet, e, batches), out / "state.json",
                pop_size=args.pop_size, n_gens=args.n_gens, admm_iter=args.admm_iter, n_init=args.n_init,
                seed=args.seed, resume=args.resume, write_state=rank == 0,
                batch_score_fn=lambda es: evaluate_candidates(supernet, es, batches))  # fmt: skip
    seconds = time.perf_counter() - t0
    score, base = st["topk"][0]
    r0 = space.resolutions[0][0]
    family = [{"stage": 0, "encoding": [*base, 1.0, r0], "flops": official_flops(space, [*base, 1.0, r0]),
               "proxy_top1": evaluate_candidate(supernet, [*base, 1.0, r0], batches)}]  # fmt: skip
    for s in range(1, space.max_scaling_stage + 1):
        d_m, c_m, r = scaling_values(space, s, st["strategy"][str(s)])
        enc = scale_basenet(space, base, d_m, c_m, r)
        family.append({"stage": s, "d_m": d_m, "c_m": c_m, "resolution": r, "encoding": enc,
                       "flops": official_flops(space, enc), "target": f0 * 2**s,
                       "proxy_top1": evaluate_candidate(supernet, enc, batches)})  # fmt: skip
    if rank != 0:
        return 0
    result = {"space": "scalenet", "supernet": str(args.supernet), "flops_constraint": f0, "family_score": score,
              "base": base, "strategy": st["strategy"], "family": family, "evaluations": len(st["cache"]),
              "seconds": round(seconds, 2),
              "settings": {k: v for k, v in vars(args).items() if k != "resume"}}  # fmt: skip
    write_json(result, out / "results.json")
    rows = [{"stage": f["stage"], "c_m": f.get("c_m", 1.0), "d_m": f.get("d_m", 1.0),
             "resolution": f.get("resolution", r0), "MAdds (M)": f["flops"] / 1e6,
             "proxy top-1 (%)": f["proxy_top1"]} for f in family]  # fmt: skip
    text = (f"ScaleNet search: F0 {f0 / 1e6:.3g}M MAdds, family score {score:.2f}, {len(st['cache'])} proxy "
            f"evaluations, {seconds:.1f} s\n\n{markdown_table(rows)}")  # fmt: skip
    with atomic_write(out / "summary.md") as tmp:
        tmp.write_text(text)
    print(text)
    return 0
