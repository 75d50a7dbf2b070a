"""``tenfold enhance NOISY OUT --ckpt CKPT``: enhance a file or a folder of files with a trained TaylorSENet."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

__all__ = ["enhance_main", "run_checkpoint"]

_AUDIO = (".wav", ".flac")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tenfold enhance",
        description="Enhance noisy speech with TaylorSENet. Any sample rate (resampled to 16 kHz and back); long "
        "files are processed in overlapping chunks so memory stays bounded; prints the real-time factor.",
    )
    p.add_argument("noisy", help="an audio file (.wav/.flac) or a folder of them")
    p.add_argument("out", help="output file, or output folder when NOISY is a folder (created; files are never "
                               "overwritten)")  # fmt: skip
    p.add_argument("--ckpt", required=True, help="a model file of `tenfold demo` (e.g. runs/demo-*/taylorsenet/"
                                                  "order3/model.pt), a tenfold training checkpoint, a run folder (its "
                                                  "best checkpoint by the monitored metric when it kept one, else "
                                                  "last.ckpt) or an official TaylorSENet state dict")  # fmt: skip
    p.add_argument("--power", type=float, default=None,
                   help="compression exponent the model was trained with; default: the checkpoint's own (tenfold "
                        "checkpoints save it), else 0.5 as the official recipe")  # fmt: skip
    p.add_argument(
        "--config",
        choices=("paper", "small"),
        default=None,
        help="architecture of an official state dict, which does not carry one (default: paper); demo model files "
        "and tenfold checkpoints carry theirs and need no option",
    )
    p.add_argument("--order-num", type=int, default=None,
                   help="order Q of an official state dict (default: the configuration's, 3)")  # fmt: skip
    p.add_argument("--chunk-seconds", type=float, default=10.0, help="chunk length in seconds (memory bound)")
    p.add_argument("--overlap-seconds", type=float, default=1.0, help="cross-faded overlap between chunks")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--backend", choices=("eager", "compile", "onnx"), default="eager",
                   help="offline network backend: eager PyTorch, torch.compile (inductor; compiles at the first "
                        "chunk, cached by torch) or ONNX Runtime (torch.onnx export; needs onnxruntime)")  # fmt: skip
    p.add_argument("--compile", action="store_true", help="shorthand for --backend compile")
    p.add_argument("--stream", action="store_true",
                   help="frame-by-frame streaming inference, one 10-ms hop per step with cached states (a "
                        "causal model: norm_type cLN or BN, is_causal); prints the per-frame time and the "
                        "latency")  # fmt: skip
    p.add_argument("--stream-scale", type=float, default=None,
                   help="with --stream: a fixed variance-normalisation scale, as a live stream needs (default: each "
                        "file's own sqrt(L / sum x^2), as offline)")  # fmt: skip
    return p


def _check_modes(args: argparse.Namespace) -> str:
    """The backend the flags ask for; raises ValueError on a contradiction (named)."""
    backend = args.backend
    if args.compile:
        if backend not in ("eager", "compile"):
            raise ValueError(f"--compile contradicts --backend {backend}")
        backend = "compile"
    if args.stream and backend != "eager":
        raise ValueError(f"--stream runs the model eagerly, frame by frame; it cannot use --backend {backend}")
    if args.stream_scale is not None and not args.stream:
        raise ValueError("--stream-scale applies to --stream only")
    if args.stream_scale is not None and not args.stream_scale > 0:
        raise ValueError(f"--stream-scale must be > 0, got {args.stream_scale}")
    return backend


def run_checkpoint(folder: str | Path) -> tuple[Path, str]:
    """The checkpoint of a run folder (or of the latest run in a folder of runs) to enhance with, and why.

    The best checkpoint by the monitored metric (a recipe's ``checkpoint: {monitor: val/si_snr, mode: max}``, the
    official best-dev-model rule) when the run kept one; otherwise ``last.ckpt``. The best file is found through the
    ModelCheckpoint state saved in ``last.ckpt`` (by its name in the same folder if the run was moved).

    Raises:
        FileNotFoundError: the folder holds no run with a ``checkpoints/last.ckpt``.
    """
    from tenfold.engine.rundir import last_checkpoint
    from tenfold.utils.checkpoint import load_checkpoint

    last = last_checkpoint(folder)
    states = load_checkpoint(last).get("callbacks") or {}
    for key, state in states.items():
        if not key.startswith("ModelCheckpoint") or not isinstance(state, dict):
            continue
        monitor, best = state.get("monitor"), state.get("best_model_path")
        if not monitor or not best:
            continue
        for candidate in (Path(best), last.parent / Path(best).name):
            if candidate.is_file() and candidate.resolve() != last.resolve():
                score = state.get("best_model_score")
                value = f" = {float(score):.4g}" if score is not None else ""
                return candidate, f"best checkpoint of the run by {monitor}{value}"
    return last, "last checkpoint of the run: it kept no best checkpoint by a monitored metric"


def _power(given: float | None, trained: float | None) -> tuple[float, str]:
    """The compression exponent to enhance with and where it comes from (``--power`` wins over the checkpoint)."""
    if given is not None:
        if not given > 0:
            raise ValueError(f"--power must be > 0, got {given}")
        if trained is not None and float(trained) != given:
            return given, f"--power; note: the checkpoint was trained with {float(trained):g}"
        return given, "--power"
    if trained is not None:
        return float(trained), "from the checkpoint's hyper-parameters"
    return 0.5, "default of the official recipe; the checkpoint does not say, pass --power otherwise"


def enhance_main(argv: list[str]) -> int:
    """Run ``tenfold enhance`` with ``argv`` (the words after ``enhance``); returns the exit code.

    Errors (missing input, existing output, bad checkpoint) print one line to stderr and return 2.
    """
    args = _parser().parse_args(argv)
    import torch

    from tenfold.speech.backends import inference_network
    from tenfold.speech.enhance import enhance_file, load_enhancement_model

    if args.threads is not None:
        if args.threads < 1:
            print(f"tenfold enhance: error: --threads must be >= 1, got {args.threads}", file=sys.stderr)
            return 2
        torch.set_num_threads(args.threads)
    try:
        backend = _check_modes(args)
        noisy, out = Path(args.noisy), Path(args.out)
        if noisy.is_dir():
            jobs = [(p, out / p.name) for p in sorted(noisy.iterdir()) if p.suffix.lower() in _AUDIO]
            if not jobs:
                raise FileNotFoundError(f"folder {str(noisy)!r} holds no .wav/.flac files")
            clashes = [str(o) for _, o in jobs if o.exists()]
            if clashes:
                raise FileExistsError(f"{len(clashes)} output file(s) exist already, e.g. {clashes[:3]}")
            out.mkdir(parents=True, exist_ok=True)
        elif noisy.is_file():
            if out.is_dir():
                out = out / noisy.name
            jobs = [(noisy, out)]
        else:
            raise FileNotFoundError(f"input {str(noisy)!r} does not exist")
        if Path(args.ckpt).is_dir():
            ckpt, why = run_checkpoint(args.ckpt)
            print(f"checkpoint: {ckpt} ({why})")
            args.ckpt = str(ckpt)
        model, hparams, about = load_enhancement_model(args.ckpt, args.config, args.order_num)
        print(f"architecture: {about}")
        power, why = _power(args.power, hparams.get("power"))
        print(f"compression power {power:g} ({why})")
        if args.stream:
            latency = model.stream(power=power).algorithmic_latency_ms  # fails here, naming them, if non-causal
            scale = "each file's own" if args.stream_scale is None else f"{args.stream_scale:g}"
            print(f"streaming: one 10-ms hop per step, algorithmic latency {latency:g} ms (window, no look-ahead), "
                  f"variance scale {scale}")  # fmt: skip
            net = model
        else:
            net = inference_network(model, backend)
            print(f"backend: {backend}")
        total_audio = total_time = 0.0
        start = time.perf_counter()
        for src, dst in jobs:
            stats = enhance_file(
                net, src, dst, chunk_seconds=args.chunk_seconds, overlap_seconds=args.overlap_seconds, power=power,
                stream=args.stream, stream_scale=args.stream_scale,
            )  # fmt: skip
            total_audio += stats.audio_s
            total_time += stats.process_s
            frame = "" if stats.frame_ms is None else f", {stats.frame_ms:.2f} ms per 10-ms frame"
            print(f"{src} -> {dst}: {stats.audio_s:.1f} s of audio in {stats.process_s:.2f} s (RTF {stats.rtf:.3f}"
                  f"{frame})")  # fmt: skip
    except (FileNotFoundError, FileExistsError, ValueError, ImportError) as err:
        print(f"tenfold enhance: error: {err}", file=sys.stderr)
        return 2
    threads = torch.get_num_threads()
    print(
        f"enhanced {len(jobs)} file(s), {total_audio:.1f} s of audio in {time.perf_counter() - start:.2f} s: "
        f"real-time factor {total_time / max(total_audio, 1e-9):.3f} ({threads} thread(s))"
    )
    return 0
