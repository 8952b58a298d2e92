"""`wikiembed serve`: real uvicorn on a free loopback port, the real bundled model, real stores of Python's
reference topics; the whole loop run → serve → feedback → improve → the better store published and served, without a
restart."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pyarrow.parquet as pq
import pytest

from tests.corpus import LEET
from tests.flows.conftest import cli_here
from tests.flows.test_improve_model import announced
from wikiembed.queries import read_queries
from wikiembed.search import search
from wikiembed.serving.app import Service
from wikiembed.serving.generation import ServedGeneration
from wikiembed.serving.settings import ServeSettings

TOKEN = "t0ken-for-the-tests-only"


def start(store: Path, feedback: Path | None = None, **options) -> Service:
    settings = ServeSettings(store=str(store), port=0, feedback=str(feedback) if feedback else None, **options)
    return Service(settings).start()


@pytest.fixture()
def served(compact_store, tmp_path):
    service = start(compact_store, tmp_path / "feedback.jsonl")
    with httpx.Client(base_url=service.url, timeout=60) as client:
        yield service, client, tmp_path / "feedback.jsonl"
    service.stop()


def test_the_loop_feedback_improve_and_the_better_store_is_served_without_a_restart(published_store, topics, tmp_path):
    """Titles in leetspeak ("7h3 \"br34k\" 57473m3n7") as users' queries: word pieces the base model has no meaning
    for, so it ranks them poorly. The judgements sent through /feedback fine-tune it (2 epochs teach the common words,
    statement, literals, operations, which the held-out titles share); the better store is published to a folder,
    and the service, following the link improve repoints, answers from it."""
    store, published = published_store
    link = tmp_path / "served"
    os.symlink(store, link)
    feedback = tmp_path / "feedback.jsonl"
    articles = [json.loads(line) for line in topics.read_text().splitlines()]
    service = start(link, feedback)
    try:
        client = httpx.Client(base_url=service.url, timeout=120)
        before = client.get("/healthz").json()
        found_before = 0
        for article in articles:
            query = article["title"].lower().translate(LEET)
            answer = client.get("/search", params={"q": query, "k": 10}).json()
            ids = [h["id"] for h in answer["hits"]]
            found_before += article["id"] in ids
            judged = {"query": query, "id": article["id"], "relevant": True, "generation": answer["generation"]}
            if article["id"] in ids:
                judged["rank"] = ids.index(article["id"]) + 1
            assert client.post("/feedback", json=judged).status_code == 201
            wrong = next(h for h in answer["hits"] if h["id"] != article["id"])
            assert client.post("/feedback", json={"query": query, "id": wrong["id"], "chunk_index": wrong["chunk_index"],
                                                  "relevant": False, "rank": 1}).status_code == 201
        assert len(feedback.read_text().splitlines()) == 2 * len(articles)
        # The captured file is the improve loop's input as it is: negatives are not read as positives.
        assert {q.text: q.relevant for q in read_queries(feedback)} == {
            a["title"].lower().translate(LEET): frozenset({(a["id"], None)}) for a in articles}

        from wikiembed.backends import factory
        from wikiembed.flows.improve_model import improve_model

        old_model = service.published.served.query_backend()

        out, new = tmp_path / "model", tmp_path / "new-store"
        state = improve_model(str(link), str(feedback), str(out), str(new), upload_to=f"dir:{published}", serve_link=str(link),
                              metric="recall_at_10", margin=0.05, finetune={"batch_size": 8, "epochs": 2, "learning_rate": 1e-4, "max_seq_length": 64},
                              min_holdout=5, return_state=True)  # the 34 topics hold out 7
        result = state.result()
        assert result["publish"] is True and result["published"] is not None, result["reason"]
        lo, _ = result["difference"]["recall_at_10_ci95"]
        assert result["difference"]["recall_at_10"] >= 0.05 and lo > 0
        # Published: the run list and automations say so, and the folder now holds the fine-tuned model's vectors.
        run, events = announced(state, store)
        assert run.state.message == f"publish: {result['reason']}" and "decision:publish" in run.tags
        assert [e.event for e in events] == ["wikiembed.improve.published"] and events[0].payload["upload_to"] == f"dir:{published}"
        assert str(out.resolve()) in (published / "README.md").read_text()
        assert pq.read_table(published / "data").num_rows == pq.read_table(new / "data").num_rows
        assert result["served"] == {"link": str(link), "store": str(new.resolve())}
        assert os.readlink(link) == "new-store"  # relative: the folder of stores can move as a whole

        # The same running service: the next request is answered by the new store with the new model.
        query = articles[0]["title"].lower().translate(LEET)
        answer = client.get("/search", params={"q": query, "k": 10}).json()
        assert answer["store"] == "new-store" and answer["generation"] == result["new"]["generation"] != before["generation"]
        assert Path(answer["model"]).resolve() == out.resolve() and answer["model"] != before["model"]
        expected = search(str(new), query, 10)  # what `wikiembed search` answers from the new store
        assert [(h["id"], h["chunk_index"]) for h in answer["hits"]] == [(h.id, h.chunk_index) for h in expected.hits]
        assert [h["score"] for h in answer["hits"]] == pytest.approx([h.score for h in expected.hits], abs=1e-5)
        health = client.get("/healthz").json()
        assert health["generation"] == answer["generation"] and health["error"] is None
        # The old model is no longer held by the process for the service: a daily improve does not pile models up.
        assert all(opened is not old_model for opened in factory._BACKENDS.values())
        found_after = sum(
            a["id"] in [h["id"] for h in client.get("/search", params={"q": a["title"].lower().translate(LEET)}).json()["hits"]]
            for a in articles)
        assert found_after > found_before
    finally:
        service.stop()


def test_answers_are_those_of_wikiembed_search_and_requests_in_flight_are_batched(served, compact_store):
    service, client, _ = served
    queries = ["how do I leave a loop early", "integer literal syntax", "decorators", "string formatting"]
    for q in queries[:2]:
        answer = client.get("/search", params={"q": q, "k": 5}).json()
        expected = search(str(compact_store), q, 5)
        assert answer["method"] == expected.method and answer["model"] == expected.model
        assert [h | {"score": None} for h in answer["hits"]] == [h.to_json() | {"score": None} for h in expected.hits]
        assert [h["score"] for h in answer["hits"]] == pytest.approx([h.score for h in expected.hits], abs=1e-5)
        assert answer["generation"] == compact_store.joinpath("current").readlink().name and answer["revision"].startswith("sha256:")
    many = client.post("/search", json={"queries": queries, "k": 3}).json()
    assert [r["query"] for r in many["results"]] == queries
    for r in many["results"]:
        one = client.get("/search", params={"q": r["query"], "k": 3}).json()
        assert [h["id"] for h in r["hits"]] == [h["id"] for h in one["hits"]]

    # While a batch is being answered (held here at its first read), the requests that arrive queue up and are
    # embedded together in the next one.
    served_now = service.published.served
    batcher = service.app.state.batcher
    before = batcher.batches
    answers: list[dict] = []
    with served_now._reading:
        first = threading.Thread(target=lambda: answers.append(client.get("/search", params={"q": "first"}).json()))
        first.start()
        time.sleep(0.5)
        rest = [threading.Thread(target=lambda q=q: answers.append(httpx.get(service.url + "search", params={"q": q}).json()))
                for q in queries * 2]
        for t in rest:
            t.start()
        time.sleep(1.0)
    for t in [first, *rest]:
        t.join()
    assert len(answers) == 9 and all(len(a["hits"]) == 10 for a in answers)
    assert batcher.batches - before == 2  # the held one, then the eight that waited for it


BAD_SEARCHES = [
    ({"q": ""}, 422, "q"),
    ({"q": "   "}, 422, "blank"),
    ({"q": "x" * 1001}, 422, "q"),
    ({"q": "loops", "k": 0}, 422, "k"),
    ({"q": "loops", "k": 10**6}, 422, "k"),
    ({"q": "loops", "k": "ten"}, 422, "k"),
    ({}, 422, "q"),
]


def test_bad_input_gets_a_clear_4xx_and_the_feedback_file_never_a_partial_line(served):
    service, client, feedback = served
    for params, status, needle in BAD_SEARCHES:
        r = client.get("/search", params=params)
        assert r.status_code == status and needle in r.text and "Traceback" not in r.text, (params, r.text)
    assert client.post("/search", json={"queries": [], "k": 3}).status_code == 422
    assert client.post("/search", json={"queries": ["a"] * 33}).status_code == 422
    assert client.post("/search", json={"queries": ["a"], "k": 101}).status_code == 422
    hit = client.get("/search", params={"q": "loops", "k": 1}).json()["hits"][0]
    good = {"query": "loops", "id": hit["id"], "relevant": True}
    assert client.post("/feedback", json=good).status_code == 201
    written = feedback.read_bytes()
    bad_feedback = [
        ({"query": "loops", "relevant": True}, "exactly one of"),
        ({"query": "loops", "id": hit["id"], "ids": [hit["id"]], "relevant": True}, "exactly one of"),
        ({"query": "loops", "id": hit["id"]}, "relevant"),
        ({"query": "loops", "id": hit["id"], "relevant": "yes"}, "relevant"),
        ({"query": "", "id": hit["id"], "relevant": True}, "query"),
        ({"query": "  ", "id": hit["id"], "relevant": True}, "blank"),
        ({"query": "q" * 1001, "id": hit["id"], "relevant": True}, "query"),
        ({"query": "loops", "id": "no-such-article", "relevant": True}, "not in the served store"),
        ({"query": "loops", "ids": [hit["id"], "no-such-article"], "relevant": True}, "no-such-article"),
        ({"query": "loops", "id": hit["id"], "chunk_index": 999, "relevant": True}, "chunk_index"),
        ({"query": "loops", "id": hit["id"], "chunk_index": -1, "relevant": True}, "chunk_index"),
        ({"query": "loops", "chunk_index": 0, "ids": [hit["id"]], "relevant": True}, "chunk_index"),
        ({"query": "loops", "id": hit["id"], "relevant": True, "rank": 0}, "rank"),
        ({"query": "loops", "id": hit["id"], "relevant": True, "generation": "../../etc"}, "generation"),
        ({"query": "loops", "id": hit["id"], "relevant": True, "path": "/etc/passwd"}, "path"),
        (["not", "an", "object"], "body"),
    ]
    for body, needle in bad_feedback:
        r = client.post("/feedback", json=body)
        assert r.status_code == 422 and needle in r.text and "Traceback" not in r.text, (body, r.text)
    for content, headers, status in [
        (b"{\"query\": \"loops\", \"id\": ", {"content-type": "application/json"}, 422),  # a torn body
        (b"query=loops&id=1&relevant=true", {"content-type": "application/x-www-form-urlencoded"}, 422),
        (b"x" * 70_000, {"content-type": "application/json"}, 413),
    ]:
        r = client.post("/feedback", content=content, headers=headers)
        assert r.status_code == status and "Traceback" not in r.text, r.text
    chunked = client.post("/feedback", content=iter([b"{}"]), headers={"content-type": "application/json"})
    assert chunked.status_code == 411
    assert feedback.read_bytes() == written  # nothing was added by any refused request
    # Requests addressed to another name (DNS rebinding) are not answered; there are no other routes.
    assert client.get("/search", params={"q": "loops"}, headers={"host": "attacker.example"}).status_code == 421
    for path in ["/docs", "/openapi.json", "/static/../manifest.json", "/data", "/feedback.jsonl"]:
        assert client.get(path).status_code in (404, 405)
    assert "access-control-allow-origin" not in client.get("/search", params={"q": "x"}, headers={"origin": "http://a.example"}).headers


def test_feedback_is_read_by_the_improve_loops_readers_and_concurrent_writers_never_tear_a_line(served, compact_store):
    from wikiembed.evaluate import evaluate

    service, client, feedback = served
    hits = client.get("/search", params={"q": "how do I leave a loop early", "k": 3}).json()["hits"]
    rows = [
        {"query": "how do I leave a loop early", "id": hits[0]["id"], "relevant": True, "rank": 1},
        {"query": "how do I leave a loop early", "id": hits[1]["id"], "chunk_index": hits[1]["chunk_index"], "relevant": False, "rank": 2},
        {"query": "several", "ids": [hits[0]["id"], hits[2]["id"]], "relevant": True},
        {"query": "only a negative", "id": hits[2]["id"], "relevant": False},
    ]
    for row in rows:
        r = client.post("/feedback", json=row)
        assert r.status_code == 201 and r.json()["recorded"]["generation"] == compact_store.joinpath("current").readlink().name
    assert {q.text: q.relevant for q in read_queries(feedback)} == {
        "how do I leave a loop early": frozenset({(hits[0]["id"], None)}),
        "several": frozenset({(hits[0]["id"], None), (hits[2]["id"], None)}),
    }
    result = evaluate(str(compact_store), queries=str(feedback), record=False)
    assert result.n == 2 and result.queries_read == 2

    # 16 writers at once: every record on its own whole line, exactly once.
    def post(c: int) -> list[int]:
        with httpx.Client(base_url=service.url, timeout=60) as mine:
            return [mine.post("/feedback", json={"query": f"client {c} record {i}", "id": hits[i % 3]["id"], "relevant": i % 4 != 0})
                    .status_code for i in range(25)]

    threads_out: list[list[int]] = []
    threads = [threading.Thread(target=lambda c=c: threads_out.append(post(c))) for c in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(s for out in threads_out for s in out) == [201] * 400
    raw = feedback.read_bytes()
    assert raw.endswith(b"\n")
    lines = [json.loads(line) for line in raw.decode().splitlines()]
    assert sorted(r["query"] for r in lines[4:]) == sorted(f"client {c} record {i}" for c in range(16) for i in range(25))
    assert len(read_queries(feedback)) == 2 + sum(1 for c in range(16) for i in range(25) if i % 4 != 0)


def test_a_published_generation_is_served_from_the_next_request_and_none_is_mixed(compact_store, tmp_path):
    """Two stores behind one link, repointed while 8 clients search; then the first store's generation folder is
    removed (as a publish removes the old one) while an answer from it is still being read."""
    other = tmp_path / "other"
    shutil.copytree(compact_store, other, symlinks=True)
    link = tmp_path / "served"
    os.symlink(compact_store, link)
    service = start(link)
    seen: list[tuple[str, int]] = []
    failures: list[str] = []
    stop = threading.Event()

    def client() -> None:
        with httpx.Client(base_url=service.url, timeout=60) as mine:
            while not stop.is_set():
                r = mine.get("/search", params={"q": "loops and iteration", "k": 3})
                if r.status_code != 200:
                    failures.append(r.text)
                else:
                    seen.append((r.json()["store"], time.monotonic()))

    threads = [threading.Thread(target=client) for _ in range(8)]
    try:
        for t in threads:
            t.start()
        time.sleep(1.0)
        from wikiembed.serving.link import point_link

        point_link(link, other)
        switched = time.monotonic()
        time.sleep(1.5)
        stop.set()
        for t in threads:
            t.join()
        assert not failures
        assert {s for s, at in seen if at > switched + 0.5} == {"other"}  # answers that began after the swap
        assert {s for s, _ in seen} == {compact_store.name, "other"}
        assert service.app.state.published.served.root == other.resolve()
    finally:
        stop.set()
        service.stop()

    # A generation object keeps its files open: its folder removed, it still answers whole.
    held = ServedGeneration(other, None)
    shutil.rmtree(other / "gens" / held.generation)
    answer = held.answer(["loops and iteration", "decorators"], [3, 5])
    assert [len(a["hits"]) for a in answer] == [3, 5]


def test_start_up_refuses_what_it_cannot_serve_safely(compact_store, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("WIKIEMBED_SERVE_TOKEN", raising=False)
    empty = tmp_path / "empty"
    empty.mkdir()
    for args, needle in [
        (["--store", str(empty)], "nothing is published there yet"),
        (["--store", str(tmp_path / "missing")], "nothing is published there yet"),
        (["--store", str(compact_store), "--host", "0.0.0.0"], "give --token"),
        (["--store", str(compact_store), "--feedback", str(tmp_path / "f.csv")], "give a .jsonl file"),
        (["--store", str(compact_store), "--feedback", str(tmp_path / "no" / "f.jsonl")], "does not exist"),
        (["--store", str(compact_store), "--form", "int4"], "int4"),
        (["--store", str(compact_store), "--token", "short"], "--token"),
    ]:
        proc = cli_here(capsys, "serve", *args, "--port", "0")
        assert proc.returncode == 2 and needle in proc.stderr and "Traceback" not in proc.stderr, (args, proc.stderr)


def test_off_loopback_feedback_needs_the_token(compact_store, tmp_path, monkeypatch):
    monkeypatch.setenv("WIKIEMBED_SERVE_TOKEN", TOKEN)
    service = start(compact_store, tmp_path / "feedback.jsonl", host="0.0.0.0", cors_origin=["http://app.example"])
    try:
        url = f"http://127.0.0.1:{service.port}"
        hit = httpx.get(url + "/search", params={"q": "loops", "k": 1}).json()["hits"][0]  # reads need no token
        body = {"query": "loops", "id": hit["id"], "relevant": True}
        assert httpx.post(url + "/feedback", json=body).status_code == 401
        assert httpx.post(url + "/feedback", json=body, headers={"Authorization": "Bearer wrong-token-of-some-length"}).status_code == 401
        assert httpx.post(url + "/feedback", json=body, headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 201
        allowed = httpx.get(url + "/search", params={"q": "x"}, headers={"origin": "http://app.example"})
        assert allowed.headers["access-control-allow-origin"] == "http://app.example"
        assert "access-control-allow-origin" not in httpx.get(url + "/search", params={"q": "x"}, headers={"origin": "http://b.example"}).headers
        assert httpx.get(url + "/healthz").json()["feedback"] == {"enabled": True, "token_required": True}
    finally:
        service.stop()


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium here (/usr/bin/chromium; `apt-get install chromium` to run this)")
def test_the_page_searches_and_marks_a_hit_relevant_in_a_real_browser(served, tmp_path):
    from websockets.sync.client import connect

    service, _, feedback = served
    browser = subprocess.Popen([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--remote-debugging-port=0",
                                f"--user-data-dir={tmp_path / 'profile'}", "about:blank"], stderr=subprocess.PIPE, text=True)
    try:
        for line in browser.stderr:
            if "DevTools listening on ws://" in line:
                port = line.split("ws://", 1)[1].split("/", 1)[0]
                break
        page = next(t for t in httpx.get(f"http://{port}/json/list").json() if t["type"] == "page")
        with connect(page["webSocketDebuggerUrl"], max_size=None) as ws:
            calls = iter(range(1, 1000))

            def evaluate(expression: str):
                n = next(calls)
                ws.send(json.dumps({"id": n, "method": "Runtime.evaluate",
                                    "params": {"expression": expression, "awaitPromise": True, "returnByValue": True}}))
                while True:
                    message = json.loads(ws.recv(timeout=60))
                    if message.get("id") == n:
                        return message["result"]["result"].get("value")

            def wait_for(expression: str) -> object:
                return evaluate(f"""new Promise((ok, fail) => {{ const t0 = Date.now(); (function poll() {{
                    const v = ({expression}); if (v) ok(v); else if (Date.now() - t0 > 30000) fail("timed out");
                    else setTimeout(poll, 50); }})(); }})""")

            ws.send(json.dumps({"id": 0, "method": "Page.navigate", "params": {"url": service.url}}))
            wait_for("document.readyState === 'complete' && document.getElementById('q')")
            evaluate("document.getElementById('q').value = 'how do I leave a loop early';"
                     "document.querySelector('form').requestSubmit(); true")
            assert wait_for("document.querySelectorAll('li.hit').length") == 10
            first = evaluate("({id: document.querySelector('li.hit').dataset.id, title: document.querySelector('li.hit .title').textContent})")
            evaluate("document.querySelector('li.hit button.relevant').click(); true")
            assert wait_for("document.querySelector('li.hit .done') && document.querySelector('li.hit .done').textContent") == "recorded: relevant"
    finally:
        browser.kill()
        browser.wait()
    rows = [json.loads(line) for line in feedback.read_text().splitlines()]
    assert len(rows) == 1 and rows[0]["query"] == "how do I leave a loop early" and rows[0]["id"] == first["id"]
    assert rows[0]["relevant"] is True and rows[0]["rank"] == 1 and "chunk_index" in rows[0]
