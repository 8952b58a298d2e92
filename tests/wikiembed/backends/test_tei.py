"""TEIBackend against the TEI 1.9 stand-in on loopback: limits obeyed, faults survived, vectors exact.

Every test checks every vector against the server's deterministic hash
embedding, so "survived" means "returned exactly the right answer", not
"returned something".
"""

import asyncio
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[3]
if str(ROOT) not in sys.path:  # `tests.` importable however pytest is started
    sys.path.insert(0, str(ROOT))

from wikiembed.backends.tei import TEIBackend, decode_v1_embeddings  # noqa: E402
from wikiembed.backends.base import Backend  # noqa: E402
from wikiembed.errors import BackendError, InputError, TransientBackendError  # noqa: E402
from tests.standins.tei_server import (  # noqa: E402
    DIM,
    MODEL_ID,
    Faults,
    embed_texts,
    start_server,
)

# Fast retries: the faults below are dense, the backoff schedule is what's under test, not its scale.
FAST = dict(timeout_s=2.0, backoff_s=0.01, max_backoff_s=0.05)


def corpus(n: int, offset: int = 0) -> list[str]:
    """Texts of varied length and content, including unicode and JSON-hostile characters."""
    extra = ['quote " and \\ backslash', "tab\there\nnewline", "émoji 🚀 ünïcode", ""]
    return [f"chunk {i + offset} " + "word " * (i % 9) + extra[i % len(extra)] for i in range(n)]


@pytest.fixture
def server():
    handles = []

    def start(**options):
        url, handle = start_server(**options)
        handles.append(handle)
        return url, handle

    yield start
    for handle in handles:
        handle.stop()


@pytest.fixture
def backend():
    made = []

    def make(urls, **options):
        b = TEIBackend(urls, **{**FAST, **options})
        made.append(b)
        return b

    yield make
    for b in made:
        b.close()


def test_reads_info_obeys_batch_limit_and_returns_exact_vectors(server, backend):
    url, handle = server(max_client_batch_size=8, max_input_length=300)
    tei = backend([url])
    assert isinstance(tei, Backend)
    assert (tei.model_id, tei.dim, tei.max_tokens, tei.batch_size) == (MODEL_ID, DIM, 300, 8)
    texts = corpus(203)
    vectors = tei.embed(texts)
    assert vectors.dtype == np.float32 and vectors.flags.c_contiguous
    np.testing.assert_array_equal(vectors, embed_texts(texts))
    assert max(handle.stats.batch_sizes) == 8
    # The fast route, base64 float32; /embed was never needed.
    assert handle.stats.count("/v1/embeddings", 200) >= 203 // 8
    assert handle.stats.count("/embed", 200) == 0
    assert tei.retries == 0
    assert tei.embed([]).shape == (0, DIM)


def test_user_batch_size_is_capped_by_info(server, backend):
    url, handle = server(max_client_batch_size=5)
    assert backend([url], batch_size=3).batch_size == 3
    assert backend([url], batch_size=64).batch_size == 5


def test_in_flight_inputs_stay_within_tei_permits(server, backend):
    # 16 permits, 8 inputs per request: at most 2 requests in flight, whatever max_in_flight says,
    # so TEI 1.9's per-input permits never answer 429 under our own load.
    url, handle = server(max_client_batch_size=8, max_concurrent_requests=16, latency_s=0.05)
    tei = backend([url], max_in_flight=10)
    texts = corpus(160)
    np.testing.assert_array_equal(tei.embed(texts), embed_texts(texts))
    assert handle.stats.count("/v1/embeddings", 429) == 0
    assert 8 < handle.stats.max_inputs_in_flight <= 16


def test_clients_of_several_processes_share_the_permits(server, backend):
    # Two clients (as two shard worker processes hold) on 32 permits, 8 inputs per request: each
    # keeps at most 2 requests in flight, so together they stay within TEI's permits.
    url, handle = server(max_client_batch_size=8, max_concurrent_requests=32, latency_s=0.05)
    clients = [backend([url], max_in_flight=10, clients=2) for _ in range(2)]
    texts = [corpus(160, offset=1000 * k) for k in range(2)]
    with ThreadPoolExecutor(2) as threads:
        got = list(threads.map(lambda k: clients[k].embed(texts[k]), range(2)))
    for k in range(2):
        np.testing.assert_array_equal(got[k], embed_texts(texts[k]))
    assert handle.stats.count("/v1/embeddings", 429) == 0
    assert 16 < handle.stats.max_inputs_in_flight <= 32


def test_concurrent_callers_share_the_bound(server, backend):
    url, handle = server(max_client_batch_size=4, max_concurrent_requests=8, latency_s=0.005)
    tei = backend([url], max_in_flight=8)
    results: dict[int, np.ndarray] = {}

    def call(k: int) -> None:
        results[k] = tei.embed(corpus(40, offset=1000 * k))

    threads = [threading.Thread(target=call, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for k in range(3):
        np.testing.assert_array_equal(results[k], embed_texts(corpus(40, offset=1000 * k)))
    assert handle.stats.count("/v1/embeddings", 429) == 0
    assert handle.stats.max_inputs_in_flight <= 8


def test_works_when_called_from_inside_a_running_event_loop(server, backend):
    url, _ = server()
    tei = backend([url])

    async def inside() -> np.ndarray:
        return tei.embed(["from a coroutine"])

    np.testing.assert_array_equal(asyncio.run(inside()), embed_texts(["from a coroutine"]))


def test_survives_errors_drops_and_slow_answers(server, backend):
    url, handle = server(
        max_client_batch_size=4, error_rate=0.25, error_statuses=(429, 503, 424), drop_rate=0.1,
        slow_rate=0.05, slow_s=0.6, seed=7,
    )  # fmt: skip
    tei = backend([url], timeout_s=0.3, max_retries=12)
    texts = corpus(120)
    np.testing.assert_array_equal(tei.embed(texts), embed_texts(texts))
    stats = handle.stats
    assert sum(stats.count("/v1/embeddings", s) for s in (429, 503, 424)) > 0
    assert stats.dropped > 0
    assert tei.retries >= stats.dropped + sum(stats.count("/v1/embeddings", s) for s in (429, 503, 424))


def test_survives_a_restart_mid_run(server, backend):
    url, handle = server(max_client_batch_size=4, latency_s=0.01)
    tei = backend([url], max_retries=10, max_backoff_s=0.2)
    timer = threading.Timer(0.05, handle.restart, kwargs={"down_s": 0.4})
    timer.start()
    texts = corpus(200)
    vectors = tei.embed(texts)
    timer.join()
    np.testing.assert_array_equal(vectors, embed_texts(texts))
    assert tei.retries > 0  # it did see the server go away


def test_waits_out_an_unhealthy_spell(server, backend):
    url, handle = server()
    tei = backend([url], max_retries=10, max_backoff_s=0.2)
    handle.set_unhealthy()
    threading.Timer(0.3, handle.set_unhealthy, args=(False,)).start()
    texts = corpus(10)
    np.testing.assert_array_equal(tei.embed(texts), embed_texts(texts))
    assert handle.stats.count("/v1/embeddings", 503) > 0


def test_gives_up_as_transient_after_max_retries(server, backend):
    url, handle = server()
    tei = backend([url], max_retries=3)
    handle.faults = Faults(error_rate=1.0, error_statuses=(503,))
    with pytest.raises(TransientBackendError, match=r"failed 4 times.*503 unhealthy"):
        tei.embed(corpus(3))
    assert tei.retries == 3


def test_splits_batches_over_the_payload_limit(server, backend):
    # The server's limit is not in /info: the client learns it from 413 and halves until it fits.
    url, handle = server(payload_limit=2_000, max_client_batch_size=32)
    tei = backend([url])
    texts = [f"{i} " + "x" * 150 for i in range(40)]
    np.testing.assert_array_equal(tei.embed(texts), embed_texts(texts))
    assert handle.stats.count("/v1/embeddings", 413) > 0
    # Told the limit, it plans batches that fit and is never refused.
    before = handle.stats.count("/v1/embeddings", 413)
    informed = backend([url], payload_limit=2_000)
    np.testing.assert_array_equal(informed.embed(texts), embed_texts(texts))
    assert handle.stats.count("/v1/embeddings", 413) == before


def test_one_input_over_the_payload_limit_fails_with_the_fix(server, backend):
    url, _ = server(payload_limit=2_000)
    tei = backend([url])
    with pytest.raises(BackendError, match=r"input #1 alone as too large.*--payload-limit"):
        tei.embed(["small", "y" * 5_000])


def test_too_long_input_fails_with_teis_message_by_default(server, backend):
    url, _ = server(max_input_length=5)
    tei = backend([url])
    with pytest.raises(BackendError, match=r"must have less than 5 tokens\. Given: 12.*tokens' chunker"):
        tei.embed(["short one", " ".join(f"w{i}" for i in range(12))])


def test_tokenizer_refusal_fails_with_teis_message(server, backend):
    url, _ = server(poison="\x07")
    tei = backend([url])
    with pytest.raises(BackendError, match=r"HTTP 422 tokenizer: Tokenization error"):
        tei.embed(["fine", "bell \x07 here"])


def test_falls_back_to_embed_floats_without_the_openai_route(server, backend):
    url, handle = server(openai_route=False, max_client_batch_size=8)
    tei = backend([url])
    texts = corpus(30)
    np.testing.assert_array_equal(tei.embed(texts), embed_texts(texts))
    assert handle.stats.count("/embed", 200) >= 4


def test_decodes_float_answers_from_servers_without_base64(server, backend):
    url, _ = server(base64_support=False)
    tei = backend([url])
    texts = corpus(20)
    np.testing.assert_array_equal(tei.embed(texts), embed_texts(texts))


def test_auto_truncating_server_is_not_allowed_to_truncate_silently(server, backend):
    url, handle = server(auto_truncate=True, max_input_length=5)
    tei = backend([url])
    np.testing.assert_array_equal(tei.embed(["fits"]), embed_texts(["fits"]))
    assert handle.stats.count("/embed", 200) >= 1  # /embed, where truncate=false can be said
    with pytest.raises(BackendError, match="must have less than 5 tokens"):
        tei.embed([" ".join(["w"] * 9)])


def test_spreads_requests_over_several_urls_and_outlives_one(server, backend):
    url_a, a = server(max_client_batch_size=4, latency_s=0.005)
    url_b, b = server(max_client_batch_size=4, latency_s=0.005)
    tei = backend(f"{url_a},{url_b}", max_retries=10)
    texts = corpus(80)
    np.testing.assert_array_equal(tei.embed(texts), embed_texts(texts))
    assert a.stats.count("/v1/embeddings", 200) > 2 and b.stats.count("/v1/embeddings", 200) > 2
    a.stop()  # one server gone for good: the other takes the work
    texts = corpus(40, offset=500)
    np.testing.assert_array_equal(tei.embed(texts), embed_texts(texts))


def test_checks_the_model_it_is_given(server, backend):
    url, _ = server()
    with pytest.raises(BackendError, match=r"serves 'wikiembed-test/hash-embed-384' but 'BAAI/bge-small-en-v1.5'"):
        backend([url], model_id="BAAI/bge-small-en-v1.5")
    other, _ = server(model_id="another/model")
    with pytest.raises(BackendError, match="different models"):
        backend([url, other])


def test_unreachable_server_fails_at_once_and_bad_arguments_are_input_errors(server, backend):
    url, handle = server()
    handle.stop()
    # nothing listening: no retry ladder (meant for a busy server), the URL and the cause at once
    with pytest.raises(BackendError, match=rf"TEI at {url} cannot be reached \(ConnectError") as refused:
        backend([url], max_retries=6, backoff_s=10)
    assert not isinstance(refused.value, TransientBackendError)
    with pytest.raises(InputError, match="http://"):
        backend(["localhost:8080"])


def test_closed_backend_refuses_work(server):
    url, _ = server()
    tei = TEIBackend([url], **FAST)
    tei.close()
    tei.close()  # idempotent
    with pytest.raises(BackendError, match="closed"):
        tei.embed(["x"])


def test_decode_v1_embeddings_restores_index_order_and_padded_base64():
    import base64
    import json

    vectors = np.arange(2 * 5, dtype=np.float32).reshape(2, 5)  # 20 bytes: padded base64
    data = [
        {"object": "embedding", "embedding": base64.b64encode(vectors[i].astype("<f4").tobytes()).decode(), "index": i}
        for i in (1, 0)
    ]
    body = json.dumps({"object": "list", "data": data, "model": "m", "usage": {}}).encode()
    np.testing.assert_array_equal(decode_v1_embeddings(body, 2), vectors)
    with pytest.raises(BackendError, match="returned 2 embeddings for 3 inputs"):
        decode_v1_embeddings(body, 3)


def test_close_during_a_call_fails_that_call_instead_of_hanging(server):
    url, _ = server(latency_s=0.2, max_client_batch_size=2)
    tei = TEIBackend([url], **FAST)
    outcome: list[BaseException] = []

    def call() -> None:
        try:
            tei.embed(corpus(40))
        except BaseException as exc:  # noqa: BLE001 - the outcome is what the test checks
            outcome.append(exc)

    caller = threading.Thread(target=call)
    caller.start()
    threading.Event().wait(0.1)
    tei.close()
    caller.join(timeout=5)
    assert not caller.is_alive()
    assert len(outcome) == 1 and isinstance(outcome[0], BackendError) and "closed while" in str(outcome[0])


def test_an_info_page_that_is_not_json_names_the_url():
    """A web server (or a proxy's error page) at --tei-url: HTML instead of TEI's JSON."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Html(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            body = b"<html><body>Welcome to nginx!</body></html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Html)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}"
    try:
        with pytest.raises(BackendError, match=rf"{url}/info answered text/html that is not JSON.*TEI server"):
            TEIBackend([url], **FAST)
    finally:
        httpd.shutdown()


def test_a_server_that_takes_the_connection_and_never_answers_fails_the_check_in_seconds(monkeypatch):
    """Something listening at --tei-url that never sends a byte (a hung server, the wrong service).

    The wait is the /info answer timeout (20 s by default, pinned here); the test shortens it to
    2 s so that it checks the same path without waiting 20 s: one attempt, then a plain error, not
    the retry ladder of the default 60 s request timeouts."""
    import socket
    import time

    from wikiembed.backends import tei

    assert tei.INFO_ANSWER_TIMEOUT_S == 20  # the default the user gets
    wait = 2.0
    monkeypatch.setattr(tei, "INFO_ANSWER_TIMEOUT_S", wait)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)  # connections are accepted by the kernel and never read
    url = f"http://127.0.0.1:{listener.getsockname()[1]}"
    started = time.monotonic()
    try:
        with pytest.raises(BackendError, match=rf"TEI at {url} took the connection but sent no answer to /info within 2 s") as hung:
            TEIBackend([url])  # the defaults: 60 s requests, 3 retries
    finally:
        listener.close()
    assert not isinstance(hung.value, TransientBackendError)
    assert time.monotonic() - started < wait + 10 < 60  # the answer timeout, not a 60 s request timeout
