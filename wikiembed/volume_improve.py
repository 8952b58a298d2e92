"""The improve loop for a store on a Modal Volume: every path on that Volume, every step next to it.

`wikiembed finetune --store modal:VOLUME/PATH` and the `improve-model` flow name each path of the loop
(the store, the pairs file, the model folder, the new store) as `modal:VOLUME/PATH` on the store's own
Volume, since the deployed apps mount only that one. The fine-tune and the comparison run in the
`wikiembed-finetune` app (`modal_workers/finetune_app.py`), which takes paths relative to the Volume's
root; the re-embed's shard containers load the fine-tuned model from its folder under the mount
(`model_mount_path`). Answers come back with the containers' paths written as specs again, so the
flow's report and the CLI name what the user gave.

Only control data travels: paths and settings out, the fine-tune's record and the figures back.

Touches: Modal's API (the `wikiembed-finetune` app), through `wikiembed.backends.modal_client`.
"""

from __future__ import annotations

import shlex
from pathlib import Path, PurePosixPath
from typing import Any

from wikiembed.errors import InputError
from wikiembed.volume_store import PREFIX, STORE_MOUNT, parse_spec


def volume_path(flag: str, spec: str, volume: str, example: str) -> str:
    """Where `spec` (modal:VOLUME/PATH) is on `volume`, relative to its root; refused, naming the fix,
    when it is a local path or on another Volume."""
    parsed = parse_spec(spec) if spec.startswith(PREFIX) else None
    if parsed is None:
        fix = f"give modal:{volume}/{example}"
        if flag.endswith("pairs"):
            name = PurePosixPath(spec).name or "pairs.jsonl"
            fix = (f"put it there first with `modal volume put {shlex.quote(volume)} {shlex.quote(spec)} feedback/`, "
                   f"then give modal:{volume}/feedback/{name}")
        raise InputError(
            f"{flag} {spec!r}: the store is on the Modal Volume {volume!r} and the improve loop runs next to it, "
            f"where this machine's files are out of reach; {fix}."
        )
    if parsed[0] != volume:
        raise InputError(
            f"{flag} {spec!r}: is on the Volume {parsed[0]!r}, but the store is on {volume!r} and the deployed apps "
            f"mount only that one; give modal:{volume}/{example}."
        )
    return parsed[1].strip("/")


def check_paths(store: str, pairs: str, out: str, new_store: str | None = None, *, flags: dict[str, str] | None = None) -> str | None:
    """The store's Volume, with every other path checked to be on it; None for a local store, whose other
    paths must then be local too. Either way the model folder and the new store must not be the store."""
    flags = {"pairs": "pairs", "out": "out", "new_store": "new_store", **(flags or {})}
    named = {"pairs": pairs, "out": out, **({"new_store": new_store} if new_store is not None else {})}
    parsed = parse_spec(store)
    if parsed is None:
        for key, spec in named.items():
            if parse_spec(spec):
                raise InputError(
                    f"{flags[key]} {spec!r}: is on a Modal Volume, but the store {store!r} is a local folder and the loop "
                    "runs where the store is; give a local path, or improve a store on that Volume (modal:VOLUME/PATH)."
                )
        for key in ("out", "new_store"):
            if key in named and Path(named[key]).expanduser().resolve() == Path(store).expanduser().resolve():
                raise InputError(f"{flags[key]} {named[key]}: is the store being improved; give a new folder.")
        _check_pairs(pairs, flags["pairs"])
        if new_store is not None:
            _check_new_store(new_store, flags["new_store"])
        return None
    volume, root = parsed
    paths = {key: volume_path(flags[key], spec, volume, example)
             for (key, spec), example in zip(named.items(), ("feedback/pairs.jsonl", "models/NAME", f"{root}-NAME"))}
    for key in ("out", "new_store"):
        if paths.get(key) == root.strip("/"):
            raise InputError(f"{flags[key]} {named[key]}: is the store being improved; give a new folder on the Volume.")
    return volume


def _check_pairs(pairs: str, flag: str) -> None:
    """A local pairs file must be there before anything is read or trained: a deployment's form offers a default
    path that a fresh clone does not hold, and a relative path is read from the working folder (a worker's: the
    clone `prefect deploy` ran in), which the form does not show."""
    path = Path(pairs).expanduser()
    if path.is_file():
        return
    what = "is a folder, not a file" if path.is_dir() else "no such file"
    where = "" if path.is_absolute() else f" (a relative path is read from the working folder, here {Path.cwd()})"
    raise InputError(
        f"{flag} {pairs}: {what}{where}; give the judged queries: the file `wikiembed serve --feedback` appends to, or a "
        ".jsonl or .parquet file of {\"query\": ..., \"id\": ...} rows (docs/IMPROVE.md), as an absolute path or one "
        "relative to that folder."
    )


def _check_new_store(new_store: str, flag: str) -> None:
    """The new store is a new or empty folder, or a store a stopped round left (the same round resumes it): never a
    folder of someone else's files, which the re-embed would write its store into."""
    path = Path(new_store).expanduser()
    if path.exists() and not path.is_dir():
        raise InputError(f"{flag} {new_store}: is a file; give a new folder for the re-embedded store.")
    if not path.is_dir() or (path / "gens").is_dir() or (path / "current").is_symlink() or (path / "manifest.json").is_file():
        return
    own = sorted(p.name for p in path.iterdir() if p.name != ".lock")
    if own:
        shown = ", ".join(own[:5]) + (f" and {len(own) - 5} more" if len(own) > 5 else "")
        raise InputError(
            f"{flag} {new_store}: a folder holding files of its own ({shown}), neither empty nor a wikiembed store; give a "
            "new folder for the re-embedded store (one per round: the same one resumes a round that stopped). Nothing was "
            "changed there."
        )


def model_mount_path(out: str) -> str:
    """Where the shard containers (which mount the store's Volume) load the fine-tuned model from."""
    return f"{STORE_MOUNT}/{parse_spec(out)[1].strip('/')}"  # type: ignore[index]


def as_spec(path: Any, volume: str) -> Any:
    """A path as a container sees it (under the mount) written as the user names it (modal:VOLUME/PATH)."""
    if isinstance(path, str) and path.startswith(STORE_MOUNT + "/"):
        return f"{PREFIX}{volume}/{path[len(STORE_MOUNT) + 1:]}"
    return path


def finetune_on_volume(store: str, pairs: str, out: str, settings: dict[str, Any]) -> dict[str, Any]:
    """`wikiembed.finetune.finetune` in the `wikiembed-finetune` app, next to the store's Volume: the model
    folder is written there; the record comes back with its paths as specs."""
    from wikiembed.backends.modal_client import FinetuneApp  # lazy: a local store needs no Modal

    volume = check_paths(store, pairs, out, flags={"pairs": "--pairs", "out": "--out"})
    assert volume is not None, "finetune_on_volume takes a store on a Modal Volume"
    root = parse_spec(store)[1].strip("/")  # type: ignore[index]
    record = FinetuneApp(volume).run(root, volume_path("--pairs", pairs, volume, ""), volume_path("--out", out, volume, ""), settings)
    return {**record, **{key: as_spec(record[key], volume) for key in ("out", "store", "pairs_file")}}


def compare_on_volume(old: str, new: str, queries: str) -> dict[str, Any]:
    """`evaluate(old, against=new, queries=...)` in the `wikiembed-finetune` app; every argument is a
    `modal:VOLUME/PATH` on one Volume. The figures come back with the stores and models as specs."""
    from wikiembed.backends.modal_client import FinetuneApp  # lazy: a local store needs no Modal

    volume, old_path = parse_spec(old)  # type: ignore[misc]
    paths = [old_path.strip("/"), volume_path("new_store", new, volume, ""), volume_path("queries", queries, volume, "")]
    result = FinetuneApp(volume).compare(*paths)

    def named(block: dict[str, Any]) -> dict[str, Any]:
        return {**block, "store": as_spec(block["store"], volume), "model": as_spec(block["model"], volume)}

    return {**named(result), "queries_file": as_spec(result.get("queries_file"), volume), "against": named(result["against"])}
