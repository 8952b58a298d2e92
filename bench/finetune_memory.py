"""Peak memory of `wikiembed finetune` on the CPU: manual pages (section 1) as the store, their NAME
descriptions as the judged queries (as `bench/improve_manpages.py` makes them).

    python bench/finetune_memory.py --pages 2000 --pairs 400 --epochs 3 --batch-size 32 --also-without \\
        --work build/finetune-memory --json bench/results/DATE-finetune-memory.json

writes WORK/pages.jsonl and WORK/pairs.jsonl, embeds the pages into WORK/store (the bundled model; a
finished store is reused), then fine-tunes on the first --pairs queries into WORK/model, in a process of
its own whose peak RSS (its kernel-counted high-water mark) is the figure. `--also-without` fine-tunes
again with activation checkpointing off (`wikiembed.finetune.CHECKPOINT_ACTIVATIONS`), the way every
layer's activations were once kept, and compares the two models' weights bit for bit.

Prints, and writes to `--json`: `pages`, `chunks`, `pairs`, `train`, `examples`, `epochs`, `batch_size`,
`negatives`, `loss`, `peak_rss_mb`, `seconds`, `cpu_s`, `train_loss`, and with --also-without
`without_checkpointing` (the same figures) and `same_model`.

`--smoke`: stand-in pages (`bench/manpages.py`) cut short, the fewest queries a fine-tune takes, one epoch:
seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from improve_manpages import build, split_name  # noqa: E402
from manpages import stand_in_pages  # noqa: E402

# 25 queries: 20 to train on (the floor) and 5 held out; pages cut short, small batches.
SMOKE = {"pages": 25, "pairs": 25, "max_chars": 300, "epochs": 1, "batch_size": 8}


def build_stand_ins(pages: int, max_chars: int, work: Path) -> tuple[Path, Path, int]:
    """As `improve_manpages.build` from stand-in pages, each cut to its first `max_chars` characters."""
    work.mkdir(parents=True, exist_ok=True)
    corpus, pairs = work / "pages.jsonl", work / "pairs.jsonl"
    kept = 0
    with corpus.open("w", encoding="utf-8") as fc, pairs.open("w", encoding="utf-8") as fp:
        for name, text in stand_in_pages(pages * 2):
            if (parts := split_name(text)) and kept < pages:
                fc.write(json.dumps({"id": name, "title": name, "url": f"man:{name}(1)", "text": parts[1][:max_chars]}) + "\n")
                fp.write(json.dumps({"query": parts[0], "id": name}) + "\n")
                kept += 1
    return corpus, pairs, kept


def child(store: str, pairs: str, out: str, settings: str, checkpoint: bool) -> None:
    """The fine-tune itself, in this process: its record goes to stdout as JSON."""
    import wikiembed.finetune as ft

    ft.CHECKPOINT_ACTIVATIONS = checkpoint
    record = ft.finetune(store, pairs, out, ft.FinetuneSettings(**json.loads(settings)), report=lambda line, done: None)
    print(json.dumps(record.to_json()))


def measured(store: Path, pairs: Path, out: Path, settings: dict, checkpoint: bool) -> tuple[dict, dict]:
    """(the fine-tune's record, its process's peak RSS, seconds and CPU seconds)."""
    argv = [sys.executable, __file__, "--child", str(store), str(pairs), str(out), json.dumps(settings),
            "on" if checkpoint else "off"]
    started = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    stdout = proc.stdout.read()  # type: ignore[union-attr]
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"the fine-tune exited {proc.returncode}")
    figures = {"peak_rss_mb": round(usage.ru_maxrss / 1024, 1), "seconds": round(time.perf_counter() - started, 1),
               "cpu_s": round(usage.ru_utime + usage.ru_stime, 1)}
    return json.loads(stdout.strip().splitlines()[-1]), figures


def same_weights(a: Path, b: Path) -> bool:
    import numpy as np
    from safetensors.numpy import load_file

    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    return wa.keys() == wb.keys() and all(np.array_equal(wa[k], wb[k]) for k in wa)


def main() -> None:
    if sys.argv[1:2] == ["--child"]:
        store, pairs, out, settings, checkpoint = sys.argv[2:7]
        child(store, pairs, out, settings, checkpoint == "on")
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pages", type=int, default=2000)
    parser.add_argument("--pairs", type=int, default=400, help="judged queries fine-tuned on (and held out from)")
    parser.add_argument("--max-chars", type=int, default=4000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--negatives", type=int, default=1)
    parser.add_argument("--also-without", action="store_true", help="fine-tune again without activation checkpointing")
    parser.add_argument("--work", default="build/finetune-memory")
    parser.add_argument("--json", help="also write the result here")
    parser.add_argument("--smoke", action="store_true", help=f"stand-in pages, the fewest queries: {SMOKE}")
    args = parser.parse_args()
    if args.smoke:
        vars(args).update({k: v for k, v in SMOKE.items()})
    from wikiembed.flows.embed_dataset import embed_dataset

    work = Path(args.work).resolve()
    corpus, all_pairs, kept = (build_stand_ins if args.smoke else build)(args.pages, args.max_chars, work)
    pairs = work / f"pairs-{args.pairs}.jsonl"
    pairs.write_text("".join(all_pairs.read_text(encoding="utf-8").splitlines(keepends=True)[: args.pairs]), encoding="utf-8")
    embedded = embed_dataset(source=str(corpus), store=str(work / "store"), shard_rows=250)
    settings = {"epochs": args.epochs, "batch_size": args.batch_size, "negatives": args.negatives, "device": "cpu"}
    runs = {}
    for checkpoint in (True, False) if args.also_without else (True,):
        model = work / ("model" if checkpoint else "model-without-checkpointing")
        if model.exists():
            import shutil

            shutil.rmtree(model)
        runs[checkpoint] = (model, *measured(work / "store", pairs, model, settings, checkpoint))
    _, record, figures = runs[True]
    out = {"kind": "finetune_memory", "date": time.strftime("%Y-%m-%d"),
           "command": " ".join(["python", "bench/finetune_memory.py", *sys.argv[1:]]),
           "machine": f"{platform.machine()}, {os.cpu_count()} cores",
           "corpus": "stand-ins (python docstrings)" if args.smoke else "man pages", "pages": kept,
           "chunks": embedded["chunks"], "pairs": args.pairs, "train": record["train"], "examples": record["examples"],
           "epochs": args.epochs, "batch_size": args.batch_size, "negatives": args.negatives, "loss": record["loss"],
           **figures, "train_loss": record["train_loss"]}  # fmt: skip
    if args.also_without:
        model, without, without_figures = runs[False]
        out["without_checkpointing"] = {**without_figures, "train_loss": without["train_loss"]}
        out["same_model"] = same_weights(runs[True][0], model)
    print(json.dumps(out, indent=1))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
    if out.get("same_model") is False:
        raise SystemExit("the fine-tunes with and without activation checkpointing gave different weights")


if __name__ == "__main__":
    main()
