"""The content keys of a data file's chunks, kept beside it so that reuse never reads old texts.

A chunk's vector depends only on its text (for one model and chunking), so a later source version
finds the vectors it can take by the text's content key (`key`: a 16-byte blake2b digest). Each data
file's keys, one per row in row order, are written with the file, before its marker:

    gens/<G>/keys/NNNNN.npz    keys (S16, one per row of gens/<G>/data/NNNNN.parquet) and the
                               sha256 of the data file they were made from

16 bytes a chunk, where making them from a data file reads and hashes every chunk's text. A key
file whose sha256 is not the data file's (as its marker, or the manifest's `base`, records it), or
whose length is not the file's row count, is not used: the keys are then made from the file's text
column (and written again by `ensure`).

Touches: the `keys/` folder of a generation (written by `write`, read by `read`).
"""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path
from typing import Sequence

import numpy as np
import pyarrow.parquet as pq

from wikiembed.atomic import atomic_path

KEYS_DIR = "keys"


def key(text: str) -> bytes:
    """Content key of a chunk's text: vectors are reusable between runs iff model+chunking+text match."""
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()


def keys(texts: Sequence[str]) -> np.ndarray:
    """The content keys of `texts`, as an S16 array."""
    return np.array([key(t) for t in texts], dtype="S16") if len(texts) else np.zeros(0, dtype="S16")


def path_for(data_file: Path) -> Path:
    """Where the keys of `gens/<G>/data/NNNNN.parquet` are: `gens/<G>/keys/NNNNN.npz`."""
    return data_file.parent.parent / KEYS_DIR / f"{data_file.stem}.npz"


def write(data_file: Path, row_keys: np.ndarray, sha256: str) -> None:
    """Keep the keys of `data_file`'s rows beside it (atomically), with the sha256 of the file."""
    with atomic_path(path_for(data_file)) as tmp:
        with tmp.open("wb") as fh:
            np.savez(fh, keys=np.ascontiguousarray(row_keys, dtype="S16"), sha256=np.asarray(sha256))


def read(data_file: Path, sha256: str, rows: int) -> np.ndarray | None:
    """The kept keys of `data_file`'s rows, or None where there are none for exactly this file
    (missing, unreadable, made from other bytes, or of another length)."""
    try:
        with np.load(path_for(data_file)) as saved:
            if str(saved["sha256"]) != sha256:
                return None
            found = saved["keys"]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None
    if found.dtype != np.dtype("S16") or len(found) != rows:
        return None
    return found


def from_text(data_file: Path) -> np.ndarray:
    """The keys of `data_file`'s rows, made from its text column (a file without valid kept keys)."""
    texts = pq.read_table(data_file, columns=["text"]).column("text").to_pylist()
    return keys(texts)


def ensure(data_file: Path, sha256: str, rows: int) -> bool:
    """Make sure `data_file` has valid kept keys, writing them from its text where it has none; True
    where they had to be made."""
    if read(data_file, sha256, rows) is not None:
        return False
    write(data_file, from_text(data_file), sha256)
    return True
