"""NAS test fixtures, loaded as a plugin by the root conftest (a conftest.py in tests/nas would clash with the root
one's module name): where the benchmark tables are, and a scripted OpenAI-compatible chat server on 127.0.0.1."""

from __future__ import annotations

import json
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]  # tests/helpers/ -> repo


def tables_dir() -> Path:
    """The shared NAS benchmark tables: $TENFOLD_NAS_TABLES, else <repo>/../shared/..., else /work/shared/...."""
    candidates = [os.environ.get("TENFOLD_NAS_TABLES"), REPO.parent / "shared/data/nas_benchmarks",
                  "/work/shared/data/nas_benchmarks"]  # fmt: skip
    for candidate in candidates:
        if candidate and (Path(candidate) / "nas_bench_macro_cifar10.json").is_file():
            return Path(candidate)
    pytest.fail(
        "NAS benchmark tables not found: set TENFOLD_NAS_TABLES to the folder holding nas_bench_macro_cifar10.json "
        f"and the other tables (looked in {[str(c) for c in candidates if c]})"
    )


@pytest.fixture(scope="session")
def tables() -> Path:
    """Folder of the benchmark tables (fails, never skips, when they are missing)."""
    return tables_dir()


class FakeChatServer:
    """A chat-completions endpoint that answers from a script, one step per request.

    A step is a dict: ``{"reply": text}``, ``{"status": 500}`` (an HTTP error with a JSON error body),
    ``{"delay": seconds, "reply": text}`` (answers late, to provoke a client timeout), ``{"reply": None}`` (a
    completion whose message content is null), or ``{"body": text, "content_type": ...}`` (HTTP 200, or the step's
    ``status``, with that raw body, e.g. a proxy's HTML page or JSON of another shape). Any step may add
    ``"headers": {name: value}`` to the response (e.g. ``Retry-After``). Every request is recorded with its headers
    and JSON body.
    """

    def __init__(self, script: list[dict[str, Any]]) -> None:
        self.script = list(script)
        self.requests: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # keep pytest output clean
                pass

            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    server.requests.append(
                        {"path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()}, "body": body}
                    )
                    step = server.script.pop(0) if server.script else {"status": 500}
                if self.path != "/v1/chat/completions":
                    step = {"status": 404}
                if "delay" in step:
                    time.sleep(step["delay"])
                content_type = step.get("content_type", "application/json")
                if "body" in step:
                    payload, code = step["body"].encode(), step.get("status", 200)
                elif "status" in step:
                    payload = json.dumps({"error": {"message": "scripted failure", "type": "server_error"}}).encode()
                    code = step["status"]
                else:
                    text = step["reply"]
                    payload = json.dumps({
                        "id": f"chatcmpl-{len(server.requests)}", "object": "chat.completion", "created": 0,
                        "model": body["model"],
                        "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                     "finish_reason": "stop"}],
                        "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
                    }).encode()  # fmt: skip
                    code = 200
                try:
                    self.send_response(code)
                    self.send_header("Content-Type", content_type)
                    for name, value in step.get("headers", {}).items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout case)
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        # a short poll so that shutdown() returns in 0.05 s, not the default 0.5 s (the tests start many servers)
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self) -> FakeChatServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="session")
def chat_server():
    """Factory: ``with chat_server(script) as server: ...``."""
    return FakeChatServer
