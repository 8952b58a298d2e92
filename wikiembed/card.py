"""The dataset card: the README.md a store's generation, an export and a Hub repo carry.

YAML front matter that `datasets` reads (configs, data files, features, sizes), then the human
part from `card.md`: source, model and the prompts its vectors need, chunking, counts, the compact
forms and the last recorded retrieval check (`eval.json`, written by `wikiembed.evaluate`).

Touches: a generation's manifest, markers and one data file's schema (read); its `README.md` and
the digest of the card's inputs beside it (written).
"""

from __future__ import annotations

import hashlib
import json
import shlex
import string
from pathlib import Path
from typing import Any, Sequence

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from wikiembed import atomic
from wikiembed.embedding import uncompressed_bytes
from wikiembed.compact import card_section as compact_card_section
from wikiembed.errors import StoreError
from wikiembed.store import Store
from wikiembed.store_parts import Part, ShardState
from wikiembed.records import Manifest, SourceRecord, VectorKind

SPLIT = "train"
# One pattern for both layouts (flat `data/train-*.parquet`, or `data/NNNN/train-*.parquet`
# past MAX_FILES_PER_FOLDER): `**` matches zero or more folders in `datasets`' globbing.
DATA_FILES_PATTERN = f"data/**/{SPLIT}-*.parquet"
# Beside the card in the store: the digest of the card's inputs when it was last written.
CARD_KEY_FILE = ".wikiembed-card.json"
WIKIPEDIA_LICENSE = "cc-by-sa-3.0"
# A generation's last retrieval check, and the metrics it records (the card shows them as columns).
EVAL_FILE = "eval.json"
EVAL_METRICS = ("recall_at_1", "recall_at_10", "mrr", "ndcg_at_10")
# The card's human part; `$name` fields are filled from the manifest and markers.
_CARD_TEMPLATE = string.Template((Path(__file__).with_name("card.md")).read_text(encoding="utf-8"))


def schema_of(path: Path) -> pa.Schema:
    return pq.read_schema(path).remove_metadata()


_ARROW_TO_DTYPE = {"halffloat": "float16", "float": "float32", "double": "float64", "bool": "bool"}


def _feature(field: pa.Field | pa.DataType) -> dict[str, Any]:
    """An arrow type in the YAML `features` form that `datasets` reads."""
    kind = field.type if isinstance(field, pa.Field) else field
    if pa.types.is_fixed_size_list(kind):
        inner = _feature(kind.value_type)
        # `sequence` + `length` is read as a fixed-length float list by datasets 3 through 5.
        return {"sequence": inner.get("dtype", inner), "length": kind.list_size}
    if pa.types.is_list(kind) or pa.types.is_large_list(kind):
        inner = _feature(kind.value_type)
        return {"sequence": inner.get("dtype", inner)}
    if pa.types.is_large_string(kind):
        return {"dtype": "large_string"}
    if pa.types.is_string(kind):
        return {"dtype": "string"}
    if pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind):
        # Arrow spells float32/float64/float16 "float"/"double"/"halffloat"; datasets wants the sized names.
        return {"dtype": _ARROW_TO_DTYPE.get(str(kind), str(kind))}
    raise StoreError(
        f"column type {kind} has no dataset-card feature mapping; the store's data files "
        "should follow docs/STORE.md (strings, integers, a fixed-size float32 embedding)."
    )


def _size_category(n: int) -> str:
    for limit, label in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"),
                         (1_000_000, "100K<n<1M"), (10_000_000, "1M<n<10M"),
                         (100_000_000, "10M<n<100M"), (1_000_000_000, "100M<n<1B")):
        if n < limit:
            return label
    return "1B<n<10B"


def _license(source: SourceRecord) -> str:
    if source.license:
        return source.license
    # Wikipedia text is CC BY-SA 3.0 (and GFDL); embeddings of it are shared under the same terms.
    if "wikipedia" in source.spec.lower():
        return WIKIPEDIA_LICENSE
    return "unknown"


def _dimension_line(dim: int, vectors: VectorKind | None) -> str:
    """The card's line on the vectors: their dimension and, where recorded, what made them."""
    if vectors is None:
        return f"- dimension: {dim} (float32)"
    norm = "L2-normalized: a dot product is the cosine similarity" if vectors.normalize else "not normalized"
    return (f"- dimension: {dim} (float32, {norm}); made by the {vectors.backend} backend, "
            f"{vectors.pooling} pooling, computed in {vectors.dtype}")


def _prompt_line(model: dict[str, Any]) -> str:
    """The card's line on prompts: what was put before every document, what queries must get."""
    document, query = str(model.get("document_prompt") or ""), str(model.get("query_prompt") or "")
    made = f"documents were embedded with the prompt `{document!r}`" if document else "documents were embedded with no prompt"
    asked = f"queries must be embedded with the query prompt `{query!r}`" if query else "queries take no query prompt"
    return f"- {made}; {asked} (as `encode_query` does)"


def _vector_bytes(part: Part) -> int:
    """Uncompressed bytes of a part's rows (what `datasets` records as num_bytes): from the marker
    where the checkpoint recorded it, else from the file's parquet footer; a kept file of an earlier
    generation counts its live rows' share."""
    recorded = part.arrow_bytes if part.arrow_bytes is not None else uncompressed_bytes(part.path)
    return int(recorded) if not part.dropped_chunks else int(recorded * part.live_chunks / max(part.chunks, 1))


def card_text(
    store: Store, manifest: Manifest, states: Sequence[ShardState], repo_id: str | None,
    evaluation: dict[str, Any] | None = None,
) -> str:
    """The dataset card: YAML front matter `datasets` reads, then the human part (`card.md`).

    Built from the manifest and the markers; of the data files only one schema is read (and
    the footers of shards whose marker predates `arrow_bytes`), so an unchanged store costs
    no data reads."""
    done = [s for s in states if s.state == "done"]
    parts = store.parts(manifest, states)
    if not parts:
        raise StoreError(
            f"store {store.root}: no shard is done yet, so there is nothing to describe or publish; "
            f"see why with `wikiembed status --store {shlex.quote(str(store.root))}`."
        )
    source = manifest.source
    model = manifest.model.model_dump()
    chunking = manifest.chunking
    first = parts[0].path
    schema = schema_of(first)
    if "embedding" not in schema.names:
        raise StoreError(f"{first} has no `embedding` column; the store does not follow docs/STORE.md.")
    dim = schema.field("embedding").type
    dim = dim.list_size if pa.types.is_fixed_size_list(dim) else None
    if dim is None or (model.get("dim") and int(model["dim"]) != dim):
        raise StoreError(
            f"{first}: embedding is {schema.field('embedding').type}, expected a fixed-size "
            f"list of {model.get('dim')} float32 (the manifest's model.dim); rerun the shard."
        )
    markers = [s.marker for s in done if s.marker]
    chunks = sum(p.live_chunks for p in parts)
    num_bytes = sum(_vector_bytes(p) for p in parts)
    articles = sum(p.rows - p.dropped_rows for p in parts)
    seconds = sum(m.seconds for m in markers)
    reused = sum(m.reused_chunks for m in markers)
    model_id = str(model.get("model_id", "unknown"))
    description = source.description or source.spec or "unknown source"
    license_id = _license(source)
    tags = ["embeddings", "vector-search", "rag", "wikiembed"]
    if "wikipedia" in source.spec.lower():
        tags.insert(0, "wikipedia")
    meta = {
        "license": license_id,
        "pretty_name": f"{description} embedded with {model_id}",
        "tags": tags,
        "task_categories": ["feature-extraction", "sentence-similarity"],
        "size_categories": [_size_category(chunks)],
        "configs": [{"config_name": "default", "data_files": [{"split": SPLIT, "path": DATA_FILES_PATTERN}]}],
        "dataset_info": {
            "features": [{"name": f.name, **_feature(f)} for f in schema],
            # datasets ignores a split without num_bytes, and checks num_examples against the data.
            "splits": [{"name": SPLIT, "num_bytes": num_bytes, "num_examples": chunks}],
            "dataset_size": num_bytes,
        },
    }
    versions = manifest.versions
    skipped = manifest.skipped
    partial = len(done) < len(states)
    fields = {
        "front_matter": yaml.safe_dump(meta, sort_keys=False, allow_unicode=True, width=1000).rstrip("\n"),
        "description": description,
        "model_id": model_id,
        "spec": source.spec,
        "kind": source.kind,
        "config": source.config,
        "split": source.split,
        "limit": source.limit,
        "fingerprint": source.fingerprint,
        "license_line": license_id + (" (inherited from Wikipedia: attribute the authors, share alike)"
                                      if license_id == WIKIPEDIA_LICENSE else ""),
        "revision": model.get("revision"),
        "dim": dim,
        "dimension_line": _dimension_line(dim, manifest.vectors),
        "prompt_line": _prompt_line(model),
        "query_prompt_repr": repr(str(model.get("query_prompt") or "")),
        "revision_line": f"- revision: `{source.revision}` (the commit the rows were read at)\n"
        if source.revision else "",
        "max_tokens": model.get("max_tokens"),
        "chunker": chunking.chunker,
        "chunk_size": chunking.chunk_size,
        "chunk_overlap": chunking.chunk_overlap,
        "articles": articles,
        "chunks": chunks,
        "shards_line": f"{len(done)} of {len(states)}" + (" (partial: the remaining shards are not published yet)" if partial else "")
        + (f", plus {len(manifest.base)} shard files kept from earlier versions of the source (their unchanged articles)"
           if manifest.base else ""),
        "skipped_line": ("- skipped source rows: " + ", ".join(f"{reason}: {n}" for reason, n in sorted(skipped.items())) + "\n")
        if skipped else "",
        "seconds": f"{seconds:.0f}",
        "reused_note": f" ({reused} chunks reused from an earlier run)." if reused else ".",
        "versions": ", ".join(f"{name} {version}" for name, version in sorted(versions.items())),
        "sections": "".join(line + "\n" for line in [*compact_card_section(manifest), *eval_section(evaluation)]),
        "load_id": repo_id or "ORG/NAME",
        "split_name": SPLIT,
    }
    return _CARD_TEMPLATE.substitute(fields)


def write_card_if_changed(path: Path, text: str) -> None:
    # `path` is a generation's own card (`Store.card_path`), never the link at a store's top:
    # a link there is someone else's, and `atomic` refuses to write through it.
    if path.exists() and not path.is_symlink() and path.read_text(encoding="utf-8") == text:
        return
    atomic.write_text(path, text)


def write_card(store: Path, *, repo_id: str | None = None) -> Path:
    """Write STORE/README.md, the dataset card, from the manifest, the done shards' markers and
    one data file's schema.

    `repo_id` only fills the usage snippet's `load_dataset(...)` line. The card has no timestamps,
    so an unchanged store gives a byte-identical card (and no new commit); and when neither the
    manifest nor any marker changed since the card was written (a sidecar holds their digest),
    not even that schema is read: a run that changed nothing reads no data file.
    """
    s = Store.at(store)
    manifest = s.read_manifest()
    states = s.states(manifest)
    card = Path(store) / "README.md"
    sidecar = s.dir / CARD_KEY_FILE
    evaluation = read_eval(s.dir)
    key = _card_key(manifest, states, repo_id, evaluation)
    try:
        fresh = card.exists() and json.loads(sidecar.read_text(encoding="utf-8")).get("key") == key
    except (OSError, ValueError, AttributeError):
        fresh = False
    if not fresh:
        write_card_if_changed(s.card_path, card_text(s, manifest, states, repo_id, evaluation))
        atomic.write_json(sidecar, {"key": key})
    return card


def _card_key(
    manifest: Manifest, states: Sequence[ShardState], repo_id: str | None, evaluation: dict[str, Any] | None = None
) -> str:
    """Digest of everything the card is made from, except the data files the markers vouch for."""
    payload = {
        **({"evaluation": evaluation} if evaluation else {}),
        "manifest": manifest.model_dump(mode="json", exclude={"updated"}),
        "shards": [[st.shard, st.state, st.marker.sha256 if st.marker else None] for st in states],
        "repo_id": repo_id,
        "template": _CARD_TEMPLATE.template,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


# ---------------------------------------------------------------------------- token


def read_eval(generation_dir: Path) -> dict[str, Any] | None:
    """The last recorded eval of a generation, if any (for the dataset card)."""
    try:
        return json.loads((generation_dir / EVAL_FILE).read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def eval_section(result: dict[str, Any] | None) -> list[str]:
    """The dataset card's markdown lines for a recorded eval (none when there is no eval)."""
    if not result:
        return []
    if result.get("query") == "file":
        intro = (f"{result['n']} judged queries (of {result['queries_read']} in the file; the others name nothing in this "
                 f"store) searched for over all {result['chunks']} chunks; a hit is a relevant article or chunk in the top "
                 f"{result.get('k', 10)}. 95% intervals in brackets. Reproduce with `wikiembed eval --store STORE --queries FILE`.")
    else:
        intro = (f"Each of {result['n']} randomly drawn articles (seed {result.get('seed')}) is searched for by its title over all "
                 f"{result['chunks']} chunks; a hit is any chunk of that article in the top {result.get('k', 10)}. "
                 "Titles are an easy, label-free proxy: compare forms and models with it, not with other benchmarks. "
                 "95% intervals in brackets. Reproduce with `wikiembed eval --store STORE`.")
    ndcg = all("ndcg_at_10" in f for f in result["forms"])  # recorded before nDCG was reported: no column
    lines = [
        "## Retrieval check",
        "",
        intro,
        "",
        "| form | bytes/vector | recall@1 | recall@10 | MRR@10 |" + (" nDCG@10 |" if ndcg else ""),
        "| --- | --- | --- | --- | --- |" + (" --- |" if ndcg else ""),
    ]
    for f in result["forms"]:
        def cell(key: str) -> str:
            lo, hi = f[key + "_ci95"]
            return f"{f[key]:.3f} [{lo:.3f}, {hi:.3f}]"

        form = f["form"] + (f" (rescored ×{f['rescore']})" if f.get("rescore") else "")
        form += " (approximate index)" if f.get("method") == "index" else ""
        cells = [cell(m) for m in (EVAL_METRICS if ndcg else EVAL_METRICS[:3])]
        lines.append(f"| {form} | {f['bytes_per_vector']} | " + " | ".join(cells) + " |")
    return lines + [""]
