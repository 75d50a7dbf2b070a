"""GINAS against a real HTTP chat-completions server on 127.0.0.1 with scripted replies; replay and resume."""

from __future__ import annotations

import json
import os
import warnings
from decimal import ROUND_HALF_UP, Decimal

import pytest

from tenfold.nas.ginas import GINAS, parse_answer
from tenfold.nas.llm import ChatBackend, ChatError, ChatReply, OpenAIChat, ReplayChat, Transcript
from tenfold.nas.spaces import Evaluation, SearchSpace, load_space

SECRET = "sk-test-5ecret-DO-NOT-LEAK-4242"

A1 = [1, 2, 1, 2, 1, 2, 1, 2]
A2 = [2, 2, 2, 1, 2, 2, 2, 0]
A3 = [1, 1, 1, 1, 1, 1, 1, 1]
A4 = [0, 0, 1, 1, 2, 2, 1, 1]
A5 = [2, 1, 2, 1, 2, 1, 2, 1]

# one step per HTTP request, in order; comments give the round each belongs to
SCRIPT = [
    {"reply": f"Sure. Based on the layer layout, I would go with {A1}, which balances depth and width."},  # r1
    {"delay": 1.5, "reply": str(A2)},  # r2: answers after the client's timeout
    {"status": 500},  # r2: HTTP error, retried
    {"reply": "```json\n" + json.dumps(A2) + "\n```"},  # r2: code fence
    {"reply": "[1, 2, 0]"},  # r3: wrong length
    {"reply": "My proposal: [3, 2, 1, 0, 1, 2, 1, 0]"},  # r3: op id 3 is out of range
    {"reply": str(A3)},  # r3
    {"reply": str(A1)},  # r4: a repeat, answered from the history
    {"reply": f"Then {A4}."},  # r4
    {"reply": f"Earlier {A1} did well, so now: {A5}"},  # r5: quotes an evaluated list before the new one
]


def _table(tables, name="nas_bench_macro_cifar10.json"):
    with open(tables / name) as f:
        return json.load(f)


def _key(answer):
    return "".join(map(str, answer))


def _half_up(x, d=2):
    return float(Decimal(x).quantize(Decimal("0.01") if d == 2 else Decimal("0.001"), rounding=ROUND_HALF_UP))


@pytest.fixture(scope="module")
def scripted_run(tables, chat_server, tmp_path_factory):
    """Run GINAS (budget 5) against the scripted server once; return (result, server, transcript path)."""
    os.environ["TENFOLD_TEST_KEY"] = SECRET
    tmp_path = tmp_path_factory.mktemp("ginas")
    space = load_space("nas-bench-macro", tables)
    with chat_server(SCRIPT) as server:
        chat = OpenAIChat("fake-gpt", base_url=server.base_url, api_key_env="TENFOLD_TEST_KEY", timeout=0.5,
                          retries=2, backoff_s=0.01)  # fmt: skip
        path = tmp_path / "run" / "transcript.jsonl"
        result = GINAS(space, chat, budget=5, max_corrections=3, transcript=path).run()
    yield result, server, path
    del os.environ["TENFOLD_TEST_KEY"]


def test_loop_against_http_server(scripted_run, tables):
    result, server, path = scripted_run
    table = _table(tables)
    assert [r.answer for r in result.records] == [A1, A2, A3, A4, A5]
    assert [r.acc for r in result.records] == [table[_key(a)]["mean_acc"] for a in (A1, A2, A3, A4, A5)]
    assert result.stats == {"chat_calls": 8, "corrections": 3, "repeats": 1, "failed_rounds": 0, "rounds": 5}
    assert len(server.requests) == 10  # 8 replies + the timed-out and the failed request
    assert all(r["path"] == "/v1/chat/completions" for r in server.requests)
    assert server.requests[0]["body"]["model"] == "fake-gpt" and server.requests[0]["body"]["temperature"] == 0
    assert server.requests[0]["headers"]["authorization"] == f"Bearer {SECRET}"  # the key is used...
    # the best of the five: A2 is the optimum of the table (93.13)
    assert result.best().key == _key(A2) and result.best().rank == 1


def test_prompts_carry_the_history(scripted_run, tables):
    result, server, _ = scripted_run
    table = _table(tables)
    bodies = [r["body"]["messages"] for r in server.requests]
    first = bodies[0]
    assert [m["role"] for m in first] == ["system", "user"]
    assert "layer2" in first[1]["content"] and "Inverted residual" in first[1]["content"]
    assert "measured so far" not in first[1]["content"]
    # round 2 (request 2): one result, rounded half up to 2 decimals
    acc1 = _half_up(table[_key(A1)]["mean_acc"])
    assert f"{A1}: accuracy {acc1:.2f}%" in bodies[1][1]["content"] and len(bodies[1]) == 2
    # round 3's second request: the wrong-length reply and a correction were appended
    assert [m["role"] for m in bodies[5]] == ["system", "user", "assistant", "user"]
    assert bodies[5][2]["content"] == "[1, 2, 0]" and "exactly 8" in bodies[5][3]["content"]
    assert "position 1 is 3" in bodies[6][5]["content"]
    # round 4: the repeat is answered from the history, with its score
    assert f"{A1} has already been measured: accuracy {acc1:.2f}%" in bodies[8][3]["content"]
    # the last round lists the four results in order, and only two messages
    last = bodies[9]
    assert len(last) == 2
    lines = [ln for ln in last[1]["content"].splitlines() if ln.startswith("[")]
    assert lines == [f"{a}: accuracy {_half_up(table[_key(a)]['mean_acc']):.2f}%" for a in (A1, A2, A3, A4)]


def test_transcript_complete_and_key_never_written(scripted_run):
    result, server, path = scripted_run
    records = Transcript.read(path)
    kinds = [r["type"] for r in records]
    assert kinds[0] == "meta" and kinds[-1] == "done"
    assert kinds.count("exchange") == 8 and kinds.count("error") == 2
    assert kinds.count("evaluation") == 5 and kinds.count("rejected") == 3
    errors = [r["error"] for r in records if r["type"] == "error"]
    assert "no reply within 0.5 s" in errors[0] and "HTTP 500" in errors[1]
    # each exchange holds exactly what the server received and what it answered
    answered = [r for r in server.requests if r is not server.requests[1] and r is not server.requests[2]]
    exchanges = [r for r in records if r["type"] == "exchange"]
    assert [e["messages"] for e in exchanges] == [r["body"]["messages"] for r in answered]
    assert exchanges[1]["reply"].startswith("```json")
    assert records[0]["backend"]["api_key_set"] is True
    for file in path.parent.parent.rglob("*"):
        if file.is_file():
            assert SECRET not in file.read_text(errors="replace"), file


def test_replay_reproduces_the_run(scripted_run, tables, tmp_path):
    result, _, path = scripted_run
    space = load_space("nas-bench-macro", tables)
    replayed = GINAS(space, ReplayChat(path), budget=5, transcript=tmp_path / "replay.jsonl").run()
    assert replayed.to_dict() == result.to_dict()
    original = [(r["messages"], r["reply"]) for r in Transcript.read(path) if r["type"] == "exchange"]
    again = [(r["messages"], r["reply"]) for r in Transcript.read(tmp_path / "replay.jsonl") if r["type"] == "exchange"]
    assert again == original


def test_replay_refuses_a_diverging_run(scripted_run, tables):
    _, _, path = scripted_run
    space = load_space("channel-bench-resnet", tables)
    with pytest.raises(ValueError, match="diverged at exchange 1"):
        GINAS(space, ReplayChat(path), budget=5).run()


def test_resume_after_a_crash(scripted_run, tables, chat_server, tmp_path, monkeypatch):
    result, _, path = scripted_run
    lines = path.read_text().splitlines(keepends=True)
    third = [i for i, ln in enumerate(lines) if json.loads(ln)["type"] == "evaluation"][2]
    crashed = tmp_path / "crashed.jsonl"
    crashed.write_text("".join(lines[: third + 1]) + '{"type": "exchange", "rou')  # a record cut mid-write
    space = load_space("nas-bench-macro", tables)
    with pytest.raises(FileExistsError):
        GINAS(space, ReplayChat(path), budget=5, transcript=crashed)
    with chat_server([{"reply": str(A1)}, {"reply": f"Then {A4}."}, {"reply": str(A5)}]) as server:
        chat = OpenAIChat("fake-gpt", base_url=server.base_url, timeout=2, retries=0)
        resumed = GINAS(space, chat, budget=5, transcript=crashed, resume=True).run()
    assert len(server.requests) == 3  # only rounds 4 and 5 reached the model
    assert [r.answer for r in resumed.records] == [A1, A2, A3, A4, A5]
    assert resumed.stats["repeats"] == 1 and resumed.stats["chat_calls"] == 8
    kinds = [r["type"] for r in Transcript.read(crashed)]
    assert kinds.count("evaluation") == 5 and kinds.count("exchange") == 8 and kinds.count("meta") == 1
    assert "resume" in kinds


def test_resume_refuses_another_space(scripted_run, tables):
    _, _, path = scripted_run
    space = load_space("channel-bench-resnet", tables)
    with pytest.raises(ValueError, match="space='nas-bench-macro'"):
        GINAS(space, ReplayChat(path), budget=5, transcript=path, resume=True)


def test_failed_round_and_official_repeats(tables, chat_server, tmp_path):
    space = load_space("nas-bench-macro", tables)
    script = [{"reply": "no idea"}, {"reply": "[9]"}, {"reply": str(A1)}, {"reply": str(A1)}]
    with chat_server(script) as server:
        chat = OpenAIChat("m", base_url=server.base_url, timeout=2, retries=0)
        result = GINAS(space, chat, budget=2, max_corrections=1, dedupe=False, transcript=tmp_path / "t.jsonl").run()
    assert result.stats["failed_rounds"] == 1 and result.stats["rounds"] == 3
    # official behaviour: the repeat is evaluated again, spends budget and is listed twice
    assert [r.answer for r in result.records] == [A1, A1]
    assert f"{A1}: accuracy" in server.requests[3]["body"]["messages"][1]["content"]


def test_http_errors_that_retrying_cannot_fix(chat_server):
    with chat_server([{"status": 401}, {"reply": "[1]"}]) as server:
        chat = OpenAIChat("m", base_url=server.base_url, timeout=2, retries=3, backoff_s=0)
        with pytest.raises(ChatError, match="HTTP 401"):
            chat.complete([{"role": "user", "content": "hi"}])
        assert len(server.requests) == 1
    with chat_server([{"status": 503}] * 3) as server:
        chat = OpenAIChat("m", base_url=server.base_url, timeout=2, retries=2, backoff_s=0)
        events = []
        with pytest.raises(ChatError, match="after 3 attempts"):
            chat.complete([{"role": "user", "content": "hi"}], on_error=events.append)
        assert [e["attempt"] for e in events] == [1, 2, 3] and events[-1]["retry_in_s"] is None


def test_retries_wait_our_backoff_or_the_servers_retry_after(scripted_run, chat_server):
    # the openai client retries; the waits are OpenAIChat's backoff (0.01 s doubling), recorded before each retry
    _, server, path = scripted_run
    errors = [r for r in Transcript.read(path) if r["type"] == "error"]
    assert [(e["attempt"], e["retry_in_s"]) for e in errors] == [(1, 0.01), (2, 0.02)]
    assert [r["headers"]["x-stainless-retry-count"] for r in server.requests[1:4]] == ["0", "1", "2"]
    # a server's Retry-After wins over the backoff (10 s here: the test would take that long if it were used)
    with chat_server([{"status": 429, "headers": {"retry-after-ms": "50"}}, {"reply": "[1]"}]) as server:
        chat = OpenAIChat("m", base_url=server.base_url, timeout=2, retries=1, backoff_s=10)
        events = []
        assert chat.complete([{"role": "user", "content": "hi"}], on_error=events.append).content == "[1]"
    assert len(events) == 1 and events[0]["retry_in_s"] == pytest.approx(0.05) and "HTTP 429" in events[0]["error"]
    # HTTP failures and bad replies share one budget of retries, numbered in one sequence
    with chat_server([{"reply": None}, {"status": 500}, {"status": 500}, {"reply": "[1]"}]) as server:
        chat = OpenAIChat("m", base_url=server.base_url, timeout=2, retries=2, backoff_s=0)
        events = []
        with pytest.raises(ChatError, match="after 3 attempts; last error: HTTP 500"):
            chat.complete([{"role": "user", "content": "hi"}], on_error=events.append)
        assert len(server.requests) == 3
    assert [(e["attempt"], e["retry_in_s"]) for e in events] == [(1, 0), (2, 0), (3, None)]
    assert "content is null" in events[0]["error"]


def test_the_key_is_redacted_from_error_bodies(chat_server, monkeypatch):
    # servers quote a rejected key back ("Incorrect API key provided: sk-..."): neither entries nor errors show it
    monkeypatch.setenv("TENFOLD_TEST_KEY", SECRET)
    quoted = {"body": json.dumps({"error": {"message": f"key {SECRET} is rate limited"}}), "status": 429}
    refused = {"body": json.dumps({"error": {"message": f"Incorrect API key provided: {SECRET}"}}), "status": 401}
    with chat_server([quoted, refused]) as server:
        chat = OpenAIChat("m", base_url=server.base_url, api_key_env="TENFOLD_TEST_KEY", timeout=2, retries=1,
                          backoff_s=0)  # fmt: skip
        events = []
        with pytest.raises(ChatError, match="HTTP 401") as err:
            chat.complete([{"role": "user", "content": "hi"}], on_error=events.append)
        assert server.requests[0]["headers"]["authorization"] == f"Bearer {SECRET}"
    assert len(events) == 1 and "HTTP 429: " in events[0]["error"] and "***" in events[0]["error"]
    assert SECRET not in events[0]["error"] and SECRET not in str(err.value) and "***" in str(err.value)


BAD_200 = {
    "html": {
        "body": "<!DOCTYPE html><html><body><h1>Sign in to continue</h1></body></html>",
        "content_type": "text/html",
    },
    "json_without_choices": {"body": json.dumps({"status": "ok", "detail": "proxy is up"})},
    "null_content": {"reply": None},
}


@pytest.mark.parametrize("kind", sorted(BAD_200))
def test_a_bad_http_200_reply_is_retried_and_recorded(chat_server, kind):
    with chat_server([BAD_200[kind], {"reply": "[1, 2]"}]) as server:
        chat = OpenAIChat("m", base_url=server.base_url, timeout=2, retries=1, backoff_s=0)
        events = []
        reply = chat.complete([{"role": "user", "content": "hi"}], on_error=events.append)
        assert reply.content == "[1, 2]" and len(server.requests) == 2
    expected = {"html": "not JSON", "json_without_choices": "no 'choices'", "null_content": "content is null"}[kind]
    assert len(events) == 1 and expected in events[0]["error"] and events[0]["retry_in_s"] == 0, events
    with chat_server([BAD_200[kind]] * 2) as server:
        chat = OpenAIChat("m", base_url=server.base_url, timeout=2, retries=1, backoff_s=0)
        with pytest.raises(ChatError, match=f"after 2 attempts; last error: .*{expected}"):
            chat.complete([{"role": "user", "content": "hi"}])


@pytest.mark.parametrize(
    ("space_name", "reply", "expected"),
    [
        ("nas-bench-macro", "02012100", (0, 2, 0, 1, 2, 1, 0, 0)),
        ("nas-bench-macro", "ops: 0, 2, 0, 1, 2, 1, 0, 0 (final)", (0, 2, 0, 1, 2, 1, 0, 0)),
        ("channel-bench-resnet", "[256, 192, 256, 512, 512, 256, 512]", (256, 192, 256, 512, 512, 256, 512)),
        ("channel-bench-resnet", "indices (4, 3, 4, 4, 4, 2, 4)", (256, 192, 256, 512, 512, 256, 512)),
        ("channel-bench-mobilenet", "[32, 192, 192, 192, 64, 384, 256]", (32, 192, 192, 192, 64, 384, 256)),
        ("nas-bench-201-cifar10", "op_list = [3, 3, 3, 1, 2, 3]  # conv everywhere", (3, 3, 3, 1, 2, 3)),
    ],
)
def test_parse_answer_forms(tables, space_name, reply, expected):
    assert parse_answer(reply, load_space(space_name, tables)) == expected


@pytest.mark.parametrize(
    ("space_name", "reply", "message"),
    [
        ("nas-bench-macro", "I cannot decide.", "no list of numbers"),
        ("channel-bench-resnet", "[64, 64, 64, 128, 128, 128, 100]", "position 7 is 100"),
        ("nas-bench-201-cifar10", "[3, 3, 3, 1, 2]", "exactly 6"),
        ("nas-bench-201-cifar10", "[3, 3, 3, 1, 2, 5]", "position 6 is 5"),
    ],
)
def test_parse_answer_rejects(tables, space_name, reply, message):
    with pytest.raises(ValueError, match=message):
        parse_answer(reply, load_space(space_name, tables))


def test_parse_prefers_an_unseen_proposal(tables):
    space = load_space("nas-bench-macro", tables)
    reply = f"{A5} improves on {A1}"
    assert parse_answer(reply, space) == tuple(A5)
    assert parse_answer(reply, space, seen={_key(A5)}) == tuple(A1)
    assert parse_answer(reply, space, seen={_key(A5), _key(A1)}) == tuple(A5)  # all seen: the first, a repeat


class Scripted(ChatBackend):
    """Replies from a list, in process (a stand-in for a model); counts the calls."""

    def __init__(self, replies):
        self.replies = list(replies)
        self.calls = 0

    def complete(self, messages, on_error=None):
        self.calls += 1
        return ChatReply(self.replies.pop(0))


class Counting(SearchSpace):
    """4 positions in {0, 1, 2}, score = 90 + sum; counts evaluations (an expensive evaluator, e.g. training)."""

    name = "counting"
    choices = ((0, 1, 2),) * 4

    def __init__(self):
        self.calls = []

    def evaluate(self, answer):
        self.calls.append(self.key(answer))
        return Evaluation(acc=90.0 + sum(answer), report_acc=90.0 + sum(answer))


def _cut_after(path, kind, n, to):
    """Copy the transcript ``path`` to ``to`` up to and including its ``n``-th record of type ``kind``."""
    lines = path.read_text().splitlines(keepends=True)
    where = [i for i, ln in enumerate(lines) if json.loads(ln)["type"] == kind][n - 1]
    to.write_text("".join(lines[: where + 1]))
    return to


def test_resume_reuses_recorded_evaluations(tmp_path):
    replies = ["[0, 1, 2, 0]", "[2, 2, 1, 0]", "[0, 1, 2, 0]", "[1, 1, 1, 1]"]  # the third is a repeat
    full = GINAS(Counting(), Scripted(replies), budget=3, transcript=tmp_path / "full.jsonl").run()
    assert [r.key for r in full.records] == ["0120", "2210", "1111"]
    # crashed after the second evaluation: nothing recorded is scored again, only round 3 is new
    crashed = _cut_after(tmp_path / "full.jsonl", "evaluation", 2, tmp_path / "a.jsonl")
    space, chat = Counting(), Scripted(replies[2:])
    resumed = GINAS(space, chat, budget=3, transcript=crashed, resume=True).run()
    assert space.calls == ["1111"] and chat.calls == 2
    assert resumed.to_dict()["records"] == full.to_dict()["records"]
    assert [r["type"] for r in Transcript.read(crashed)].count("evaluation") == 3
    # crashed after round 2's reply but before its score was recorded: that one is scored, and only it
    crashed = _cut_after(tmp_path / "full.jsonl", "exchange", 2, tmp_path / "b.jsonl")
    space, chat = Counting(), Scripted(replies[2:])
    resumed = GINAS(space, chat, budget=3, transcript=crashed, resume=True).run()
    assert space.calls == ["2210", "1111"] and chat.calls == 2
    assert resumed.to_dict()["records"] == full.to_dict()["records"]


def test_transcript_none_warns_and_limits(tmp_path):
    with pytest.warns(UserWarning, match=r"transcript=None\) records nothing"):
        GINAS(Counting(), Scripted([]), budget=1)
    GINAS(Counting(), Scripted(["[0, 0, 0, 1]"]), budget=1, transcript=tmp_path / "t.jsonl").run()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a replay's run is on disk already: no warning
        GINAS(Counting(), ReplayChat(tmp_path / "t.jsonl"), budget=1).run()
        with pytest.raises(ValueError, match="max_rounds must be >= 1"):
            GINAS(Counting(), Scripted([]), budget=1, max_rounds=0, transcript=tmp_path / "u.jsonl")


def test_parse_collects_every_kind_and_reports_an_invalid_proposal(tables):
    space = load_space("nas-bench-macro", tables)
    # a stray bracketed number no longer hides the comma-separated answer
    assert parse_answer("ops: 0, 2, 0, 1, 2, 1, 0, 0 (93)", space) == (0, 2, 0, 1, 2, 1, 0, 0)
    # a quoted, already measured result followed by a malformed proposal: the proposal's problem is reported
    with pytest.raises(ValueError, match="position 3 is 3"):
        parse_answer(f"{A1} gave 93.05%, so try [1, 2, 3, 0, 1, 2, 1, 0]", space, seen={_key(A1)})
    # numbers in prose after a repeat are not proposals: still a repeat
    assert parse_answer(f"{A1} gave 93.05%", space, seen={_key(A1)}) == tuple(A1)
