"""Publishing: a run store's finished shards as a Hugging Face dataset: the staging folder (the
merged parquet layout and the card, `wikiembed.card`), then a `dir:` copy or a `hub:` upload
(`wikiembed.hub_upload`: the token and the Hub calls).

What it may touch:
- reads the store through `wikiembed.store.Store` (manifest, markers, data files; never changes
  them). STORE is a store root (read at its active generation), one generation folder, or a
  plain folder with the same layout;
- writes the dataset card `STORE/README.md` and the staging folder `STORE/_publish/`: the exact
  tree that gets published (merged parquet files under `data/` plus the card), with a small state
  file so a rerun reuses merged files whose inputs did not change (byte-identical, so the Hub
  sees nothing new);
- `dir:PATH` writes `PATH/README.md` and `PATH/data/`; `hub:ORG/NAME` talks to the Hugging Face
  Hub through `huggingface_hub` (whoami, create_repo, create_branch, upload_folder);
- the Hub token: the `token` argument, else `wikiembed.hub_upload.resolve_token` (`HF_TOKEN`, the
  Prefect Secret block `hf-token`). The token never appears in logs, return values or error messages.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from wikiembed import atomic
from wikiembed.card import SPLIT, card_text, read_eval, schema_of, write_card_if_changed
from wikiembed.errors import InputError, StoreError
from wikiembed.hub_upload import upload_folder
from wikiembed.publish_targets import (  # noqa: F401 (EXPORT_MARKER, check_target: also importable from here)
    EXPORT_MARKER,
    STAGING_DIR,
    _copy_to_dir,
    _explained_os_errors,
    _hub_token,
    _parse_target,
    _refuse_foreign_dir,
    _refuse_hub_options,
    check_target,
)
from wikiembed.results import Published
from wikiembed.store import Store, StoreLock, sha256_file
from wikiembed.store_files import each_in_threads
from wikiembed.store_parts import Part, ShardState

logger = logging.getLogger(__name__)

# The Hub serves parquet best in files of roughly 100-500 MB (the dataset viewer and
# `datasets` streaming read them by row group; thousands of tiny files make listing slow).
# Consecutive shard files are concatenated up to this size at upload time.
DEFAULT_FILE_BYTES = 300 * 1024 * 1024
# The Hub refuses folders with 10,000 files or more; past this, files go into subfolders.
MAX_FILES_PER_FOLDER = 9_999
# ... and repos with 100,000 files or more (README.md and .gitattributes count too).
MAX_FILES_PER_REPO = 99_990
# Inside the staging folder but never published (upload and copy only take README.md + data/).
STATE_FILE = ".wikiembed-publish.json"
# Bump when the bytes of a merged file would change for the same inputs (writer options, naming).
LAYOUT_VERSION = 1
# zstd, as the checkpoint writes shard files (wikiembed/embedding.py). Content-defined chunking
# (pyarrow >= 21) cuts parquet pages at content-defined boundaries, so after a shard is appended
# or re-embedded most pages of a re-merged file are byte-identical to the last upload and Xet
# deduplicates them; older pyarrow writes plain pages.
_WRITER_OPTIONS: dict[str, Any] = {"compression": "zstd"}
if "use_content_defined_chunking" in inspect.signature(pq.ParquetWriter.__init__).parameters:
    _WRITER_OPTIONS["use_content_defined_chunking"] = True


@dataclass(frozen=True)
class PublishedFile:
    """One parquet file of the published layout and the shard files it concatenates."""

    path_in_repo: str  # e.g. data/train-00000-of-00004.parquet
    shards: tuple[int, ...]


# ---------------------------------------------------------------------------- store reading


def _refuse_unfinished(store: Path, states: Sequence[ShardState]) -> None:
    """Raise StoreError naming every shard that is not done, and how to finish them."""
    not_done = [s for s in states if s.state != "done"]
    if not not_done:
        return

    def ids(status: str) -> str:
        picked = [s for s in not_done if s.state == status]
        shown = ", ".join(f"{s.shard:05d}" + (f" ({s.error[:120]})" if s.error else "") for s in picked[:20])
        return shown + (f" and {len(picked) - 20} more" if len(picked) > 20 else "")

    parts = [f"{label}: {ids(status)}" for status, label in
             (("pending", "pending"), ("failed", "failed"), ("changed", "not matching their _done marker"))
             if any(s.state == status for s in not_done)]
    raise StoreError(
        f"store {store}: {len(not_done)} of {len(states)} shards are not done ({'; '.join(parts)}). "
        f"See them with `wikiembed status --store {shlex.quote(str(store))}`, retry failed ones with "
        f"`wikiembed rerun --failed --store {shlex.quote(str(store))}` (it also redoes shards whose data no longer matches "
        "their marker), finish pending ones by resuming the run; "
        "or publish only the done shards with allow_partial=True (--allow-partial)."
    )


# ---------------------------------------------------------------------------- layout


def plan_files(
    shard_sizes: Sequence[tuple[int, int]],
    file_bytes: int = DEFAULT_FILE_BYTES,
    files_per_folder: int = MAX_FILES_PER_FOLDER,
) -> list[PublishedFile]:
    """Group consecutive shards (id, bytes) into published files of about `file_bytes` each.

    Greedy: a file takes shards until the next one would push it past `file_bytes` (a single
    shard larger than that gets a file of its own). The same inputs always give the same names.
    """
    if file_bytes <= 0:
        raise InputError(
            f"file size {file_bytes}: give a positive number of bytes per published file (default {DEFAULT_FILE_BYTES})."
        )
    groups: list[list[int]] = []
    current: list[int] = []
    current_bytes = 0
    for shard, size in shard_sizes:
        if current and current_bytes + size > file_bytes:
            groups.append(current)
            current, current_bytes = [], 0
        current.append(shard)
        current_bytes += size
    if current:
        groups.append(current)
    n = len(groups)
    if n > MAX_FILES_PER_REPO:
        raise InputError(
            f"publishing would make {n} files, over the Hub's limit of 100,000 per repo; "
            f"raise the file size (now {file_bytes} bytes)."
        )
    files = []
    for i, group in enumerate(groups):
        name = f"{SPLIT}-{i:05d}-of-{n:05d}.parquet"
        # Subfolders only when one folder would hold too many files for the Hub.
        folder = "data" if n <= files_per_folder else f"data/{i // files_per_folder:04d}"
        files.append(PublishedFile(f"{folder}/{name}", tuple(group)))
    return files


def _merge_key(parts: Sequence[Part]) -> str:
    """Identity of a merged file's bytes: its inputs' content (and the rows each leaves out) plus
    everything that shapes the writer."""
    inputs = []
    for p in parts:
        # An own shard keeps the key it always had: an export made before kept files existed stays valid.
        item: list[Any] = [p.shard, p.sha256] if p.drop is None else [p.gen, p.shard, p.sha256]
        if p.drop is not None and len(p.drop):
            item.append(hashlib.sha256("\0".join(sorted(p.drop.to_pylist())).encode()).hexdigest())
        inputs.append(item)
    payload = {"layout": LAYOUT_VERSION, "pyarrow": pa.__version__, "writer": _WRITER_OPTIONS, "inputs": inputs}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _verify_inputs(store: Store, parts: Sequence[Part]) -> None:
    """Hash every file being published against its marker; refuse, naming each one that differs.

    Also for merged files kept from an earlier export: a data file damaged in place with its stat
    unchanged would otherwise be published from that cache while the store itself is broken.
    Hashing runs in threads (hashlib releases the GIL), so it costs about one read of the data."""
    def ok(part: Part) -> bool:
        if part.gen != store.gen:
            try:
                return sha256_file(part.path) == part.sha256
            except OSError:
                return False
        return store.verify_done(part.shard) is not None

    checked = list(zip(parts, each_in_threads(ok, list(parts))))
    kept_bad = [f"{p.gen}/{p.shard:05d}" for p, good in checked if not good and p.gen != store.gen]
    if kept_bad:
        raise StoreError(
            f"store {store.root}: the files {', '.join(kept_bad[:20])} that this generation keeps from earlier ones no "
            "longer match their _done markers (sha256), so the store is damaged and nothing was published; embed the "
            "source again into a new --store (`wikiembed status --verify` checks every file)."
        )
    bad = [p.shard for p, good in checked if not good]
    if bad:
        ids = ",".join(str(k) for k in bad)
        raise StoreError(
            f"shard(s) {', '.join(f'{k:05d}' for k in bad[:20])}{' ...' if len(bad) > 20 else ''}: "
            f"{store.data_path(bad[0])}{' and others' if len(bad) > 1 else ''} no longer match their _done marker "
            f"(sha256), so the store is damaged and nothing was published; redo them with "
            f"`wikiembed rerun --store {shlex.quote(str(store.root))} --shards {ids}`, then publish again "
            "(`wikiembed status --verify` checks every shard)."
        )


def _write_merged(store: Store, dest: Path, parts: Sequence[Part], schema: pa.Schema) -> None:
    """Concatenate data files row group by row group (one row group in memory at a time), leaving out
    the rows of articles a kept file no longer holds; the inputs were hashed against their markers
    first (`_verify_inputs`)."""
    with atomic.atomic_path(dest) as tmp, pq.ParquetWriter(tmp, schema, **_WRITER_OPTIONS) as writer:
        for part in parts:
            source = pq.ParquetFile(part.path)
            if source.schema_arrow.remove_metadata() != schema:
                raise StoreError(
                    f"shard {part.shard:05d}: {part.path} has columns {source.schema_arrow.names} "
                    f"unlike the other shards ({schema.names}); rerun that shard so every shard has one schema."
                )
            for group in range(source.num_row_groups):
                table = source.read_row_group(group).replace_schema_metadata(None)
                live = part.live(table.column("id"))
                if live is not None:
                    table = table.filter(live)
                if table.num_rows:
                    writer.write_table(table, row_group_size=table.num_rows)


def _load_state(staging: Path) -> dict[str, dict[str, Any]]:
    try:
        state = json.loads((staging / STATE_FILE).read_text(encoding="utf-8"))
        return dict(state.get("files", {}))
    except (OSError, ValueError, AttributeError):
        return {}


def _save_state(staging: Path, files: dict[str, dict[str, Any]]) -> None:
    atomic.write_json(staging / STATE_FILE, {"files": files})


def _build_staging(store: Store, staging: Path, done: Sequence[Part], file_bytes: int) -> dict[str, dict[str, Any]]:
    """Make STAGING/data/ hold exactly the planned merged files; return {path: {key, sha256, size, shards}}.

    A file whose inputs did not change since the last build is kept as is, so reruns are
    byte-identical and cost no writes; stale files of an older layout are removed.
    """
    (staging / "data").mkdir(parents=True, exist_ok=True)
    plan = plan_files([(i, p.bytes) for i, p in enumerate(done)], file_bytes, MAX_FILES_PER_FOLDER)
    _verify_inputs(store, done)
    schema = schema_of(done[0].path)
    previous = _load_state(staging)
    current: dict[str, dict[str, Any]] = {}
    rebuilt = 0
    for item in plan:
        inputs = [done[i] for i in item.shards]
        key = _merge_key(inputs)
        dest = staging / item.path_in_repo
        old = previous.get(item.path_in_repo)
        if old and old.get("key") == key and dest.exists() and dest.stat().st_size == old.get("size"):
            current[item.path_in_repo] = old
            continue
        _write_merged(store, dest, inputs, schema)
        current[item.path_in_repo] = {
            "key": key,
            "sha256": sha256_file(dest),
            "size": dest.stat().st_size,
            "shards": [p.shard if p.gen == store.gen else f"{p.gen}/{p.shard:05d}" for p in inputs],
        }
        rebuilt += 1
        # Saved after every file so an interrupted build keeps what it finished.
        _save_state(staging, {**previous, **current})
    for path in sorted((staging / "data").rglob("*"), reverse=True):
        rel = path.relative_to(staging).as_posix()
        if path.is_file() and rel not in current:
            atomic.remove(path)
        elif path.is_dir() and not any(path.iterdir()):
            atomic.remove_empty_dir(path)
    _save_state(staging, current)
    logger.info("staging %s: %d files (%d rebuilt, %d unchanged)", staging, len(plan), rebuilt, len(plan) - rebuilt)
    return current


# ---------------------------------------------------------------------------- publish


def publish(
    store: Path,
    target: str,
    *,
    private: bool = False,
    revision: str | None = None,
    create_pr: bool = False,
    token: str | None = None,
    allow_partial: bool = False,
    file_bytes: int = DEFAULT_FILE_BYTES,
    replace: bool = False,
) -> Published:
    """Publish the store's done shards to `hub:ORG/NAME` (a dataset repo) or `dir:PATH`.

    Both targets get the same tree, built in STORE/_publish/: `README.md` (the card) and
    `data/train-XXXXX-of-YYYYY.parquet` (consecutive shards merged up to `file_bytes`). Refuses
    when a shard is not done unless `allow_partial`, and a `dir:` folder that wikiembed did not
    write unless `replace`. Rerunning resumes an interrupted upload and,
    with nothing changed, makes no commit. `token` overrides HF_TOKEN / the Prefect Secret block;
    never make it a flow parameter (parameters are stored and shown in the UI).

    Returns what was written (`Published`: the target, its url, whether anything was committed, the files).
    """
    store = Path(store)
    kind, where = _parse_target(target, store)
    if kind == "dir":
        _refuse_hub_options(target, private=private, revision=revision, create_pr=create_pr)
    if create_pr and revision:
        raise InputError(
            f"revision {revision!r} with create_pr: a pull request is always opened against the main "
            "branch; drop --revision, or drop --create-pr to commit to that branch."
        )
    source = Store.at(store)
    manifest = source.read_manifest()
    states = source.states(manifest)
    if not allow_partial:
        _refuse_unfinished(store, states)
    done = source.parts(manifest, states)
    if not done:
        raise StoreError(
            f"store {store}: no shard is done yet, so there is nothing to publish; "
            f"see why with `wikiembed status --store {shlex.quote(str(store))}`."
        )
    if kind == "dir":
        _refuse_foreign_dir(Path(where), replace)

    token_source = "the token argument"
    if kind == "hub" and not token:
        token, token_source = _hub_token(target)

    # The generation's card and the staging folder (the store's folder as resolved, so a link
    # above the store is the user's), and where a `dir:` export writes and deletes: no link
    # someone else put there is followed, and one found is refused before anything changes.
    staging = source.named / STAGING_DIR
    card = source.card_path
    atomic.refuse_links(card)
    atomic.refuse_links(staging, inside=True)
    if kind == "dir":
        for path in (Path(where) / EXPORT_MARKER, Path(where) / "README.md"):
            atomic.refuse_links(path)
        atomic.refuse_links(Path(where) / "data", inside=True)
    # Its own lock, not the store's: a run holds that one while its flow publishes.
    with _explained_os_errors(store, Path(where) if kind == "dir" else None), StoreLock(staging / ".lock"):
        files = _build_staging(source, staging, done, file_bytes)
        write_card_if_changed(
            card, card_text(source, manifest, states, where if kind == "hub" else None, read_eval(source.dir))
        )
        write_card_if_changed(staging / "README.md", card.read_text(encoding="utf-8"))
        total_bytes = sum(int(f["size"]) for f in files.values()) + (staging / "README.md").stat().st_size
        rows, building = sum(p.live_chunks for p in done), source.building()
        if kind == "dir":
            url, committed = str(Path(where)), _copy_to_dir(staging, files, Path(where))
        else:
            model_id = manifest.model.model_id
            url, committed = upload_folder(
                staging,
                where,
                token=str(token),
                token_source=token_source,
                private=private,
                revision=revision,
                create_pr=create_pr,
                commit_message=f"wikiembed: {rows} embeddings from {len(done)} shards ({model_id})",
            )
        summary = Published(target, len(files) + 1, total_bytes, tuple(sorted(files)), len(done), rows, source.gen,
                            building, url, committed)
    logger.info(
        "published %d files (%d bytes) to %s: %s", summary.files, total_bytes, target,
        "new commit" if summary.committed else "nothing changed",
    )
    return summary
