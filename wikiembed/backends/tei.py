"""The `tei` backend: embed texts on one or more Text Embeddings Inference (TEI) servers over HTTP.

What it may touch: HTTP to the URLs it is given, and one private thread that
runs its asyncio event loop. Nothing on disk. It is also what the Modal TEI
worker (`modal_workers/tei_app.py`) uses to talk to its own router, so the
cloud path and the self-hosted path share one client.

How it talks to TEI (1.9):

- `/info` is read once per server and obeyed: `max_client_batch_size` (TEI's
  default is 32, not 512) caps inputs per request; `max_concurrent_requests`
  caps inputs in flight, because since 1.9 every input takes a permit and a
  request that cannot get them all is answered 429 at once.
- Batches are also cut to fit TEI's `--payload-limit` (2 MB by default; not
  reported by /info, so it is a constructor argument), and a 413 for the body
  or the batch size splits the batch in two.
- Vectors come from `/v1/embeddings` with `encoding_format: "base64"`
  (little-endian float32 bytes: decoding is a copy); `/embed` JSON floats are
  the fallback where that route is missing, and where the server runs with
  `--auto-truncate` but we must not truncate (the OpenAI route has no
  per-request `truncate`, so only `/embed` can refuse truncation there).
- 429, 424, 503 (and a proxy's 502/504), timeouts and dropped connections are
  retried with exponential backoff and jitter, a few times and briefly: this is
  TEI's flow control. After `max_retries` the call raises
  `TransientBackendError` and the Prefect embed task retries the shard (the
  README's retry table lists every layer).
- An input longer than the model allows (TEI: 413 `validation`, "must have less
  than N tokens"; 422 is accepted too) fails with a message that says to chunk
  with the `tokens` chunker, which keeps every chunk within the model's limit.
  Nothing is truncated silently. Any other refusal fails with TEI's own message.
- Requests spread over all URLs: a shared pool of "slots", `in_flight` per
  server, goes to whichever server frees one first; a failing server keeps its
  slot while it backs off, so healthy servers take the work.
"""

from __future__ import annotations

import asyncio
import binascii
import concurrent.futures
import logging
import random
import re
import threading
from dataclasses import dataclass
from typing import Any, Sequence

import httpx
import numpy as np
import orjson

from wikiembed.backends.base import VectorKind
from wikiembed.backends.tei_protocol import (  # noqa: F401 (decode_*: also importable from here)
    TEI_POOLING,
    _check_served_shape,
    _error_text,
    _local_model_info,
    _NoRoute,
    _Retry,
    _retry_after,
    _Server,
    _TooBig,
    _TooLong,
    decode_embed,
    decode_v1_embeddings,
)
from wikiembed.errors import BackendError, InputError, TransientBackendError

log = logging.getLogger(__name__)

# TEI's overloaded (429), backend (424) and unhealthy (503), plus what a proxy in front of it
# answers while it restarts (502, 504). Everything else is a refusal that retrying won't change.
RETRY_STATUSES = frozenset({424, 429, 502, 503, 504})
# The first contact with each server: long enough for a far-away host to accept a
# connection, short enough that a wrong URL fails the run in seconds.
REACH_TIMEOUT_S = 5.0
# A reachable server must answer that first /info within this: TEI answers /info from its router
# (no model work, no queue), even under load or while the model loads (503). A server that takes
# the connection and stays silent fails the up-front check with its URL, instead of after the
# retry ladder of long request timeouts (minutes).
INFO_ANSWER_TIMEOUT_S = 20.0
# TEI's own messages; they are matched (not the status) because too-long inputs are 413 in TEI
# but 422 in some proxies and older docs, and 413 also means "body too large".
_TOO_LONG = re.compile(r"must have less than (\d+) tokens")
_PROBE_TEXT = "wikiembed probe"
_ENVELOPE_BYTES = 128  # JSON around the inputs, counted against the payload limit


# ---------------------------------------------------------------------------
# The backend
# ---------------------------------------------------------------------------


class TEIBackend:
    """`Backend` over TEI servers: `embed(texts)` -> float32 `[n, dim]`, in order, checked.

    `max_in_flight` is per server and is further capped so that
    `in_flight * batch_size <= max_concurrent_requests / clients` from /info, where
    `clients` is the number of processes that each hold such a client to the same
    servers (`wikiembed.shard_workers`), so together they stay within it. `retries`
    counts retried requests since construction (the pipeline reports it).
    `embed` is safe to call from several threads at once; all calls share the
    same slots, so the bound on in-flight inputs holds across them.
    """

    def __init__(
        self,
        urls: Sequence[str] | str,
        *,
        model_id: str | None = None,
        max_in_flight: int = 8,
        timeout_s: float = 60.0,
        max_retries: int = 3,
        backoff_s: float = 0.5,
        max_backoff_s: float = 8.0,
        payload_limit: int = 2_000_000,
        batch_size: int | None = None,
        revision: str | None = None,
        clients: int = 1,
    ) -> None:
        if isinstance(urls, str):
            urls = [u for u in urls.split(",") if u.strip()]
        self.urls = [u.strip().rstrip("/") for u in urls]
        if not self.urls:
            raise InputError("--tei-url: give at least one TEI server URL, e.g. http://localhost:8080.")
        for url in self.urls:
            if not url.startswith(("http://", "https://")):
                raise InputError(f"--tei-url {url!r}: a TEI URL starts with http:// or https://.")
        if max_in_flight < 1 or max_retries < 0 or timeout_s <= 0 or payload_limit < 1024 or clients < 1:
            raise InputError(
                "TEIBackend: max_in_flight >= 1, max_retries >= 0, timeout_s > 0, payload_limit >= 1024 and clients >= 1 "
                f"are required (got {max_in_flight}, {max_retries}, {timeout_s}, {payload_limit}, {clients})."
            )
        self.max_in_flight = max_in_flight
        self.clients = clients
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.payload_limit = payload_limit
        self.retries = 0  # retried requests, for the run summary
        self.model_id = model_id or ""
        self.revision = revision  # of the model as the caller resolved it; TEI's own model_sha wins
        self.dim = 0
        self.max_tokens = 0
        self.batch_size = batch_size or 0
        self._servers: list[_Server] = []
        self._closed = False
        # A private loop in its own thread: embed() is sync and must work from any thread,
        # including Prefect task threads and threads whose own loop is already running.
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="tei-client-loop", daemon=True)
        self._thread.start()
        try:
            self._call(self._connect(model_id, batch_size))
        except BaseException:
            self.close()
            raise

    # -- public -------------------------------------------------------------

    def embed(self, texts: Sequence[str], prompt: str = "") -> np.ndarray:
        """Vectors of `prompt + text` for each text: the prompt travels in the request, as
        sentence-transformers puts it before the text (TEI's own `prompt_name` needs the server to
        know the model's prompts; the text works with any server)."""
        texts = [prompt + t for t in texts] if prompt else list(texts)
        if not texts:
            return np.empty((0, self.dim), dtype=np.float32)
        vectors = self._call(self._embed(texts))
        # TEI normalizes whole vectors; sentence-transformers cuts to truncate_dim after normalizing.
        return vectors[:, : self.dim] if vectors.shape[1] > self.dim else vectors

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._loop.is_running():
            asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    def __enter__(self) -> "TEIBackend":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- plumbing -----------------------------------------------------------

    async def _shutdown(self) -> None:
        """Cancel what is in flight (a caller still waiting gets an error, not a hang), close connections."""
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)
        client = getattr(self, "_client", None)
        if client is not None:
            await client.aclose()

    def _call(self, coro: Any) -> Any:
        if self._closed:
            coro.close()
            raise BackendError("TEIBackend is closed; create a new one.")
        if threading.current_thread() is self._thread:
            coro.close()
            raise BackendError("TEIBackend.embed was called from its own event loop thread.")
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result()
        except concurrent.futures.CancelledError:
            raise BackendError("TEIBackend was closed while a call was embedding.") from None
        except BaseException:
            future.cancel()  # an interrupted caller must not leave requests running
            raise

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        delay = min(self.max_backoff_s, self.backoff_s * 2 ** (attempt - 1))
        delay *= random.uniform(0.5, 1.0)  # jitter: clients that failed together don't retry together
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.max_backoff_s))
        return delay

    # -- connecting ---------------------------------------------------------

    async def _connect(self, model_id: str | None, batch_size: int | None) -> None:
        # One connection per slot at most; slots per server are at most max_in_flight.
        pool = len(self.urls) * self.max_in_flight
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(self.timeout_s, connect=min(10.0, self.timeout_s)),
            limits=httpx.Limits(max_connections=pool, max_keepalive_connections=pool),
        )
        infos = await asyncio.gather(*(self._get_info(url) for url in self.urls))
        served = {info.get("model_id") for info in infos}
        if len(served) > 1:
            raise BackendError(
                f"the TEI servers serve different models ({sorted(map(str, served))}); "
                "give --tei-url servers that run the same --model-id."
            )
        served_id = str(served.pop())
        if model_id and served_id != model_id:
            raise BackendError(
                f"TEI at {self.urls[0]} serves {served_id!r} but {model_id!r} was asked for; "
                f"start TEI with --model-id {model_id} or pass --model {served_id}."
            )
        self.model_id = model_id or served_id
        max_batch = min(int(info.get("max_client_batch_size") or 32) for info in infos)
        self.batch_size = max(1, min(batch_size or max_batch, max_batch))
        self.max_tokens = min(int(info.get("max_input_length") or 512) for info in infos)
        self._servers = []
        for url, info in zip(self.urls, infos):
            permits = int(info.get("max_concurrent_requests") or 512)
            in_flight = max(1, min(self.max_in_flight, permits // (self.batch_size * self.clients)))
            self._servers.append(_Server(url, info, "/v1/embeddings", in_flight))
        dims = await asyncio.gather(*(self._probe(server) for server in self._servers))
        if len(set(dims)) > 1:
            raise BackendError(f"the TEI servers return vectors of different sizes {dims}; they must run one model.")
        self.dim = dims[0]
        # What TEI reports about its vectors: `/embed` and `/v1/embeddings` normalize (we ask for it),
        # the pooling is the model's unless the router was started with --pooling.
        info = infos[0]
        pooling = ((info.get("model_type") or {}).get("embedding") or {}).get("pooling") or "unknown"
        pooling = TEI_POOLING.get(str(pooling), str(pooling))
        revision = str(info.get("model_sha") or self.revision or "unknown")
        model = _local_model_info(self.model_id)
        if model is not None:
            _check_served_shape(self.urls[0], pooling, model)
            if model.truncate_dim and self.dim > model.truncate_dim:
                self.dim = model.truncate_dim
            self.kind = VectorKind.of_model(model, "tei", str(info.get("model_dtype") or "unknown"))
            self.kind = self.kind.model_copy(update={"revision": revision, "pooling": pooling, "normalize": True})
        else:
            self.kind = VectorKind("tei", self.model_id, revision, pooling, True, str(info.get("model_dtype") or "unknown"))
        # Slots, interleaved so consecutive batches go to different servers.
        self._slots: asyncio.Queue[_Server] = asyncio.Queue()
        for i in range(max(s.in_flight for s in self._servers)):
            for server in self._servers:
                if i < server.in_flight:
                    self._slots.put_nowait(server)

    async def _get_info(self, url: str) -> dict[str, Any]:
        await self._reachable(url)
        attempt = 0
        while True:
            try:
                resp = await self._client.get(url + "/info")
            except (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError) as exc:
                reason = f"{type(exc).__name__}: {exc}"
            else:
                if resp.status_code == 200:
                    try:
                        info = orjson.loads(resp.content)
                    except orjson.JSONDecodeError:
                        raise BackendError(
                            f"{url}/info answered {resp.headers.get('content-type', 'something')} that is not JSON "
                            f"({resp.content[:60]!r}); is --tei-url a TEI server (text-embeddings-router)?"
                        ) from None
                    if not isinstance(info, dict) or "model_id" not in info:
                        raise BackendError(f"{url}/info is not a TEI /info answer; is --tei-url a TEI server?")
                    return info
                if resp.status_code not in RETRY_STATUSES:
                    raise BackendError(
                        f"{url}/info answered HTTP {resp.status_code}; is --tei-url a TEI server "
                        "(text-embeddings-router)?"
                    )
                reason = f"HTTP {resp.status_code}"
            attempt += 1
            if attempt > self.max_retries:
                raise TransientBackendError(
                    f"TEI at {url} did not answer /info after {attempt} tries ({reason}); "
                    "check that the server is running and that --tei-url is right."
                )
            self.retries += 1
            await asyncio.sleep(self._backoff(attempt, None))

    async def _reachable(self, url: str) -> None:
        """One attempt first: a server that is not there (refused, unknown host), or that takes the
        connection and never answers, fails in seconds with its URL, instead of after the retry
        ladder meant for a busy server."""
        try:
            await self._client.get(url + "/info", timeout=httpx.Timeout(INFO_ANSWER_TIMEOUT_S, connect=REACH_TIMEOUT_S))
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.UnsupportedProtocol) as exc:
            raise BackendError(
                f"TEI at {url} cannot be reached ({type(exc).__name__}: {exc or 'no answer'}); start the server, "
                "or fix --tei-url (host and port)."
            ) from None
        except httpx.ReadTimeout:
            raise BackendError(
                f"TEI at {url} took the connection but sent no answer to /info within {INFO_ANSWER_TIMEOUT_S:g} s "
                "(ReadTimeout); a TEI server answers /info at once, so something else listens there or the "
                "server is hung: check --tei-url (host and port) and restart the server."
            ) from None
        except httpx.HTTPError:
            pass  # it answered something, or dropped the connection: the retry ladder in _get_info handles that

    async def _probe(self, server: _Server) -> int:
        """Learn the dimension, and whether the fast base64 route is there and allowed."""
        if server.info.get("auto_truncate"):
            # /v1/embeddings would truncate silently; only /embed can say truncate=false.
            log.warning(
                "TEI at %s runs with --auto-truncate; using /embed (JSON floats, slower) so that "
                "too-long inputs are not truncated silently. Restart it without --auto-truncate "
                "for the base64 route.",
                server.url,
            )
            server.route = "/embed"
        part = [orjson.dumps(_PROBE_TEXT)]
        try:
            try:
                vectors = await self._request_on(server, part, probe=True)
            except _NoRoute:
                server.route = "/embed"
                vectors = await self._request_on(server, part)
        except (_TooBig, _TooLong) as exc:
            raise BackendError(f"TEI at {server.url} refused a two-word probe input: {exc}") from None
        return int(vectors.shape[1])

    async def _request_on(self, server: _Server, parts: list[bytes], probe: bool = False) -> np.ndarray:
        """One request to one server, retried there (probes only; batches use the shared slots)."""
        attempt = 0
        while True:
            try:
                return await self._post(server, parts, probe)
            except _Retry as exc:
                attempt += 1
                if attempt > self.max_retries:
                    raise TransientBackendError(f"TEI at {server.url} kept failing: {exc}") from None
                self.retries += 1
                await asyncio.sleep(self._backoff(attempt, exc.retry_after))

    # -- one request ----------------------------------------------------------

    def _body(self, route: str, parts: list[bytes]) -> bytes:
        inputs = b",".join(parts)
        if route == "/v1/embeddings":
            return b'{"input":[' + inputs + b'],"encoding_format":"base64"}'
        return b'{"inputs":[' + inputs + b'],"truncate":false,"normalize":true}'

    async def _post(self, server: _Server, parts: list[bytes], probe: bool = False) -> np.ndarray:
        route = server.route
        try:
            resp = await self._client.post(
                server.url + route,
                content=self._body(route, parts),
                headers={"Content-Type": "application/json"},
            )
        except httpx.TimeoutException as exc:
            raise _Retry(f"no answer within {self.timeout_s:g}s ({type(exc).__name__})") from None
        except (httpx.NetworkError, httpx.RemoteProtocolError) as exc:
            raise _Retry(f"connection failed ({type(exc).__name__}: {exc})") from None
        n = len(parts)
        if resp.status_code == 200:
            try:
                if route == "/v1/embeddings":
                    return decode_v1_embeddings(resp.content, n)
                return decode_embed(resp.content, n)
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, binascii.Error) as exc:
                raise BackendError(f"TEI at {server.url}{route} answered 200 with a body we cannot read: {exc}") from None
        if probe and resp.status_code in (404, 405):
            raise _NoRoute()
        message, error_type = _error_text(resp)
        if resp.status_code in RETRY_STATUSES:
            raise _Retry(f"HTTP {resp.status_code} {error_type}: {message}".strip(), _retry_after(resp))
        if resp.status_code in (413, 422) and _TOO_LONG.search(message):
            raise _TooLong(message)
        if resp.status_code == 413:
            raise _TooBig(message)
        raise BackendError(
            f"TEI at {server.url}{route} refused {n} input(s): HTTP {resp.status_code} "
            f"{error_type or 'error'}: {message}"
        )

    async def _request(self, parts: list[bytes]) -> np.ndarray:
        """One batch, on whichever server has a free slot, retried with backoff (on any server)."""
        attempt = 0
        while True:
            server = await self._slots.get()
            try:
                return await self._post(server, parts)
            except _Retry as exc:
                attempt += 1
                if attempt > self.max_retries:
                    raise TransientBackendError(
                        f"TEI: a batch of {len(parts)} inputs failed {attempt} times; last, {server.url}: {exc}. "
                        "The servers are overloaded or down; the shard can be retried."
                    ) from None
                self.retries += 1
                # Back off while holding this server's slot, so a failing server takes less work.
                await asyncio.sleep(self._backoff(attempt, exc.retry_after))
            finally:
                self._slots.put_nowait(server)

    # -- one call ---------------------------------------------------------------

    async def _embed(self, texts: list[str]) -> np.ndarray:
        try:
            parts = [orjson.dumps(t) for t in texts]
        except orjson.JSONEncodeError as exc:
            raise InputError(f"a text cannot be sent as JSON ({exc}); the chunk is not valid UTF-8 text.") from None
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        job = _Job(texts, parts, out)
        tasks = [asyncio.create_task(self._run_batch(job, start, stop)) for start, stop in self._plan(parts)]
        try:
            await asyncio.gather(*tasks)
        except BaseException:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        return out

    def _plan(self, parts: list[bytes]) -> list[tuple[int, int]]:
        """Contiguous batches of at most batch_size inputs and payload_limit bytes."""
        budget = self.payload_limit - _ENVELOPE_BYTES
        batches, start, size = [], 0, 0
        for i, part in enumerate(parts):
            cost = len(part) + 1
            if i > start and (i - start >= self.batch_size or size + cost > budget):
                batches.append((start, i))
                start, size = i, 0
            size += cost
        batches.append((start, len(parts)))
        return batches

    async def _run_batch(self, job: "_Job", start: int, stop: int) -> None:
        try:
            job.out[start:stop] = self._checked(await self._request(job.parts[start:stop]), stop - start)
            return
        except _TooBig as exc:
            if stop - start == 1:
                raise BackendError(
                    f"TEI refused input #{start} alone as too large ({exc}); it is {len(job.parts[start])} bytes "
                    f"of JSON. Raise the server's --payload-limit (and this client's payload_limit), "
                    "or cut smaller chunks."
                ) from None
        except _TooLong as exc:
            raise BackendError(
                f"TEI refused an input as too long: {exc}. Chunk with the 'tokens' chunker: it keeps every "
                "chunk within the model's max tokens."
            ) from None
        mid = (start + stop) // 2
        await asyncio.gather(self._run_batch(job, start, mid), self._run_batch(job, mid, stop))

    def _checked(self, vectors: np.ndarray, n: int) -> np.ndarray:
        if vectors.shape != (n, self.dim):
            raise BackendError(
                f"TEI returned vectors of shape {vectors.shape} for {n} inputs of dim {self.dim}; "
                "a server behind --tei-url changed model mid-run?"
            )
        return vectors


@dataclass
class _Job:
    texts: list[str]
    parts: list[bytes]
    out: np.ndarray
