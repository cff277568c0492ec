"""A local stand-in for the Anthropic Messages API and an OpenAI-compatible chat server.

Tests point the real SDK clients at it (base_url), so what gets exercised is the SDK's own request
building, error mapping and response parsing, not a mock of them. Each test scripts what the next
requests meet (an answer, a rate limit, an overload, a broken body, a stall) and afterwards reads
back exactly what the SDK sent.

    with FakeLLMServer() as server:
        server.script(Behaviour.status(429, retry_after=0), Behaviour.ok("Hello"))
        AnthropicGenerator(base_url=server.url, ...)
        ...
        assert len(server.requests) == 2
"""

from __future__ import annotations

import collections
import itertools
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ANTHROPIC_PATH = "/v1/messages"
OPENAI_PATH = "/v1/chat/completions"


@dataclass(frozen=True)
class Behaviour:
    """What the server does with one request; build with the class methods."""

    kind: str  # "ok", "status", "invalid_json", "wrong_shape", "not_json", "stall"
    text: str | None = None  # for "ok": None means a default answer numbered by request
    code: int = 200  # HTTP status, for "status"
    retry_after: float | None = None
    input_tokens: int | None = None  # None: a rough count of the prompt's words
    output_tokens: int | None = None
    stall_s: float = 0.0
    model: str | None = None  # served model id; None echoes the requested one
    stop_reason: str | None = None  # None: the API's normal stop ("end_turn" / "stop")

    @classmethod
    def ok(
        cls,
        text: str | None = None,
        *,
        input_tokens: int | None = None,
        output_tokens: int | None = None,
        model: str | None = None,
        stop_reason: str | None = None,
    ) -> Behaviour:
        return cls(
            "ok",
            text=text,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            model=model,
            stop_reason=stop_reason,
        )

    @classmethod
    def status(cls, code: int, *, retry_after: float | None = None) -> Behaviour:
        return cls("status", code=code, retry_after=retry_after)

    @classmethod
    def invalid_json(cls) -> Behaviour:
        return cls("invalid_json")

    @classmethod
    def wrong_shape(cls) -> Behaviour:
        return cls("wrong_shape")

    @classmethod
    def not_json(cls) -> Behaviour:
        """A 200 with an HTML page, as a misconfigured proxy in front of the API sends."""
        return cls("not_json")

    @classmethod
    def stall(cls, seconds: float, text: str | None = None) -> Behaviour:
        """Answer only after `seconds`, by when a client with a shorter timeout has given up."""
        return cls("stall", text=text, stall_s=seconds)


OK = Behaviour.ok()


@dataclass
class RecordedRequest:
    path: str
    headers: dict[str, str]  # lower-cased names
    body: object  # parsed JSON, or None when the body was not JSON
    raw: bytes = field(repr=False, default=b"")


# The error "type" each API puts in its error body for a status, as the real services do.
_ANTHROPIC_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}
_OPENAI_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    404: "invalid_request_error",
    429: "rate_limit_exceeded",
    500: "server_error",
    503: "server_error",
}


class FakeLLMServer:
    """ThreadingHTTPServer on 127.0.0.1 with a scripted queue of behaviours.

    Requests take behaviours from the queue in arrival order; once it is empty every request gets
    `default` (a plain answer). One queue serves both endpoints: a test drives one backend at a time.
    """

    def __init__(self, default: Behaviour = OK):
        self.default = default
        self.requests: list[RecordedRequest] = []
        self._queue: collections.deque[Behaviour] = collections.deque()
        self._lock = threading.Lock()
        self._released = threading.Event()  # set at shutdown so stalled handlers let go at once
        self._ids = itertools.count(1)
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    # -- lifecycle ----------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """Base URL for the Anthropic client (it appends /v1/messages itself)."""
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def openai_url(self) -> str:
        """Base URL for the OpenAI client, which appends only /chat/completions."""
        return f"{self.url}/v1"

    def start(self) -> FakeLLMServer:
        # A short poll interval: shutdown() waits up to one interval, once per test.
        serve = lambda: self._httpd.serve_forever(poll_interval=0.02)  # noqa: E731
        self._thread = threading.Thread(target=serve, name="fake-llm", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        self._released.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> FakeLLMServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- scripting and inspection -------------------------------------------------------------

    def script(self, *behaviours: Behaviour) -> None:
        with self._lock:
            self._queue.extend(behaviours)

    def bodies(self, path: str | None = None) -> list[dict]:
        with self._lock:
            return [r.body for r in self.requests if path is None or r.path == path]

    def _next(self, recorded: RecordedRequest) -> tuple[Behaviour, int]:
        with self._lock:
            self.requests.append(recorded)
            behaviour = self._queue.popleft() if self._queue else self.default
            return behaviour, next(self._ids)

    # -- responses in each API's real shape ---------------------------------------------------

    def _respond(self, path: str, body: object, behaviour: Behaviour, number: int) -> tuple[int, dict, bytes]:
        if behaviour.kind == "stall":
            self._released.wait(behaviour.stall_s)
        if behaviour.kind == "status":
            return self._error(path, behaviour)
        if behaviour.kind == "invalid_json":
            return 200, {"content-type": "application/json"}, b'{"id": "msg_broken", "content": [{"ty'
        if behaviour.kind == "not_json":
            return 200, {"content-type": "text/html"}, b"<html><body>Bad gateway</body></html>"
        if behaviour.kind == "wrong_shape":
            return (
                200,
                {"content-type": "application/json"},
                json.dumps({"status": "ok", "data": None}).encode(),
            )
        request = body if isinstance(body, dict) else {}
        text = behaviour.text if behaviour.text is not None else f"Answer number {number}."
        input_tokens = (
            behaviour.input_tokens if behaviour.input_tokens is not None else _prompt_words(request)
        )
        output_tokens = behaviour.output_tokens if behaviour.output_tokens is not None else len(text.split())
        model = behaviour.model or request.get("model") or "unknown-model"
        if path == ANTHROPIC_PATH:
            stop = behaviour.stop_reason or "end_turn"
            payload = _anthropic_message(number, model, text, input_tokens, output_tokens, stop)
        elif request.get("stream"):
            stop = behaviour.stop_reason or "stop"
            usage = bool((request.get("stream_options") or {}).get("include_usage"))
            events = _openai_stream(number, model, text, input_tokens, output_tokens, stop, usage)
            return 200, {"content-type": "text/event-stream", "request-id": f"req_{number:06d}"}, events
        else:
            stop = behaviour.stop_reason or "stop"
            payload = _openai_completion(number, model, text, input_tokens, output_tokens, stop)
        return (
            200,
            {"content-type": "application/json", "request-id": f"req_{number:06d}"},
            json.dumps(payload).encode(),
        )

    def _error(self, path: str, behaviour: Behaviour) -> tuple[int, dict, bytes]:
        code = behaviour.code
        headers = {"content-type": "application/json"}
        if behaviour.retry_after is not None:
            headers["retry-after"] = _header_number(behaviour.retry_after)
        message = f"fake server says {code}"
        if path == ANTHROPIC_PATH:
            kind = _ANTHROPIC_ERROR_TYPES.get(code, "api_error")
            payload: dict = {
                "type": "error",
                "error": {"type": kind, "message": message},
                "request_id": "req_err",
            }
        else:
            kind = _OPENAI_ERROR_TYPES.get(code, "server_error")
            payload = {"error": {"message": message, "type": kind, "param": None, "code": None}}
        return code, headers, json.dumps(payload).encode()

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as the SDKs' connection pools expect
            timeout = 10  # an idle kept-alive connection must not pin a thread forever

            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                raw = self.rfile.read(int(self.headers.get("content-length") or 0))
                try:
                    body = json.loads(raw)
                except ValueError:
                    body = None
                headers = {k.lower(): v for k, v in self.headers.items()}
                recorded = RecordedRequest(self.path, headers, body, raw)
                if self.path not in (ANTHROPIC_PATH, OPENAI_PATH):
                    with server._lock:
                        server.requests.append(recorded)
                    self._send(404, {"content-type": "application/json"}, b'{"error": "no such path"}')
                    return
                behaviour, number = server._next(recorded)
                self._send(*server._respond(self.path, body, behaviour, number))

            def _send(self, status: int, headers: dict, payload: bytes) -> None:
                try:
                    self.send_response(status)
                    for name, value in headers.items():
                        self.send_header(name, value)
                    self.send_header("content-length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True  # the client timed out and left; nobody to tell

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                pass  # keep pytest output clean

        return Handler


def _prompt_words(request: dict) -> int:
    parts = [request.get("system") or ""]
    for message in request.get("messages") or []:
        content = message.get("content") if isinstance(message, dict) else ""
        parts.append(content if isinstance(content, str) else json.dumps(content))
    return sum(len(str(p).split()) for p in parts)


def _header_number(seconds: float) -> str:
    return str(int(seconds)) if float(seconds).is_integer() else str(seconds)


def _anthropic_message(
    number: int, model: str, text: str, input_tokens: int, output_tokens: int, stop_reason: str
) -> dict:
    return {
        "id": f"msg_fake{number:020d}",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": text, "citations": None}],
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": {
            "input_tokens": input_tokens,
            "output_tokens": output_tokens,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
            "service_tier": "standard",
        },
    }


def _openai_completion(
    number: int, model: str, text: str, input_tokens: int, output_tokens: int, finish_reason: str
) -> dict:
    return {
        "id": f"chatcmpl-fake{number:012d}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text, "refusal": None, "tool_calls": None},
                "logprobs": None,
                "finish_reason": finish_reason,
            }
        ],
        "usage": {
            "prompt_tokens": input_tokens,
            "completion_tokens": output_tokens,
            "total_tokens": input_tokens + output_tokens,
        },
        "system_fingerprint": None,
    }


def _openai_stream(
    number: int, model: str, text: str, input_tokens: int, output_tokens: int, finish_reason: str, usage: bool
) -> bytes:
    """A streamed chat completion as server-sent events: the role, one delta per word (with its
    leading space, as token pieces come), the finish reason, the usage if asked for, [DONE]."""
    base = {"id": f"chatcmpl-fake{number:012d}", "object": "chat.completion.chunk", "created": int(time.time()),
            "model": model, "system_fingerprint": None}
    pieces = [word if i == 0 else " " + word for i, word in enumerate(text.split(" "))]
    chunks = [{**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]}]
    chunks += [{**base, "choices": [{"index": 0, "delta": {"content": p}, "finish_reason": None}]} for p in pieces]
    chunks.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": finish_reason}]})
    if usage:
        chunks.append({**base, "choices": [], "usage": {"prompt_tokens": input_tokens, "completion_tokens": output_tokens,
                                                        "total_tokens": input_tokens + output_tokens}})
    lines = [f"data: {json.dumps(c)}\n\n" for c in chunks] + ["data: [DONE]\n\n"]
    return "".join(lines).encode()
