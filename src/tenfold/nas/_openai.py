"""The openai client as :class:`~tenfold.nas.llm.OpenAIChat` uses it: its own retries, our backoff, a log.

Imported only when an :class:`~tenfold.nas.llm.OpenAIChat` is made: ``openai`` takes about two seconds to import.

* :class:`AttemptLog` counts the HTTP attempts of one chat call and keeps why the last one failed.
* :class:`RecordingHttpClient` is openai's default HTTP client (``openai.DefaultHttpxClient``: the same timeouts,
  pool limits and proxy settings) whose ``send``, the public httpx call that the openai client makes once per
  attempt, notes each attempt's outcome in the log: a timeout, a connection error, or an HTTP error status with its
  body. Event hooks would not do: they see no timeout and no connection error.
* :class:`BackoffOpenAI` is ``openai.OpenAI`` with one override, ``_calculate_retry_timeout``. The client decides
  whether to retry (timeouts, connection errors, HTTP 408, 409, 429 and 5xx, unless the server says no with
  ``x-should-retry`` or a ``Retry-After`` over two minutes) and sleeps; the wait is ours,
  ``min(backoff_s * 2**(attempt - 1), backoff_max_s)``, except that a server's ``Retry-After`` is obeyed, and the
  failed attempt's transcript entry is written there, before the sleep. The client's own wait (0.5 s doubling up to
  8 s, with jitter) has no public setting, and without the override ``backoff_s`` (``--backoff``) would mean
  nothing. The override is a private method of ``openai``: if a release renamed it, the retried attempts would go
  unrecorded and the tests that check their entries and waits would fail.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

import openai

# the HTTP library under the installed openai client: httpx2 in current releases, httpx in earlier ones
_http = importlib.import_module(openai.DefaultHttpxClient.__base__.__module__)


class AttemptLog:
    """The HTTP attempts of the chat call in progress: how many were made, and why the last one failed.

    Args:
        timeout: seconds per attempt (named in the message of a timeout).
        backoff_s: wait after the first failed attempt, in seconds; it doubles with every further attempt.
        backoff_max_s: longest wait, in seconds.
        redact: removes secrets from a text.
    """

    def __init__(self, timeout: float, backoff_s: float, backoff_max_s: float, redact: Callable[[str], str]) -> None:
        self.timeout = timeout
        self.backoff_s = backoff_s
        self.backoff_max_s = backoff_max_s
        self.redact = redact
        self.start(None)

    def start(self, on_error: Callable[[dict[str, Any]], None] | None) -> None:
        """Begin a chat call whose failed attempts are reported to ``on_error``."""
        self.attempts = 0
        self.failure = ""
        self.on_error = on_error

    def backoff(self) -> float:
        """Seconds to wait after the attempt just made (exponential backoff, capped)."""
        return min(self.backoff_s * 2 ** (self.attempts - 1), self.backoff_max_s)

    def failed(self, retry_in_s: float | None) -> None:
        """Report the last attempt's failure; ``retry_in_s`` is the wait before the next one (None: no next one)."""
        if self.on_error is not None:
            self.on_error({"attempt": self.attempts, "error": self.failure, "retry_in_s": retry_in_s})


class RecordingHttpClient(openai.DefaultHttpxClient):
    """openai's default HTTP client, noting the outcome of every attempt in ``log``."""

    def __init__(self, log: AttemptLog, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.log = log

    def send(self, request: Any, **kwargs: Any) -> Any:  # noqa: D102
        log = self.log
        log.attempts += 1
        log.failure = ""
        try:
            response = super().send(request, **kwargs)
        except _http.TimeoutException:
            log.failure = f"no reply within {log.timeout:g} s"
            raise
        except _http.TransportError as err:
            log.failure = f"connection failed: {log.redact(str(err) or type(err).__name__)[:300]}"
            raise
        if response.status_code >= 400:
            response.read()  # the body says why; openai reads it for its error too
            body = " ".join(response.text.split())
            log.failure = f"HTTP {response.status_code}: {log.redact(body)[:500]}"
        return response


class BackoffOpenAI(openai.OpenAI):
    """``openai.OpenAI`` whose retries wait ``AttemptLog.backoff`` (or the server's ``Retry-After``) and are logged.

    Needs a :class:`RecordingHttpClient` as ``http_client``.
    """

    def _calculate_retry_timeout(self, remaining_retries: int, options: Any, response_headers: Any = None) -> float:
        log: AttemptLog = self._client.log
        if response_headers is not None and ("retry-after" in response_headers or "retry-after-ms" in response_headers):
            wait = super()._calculate_retry_timeout(remaining_retries, options, response_headers)
        else:
            wait = log.backoff()
        log.failed(wait)
        return wait
