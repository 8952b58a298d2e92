"""The embed step's core: embed one shard's chunks and commit `data/NNNNN.parquet` + its marker
(the checkpoint), whoever runs the shard (`wikiembed.executors`).

Order of writes is what makes resume safe: rows are streamed into a hidden
temp file, fsynced, renamed to `data/NNNNN.parquet`, then the content keys of
its rows are kept beside it (`keys/NNNNN.npz`, with the file's sha256: see
`wikiembed.chunk_keys`), and only then is the marker `_done/NNNNN.json` written
(also temp + rename) with the file's size, sha256, mtime and inode. A kill at
any point leaves either no data file, a data file without a marker (redone on
resume), or a complete pair.

What is written is checked first: every vector against the manifest's
dimension, for being finite and not all zero, and for L2 norm 1 where the
backend normalizes (`check_written`), and the backend's kind of vectors (model,
revision, pooling, normalization) against the kind the generation already
holds, so one store never mixes vectors that are not comparable. The marker
records the kind.

Touches: `STORE/chunks/NNNNN.parquet` (read), `STORE/manifest.json` (the
recorded kind), `STORE/data/`, `STORE/keys/`, `STORE/_done/`.
"""

from __future__ import annotations

import shlex
import time
from pathlib import Path
from typing import Callable, Iterable, Iterator, Protocol, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from wikiembed import chunk_keys
from wikiembed.atomic import atomic_path
from wikiembed.backends.base import Backend, VectorKind, check_vectors
from wikiembed.chunking import CHUNK_SCHEMA
from wikiembed.compact import Form, arrow_column, encode, stored_forms
from wikiembed.errors import BackendError, InputError
from wikiembed.store import Store, sha256_file, store_os_error
from wikiembed.records import Manifest, Marker
from wikiembed.sources import streamed

# Chunks embedded and written per parquet row group: bounds memory for any shard
# size (~20 MB of text and vectors) and keeps the backend's batches large: the
# engine sorts a call's chunks by length, and a GPU wants many chunks of each
# length to fill its 64k-token batches without padding.
EMBED_GROUP = 16_384
# How far a vector's L2 norm may be from 1 when the backend normalizes: bf16 engines and
# float32 rounding stay within 1e-3; anything further is not what the dataset card promises.
NORM_TOLERANCE = 1e-2


def data_schema(dim: int, forms: Sequence[Form] = ()) -> pa.Schema:
    schema = CHUNK_SCHEMA.append(pa.field("embedding", pa.list_(pa.float32(), dim)))
    for form in forms:
        schema = schema.append(pa.field(form.column, form.arrow_type))
    return schema


def writer_options(schema: pa.Schema) -> dict[str, object]:
    """A data file's parquet options: zstd, and a dictionary for every column but the float vectors;
    `embedding` plain and uncompressed, so that a vector can be read by its row (`wikiembed.vector_rows`:
    an incremental run reuses a few vectors from every row group of every file).
    Float vector values hardly repeat: a dictionary there is tried, abandoned and still costs bytes,
    writing time and reading time, and zstd saves about 5% of the bytes of real embeddings."""
    def floats(field: pa.Field) -> bool:
        return pa.types.is_fixed_size_list(field.type) and pa.types.is_floating(field.type.value_type)

    def leaf(field: pa.Field) -> str:  # the column's parquet path: a list's values are `NAME.list.element`
        return f"{field.name}.list.element" if pa.types.is_fixed_size_list(field.type) else field.name

    compression = {leaf(f): "none" if f.name == "embedding" else "zstd" for f in schema}
    return {"compression": compression, "use_dictionary": [leaf(f) for f in schema if not floats(f)]}


# Content key of a chunk's text (see `wikiembed.chunk_keys`).
text_key = chunk_keys.key


class VectorSource(Protocol):
    """Vectors already computed for some texts (by content key): the incremental path."""

    def lookup(self, texts: list[str], keys: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(vectors [n, dim] float32, found mask [n] bool); `keys`: the texts' content keys, where known."""
        ...


ProgressFn = Callable[[int], None]


def check_written(vectors: np.ndarray, n: int, dim: int, where: str, unit_norm: bool = False) -> np.ndarray:
    """The one check of vectors before they are written to a store: `n` rows of the store's
    dimension (the manifest's, not whatever the backend says), finite, never all zero, and of L2
    norm 1 where the backend normalizes (`unit_norm`); float32 C-contiguous."""
    arr = check_vectors(vectors, n, dim, where)
    norms = np.linalg.norm(arr, axis=1)
    zero = np.flatnonzero(norms == 0)
    if len(zero):
        raise BackendError(
            f"{where} returned {len(zero)} all-zero vector(s) (rows {zero[:5].tolist()}); a backend that answers "
            "zeros is broken: check its logs, or embed with --backend local. Nothing was written."
        )
    if unit_norm:
        off = np.flatnonzero(np.abs(norms - 1.0) > NORM_TOLERANCE)
        if len(off):
            raise BackendError(
                f"{where} returned {len(off)} vector(s) with an L2 norm far from 1 (row {int(off[0])}: norm "
                f"{float(norms[off[0]]):.4g}) though its vectors are meant to be normalized: the backend serves "
                "another model or skips normalization (TEI: the request's normalize=true). Nothing was written."
            )
    return arr


def check_kind(store: Store, manifest: Manifest, kind: VectorKind) -> None:
    """Refuse a backend whose vectors are of another kind than the ones this generation holds."""
    held = manifest.vectors
    if held is None:
        return
    if not held.agrees_with(kind):
        raise InputError(
            f"store {store.root} holds vectors from {held.describe()}; this run's backend makes "
            f"{kind.describe()}. Vectors of different kinds are not comparable, so one store never mixes "
            f"them: finish this store with its own settings (`wikiembed rerun --store {shlex.quote(str(store.root))} --failed`), "
            "or use a new --store for this backend."
        )


def record_vector_kind(store: Store, kind: VectorKind | None = None) -> VectorKind | None:
    """Write the kind of this generation's vectors into its manifest, if not there yet: `kind` (that
    of the run's first finished shard), else the kind of its first done marker.

    Called by the flow (which holds the store lock) before embedding, after the first shard is
    done (so every later shard is checked against it: a model whose files change during a run
    cannot fill one generation with two kinds), and after embedding, so a run killed before it
    could record the kind still pins it on resume.
    """
    manifest = store.read_manifest()
    if manifest.vectors is not None:
        return manifest.vectors
    if kind is not None:
        store.write_manifest(manifest.changed(vectors=kind))
        return kind
    # Names, not Paths, in order: sorting 10,000 Path objects took over a second.
    for name in sorted(p.name for p in (store.dir / "_done").glob("*.json")):
        stem = name.removesuffix(".json")
        marker = store.read_done(int(stem)) if stem.isdigit() else None
        if marker and marker.vectors:
            store.write_manifest(manifest.changed(vectors=marker.vectors))
            return marker.vectors
    return None


def embed_shard(
    store: Store,
    shard: int,
    backend: Backend,
    rows: int,
    *,
    reuse: VectorSource | None = None,
    progress: ProgressFn | None = None,
    chunks: Iterable[pa.Table] | None = None,
) -> Marker:
    """Embed `chunks/NNNNN.parquet` into `data/NNNNN.parquet` and mark the shard done; returns the marker.

    `chunks`: the shard's chunks as they are cut (`chunking.chunk_shard_parts`, which puts the
    chunk file in place once it is exhausted), instead of reading the finished chunk file.

    The store's compact forms (manifest `compact`, wikiembed/compact.py) are written as extra
    columns derived from the same float32 vectors, whoever calls this (a flow task or a worker).
    """
    started = time.perf_counter()
    manifest = store.read_manifest()
    forms, int8_calibration = stored_forms(manifest)
    # The document prompt is the generation's (resolved from the model and --prompt-name when it was
    # planned): it goes before every text, and it is part of the vectors' kind.
    prompt = document_prompt(manifest)
    kind = backend.kind.with_prompt(prompt)
    check_kind(store, manifest, kind)
    dim = int(manifest.model.dim)
    batches = _groups(chunks) if chunks is not None else streamed(store.chunks_path(shard)).iter_batches(batch_size=EMBED_GROUP)
    dest = store.data_path(shard)
    schema = data_schema(dim, forms)
    embedded = reused = chunks = chars = 0
    row_keys: list[np.ndarray] = []  # the content keys of the file's rows, kept beside it (`wikiembed.chunk_keys`)
    try:
        with atomic_path(dest) as tmp, pq.ParquetWriter(tmp, schema, **writer_options(schema)) as writer:
            for batch in batches:
                texts = batch.column("text").to_pylist()
                keys = chunk_keys.keys(texts)
                row_keys.append(keys)
                vectors = np.empty((len(texts), dim), dtype=np.float32)
                todo = np.ones(len(texts), dtype=bool)
                if reuse is not None and texts:
                    found_vecs, found = reuse.lookup(texts, keys)
                    if found.any():
                        vectors[found] = found_vecs[found]
                        todo = ~found
                    found_vecs = None
                missing = [t for t, need in zip(texts, todo) if need]
                if missing:
                    where = f"{backend.kind.backend} backend for {backend.model_id} (store {store.root})"
                    unit = kind.normalize and not kind.truncate_dim  # a cut vector is no longer unit length
                    vectors[todo] = check_written(_embed(backend, batch, todo, missing, prompt), len(missing), dim, where, unit)
                embedded += len(missing)
                reused += len(texts) - len(missing)
                chunks += len(texts)
                chars += sum(len(t) for t in missing)
                flat = pa.array(vectors.reshape(-1), type=pa.float32())
                column = pa.FixedSizeListArray.from_arrays(flat, dim)
                rows_out = pa.Table.from_batches([batch]).select(CHUNK_SCHEMA.names)  # token ids stay in chunks/
                table = rows_out.append_column(schema.field("embedding"), column)
                for form in forms:
                    table = table.append_column(schema.field(form.column), arrow_column(encode(vectors, form, int8_calibration), form))
                writer.write_table(table)
                if progress is not None:
                    progress(len(texts))
                # Let go of this group's rows and vectors before the next group is read and embedded.
                batch = texts = keys = vectors = todo = missing = flat = column = rows_out = table = None  # noqa: F841
    except OSError as exc:
        raise store_os_error(exc, dest) from exc
    st = dest.stat()
    sha256 = sha256_file(dest)
    try:
        chunk_keys.write(dest, np.concatenate(row_keys) if row_keys else np.zeros(0, dtype="S16"), sha256)
    except OSError as exc:
        raise store_os_error(exc, chunk_keys.path_for(dest)) from exc
    marker = Marker(
        shard=shard,
        rows=rows,
        chunks=chunks,
        embedded_chunks=embedded,
        reused_chunks=reused,
        embedded_chars=chars,
        sha256=sha256,
        bytes=st.st_size,
        arrow_bytes=uncompressed_bytes(dest),
        mtime_ns=st.st_mtime_ns,
        inode=st.st_ino,
        model=backend.model_id,
        vectors=kind,
        seconds=round(time.perf_counter() - started, 3),
    )
    store.mark_done(shard, marker)
    return marker


def _groups(tables: Iterable[pa.Table]) -> Iterator[pa.RecordBatch]:
    """The rows of `tables` in record batches of EMBED_GROUP rows (the last one smaller)."""
    pending: list[pa.Table] = []
    held = 0
    for table in tables:
        pending.append(table)
        held += table.num_rows
        while held >= EMBED_GROUP:
            joined = pa.concat_tables(pending)
            yield from joined.slice(0, EMBED_GROUP).combine_chunks().to_batches()
            pending, held = [joined.slice(EMBED_GROUP)], held - EMBED_GROUP
    if held:
        yield from pa.concat_tables(pending).combine_chunks().to_batches()


def document_prompt(manifest: Manifest) -> str:
    """The prompt a generation's documents are embedded with ("" for none, and for stores made before prompts)."""
    return manifest.model.document_prompt


def _embed(backend: Backend, batch: pa.RecordBatch, todo: np.ndarray, texts: list[str], prompt: str = "") -> np.ndarray:
    """Vectors of the chunks in `batch` marked `todo`: from their token ids where the chunk file
    carries them and the backend takes ids (the local engine; the ids begin with the prompt's),
    else from their text, with the prompt put before it."""
    embed_ids = getattr(backend, "embed_ids", None)
    if embed_ids is None or "input_ids" not in batch.schema.names:
        return backend.embed(texts, prompt)
    column = batch.column("input_ids")
    if not todo.all():
        column = column.filter(pa.array(todo))
    column = pa.concat_arrays([column]) if isinstance(column, pa.ChunkedArray) else column
    offsets = column.offsets.to_numpy().astype(np.int64)
    ids = column.values.to_numpy(zero_copy_only=False)[offsets[0] : offsets[-1]]
    return embed_ids(ids, offsets - offsets[0], prompt)


def uncompressed_bytes(path: Path) -> int:
    """A parquet file's uncompressed column bytes (its footer's row-group sizes): the dataset card's
    `num_bytes`, recorded in the marker so the card never reopens finished files."""
    meta = pq.ParquetFile(path).metadata
    return sum(meta.row_group(g).total_byte_size for g in range(meta.num_row_groups))


def read_vectors(path: Path) -> tuple[list[str], np.ndarray]:
    """(texts, vectors) of a data file, for reuse indexes and checks."""
    table = pq.read_table(path, columns=["text", "embedding"])
    emb = table.column("embedding").combine_chunks()
    dim = emb.type.list_size
    vectors = emb.values.to_numpy(zero_copy_only=False).reshape(-1, dim)
    return table.column("text").to_pylist(), vectors
