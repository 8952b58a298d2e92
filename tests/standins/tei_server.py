"""A stand-in for Hugging Face Text Embeddings Inference (TEI) 1.9's HTTP contract, for offline tests.

What it may touch: one loopback socket and the threads that serve it. No model,
no GPU, no network beyond 127.0.0.1.

It answers the routes our client uses, shaped as TEI 1.9 answers them
(`router/src/http/server.rs`, `router/src/lib.rs`):

- `GET /health`: 200 with an empty body, or 503 `{"error", "error_type": "unhealthy"}`.
- `GET /info`: model_id, model_sha, model_dtype, model_type, max_concurrent_requests,
  max_input_length, max_batch_tokens, max_batch_requests, max_client_batch_size,
  auto_truncate, tokenization_workers, version, sha, docker_label.
- `POST /embed` (`inputs`, `truncate`, `normalize`): a JSON list of float lists.
- `POST /v1/embeddings` (`input`, `encoding_format` "float" | "base64"): the OpenAI
  envelope; base64 is the little-endian float32 bytes of each vector. This route
  has no per-request `truncate`: it truncates only when the server was started
  with `--auto-truncate`, as TEI does.

Errors follow TEI's mapping of its error types to statuses, which is *not* the
one many people assume: `validation` is **413** (batch larger than
`max_client_batch_size`, and input longer than `max_input_length`), `tokenizer`
is 422, `overloaded` 429, `backend` 424, `unhealthy` 503, `empty` 400. `/embed`
errors are `{"error", "error_type"}`; `/v1/embeddings` errors are
`{"message", "code", "type"}`. A body over the payload limit gets axum's
plain-text 413 ("length limit exceeded"), not JSON.

Concurrency (TEI 1.9): every input of a request takes one permit out of
`max_concurrent_requests`; a request that cannot get them all is answered 429
at once.

Where it differs from TEI, on purpose:

- Tokens are whitespace-separated words (`count_tokens`), no special tokens, so a
  test can build a "too long" input by counting words. Truncation keeps the
  first `max_input_length` words joined by single spaces (`truncate_text`).
- Embeddings are a seeded hash of the text (`embed_text`): deterministic, unit
  length, dimension 384 by default, so tests check every vector exactly.

Switchable faults (`Faults`, changeable while serving): a share of requests
answered 429/503/424, a share whose connection is dropped with no answer, a
share answered slowly, a "poison" substring answered 422 by the tokenizer; plus
`ServerHandle.set_unhealthy()` and `ServerHandle.restart()` (the socket goes
away, connections are cut, the same port comes back later).

Use from tests: `url, handle = start_server(max_client_batch_size=8, error_rate=0.2)`;
`handle.stop()` when done. From a shell:
`python -m tests.standins.tei_server --port 8080 [--error-rate 0.1 ...]`.
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import hashlib
import json
import random
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np

DIM = 384
MODEL_ID = "wikiembed-test/hash-embed-384"
TEI_VERSION = "1.9.0"


# ---------------------------------------------------------------------------
# The "model": deterministic vectors and whitespace tokens
# ---------------------------------------------------------------------------


def embed_text(text: str, dim: int = DIM, normalize: bool = True) -> np.ndarray:
    """The vector this server returns for `text`: float32, unit length unless `normalize=False`."""
    seed = int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little")
    raw = np.random.default_rng(seed).standard_normal(dim)
    if normalize:
        raw = raw / np.linalg.norm(raw)
    return raw.astype(np.float32)


def embed_texts(texts: list[str], dim: int = DIM) -> np.ndarray:
    """`embed_text` for each text, stacked: what a correct client must return for `texts`."""
    if not texts:
        return np.empty((0, dim), dtype=np.float32)
    return np.stack([embed_text(t, dim) for t in texts])


def count_tokens(text: str) -> int:
    """This server's token count: whitespace-separated words (TEI would use the model's tokenizer)."""
    return len(text.split())


def truncate_text(text: str, max_tokens: int) -> str:
    """What this server embeds for a truncated input: the first `max_tokens` words, single-spaced."""
    return " ".join(text.split()[:max_tokens])


# ---------------------------------------------------------------------------
# Configuration: the router flags it mirrors, and the faults it can inject
# ---------------------------------------------------------------------------


@dataclass
class ServerConfig:
    """The subset of `text-embeddings-router` flags that shape the HTTP contract."""

    model_id: str = MODEL_ID
    dim: int = DIM
    max_client_batch_size: int = 32  # TEI's default
    max_input_length: int = 512  # in this server's tokens (words)
    max_batch_tokens: int = 16384
    max_batch_requests: int | None = None
    max_concurrent_requests: int = 512
    payload_limit: int = 2_000_000  # bytes, TEI's default
    auto_truncate: bool = False
    tokenization_workers: int = 1
    latency_s: float = 0.0  # time every embed request takes while holding its permits
    openai_route: bool = True  # False: /v1/embeddings answers 404 (a server without it)
    base64_support: bool = True  # False: encoding_format is ignored and floats come back (older TEI)
    pooling: str = "mean"  # what /info reports (TEI: cls, mean, splade, last_token; --pooling sets it)


@dataclass
class Faults:
    """Faults injected into embed requests, each decided per request by a seeded RNG."""

    error_rate: float = 0.0  # share answered with one of `error_statuses`
    error_statuses: tuple[int, ...] = (429, 503, 424)
    drop_rate: float = 0.0  # share whose connection is closed without an answer
    slow_rate: float = 0.0  # share answered after `slow_s`
    slow_s: float = 0.0
    poison: str | None = None  # inputs containing this substring get 422 (tokenizer error)
    seed: int = 0


_CONFIG_FIELDS = {f.name for f in dataclasses.fields(ServerConfig)}
_FAULT_FIELDS = {f.name for f in dataclasses.fields(Faults)}

_ERROR_BODIES = {
    429: ("Model is overloaded", "overloaded"),
    503: ("unhealthy", "unhealthy"),
    424: ("Inference failed", "backend"),
}


@dataclass
class Stats:
    """What the server saw, for tests to assert the client's behaviour."""

    statuses: Counter = field(default_factory=Counter)  # (path, status) -> count
    batch_sizes: list[int] = field(default_factory=list)  # inputs per accepted embed request
    max_inputs_in_flight: int = 0
    dropped: int = 0
    embedded_inputs: int = 0
    truncate_requests: int = 0  # /embed requests with truncate=true
    inputs: list[str] = field(default_factory=list)  # every input embedded, in arrival order

    def count(self, path: str, status: int) -> int:
        return self.statuses[(path, status)]


# ---------------------------------------------------------------------------
# HTTP
# ---------------------------------------------------------------------------


class _DropConnection(Exception):
    """Raised inside a handler to close the socket without writing an answer."""


class _TEIHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256  # the default backlog (5) resets connections under a burst

    def __init__(self, addr: tuple[str, int], state: "_State") -> None:
        self.state = state
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        super().__init__(addr, _Handler)

    def cut_connections(self) -> None:
        """Shut down every open connection, as a process exit would."""
        with self.connections_lock:
            conns = list(self.connections)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that timed out and left mid-answer is an expected event here, not a traceback.
        pass


class _State:
    """Shared by every connection of one server (and kept across restarts)."""

    def __init__(self, config: ServerConfig, faults: Faults) -> None:
        self.config = config
        self.faults = faults
        self.rng = random.Random(faults.seed)
        self.lock = threading.Lock()
        self.stats = Stats()
        self.in_flight = 0
        self.healthy = True

    def set_faults(self, faults: Faults) -> None:
        with self.lock:
            self.faults = faults
            self.rng = random.Random(faults.seed)

    def draw_fault(self) -> tuple[str | None, int]:
        """One fault for this request: ("error", status) | ("drop", 0) | ("slow", 0) | (None, 0)."""
        with self.lock:
            f = self.faults
            roll = self.rng.random()
            if roll < f.error_rate:
                return "error", self.rng.choice(f.error_statuses)
            roll -= f.error_rate
            if roll < f.drop_rate:
                return "drop", 0
            roll -= f.drop_rate
            if roll < f.slow_rate:
                return "slow", 0
            return None, 0

    def take_permits(self, n: int) -> bool:
        with self.lock:
            if self.in_flight + n > self.config.max_concurrent_requests:
                return False
            self.in_flight += n
            self.stats.max_inputs_in_flight = max(self.stats.max_inputs_in_flight, self.in_flight)
            return True

    def give_permits(self, n: int) -> None:
        with self.lock:
            self.in_flight -= n

    def record(self, path: str, status: int) -> None:
        with self.lock:
            self.stats.statuses[(path, status)] += 1

    def info(self) -> dict[str, Any]:
        c = self.config
        return {
            "model_id": c.model_id,
            "model_sha": None,
            "model_dtype": "float32",
            "model_type": {"embedding": {"pooling": c.pooling}},
            "max_concurrent_requests": c.max_concurrent_requests,
            "max_input_length": c.max_input_length,
            "max_batch_tokens": c.max_batch_tokens,
            "max_batch_requests": c.max_batch_requests,
            "max_client_batch_size": c.max_client_batch_size,
            "auto_truncate": c.auto_truncate,
            "tokenization_workers": c.tokenization_workers,
            "version": TEI_VERSION,
            "sha": None,
            "docker_label": None,
        }


class _TEIError(Exception):
    """A TEI error answer: status, message, error_type."""

    def __init__(self, status: int, message: str, error_type: str) -> None:
        super().__init__(message)
        self.status, self.message, self.error_type = status, message, error_type


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as TEI (hyper) speaks it
    server: _TEIHTTPServer

    def setup(self) -> None:
        super().setup()
        with self.server.connections_lock:
            self.server.connections.add(self.connection)

    def finish(self) -> None:
        with self.server.connections_lock:
            self.server.connections.discard(self.connection)
        try:
            super().finish()
        except OSError:
            pass

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass  # quiet: tests read Stats, not access logs

    # -- plumbing ---------------------------------------------------------

    def _send(self, status: int, body: bytes, content_type: str = "application/json") -> None:
        self.server.state.record(self.path, status)
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _send_json(self, status: int, obj: Any) -> None:
        self._send(status, json.dumps(obj, separators=(",", ":")).encode())

    def _send_error(self, err: _TEIError, openai: bool) -> None:
        if openai:
            body = {"message": err.message, "code": err.status, "type": err.error_type}
        else:
            body = {"error": err.message, "error_type": err.error_type}
        self._send_json(err.status, body)

    def _drop(self) -> None:
        with self.server.state.lock:
            self.server.state.stats.dropped += 1
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    # -- routes -----------------------------------------------------------

    def do_GET(self) -> None:  # noqa: N802 - stdlib name
        state = self.server.state
        if self.path == "/health":
            if state.healthy:
                self._send(200, b"", "text/plain")
            else:
                self._send_json(503, {"error": "unhealthy", "error_type": "unhealthy"})
        elif self.path == "/info":
            self._send_json(200, state.info())
        else:
            self._send(404, b"", "text/plain")

    def do_POST(self) -> None:  # noqa: N802 - stdlib name
        state = self.server.state
        length = int(self.headers.get("Content-Length") or 0)
        # Read the whole body even when refusing it, so the answer is not lost to a reset.
        body = self.rfile.read(length) if length else b""
        openai = self.path == "/v1/embeddings"
        if self.path not in ("/embed", "/v1/embeddings") or (openai and not state.config.openai_route):
            self._send(404, b"", "text/plain")
            return
        if length > state.config.payload_limit:
            # axum's DefaultBodyLimit rejection: plain text, not TEI's JSON error.
            self._send(413, b"Failed to buffer the request body: length limit exceeded", "text/plain")
            return
        if not state.healthy:
            self._send_error(_TEIError(503, "unhealthy", "unhealthy"), openai)
            return
        fault, status = state.draw_fault()
        if fault == "drop":
            self._drop()
            return
        if fault == "error":
            message, error_type = _ERROR_BODIES.get(status, ("injected failure", "backend"))
            self._send_error(_TEIError(status, message, error_type), openai)
            return
        if fault == "slow":
            time.sleep(state.faults.slow_s)
        try:
            answer = self._embed(body, openai)
        except _TEIError as err:
            self._send_error(err, openai)
            return
        self._send(200, answer)

    def _embed(self, body: bytes, openai: bool) -> bytes:
        state = self.server.state
        config = state.config
        try:
            req = json.loads(body)
        except ValueError as exc:
            raise _TEIError(422, f"Failed to parse the request body as JSON: {exc}", "validation") from exc
        inputs = req.get("input" if openai else "inputs")
        single = isinstance(inputs, str)
        texts = [inputs] if single else inputs
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            raise _TEIError(422, "inputs must be a string or a list of strings", "validation")
        if not texts:
            raise _TEIError(400, "`inputs` cannot be empty", "empty")
        if len(texts) > config.max_client_batch_size:
            raise _TEIError(
                413,
                f"batch size {len(texts)} > maximum allowed batch size {config.max_client_batch_size}",
                "validation",
            )
        # `req.truncate.unwrap_or(info.auto_truncate)` in TEI; /v1/embeddings has no such field.
        truncate = config.auto_truncate if openai or req.get("truncate") is None else bool(req["truncate"])
        normalize = True if openai else bool(req.get("normalize", True))
        if not state.take_permits(len(texts)):
            raise _TEIError(429, "Model is overloaded", "overloaded")
        try:
            if config.latency_s:
                time.sleep(config.latency_s)
            vectors, tokens = [], 0
            for text in texts:
                if state.faults.poison and state.faults.poison in text:
                    raise _TEIError(422, "Tokenization error: unexpected input", "tokenizer")
                n_tokens = count_tokens(text)
                if n_tokens > config.max_input_length:
                    if not truncate:
                        raise _TEIError(
                            413,
                            f"`inputs` must have less than {config.max_input_length} tokens. Given: {n_tokens}",
                            "validation",
                        )
                    text = truncate_text(text, config.max_input_length)
                    n_tokens = config.max_input_length
                tokens += n_tokens
                vectors.append(embed_text(text, config.dim, normalize))
        finally:
            state.give_permits(len(texts))
        with state.lock:
            state.stats.batch_sizes.append(len(texts))
            state.stats.embedded_inputs += len(texts)
            state.stats.inputs.extend(texts)
            state.stats.truncate_requests += int(not openai and bool(req.get("truncate")))
        if not openai:
            return json.dumps([v.tolist() for v in vectors], separators=(",", ":")).encode()
        b64 = req.get("encoding_format") == "base64" and config.base64_support
        data = [
            {
                "object": "embedding",
                "embedding": base64.b64encode(v.astype("<f4").tobytes()).decode() if b64 else v.tolist(),
                "index": i,
            }
            for i, v in enumerate(vectors)
        ]
        envelope = {
            "object": "list",
            "data": data,
            "model": config.model_id,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
        return json.dumps(envelope, separators=(",", ":")).encode()


# ---------------------------------------------------------------------------
# Lifecycle
# ---------------------------------------------------------------------------


class ServerHandle:
    """A running test server: its URL, live-switchable faults, stats, restart and stop."""

    def __init__(self, host: str, port: int, state: _State) -> None:
        self.host = host
        self._state = state
        self._lock = threading.Lock()
        self._httpd: _TEIHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._restarter: threading.Thread | None = None
        self._listen(port)
        self.port = self._httpd.server_address[1]  # type: ignore[union-attr]
        self.url = f"http://{host}:{self.port}"

    def _listen(self, port: int) -> None:
        httpd = _TEIHTTPServer((self.host, port), self._state)
        thread = threading.Thread(
            target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, name=f"tei-server:{port}", daemon=True
        )
        thread.start()
        self._httpd, self._thread = httpd, thread

    def _close(self) -> None:
        httpd, self._httpd = self._httpd, None
        if httpd is not None:
            httpd.shutdown()
            httpd.server_close()
            httpd.cut_connections()
        if self._thread is not None:
            self._thread.join(timeout=5)

    @property
    def config(self) -> ServerConfig:
        return self._state.config

    @property
    def stats(self) -> Stats:
        return self._state.stats

    @property
    def faults(self) -> Faults:
        return self._state.faults

    @faults.setter
    def faults(self, faults: Faults) -> None:
        self._state.set_faults(faults)

    def set_unhealthy(self, unhealthy: bool = True) -> None:
        """While unhealthy, /health and every embed request answer 503."""
        self._state.healthy = not unhealthy

    def restart(self, down_s: float = 0.5, wait: bool = False) -> None:
        """Stop listening and cut every connection now; listen again on the same port after `down_s`."""
        with self._lock:
            self._close()

            def come_back() -> None:
                time.sleep(down_s)
                with self._lock:
                    self._listen(self.port)

            self._restarter = threading.Thread(target=come_back, name="tei-server-restart", daemon=True)
            self._restarter.start()
        if wait:
            self._restarter.join()

    def stop(self) -> None:
        if self._restarter is not None:
            self._restarter.join()
        with self._lock:
            self._close()

    def __enter__(self) -> "ServerHandle":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_server(
    port: int = 0, *, host: str = "127.0.0.1", config: ServerConfig | None = None, faults: Faults | None = None, **options: Any
) -> tuple[str, ServerHandle]:
    """Serve on `host:port` (0 = a free port) in background threads; return (url, handle).

    `options` are `ServerConfig` or `Faults` field names, e.g.
    `start_server(max_client_batch_size=8, error_rate=0.2, seed=3)`.
    """
    unknown = set(options) - _CONFIG_FIELDS - _FAULT_FIELDS
    if unknown:
        raise TypeError(f"start_server: unknown options {sorted(unknown)}")
    config = dataclasses.replace(config or ServerConfig(), **{k: v for k, v in options.items() if k in _CONFIG_FIELDS})
    faults = dataclasses.replace(faults or Faults(), **{k: v for k, v in options.items() if k in _FAULT_FIELDS})
    handle = ServerHandle(host, port, _State(config, faults))
    return handle.url, handle


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The fault switches, shared by this module's CLI and `fake_router` (which reads TEI's own flags)."""
    parser.add_argument("--dim", type=int, default=DIM)
    parser.add_argument("--latency-s", type=float, default=0.0)
    parser.add_argument("--error-rate", type=float, default=0.0)
    parser.add_argument("--drop-rate", type=float, default=0.0)
    parser.add_argument("--slow-rate", type=float, default=0.0)
    parser.add_argument("--slow-s", type=float, default=0.0)
    parser.add_argument("--poison", default=None)
    parser.add_argument("--seed", type=int, default=0)


def faults_from_args(args: argparse.Namespace) -> Faults:
    return Faults(
        error_rate=args.error_rate,
        drop_rate=args.drop_rate,
        slow_rate=args.slow_rate,
        slow_s=args.slow_s,
        poison=args.poison,
        seed=args.seed,
    )


def serve_forever(host: str, port: int, config: ServerConfig, faults: Faults) -> None:
    """Serve in the foreground until the process is killed."""
    _, handle = start_server(port, host=host, config=config, faults=faults)
    print(f"TEI test server listening on {handle.url} (model {config.model_id}, dim {config.dim})", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        handle.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="TEI 1.9 HTTP contract stand-in (deterministic hash embeddings).")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--model-id", default=MODEL_ID)
    parser.add_argument("--max-client-batch-size", type=int, default=32)
    parser.add_argument("--max-input-length", type=int, default=512, help="in whitespace-separated words")
    parser.add_argument("--max-batch-tokens", type=int, default=16384)
    parser.add_argument("--max-concurrent-requests", type=int, default=512)
    parser.add_argument("--payload-limit", type=int, default=2_000_000)
    parser.add_argument("--auto-truncate", action="store_true")
    add_arguments(parser)
    args = parser.parse_args(argv)
    config = ServerConfig(
        model_id=args.model_id,
        dim=args.dim,
        max_client_batch_size=args.max_client_batch_size,
        max_input_length=args.max_input_length,
        max_batch_tokens=args.max_batch_tokens,
        max_concurrent_requests=args.max_concurrent_requests,
        payload_limit=args.payload_limit,
        auto_truncate=args.auto_truncate,
        latency_s=args.latency_s,
    )
    serve_forever(args.host, args.port, config, faults_from_args(args))


if __name__ == "__main__":
    main()
