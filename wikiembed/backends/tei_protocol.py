"""What a TEI server says, read: its answers' vectors, its errors and refusals, and whether its pooling is the model's.

The pieces of the `tei` backend (`wikiembed.backends.tei`) that depend only on one answer or one
server's /info, apart from the client that sends the requests.

Touches: nothing (the model's own files are read through `wikiembed.model.model_info`).
"""

from __future__ import annotations

import binascii
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np
import orjson

from wikiembed.errors import BackendError, InputError
from wikiembed.model import ModelInfo, model_info


# ---------------------------------------------------------------------------
# Decoding: the hot path of the client (see bench/tei_client.py)
# ---------------------------------------------------------------------------


def decode_v1_embeddings(content: bytes, n: int) -> np.ndarray:
    """Vectors from a `/v1/embeddings` answer, base64 (little-endian float32) or floats, in index order."""
    data = orjson.loads(content)["data"]
    if len(data) != n:
        raise BackendError(f"TEI returned {len(data)} embeddings for {n} inputs; is a proxy truncating answers?")
    if any(item["index"] != i for i, item in enumerate(data)):
        data = sorted(data, key=lambda item: item["index"])
    first = data[0]["embedding"]
    if isinstance(first, str):
        if first.endswith("="):  # padded (dim * 4 not a multiple of 3): decode vector by vector
            raw = b"".join([binascii.a2b_base64(item["embedding"]) for item in data])
        else:  # unpadded base64 concatenates cleanly: one decode call for the whole answer
            raw = binascii.a2b_base64("".join([item["embedding"] for item in data]))
        return np.frombuffer(raw, dtype="<f4").reshape(n, -1)
    return np.array([item["embedding"] for item in data], dtype=np.float32)


def decode_embed(content: bytes, n: int) -> np.ndarray:
    """Vectors from an `/embed` answer (a JSON list of float lists)."""
    arr = np.array(orjson.loads(content), dtype=np.float32)
    if arr.ndim != 2 or arr.shape[0] != n:
        raise BackendError(f"TEI /embed returned an array of shape {arr.shape} for {n} inputs.")
    return arr


# ---------------------------------------------------------------------------
# Outcomes of one request
# ---------------------------------------------------------------------------


class _Retry(Exception):
    """Transient: try again after a backoff."""

    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.retry_after = retry_after


class _TooBig(Exception):
    """413 for the request as a whole (payload limit, batch size): a smaller batch will pass."""


class _TooLong(Exception):
    """An input has more tokens than the server's max_input_length."""


class _NoRoute(Exception):
    """The server has no /v1/embeddings (404/405): fall back to /embed."""


@dataclass
class _Server:
    url: str
    info: dict[str, Any]
    route: str  # "/v1/embeddings" (base64) or "/embed" (floats)
    in_flight: int = 1


def _error_text(resp: httpx.Response) -> tuple[str, str]:
    """(message, error_type) from a TEI error body: {"error","error_type"}, {"message","type"} or text."""
    try:
        body = orjson.loads(resp.content)
    except orjson.JSONDecodeError:
        return resp.text.strip()[:500] or resp.reason_phrase, ""
    if isinstance(body, dict):
        message = body.get("error") or body.get("message") or str(body)
        return str(message)[:500], str(body.get("error_type") or body.get("type") or "")
    return str(body)[:500], ""


def _retry_after(resp: httpx.Response) -> float | None:
    try:
        return float(resp.headers["retry-after"])
    except (KeyError, ValueError):
        return None


# TEI's names for the pooling modes it runs (`--pooling`), as sentence-transformers names them.
TEI_POOLING = {"cls": "cls", "mean": "mean", "last_token": "lasttoken", "lasttoken": "lasttoken", "splade": "splade"}


def _local_model_info(model_id: str) -> ModelInfo | None:
    """The model's own files where they can be read here (a folder, the bundled default, the Hub cache),
    so the server's pooling can be checked against the model's; None where they cannot."""
    try:
        return model_info(model_id)
    except InputError:
        return None


def _check_served_shape(url: str, pooling: str, model: ModelInfo) -> None:
    """Refuse a server whose vectors would not be the model's: another pooling, or a prompt
    that pooling must leave out (TEI pools over the whole input)."""
    if pooling != model.pooling:
        tei_name = {v: k for k, v in TEI_POOLING.items()}.get(model.pooling)
        fix = (
            f"restart the router with --pooling {tei_name}" if tei_name
            else "TEI has no such pooling: use --backend local (the engine runs every sentence-transformers pooling mode)"
        )
        raise BackendError(
            f"TEI at {url} pools with {pooling!r} but model {model.model_id!r} pools with {model.pooling!r} "
            f"(its Pooling module); the vectors would differ from sentence-transformers': {fix}."
        )
    if not model.include_prompt:
        raise BackendError(
            f"model {model.model_id!r} leaves its prompt out of pooling (include_prompt=false), which TEI "
            "does not do; use --backend local for this model."
        )
