"""Tokenizing on every core: one pool of worker processes, shared by the chunker and the engine.

The Rust tokenizer itself is fast and parallel, but what Python then does with
its output (token lists, offsets, packing) runs under the GIL: on a 16-core
box a single process spends most of its time there while 15 cores wait, and a
GPU launch loop in the same process takes turns with it. So the tokenizing
work is cut into parts and sent to one single-threaded worker process per
core; each returns flat numpy arrays (no per-token Python objects cross the
process boundary).

What it may touch: it starts worker processes on first use (a
`wikiembed.worker_pool.WorkerPool`: spawned, leaving when orphaned), and nothing else. If the pool cannot run (a worker died, or the calling
script re-runs its own top level in a child because it lacks an
`if __name__ == "__main__":` guard), the work is done in this process instead,
with a warning.
"""

from __future__ import annotations

import hashlib
import warnings
from concurrent.futures import Future
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from wikiembed.fast_tokenizer import TokenizerChoice, fast_wordpiece
from wikiembed.worker_pool import WorkerPool, cores

# Parts in flight per worker: enough that no worker waits for its next part,
# few enough that results do not pile up in memory ahead of their consumer.
IN_FLIGHT_PER_WORKER = 4

_POOL = WorkerPool()  # one worker per core
_TOKENIZERS: dict[str, Any] = {}  # per process (the parent and each worker): spec hash -> Tokenizer


def spec(tokenizer: Any) -> str:
    """The tokenizer as the JSON a worker rebuilds it from (truncation and padding settings included)."""
    return tokenizer.to_str()


def tokenizer_from_spec(tokenizer_spec: str) -> Any:
    """The tokenizer for `tokenizer_spec`, parsed once per process."""
    key = hashlib.blake2b(tokenizer_spec.encode(), digest_size=16).hexdigest()
    found = _TOKENIZERS.get(key)
    if found is None:
        from tokenizers import Tokenizer

        found = _TOKENIZERS[key] = Tokenizer.from_str(tokenizer_spec)
    return found


def encode_ids(tokenizer: Any, texts: Sequence[str], which: TokenizerChoice | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Token ids of each text (special tokens added, the tokenizer's truncation applied), flat.

    Returns `(ids, offsets)`: int32 ids of all texts concatenated, and int64
    offsets of length `len(texts) + 1` (text i is `ids[offsets[i]:offsets[i + 1]]`).
    Where the fast path applies (`wikiembed.fast_tokenizer`; `which` as there), the same ids from it.
    """
    fast = fast_wordpiece(tokenizer, which)
    truncation = tokenizer.truncation
    if (
        fast is not None
        and fast.wraps
        and tokenizer.padding is None
        and (truncation is None or (truncation["direction"] == "right" and truncation["stride"] == 0))
    ):
        return fast.encode_ids(texts, None if truncation is None else truncation["max_length"])
    encodings = tokenizer.encode_batch(list(texts), add_special_tokens=True)
    offsets = np.zeros(len(encodings) + 1, dtype=np.int64)
    np.cumsum(np.fromiter(map(len, encodings), dtype=np.int64, count=len(encodings)), out=offsets[1:])
    ids = np.empty(int(offsets[-1]), dtype=np.int32)
    for enc, start, end in zip(encodings, offsets[:-1].tolist(), offsets[1:].tolist()):
        ids[start:end] = enc.ids
    return ids, offsets


def encode_ids_part(tokenizer_spec: str, which: TokenizerChoice, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Worker body of `encode_ids` (the tokenizer travels as its spec, the caller's choice with it)."""
    return encode_ids(tokenizer_from_spec(tokenizer_spec), texts, which)


def run_parts(fn: Callable[..., Any], parts: Sequence[tuple], workers: int | None = None) -> Iterator[Any]:
    """`fn(*part)` for each part, on the worker processes, yielded in order.

    At most `IN_FLIGHT_PER_WORKER` parts per worker are submitted ahead of the
    one being yielded. `workers` < 2 runs every part here, in this process.
    """
    workers = cores() if workers is None else workers
    if workers < 2:
        for part in parts:
            yield fn(*part)
        return
    pool = _POOL.get(cores())
    pending: list[Future] = []
    submitted = 0
    try:
        for done in range(len(parts)):
            while submitted < len(parts) and submitted - done < IN_FLIGHT_PER_WORKER * workers:
                pending.append(pool.submit(fn, *parts[submitted]))
                submitted += 1
            yield pending.pop(0).result()
    except BrokenProcessPool as exc:
        _POOL.drop(pool)
        warnings.warn(
            f"tokenizing worker processes failed ({exc}); tokenizing in this process instead. If this is a script, "
            "put its top level under `if __name__ == \"__main__\":` so worker processes can start.",
            stacklevel=2,
        )
        for part in parts[done:]:
            yield fn(*part)
    finally:
        for future in pending:
            future.cancel()
