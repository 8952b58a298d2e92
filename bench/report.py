"""Write docs/PERFORMANCE.md from the measurements in bench/results/*.json.

Every figure in that file comes from a results file written by a bench script or a `wikiembed`
command, and every row says which command made it (so running that command measures it again),
when, and on what hardware. Nothing is typed in by hand: to add a measurement, save its JSON under
bench/results/ (with `command`, `date` and `machine` or `device`; `setup`, a list of commands, where
the command reads what others make first, such as a corpus or a store) and run

    python bench/report.py            # rewrites docs/PERFORMANCE.md
    python bench/report.py --check    # exit 1 if docs/PERFORMANCE.md is not what the results give

A results file of a kind this script does not know, or whose command is not one that runs here
(`python bench/SCRIPT.py ...` of a script in bench/, or `wikiembed ...`), is an error that names
the file, so no measurement is left out silently and none points at a command that is gone.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
OUT = ROOT / "docs" / "PERFORMANCE.md"
DAY2 = {"edited": 0.01, "added": 0.005, "removed": 0.002}  # bench/scale.py's day 2 (at --day2-times 1)

Row = tuple[str, str, str]  # figure, measured, target


def _rate(x: float) -> str:
    """Characters per second, to three significant figures."""
    if x >= 1e6:
        return f"{x / 1e6:.3g}M chars/s"
    if x >= 1e3:
        return f"{x / 1e3:.3g}k chars/s"
    return f"{x:.3g} chars/s"


def _ci(ci: list[float]) -> str:
    return f"[{ci[0]:.3f}, {ci[1]:.3f}]"


def _target(d: dict[str, Any], key: str) -> str:
    target = (d.get("targets") or {}).get(key)
    if target is None:
        return ""
    if isinstance(target, dict):  # {"target": ..., "ok": ...} or similar: show it as recorded
        return ", ".join(f"{k} {v}" for k, v in target.items())
    return str(target)


def engine(d: dict[str, Any]) -> list[Row]:
    rows = []
    for name, m in d["models"].items():
        st = m["methods"]["st_fp32_b32"]["chars_per_s"]
        eng = m["methods"]["engine"]["chars_per_s"]
        rows.append((f"{name} ({m['weights']} weights): engine vs sentence-transformers fp32, batch 32",
                     f"{_rate(eng)} vs {_rate(st)} ({eng / st:.2f}×), min cosine {m.get('min_cosine', d['min_cosine']):.6f}", ""))
    return rows


def fast_tokenizer(d: dict[str, Any]) -> list[Row]:
    targets = d.get("targets", {})
    rows = [
        ("`tokenizers` `encode_batch`, per core", _rate(d["hf_chars_per_s_per_core"]), ""),
        ("the fast path (blingfire where it gives the same ids), per core", _rate(d["fast_chars_per_s_per_core"]), ""),
        ("`chunker_vs_hf`: the whole token chunker on the fast path ÷ `tokenizers`, per core",
         f"{d['chunker_vs_hf']:.2f} ({_rate(d['chunker_chars_per_s_per_core'])} ÷ {_rate(d['hf_chars_per_s_per_core'])}; "
         f"the chunker on `tokenizers` only: {_rate(d['chunker_reference_chars_per_s_per_core'])})", targets.get("chunker_vs_hf", "")),
        ("`identical_ids_fraction` (texts whose ids equal `tokenizers`'), chunks identical",
         f"{d['identical_ids_fraction']:.4f}, {'yes' if d['chunks_identical'] else 'NO'}", targets.get("identical_ids_fraction", "")),
        ("`fallback_fraction`: characters left to `tokenizers`", f"{d['fallback_fraction']:.4f}", ""),
    ]
    for key, label in (("shard_chars_per_s_per_core", "`bench/fanout.py` shard rate per core"),
                       ("chunking_vs_tokenizer", "`bench/pipeline.py` `chunking_vs_tokenizer`")):
        pairs = d.get("before_after") or {}
        if pairs.get("before") and pairs.get("after"):
            show = _rate if key.endswith("per_core") else (lambda x: f"{x:.2f}")
            before = " / ".join(show(r[key]) for r in pairs["before"])
            after = " / ".join(show(r[key]) for r in pairs["after"])
            rows.append((f"{label}, `tokenizers` only → fast path (alternating in one run)", f"{before} → {after}", ""))
    return rows


def pipeline(d: dict[str, Any]) -> list[Row]:
    rows = [("`overhead_ratio`: flow ÷ bare engine on the same chunks, Prefect start-up excluded",
             f"{d['overhead_ratio']:.2f} ({d['run_s']:.0f} s ÷ {d['engine_s']:.0f} s, {d['articles']:,} articles, {d['chunks']:,} chunks)",
             _target(d, "overhead_ratio"))]
    if "overhead_cpu_ratio" in d:
        rows.append(("the same in CPU seconds of the process trees",
                     f"{d['overhead_cpu_ratio']:.2f} ({d['run_cpu_s']:.0f} ÷ {d['engine_cpu_s']:.0f})", ""))
    rows.append(("`rss_growth`: peak RSS of download + shard + chunk, large ÷ small source",
                 f"{d['rss_growth']:.2f} ({d['rss_large_mb']:.0f} MB ÷ {d['rss_small_mb']:.0f} MB; "
                 f"{d['rss_articles'][1]:,} vs {d['rss_articles'][0]:,} articles)", _target(d, "rss_growth")))
    tok = d.get("chunking_tokenizer_chars_per_s", d["tokenizer_chars_per_s"])
    rows.append(("`chunking_vs_tokenizer`: token chunker ÷ `encode_batch` of the same articles, same cores",
                 f"{d['chunking_vs_tokenizer']:.2f} ({_rate(d['chunker_chars_per_s'])} ÷ {_rate(tok)})",
                 _target(d, "chunking_vs_tokenizer")))
    if "host_ceiling_vs_tokenizer" in d:
        rows.append(("`host_ceiling_vs_tokenizer`: the engine's host side with a no-op model ÷ `encode_batch`",
                     f"{d['host_ceiling_vs_tokenizer']:.2f} ({_rate(d['host_ceiling_chars_per_s'])} ÷ {_rate(d['tokenizer_chars_per_s'])}); "
                     f"from token ids: {_rate(d['host_ceiling_ids_chars_per_s'])}", _target(d, "host_ceiling_vs_tokenizer")))
    rows.append(("`resume_1000_shards_s`: `wikiembed run` over 1,000 done shards, start-up included",
                 f"{d['resume_1000_shards_s']:.1f} s", _target(d, "resume_1000_shards_s")))
    return rows


def _shape_rows(d: dict[str, Any]) -> list[Row]:
    rows = []
    for name, shape in (d.get("shapes") or {}).items():
        rows.append((f"{name} ({shape['model_shape']}, {shape['dtype']}): engine rate; min cosine against "
                     "sentence-transformers fp32 `encode_document` / `encode_query`",
                     f"{_rate(shape['engine_chars_per_s'])}; {shape['min_cosine_documents']:.6f} / {shape['min_cosine_queries']:.6f}", ""))
    return rows


def device_check(d: dict[str, Any]) -> list[Row]:
    rows = [("tokenizer `encode_batch`, all cores", _rate(d["tokenizer_chars_per_s"]), "")]
    for name, eng in d["engine_chars_per_s"].items():
        rows.append((f"{name}: engine vs sentence-transformers fp32, batch 32",
                     f"{_rate(eng)} vs {_rate(d['st_fp32_chars_per_s'][name])}; {d['engine_vs_tokenizer'][name]} × the tokenizer",
                     _target(d, "engine_vs_tokenizer")))
        e2e = d["e2e"][name]
        rows.append((f"{name}: end to end, parquet of whole articles to a finished store",
                     f"{_rate(e2e['e2e_chars_per_s'])} ({e2e['e2e_articles']} articles, {e2e['e2e_chunks']} chunks)",
                     _target(d, "e2e_chars_per_s")))
    rows.append(("min cosine against sentence-transformers", f"{d['min_cosine']:.6f}", _target(d, "min_cosine")))
    return rows + _shape_rows(d)


def fanout(d: dict[str, Any]) -> list[Row]:
    rows = [("`control_plane_shards_per_s`: the flow on a Volume store, remote shards answering at once",
             f"{d['control_plane_shards_per_s']}", ""),
            ("`noop_resume_10000_shards_s`: `wikiembed run` in a fresh process over 10,000 done shards",
             f"{d['noop_resume_10000_shards_s']} s", ""),
            ("`shard_chars_per_s_per_core`: one shard (snapshot, token chunker, TEI client, parquet, marker) per CPU second",
             _rate(d["shard_chars_per_s_per_core"]), "")]
    if "tokenizer_chars_per_s_per_core" in d:
        rows.append(("`tokenizer_chars_per_s_per_core`: bare `encode_batch` of the same articles",
                     _rate(d["tokenizer_chars_per_s_per_core"]), ""))
    rows.append(("`remote_bytes_per_shard_max`: reference out + marker back", f"{d['remote_bytes_per_shard_max']} bytes", ""))
    return rows


def index(d: dict[str, Any]) -> list[Row]:
    rows = []
    for f in d["forms"]:
        q, a = f["one_query_ms"], f["all_queries_s"]
        rows.append((f"{d['chunks']:,} chunks, {f['form']}: one query scan / index (median); {d['queries']} queries at once",
                     f"{q['exact_median']:.1f} / {q['index_median']:.1f} ms; {a['exact'] * 1e3:.0f} / {a['index'] * 1e3:.0f} ms; "
                     f"index {f['index_bytes'] / 1e6:.2f} MB built in {f['build_seconds']:.1f} s; recall@10 vs scan "
                     f"{f['recall_at_10_vs_exact']:.3f}, same top 1 {f['top1_same_as_exact']:.3f}", ""))
    return rows


def tei_flow(d: dict[str, Any]) -> list[Row]:
    rows = []
    for chunker in ("tokens", "chars"):
        best, ceiling, per_cpu = (d[k][chunker] for k in ("best_chars_per_s", "flow_process_ceiling_chars_per_s", "chars_per_cpu_s"))
        rows.append((f"`--chunker {chunker}`, before / after: run rate; what the flow's process can feed; chars per CPU second of all processes",
                     f"{_rate(best['before'])} / {_rate(best['after'])}; {_rate(ceiling['before'])} / {_rate(ceiling['after'])}; "
                     f"{_rate(per_cpu['before'])} / {_rate(per_cpu['after'])}", ""))
    return rows


def evaluation(d: dict[str, Any]) -> list[Row]:
    rows = []
    for f in d["forms"]:
        rows.append((f"{f['form']} ({f['bytes_per_vector']} bytes/vector): recall@1, recall@10, MRR@10 on {f['n']} titles",
                     f"{f['recall_at_1']:.3f} {_ci(f['recall_at_1_ci95'])}, {f['recall_at_10']:.3f} {_ci(f['recall_at_10_ci95'])}, "
                     f"{f['mrr']:.3f} {_ci(f['mrr_ci95'])}", ""))
    return rows


def estimate(d: dict[str, Any]) -> list[Row]:
    return [("predicted chunks and tokens (95% intervals)",
             f"{d['chunks']:,} [{d['chunks_ci95'][0]:,}, {d['chunks_ci95'][1]:,}] chunks, {d['tokens']:,} tokens, "
             f"{d['articles']:,} articles, {d['chars']:,} characters", "")]


def run_summary(d: dict[str, Any]) -> list[Row]:
    return [("the run", f"{d['chunks']:,} chunks from {d['rows']:,} articles in {d['shards_done']} shards, "
                        f"{d['seconds']:.0f} s ({_rate(d['chars_per_s'])}), {d['retries']} retries", "")]


def search(d: dict[str, Any]) -> list[Row]:
    top = d["hits"][0]
    return [(f"top hit of {d['k']} for '{d['query']}' ({d['form']}, {d['chunks_searched']:,} chunks)",
             f"{top['title']} ({top['score']:.4f})", "")]


def serve(d: dict[str, Any]) -> list[Row]:
    lat, thr, fb, pub = d["latency"], d["throughput"], d["feedback"], d["publish"]
    store = f"{d['store']['chunks']:,} chunks"
    many = thr[f"clients_{d['clients']}_per_s"]
    return [
        (f"GET /search k={d['k']}, one client, {lat['requests']} requests ({store}, {'/'.join(lat['methods'])})",
         f"p50 {lat['p50_ms']:.1f} ms, p99 {lat['p99_ms']:.1f} ms", "p50 ≤ 30 ms"),
        (f"{thr['requests']} searches: {d['clients']} clients at once against one after another",
         f"{thr['ratio']:.2f}× ({many:.0f}/s against {thr['one_client_per_s']:.0f}/s), "
         f"{thr['failed']} failed, {thr['mean_batch']:.1f} queries a batch", "≥ 3×, none failed"),
        (f"POST /feedback, {fb['records']:,} records from {d['clients']} clients",
         f"{fb['per_s']:.0f}/s; {'each on disk once' if fb['each_once'] else 'NOT each once'}, {fb['torn_lines']} torn, {fb['failed']} failed",
         "each once, none torn"),
        (f"a new generation published by `wikiembed run` during {pub['requests']:,} searches from {d['clients']} clients",
         f"{pub['failed']} failed, {pub['mixed_or_wrong_answers']} answers from another generation than named; "
         f"{len(pub['generations'])} generations answered", "none failed, none mixed"),
    ]


def _volume_day1(size: dict[str, Any]) -> list[Row]:
    """`bench/scale.py`'s day 1 through `--backend modal` on a Volume store in the Modal stand-in, where it ran."""
    v = size["steps"].get("run_day1_modal_volume")
    if not v or "seconds" not in v:
        return []
    return [(f"day 1 at {size['fraction']:g} of English Wikipedia ({size['chars']:,} characters) through `--backend modal` on a Volume "
             f"store in the Modal stand-in: {v['shards']:,} shards on {v['containers']} containers, embedding by the TEI stand-in",
             f"{v['seconds']:.0f} s ({v['seconds_per_shard']} s a shard; the stand-in's copying for Volume commits and reloads "
             f"{(v['commit_seconds'] + v['reload_seconds']) / v['shards']:.2f} s of container time a shard); "
             f"flow peak {v['peak_rss_mb']:.0f} MB, containers' peak {v['workers_peak_rss_mb']:.0f} MB; "
             f"Volume {v['volume_files']:,} files, {v['volume_bytes'] / 1e6:,.0f} MB, "
             f"{v['commits']:,} commits; largest call {v['call_max_bytes']:,} bytes, largest shard call {v['shard_call_max_bytes']:,}",
             "shard call ≤ 10 kB")]


def scale(d: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    for size in d["sizes"]:
        if "run_day1" not in size["steps"]:  # a run of one step (`bench/scale.py --only STEP`)
            rows += _volume_day1(size)
            continue
        day1, day2, inc = size["steps"]["run_day1"], size["steps"]["run_day2"], size["incremental"]
        at = f"{size['fraction']:g} of English Wikipedia ({size['chunks']:,} chunks)"
        rows.append((f"day 1 at {at}, the engine free", f"{day1['seconds']:.0f} s, flow peak {day1['peak_rss_mb']:.0f} MB, "
                     f"{day1['bytes_written'] / 1e6:,.0f} MB written", "flow ≤ 1.5 GB at 0.1"))
        rates = d.get("day2_changes") or DAY2  # results written before `--day2-times` have the default rates
        rows.append((f"day 2 at {at}: " + ", ".join(f"{100 * rates[change]:g}% {change}" for change in ("edited", "added", "removed")),
                     f"{inc['reembedded_chunks']} of {inc['changed_chunks_expected']} changed chunks embedded; "
                     f"{inc['seconds_ratio']:.1%} of day 1's seconds, {inc['bytes_ratio']:.1%} of its bytes; flow peak {day2['peak_rss_mb']:.0f} MB",
                     "= changed; ≤ 15% seconds, ≤ 10% bytes" if rates == DAY2 else "= changed"))
        resume = size.get("resume") or {}
        if resume.get("seconds_to_first_shard") is not None:
            rows.append((f"resume of day 1 after a SIGKILL at {at} ({resume['shards_done_at_kill']} shards done at the kill)",
                         f"first new shard {resume['seconds_to_first_shard']} s after the restart, {resume['redone']} redone",
                         "≤ 30 s, none redone"))
        if (size.get("search") or {}).get("index_p50_ms") is not None:
            rows.append((f"search through the index at {at}, warm", f"p50 {size['search']['index_p50_ms']} ms", "≤ 50 ms"))
        if "seconds" in size["steps"].get("status", {}):
            rows.append((f"status at {at}", f"{size['steps']['status']['seconds']:.1f} s", "≤ 2 s"))
        rows += _volume_day1(size)
    for name, grow in (d.get("exponents") or {}).items():
        if name in ("run_day1", "run_day2", "export", "status_verify", "index"):
            rows.append((f"growth of {name} between the two largest sizes", f"seconds ^{grow['seconds']}, bytes ^{grow['bytes']}", "≤ 1.1"))
    return rows


def finetune_memory(d: dict[str, Any]) -> list[Row]:
    rows = [(f"`wikiembed finetune` peak RSS: {d['chunks']:,} chunks, {d['train']} queries trained on, {d['epochs']} epoch(s), "
             f"batch {d['batch_size']}, {d['negatives']} hard negative(s)", f"{d['peak_rss_mb']:,.0f} MB ({d['cpu_s']:,.0f} CPU s)", "")]
    if "without_checkpointing" in d:
        w = d["without_checkpointing"]
        rows.append(("the same without activation checkpointing (every layer's activations kept); the two models' weights",
                     f"{w['peak_rss_mb']:,.0f} MB ({w['cpu_s']:,.0f} CPU s); {'the same bit for bit' if d['same_model'] else 'DIFFERENT'}", ""))
    return rows


# (test for the kind, section title, what the bench measures, rows)
KINDS: list[tuple[Callable[[dict[str, Any]], bool], str, str, Callable[[dict[str, Any]], list[Row]]]] = [
    (lambda d: d.get("kind") == "scale", "All of English Wikipedia by simulation (`bench/scale.py`)",
     "Every step of `wikiembed` but the model's arithmetic at fractions of English Wikipedia's characters; "
     "the tables per step are in docs/SCALE.md.", scale),
    (lambda d: d.get("kind") == "serve", "Search service (`bench/serve.py`)",
     "`wikiembed serve` in its own process on loopback, clients as threads of the bench's process on the same cores; "
     "the store made by `wikiembed run --index float32` from short synthesized articles (one chunk each).", serve),
    (lambda d: d.get("kind") == "finetune_memory", "Fine-tune memory on the CPU (`bench/finetune_memory.py`)",
     "Manual pages as the store, their NAME descriptions as the judged queries; `wikiembed finetune` in a process of its own, "
     "its peak RSS the kernel's high-water mark.", finetune_memory),
    (lambda d: "models" in d and "engine_chars_per_s" in d, "Engine (CPU)",
     "512-character windows of the built-in sample embedded by the engine and by sentence-transformers "
     "(fp32, batch 32), tokenization included for every method, best of the repeats, methods alternating.", engine),
    (lambda d: "fast_chars_per_s_per_core" in d and "e2e" not in d, "Fast tokenizer (`bench/fast_tokenizer.py`)",
     "The built-in sample and man pages: `tokenizers` against the fast path and the whole token chunker, per core "
     "(CPU seconds of one process), best of the repeats; every text's ids compared.", fast_tokenizer),
    (lambda d: "e2e" in d, "GPU path check (`bench/device_check.py`)",
     "Tokenizer, engine and end-to-end rates in one run; `--quick` runs every step on a few chunks.", device_check),
    (lambda d: "overhead_ratio" in d, "Pipeline (`bench/pipeline.py`)",
     "What the flow costs over the bare engine, memory growth with the source, chunker and host side against "
     "the tokenizer, and resuming a finished store.", pipeline),
    (lambda d: "control_plane_shards_per_s" in d, "Fan-out to Modal (`bench/fanout.py`)",
     "Modal replaced by in-process stand-ins; the flow, Prefect and the store code real.", fanout),
    (lambda d: "best_chars_per_s" in d, "TEI backend through shard workers (`bench/tei_client.py --flow`)",
     "`wikiembed run --backend tei` against the TEI stand-in in its own process (answering as fast as it can); "
     "before: shards in the flow's process, after: one shard worker per core.", tei_flow),
    (lambda d: "forms" in d and "queries" in d, "Approximate index against the exact scan (`bench/index.py`)",
     "Section-1 manual pages (`bench/manpages.py`), top 10 of 500 page names, each query alone, queries embedded beforehand.", index),
    (lambda d: "forms" in d and "recall_at_1" in d, "Retrieval check per stored form (`wikiembed eval`)",
     "No labels: a page's name is the query, a hit is any chunk of that page in the top k.", evaluation),
    (lambda d: "chunks_ci95" in d, "Estimate before a run (`wikiembed estimate`)", "", estimate),
    (lambda d: "shards_total" in d, "A whole run (`wikiembed run`)", "", run_summary),
    (lambda d: "hits" in d, "Search (`wikiembed search`)", "", search),
]


def hardware(d: dict[str, Any]) -> str:
    """What the figure was measured on, as its results file records it."""
    if "device" in d:
        return str(d["device"])
    machine = d["machine"]
    if isinstance(machine, dict):
        arch = "x86_64" if "x86_64" in machine.get("platform", "") else machine.get("platform", "")
        return f"{arch}, {machine['cpus']} cores"
    return str(machine).split(";")[0].split(", shared")[0]


def _command(path: Path, d: dict[str, Any]) -> str:
    """The table cell that says how to measure the figure again: the setup commands, then the command."""
    commands = [*d.get("setup", []), d["command"]]
    for command in commands:
        words = command.split()
        runs_here = words[:1] == ["wikiembed"] or (
            words[:1] == ["python"] and len(words) > 1 and words[1].startswith("bench/") and (ROOT / words[1]).is_file()
        )
        if not runs_here:
            raise SystemExit(f"{path}: command {command!r} is not `python bench/SCRIPT.py ...` of a script in bench/ "
                             "nor `wikiembed ...`; record the command that measures it again")  # fmt: skip
    command = d["command"]
    if d.get("note") and d["note"] in command:  # the note is prose about the run, recorded apart from it
        command = command.replace(d["note"], "…")
    setup = "".join(f"`{c}`, then " for c in d.get("setup", []))
    return f"{setup}`{command}`"


def render(results: Path = RESULTS) -> str:
    sections: dict[str, tuple[str, list[str]]] = {title: (about, []) for _, title, about, _ in KINDS}
    for path in sorted(results.glob("*.json")):
        d = json.loads(path.read_text())
        missing = [k for k in ("command", "date") if k not in d] + ([] if "device" in d or "machine" in d else ["machine"])
        if missing:
            raise SystemExit(f"{path}: no {', '.join(missing)}; record how, when and where it was measured, then run again")
        kind = next((k for k in KINDS if k[0](d)), None)
        if kind is None:
            raise SystemExit(f"{path}: no section of bench/report.py renders this kind of result; add one to KINDS")
        _, title, _, rows_of = kind
        command = _command(path, d)
        for figure, measured, target in rows_of(d):
            sections[title][1].append(f"| {figure} | {measured} | {target} | {d['date']} | {hardware(d)} | "
                                      f"{command} ([json](../bench/results/{path.name})) |")
    out = [
        "# Performance: every measured figure",
        "",
        "<!-- Generated by `python bench/report.py` from bench/results/*.json: edit those, not this file. -->",
        "",
        "Each row is one figure from one results file: what was measured, the value, the target where the",
        "bench sets one, the date, the hardware, and the exact command that measures it again (after the",
        "commands that make its inputs, where it reads any). CPU figures come from a 2-core x86_64",
        "machine whose load varied between runs: ratios measured within one command compare across days,",
        "absolute rates less so. Projections of time and money are in [COST.md](COST.md), not here.",
        "",
    ]
    for title, (about, rows) in sections.items():
        if not rows:
            continue
        out += [f"## {title}", ""]
        if about:
            out += [about, ""]
        out += ["| figure | measured | target | date | hardware | command |", "| --- | --- | --- | --- | --- | --- |", *rows, ""]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--check", action="store_true", help="exit 1 if docs/PERFORMANCE.md differs from what the results give")
    args = p.parse_args(argv)
    text = render()
    if args.check:
        if not OUT.exists() or OUT.read_text() != text:
            print(f"{OUT} is out of date: run python bench/report.py", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text)
    rows = sum(1 for line in text.splitlines() if line.startswith("| ") and not line.startswith(("| figure", "| ---")))
    print(f"wrote {OUT.relative_to(ROOT)}: {rows} figures from {len(list(RESULTS.glob('*.json')))} results files, each with its command")
    return 0


if __name__ == "__main__":
    sys.exit(main())
