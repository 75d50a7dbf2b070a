"""Chat backends for GINAS and the transcript that records every exchange.

* :class:`OpenAIChat`: any OpenAI-compatible chat-completions endpoint (OpenAI, hosted APIs, local servers such as
  vLLM, llama.cpp's server or Ollama) through the ``openai`` client, with a timeout and the client's retries
  (exponential backoff, or the server's ``Retry-After``). The key is read from an environment variable; it is
  never stored on the object's public surface, written to a transcript or shown in an error.
* :class:`ReplayChat`: plays the replies recorded in a transcript, checking that each request is the recorded one,
  so a run can be reproduced exactly and tests need no network.
* :class:`ConsoleChat`: a human in the loop (the official NAS-Bench-201 script needed one to transcribe answers;
  here a human may also *be* the model, or paste a web chat's replies).

The official code (mingkai-zheng/GENIUS) called the legacy ``openai<1.0`` API with a hard-coded model and kept no
transcript that could be replayed; these backends are our own.
"""

from __future__ import annotations

import json
import os
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "ChatBackend",
    "ChatError",
    "ChatReply",
    "ConsoleChat",
    "ENV_API_KEY",
    "ENV_BASE_URL",
    "ENV_MODEL",
    "OpenAIChat",
    "ReplayChat",
    "Transcript",
    "chat_from_env",
]

Message = dict[str, str]

#: Environment variables read by :func:`chat_from_env` (and the ``ginas`` demo).
ENV_BASE_URL = "TENFOLD_LLM_BASE_URL"
ENV_MODEL = "TENFOLD_LLM_MODEL"
ENV_API_KEY = "TENFOLD_LLM_API_KEY"
ENV_TEMPERATURE = "TENFOLD_LLM_TEMPERATURE"
ENV_TIMEOUT = "TENFOLD_LLM_TIMEOUT"


class ChatError(RuntimeError):
    """The chat endpoint failed for good (after the retries, or with an error that retrying cannot fix)."""


@dataclass
class ChatReply:
    """One reply of a chat model: its text, token usage when the endpoint reports it, and the serving model."""

    content: str
    usage: dict[str, Any] | None = None
    model: str | None = None


class ChatBackend(ABC):
    """Something that answers a list of chat messages (``[{"role": ..., "content": ...}, ...]``) with text."""

    @abstractmethod
    def complete(self, messages: list[Message], on_error: Callable[[dict[str, Any]], None] | None = None) -> ChatReply:
        """Answer ``messages``.

        Args:
            messages: the conversation, system message first.
            on_error: called with a JSON-able description of each failed attempt that is retried (for the
                transcript).

        Raises:
            ChatError: no reply could be obtained.
        """

    def describe(self) -> dict[str, Any]:
        """JSON-able settings for the transcript (never a secret)."""
        return {"backend": type(self).__name__}

    def secrets(self) -> tuple[str, ...]:
        """Strings that must never reach a file (redacted from transcripts)."""
        return ()


class OpenAIChat(ChatBackend):
    """An OpenAI-compatible chat-completions endpoint through the ``openai`` client.

    Args:
        model: the model name the endpoint serves (``gpt-4``, ``Qwen2.5-7B-Instruct``, ``llama3.1``...).
        base_url: endpoint root, e.g. ``http://127.0.0.1:8000/v1`` for vLLM, ``http://localhost:11434/v1`` for
            Ollama; None means OpenAI's own API.
        api_key_env: name of the environment variable holding the key. Local servers usually need none: when the
            variable is unset a placeholder is sent.
        temperature: sampling temperature (the paper uses 0, and 1 in one ablation).
        timeout: seconds to wait for one reply before the attempt counts as failed.
        retries: further attempts after a timeout, a connection error, HTTP 408, 409, 429 or 5xx (the ``openai``
            client's ``max_retries``, which makes these retries), or an HTTP-200 answer that is not a usable chat
            completion (a non-JSON body such as a proxy's HTML page, JSON without ``choices``, a null message
            content; retried by :meth:`complete`, from the same budget). Other HTTP errors (400, 401, 404...) fail
            at once: retrying cannot fix them.
        backoff_s: wait before the first retry, in seconds; it doubles at every retry (exponential backoff). A
            server's ``Retry-After`` (up to two minutes; longer means no retry, the client's rule) replaces it.
        backoff_max_s: longest wait between two attempts, in seconds (``Retry-After`` aside).
        max_tokens: optional cap on the reply length.
        seed: optional ``seed`` request field (honoured by some servers, for more repeatable sampling).

    Raises:
        ValueError: an empty model name or negative timeout/retries/backoff.
    """

    def __init__(
        self,
        model: str,
        base_url: str | None = None,
        api_key_env: str = ENV_API_KEY,
        temperature: float = 0.0,
        timeout: float = 120.0,
        retries: int = 3,
        backoff_s: float = 2.0,
        backoff_max_s: float = 60.0,
        max_tokens: int | None = None,
        seed: int | None = None,
    ) -> None:
        from tenfold.nas._openai import AttemptLog, BackoffOpenAI, RecordingHttpClient  # imports openai (~2 s)

        if not model:
            raise ValueError("model must name the served model, e.g. 'gpt-4' or 'llama3.1'")
        if timeout <= 0 or retries < 0 or backoff_s < 0 or backoff_max_s < 0:
            raise ValueError(
                f"timeout must be > 0 and retries/backoff >= 0, got timeout={timeout}, retries={retries}, "
                f"backoff_s={backoff_s}, backoff_max_s={backoff_max_s}"
            )
        self.model = model
        self.base_url = base_url
        self.api_key_env = api_key_env
        self.temperature = temperature
        self.timeout = timeout
        self.retries = retries
        self.backoff_s = backoff_s
        self.backoff_max_s = backoff_max_s
        self.max_tokens = max_tokens
        self.seed = seed
        key = os.environ.get(api_key_env, "")
        self._secret = (key,) if key else ()
        self._attempts = AttemptLog(timeout, backoff_s, backoff_max_s, self._redact)
        self._client = BackoffOpenAI(base_url=base_url, api_key=key or "not-needed", timeout=timeout,
                                     http_client=RecordingHttpClient(self._attempts))  # fmt: skip

    def describe(self) -> dict[str, Any]:  # noqa: D102
        return {
            "backend": "openai-compatible",
            "base_url": self.base_url,
            "model": self.model,
            "temperature": self.temperature,
            "timeout": self.timeout,
            "retries": self.retries,
            "api_key_env": self.api_key_env,
            "api_key_set": bool(self._secret),
        }

    def secrets(self) -> tuple[str, ...]:  # noqa: D102
        return self._secret

    def _redact(self, text: str) -> str:
        for secret in self._secret:
            text = text.replace(secret, "***")
        return text

    def complete(self, messages: list[Message], on_error: Callable[[dict[str, Any]], None] | None = None) -> ChatReply:
        """Ask the endpoint; the client retries HTTP failures, this loop retries unusable HTTP-200 replies.

        Every failed attempt (of either kind) is reported to ``on_error`` with its number, why it failed and the
        wait before the next attempt (None after the last). Not for concurrent calls on one object.
        """
        import openai

        request: dict[str, Any] = {"model": self.model, "messages": messages, "temperature": self.temperature, "n": 1}
        if self.max_tokens is not None:
            request["max_tokens"] = self.max_tokens
        if self.seed is not None:
            request["seed"] = self.seed
        where = self.base_url or "the OpenAI API"
        log = self._attempts
        log.start(on_error)
        try:
            while True:
                # one budget for both kinds of failure: the client may retry what bad replies have left of it
                client = self._client.with_options(max_retries=self.retries - log.attempts)
                try:
                    response = client.chat.completions.create(**request)
                except openai.APIStatusError as err:
                    if not _retried_status(err.status_code):
                        raise ChatError(f"{where} refused the request ({log.failure}); model {self.model!r}") from None
                    break  # the client retried it as far as it would
                except (openai.APITimeoutError, openai.APIConnectionError):
                    break
                reply, why = _chat_reply(response)
                if reply is not None:
                    return reply
                log.failure = self._redact(why)
                if log.attempts > self.retries:
                    break
                wait = log.backoff()
                log.failed(wait)
                time.sleep(wait)
            log.failed(None)
            raise ChatError(
                f"{where} gave no usable reply after {log.attempts} attempts; last error: {log.failure}"
            ) from None
        finally:
            log.start(None)


def _retried_status(status: int) -> bool:
    """Whether the openai client retries an HTTP error status (its documented policy: 408, 409, 429, 5xx)."""
    return status in (408, 409, 429) or status >= 500


def _chat_reply(response: Any) -> tuple[ChatReply | None, str]:
    """The reply in an HTTP-200 answer, or None and why it is unusable.

    The ``openai`` client hands back the raw body (a ``str``) when it is not JSON (an HTML page from a proxy or a
    login wall), and a model object without ``choices`` for JSON of another shape; a message whose content is
    null (a refusal, a tool call) holds no text to parse either. Each is a bad reply: retried like a 5xx.
    """
    if isinstance(response, str | bytes):
        text = response.decode(errors="replace") if isinstance(response, bytes) else response
        return None, f"HTTP 200 with a body that is not a chat completion (not JSON): {' '.join(text.split())[:200]!r}"
    choices = getattr(response, "choices", None)
    if not choices:
        return None, "HTTP 200 with a JSON body that has no 'choices' (not a chat-completions response)"
    message = getattr(choices[0], "message", None)
    content = getattr(message, "content", None)
    if not isinstance(content, str):
        reason = getattr(message, "refusal", None) or getattr(choices[0], "finish_reason", None)
        return None, f"the reply's message has no text content (content is null; {reason or 'no reason given'})"
    usage = response.usage.model_dump() if getattr(response, "usage", None) else None
    return ChatReply(content, usage, getattr(response, "model", None)), ""


def chat_from_env(environ: dict[str, str] | None = None, **overrides: Any) -> OpenAIChat | None:
    """An :class:`OpenAIChat` configured from the environment, or None when no model is configured.

    Reads ``TENFOLD_LLM_MODEL`` (required), ``TENFOLD_LLM_BASE_URL`` (optional; unset means OpenAI's API),
    ``TENFOLD_LLM_API_KEY`` (the key, optional for local servers), ``TENFOLD_LLM_TEMPERATURE`` (default 0) and
    ``TENFOLD_LLM_TIMEOUT`` (seconds, default 120).

    Args:
        environ: the environment (default ``os.environ``).
        **overrides: further :class:`OpenAIChat` arguments.
    """
    env = os.environ if environ is None else environ
    model = env.get(ENV_MODEL, "").strip()
    if not model:
        return None
    kwargs: dict[str, Any] = {
        "model": model,
        "base_url": env.get(ENV_BASE_URL) or None,
        "temperature": float(env.get(ENV_TEMPERATURE, "0") or 0),
        "timeout": float(env.get(ENV_TIMEOUT, "120") or 120),
    }
    kwargs.update(overrides)
    return OpenAIChat(**kwargs)


class ReplayChat(ChatBackend):
    """Replay the replies of a transcript, in order, checking that every request equals the recorded one.

    Args:
        transcript: a transcript file written by a GINAS run.
        strict: check the requests (default). With ``strict=False`` the replies are returned in order whatever
            is asked (e.g. to replay a run under a changed prompt, knowingly).

    Raises:
        FileNotFoundError: no such transcript.
        ValueError: the transcript records no exchange.
    """

    def __init__(self, transcript: str | os.PathLike, strict: bool = True) -> None:
        self.path = Path(transcript)
        self.exchanges = [r for r in Transcript.read(self.path) if r.get("type") == "exchange"]
        if not self.exchanges:
            raise ValueError(f"transcript {str(self.path)!r} records no exchange to replay")
        self.strict = strict
        self.position = 0

    def describe(self) -> dict[str, Any]:  # noqa: D102
        return {"backend": "replay", "transcript": str(self.path), "strict": self.strict}

    def complete(self, messages: list[Message], on_error: Callable[[dict[str, Any]], None] | None = None) -> ChatReply:
        """The next recorded reply.

        Raises:
            ValueError: the transcript is exhausted, or (strict) the request differs from the recorded one.
        """
        if self.position >= len(self.exchanges):
            raise ValueError(
                f"transcript {str(self.path)!r} holds {len(self.exchanges)} exchanges; the run asked for more"
            )
        record = self.exchanges[self.position]
        if self.strict and record["messages"] != messages:
            raise ValueError(
                f"replay of {str(self.path)!r} diverged at exchange {self.position + 1}: "
                f"{_first_difference(record['messages'], messages)}"
            )
        self.position += 1
        return ChatReply(record["reply"], record.get("usage"), record.get("model"))


def _first_difference(recorded: list[Message], asked: list[Message]) -> str:
    if len(recorded) != len(asked):
        return f"the recorded request has {len(recorded)} messages, this one {len(asked)}"
    for i, (a, b) in enumerate(zip(recorded, asked, strict=False)):
        if a != b:
            was, now = a.get("content", "")[:120], b.get("content", "")[:120]
            return f"message {i} ({b.get('role')}) differs: recorded {was!r}..., asked {now!r}..."
    return "no difference"


class ConsoleChat(ChatBackend):
    """A human answers: the last message is printed and the reply is read from the console.

    The reply ends at an empty line (so multi-line answers and pasted chat replies work); an empty first line
    means an empty reply.

    Args:
        input_fn: reads one line (default ``input``).
        print_fn: shows text (default ``print``).
        show_all: print the whole request (system and task) the first time, then only what changed.
    """

    def __init__(
        self, input_fn: Callable[[str], str] = input, print_fn: Callable[[str], None] = print, show_all: bool = True
    ) -> None:
        self.input_fn = input_fn
        self.print_fn = print_fn
        self.show_all = show_all
        self._shown = 0

    def describe(self) -> dict[str, Any]:  # noqa: D102
        return {"backend": "console"}

    def complete(self, messages: list[Message], on_error: Callable[[dict[str, Any]], None] | None = None) -> ChatReply:
        """Print the request, read the reply up to an empty line."""
        start = 0 if (self.show_all and self._shown == 0) else len(messages) - 1
        for message in messages[start:]:
            self.print_fn(f"--- {message['role']} ---\n{message['content']}")
        self._shown += 1
        lines = []
        prompt = "your reply (end with an empty line)> "
        while True:
            try:
                line = self.input_fn(prompt)
            except EOFError:
                break
            if not line.strip():
                break
            lines.append(line)
            prompt = ""
        return ChatReply("\n".join(lines))


@dataclass
class Transcript:
    """An append-only JSON-lines record of a run, written as it happens (one ``write`` + flush + fsync a record).

    A crash can at worst leave a truncated last line, which :meth:`read` ignores. Secrets (API keys) are replaced
    by ``***`` before anything is written.

    When resuming, the run replays from its beginning and re-emits the records it wrote before; the first
    ``n`` records of each deterministic type that the file already holds are dropped instead of written twice
    (types in :attr:`REPLAYED`), so the file ends up as one uninterrupted run.

    Args:
        path: the file. It must not exist unless ``resume`` is set (a transcript is never overwritten).
        resume: continue an existing transcript.
        secrets: strings to redact.

    Raises:
        FileExistsError: ``path`` exists and ``resume`` is false.
        FileNotFoundError: ``resume`` is set and ``path`` does not exist.
    """

    path: Path
    resume: bool = False
    secrets: tuple[str, ...] = ()
    existing: list[dict[str, Any]] = field(default_factory=list)
    _skip: dict[str, int] = field(default_factory=dict)

    REPLAYED = ("exchange", "evaluation", "rejected", "round_failed")

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        if self.resume:
            self.existing = self.read(self.path)
            for record in self.existing:
                if record.get("type") in self.REPLAYED:
                    self._skip[record["type"]] = self._skip.get(record["type"], 0) + 1
            self._truncate_partial_line()
        elif self.path.exists():
            raise FileExistsError(f"transcript {str(self.path)!r} exists; pass resume to continue it, or another path")
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.touch(exist_ok=False)

    def _truncate_partial_line(self) -> None:
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            # a record cut by a crash: drop it (read() already ignored it)
            with open(self.path, "r+b") as f:
                f.truncate(data.rfind(b"\n") + 1)

    def write(self, record: dict[str, Any]) -> None:
        """Append ``record`` (JSON-able), unless it is a replayed record the file already holds."""
        kind = record.get("type", "")
        if self._skip.get(kind, 0) > 0:
            self._skip[kind] -= 1
            return
        line = json.dumps(record, ensure_ascii=False)
        for secret in self.secrets:
            if secret:
                line = line.replace(secret, "***")
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())

    @staticmethod
    def read(path: str | os.PathLike) -> list[dict[str, Any]]:
        """All complete records of a transcript file.

        Raises:
            FileNotFoundError: no such file.
            ValueError: a line other than the last is not JSON.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"transcript {str(path)!r} does not exist")
        lines = path.read_text(encoding="utf-8").split("\n")
        records = []
        for i, line in enumerate(lines):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as err:
                if i == len(lines) - 1:  # a last line cut by a crash
                    break
                raise ValueError(f"transcript {str(path)!r} line {i + 1} is not JSON: {err}") from err
        return records

    @staticmethod
    def exchanges(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
        """The ``exchange`` records (request messages and reply) among ``records``."""
        return [r for r in records if r.get("type") == "exchange"]
