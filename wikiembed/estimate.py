"""What a run will cost before it starts: size, chunks, tokens, GPU- (or CPU-) hours, wall time and dollars.

- Size: a local source (and the built-in sample) is read whole, so articles and characters are
  exact; a Hub dataset gives its article count from its metadata and the rest from a streamed
  sample (marked as such).
- Chunks and tokens: a seeded random sample of articles (reservoir sampling over the whole local
  source) is cut by the run's own chunker and counted with the model's own tokenizer (special
  tokens included). Totals are ratio estimates against the exact character count, with a 95%
  interval from the sample's spread (finite-population corrected; zero width when the sample is
  the whole source).
- Time and money: per-container throughput and prices from `wikiembed.rates` (the recorded ones
  in `wikiembed/data/rates.toml` and `prices.toml`, each with its provenance and date). Nothing is
  extrapolated from one GPU to another: a backend/GPU without a recorded rate is listed as such.
- A run's own estimate prefers a rate measured where it runs: its store's done shards' (their
  markers record the characters they embedded and the seconds it took), else, for the local
  engine on the CPU (open already), a few seconds' calibration on the run's own sampled chunks; only then
  the recorded one. Every option says which rate it used (`rate_source`).

The result is an `Estimate` (a frozen record, `wikiembed.results.JsonRecord`) with one `EstimateOption` per
backend and hardware; its `to_json()` is what `wikiembed estimate --json` writes. The sample and its totals are
`wikiembed.estimate_sample`'s; the rates and prices `wikiembed.rates`'.

Touches: the source (read), the model's tokenizer files, the two data files; a run's own estimate
also reads its store's done markers and embeds a few seconds of its sample with the engine it is given.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence

from wikiembed import executors
from wikiembed.chunking import make_chunking
from wikiembed.errors import InputError
from wikiembed.estimate_sample import Total, mean_total, ratio_total, reservoir, sample_counts, snapshot_sample
from wikiembed.model import model_info
from wikiembed.sources import RowReport, parse_source, pin, read_source
from wikiembed.records import Manifest, Marker
from wikiembed.rates import (CALIBRATION_SHARE, GPUS, STALE_PRICE_DAYS, Rate, calibrated_rate, executor_facts,
                             pick_price, pick_rate, price_age_note, rate_source, rates, sig, store_rate)
from wikiembed.results import JsonRecord, PredictedChunks, PredictedSeconds, PredictedTokens, PredictedVsActual, optional

if TYPE_CHECKING:
    from wikiembed.backends.base import Backend

DEFAULT_SAMPLE = 300


@dataclass(frozen=True)
class EstimateSample(JsonRecord):
    """The articles an estimate counted: how many, the seed that drew them, and how (in words)."""

    articles: int
    seed: int
    how: str


@dataclass(frozen=True, kw_only=True)
class EstimateOption(JsonRecord):
    """One backend on one hardware: hours, wall time and dollars at its rate and price, with where each comes from
    (`basis`, `rate_*`, `price_*`). Without a rate (`basis` "no rate") the figures are None and `note` says what
    to measure; without a price `usd` is None and the `price_*` fields are left out."""

    backend: str
    gpu: str  # the hardware, the CPU included (the JSON's name)
    containers: int
    unit: str  # what `gpu_hours` are hours of: CPU-hours or GPU-hours (`hours_unit`)
    gpu_hours: float | None
    gpu_hours_ci95: tuple[float, float] | None = optional()
    wall_minutes: float | None
    usd: float | None
    basis: str  # the rate's kind, or "no rate"
    rate_chars_per_s: float | None = optional()
    rate_model: str | None = optional()
    rate_hardware: str | None = optional()
    rate_date: str | None = optional()
    rate_how: str | None = optional()
    rate_source: str | None = optional()  # `wikiembed.rates.rate_source`
    usd_per_hour: float | None = optional()
    price_as_of: str | None = optional()
    price_source: str | None = optional()
    price_stale: bool | None = optional()
    note: str


@dataclass(frozen=True, kw_only=True)
class Estimate(JsonRecord):
    """What `wikiembed estimate` prints and `--json` writes (`estimate`), and what a run shows before its shards
    (`store_estimate`, no `source`): the counts, each with its 95% interval, and one option per backend and hardware."""

    source: str | None = optional()  # the source as parsed (`wikiembed estimate` only)
    model: str
    chunking: dict[str, Any]
    articles: int
    chars: int
    chars_ci95: tuple[int, int]
    chars_exact: bool  # the character count is exact (the whole source or snapshot read), not sampled
    chunks: int
    chunks_ci95: tuple[int, int]
    tokens: int
    tokens_ci95: tuple[int, int]
    sample: EstimateSample
    options: tuple[EstimateOption, ...]


def _option(backend: str, gpu: str, containers: int, chars: Total, model: str, rate: Rate | None = None) -> EstimateOption:
    rate = rate or pick_rate(backend, gpu)
    price = pick_price(backend, gpu)
    # `gpu_hours` keeps its name in the JSON; `unit` says what the hours are of.
    head = dict(backend=backend, gpu=gpu, containers=containers, unit=hours_unit(gpu))
    if rate is None:
        return EstimateOption(**head, gpu_hours=None, wall_minutes=None, usd=None, basis="no rate",
                              note=f"no throughput recorded for backend {backend} on {gpu}; measure it (bench/engine.py, "
                                   "bench/device_check.py on a GPU machine) and add it to wikiembed/data/rates.toml")
    per_s = float(rate.chars_per_s)
    hours = Total(chars.value / per_s / 3600, chars.low / per_s / 3600, chars.high / per_s / 3600)
    notes = []
    stale = price_age_note(price.as_of, date.today()) if price else None
    if stale:
        notes.append(stale)
    if rate.model != model:
        notes.append(f"rate measured with {rate.model}, not {model}: speed differs by model")
    if price is None:
        notes.append("no list price for this backend/hardware (self-hosted or not recorded)")
    if executor_facts(backend).runs_in_containers:  # the others' rates are of a machine already running
        notes.append("container start-up and idle time not included")
    return EstimateOption(
        **head,
        gpu_hours=sig(hours.value),
        gpu_hours_ci95=(sig(hours.low), sig(hours.high)),
        wall_minutes=sig(hours.value * 60 / containers),
        usd=sig(hours.value * float(price.usd_per_hour)) if price else None,
        basis=rate.kind,
        rate_chars_per_s=per_s,
        rate_model=rate.model,
        rate_hardware=rate.measured_on,
        rate_date=rate.date,
        rate_how=rate.provenance,
        rate_source=rate_source(rate),
        usd_per_hour=price.usd_per_hour if price else None,
        price_as_of=price.as_of if price else None,
        price_source=price.source if price else None,
        price_stale=stale is not None if price else None,
        note="; ".join(notes),
    )


def hours_unit(hardware: str) -> str:
    """What an option's hours are of: a CPU's (the machine's cores) or a GPU's."""
    return "CPU-hours" if hardware.upper() == "CPU" else "GPU-hours"


def _check_options(backends: Sequence[str], gpus: Sequence[str], containers: int, sample: int) -> None:
    if sample < 2:
        raise InputError(f"--sample {sample}: sample at least 2 articles (a few hundred give intervals of a few percent).")
    if containers < 1:
        raise InputError(f"--containers {containers}: give at least 1.")
    known = executors.names()
    bad = [b for b in backends if b not in known]
    if bad:
        raise InputError(f"--backend {','.join(bad)}: choose from {','.join(known)}.")
    bad = [g for g in gpus if g.upper() not in GPUS]
    if bad:
        raise InputError(f"--gpu {','.join(bad)}: choose from {','.join(GPUS)}.")


def _result(
    rows: Sequence[dict[str, str]],
    articles: int,
    total_chars: int | None,
    *,
    model: str,
    chunker: str,
    chunk_size: int | None,
    chunk_overlap: int,
    combos: Sequence[tuple[str, str]],
    containers: int,
    how: str,
    seed: int,
    prompt: str = "",
    rate: Callable[[str, str, list[str], float], Rate | None] | None = None,
) -> Estimate:
    """Totals from a sample (ratio estimates when the character total is known, else per-article means).

    `rate(backend, hardware, chunk texts of the sample, characters to embed)`: a rate measured where
    the run runs, which that option takes before a recorded one (None: there is none)."""
    counts = sample_counts(rows, model, chunker, chunk_size, chunk_overlap, prompt)
    if total_chars is not None:
        chars = Total(total_chars, total_chars, total_chars)
        chunks = ratio_total(total_chars, counts.chars, counts.chunks, articles)
        tokens = ratio_total(total_chars, counts.chars, counts.tokens, articles)
    else:
        chars = mean_total(articles, counts.chars)
        chunks = mean_total(articles, counts.chunks)
        tokens = mean_total(articles, counts.tokens)
    return Estimate(
        model=model,
        chunking=counts.chunking,
        articles=articles,
        chars=round(chars.value),
        chars_ci95=chars.rounded(),
        chars_exact=total_chars is not None,
        chunks=round(chunks.value),
        chunks_ci95=chunks.rounded(),
        tokens=round(tokens.value),
        tokens_ci95=tokens.rounded(),
        sample=EstimateSample(len(rows), seed, how),
        options=tuple(_option(b, g.upper(), containers, chars, model, rate(b, g.upper(), counts.texts, chars.value) if rate else None)
                      for b, g in combos),
    )


def estimate(
    source: str,
    *,
    config: str | None = None,
    split: str = "train",
    limit: int | None = None,
    columns: str | None = None,
    model: str | None = None,
    chunker: str = "tokens",
    chunk_size: int | None = None,
    chunk_overlap: int = 0,
    prompt_name: str | None = None,
    backends: Sequence[str] = (),
    gpus: Sequence[str] = (),
    containers: int = 1,
    sample: int = DEFAULT_SAMPLE,
    seed: int = 0,
    store: str | None = None,
) -> Estimate:
    """The estimate `wikiembed estimate` prints; see the module docstring for how each figure is made.

    `store`: a run store of this machine whose done shards measured a rate: the backend and hardware its
    run used take that rate (where the model is the same) before a recorded one."""
    from wikiembed.model import DEFAULT_MODEL

    model = model or DEFAULT_MODEL
    _check_options(backends, gpus, containers, sample)
    src = parse_source(source, config, split, limit, columns)
    info = model_info(model)
    make_chunking(chunker, chunk_size, chunk_overlap, info.max_tokens)  # bad options fail before reading
    prompt = info.prompt(prompt_name, "document")
    total_chars: int | None
    pinned = pin(src)  # a Hub source: one commit, `latest.<lang>` resolved
    drawn = pinned.reader.estimate_sample(pinned, sample, seed)
    if drawn is not None:
        rows, articles, how = drawn
        total_chars = None
    else:
        rows, articles, total_chars = reservoir(read_source(src, RowReport()), sample, seed)
        how = f"whole source read; {len(rows)} of {articles} articles drawn uniformly at random (seed {seed})"
    if not rows:
        raise InputError(f"--source {source}: no usable rows to sample; check the path, --split or --limit.")
    if not backends and not gpus:
        combos = [(r.backend, r.hardware) for r in rates()]
    else:
        combos = [(b, g) for b in (backends or ["modal"]) for g in (gpus or ["A10G"])]
    measured = _store_rate_at(store, model) if store else None
    if measured and not backends and not gpus and (measured.backend, measured.hardware) not in combos:
        combos.append((measured.backend, measured.hardware))

    def rate(backend: str, hardware: str, texts: list[str], chars: float) -> Rate | None:
        return measured if measured and (measured.backend, measured.hardware) == (backend, hardware) else None

    result = _result(rows, articles, total_chars, model=model, chunker=chunker, chunk_size=chunk_size,
                     chunk_overlap=chunk_overlap, combos=combos, containers=containers, how=how, seed=seed, prompt=prompt,
                     rate=rate)
    return result.replace(source=src.spec)


def _store_rate_at(spec: str, model: str) -> Rate | None:
    """The rate the done shards of the store at `spec` measured, for the backend and hardware its run used."""
    from wikiembed.settings import RunSettings
    from wikiembed.store import Store

    store = Store(spec)
    if not store.exists():
        raise InputError(f"--store {spec}: no run store there; give a folder that a `wikiembed run --store` filled.")
    manifest = store.read_manifest()
    made = RunSettings(**manifest.settings)
    hardware = executor_facts(made.backend).rate_hardware(made.compute)
    done = [st.marker for st in store.states(manifest) if st.state == "done" and st.marker is not None]
    return store_rate(done, made.backend, hardware, model) if hardware else None


def store_estimate(
    snapshot: Path,
    ranges: Sequence[tuple[int, int]],
    manifest: Manifest,
    *,
    backend: str,
    hardware: str | None,
    containers: int = 1,
    sample: int = 100,
    seed: int = 0,
    done: Iterable[Marker] = (),
    engine: "Backend | None" = None,
) -> Estimate:
    """The estimate for the rows a run is about to embed (`ranges` of the generation's snapshot).

    Reads the snapshot's text column once for the exact character count; samples `sample`
    articles for chunks and tokens. Shown before the run and set beside the actual figures after.
    Its rate: that of the generation's `done` shards' markers where they embedded with this
    backend, else that of `engine` (the run's open local engine) calibrated on the sample's chunks,
    else the recorded one.
    """
    rows, articles, total_chars = snapshot_sample(snapshot, ranges, sample, seed)
    chunking = manifest.chunking
    combos = [(backend, hardware)] if hardware else []
    model, prompt = manifest.model.model_id, manifest.model.document_prompt
    from_store = store_rate(done, backend, hardware or "", model)

    def rate(backend: str, hardware: str, texts: list[str], chars: float) -> Rate | None:
        if from_store is not None or engine is None:
            return from_store
        return calibrated_rate(engine, texts, prompt, hardware, budget_chars=CALIBRATION_SHARE * chars, seed=seed)

    return _result(
        rows, articles, total_chars, model=model, chunker=chunking.chunker,
        chunk_size=chunking.chunk_size, chunk_overlap=chunking.chunk_overlap, combos=combos,
        containers=containers, how=f"snapshot read; {len(rows)} of {articles} articles to embed sampled (seed {seed})",
        seed=seed, prompt=prompt, rate=rate,
    )


def one_line(result: Estimate) -> str:
    """The estimate as one line (printed before a run)."""
    line = (f"estimate: {result.articles:,} articles, {result.chars:,} chars, "
            f"~{result.chunks:,} chunks [{result.chunks_ci95[0]:,}-{result.chunks_ci95[1]:,}], "
            f"~{result.tokens:,} tokens")
    for o in result.options:
        if o.gpu_hours is not None and o.wall_minutes is not None:
            usd = f", ${o.usd:,.2f}" if o.usd is not None else ""
            if o.price_stale:
                usd += f" at a price of {o.price_as_of}, over {STALE_PRICE_DAYS} days old"
            wall = f"{o.wall_minutes:,.1f} min" if o.wall_minutes >= 1 else f"{o.wall_minutes * 60:.0f} s"
            line += f"; {o.backend} on {o.gpu}: ~{wall} ({o.rate_source}{usd})"
        else:
            line += f"; no recorded rate for {o.backend} on {o.gpu}"
    return line


def markdown(result: Estimate) -> str:
    """The estimate as a markdown artifact (the Prefect UI shows it before the run's progress)."""
    lines = [
        "# wikiembed estimate",
        "",
        f"- articles: {result.articles:,}; characters: {result.chars:,}",
        f"- chunks: ~{result.chunks:,} (95%: {result.chunks_ci95[0]:,}-{result.chunks_ci95[1]:,})",
        f"- tokens: ~{result.tokens:,} (95%: {result.tokens_ci95[0]:,}-{result.tokens_ci95[1]:,})",
        f"- how: {result.sample.how}",
    ]
    for o in result.options:
        if o.gpu_hours is None:
            lines.append(f"- {o.backend} on {o.gpu}: {o.note}")
            continue
        usd = f", ${o.usd:,.2f} at ${o.usd_per_hour}/h ({o.price_as_of})" if o.usd is not None else ""
        lines.append(
            f"- {o.backend} on {o.gpu}: {o.gpu_hours:,.4g} {o.unit}{usd}; {o.rate_chars_per_s:,.0f} chars/s, "
            f"{o.rate_source} ({o.rate_how}); {o.note}"
        )
    return "\n".join(lines)


def compare(predicted: Estimate, chunks: int, seconds: float) -> PredictedVsActual:
    """Predicted next to actual, for the run's summary."""
    option = next((o for o in predicted.options if o.gpu_hours is not None), None)
    return PredictedVsActual(
        PredictedChunks(predicted.chunks, list(predicted.chunks_ci95), chunks),
        PredictedTokens(predicted.tokens, list(predicted.tokens_ci95)),
        PredictedSeconds(
            round(option.gpu_hours * 3600, 1) if option and option.gpu_hours is not None else None,
            round(seconds, 1),
            (f"{option.basis} rate for {option.backend} on {option.gpu}"
             + (", one container" if executor_facts(option.backend).runs_in_containers else "")) if option else "no rate recorded",
        ),
    )
