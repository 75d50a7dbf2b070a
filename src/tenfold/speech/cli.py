"""``tenfold enhance NOISY OUT --ckpt CKPT``: enhance a file or a folder of files with a trained TaylorSENet."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

__all__ = ["enhance_main"]

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
    p.add_argument("--ckpt", required=True, help="a tenfold training checkpoint (or its run folder's last.ckpt) or "
                                                  "an official TaylorSENet state dict")  # fmt: skip
    p.add_argument(
        "--config",
        choices=("paper", "small"),
        default=None,
        help="architecture of an official state dict without saved hyper-parameters (default: paper)",
    )
    p.add_argument("--chunk-seconds", type=float, default=10.0, help="chunk length in seconds (memory bound)")
    p.add_argument("--overlap-seconds", type=float, default=1.0, help="cross-faded overlap between chunks")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    return p


def enhance_main(argv: list[str]) -> int:
    """Run ``tenfold enhance`` with ``argv`` (the words after ``enhance``); returns the exit code.

    Errors (missing input, existing output, bad checkpoint) print one line to stderr and return 2.
    """
    args = _parser().parse_args(argv)
    import torch

    from tenfold.speech.enhance import enhance_file
    from tenfold.speech.taylorsenet import PAPER_CONFIG, SMALL_CONFIG, load_taylorsenet

    if args.threads is not None:
        if args.threads < 1:
            print(f"tenfold enhance: error: --threads must be >= 1, got {args.threads}", file=sys.stderr)
            return 2
        torch.set_num_threads(args.threads)
    try:
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
            from tenfold.engine.rundir import last_checkpoint

            args.ckpt = str(last_checkpoint(args.ckpt))
        arch = {"small": SMALL_CONFIG, "paper": PAPER_CONFIG}.get(args.config or "", {})
        model = load_taylorsenet(args.ckpt, **arch)
        total_audio = total_time = 0.0
        start = time.perf_counter()
        for src, dst in jobs:
            stats = enhance_file(
                model, src, dst, chunk_seconds=args.chunk_seconds, overlap_seconds=args.overlap_seconds
            )
            total_audio += stats.audio_s
            total_time += stats.process_s
            print(f"{src} -> {dst}: {stats.audio_s:.1f} s of audio in {stats.process_s:.2f} s (RTF {stats.rtf:.3f})")
    except (FileNotFoundError, FileExistsError, ValueError) as err:
        print(f"tenfold enhance: error: {err}", file=sys.stderr)
        return 2
    threads = torch.get_num_threads()
    print(
        f"enhanced {len(jobs)} file(s), {total_audio:.1f} s of audio in {time.perf_counter() - start:.2f} s: "
        f"real-time factor {total_time / max(total_audio, 1e-9):.3f} ({threads} thread(s))"
    )
    return 0
