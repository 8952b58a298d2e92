"""The fast PyTorch embedding engine: the `local` backend and the engine inside Modal GPU workers.

What it does: turning a list of texts into float32 vectors with torch, transformers
and tokenizers only (no custom kernels). It reads the model folder through
`wikiembed.model` (path, max length, pooling, normalization, tokenizer) and loads
the weights with `transformers.AutoModel`; it touches no other files, no
network, and no process-wide torch setting (its CPU workers set their own
thread count, see `_CpuWorkers`); tokenizing workers are processes of
`wikiembed.tokenizing`.

How it is fast:
- Tokenize once: `embed_ids` takes the token chunker's ids as they are, so on
  the local path no text is tokenized twice. `embed` tokenizes texts in worker
  processes (`wikiembed.tokenizing`) that return flat id arrays, so the main
  process does nothing but pack batches and launch kernels: no thread of ours
  takes the GIL from the launch loop.
- Sort texts by token count and pack them into token-budget batches (not a
  fixed count): short texts travel many to a batch, long ones few, and
  padding almost disappears. A batch of one length runs with no attention
  mask at all, which lets SDPA take its fastest kernel. Packing is numpy only
  (`wikiembed.backends.batching`).
- CUDA: bf16 with SDPA attention; pinned host memory and non-blocking copies;
  results stay on the GPU until the next window is queued behind them, so the
  GPU never waits for the host to copy vectors back.
- CPU: fp32, so the output matches sentence-transformers. Batches
  run in parallel on one single-threaded worker per core instead of one batch
  at a time split over all cores: no OpenMP fork/join around every operator,
  and small batches that stay in each core's cache.
- Optional `torch.compile` with dynamic shapes, warmed up once at start;
  padded lengths are then rounded up to a bucket so the compiled graph sees
  few, aligned shapes.

The output is what `SentenceTransformer(path).encode_document(texts)` returns
for the same model (cosine >= 0.999; on CPU equal to ~1e-7), and with the
query prompt what `encode_query` returns: every pooling mode, Dense layers,
Normalize and `truncate_dim` run as the model's module list says
(`wikiembed.backends.pooling`); a model with a part that cannot be reproduced
is refused when the engine is made (`ModelInfo.check_supported`). Inputs
longer than the model's max length are truncated to it, special tokens
included, exactly as sentence-transformers does; the empty string embeds as its
special tokens alone (`[CLS] [SEP]` for BERT), again as sentence-transformers does.

Decoder models (last-token pooling, EOS appended by their tokenizer) run
right-padded: sentence-transformers pads them on the left, but with rotary
positions and causal attention a real token sees the same neighbours at the
same relative positions either way, and the pooled last token is the last real one.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from wikiembed.backends.base import VectorKind
from wikiembed.backends.batching import _join, _Window, pack_batch, plan_batches, spread
from wikiembed.backends.pooling import Head
from wikiembed.errors import BackendError, InputError
from wikiembed.fast_tokenizer import choice
from wikiembed.model import DEFAULT_MODEL, load_tokenizer, model_info, prompt_length
from wikiembed.tokenizing import cores, encode_ids, encode_ids_part, run_parts, spec

# --- knobs -------------------------------------------------------------------

# Padded tokens per forward pass. On a GPU a small encoder's forward pass
# costs a few ms of Python and kernel launches whatever its size, so a batch
# must carry more GPU work than that to hide it: 64k tokens of a 12x384 encoder
# in bf16 is ~10 ms at the ~17M chars/s that shape reached on an H100 (eager bf16), with ~200 MB of activations
# (an estimate, not yet measured on a GPU). On CPU each worker is one core, and
# a small batch keeps a layer's activations near that core's cache: on the
# 2-core dev box 1k-3k tokens ran within 2% of each other, 4k 3% slower, and
# 16k (one plain thread) 30-40% slower than 1k.
MAX_BATCH_TOKENS = {"cuda": 65_536, "cpu": 2_048}

# Texts sorted and batched together. Batches are cut from one window's texts
# sorted by length, so a window must hold many texts of each length for the
# batches to be both large and uniform: on a GPU a 64k-token batch holds ~500
# Wikipedia chunks of one length band, and with ~36 bands of 10% (the padding
# cap) between 8 and 512 tokens, a window of 32k chunks fills them. On CPU the
# budget is 32x smaller, so a smaller window does.
WINDOW_TEXTS = {"cuda": 32_768, "cpu": 16_384}

# Texts per part sent to a tokenizing worker process: parts of ~0.5M characters
# keep every worker busy and make the first window ready soon after the call.
TOKENIZE_PART_TEXTS = 1_024

# Round padded lengths up to a multiple of this. Eager kernels take any length,
# so exact lengths (no padding, mostly no mask) are cheapest; a compiled graph
# should see few, aligned shapes.
LENGTH_BUCKET = {"eager": 1, "compiled": 16}

# Default compute dtype per device type: bf16 keeps fp32's range (no overflow
# in long sums) at tensor-core speed; CPU stays fp32 to match the reference.
DEFAULT_DTYPE = {"cuda": "bfloat16", "cpu": "float32"}

_DTYPES = {
    "float32": "float32", "fp32": "float32",
    "bfloat16": "bfloat16", "bf16": "bfloat16",
    "float16": "float16", "fp16": "float16", "half": "float16",
}  # fmt: skip


# --- the CPU workers ------------------------------------------------------


class _CpuWorkers:
    """Threads that each run whole batches on one core.

    torch's intra-op thread count is per thread once a thread has used torch:
    each worker touches torch, then sets its own count to 1. Setting it also
    writes the process default that threads starting later inherit, so the
    caller's value is put back once every worker is up.
    """

    def __init__(self, workers: int) -> None:
        import torch

        saved = torch.get_num_threads()
        ready = threading.Barrier(workers + 1)

        def single_threaded() -> None:
            torch.get_num_threads()  # first use: torch sets this thread up from the process default
            torch.set_num_threads(1)
            ready.wait(timeout=60)

        self.workers = workers
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="embed-cpu")
        for _ in range(workers):
            self.pool.submit(single_threaded)
        ready.wait(timeout=60)
        torch.set_num_threads(saved)

    def run(self, fn: Callable[[Any], None], items: Sequence[Any]) -> None:
        """fn(item) for every item, spread over the workers; re-raises the first failure."""
        for future in [self.pool.submit(fn, item) for item in items]:
            future.result()

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


def _out_of_memory_error(torch: Any) -> type[BaseException]:
    # torch.OutOfMemoryError is torch >= 2.5; torch.cuda's name is older.
    return getattr(torch, "OutOfMemoryError", None) or torch.cuda.OutOfMemoryError


# --- the engine ---------------------------------------------------------------


class TorchEngine:
    """Embed texts with a sentence-transformers model in plain PyTorch; implements `wikiembed.backends.base.Backend`.

    `embed_ids` embeds pre-tokenized text (the token chunker's ids) with no
    tokenizer at all. For `embed`, `tokenize_workers` worker processes tokenize
    ahead of the model (default: one per core on CUDA; none on CPU, where the
    model is ~99% of the work and the tokenizer runs in line). On CPU the engine
    runs one worker thread per torch thread (`torch.get_num_threads()` when the
    engine is made, so `OMP_NUM_THREADS` or `torch.set_num_threads` choose it);
    with `compile`, or with one torch thread, it runs one batch at a time.
    """

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        device: str | None = None,
        *,
        dtype: str | None = None,
        max_batch_tokens: int | None = None,
        compile: bool = False,
        tokenize_workers: int | None = None,
        trust_remote_code: bool = False,
    ) -> None:
        import torch
        from tokenizers import Tokenizer
        from transformers import AutoModel

        self._torch = torch
        info = model_info(model)
        if info.dim <= 0:
            raise InputError(f"model {model!r}: its config.json names no hidden_size; it is not an encoder we can run.")
        info.check_supported(trust_remote_code)
        self.model_id = info.model_id
        self.dim = info.dim
        self.max_tokens = info.max_tokens
        self.info = info

        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        try:
            kind = torch.device(self.device).type
        except RuntimeError as exc:
            raise InputError(f"device {self.device!r}: not a torch device; use 'cpu' or 'cuda'.") from exc
        self._on_cuda = kind == "cuda"
        if self._on_cuda and not torch.cuda.is_available():
            raise InputError(f"device {self.device!r}: torch sees no CUDA GPU here; use device 'cpu'.")
        name = (dtype or DEFAULT_DTYPE.get(kind, "float32")).lower()
        if name not in _DTYPES:
            raise InputError(f"dtype {dtype!r}: unknown; use one of float32, bfloat16, float16.")
        self.dtype = _DTYPES[name]
        self._dtype = getattr(torch, self.dtype)
        self.kind = VectorKind.of_model(info, "local", self.dtype)

        self.max_batch_tokens = int(max_batch_tokens or MAX_BATCH_TOKENS.get(kind, MAX_BATCH_TOKENS["cpu"]))
        if self.max_batch_tokens < 1:
            raise InputError(f"max_batch_tokens {max_batch_tokens!r}: must be a positive number of tokens.")
        self._bucket = LENGTH_BUCKET["compiled" if compile else "eager"]
        # A compiled graph is specialized on whether a mask is passed: always
        # passing one halves the graphs to compile.
        self._always_mask = compile
        self._window = WINDOW_TEXTS.get(kind, WINDOW_TEXTS["cpu"])
        self.tokenize_workers = (cores() if self._on_cuda else 0) if tokenize_workers is None else tokenize_workers
        if self.tokenize_workers < 0:
            raise InputError(f"tokenize_workers {tokenize_workers!r}: must be 0 (tokenize in line) or more.")

        # Our own tokenizer copy: the cached one in wikiembed.model is shared and
        # must keep truncation off. Truncating to max_tokens here counts the
        # special tokens, as sentence-transformers' tokenizer call does.
        self._tokenizer = Tokenizer.from_str(load_tokenizer(model).to_str())
        self._tokenizer.enable_truncation(max_length=self.max_tokens)
        self._tokenizer.no_padding()
        self._tokenizer_spec = spec(self._tokenizer)

        try:
            # The dtype is applied with .to() below rather than passed here:
            # transformers 4.x calls the argument torch_dtype, 5.x dtype.
            net = AutoModel.from_pretrained(info.path, attn_implementation="sdpa", trust_remote_code=trust_remote_code)
        except (OSError, ValueError) as exc:
            raise BackendError(
                f"model {model!r}: transformers could not load the weights in {info.path} "
                f"({type(exc).__name__}: {exc}); check the folder holds a complete model."
            ) from exc
        self._vocab_size = int(net.config.vocab_size)
        self._model = net.to(device=self.device, dtype=self._dtype).eval()
        # Padded positions are masked out, but some models (RoBERTa) derive
        # position ids from the pad id, so pad with the model's own.
        self._pad_id = int(getattr(net.config, "pad_token_id", None) or 0)
        self._head = Head(info, self.device)
        self._prompt_tokens: dict[str, int] = {}
        self._forward: Callable[..., Any] = self._model
        workers = torch.get_num_threads()
        self._cpu_workers = _CpuWorkers(workers) if kind == "cpu" and workers > 1 and not compile else None
        if compile:
            # dynamic=True compiles one graph for every (rows, length) shape, so
            # the warm-up is the only compile a run pays.
            self._forward = torch.compile(self._model, dynamic=True)
            self._warm_up()

    # -- public API --

    def embed(self, texts: Sequence[str], prompt: str = "") -> np.ndarray:
        """float32 vectors `[len(texts), dim]` in input order (L2-normalized iff the model normalizes).

        `prompt` is put before every text, as sentence-transformers' `encode(..., prompt=...)` does
        (the model's document prompt for documents, its query prompt for queries)."""
        self._check_open()
        texts = list(texts)
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise InputError(f"text {i} is a {type(text).__name__}, not a str; embed only takes strings.")
        if prompt:
            texts = [prompt + text for text in texts]
        return self._embed_windows(self._text_windows(texts), len(texts), self._excluded(prompt))

    def embed_ids(self, ids: np.ndarray, offsets: np.ndarray, prompt: str = "") -> np.ndarray:
        """float32 vectors of pre-tokenized texts: text i's token ids, special tokens included, are
        `ids[offsets[i]:offsets[i + 1]]` (what this model's tokenizer gives, as the token chunker stores).
        `prompt`: the prompt the ids already begin with (the token chunker puts it there); the engine
        needs its text only where pooling leaves the prompt out."""
        self._check_open()
        ids = np.asarray(ids)
        offsets = np.asarray(offsets, dtype=np.int64)
        if ids.ndim != 1 or offsets.ndim != 1 or len(offsets) < 1 or not np.issubdtype(ids.dtype, np.integer):
            raise InputError("embed_ids takes a flat integer array of ids and offsets of length texts + 1.")
        lengths = np.diff(offsets)
        if offsets[0] < 0 or offsets[-1] > len(ids) or (lengths < 0).any():
            raise InputError(f"embed_ids: offsets must rise from >= 0 to at most len(ids) ({len(ids)}).")
        if len(lengths) and lengths.max() > self.max_tokens:
            raise InputError(
                f"embed_ids: a text has {int(lengths.max())} tokens, over the model's {self.max_tokens}; "
                "chunk with --chunker tokens and a --chunk-size within the model's limit."
            )
        used = ids[offsets[0] : offsets[-1]]
        if used.size and (used.min() < 0 or used.max() >= self._vocab_size):
            raise InputError(
                f"embed_ids: token ids outside the model's vocabulary (0..{self._vocab_size - 1}); "
                "the ids must come from this model's tokenizer (rechunk the store with it)."
            )
        windows = (
            _Window(start, min(self._window, len(lengths) - start), ids, offsets[start : start + self._window + 1])
            for start in range(0, len(lengths), self._window)
        )
        return self._embed_windows(windows, len(lengths), self._excluded(prompt))

    def close(self) -> None:
        """Release the worker threads and the model (and its GPU memory). Safe to call twice."""
        if self._cpu_workers is not None:
            self._cpu_workers.close()
            self._cpu_workers = None
        self._model = self._forward = None  # type: ignore[assignment]
        if self._on_cuda:
            self._torch.cuda.empty_cache()

    def __enter__(self) -> TorchEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the pipeline: token ids in windows -> batches -> vectors --

    def _excluded(self, prompt: str) -> int:
        """Tokens at the start of every text that pooling leaves out (the prompt's, where the model says so)."""
        if not prompt or self.info.include_prompt:
            return 0
        if prompt not in self._prompt_tokens:
            self._prompt_tokens[prompt] = prompt_length(self._tokenizer, prompt)
        return self._prompt_tokens[prompt]

    def _check_open(self) -> None:
        if self._model is None:
            raise BackendError("this engine was closed; create a new TorchEngine to embed again.")

    def _text_windows(self, texts: list[str]) -> Iterator[_Window]:
        """The texts tokenized, window by window: in worker processes ahead of the model, or in line."""
        if self.tokenize_workers < 1:
            for start in range(0, len(texts), self._window):
                ids, offsets = encode_ids(self._tokenizer, texts[start : start + self._window])
                yield _Window(start, len(offsets) - 1, ids, offsets)
            return
        which = choice()
        parts = [(self._tokenizer_spec, which, texts[a : a + TOKENIZE_PART_TEXTS]) for a in range(0, len(texts), TOKENIZE_PART_TEXTS)]
        gathered: list[tuple[np.ndarray, np.ndarray]] = []
        start = size = 0
        for ids, offsets in run_parts(encode_ids_part, parts, self.tokenize_workers):
            gathered.append((ids, offsets))
            size += len(offsets) - 1
            if size >= self._window:
                yield _join(start, gathered)
                start, size, gathered = start + size, 0, []
        if gathered:
            yield _join(start, gathered)

    def _embed_windows(self, windows: Iterator[_Window], n: int, prompt_tokens: int = 0) -> np.ndarray:
        out = np.empty((n, self.dim), dtype=np.float32)
        if self._cpu_workers is not None:
            for window in windows:
                out[window.start : window.start + window.size] = self._run_window_on_workers(window, prompt_tokens)
            return out
        # One batch at a time on the device (a GPU, or a CPU without workers). A
        # window's vectors are copied back only once the next window's batches
        # are queued behind them, so the device never waits for the host.
        previous: tuple[_Window, Any] | None = None
        for window in windows:
            queued = (window, self._launch_window(window, prompt_tokens))
            if previous is not None:
                out[previous[0].start : previous[0].start + previous[0].size] = previous[1].cpu().numpy()
            previous = queued
        if previous is not None:
            out[previous[0].start : previous[0].start + previous[0].size] = previous[1].cpu().numpy()
        return out

    def _batches(self, window: _Window, parts: int = 1) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray | None]]:
        """(rows, padded ids, mask or None) of each batch of a window, longest texts first; at least
        `parts` batches where the window has that many texts."""
        lengths = np.diff(window.offsets)
        for batch in spread(plan_batches(lengths, self.max_batch_tokens, self._bucket, self.max_tokens), lengths, parts, self._bucket):
            ids, mask = pack_batch(window.ids, window.offsets, batch.rows, batch.length, self._pad_id, self._always_mask)
            yield batch.rows, ids, mask

    def _launch_window(self, window: _Window, prompt_tokens: int = 0) -> Any:
        """Queue every batch of a window on the device; returns the (device) tensor its vectors land in."""
        torch = self._torch
        vectors = torch.empty((window.size, self.dim), dtype=torch.float32, device=self.device)
        with torch.inference_mode():
            for rows, ids, mask in self._batches(window):
                tensors = [torch.from_numpy(rows), torch.from_numpy(ids)] + ([] if mask is None else [torch.from_numpy(mask)])
                if self._on_cuda:
                    tensors = [t.pin_memory().to(self.device, non_blocking=True) for t in tensors]
                rows_t, ids_t, *mask_t = tensors
                vectors[rows_t] = self._pool_batch(ids_t, mask_t[0] if mask_t else None, prompt_tokens)
        return vectors

    def _run_window_on_workers(self, window: _Window, prompt_tokens: int = 0) -> np.ndarray:
        """Embed one window on the CPU worker threads, a whole batch per worker; vectors in window order."""
        torch = self._torch
        out = np.empty((window.size, self.dim), dtype=np.float32)

        def run(batch: tuple[np.ndarray, np.ndarray, np.ndarray | None]) -> None:
            rows, ids, mask = batch
            with torch.inference_mode():  # thread-local: entered in the worker that computes
                out[rows] = self._pool_batch(torch.from_numpy(ids), None if mask is None else torch.from_numpy(mask), prompt_tokens).numpy()

        assert self._cpu_workers is not None
        self._cpu_workers.run(run, list(self._batches(window, self._cpu_workers.workers)))
        return out

    def _pool_batch(self, ids: Any, mask: Any, prompt_tokens: int = 0) -> Any:
        """One forward pass, then the model's pooling, Dense layers, normalization and truncation."""
        torch = self._torch
        try:
            hidden = self._forward(input_ids=ids, attention_mask=mask).last_hidden_state
        except _out_of_memory_error(torch) as exc:
            raise BackendError(
                f"out of memory on {self.device} for a batch of {ids.shape[0]} x {ids.shape[1]} tokens; "
                f"pass a smaller max_batch_tokens (now {self.max_batch_tokens})."
            ) from exc
        return self._head(hidden, mask, prompt_tokens)

    def _warm_up(self) -> None:
        """Pay torch.compile's cost at start so no call to embed() compiles.

        The inputs go through the real pipeline, so the compiled graphs' guards
        (dtypes, devices, tensor flags) match what embed() passes later.
        Dynamic shapes still specialize a size of 1: a lone text (a batch of
        one row) gets its own graph, warmed up here too.
        """
        self.embed(["warm up the compiled graph"] * 3)
        self.embed(["warm up"])
        if self._on_cuda:
            self._torch.cuda.synchronize()
