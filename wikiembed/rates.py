"""The throughputs and prices `wikiembed estimate` turns counts into hours and dollars with, and how one is picked.

- Recorded: `wikiembed/data/rates.toml` (each rate measured by us with its command and date, or
  published by others with its source) and `wikiembed/data/prices.toml` (each price with its date
  and source). Nothing is extrapolated from one GPU to another: `pick_rate` finds a backend/GPU's
  own rate or none.
- Measured where a run runs: a store's done shards (`store_rate`: their markers record the
  characters they embedded and the seconds it took), or a few seconds of the run's own local engine
  on its sampled chunks (`calibrated_rate`). `rate_source` says, in words, which kind a rate is.

A rate is a `Rate` and a price a `Price` (frozen records, `wikiembed.results.JsonRecord`): a row of the
data file is `from_json(row)`, and `to_json()` gives the row back as the file holds it.

Touches: the two data files; `calibrated_rate` embeds with the engine it is given.
"""

from __future__ import annotations

import math
import random
import time
import tomllib
from dataclasses import dataclass
from datetime import date
from importlib import resources
from typing import TYPE_CHECKING, Any, Iterable, Sequence

from wikiembed import executors
from wikiembed.results import JsonRecord, optional

if TYPE_CHECKING:
    from wikiembed.backends.base import Backend
    from wikiembed.records import Marker

# The hardware a rate or price may be recorded for (`--gpu`).
GPUS = ("CPU", "T4", "A10G", "L4", "L40S", "A100", "A100-40GB", "A100-80GB", "H100", "H200", "B200")
# List prices move (new cards, cuts); an estimate says when the price it used is older than this.
STALE_PRICE_DAYS = 90
# A fresh local run times its own engine on its own sampled chunks for about this long before its
# shards start: a rate measured on another machine was off by 2x on a CPU of the same core count.
CALIBRATION_SECONDS = 2.5
# ...but never on more than this share of the characters the run will embed (a tiny run's estimate
# is not worth its own cost), and on at least one call of CALIBRATION_FIRST chunks.
CALIBRATION_SHARE = 0.05
CALIBRATION_FIRST = 8


@dataclass(frozen=True, kw_only=True)
class Rate(JsonRecord):
    """A throughput: characters of chunk text per second per container, of one backend on one hardware with one
    model. Recorded ones (a row of rates.toml) say how to measure them again (`command`, `results`) or who published
    them (`source`); measured ones say what measured them (`shards` or `chunks` and `seconds`, and `how`)."""

    kind: str  # measured | published (rates.toml) | store-measured (`store_rate`) | calibrated (`calibrated_rate`)
    backend: str
    hardware: str
    detail: str | None = optional()  # the hardware and software in words
    model: str
    chars_per_s: float
    tokens_per_s: float | None = optional()
    date: str
    command: str | None = optional()
    results: str | None = optional()
    source: str | None = optional()
    shards: int | None = optional()  # store-measured: the done shards it counts
    chunks: int | None = optional()  # calibrated: the chunks timed
    seconds: float | None = optional()  # and the seconds they took
    how: str | None = optional()

    @property
    def measured_on(self) -> str:
        """The hardware as the rate names it: its detail where it has one."""
        return self.hardware if self.detail is None else self.detail

    @property
    def provenance(self) -> str | None:
        """How to measure it again, who published it, or what measured it."""
        return self.command or self.source or self.how


@dataclass(frozen=True, kw_only=True)
class Price(JsonRecord):
    """A list price of one GPU at one provider (a row of prices.toml), with the date it was read and where."""

    provider: str
    hardware: str
    aliases: tuple[str, ...] | None = optional()  # other names the provider takes for the same card and price
    usd_per_hour: float
    as_of: str
    source: str

    @property
    def names(self) -> set[str]:
        """The card's names, upper-cased: its own and its aliases."""
        return {n.upper() for n in (self.hardware, *(self.aliases or ()))}


def executor_facts(backend: str) -> Any:
    """The executor class `--backend backend` runs, whose attributes say how to price it (which price list
    applies, whether a store's markers give its rate, whether it starts containers): `executors.base.Executor`
    for a name no executor here has (its defaults: no list price, no store rate)."""
    try:
        return executors.executor_class(backend)
    except KeyError:
        from wikiembed.executors.base import Executor

        return Executor


def _data_file(name: str) -> list[dict[str, Any]]:
    text = resources.files("wikiembed").joinpath("data", name).read_text(encoding="utf-8")
    data = tomllib.loads(text)
    return data.get("rate") or data.get("price") or []


def rates() -> list[Rate]:
    """The throughput records (wikiembed/data/rates.toml)."""
    return [Rate.from_json(row) for row in _data_file("rates.toml")]


def prices() -> list[Price]:
    """The price records (wikiembed/data/prices.toml)."""
    return [Price.from_json(row) for row in _data_file("prices.toml")]


def sig(x: float, digits: int = 4) -> float:
    """Rounded to significant digits: small corpora still show their (small) figures."""
    return float(f"{x:.{digits}g}")


def pick_rate(backend: str, gpu: str) -> Rate | None:
    """The recorded rate of a backend on a GPU: our own measurement first, then the newest."""
    found = [r for r in rates() if r.backend == backend and r.hardware.upper() == gpu.upper()]
    found.sort(key=lambda r: (r.kind != "measured", str(r.date)), reverse=False)
    return found[0] if found else None


def store_rate(markers: Iterable[Marker], backend: str, hardware: str, model: str) -> Rate | None:
    """The rate a store's done shards measured (None: none of them embedded anything with `backend` and
    `model`, or `backend` runs its shards in many places at once).

    A marker records the characters its shard embedded and the seconds it took, ending at its data
    file's mtime; shards in flight at once share the machine, so the rate is their characters over
    the time any of them was running (the union of their intervals), not over the sum of their seconds."""
    if not executor_facts(backend).rate_from_store:
        return None
    used = [m for m in markers if m.embedded_chars > 0 and m.seconds > 0 and m.vectors is not None
            and m.vectors.backend == backend and m.model == model]
    if not used:
        return None
    if any(m.mtime_ns is None for m in used):  # no end times: the shards' own seconds, as if one at a time
        busy = sum(m.seconds for m in used)
    else:
        busy, reach = 0.0, -math.inf
        for start, end in sorted((m.mtime_ns / 1e9 - m.seconds, m.mtime_ns / 1e9) for m in used):
            busy += max(0.0, end - max(start, reach))
            reach = max(reach, end)
    chars = sum(m.embedded_chars for m in used)
    return Rate(kind="store-measured", backend=backend, hardware=hardware, model=model,
                chars_per_s=sig(chars / busy), date=date.today().isoformat(), shards=len(used),
                how=f"{len(used)} done shards of this store: {chars:,} characters in {busy:,.1f} s of embedding")


def calibrated_rate(engine: Backend, texts: Sequence[str], prompt: str, hardware: str, *, budget_chars: float,
                    seconds: float = CALIBRATION_SECONDS, seed: int = 0) -> Rate | None:
    """The rate of `engine` on these chunk texts (a run's own sample), timed for about `seconds`.

    Calls grow to fill the time left at the rate seen so far; the first call, which pays the
    engine's warm-up, is left out of the rate when others follow. Stops at `budget_chars`
    characters, or when the texts run out. None: no texts."""
    order = list(texts)
    random.Random(seed).shuffle(order)  # the sample's mix of short and long chunks in every call
    if not order:
        return None
    timed: list[tuple[int, int, float]] = []  # (chunks, chars, seconds) of each call
    done, spent, size = 0, 0.0, CALIBRATION_FIRST
    while done < len(order):
        part = order[done : done + size]
        started = time.perf_counter()
        engine.embed(part, prompt)
        took = time.perf_counter() - started
        timed.append((len(part), sum(len(t) for t in part), took))
        done, spent = done + len(part), spent + took
        chars_done = sum(c for _, c, _ in timed)
        if spent >= seconds or chars_done >= budget_chars:
            break
        per_chunk = sum(s for _, _, s in timed[1:] or timed) / sum(n for n, _, _ in timed[1:] or timed)
        size = max(CALIBRATION_FIRST, int((seconds - spent) / per_chunk))
        size = min(size, max(CALIBRATION_FIRST, int((budget_chars - chars_done) / (chars_done / done))))
    kept = timed[1:] or timed
    chunks, chars, took = (sum(x[i] for x in kept) for i in range(3))
    return Rate(kind="calibrated", backend="local", hardware=hardware, model=engine.model_id,
                chars_per_s=sig(chars / max(took, 1e-9)), date=date.today().isoformat(),
                chunks=chunks, seconds=round(took, 2),
                how=f"{chars:,} characters of the run's sampled chunks, embedded by its own engine before its shards")


def rate_source(rate: Rate) -> str:
    """Where a rate comes from, as the estimate line and artifact say it."""
    if rate.kind == "store-measured":
        return f"measured by this store's {rate.shards} done shard{'' if rate.shards == 1 else 's'}"
    if rate.kind == "calibrated":
        return f"calibrated here: {rate.chunks} chunks in {rate.seconds:.1f} s"
    if rate.kind == "published":
        return f"rate published for {rate.hardware} in {rate.date}"
    where = str(rate.measured_on).split(";")[0]
    return f"rate measured on {where} on {rate.date}"


def pick_price(backend: str, gpu: str) -> Price | None:
    """The newest list price of a GPU at the backend's provider, by its name or an alias."""
    provider = executor_facts(backend).price_list
    found = [p for p in prices() if p.provider == provider and gpu.upper() in p.names]
    return max(found, key=lambda p: str(p.as_of)) if found else None


def price_age_note(as_of: str, today: date) -> str | None:
    """A warning for a price read more than STALE_PRICE_DAYS before `today`, else None."""
    age = (today - date.fromisoformat(str(as_of))).days
    if age <= STALE_PRICE_DAYS:
        return None
    return f"price of {as_of} is {age} days old (over {STALE_PRICE_DAYS}): check the provider's current price"
