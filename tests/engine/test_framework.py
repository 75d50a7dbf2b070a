"""Demo framework, run folders, optimiser schedule length, info and help."""

from __future__ import annotations

import pytest

from tenfold.cli import main
from tenfold.engine import demo as demo_mod
from tenfold.engine.demo import DemoResult, register_demo, run_demos
from tenfold.engine.rundir import ENV_RUN_DIR, resolve_run_dir


@pytest.fixture
def fake_demos(monkeypatch):
    monkeypatch.setattr(demo_mod, "_REGISTRY", {})
    monkeypatch.setattr(demo_mod, "DEMO_MODULES", ())

    @register_demo("good", budget_s=5, title="Good demo")
    def good(ctx):
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        path = ctx.out_dir / "curve.png"
        plt.plot([0, 1], [0, 1])
        plt.savefig(path)
        plt.close()
        return DemoResult(rows=[{"method": "a", "top-1": 51.25}, {"method": "b", "top-1": 60.5}], plots=[path],
                          notes="b beats a")  # fmt: skip

    @register_demo("broken", budget_s=5)
    def broken(ctx):
        raise RuntimeError("boom")


def test_report_has_tables_plots_and_survives_a_failing_demo(fake_demos, tmp_path):
    report = run_demos(out=tmp_path / "rep")
    text = report.read_text()
    assert "| method | top-1 |" in text and "| b | 60.5 |" in text
    assert "![curve](good/curve.png)" in text and (tmp_path / "rep" / "good" / "curve.png").is_file()
    assert "| broken | failed |" in text and "boom" in text
    assert "| good | ok |" in text


def test_demo_selection_and_errors(fake_demos, tmp_path):
    text = run_demos(only=["good"], out=tmp_path / "one").read_text()
    assert "broken" not in text
    with pytest.raises(ValueError, match="nope"):
        run_demos(only=["nope"], out=tmp_path / "two")
    with pytest.raises(FileExistsError):
        run_demos(out=tmp_path / "one")  # never overwrite an existing report folder


def test_demo_threads_option_sets_and_restores_the_thread_count(monkeypatch, tmp_path):
    import torch

    monkeypatch.setattr(demo_mod, "_REGISTRY", {})
    monkeypatch.setattr(demo_mod, "DEMO_MODULES", ())
    seen = {}

    @register_demo("one_thread", budget_s=5, threads=1)
    def one_thread(ctx):
        seen["threads"] = torch.get_num_threads()
        raise RuntimeError("fails after reading the count")

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        run_demos(out=tmp_path / "rep", jobs=1)
        assert seen["threads"] == 1
        assert torch.get_num_threads() == 2  # restored although the demo raised
    finally:
        torch.set_num_threads(before)
    with pytest.raises(ValueError, match="threads must be >= 1, got 0"):
        register_demo("zero", threads=0)


def test_run_dir_rules(tmp_path, monkeypatch):
    monkeypatch.delenv(ENV_RUN_DIR, raising=False)
    first, ckpt = resolve_run_dir(tmp_path, "tiny", None, None)
    second, _ = resolve_run_dir(tmp_path, "tiny", None, None)
    assert first != second and first.parent == second.parent == tmp_path / "tiny" and ckpt is None
    with pytest.raises(FileNotFoundError, match="cannot resume"):
        resolve_run_dir(tmp_path, "tiny", None, "last")
    (second / "checkpoints").mkdir()
    (second / "checkpoints" / "last.ckpt").write_bytes(b"x")
    found, ckpt = resolve_run_dir(tmp_path, "tiny", None, "last")
    assert found == second and ckpt == str(second / "checkpoints" / "last.ckpt")
    (first / "file").write_text("x")
    with pytest.raises(FileExistsError, match="already exists"):
        resolve_run_dir(tmp_path, "tiny", first, None)
    # torchrun / SLURM: every process names the folder after the job id
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    job, _ = resolve_run_dir(tmp_path, "tiny", None, None)
    assert job.name == "job-4242"


def test_help_and_info(capsys):
    from tenfold.cli import COMMANDS, LIGHTNING_HELP

    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    listed = [line.split()[0] for line in out.splitlines() if line.startswith("  ") and not line.startswith("   ")]
    assert listed == [*LIGHTNING_HELP, *COMMANDS]  # every command once, in table order
    for command in COMMANDS:  # and each one it lists answers --help
        with pytest.raises(SystemExit) as exc:
            main([command, "--help"])
        assert exc.value.code == 0, command
    capsys.readouterr()
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "torch" in out and "lightning" in out and "torch threads" in out
    assert main(["bogus"]) == 2


def test_fit_help_lists_recipe_keys(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["fit", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "--ckpt_path" in out and "--run_dir" in out and "--checkpoint.every_n_train_steps" in out


def test_recipe_run_names_keep_the_family():
    from tenfold.engine.rundir import recipe_run_name

    assert recipe_run_name("configs/lightvit/tiny.yaml") == "lightvit/tiny"
    assert recipe_run_name("/abs/repo/configs/speech/tiny.yaml") == "speech/tiny"
    assert recipe_run_name("configs/classification/tiny.yaml") != recipe_run_name("configs/lightvit/tiny.yaml")
    assert recipe_run_name("/home/me/my_recipe.yaml") == "my_recipe"


def test_parallel_demos_keep_groups_exclusives_order_and_failures(monkeypatch, tmp_path):
    import os
    import re
    import sys

    monkeypatch.setattr(demo_mod, "_REGISTRY", {})
    monkeypatch.setattr(demo_mod, "DEMO_MODULES", ())
    sys.modules.pop("demo_workers", None)
    import demo_workers  # noqa: F401  (registers its demos into the fresh registry)

    text = run_demos(out=tmp_path / "par", jobs=2).read_text()
    pids = {name: int(pid) for name, pid in re.findall(r"\| (first|second|solo|other) \| (\d+) \|", text)}
    assert set(pids) == {"first", "second", "solo", "other"}
    assert pids["solo"] == os.getpid()  # exclusive: run alone, in this process
    assert pids["first"] == pids["second"] != os.getpid()  # a group runs in one worker, in order ...
    assert f"| second | {pids['second']} | 42 |" in text  # ... and shares ctx.shared
    assert pids["other"] != os.getpid()
    assert "| crash | failed |" in text and "worker boom" in text
    order = [text.index(f"## {t}") for t in ("First of a group", "Second of a group", "Exclusive demo",
                                            "Parallel demo", "Failing demo")]  # fmt: skip
    assert order == sorted(order)  # the report keeps registration order
    with pytest.raises(ValueError, match="jobs must be >= 1"):
        run_demos(out=tmp_path / "zero", jobs=0)
