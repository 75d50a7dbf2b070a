"""GINAS: a chat LLM as a black-box architecture-search optimiser (GENIUS, arXiv:2304.10970).

Follows the benchmark scripts of the authors' code (mingkai-zheng/GENIUS, ``nas_bench_macro.py``,
``channel_bench_res.py``, ``channel_bench_mob.py``, ``nas_bench_201.py``). Every round sends two messages, the
system message and one user message made of the task description, the list of every architecture evaluated so far
with its score (rounded half up, as the official scripts do), a request for a better one, and the instruction to
reply with the list only. The reply is not kept in the next round's conversation: only the list of results carries
information forward. The budget is a number of evaluated architectures (10 in every paper experiment).

What the official code lacks and this loop adds:

* The answer is found anywhere in the reply (prose, code fences, a list of channel numbers or of indices), and
  validated (length, range, allowed channel numbers). An invalid reply gets a corrective follow-up message (the
  reply and the correction are appended to that round's conversation) up to ``max_corrections`` times; a round
  that still has no valid answer is recorded as failed and a new round starts (at most ``max_rounds`` rounds).
* A repeated proposal is not evaluated again: the model is told its recorded score and asked for another
  architecture (a follow-up like a correction). ``dedupe=False`` restores the official behaviour (a repeat is
  evaluated again, spends budget and is listed twice).
* Every exchange, evaluation and rejection is appended to a transcript as it happens; a run resumes from its
  transcript (the recorded replies are replayed and the recorded evaluations reused, so no architecture is scored
  twice; the live model is asked only from where the run stopped), and :class:`~tenfold.nas.llm.ReplayChat`
  reproduces a run exactly from it. ``GINAS(transcript=None)`` records nothing and warns so.

Fidelity notes:

* NAS-Bench-201: the official script is a running conversation in which a human transcribes GPT-4's answer and
  only the last validation accuracy is fed back, and GPT-4 is asked for a rationale. Here NAS-Bench-201 uses the
  same history-list rounds as the other benchmarks (with the NAS-Bench-201 task description and system message),
  which needs no human; the validation accuracy is fed back with three decimals as in that script, and the test
  accuracy of the validation-selected architecture is reported.
* The prompt texts (:mod:`tenfold.nas.prompts`) are our own words carrying the same information as the official
  prompts.
"""

from __future__ import annotations

import os
import re
import time
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from tenfold.nas.llm import ChatBackend, ChatReply, Message, ReplayChat, Transcript
from tenfold.nas.prompts import format_reminder, history_prompt, repeat_message
from tenfold.nas.result import SearchRecord, SearchResult
from tenfold.nas.spaces import Answer, SearchSpace

__all__ = ["GINAS", "history_prompt", "parse_answer"]

_BRACKETED = re.compile(r"[\[(]([^\[\]()]*)[\])]")
_INT_RUN = re.compile(r"-?\d+(?:\s*[,;]\s*-?\d+)+")
_INTEGER = re.compile(r"^-?\d+$")


def _candidates(reply: str) -> list[tuple[int, bool, list[int]]]:
    """Integer lists in ``reply`` as ``(position, explicit, values)``, every kind, in order of preference.

    Bracketed lists (``[..]``/``(..)``) come first, then comma-separated runs outside them, then digit strings
    (``02012100``) outside both; ``explicit`` is False for digit strings only (a number in prose, such as the
    ``93`` of ``93.05%``, is one too). Each kind is in reply order.
    """
    found: list[tuple[int, bool, list[int]]] = []
    taken: list[tuple[int, int]] = []

    def free(span: tuple[int, int]) -> bool:
        return all(span[1] <= a or span[0] >= b for a, b in taken)

    for match in _BRACKETED.finditer(reply):
        parts = [p.strip() for p in re.split(r"[,;\s]+", match.group(1).strip()) if p.strip()]
        if parts and all(_INTEGER.match(p) for p in parts):
            found.append((match.start(), True, [int(p) for p in parts]))
            taken.append(match.span())
    for match in _INT_RUN.finditer(reply):
        if free(match.span()):
            found.append((match.start(), True, [int(p) for p in re.split(r"\s*[,;]\s*", match.group(0))]))
            taken.append(match.span())
    for match in re.finditer(r"(?<!\d)\d{2,}(?!\d)", reply):
        if free(match.span()):
            found.append((match.start(), False, [int(c) for c in match.group(0)]))
    return found


def parse_answer(reply: str, space: SearchSpace, seen: Iterable[str] = ()) -> Answer:
    """Find the proposed architecture anywhere in a chat reply and validate it.

    Every list of integers in the reply is a candidate: bracketed ``[1, 2, 0]`` or ``(1, 2, 0)`` (in prose or code
    fences), then comma-separated runs ``1, 2, 0``, then digit strings ``120`` (for spaces with single-digit
    values). All kinds are collected, so a stray ``(93)`` does not hide a valid run. The first candidate, in that
    order, that is a valid answer and not in ``seen`` wins, so a reply that quotes an earlier result next to its
    proposal is read right. If every valid candidate is in ``seen``: when an invalid bracketed or comma-separated
    list follows the first of them in the reply (a quoted result, then a malformed proposal), the invalid list is
    reported; otherwise the first valid candidate is returned (a repeat, handled by the caller).

    Args:
        reply: the model's text.
        space: the search space (validates length and values).
        seen: keys of architectures already evaluated.

    Returns:
        The answer, canonical (e.g. channel indices turned into channel numbers).

    Raises:
        ValueError: no valid list, or only seen ones followed by an invalid list; the message says what was wrong,
            in words meant for the model.
    """
    seen = set(seen)
    candidates = _candidates(reply)
    if not candidates:
        raise ValueError(f"your reply contains no list of numbers; I need a list of {space.length} numbers")
    valid: list[tuple[int, Answer]] = []
    problems: list[tuple[int, bool, str]] = []
    for position, explicit, values in candidates:
        try:
            valid.append((position, space.validate(values)))
        except ValueError as err:
            problems.append((position, explicit, f"{space.format_answer(values)}: {err}"))
    fresh = [a for _, a in valid if space.key(a) not in seen]
    if fresh:
        return fresh[0]
    if valid:
        first_seen = min(position for position, _ in valid)
        problems = [p for p in problems if p[1] and p[0] > first_seen]
        if not problems:
            return valid[0][1]
    problems.sort(key=lambda p: not p[1])  # explicit lists first: digit strings are often numbers in prose
    raise ValueError("the list in your reply is not a valid answer: " + " | ".join(p[2] for p in problems[:3]))


class GINAS:
    """The GINAS loop: ask the chat model, validate, evaluate, feed every result back; a fixed budget.

    Args:
        space: the search space (a benchmark table or a real-training space).
        chat: the chat backend (:class:`~tenfold.nas.llm.OpenAIChat`, :class:`~tenfold.nas.llm.ReplayChat`,
            :class:`~tenfold.nas.llm.ConsoleChat`).
        budget: number of architectures to evaluate (the paper: 10).
        max_corrections: follow-up messages per round after an invalid or repeated proposal.
        dedupe: answer repeated proposals from the history instead of evaluating them again (False: the official
            behaviour).
        max_rounds: rounds allowed in all (a round ends with an evaluation or fails); default ``2 * budget``.
        transcript: JSON-lines file recording the run as it happens. It must not exist unless ``resume`` is set.
            None records nothing (the run can then be neither replayed nor resumed) and warns, except with a
            :class:`~tenfold.nas.llm.ReplayChat`, whose run is already on disk; ``tenfold search`` always writes
            one per trial.
        resume: continue the run recorded in ``transcript``: its recorded replies are replayed and its recorded
            evaluations reused (never scored again: with real training that would retrain every network), then
            ``chat`` is asked from where the run stopped.
        stop: checked before each round after the first evaluation; True ends the run early (a time limit).

    Raises:
        ValueError: a budget or limits below their minimum (``budget``, ``max_rounds`` >= 1; ``max_corrections``
            >= 0), ``resume`` without a transcript, or a transcript of another space.
    """

    def __init__(
        self,
        space: SearchSpace,
        chat: ChatBackend,
        *,
        budget: int = 10,
        max_corrections: int = 3,
        dedupe: bool = True,
        max_rounds: int | None = None,
        transcript: str | os.PathLike | None = None,
        resume: bool = False,
        stop: Callable[[], bool] | None = None,
    ) -> None:
        if budget < 1 or max_corrections < 0:
            raise ValueError(f"budget must be >= 1 and max_corrections >= 0, got {budget}, {max_corrections}")
        if max_rounds is not None and max_rounds < 1:
            raise ValueError(f"max_rounds must be >= 1 (or None for 2 * budget), got {max_rounds}")
        if resume and transcript is None:
            raise ValueError("resume needs the transcript of the run to continue")
        if transcript is None and not isinstance(chat, ReplayChat):
            warnings.warn(
                "GINAS(transcript=None) records nothing: no exchange or evaluation is written, so this run can be "
                "neither replayed nor resumed; pass transcript=PATH (a new .jsonl file) to record it",
                UserWarning,
                stacklevel=2,
            )
        self.space = space
        self.chat = chat
        self.budget = budget
        self.max_corrections = max_corrections
        self.dedupe = dedupe
        self.max_rounds = max_rounds if max_rounds is not None else 2 * budget
        self.stop = stop
        self.transcript = (
            Transcript(Path(transcript), resume=resume, secrets=chat.secrets()) if transcript is not None else None
        )
        self._recorded: list[dict[str, Any]] = []
        # resuming: the recorded scores by key, in order (with dedupe=False a key may have been scored twice)
        self._scored: dict[str, deque[SearchRecord]] = {}
        if self.transcript is not None and resume:
            self._check_resumable(self.transcript.existing)
            self._recorded = Transcript.exchanges(self.transcript.existing)
            for r in self.transcript.existing:
                if r.get("type") == "evaluation":
                    record = SearchRecord(list(r["answer"]), r["key"], r["acc"], r["report_acc"], r.get("rank"),
                                          dict(r.get("info") or {}))  # fmt: skip
                    self._scored.setdefault(record.key, deque()).append(record)

    def _meta(self) -> dict[str, Any]:
        return {
            "type": "meta",
            "optimizer": "ginas",
            "space": self.space.name,
            "budget": self.budget,
            "max_corrections": self.max_corrections,
            "dedupe": self.dedupe,
            "backend": self.chat.describe(),
        }

    def _check_resumable(self, records: list[dict[str, Any]]) -> None:
        meta = next((r for r in records if r.get("type") == "meta"), None)
        if meta is None:
            raise ValueError(f"transcript {str(self.transcript.path)!r} has no meta record: not a GINAS transcript")
        for key in ("space", "max_corrections", "dedupe"):
            if meta.get(key) != self._meta()[key]:
                raise ValueError(
                    f"transcript {str(self.transcript.path)!r} was recorded with {key}={meta.get(key)!r}, "
                    f"this run has {key}={self._meta()[key]!r}"
                )

    def _score(self, answer: Answer) -> SearchRecord:
        """The record of ``answer``: the transcript's, when resuming a run that scored it, else a new evaluation."""
        recorded = self._scored.get(self.space.key(answer))
        if recorded:
            return recorded.popleft()
        return SearchRecord.of(self.space, answer, self.space.evaluate(answer))

    def _write(self, record: dict[str, Any]) -> None:
        if self.transcript is not None:
            self.transcript.write(record)

    def messages(self, history: Sequence[tuple[Sequence[int], float]]) -> list[Message]:
        """The two messages of a round: the system message and the task with the results so far."""
        return [
            {"role": "system", "content": self.space.system_prompt},
            {"role": "user", "content": history_prompt(self.space, history)},
        ]

    def _ask(self, messages: list[Message], round_: int, attempt: int) -> ChatReply:
        start = time.perf_counter()
        if self._recorded:  # resuming: the recorded reply to this very request, instead of a new call
            record = self._recorded.pop(0)
            if record["messages"] != messages:
                raise ValueError(
                    f"transcript {str(self.transcript.path)!r} does not continue this run: its round {round_} "
                    "request differs (was the space, the budget order or the prompt changed?)"
                )
            reply = ChatReply(record["reply"], record.get("usage"), record.get("model"))
        else:

            def on_error(event: dict[str, Any]) -> None:
                self._write({"type": "error", "round": round_, "attempt": attempt, **event})

            reply = self.chat.complete(messages, on_error=on_error)
        self._write({
            "type": "exchange", "round": round_, "attempt": attempt, "messages": messages,
            "reply": reply.content, "usage": reply.usage, "model": reply.model,
            "seconds": round(time.perf_counter() - start, 3),
        })  # fmt: skip
        return reply

    def run(self) -> SearchResult:
        """Run until ``budget`` architectures are evaluated (or ``max_rounds`` rounds are spent).

        Returns:
            The :class:`~tenfold.nas.result.SearchResult`; ``stats`` counts chat calls, corrections, repeats and
            failed rounds.
        """
        now = time.strftime("%Y-%m-%dT%H:%M:%S")
        if self.transcript is not None and self.transcript.existing:
            recorded = sum(len(v) for v in self._scored.values())
            self._write({"type": "resume", "time": now, "budget": self.budget, "recorded_evaluations": recorded})
        else:
            self._write({**self._meta(), "time": now})
        result = SearchResult("ginas", self.space.name, self.budget, None)
        stats = {"chat_calls": 0, "corrections": 0, "repeats": 0, "failed_rounds": 0, "rounds": 0}
        history: list[tuple[Answer, float]] = []
        scores: dict[str, SearchRecord] = {}
        while len(result.records) < self.budget and stats["rounds"] < self.max_rounds:
            if self.stop is not None and result.records and self.stop():
                stats["stopped_early"] = True
                break
            round_ = stats["rounds"] = stats["rounds"] + 1
            messages = self.messages(history)
            for attempt in range(self.max_corrections + 1):
                reply = self._ask(messages, round_, attempt)
                stats["chat_calls"] += 1
                try:
                    answer = parse_answer(reply.content, self.space, seen=scores if self.dedupe else ())
                except ValueError as err:
                    problem = f"{err}. {format_reminder(self.space)}"
                    reason = str(err)
                else:
                    key = self.space.key(answer)
                    if not (self.dedupe and key in scores):
                        record = self._score(answer)
                        result.records.append(record)
                        scores[key] = record
                        history.append((answer, record.acc))
                        self._write({"type": "evaluation", "round": round_, "index": len(result.records),
                                     **asdict(record)})  # fmt: skip
                        break
                    stats["repeats"] += 1
                    reason = f"repeat of {key}"
                    problem = repeat_message(self.space, answer, scores[key].acc)
                self._write({"type": "rejected", "round": round_, "attempt": attempt, "reason": reason})
                if attempt == self.max_corrections:
                    stats["failed_rounds"] += 1
                    self._write({"type": "round_failed", "round": round_})
                    break
                stats["corrections"] += 1
                messages = [*messages, {"role": "assistant", "content": reply.content},
                            {"role": "user", "content": problem}]  # fmt: skip
        result.stats = stats
        self._write({"type": "done", **stats, "evaluations": len(result.records)})
        return result
