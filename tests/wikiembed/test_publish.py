"""Tests for wikiembed/publish.py: the card, the merged layout, `dir:` exports and `hub:` uploads.

Hub uploads run against `hub_server.HubServer` (a loopback stand-in of the Hub's commit API).
huggingface_hub reads HF_ENDPOINT and HF_HUB_DISABLE_XET when it is imported, so each hub
upload runs `publish` in a fresh subprocess with those set, exactly as a user's shell would.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from tests.standins.hub_server import HubServer
from wikiembed import publish as upload
from wikiembed.errors import InputError, StoreError
from wikiembed.card import write_card
from wikiembed.hub_upload import resolve_token
from wikiembed.publish import EXPORT_MARKER, plan_files, publish

REPO_ROOT = Path(__file__).resolve().parents[2]
TOKEN = "hf_stand_in_secret_token_0123456789"
DIM = 8
ROWS_PER_SHARD = 3  # articles per shard; each article gives CHUNKS_PER_ROW chunks
CHUNKS_PER_ROW = 2


# ---------------------------------------------------------------------------- a store, by hand


def _shard_table(shard: int, dim: int, seed: int = 0) -> pa.Table:
    """Shard `shard`'s output rows, following docs/STORE.md (chunks of each article, then embeddings)."""
    rows: dict[str, list[Any]] = {k: [] for k in ("id", "url", "title", "chunk_index", "char_start", "char_end", "text")}
    for r in range(ROWS_PER_SHARD):
        article = shard * ROWS_PER_SHARD + r
        text = f"Article {article} opens here. It then goes on for a while."
        cut = text.index(" It")
        for index, (start, end) in enumerate([(0, cut), (cut + 1, len(text))]):
            rows["id"].append(str(article))
            rows["url"].append(f"https://en.wikipedia.org/wiki?curid={article}")
            rows["title"].append(f"Title {article}")
            rows["chunk_index"].append(index)
            rows["char_start"].append(start)
            rows["char_end"].append(end)
            rows["text"].append(text[start:end])
    n = len(rows["id"])
    vectors = np.random.default_rng(1000 * seed + shard).standard_normal((n, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return pa.table({
        "id": pa.array(rows["id"], pa.string()),
        "url": pa.array(rows["url"], pa.string()),
        "title": pa.array(rows["title"], pa.string()),
        "chunk_index": pa.array(rows["chunk_index"], pa.int32()),
        "char_start": pa.array(rows["char_start"], pa.int64()),
        "char_end": pa.array(rows["char_end"], pa.int64()),
        "text": pa.array(rows["text"], pa.string()),
        "embedding": pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1), pa.float32()), dim),
    })


def write_shard(store: Path, shard: int, *, dim: int = DIM, seed: int = 0, done: bool = True) -> None:
    """Checkpoint one shard as the pipeline does: data file, then its completion marker."""
    name = f"{shard:05d}"
    data = store / "data" / f"{name}.parquet"
    data.parent.mkdir(parents=True, exist_ok=True)
    table = _shard_table(shard, dim, seed)
    pq.write_table(table, data)
    if done:
        (store / "_done").mkdir(exist_ok=True)
        marker = {"shard": shard, "rows": ROWS_PER_SHARD, "chunks": table.num_rows,
                  "sha256": hashlib.sha256(data.read_bytes()).hexdigest(), "bytes": data.stat().st_size,
                  "model": "sentence-transformers/all-MiniLM-L6-v2", "seconds": 1.5,
                  "embedded_chunks": table.num_rows, "reused_chunks": 0}
        (store / "_done" / f"{name}.json").write_text(json.dumps(marker))


def make_store(root: Path, *, shards: int = 4, dim: int = DIM, done: set[int] | None = None,
               failed: frozenset[int] = frozenset(), license: str | None = "cc-by-sa-3.0") -> Path:
    store = root / "store"
    store.mkdir(parents=True)
    manifest = {
        "format": 1,
        "source": {"spec": "wikimedia/wikipedia", "kind": "hub", "config": "20231101.simple", "split": "train",
                   "limit": None, "fingerprint": "f" * 16, "license": license,
                   "description": "Simple English Wikipedia (20231101.simple)"},
        "model": {"model_id": "sentence-transformers/all-MiniLM-L6-v2", "revision": "abc123", "dim": dim, "max_tokens": 256},
        "chunking": {"chunker": "tokens", "chunk_size": 256, "chunk_overlap": 0},
        "plan": {"shard_rows": ROWS_PER_SHARD, "rows": shards * ROWS_PER_SHARD,
                 "shards": [[k * ROWS_PER_SHARD, (k + 1) * ROWS_PER_SHARD] for k in range(shards)]},
        "skipped": {"blank text": 1},
        "versions": {"wikiembed": "0.1.0", "prefect": "3.9.1"},
    }
    (store / "manifest.json").write_text(json.dumps(manifest, indent=1))
    for shard in range(shards):
        if shard in failed:
            (store / "_failed").mkdir(exist_ok=True)
            (store / "_failed" / f"{shard:05d}.json").write_text(json.dumps(
                {"shard": shard, "error": "TEI answered 422", "attempts": 3, "time": "2024-01-01T00:00:00Z"}))
        elif done is None or shard in done:
            write_shard(store, shard, dim=dim)
    return store


@pytest.fixture
def store(tmp_path: Path) -> Path:
    return make_store(tmp_path)


def two_shards_per_file(store: Path) -> int:
    """A file size that puts two of this store's shard files in each published file."""
    return int(2.5 * (store / "data" / "00000.parquet").stat().st_size)


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def front_matter(card: str) -> dict[str, Any]:
    return yaml.safe_load(card.split("---", 2)[1])


# ---------------------------------------------------------------------------- layout and card


def test_plan_groups_consecutive_shards_up_to_the_file_size() -> None:
    files = plan_files([(0, 100), (1, 100), (2, 250), (3, 10), (5, 10)], file_bytes=200)
    assert [f.shards for f in files] == [(0, 1), (2,), (3, 5)]
    assert [f.path_in_repo for f in files] == [
        "data/train-00000-of-00003.parquet", "data/train-00001-of-00003.parquet", "data/train-00002-of-00003.parquet"]
    nested = plan_files([(k, 1) for k in range(5)], file_bytes=1, files_per_folder=2)
    assert [f.path_in_repo for f in nested] == [
        "data/0000/train-00000-of-00005.parquet", "data/0000/train-00001-of-00005.parquet",
        "data/0001/train-00002-of-00005.parquet", "data/0001/train-00003-of-00005.parquet",
        "data/0002/train-00004-of-00005.parquet"]


def test_a_card_of_a_store_with_no_shard_done_names_the_status_command(store: Path) -> None:
    for marker in (store / "_done").glob("*.json"):
        marker.unlink()
    with pytest.raises(StoreError, match=r"no shard is done yet.*wikiembed status --store"):
        write_card(store)


def test_card_front_matter_and_human_section(store: Path) -> None:
    card = write_card(store, repo_id="my-org/simplewiki-minilm").read_text()
    meta = front_matter(card)
    assert meta["license"] == "cc-by-sa-3.0"
    assert "wikipedia" in meta["tags"] and "embeddings" in meta["tags"]
    assert meta["configs"] == [{"config_name": "default", "data_files": [{"split": "train", "path": "data/**/train-*.parquet"}]}]
    features = {f["name"]: {k: v for k, v in f.items() if k != "name"} for f in meta["dataset_info"]["features"]}
    assert features["embedding"] == {"sequence": "float32", "length": DIM}
    assert features["chunk_index"] == {"dtype": "int32"} and features["char_start"] == {"dtype": "int64"}
    [split] = meta["dataset_info"]["splits"]
    assert split["name"] == "train" and split["num_examples"] == 4 * ROWS_PER_SHARD * CHUNKS_PER_ROW
    assert split["num_bytes"] > 0
    for fact in ("sentence-transformers/all-MiniLM-L6-v2", "abc123", "chunk size 256", "articles: 12",
                 "chunks (rows, one embedding each): 24", "shards: 4 of 4", "blank text: 1",
                 'load_dataset("my-org/simplewiki-minilm"', "SentenceTransformer(", "np.argsort"):
        assert fact in card, fact
    # No timestamps: the same store gives the same bytes, so a rerun commits nothing.
    assert write_card(store, repo_id="my-org/simplewiki-minilm").read_text() == card


def test_license_falls_back_to_unknown_for_other_sources(tmp_path: Path) -> None:
    store = make_store(tmp_path, license=None)
    manifest = json.loads((store / "manifest.json").read_text())
    manifest["source"].update(spec="data/my_docs.parquet", kind="parquet", description="my docs")
    (store / "manifest.json").write_text(json.dumps(manifest))
    assert front_matter(write_card(store).read_text())["license"] == "unknown"


def test_dir_export_loads_through_its_card_and_reruns_byte_identical(store: Path, tmp_path: Path) -> None:
    import datasets

    out = tmp_path / "published"
    summary = publish(store, f"dir:{out}", file_bytes=two_shards_per_file(store))
    assert summary.committed is True and summary.url == str(out)
    assert summary.data_files == ("data/train-00000-of-00002.parquet", "data/train-00001-of-00002.parquet")
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == [
        EXPORT_MARKER, "README.md", *summary.data_files]
    assert (out / "README.md").read_bytes() == (store / "README.md").read_bytes()

    ds = datasets.load_dataset(str(out), split="train", cache_dir=str(tmp_path / "hf-cache"))
    assert ds.features["embedding"] == datasets.List(datasets.Value("float32"), length=DIM)
    assert ds.num_rows == 4 * ROWS_PER_SHARD * CHUNKS_PER_ROW
    by_folder = datasets.load_dataset("parquet", data_dir=str(out), split="train", cache_dir=str(tmp_path / "hf-cache"))
    assert by_folder.num_rows == ds.num_rows  # load_dataset("parquet", data_dir=...) loads it too
    expected = pa.concat_tables([pq.read_table(store / "data" / f"{k:05d}.parquet") for k in range(4)])
    assert ds.data.table.select(expected.column_names).equals(expected.replace_schema_metadata(None))

    staged = {p: sha(store / "_publish" / p) for p in summary.data_files}
    mtimes = {p: (store / "_publish" / p).stat().st_mtime_ns for p in summary.data_files}
    again = publish(store, f"dir:{out}", file_bytes=two_shards_per_file(store))
    assert again.committed is False
    assert {p: sha(store / "_publish" / p) for p in again.data_files} == staged
    assert {p: (store / "_publish" / p).stat().st_mtime_ns for p in again.data_files} == mtimes  # not rebuilt


def test_card_usage_snippet_finds_the_nearest_neighbour(store: Path, tmp_path: Path) -> None:
    """Run the card's snippet on a dir export; a stub SentenceTransformer "embeds" the query as row 7's vector
    (the real model's 384 dims would not match this store's 8; the real model ran the snippet by hand)."""
    import re

    out = tmp_path / "published"
    publish(store, f"dir:{out}")
    code = re.search(r"```python\n(.*?)```", (out / "README.md").read_text(), re.DOTALL).group(1)
    assert 'load_dataset("ORG/NAME"' in code  # a dir export does not know its future repo id
    code = code.replace('"ORG/NAME"', repr(str(out)))
    stub = tmp_path / "stub"
    stub.mkdir()
    np.save(stub / "query.npy", pq.read_table(store / "data" / "00001.parquet")["embedding"][1].values.to_numpy())
    (stub / "sentence_transformers.py").write_text(
        "import numpy as np\n"
        "class SentenceTransformer:\n"
        "    def __init__(self, name): assert name == 'sentence-transformers/all-MiniLM-L6-v2'\n"
        "    def encode_query(self, text, prompt=None):\n"
        "        assert prompt == '', prompt  # the query prompt the store recorded (this model has none)\n"
        f"        return np.load({str(stub / 'query.npy')!r})\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(PYTHONPATH=str(stub), HF_HOME=str(tmp_path / "hf-home"), HF_HUB_OFFLINE="1")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    first = proc.stdout.splitlines()[0]
    # Row 7 is shard 1's second chunk: article 3's second chunk.
    assert first.startswith("1.000") and "Title 3" in first and "curid=3" in first, proc.stdout


def test_layout_change_rebuilds_and_removes_stale_files(store: Path, tmp_path: Path) -> None:
    out = tmp_path / "published"
    publish(store, f"dir:{out}", file_bytes=1)  # one file per shard
    assert len(list((out / "data").glob("*.parquet"))) == 4
    summary = publish(store, f"dir:{out}", file_bytes=10**9)  # everything in one file
    assert summary.data_files == ("data/train-00000-of-00001.parquet",)
    assert [p.name for p in (out / "data").glob("*.parquet")] == ["train-00000-of-00001.parquet"]
    assert [p.name for p in (store / "_publish" / "data").iterdir()] == ["train-00000-of-00001.parquet"]


def test_nested_layout_past_the_folder_limit_still_loads(store: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    monkeypatch.setattr(upload, "MAX_FILES_PER_FOLDER", 3)
    out = tmp_path / "published"
    summary = publish(store, f"dir:{out}", file_bytes=1)
    assert summary.data_files[0] == "data/0000/train-00000-of-00004.parquet"
    assert summary.data_files[-1] == "data/0001/train-00003-of-00004.parquet"
    ds = datasets.load_dataset(str(out), split="train", cache_dir=str(tmp_path / "hf-cache"))
    assert ds.num_rows == 4 * ROWS_PER_SHARD * CHUNKS_PER_ROW


def test_store_root_with_generations_keeps_its_links(tmp_path: Path) -> None:
    """A store root (wikiembed/store.py) links manifest/data/markers/README into `current`: read and write through them."""
    import shutil

    from wikiembed.store import Store

    generation = Store(tmp_path / "root", gen="g1")
    generation.dir.parent.mkdir(parents=True)
    shutil.copytree(make_store(tmp_path / "plain"), generation.dir)
    generation.set_pointer("current", "g1")
    root = generation.root

    summary = publish(root, f"dir:{tmp_path / 'out'}")
    assert summary.shards == 4
    assert (root / "README.md").is_symlink()  # still the link, now pointing at a real card
    assert (generation.dir / "README.md").read_text() == (tmp_path / "out" / "README.md").read_text()
    assert write_card(generation.dir) == generation.dir / "README.md"  # what the flow's export task calls


def test_refuses_unfinished_shards_and_names_them(tmp_path: Path) -> None:
    store = make_store(tmp_path, done={0, 2}, failed={1})  # shard 3 pending
    write_shard(store, 2, seed=7, done=False)  # data rewritten after its marker: no longer done
    with pytest.raises(StoreError) as info:
        publish(store, f"dir:{tmp_path / 'out'}")
    message = str(info.value)
    for part in ("3 of 4 shards are not done", "pending: 00003", "failed: 00001 (TEI answered 422)",
                 "not matching their _done marker: 00002", "wikiembed status", "wikiembed rerun --failed",
                 "allow_partial"):
        assert part in message, part
    assert not (tmp_path / "out").exists()

    summary = publish(store, f"dir:{tmp_path / 'out'}", allow_partial=True)
    assert summary.shards == 1 and summary.rows == ROWS_PER_SHARD * CHUNKS_PER_ROW
    assert "shards: 1 of 4 (partial" in (tmp_path / "out" / "README.md").read_text()


@pytest.mark.parametrize("target", ["s3://bucket/x", "hub:just-a-name", "hub:a/b/c", "hub:org/bad name",
                                    "hub:org/--x", "dir:", "", "hf:org/name"])
def test_bad_targets_name_the_target_and_the_fix(store: Path, target: str) -> None:
    with pytest.raises(InputError) as info:
        publish(store, target)
    assert repr(target) in str(info.value) and "hub:ORG/NAME" in str(info.value)


def test_other_bad_inputs(store: Path, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="inside the store"):
        publish(store, f"dir:{store / 'export'}")
    with pytest.raises(InputError, match="create_pr"):
        publish(store, "hub:org/name", revision="dev", create_pr=True, token=TOKEN)
    with pytest.raises(StoreError, match="nowhere does not exist"):
        publish(tmp_path / "nowhere", f"dir:{tmp_path / 'out'}")
    (tmp_path / "empty").mkdir()
    with pytest.raises(StoreError, match="empty has no manifest.json"):
        publish(tmp_path / "empty", f"dir:{tmp_path / 'out'}")


def test_resolve_token_prefers_hf_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_TOKEN", f" {TOKEN}\n")
    assert resolve_token() == TOKEN


# ---------------------------------------------------------------------------- hub uploads

_CLIENT = """
import json, logging, sys
logging.basicConfig(level=logging.DEBUG, stream=sys.stderr)
from wikiembed.errors import WikiembedError
from wikiembed.publish import publish
store, target, kwargs = json.loads(sys.argv[1])
try:
    print("RESULT " + json.dumps(publish(store, target, **kwargs).to_json()))
except WikiembedError as exc:
    print("ERROR " + type(exc).__name__ + ": " + str(exc))
    sys.exit(3)
"""


def run_publish(hub: HubServer, store: Path, target: str, *, token: str | None = TOKEN,
                extra_env: dict[str, str] | None = None, **kwargs: Any) -> tuple[dict | None, str, str]:
    """`publish` in a fresh interpreter pointed at the stand-in; returns (summary, error, all output)."""
    # Online towards the stand-in whatever the test machine's shell says: huggingface_hub also takes
    # TRANSFORMERS_OFFLINE=1 (set on many offline and CI machines) as offline mode.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_", "PREFECT_", "TRANSFORMERS_OFFLINE"))}
    env.update(HF_ENDPOINT=hub.url, HF_HUB_OFFLINE="0", HF_HUB_DISABLE_XET="1", HF_HUB_DISABLE_TELEMETRY="1",
               HF_HUB_VERBOSITY="debug", HF_HOME=str(store.parent / "hf-home"),
               PYTHONPATH=str(REPO_ROOT), **(extra_env or {}))
    if token is not None:
        env["HF_TOKEN"] = token
    kwargs.setdefault("file_bytes", two_shards_per_file(store))
    proc = subprocess.run([sys.executable, "-c", _CLIENT, json.dumps([str(store), target, kwargs])],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120)
    output = proc.stdout + proc.stderr
    if TOKEN in output:  # the token must never reach logs or messages
        raise AssertionError("the token leaked into the output:\n" + output)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):]), "", output
        if line.startswith("ERROR "):
            return None, line[len("ERROR "):], output
    raise AssertionError(f"publish crashed (rc {proc.returncode}):\n{output}")


@pytest.fixture
def hub() -> Any:
    with HubServer(tokens={TOKEN: "alice"}, orgs={"alice": ["my-org"]}) as server:
        yield server


def staged_files(store: Path) -> dict[str, bytes]:
    staging = store / "_publish"
    return {p.relative_to(staging).as_posix(): p.read_bytes()
            for p in staging.rglob("*") if p.is_file() and not p.name.startswith(".")}


def test_first_upload_then_no_change_rerun_makes_no_commit(hub: HubServer, store: Path) -> None:
    summary, error, _ = run_publish(hub, store, "hub:my-org/simplewiki")
    assert not error and summary is not None
    assert summary["committed"] is True and "/datasets/my-org/simplewiki/commit/" in summary["url"]
    assert len(hub.commits_to("my-org/simplewiki")) == 1
    remote = hub.files("my-org/simplewiki")
    assert remote.pop(".gitattributes")
    assert remote == staged_files(store)
    assert sorted(remote) == ["README.md", "data/train-00000-of-00002.parquet", "data/train-00001-of-00002.parquet"]
    assert 'load_dataset("my-org/simplewiki"' in remote["README.md"].decode()
    uploads = hub.lfs_uploads

    again, error, _ = run_publish(hub, store, "hub:my-org/simplewiki")
    assert not error and again is not None
    assert again["committed"] is False
    assert len(hub.commits_to("my-org/simplewiki")) == 1  # no new commit
    assert hub.lfs_uploads == uploads  # and no bytes sent


def test_interrupted_upload_resumes_with_fewer_bytes(hub: HubServer, store: Path) -> None:
    hub.fail_lfs_after = 1  # the upload dies after one of the two data files
    summary, error, _ = run_publish(hub, store, "hub:my-org/simplewiki")
    assert summary is None and error.startswith("UploadError") and "Run the same command again" in error
    assert hub.commits_to("my-org/simplewiki") == [] and hub.lfs_uploads == 1
    first_bytes = hub.lfs_bytes

    hub.fail_lfs_after = None
    summary, error, _ = run_publish(hub, store, "hub:my-org/simplewiki")
    assert not error and summary is not None and summary["committed"] is True
    total = sum(len(v) for k, v in staged_files(store).items() if k.endswith(".parquet"))
    assert hub.lfs_bytes - first_bytes == total - first_bytes < total  # only the missing file was sent
    assert len(hub.commits_to("my-org/simplewiki")) == 1
    remote = hub.files("my-org/simplewiki")
    remote.pop(".gitattributes")
    assert remote == staged_files(store)


def test_changed_shard_uploads_only_its_file_and_layout_change_deletes_stale_files(hub: HubServer, store: Path) -> None:
    run_publish(hub, store, "hub:my-org/simplewiki")
    write_shard(store, 3, seed=5)  # shard 3 re-embedded (e.g. after a fine-tune): new vectors, new marker
    before = hub.lfs_uploads
    summary, error, _ = run_publish(hub, store, "hub:my-org/simplewiki")
    assert not error and summary is not None and summary["committed"] is True
    assert hub.lfs_uploads - before == 1
    commit = hub.commits_to("my-org/simplewiki")[-1]
    assert commit.operations == [{"key": "lfsFile", "path": "data/train-00001-of-00002.parquet"}]

    summary, error, _ = run_publish(hub, store, "hub:my-org/simplewiki", file_bytes=10**9)
    assert not error and summary is not None
    assert sorted(hub.files("my-org/simplewiki")) == [".gitattributes", "README.md", "data/train-00000-of-00001.parquet"]


@pytest.mark.parametrize("offline", ["HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"])
def test_uploads_to_the_stand_in_ignore_the_shells_offline_settings(hub: HubServer, store: Path, offline: str,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(offline, "1")
    summary, error, _ = run_publish(hub, store, "hub:my-org/offline-shell")
    assert error == "" and summary is not None and summary["shards"] == 4


def test_revision_and_pull_request(hub: HubServer, store: Path) -> None:
    summary, error, _ = run_publish(hub, store, "hub:my-org/simplewiki", revision="v2", private=True)
    assert not error and summary is not None
    assert hub.repos["my-org/simplewiki"].private is True
    assert "README.md" in hub.files("my-org/simplewiki", "v2") and "README.md" not in hub.files("my-org/simplewiki")
    summary, error, _ = run_publish(hub, store, "hub:my-org/simplewiki", create_pr=True)
    assert not error and summary is not None and summary["committed"] is True
    assert summary["url"].endswith("/datasets/my-org/simplewiki/discussions/1")
    assert "README.md" in hub.files("my-org/simplewiki", "refs/pr/1")


def test_rejected_token_fails_before_any_data_moves(hub: HubServer, store: Path) -> None:
    summary, error, _ = run_publish(hub, store, "hub:my-org/simplewiki", token="hf_" + "x" * 30)
    assert summary is None and error.startswith("UploadError") and "rejected (401" in error and "HF_TOKEN" in error
    assert hub.requests == [("GET", "/api/whoami-v2")]
    assert hub.repos == {}


def test_missing_token_is_a_clear_error(hub: HubServer, store: Path) -> None:
    # No HF_TOKEN, and a Prefect API that is not there: no token, said plainly, nothing sent.
    summary, error, _ = run_publish(hub, store, "hub:my-org/simplewiki", token=None, extra_env={
        "PREFECT_API_URL": "http://127.0.0.1:9/api", "PREFECT_CLIENT_MAX_RETRIES": "0",
        "PREFECT_HOME": str(store.parent / "prefect-home")})
    assert summary is None and error.startswith("UploadError") and "no Hugging Face token" in error
    assert "hf-token" in error and hub.requests == []


def test_token_is_scrubbed_from_hub_errors(hub: HubServer, store: Path) -> None:
    hub.echo_auth_in_errors = True  # a proxy that echoes the Authorization header into its error text
    summary, error, _ = run_publish(hub, store, "hub:my-org/simplewiki")  # run_publish fails on any leak
    assert summary is None and error.startswith("UploadError") and "Bearer ***" in error


@pytest.mark.slow
def test_token_from_prefect_secret_block(cli_env: dict[str, str]) -> None:
    """The session's real Prefect API: no block -> None; a saved `hf-token` Secret -> its value (then removed,
    so no other test sees a token)."""
    script = (
        "from prefect.blocks.system import Secret\n"
        "from wikiembed.hub_upload import resolve_token\n"
        "print('BEFORE', resolve_token())\n"
        f"Secret(value=' {TOKEN}\\n').save('hf-token')\n"
        "import asyncio\n"
        "async def inside_a_loop():\n"
        "    return resolve_token()\n"
        "try:\n"
        f"    print('AFTER', resolve_token() == {TOKEN!r})\n"
        f"    print('IN LOOP', asyncio.run(inside_a_loop()) == {TOKEN!r})\n"
        "finally:\n"
        "    Secret.delete('hf-token')\n"
    )
    env = {k: v for k, v in cli_env.items() if k != "HF_TOKEN"}
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, env=env, capture_output=True,
                          text=True, timeout=120)
    assert "BEFORE None" in proc.stdout and "AFTER True" in proc.stdout, proc.stdout + proc.stderr
    assert "IN LOOP True" in proc.stdout, proc.stdout + proc.stderr  # a running event loop gets the value, not a coroutine
    assert TOKEN not in proc.stdout + proc.stderr


# ---------------------------------------------------------------------------- mistakes and faults


def test_export_never_overwrites_a_folder_it_did_not_write(store: Path, tmp_path: Path) -> None:
    theirs = tmp_path / "their-dataset"
    (theirs / "data").mkdir(parents=True)
    for i in range(3):
        (theirs / "data" / f"train-0000{i}-of-00003.parquet").write_bytes(b"their rows")
    (theirs / "README.md").write_text("their card")
    before = {p: p.read_bytes() for p in theirs.rglob("*") if p.is_file()}
    with pytest.raises(InputError, match=r"did not write \(README.md, data\).*--replace"):
        publish(store, f"dir:{theirs}")
    assert {p: p.read_bytes() for p in theirs.rglob("*") if p.is_file()} == before
    with pytest.raises(InputError, match="is a file"):
        publish(store, f"dir:{theirs / 'README.md'}")
    # asked to replace: it is ours from then on, and a later export updates it without asking
    publish(store, f"dir:{theirs}", replace=True)
    assert (theirs / "README.md").read_bytes() == (store / "README.md").read_bytes()
    assert not (theirs / "data" / "train-00002-of-00003.parquet").exists()
    assert publish(store, f"dir:{theirs}").committed is False


def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def _store_root(tmp_path: Path) -> Path:
    """A store root as a run leaves it: gens/g1 published through `current` and the links at the top."""
    from wikiembed.store import Store

    generation = Store(tmp_path / "root", gen="g1")
    generation.dir.parent.mkdir(parents=True)
    shutil.copytree(make_store(tmp_path / "plain"), generation.dir)
    generation.set_pointer("current", "g1")
    return generation.root


def test_export_writes_and_deletes_through_no_link_it_did_not_make(tmp_path: Path) -> None:
    """A link planted in the store (the card, the staging folder) or in an export's data folder is
    refused by name before anything is written or deleted; the files it leads to stay as they were."""
    root = _store_root(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "notes.txt").write_text("someone's notes")
    (elsewhere / "train-00007-of-00009.parquet").write_bytes(b"someone's rows")
    before = _files(elsewhere)
    out = tmp_path / "out"

    # the generation's card, a link to a file outside the store
    card = root / "gens" / "g1" / "README.md"
    card.unlink(missing_ok=True)
    card.symlink_to(elsewhere / "notes.txt")
    with pytest.raises(InputError, match=rf"{card} is a symbolic link .*replace the link with a real folder or file"):
        publish(root, f"dir:{out}")
    assert _files(elsewhere) == before and not out.exists() and not (root / "_publish").exists()
    card.unlink()

    # the staging folder, a link to someone's folder
    (root / "_publish").symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(InputError, match=rf"{root / '_publish'} is a symbolic link"):
        publish(root, f"dir:{out}")
    assert _files(elsewhere) == before and not out.exists()
    (root / "_publish").unlink()

    # an export of ours whose data/ became a link: its stale files would be deleted there
    publish(root, f"dir:{out}")
    shutil.rmtree(out / "data")
    (out / "data").symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(InputError, match=rf"{out / 'data'} is a symbolic link"):
        publish(root, f"dir:{out}")
    assert _files(elsewhere) == before
    (out / "data").unlink()
    assert publish(root, f"dir:{out}").committed is True  # once the link is gone, the export completes


def test_atomic_writes_and_removals_refuse_a_link_on_the_path(tmp_path: Path) -> None:
    from wikiembed import atomic

    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "kept.json").write_text("{}")
    (tmp_path / "link").symlink_to(tmp_path / "real", target_is_directory=True)
    for act in (lambda: atomic.write_text(tmp_path / "link" / "new.txt", "x"),
                lambda: atomic.write_json(tmp_path / "link" / "kept.json", {"a": 1}),
                lambda: atomic.remove(tmp_path / "link" / "kept.json")):
        with pytest.raises(InputError, match=rf"{tmp_path / 'link'} is a symbolic link \(to {tmp_path / 'real'}\)"):
            act()
    (tmp_path / "file.txt").symlink_to(tmp_path / "real" / "kept.json")
    with pytest.raises(InputError, match="file.txt is a symbolic link"):
        atomic.write_text(tmp_path / "file.txt", "x")
    assert sorted(p.name for p in (tmp_path / "real").iterdir()) == ["kept.json"]
    assert (tmp_path / "real" / "kept.json").read_text() == "{}"
    atomic.remove(tmp_path / "file.txt")  # a link itself may go: what it points to stays
    assert (tmp_path / "real" / "kept.json").exists() and not (tmp_path / "file.txt").is_symlink()


def test_hub_options_with_a_folder_target_are_refused(store: Path, tmp_path: Path) -> None:
    for options, named in (({"private": True}, "--private"), ({"create_pr": True}, "--create-pr"),
                           ({"revision": "dev"}, "--revision"), ({"private": True, "create_pr": True}, "--private, --create-pr")):
        with pytest.raises(InputError, match=rf"{named} with 'dir:.*only to a Hub dataset repo \(hub:ORG/NAME\)"):
            publish(store, f"dir:{tmp_path / 'out'}", **options)
    assert not (tmp_path / "out").exists() and not (store / "_publish").exists()


def _tmpfs(path: Path, options: str) -> None:
    path.mkdir(parents=True, exist_ok=True)
    if subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")


def test_export_to_a_read_only_or_full_disk_says_so_and_leaves_no_temp_files(store: Path, tmp_path: Path) -> None:
    readonly, full, fullstore = tmp_path / "ro", tmp_path / "full", tmp_path / "fullstore"
    _tmpfs(readonly, "size=1m,ro")
    try:
        _tmpfs(full, "size=4k")
        _tmpfs(fullstore, "size=256k")
        with pytest.raises(InputError, match=rf"{readonly}.*Read-only file system; make that folder writable"):
            publish(store, f"dir:{readonly / 'out'}")
        with pytest.raises(InputError, match="No space left on device; free space on that disk"):
            publish(store, f"dir:{full / 'out'}")
        assert not [p for p in full.rglob(".*.tmp")]
        # the store's own disk is full: staging fails, names the staging folder, and cleans up
        shutil.copytree(store, fullstore / "store")
        filler = fullstore / "filler"
        with pytest.raises(OSError), filler.open("wb") as fh:
            while True:
                fh.write(b"\0" * 4096)
                fh.flush()
        with pytest.raises(StoreError, match=r"No space left on device; free space on that disk \(export stages"):
            publish(fullstore / "store", f"dir:{tmp_path / 'out'}")
        assert not [p for p in fullstore.rglob("*.tmp")]
    finally:
        for mount in (readonly, full, fullstore):
            subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def test_damage_behind_an_earlier_exports_cache_is_refused_by_name(store: Path, tmp_path: Path) -> None:
    """A data file damaged in place (size, mtime and inode as the marker recorded them) after an
    export: the next export must say so, not publish the cached merged file as if all were well."""
    for k in range(4):  # markers as the checkpoint writes them: the stat shortcut trusts these files
        marker_path = store / "_done" / f"{k:05d}.json"
        st = (store / "data" / f"{k:05d}.parquet").stat()
        marker_path.write_text(json.dumps({**json.loads(marker_path.read_text()), "mtime_ns": st.st_mtime_ns, "inode": st.st_ino}))
    out = tmp_path / "published"
    first = publish(store, f"dir:{out}", file_bytes=two_shards_per_file(store))
    exported = {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    data = store / "data" / "00002.parquet"
    st = data.stat()
    with data.open("r+b") as fh:  # one byte flipped in place
        fh.seek(st.st_size // 2)
        byte = fh.read(1)
        fh.seek(st.st_size // 2)
        fh.write(bytes([byte[0] ^ 0xFF]))
    os.utime(data, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (data.stat().st_size, data.stat().st_mtime_ns, data.stat().st_ino) == (st.st_size, st.st_mtime_ns, st.st_ino)
    with pytest.raises(StoreError, match=rf"shard\(s\) 00002: .* no longer match their _done marker .*"
                                         rf"`wikiembed rerun --store {store} --shards 2`"):
        publish(store, f"dir:{out}", file_bytes=two_shards_per_file(store))
    # the earlier export is left as it was
    assert {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*") if p.is_file()} == exported
    assert first.committed is True
