"""The search service: a FastAPI application over a store's published generation, run by uvicorn.

Routes (nothing else answers; no route takes a path, a file name or a store):

- `GET /search?q=...&k=10` and `POST /search` `{"queries": [...], "k": 10}`: the hits `wikiembed search`
  finds (the model's query prompt, the index where it matches the data, else an exact scan), with the
  generation, model and revision that answered and `method` (`index` or `exact`). Requests that arrive
  while a batch is embedded are embedded together next (`batcher`), each batch from one generation.
- `POST /feedback` `{"query", "id" | "ids" | "id" + "chunk_index", "relevant"[, "rank", "generation"]}`:
  one judged-queries line appended to the `--feedback` file and fsynced before the 201 (`feedback`).
- `GET /healthz`: the generation served (and why a newer published one is not, if it is not).
- `GET /`: the page (`page`).

Safe by default: the service binds to loopback, and there it answers only requests addressed to a
loopback name (a web page elsewhere cannot reach it through DNS rebinding); another address needs a
token, and feedback then needs `Authorization: Bearer TOKEN`. Bodies, queries, ids and k are bounded
(413 / 422 naming the field); no cross-origin browser access unless `--cors-origin` names an origin.

Touches: the served store (read), the feedback file (appended), one listening socket.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import logging
import os
import socket
import threading
from typing import Annotated, Any, Sequence

import orjson
from fastapi import Depends, FastAPI, Header, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

from wikiembed.errors import InputError, WikiembedError
from wikiembed.serving.batcher import MicroBatcher
from wikiembed.serving.feedback import MAX_QUERY_CHARS, FeedbackLog, FeedbackRecord
from wikiembed.serving.generation import PublishedStore
from wikiembed.serving.page import PAGE
from wikiembed.serving.settings import TOKEN_ENV, ServeSettings

logger = logging.getLogger(__name__)

MAX_K = 100
MAX_QUERIES = 32  # per POST /search
MAX_BODY_BYTES = 64 * 1024  # 32 queries of 1,000 characters fit, with room for JSON escapes
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1", "[::1]")
# Requests in flight at once before uvicorn answers 503: queued searches wait for a batch each.
MAX_CONCURRENCY = 512

Text = Annotated[str, StringConstraints(min_length=1, max_length=MAX_QUERY_CHARS)]


class SearchBatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    queries: list[Text] = Field(min_length=1, max_length=MAX_QUERIES)
    k: int = Field(10, ge=1, le=MAX_K)

    @field_validator("queries")
    @classmethod
    def _not_blank(cls, queries: list[str]) -> list[str]:
        for i, q in enumerate(queries):
            if not q.strip():
                raise ValueError(f"query {i} is blank; give the text to search for")
        return queries


def is_loopback(host: str) -> bool:
    if host.strip("[]") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class BodyLimit:
    """ASGI middleware: a request body over `limit` bytes gets 413 before it is read; one without a
    declared length (chunked) gets 411, so no body is ever read past the limit."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] in ("POST", "PUT", "PATCH"):
            headers = dict(scope["headers"])
            length = headers.get(b"content-length")
            problem = None
            if length is None and b"chunked" in headers.get(b"transfer-encoding", b""):
                problem = (411, "send the body with a Content-Length")
            elif length is not None and (not length.isdigit() or int(length) > self.limit):
                problem = (413, f"the request body is over {self.limit:,} bytes")
            if problem:
                response = JSONResponse({"detail": problem[1]}, status_code=problem[0])
                return await response(scope, receive, send)
        await self.app(scope, receive, send)


class SafeHeaders:
    """ASGI middleware: answers only Host names of a loopback address when bound to one (DNS rebinding),
    and marks every response not to be sniffed, framed or referred."""

    EXTRA = [(b"x-content-type-options", b"nosniff"), (b"x-frame-options", b"DENY"), (b"referrer-policy", b"no-referrer")]

    def __init__(self, app: Any, loopback_only: bool) -> None:
        self.app = app
        self.loopback_only = loopback_only

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if self.loopback_only:
            host = dict(scope["headers"]).get(b"host", b"").decode("latin-1")
            name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
            if name not in LOOPBACK_NAMES:
                response = JSONResponse({"detail": f"host {host!r} is not served here: this service answers loopback names only"},
                                        status_code=421)
                return await response(scope, receive, send)

        async def marked(message: dict) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *self.EXTRA]}
            await send(message)

        await self.app(scope, receive, marked)


def _invalid(where: tuple[str, ...], message: str, value: Any) -> RequestValidationError:
    """A 422 naming the field, in FastAPI's own shape."""
    return RequestValidationError([{"type": "value_error", "loc": where, "msg": message, "input": value}])


def create_app(published: PublishedStore, feedback: FeedbackLog | None = None, token: str | None = None,
               cors_origins: Sequence[str] = (), loopback_only: bool = True) -> FastAPI:
    """The application; `published` is loaded already (its first generation)."""

    def answer(requests: Sequence[tuple[list[str], int]]) -> list[dict[str, Any]]:
        served = published.get()  # once per batch: every answer in it comes from this generation
        queries = [q for qs, _ in requests for q in qs]
        answers = served.answer(queries, [k for qs, k in requests for _ in qs])
        out, at = [], 0
        for qs, _ in requests:
            out.append({"served": served.describe(), "answers": answers[at : at + len(qs)]})
            at += len(qs)
        return out

    batcher: MicroBatcher = MicroBatcher(answer)
    app = FastAPI(title="wikiembed search", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.batcher = batcher
    app.state.published = published
    if cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["Content-Type", "Authorization"])
    app.add_middleware(BodyLimit, limit=MAX_BODY_BYTES)
    app.add_middleware(SafeHeaders, loopback_only=loopback_only)

    @app.exception_handler(WikiembedError)
    async def store_trouble(request: Request, exc: WikiembedError) -> JSONResponse:
        logger.warning("wikiembed serve: %s", exc)
        return JSONResponse({"detail": str(exc)}, status_code=503)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("wikiembed serve: %s %s failed", request.method, request.url.path)
        return JSONResponse({"detail": f"the service failed to answer ({type(exc).__name__}); its log has the details"},
                            status_code=500)

    async def ask(queries: list[str], k: int) -> dict[str, Any]:
        return await asyncio.wrap_future(batcher.submit((queries, k)))

    def as_json(payload: dict[str, Any]) -> Response:
        # Hits are plain str/int/float already: orjson writes them directly (FastAPI's own encoder walks
        # every value in Python first, about a millisecond an answer).
        return Response(orjson.dumps(payload), media_type="application/json")

    @app.get("/search")
    async def search_one(q: Annotated[str, Query(min_length=1, max_length=MAX_QUERY_CHARS)],
                         k: Annotated[int, Query(ge=1, le=MAX_K)] = 10) -> Response:
        if not q.strip():
            raise _invalid(("query", "q"), "the query is blank; give the text to search for", q)
        done = await ask([q], k)
        one = done["answers"][0]
        return as_json({"query": q, "k": k, **done["served"], "method": one["method"], "index_note": one["index_note"], "hits": one["hits"]})

    @app.post("/search")
    async def search_many(body: SearchBatch) -> Response:
        done = await ask(body.queries, body.k)
        return as_json({"k": body.k, **done["served"],
                        "results": [{"query": q, **a} for q, a in zip(body.queries, done["answers"])]})

    def writer(authorization: Annotated[str | None, Header()] = None) -> FeedbackLog:
        """The feedback file, for a request allowed to write (checked before its body is read)."""
        if feedback is None:
            raise HTTPException(404, "feedback is off here: start the service with --feedback FILE.jsonl to record it")
        if token is not None:
            scheme, _, given = (authorization or "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
                raise HTTPException(401, "feedback needs the service's token: Authorization: Bearer TOKEN",
                                    headers={"WWW-Authenticate": "Bearer"})
        return feedback

    @app.post("/feedback", status_code=201)
    def record(body: FeedbackRecord, log: FeedbackLog = Depends(writer)) -> dict[str, Any]:
        served = published.get()
        for field, article in [("id", body.id)] if body.id is not None else [("ids", i) for i in body.ids or []]:
            chunks = served.chunks_of(article)
            if chunks == 0:
                raise _invalid(("body", field), f"article id {article!r} is not in the served store "
                               f"({served.root.name}, generation {served.generation}); give an id a search returned", article)
            if field == "id" and body.chunk_index is not None and body.chunk_index >= chunks:
                raise _invalid(("body", "chunk_index"), f"article {article!r} has {chunks} chunk(s) (0 to {chunks - 1}), "
                               f"not chunk {body.chunk_index}", body.chunk_index)
        row = body.line(served.generation)
        log.append(row)
        return {"recorded": row}

    @app.get("/healthz")
    def health() -> dict[str, Any]:
        served = published.served or published.get()  # what answers now; the next batch moves it on
        root, gen = published.published()
        return {"status": "ok" if published.error is None else "stale", **served.describe(),
                "published": {"store": root.name, "generation": gen}, "error": published.error,
                "feedback": {"enabled": feedback is not None, "token_required": token is not None},
                "batches": batcher.batches, "searches": batcher.items}

    @app.get("/", response_class=HTMLResponse)
    def page() -> HTMLResponse:
        return HTMLResponse(PAGE)

    return app


def _one_blas_thread() -> None:
    """Limit numpy's BLAS to one thread in this process.

    A batch's scores are products of a few dozen queries by a few hundred candidates: microseconds on
    one core. With a BLAS thread per core, each product wakes the others, and while the model's forward
    pass holds the cores that wake-up costs milliseconds a batch (measured: 0.05 ms median alone, 8 to 12 ms
    beside a loaded torch)."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1, user_api="blas")


class Service:
    """A started service: the store loaded, the feedback file open, the socket bound; `run` serves in this
    thread (the CLI), `start` in a background one (tests, benchmarks), `stop` ends either."""

    def __init__(self, settings: ServeSettings) -> None:
        token = settings.token or os.environ.get(TOKEN_ENV) or None
        if token is not None and len(token) < 16:
            raise InputError(f"the token (${TOKEN_ENV}) is {len(token)} characters; use at least 16 (e.g. `openssl rand -hex 16`).")
        loopback = is_loopback(settings.host)
        if not loopback and token is None:
            raise InputError(
                f"--host {settings.host} is not a loopback address, so anyone who reaches it could write feedback; "
                f"give --token (or ${TOKEN_ENV}) of at least 16 characters, or keep the default --host 127.0.0.1."
            )
        self.settings = settings
        _one_blas_thread()
        self.feedback = FeedbackLog(settings.feedback) if settings.feedback else None
        self.published = PublishedStore(settings.store, settings.form)
        self.served = self.published.get()  # loads the generation and its model: its errors are start-up errors
        self.app = create_app(self.published, self.feedback, token, settings.cors_origin, loopback_only=loopback)
        # The first batch on the batcher's thread starts that thread's OpenMP threads (a second or more on a
        # CPU): done here, not in the first request's time.
        self.app.state.batcher.submit((["warm-up"], 1)).result()
        self.socket = self._bind(settings.host, settings.port)
        self.port = self.socket.getsockname()[1]
        host = f"[{settings.host}]" if ":" in settings.host else settings.host
        self.url = f"http://{host}:{self.port}/"
        self._server: Any = None
        self._thread: threading.Thread | None = None

    @staticmethod
    def _bind(host: str, port: int) -> socket.socket:
        family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host.strip("[]"), port))
        except OSError as exc:
            sock.close()
            raise InputError(f"cannot listen on {host}:{port} ({exc.strerror}); give another --port (or --port 0 for any free one).") from None
        # A response leaves in more than one write; with Nagle's algorithm on, the second waits for the
        # client's delayed ACK (40 ms a request). Accepted connections inherit the option.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.listen(2048)
        sock.set_inheritable(True)
        return sock

    def _config(self) -> Any:
        import uvicorn

        return uvicorn.Config(self.app, log_level="warning", access_log=False, lifespan="off",
                              limit_concurrency=MAX_CONCURRENCY, timeout_keep_alive=5, server_header=False)

    def run(self) -> None:
        import uvicorn

        self._server = uvicorn.Server(self._config())
        try:
            self._server.run(sockets=[self.socket])
        finally:
            self.close()

    def start(self) -> "Service":
        import uvicorn

        self._server = uvicorn.Server(self._config())
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self.socket]}, name="wikiembed-serve", daemon=True)
        self._thread.start()
        while not self._server.started and self._thread.is_alive():
            self._thread.join(0.02)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.close()

    def close(self) -> None:
        self.app.state.batcher.close()
        self.socket.close()
        if self.feedback is not None:
            self.feedback.close()
            self.feedback = None
