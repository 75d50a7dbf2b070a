"""``tenfold search`` (``search_main``): baselines, GINAS over HTTP with per-trial transcripts, replay, errors."""

from __future__ import annotations

import json

import pytest

from tenfold.nas.cli import search_main
from tenfold.nas.llm import ENV_MODEL, ConsoleChat, Transcript, chat_from_env


def test_baselines_table_results_and_plot(tables, tmp_path, capsys):
    out = tmp_path / "run"
    code = search_main(
        [
            "--space",
            "nas-bench-macro",
            "--table",
            str(tables / "nas_bench_macro_cifar10.json"),
            "--optimizer",
            "random,evolution",
            "--budget",
            "10",
            "--trials",
            "3",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "| random | 3 | 10 |" in printed and "| evolution | 3 | 10 |" in printed
    assert "best in the table 93.13%" in printed
    with open(tables / "nas_bench_macro_cifar10.json") as f:
        table = json.load(f)
    data = json.loads((out / "results.json").read_text())
    for trial in data["results"]["random"]:
        assert trial["evaluations"] == 10 and len({r["key"] for r in trial["records"]}) == 10
        best_acc = max(table[r["key"]]["mean_acc"] for r in trial["records"])
        assert trial["best"]["report_acc"] == best_acc
        assert [p["report_acc"] for p in trial["curve"]] == sorted(p["report_acc"] for p in trial["curve"])
    means = [sum(t["best"]["report_acc"] for t in data["results"][o]) / 3 for o in ("random", "evolution")]
    assert [s["acc_mean"] for s in data["summary"]] == pytest.approx(means)
    assert (out / "best_so_far.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "summary.md").read_text().startswith("nas-bench-macro: budget 10, 3 trial(s)")
    with pytest.raises(FileExistsError, match="exists"):
        search_main(["--space", "nas-bench-macro", "--table", str(tables), "--optimizer", "random", "--out", str(out)])


def test_ginas_trials_over_http_then_replay(tables, chat_server, tmp_path, monkeypatch):
    monkeypatch.delenv(ENV_MODEL, raising=False)
    out = tmp_path / "ginas"
    script = [
        {"reply": "[64, 64, 64, 128, 128, 128, 128]"},
        {"reply": "[4, 4, 4, 4, 4, 4, 4]"},
        {"reply": "[128, 64, 64, 128, 128, 128, 128]"},
        {"reply": "```\n[64, 128, 64, 128, 128, 128, 128]\n```"},
    ]
    with chat_server(script) as server:
        search_main(
            [
                "--space",
                "channel-bench-resnet",
                "--table",
                str(tables),
                "--optimizer",
                "ginas",
                "--budget",
                "2",
                "--trials",
                "2",
                "--out",
                str(out),
                "--base-url",
                server.base_url,
                "--model",
                "fake",
                "--timeout",
                "2",
                "--retries",
                "0",
            ]
        )
        assert len(server.requests) == 4
    with open(tables / "channel_bench_macro_resnet_cifar10.json") as f:
        table = json.load(f)
    data = json.loads((out / "results.json").read_text())
    keys = [[r["key"] for r in t["records"]] for t in data["results"]["ginas"]]
    assert keys == [["1111111", "4444444"], ["2111111", "1211111"]]
    assert data["results"]["ginas"][1]["best"]["report_acc"] == max(table["2111111"]["mean"], table["1211111"]["mean"])
    for t in range(2):
        records = Transcript.read(out / "transcripts" / f"trial-{t:03d}.jsonl")
        assert [r["type"] for r in records].count("exchange") == 2
    replay = tmp_path / "replay"
    search_main(
        [
            "--space",
            "channel-bench-resnet",
            "--table",
            str(tables),
            "--optimizer",
            "ginas",
            "--budget",
            "2",
            "--trials",
            "2",
            "--out",
            str(replay),
            "--backend",
            "replay",
            "--replay",
            str(out / "transcripts"),
        ]
    )
    again = json.loads((replay / "results.json").read_text())
    assert again["results"] == data["results"] and again["summary"] == data["summary"]
    # --resume with a larger budget: the recorded rounds are replayed, only the new ones reach the model
    more = [{"reply": "[256, 64, 64, 128, 128, 128, 128]"}, {"reply": "[64, 64, 256, 128, 128, 128, 128]"}]
    with chat_server(more) as server:
        search_main(["--space", "channel-bench-resnet", "--table", str(tables), "--optimizer", "ginas",
                     "--budget", "3", "--trials", "2", "--out", str(out), "--resume", "--base-url", server.base_url,
                     "--model", "fake", "--timeout", "2", "--retries", "0"])  # fmt: skip
        assert len(server.requests) == 2
        first = server.requests[0]["body"]["messages"][1]["content"]
        assert "[64, 64, 64, 128, 128, 128, 128]: accuracy" in first
        assert "[256, 256, 256, 512, 512, 512, 512]: accuracy" in first
    resumed = json.loads((out / "results.json").read_text())
    keys = [[r["key"] for r in t["records"]] for t in resumed["results"]["ginas"]]
    assert keys == [["1111111", "4444444", "4111111"], ["2111111", "1211111", "1141111"]]


def test_ginas_needs_a_model(tables, tmp_path, monkeypatch):
    monkeypatch.delenv(ENV_MODEL, raising=False)
    with pytest.raises(ValueError, match="GINAS needs a chat model"):
        search_main(
            ["--space", "nas-bench-macro", "--table", str(tables), "--optimizer", "ginas", "--out", str(tmp_path / "x")]
        )
    with pytest.raises(ValueError, match="unknown optimizer"):
        search_main(
            ["--space", "nas-bench-macro", "--table", str(tables), "--optimizer", "bayes", "--out", str(tmp_path / "y")]
        )


def test_chat_from_env_and_console():
    assert chat_from_env({}) is None
    chat = chat_from_env(
        {ENV_MODEL: "llama3.1", "TENFOLD_LLM_BASE_URL": "http://127.0.0.1:9/v1", "TENFOLD_LLM_TEMPERATURE": "1"}
    )
    assert (chat.model, chat.base_url, chat.temperature) == ("llama3.1", "http://127.0.0.1:9/v1", 1.0)
    lines = iter(["I think", "[1, 2, 0]", ""])
    shown = []
    console = ConsoleChat(input_fn=lambda prompt: next(lines), print_fn=shown.append)
    reply = console.complete([{"role": "system", "content": "S"}, {"role": "user", "content": "U"}])
    assert reply.content == "I think\n[1, 2, 0]" and shown == ["--- system ---\nS", "--- user ---\nU"]


def test_transcript_never_overwrites_and_redacts(tmp_path):
    path = tmp_path / "t.jsonl"
    transcript = Transcript(path, secrets=("hunter2",))
    transcript.write({"type": "exchange", "reply": "the key is hunter2"})
    assert "hunter2" not in path.read_text() and "***" in path.read_text()
    with pytest.raises(FileExistsError, match="resume"):
        Transcript(path)
    with pytest.raises(FileNotFoundError):
        Transcript(tmp_path / "missing.jsonl", resume=True)


def _ginas_args(tables, out, base_url, *extra):
    return ["--space", "channel-bench-resnet", "--table", str(tables), "--out", str(out), "--base-url", base_url,
            "--model", "fake", "--timeout", "2", "--backoff", "0", *extra]  # fmt: skip


def test_a_failed_trial_is_reported_not_fatal(tables, chat_server, tmp_path, monkeypatch, capsys):
    import matplotlib.pyplot as plt

    monkeypatch.setenv("TENFOLD_LLM_TEMPERATURE", "0.7")  # the default of --temperature, as in chat_from_env
    figures = []
    monkeypatch.setattr(plt, "close", figures.append)  # keep the figure to read its legend
    out = tmp_path / "run"
    # trial 0: two rounds (2 x budget) without a valid answer; trial 1: a valid answer at once
    script = [{"reply": "no idea"}, {"reply": "still [1, 2]"}, {"reply": "[64, 64, 64, 128, 128, 128, 128]"}]
    with chat_server(script) as server:
        code = search_main(_ginas_args(tables, out, server.base_url, "--optimizer", "ginas,random", "--budget", "1",
                                       "--trials", "2", "--max-corrections", "0", "--retries", "0"))  # fmt: skip
        assert len(server.requests) == 3 and server.requests[0]["body"]["temperature"] == 0.7
    assert code == 0
    printed = capsys.readouterr().out
    assert "ginas trial 0: FAILED" in printed
    with open(tables / "channel_bench_macro_resnet_cifar10.json") as f:
        table = json.load(f)
    data = json.loads((out / "results.json").read_text())
    ginas, rnd = data["summary"]
    assert (ginas["trials"], ginas["failed_trials"]) == (2, 1) and (rnd["trials"], rnd["failed_trials"]) == (2, 0)
    assert ginas["acc_mean"] == table["1111111"]["mean"] and ginas["acc_std"] == 0.0
    assert [t["evaluations"] for t in data["results"]["ginas"]] == [0, 1]
    summary = (out / "summary.md").read_text()
    assert "| optimizer | trials | budget | failed trials |" in summary and "ginas: 1 of 2" in summary
    assert (out / "best_so_far.png").read_bytes()[:4] == b"\x89PNG"
    labels = [t.get_text() for t in figures[-1].axes[0].get_legend().get_texts()]
    assert labels == ["ginas (1 trials, 1 failed)", "random (2 trials)"]


def test_endpoint_failure_keeps_finished_trials_and_resumes(tables, chat_server, tmp_path, capsys):
    out = tmp_path / "run"
    script = [{"reply": "[64, 64, 64, 128, 128, 128, 128]"}] + [{"status": 503}] * 2
    with chat_server(script) as server:
        code = search_main(_ginas_args(tables, out, server.base_url, "--optimizer", "ginas", "--budget", "1",
                                       "--trials", "2", "--retries", "1"))  # fmt: skip
        assert len(server.requests) == 3
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "chat endpoint failed in ginas trial 1" in err and "HTTP 503" in err and server.base_url in err
    assert "--resume" in err
    data = json.loads((out / "results.json").read_text())
    assert [[r["key"] for r in t["records"]] for t in data["results"]["ginas"]] == [["1111111"]]
    # the rerun with --resume replays trial 0 from its transcript and asks the endpoint for trial 1 only
    with chat_server([{"reply": "[128, 64, 64, 128, 128, 128, 128]"}]) as server:
        code = search_main(_ginas_args(tables, out, server.base_url, "--optimizer", "ginas", "--budget", "1",
                                       "--trials", "2", "--retries", "0", "--resume"))  # fmt: skip
        assert len(server.requests) == 1
    assert code == 0
    data = json.loads((out / "results.json").read_text())
    assert [[r["key"] for r in t["records"]] for t in data["results"]["ginas"]] == [["1111111"], ["2111111"]]


def test_an_html_page_for_a_reply_keeps_finished_trials_and_offers_resume(tables, chat_server, tmp_path, capsys):
    # a proxy or login wall answering HTTP 200 with HTML: the openai client returns the raw text, not a completion
    out = tmp_path / "run"
    html = {"body": "<!DOCTYPE html><html><body>Sign in</body></html>", "content_type": "text/html"}
    with chat_server([{"reply": "[64, 64, 64, 128, 128, 128, 128]"}, html, html]) as server:
        code = search_main(_ginas_args(tables, out, server.base_url, "--optimizer", "ginas", "--budget", "1",
                                       "--trials", "2", "--retries", "1"))  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not JSON" in err and "Sign in" in err and "--resume" in err, err
    data = json.loads((out / "results.json").read_text())
    assert [[r["key"] for r in t["records"]] for t in data["results"]["ginas"]] == [["1111111"]]
    errors = [r for r in Transcript.read(out / "transcripts" / "trial-001.jsonl") if "not JSON" in json.dumps(r)]
    assert errors, "the failed attempts are recorded in the trial's transcript"


def test_rank_mode_option(tables, chat_server, tmp_path):
    for mode, rank in (("official", 33), ("competition", 32)):
        out = tmp_path / mode
        # the paper's best Channel-ResNet architecture, 4343424: official rank 33, competition rank 32
        with chat_server([{"reply": "[256, 192, 256, 384, 512, 256, 512]"}]) as server:
            search_main(_ginas_args(tables, out, server.base_url, "--optimizer", "ginas", "--budget", "1",
                                    "--retries", "0", "--rank-mode", mode))  # fmt: skip
        data = json.loads((out / "results.json").read_text())
        assert data["results"]["ginas"][0]["records"][0]["key"] == "4343424"
        assert data["summary"][0]["best_rank"] == rank and data["space"]["rank_mode"] == mode
