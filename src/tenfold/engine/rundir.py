"""Where a run writes: one fresh folder per run, never overwritten; resuming finds the right one."""

from __future__ import annotations

import os
import time
from pathlib import Path

__all__ = ["ENV_RUN_DIR", "is_launcher_rank_zero", "last_checkpoint", "resolve_run_dir"]

#: Set by the launching process so that DDP children started by Lightning (or torchrun workers on one node) agree on
#: the run folder.
ENV_RUN_DIR = "TENFOLD_RUN_DIR"


def is_launcher_rank_zero() -> bool:
    """True in the process that should create folders (before torch.distributed is initialised)."""
    for key in ("RANK", "SLURM_PROCID", "LOCAL_RANK"):
        if key in os.environ:
            return int(os.environ[key]) == 0 and int(os.environ.get("NODE_RANK", "0")) == 0
    return True


def _job_id() -> str | None:
    for key in ("TORCHELASTIC_RUN_ID", "SLURM_JOB_ID"):
        value = os.environ.get(key)
        if value and value != "none":
            return f"job-{value}"
    return None


def _latest_resumable(parent: Path) -> Path | None:
    candidates = [d for d in parent.iterdir() if (d / "checkpoints" / "last.ckpt").is_file()] if parent.is_dir() else []
    return max(candidates, key=lambda d: (d / "checkpoints" / "last.ckpt").stat().st_mtime) if candidates else None


def last_checkpoint(folder: str | Path) -> Path:
    """The ``last.ckpt`` of a run folder, or of the most recent run in a folder of runs (``runs/<recipe>``).

    Raises:
        FileNotFoundError: no such checkpoint.
    """
    folder = Path(folder)
    direct = folder / "checkpoints" / "last.ckpt"
    if direct.is_file():
        return direct
    run = _latest_resumable(folder)
    if run is None:
        raise FileNotFoundError(f"no checkpoints/last.ckpt in {str(folder)!r} or in its run folders; train it first")
    return run / "checkpoints" / "last.ckpt"


def recipe_run_name(config: str | Path) -> str:
    """The run group of a recipe file: ``<family>/<stem>`` for ``configs/<family>/<stem>.yaml``, else the stem.

    Several families have a ``tiny.yaml``; keeping the family apart means ``--ckpt_path last`` never resumes another
    family's run.
    """
    path = Path(config)
    return f"{path.parent.name}/{path.stem}" if path.parent.parent.name == "configs" else path.stem


def resolve_run_dir(
    runs_root: str | Path, name: str, run_dir: str | Path | None, ckpt_path: str | None
) -> tuple[Path, str | None]:
    """Choose the run folder and resolve ``ckpt_path="last"``.

    Rules:
        * ``run_dir`` given and ``ckpt_path="last"``: resume from ``run_dir/checkpoints/last.ckpt``.
        * ``run_dir`` given otherwise: it must not exist yet (runs are never overwritten).
        * no ``run_dir`` and ``ckpt_path="last"``: resume the most recent run of ``runs_root/name`` that has a
          ``last.ckpt``.
        * no ``run_dir`` otherwise: a new ``runs_root/name/<YYYYmmdd-HHMMSS>`` (or ``job-<id>`` under torchrun /
          SLURM, so every node agrees), with a numeric suffix if taken.

    Returns:
        The run folder and the checkpoint path to pass to the trainer.

    Raises:
        FileExistsError: ``run_dir`` exists and this is not a resume.
        FileNotFoundError: ``ckpt_path="last"`` but there is no checkpoint to resume.
    """
    inherited = os.environ.get(ENV_RUN_DIR)
    if inherited:
        path = Path(inherited)
        if ckpt_path == "last":
            ckpt_path = str(path / "checkpoints" / "last.ckpt")
        return path, ckpt_path
    parent = Path(runs_root) / name
    if run_dir is not None:
        path = Path(run_dir)
        if ckpt_path == "last":
            last = path / "checkpoints" / "last.ckpt"
            if not last.is_file():
                raise FileNotFoundError(f"cannot resume: {str(last)!r} does not exist")
            return path, str(last)
        if path.exists() and any(path.iterdir()) and is_launcher_rank_zero():
            raise FileExistsError(
                f"run folder {str(path)!r} already exists; choose another --run_dir or resume it with --ckpt_path last"
            )
        return path, ckpt_path
    if ckpt_path == "last":
        found = _latest_resumable(parent)
        if found is None:
            raise FileNotFoundError(
                f"cannot resume: no run under {str(parent)!r} has checkpoints/last.ckpt; pass --run_dir"
            )
        return found, str(found / "checkpoints" / "last.ckpt")
    stem = _job_id() or time.strftime("%Y%m%d-%H%M%S")
    path = parent / stem
    if is_launcher_rank_zero():
        parent.mkdir(parents=True, exist_ok=True)
        suffix = 0
        while True:
            try:
                path.mkdir()
                break
            except FileExistsError:
                if stem.startswith("job-"):
                    raise FileExistsError(
                        f"run folder {str(path)!r} already exists; resume it with --ckpt_path last"
                    ) from None
                suffix += 1
                path = parent / f"{stem}-{suffix}"
    return path, ckpt_path
