"""Shared helpers: run the real `tenfold` command line in a subprocess, as a user would."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "classification" / "tiny.yaml"
HELPERS = Path(__file__).resolve().parent / "helpers"

# fixtures shared by a family's tests live in tests/helpers and load here as plugins (a conftest.py per folder
# would clash: the test folders are not packages, so every conftest would be the module "conftest")
sys.path.insert(0, str(HELPERS))
pytest_plugins = ["nas_fixtures"]

# A fast variant of the tiny recipe for engine tests: 512 training images, batches of 32 (16 steps an epoch).
FAST = [
    "--config", str(TINY),
    "--model.init_args.model", "resnet8",
    "--data.init_args.train_size", "512",
    "--data.init_args.val_size", "128",
    "--data.init_args.test_size", "128",
    "--data.init_args.batch_size", "32",
    "--data.init_args.eval_batch_size", "64",
    "--trainer.enable_progress_bar", "false",
    "--trainer.enable_model_summary", "false",
    "--trainer.num_sanity_val_steps", "0",
]  # fmt: skip


def pytest_configure(config):
    """Under pytest-xdist (``-n 2``, see pyproject's addopts) each worker computes on one torch thread.

    The workers already fill the cores, so a second thread per worker would only oversubscribe them. A test that
    needs another count sets it and restores it (``one_thread`` and the thread tests do so).
    """
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        torch.set_num_threads(1)


def shared_path(relative: str) -> Path:
    """A file or folder of the project's shared data (``../shared``: specs' key lists, NAS benchmark tables).

    Looked up in ``$TENFOLD_SHARED``, then ``<repo>/../shared``, then ``/work/shared`` (CI runs a clean clone in a
    temporary folder, beside which there is no ``shared``). Fails the test, naming where it looked, when absent.
    """
    roots = [Path(os.environ["TENFOLD_SHARED"])] if os.environ.get("TENFOLD_SHARED") else []
    roots += [REPO.parent / "shared", Path("/work/shared")]
    for root in roots:
        if (root / relative).exists():
            return root / relative
    pytest.fail(f"shared data {relative!r} not found under {[str(r) for r in roots]}; set TENFOLD_SHARED")


@pytest.fixture(scope="module")
def one_thread():
    """Run a module's tests on one torch thread: tiny CPU kernels are faster so, above all on a loaded machine."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def run_tenfold(
    args: list[str], cwd: Path, *, threads: int = 1, check: bool = True, timeout: float = 300
) -> subprocess.CompletedProcess:
    """Run `python -m tenfold.cli ARGS` in ``cwd`` with a fixed thread count (runs compared bit-for-bit must agree)."""
    env = {k: v for k, v in os.environ.items() if k != "TENFOLD_RUN_DIR"}
    env.update(
        OMP_NUM_THREADS=str(threads),
        MKL_NUM_THREADS=str(threads),
        PYTHONPATH=os.pathsep.join([str(HELPERS), env.get("PYTHONPATH", "")]),
        PYTHONWARNINGS="ignore",
    )
    proc = subprocess.run(
        [sys.executable, "-m", "tenfold.cli", *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    if check and proc.returncode != 0:
        pytest.fail(
            f"tenfold {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
        )
    return proc
