"""What follows the transformer: sentence-transformers' Pooling, Dense and Normalize modules and
`truncate_dim`, in plain torch, for the engine's right-padded batches.

Each step follows sentence-transformers' own module (`Pooling._forward_padded`, `Dense`,
`Normalize`, `truncate_embeddings`), so the engine's vectors are what `encode_document` makes:
- pooling modes `cls`, `max`, `mean`, `mean_sqrt_len_tokens`, `weightedmean`, `lasttoken` (one
  function each, in `POOLING`), several concatenated in the order the config lists them;
- `include_prompt=False`: the prompt's first tokens (special tokens before it included) are
  left out of the pooling, and weighted-mean weights keep the positions they had;
- Dense layers after pooling, each `activation(linear(x))`; then L2 normalization; then the
  vector cut to `truncate_dim` (after normalization, as sentence-transformers cuts it).

Batches are right-padded (the engine packs them so): a row's real tokens are its first
`mask.sum()` positions; `mask` is None for a batch whose rows all have the batch's length.
Sums run in float32 whatever the model dtype, as sentence-transformers accumulates them.

Touches: the Dense modules' weight files (read once, when the head is made).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from wikiembed.errors import InputError
from wikiembed.model import ModelInfo


class Head:
    """Pooling + Dense + Normalize + truncation of one model, on one device."""

    def __init__(self, info: ModelInfo, device: str) -> None:
        import torch

        self._torch = torch
        self.modes = info.pooling_modes
        self.include_prompt = info.include_prompt
        self.normalize = info.normalize
        self.truncate_dim = info.truncate_dim
        self.dense = [_load_dense(layer.path, layer.in_features, layer.out_features, layer.bias, layer.activation, device) for layer in info.dense]

    def __call__(self, hidden: Any, mask: Any, prompt_tokens: int = 0) -> Any:
        """float32 vectors `[rows, dim]` from the last hidden states `[rows, length, hidden]`."""
        torch = self._torch
        rows, length, _ = hidden.shape
        real = mask if mask is not None else None
        # The positions pooling sees: real tokens, less the prompt's when it is excluded.
        seen = real
        if prompt_tokens and not self.include_prompt:
            seen = torch.ones((rows, length), dtype=torch.int64, device=hidden.device) if real is None else real.clone()
            seen[:, :prompt_tokens] = 0
        parts = [self._pool(mode, hidden, real, seen) for mode in self.modes]
        pooled = parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)
        pooled = pooled.float()
        for layer in self.dense:
            pooled = layer(pooled)
        if self.normalize:
            pooled = torch.nn.functional.normalize(pooled, p=2.0, dim=-1)
        if self.truncate_dim is not None:
            pooled = pooled[:, : self.truncate_dim]
        return pooled

    def _pool(self, mode: str, hidden: Any, real: Any, seen: Any) -> Any:
        pool = POOLING.get(mode)
        if pool is None:
            raise InputError(f"pooling mode {mode!r} is not one the engine runs")  # model_info refuses it first
        return pool(self._torch, hidden, real, seen)


# ---- the pooling modes ------------------------------------------------------------
# Each takes (torch, hidden `[rows, length, width]`, real, seen) and returns `[rows, width]`: `real` marks
# the real tokens and `seen` the ones pooling sees (the prompt's left out where `include_prompt` is
# False); either is None where every position counts (`seen is real` where nothing is left out).

Pool = Callable[[Any, Any, Any, Any], Any]
POOLING: dict[str, Pool] = {}


def pooling_mode(name: str) -> Callable[[Pool], Pool]:
    """Make `name` (as a Pooling module's config names it) run the decorated function. A new mode is its
    function here and its name in `wikiembed.model.POOLING_MODES`, which the model reader accepts."""

    def add(pool: Pool) -> Pool:
        POOLING[name] = pool
        return pool

    return add


@pooling_mode("cls")
def _cls(torch: Any, hidden: Any, real: Any, seen: Any) -> Any:
    if seen is None or seen is real:
        return hidden[:, 0]
    # The first position pooling sees: the first token after an excluded prompt.
    first = seen.to(torch.int32).argmax(dim=1)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), first]


@pooling_mode("lasttoken")
def _last_token(torch: Any, hidden: Any, real: Any, seen: Any) -> Any:
    rows, length, _ = hidden.shape
    if seen is None:
        return hidden[:, -1]
    # The last position pooling sees; a row that sees none falls back to the last position.
    flipped = seen.flip(1)
    values, index = flipped.max(dim=1)
    last = torch.where(values == 0, torch.full_like(index, length - 1), length - 1 - index)
    return hidden[torch.arange(rows, device=hidden.device), last] * values.to(hidden.dtype).unsqueeze(-1)


@pooling_mode("max")
def _max(torch: Any, hidden: Any, real: Any, seen: Any) -> Any:
    if seen is None:
        return hidden.max(dim=1).values
    return hidden.masked_fill(seen.unsqueeze(-1) == 0, float("-inf")).max(dim=1).values


def _mean_parts(torch: Any, hidden: Any, seen: Any) -> tuple[Any, Any]:
    """(sum of the seen positions' states in float32, their count)."""
    rows, length, _ = hidden.shape
    if seen is None:
        return hidden.sum(dim=1, dtype=torch.float32), torch.full((rows, 1), float(length), device=hidden.device)
    weights = seen.to(torch.float32)
    return torch.bmm(weights.unsqueeze(1), hidden.float()).squeeze(1), weights.sum(dim=1, keepdim=True).clamp(min=1e-9)


@pooling_mode("mean")
def _mean(torch: Any, hidden: Any, real: Any, seen: Any) -> Any:
    total, count = _mean_parts(torch, hidden, seen)
    return total / count


@pooling_mode("mean_sqrt_len_tokens")
def _mean_sqrt_len(torch: Any, hidden: Any, real: Any, seen: Any) -> Any:
    total, count = _mean_parts(torch, hidden, seen)
    return total / count.sqrt()


@pooling_mode("weightedmean")
def _weighted_mean(torch: Any, hidden: Any, real: Any, seen: Any) -> Any:
    rows, length, _ = hidden.shape
    # Weights 1, 2, ... by position from the first real token (right padding: position 0).
    weights = torch.arange(1, length + 1, device=hidden.device, dtype=torch.float32).expand(rows, length)
    if seen is not None:
        weights = weights * seen.to(torch.float32)
    total = torch.bmm(weights.unsqueeze(1), hidden.float()).squeeze(1)
    return total / weights.sum(dim=1, keepdim=True).clamp(min=1e-9)


def _load_dense(folder: str, in_features: int, out_features: int, bias: bool, activation: str, device: str) -> Any:
    """A Dense module as `torch.nn.Sequential(Linear, activation)` in float32, from its own weights."""
    import torch

    path = Path(folder)
    if (path / "model.safetensors").exists():
        from safetensors.torch import load_file

        state = load_file(str(path / "model.safetensors"))
    else:
        state = torch.load(path / "pytorch_model.bin", map_location="cpu", weights_only=True)
    linear = torch.nn.Linear(in_features, out_features, bias=bias)
    try:
        linear.load_state_dict({k.removeprefix("linear."): v for k, v in state.items()})
    except RuntimeError as exc:
        raise InputError(f"Dense module in {folder}: its weights do not fit {in_features}->{out_features} ({exc}).") from exc
    layer = torch.nn.Sequential(linear, getattr(torch.nn, activation)())
    return layer.to(device=device, dtype=torch.float32).eval()
