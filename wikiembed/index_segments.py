"""Segments of the approximate nearest-neighbour index on disk: their layout, which ones serve a
generation (`find_segments`), the build's plan (`plan_segments`: reuse, build, merge by size tier),
building them, and removing the unused ones and the older layouts' graphs. Searching them is
`wikiembed.index`'s; `wikiembed index` (reading a generation's data files) is `wikiembed.index_build`'s.

A generation's index of a form is a small set of segments: HNSW graphs (usearch, the optional extra
`pip install 'wikiembed[index]'`), each over every row of one or more of its data files, built by
streaming those files batch by batch (memory: one segment's graph and one batch). A segment lives
in the index folder of the generation that built it, and is not published:

    gens/<G>/index/<column>/seg-<hash>.usearch   one segment's graph, and the vectors it links (keys:
                                                 the file's number in the segment << 32 | its row there)
    gens/<G>/index/<column>/seg-<hash>.json      its sidecar: form, column, metric, scalar, dim, rows,
                                                 `files` (each data file's path in the store, sha256 as
                                                 its `_done` marker records it, and rows, in key
                                                 order), library version, build parameters, bytes,
                                                 seconds, when it was built

`<hash>`: the first 16 hex digits of the sha256 of the files it covers, so the same files make the
same segment. The layout before segments, one graph per data file (`NNNNN.usearch` and a sidecar
`NNNNN.json` naming one `data` file and its `sha256`; keys: row numbers), is read as what it is: a
segment of one file.

A data file is written once and kept by every later generation that does not change it (an
incremental run's `base`, see docs/STORE.md), and so is a segment: it serves every generation that
holds all of its files, byte for byte (same path, sha256 and rows). Building the index of a
generation (`wikiembed index`, `index_build.build_index`; the plan is `plan_segments`)
reuses the segments found in the index folders of the generations whose files it holds, and
indexes the files none of them covers into new segments, filled in file order up to
`segment_rows(form)` rows (SEGMENT_ROWS, fewer where a form's vectors are wide: SEGMENT_BYTES bounds
a segment's build memory). So indexing a new version costs the rows it wrote, not the rows it holds.
Small segments pile up that way (one per version); like the runs of an LSM tree they are merged:
segments below a quarter of the segment size fall in size tiers (rows within a factor MERGE_FACTOR
of each other), and where MERGE_FACTOR segments of one tier are in use, their files are indexed
again as one segment, a tier bigger. A row is re-added about log(segment size / a version's rows)
times at most. A generation has at most MERGE_FACTOR × rows / segment size segments of a quarter
of the segment size or more (about rows / segment size where versions are small next to a
segment), and at most MERGE_FACTOR - 1 in each of the TIERS tiers below. A search asks every
segment: its cost grows with their number, each a graph search (about the log of its rows).

Each segment is written as it is finished, graph first and sidecar after it (each atomically): a
graph without its sidecar is never used, and a build killed midway leaves its finished segments,
which the next build reuses. A segment naming a data file whose sha256 differs from what the
generation holds now (a shard rerun or changed on disk) is stale for it: search ignores it, says so
and names the rebuild command, and `wikiembed index` indexes those files again. Segments in the
built generation's own folder that its index no longer uses (stale, or merged into a bigger one) are
removed by the build; those of other generations are left to them.

Which segments a generation uses is decided the same way by search and build (`find_segments`): of
the valid ones, biggest first, each whose files none already chosen covers.

Touches: the `index/` folders of the generations whose data files a generation holds (written by
`build_segment`, read by `find_segments`).
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from wikiembed.atomic import atomic_path, remove, write_json
from wikiembed.compact import Form
from wikiembed.errors import InputError, StoreError
from wikiembed.store_parts import Part

INSTALL = "pip install 'wikiembed[index]'"
INDEX_DIR = "index"
SEGMENT_PREFIX = "seg-"
# usearch's HNSW defaults (16 links per node, 128 candidates while adding): on the man-page store
# measured in the README they keep recall@10 against the exact scan at 0.97-0.99.
CONNECTIVITY = 16
EXPANSION_ADD = 128
# Candidates kept while searching a segment: at least this many, and never fewer than asked for. A
# segment holds many data files' rows, where a graph per file was searched at 64 before: 128 keeps
# recall@10 against the exact scan at what the files' graphs gave (1.0 on 100,000 embedding-like int8
# vectors in 20 files, against 0.99 at 64), for about 1.4x a segment's search time.
EXPANSION_SEARCH = 128
# A segment holds at most this many rows, and its build at most about SEGMENT_BYTES: its vectors
# plus LINK_BYTES a row of graph links (2 × CONNECTIVITY neighbours at the base level, 4 bytes each,
# and usearch's own bookkeeping). int8 at 1024 dimensions: 1,000,000 rows, about 1.2 GB.
SEGMENT_ROWS = 1_000_000
SEGMENT_BYTES = 2 << 30
LINK_BYTES = 2 * CONNECTIVITY * 4 + 64
# Segments below a quarter of the segment size (F = MERGE_FACTOR) fall in tiers by size (tier t: rows in
# [size / F^(t+1), size / F^t), t = 1 .. TIERS, the last every smaller one); where F segments of a tier
# are in use, they are merged (into one: together they hold fewer than size rows).
MERGE_FACTOR = 4
TIERS = 4
_SCALARS = {"float32": "f32", "float16": "f16", "int8": "i8", "binary": "b1"}
# A key: a data file's number in its segment << ROW_BITS | its row there.
ROW_BITS = 32
ROW_MASK = (1 << ROW_BITS) - 1


def require_library() -> Any:
    """usearch's Index class, or an InputError naming the pip command."""
    try:
        from usearch.index import Index
    except ImportError:
        raise InputError(f"the approximate index needs the usearch library, which is not installed; {INSTALL}") from None
    return Index


def library_version() -> str | None:
    try:
        import usearch
    except ImportError:
        return None
    return f"usearch {usearch.__version__}"


def folder(generation_dir: Path, form: Form) -> Path:
    """The folder of `form`'s segments in a generation folder."""
    return generation_dir / INDEX_DIR / form.column


def legacy_paths(generation_dir: Path, form: Form) -> tuple[Path, Path]:
    """(index file, sidecar) of the oldest layout: one graph of `form` over a whole generation."""
    return generation_dir / INDEX_DIR / f"{form.column}.usearch", generation_dir / INDEX_DIR / f"{form.column}.json"


def metric(form: Form) -> str:
    """The index's metric for a form: Hamming for binary, inner product for the others."""
    return "hamming" if form.precision == "binary" else "ip"


def scalar(form: Form) -> str:
    """The index's scalar type for a form: the stored values' own."""
    return _SCALARS[form.precision]


def relative(path: Path, store: Path) -> str:
    """A data file's path as a sidecar names it: relative to the store's folder."""
    try:
        return path.relative_to(store).as_posix()
    except ValueError:
        return path.as_posix()


def segment_rows(form: Form) -> int:
    """The most rows one segment of `form` holds: SEGMENT_ROWS, fewer where its build would pass SEGMENT_BYTES."""
    return max(1, min(SEGMENT_ROWS, SEGMENT_BYTES // (form.bytes_per_vector + LINK_BYTES)))


def segment_name(files: Sequence[tuple[str, str, int]]) -> str:
    """A segment's file name (no suffix) from the (data, sha256, rows) of the files it covers, in key order."""
    text = "\n".join(f"{data} {sha} {rows}" for data, sha, rows in files)
    return SEGMENT_PREFIX + hashlib.sha256(text.encode()).hexdigest()[:16]


def identity(part: Part, store: Path) -> tuple[str, str, int]:
    """What a segment records of a data file, and what it must still be for the segment to serve it."""
    return relative(part.path, store), part.sha256, part.chunks


# -- segments on disk -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Segment:
    """A segment's files on disk and what its sidecar says: `files` are (data, sha256, rows) in key order."""

    index_path: Path
    sidecar_path: Path
    sidecar: dict[str, Any]
    files: tuple[tuple[str, str, int], ...]

    @property
    def rows(self) -> int:
        return sum(rows for _, _, rows in self.files)

    @property
    def bytes(self) -> int:
        return int(self.sidecar["bytes"])


def read_segment(sidecar_path: Path, form: Form) -> tuple[Segment | None, str | None]:
    """(the segment of `sidecar_path`, None), or (None, why it cannot be used); checks its sidecar
    against `form` and its graph file's size (reads the sidecar, stats the graph)."""
    index_path = sidecar_path.with_suffix(".usearch")
    try:
        sidecar = json.loads(sidecar_path.read_text(encoding="utf-8"))
        if not isinstance(sidecar, dict):
            raise ValueError("not a JSON object")
        if "files" in sidecar:
            files = tuple((str(f["data"]), str(f["sha256"]), int(f["rows"])) for f in sidecar["files"])
        else:  # one data file's graph, from before segments: a segment of that file
            files = ((str(sidecar["data"]), str(sidecar["sha256"]), int(sidecar["rows"])),)
        if not files:
            raise ValueError("no data files")
    except FileNotFoundError:
        return None, None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return None, f"unreadable sidecar {sidecar_path} ({exc})"
    segment = Segment(index_path, sidecar_path, sidecar, files)
    expected = {"column": form.column, "dim": form.dim, "scalar": scalar(form), "metric": metric(form), "rows": segment.rows}
    wrong = [key for key, value in expected.items() if sidecar.get(key) != value]
    try:
        size = index_path.stat().st_size
    except OSError:
        size = None
    if size != sidecar.get("bytes"):
        wrong.append("index file missing" if size is None else "index file size")
    if wrong:
        return None, f"index {index_path} does not match its sidecar ({', '.join(wrong)})"
    return segment, None


@dataclass
class Found:
    """The segments that serve a generation's index of a form (`chosen`: each with the generation's file
    index of each of its files, in key order), and why the files none serves are left out."""

    chosen: list[tuple[Segment, list[int]]]
    uncovered: list[int]  # generation file indexes no chosen segment covers
    stale: list[int]  # of those, the files a segment names with other bytes
    grouped: list[int]  # of those, the files a segment names as they are, beside another file that changed or left
    broken: list[str]  # why some sidecars or graphs could not be used
    segments: list[Segment]  # every usable segment of the form found (chosen or not)

    @property
    def covered(self) -> int:
        return sum(len(fis) for _, fis in self.chosen)


def generation_folders(parts: Sequence[Part], generation_dir: Path) -> list[Path]:
    """The generation folders whose index folders may hold segments for a generation: its own, and
    those of the generations whose data files it keeps."""
    return list(dict.fromkeys([generation_dir, *(p.path.parent.parent for p in parts)]))


def find_segments(parts: Sequence[Part], form: Form, store: Path, generation_dir: Path) -> Found:
    """The segments of `form` that serve the generation whose data files are `parts`: of those found in
    the index folders of its generations (`generation_folders`) whose every file the generation holds
    as it is, biggest first, each that covers none of the files of one chosen before. Reads sidecars
    and stats graph files only."""
    segments, broken = [], []
    for gen_dir in generation_folders(parts, generation_dir):
        where = folder(gen_dir, form)
        if not where.is_dir():
            continue
        for sidecar_path in sorted(where.glob("*.json")):
            segment, why = read_segment(sidecar_path, form)
            if segment is not None:
                segments.append(segment)
            elif why is not None:
                broken.append(why)
    held = {identity(p, store): fi for fi, p in enumerate(parts)}
    chosen, taken = [], set()
    for segment in sorted(segments, key=lambda s: (-s.rows, -len(s.files), s.index_path.name, str(s.index_path))):
        fis = [held.get(f) for f in segment.files]
        if any(fi is None or fi in taken for fi in fis):
            continue
        chosen.append((segment, fis))
        taken.update(fis)
    chosen.sort(key=lambda c: min(c[1]))
    uncovered = [fi for fi in range(len(parts)) if fi not in taken]
    named = {f for s in segments for f in s.files}
    paths = {f[0] for f in named}
    stale, grouped = [], []
    for fi in uncovered:
        ident = identity(parts[fi], store)
        if ident in named:
            grouped.append(fi)
        elif ident[0] in paths:
            stale.append(fi)
    return Found(chosen, uncovered, stale, grouped, broken, segments)


def build_segment(parts: Sequence[Part], form: Form, batches: Callable[[Part], Iterable[np.ndarray]], store: Path,
                  generation_dir: Path) -> Segment:
    """Build one segment of `form` over every row of `parts` (in that order; `batches(part)`: its stored
    values [n, width], every row in file order), write its graph, then its sidecar, in the index
    folder of `generation_dir`; returns it."""
    Index = require_library()
    started = time.monotonic()
    index = Index(ndim=form.dim, metric=metric(form), dtype=scalar(form),
                  connectivity=CONNECTIVITY, expansion_add=EXPANSION_ADD, expansion_search=EXPANSION_SEARCH)
    files = []
    for number, part in enumerate(parts):
        rows = 0
        for values in batches(part):
            if len(values):
                index.add((np.uint64(number) << np.uint64(ROW_BITS)) | np.arange(rows, rows + len(values), dtype=np.uint64), values)
            rows += len(values)
        if rows != part.chunks:
            raise StoreError(f"{part.path}: the data file held {rows} rows while indexing, not {part.chunks} as its marker "
                             "records; a run is rewriting it, build the index when it is finished.")
        files.append(identity(part, store))
    name = segment_name(files)
    where = folder(generation_dir, form)
    index_path, sidecar_path = where / f"{name}.usearch", where / f"{name}.json"
    remove(sidecar_path)  # a sidecar goes first: it never vouches for a graph being replaced
    with atomic_path(index_path) as tmp:
        index.save(str(tmp))
    del index
    sidecar = {
        "form": form.name,
        "column": form.column,
        "metric": metric(form),
        "scalar": scalar(form),
        "dim": form.dim,
        "rows": sum(rows for _, _, rows in files),
        "files": [{"data": data, "sha256": sha, "rows": rows} for data, sha, rows in files],
        "library": library_version(),
        "connectivity": CONNECTIVITY,
        "expansion_add": EXPANSION_ADD,
        "bytes": index_path.stat().st_size,
        "seconds": round(time.monotonic() - started, 3),
        "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    write_json(sidecar_path, sidecar)
    return Segment(index_path, sidecar_path, sidecar, tuple(files))


# -- the build's plan -----------------------------------------------------------------------------

@dataclass
class Plan:
    """What building a generation's index of a form does: segments kept as they are (`reused`, with the
    generation's file index of each of their files), new segments to build (`build`: each a list of
    file indexes, in order), and the reused segments whose files those fold in again (`merged`)."""

    reused: list[tuple[Segment, list[int]]]
    build: list[list[int]]
    merged: list[Segment]
    found: Found


def tier(rows: int, size: int) -> int | None:
    """A segment's size tier: t for rows in [size / F^(t+1), size / F^t) (F: MERGE_FACTOR), the last
    (TIERS) for every smaller one; None for one of size / F rows or more, which is never merged."""
    if rows * MERGE_FACTOR >= size:
        return None
    t = 1
    while t < TIERS and rows * MERGE_FACTOR ** (t + 1) < size:
        t += 1
    return t


def pack(fis: Sequence[int], rows: Callable[[int], int], size: int) -> list[list[int]]:
    """`fis` in order, cut into runs of at most `size` rows (a file bigger than that alone)."""
    out: list[list[int]] = []
    total = 0
    for fi in fis:
        if out and total + rows(fi) <= size:
            out[-1].append(fi)
            total += rows(fi)
        else:
            out.append([fi])
            total = rows(fi)
    return out


def plan_segments(parts: Sequence[Part], form: Form, store: Path, generation_dir: Path) -> Plan:
    """Which segments a build of `form`'s index of a generation reuses, builds and merges: the files no
    usable segment covers are packed in file order into segments of up to `segment_rows(form)` rows;
    then, while MERGE_FACTOR segments (reused or new) share a size tier, they are merged into one
    (their files packed again)."""
    found = find_segments(parts, form, store, generation_dir)
    size = segment_rows(form)
    rows = lambda fi: parts[fi].chunks  # noqa: E731
    groups: list[tuple[list[int], Segment | None]] = [(fis, segment) for segment, fis in found.chosen]
    groups += [(fis, None) for fis in pack(found.uncovered, rows, size)]
    while True:
        tiers: dict[int, list[int]] = {}
        for g, (fis, _) in enumerate(groups):
            t = tier(sum(rows(fi) for fi in fis), size)
            if t is not None:
                tiers.setdefault(t, []).append(g)
        full = [members for _, members in sorted(tiers.items()) if len(members) >= MERGE_FACTOR]
        if not full:
            break
        members = set(full[-1])  # the smallest tier first: its merge may fill the tier above
        files = sorted(fi for g in members for fi in groups[g][0])
        groups = [group for g, group in enumerate(groups) if g not in members] + [(fis, None) for fis in pack(files, rows, size)]
    kept = {id(segment) for _, segment in groups if segment is not None}
    return Plan(reused=[(s, fis) for fis, s in groups if s is not None],
                build=sorted((fis for fis, s in groups if s is None), key=min),
                merged=[s for s, _ in found.chosen if id(s) not in kept],
                found=found)


def build_segments(parts: Sequence[Part], form: Form, store: Path, generation_dir: Path,
                   batches: Callable[[Part], Iterable[np.ndarray]]) -> tuple[Plan, list[tuple[Segment, list[int], bool]], list[Path]]:
    """Build `form`'s index of the generation whose data files are `parts` as `plan_segments` plans it,
    each new segment written as it is finished (`batches(part)`: a file's stored values, every row in
    order); then remove the segments of its own folder it does not use. Returns (the plan, every
    segment it uses as (segment, file indexes, built now), the paths removed), segments in file order."""
    plan = plan_segments(parts, form, store, generation_dir)
    segments = [(segment, fis, False) for segment, fis in plan.reused]
    for fis in plan.build:
        segments.append((build_segment([parts[fi] for fi in fis], form, batches, store, generation_dir), fis, True))
    segments.sort(key=lambda s: min(s[1]))
    return plan, segments, remove_unused(generation_dir, form, [s for s, _, _ in segments])


def remove_unused(generation_dir: Path, form: Form, used: Iterable[Segment]) -> list[Path]:
    """Delete the segments of `form` in a generation's own index folder that its index does not use
    (sidecar first, then graph), and graphs without a sidecar; the paths removed."""
    where = folder(generation_dir, form)
    keep = {s.index_path.name for s in used if s.index_path.parent == where}
    gone = []
    if not where.is_dir():
        return gone
    for sidecar in sorted(where.glob("*.json")):
        if sidecar.with_suffix(".usearch").name not in keep:
            remove(sidecar)
            gone.append(sidecar)
    for graph in sorted(where.glob("*.usearch")):
        if graph.name not in keep:
            remove(graph)
            gone.append(graph)
    return gone


def remove_legacy(generation_dir: Path, form: Form) -> list[Path]:
    """Delete the oldest layout's index of `form` in a generation folder (sidecar first); the paths removed."""
    gone = []
    for path in reversed(legacy_paths(generation_dir, form)):
        if path.is_file():
            remove(path)
            gone.append(path)
    return gone

