"""What every `wikiembed` command shares: the `Command` entry of the table (`wikiembed.flows.commands`), the exit
codes, the flags made from settings models, the JSON a command writes, and running a flow in a thread of its own
with the temporary Prefect API server it talks to.
"""

from __future__ import annotations

import argparse
import atexit
import contextvars
import json
import os
import threading
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from wikiembed.results import JsonRecord

EXIT_OK, EXIT_FAILED_SHARDS, EXIT_USAGE = 0, 1, 2


def never(args: argparse.Namespace) -> bool:
    return False


def always(args: argparse.Namespace) -> bool:
    return True


@dataclass(frozen=True)
class Command:
    """One `wikiembed` command: its name and help line, what adds its arguments, what runs it (its exit code),
    and what `main` does around it."""

    name: str
    help: str
    arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    # Loads a model or reads a store: our progress bar (or none) is the one to watch, not the Hub's download bars.
    quiet_downloads: bool = False
    # Runs a flow: Ctrl-C and SIGTERM stop it at once, finished shards kept.
    stops_on_signals: bool = False
    # Reads every vector of its store(s) where it runs (search, eval, ...): refused for a store that is not here.
    reads_vectors: Callable[[argparse.Namespace], bool] = never
    # Checks where it will write besides `--json`, before any work.
    check_outputs: Callable[[argparse.Namespace], None] | None = None


def add_run_options(parser: argparse.ArgumentParser, only: Sequence[str] | None = None) -> None:
    """One flag per run option (or per option in `only`), generated from its definition in `wikiembed.settings`:
    the name (--chunk-size for chunk_size), choices, type, description and default all come from there."""
    from wikiembed.settings import option_fields

    for name, field in option_fields():
        if only is not None and name not in only:
            continue
        add_field_option(parser, name, field)


def add_model_options(parser: argparse.ArgumentParser, model: Any, skip: Sequence[str] = ()) -> None:
    """One flag per field of a pydantic settings model (`FinetuneSettings`, `ImproveSettings`), as for the run options."""
    for name, field in model.model_fields.items():
        if name not in skip:
            add_field_option(parser, name, field)


def add_field_option(parser: argparse.ArgumentParser, name: str, field: Any) -> None:
    """The flag of one settings field: its name (--chunk-size for chunk_size), choices, type, description and default."""
    kind = field.annotation
    if typing.get_origin(kind) in (typing.Union, types.UnionType):  # X | None: the flag takes an X
        kind = next(a for a in typing.get_args(kind) if a is not type(None))
    kwargs: dict[str, Any] = {"default": argparse.SUPPRESS, "required": field.is_required()}
    if typing.get_origin(kind) is typing.Literal:
        kwargs["choices"] = list(typing.get_args(kind))
    elif kind in (int, float):
        kwargs["type"] = kind
    elif kind is bool:  # a switch: present means true
        kwargs["action"] = "store_true"
    default = None if field.is_required() else field.get_default(call_default_factory=True)
    shown = f" (default: {default})" if default not in (None, [], False) else ""
    kwargs["help"] = f"{field.description}{shown}".replace("%", "%%")
    parser.add_argument(f"--{name.replace('_', '-')}", **kwargs)


def given(args: argparse.Namespace, model: Any, skip: Sequence[str] = ()) -> dict[str, Any]:
    """The options of a settings model that were given on the command line (the rest take the model's defaults)."""
    return {name: getattr(args, name) for name in model.model_fields if name not in skip and hasattr(args, name)}


def split_list(value: str | None) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()] if value else []


def write_json(path: str | None, payload: dict[str, Any] | JsonRecord) -> None:
    """Write a command's result as JSON (a record as its `to_json()`)."""
    if isinstance(payload, JsonRecord):
        payload = payload.to_json()
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(payload, indent=1), encoding="utf-8")


def check_writable(path: Path, flag: str, given: str, why: str = "") -> None:
    """Refuse a path that cannot be written: the folder it is in (or the nearest one that exists) is read-only."""
    from wikiembed.errors import InputError

    folder = path if path.is_dir() else path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise InputError(f"{flag} {given}: {folder} is a file, not a folder; give a path in a folder.")
    if not os.access(folder, os.W_OK | os.X_OK):
        because = f" ({why})" if why else ""
        raise InputError(f"{flag} {given}: cannot be written{because}: {folder} is read-only here (a read-only mount, or "
                         "no write permission); give a path on a writable disk, or make it writable.")


def in_flow_thread(flow: Callable[..., dict[str, Any]], /, summary_on_failure: bool = True, **params: Any) -> dict[str, Any]:
    """Run a flow in a worker thread and return its summary (also when shards failed, unless `summary_on_failure` is
    false: then `ShardsFailed` is raised), so the main thread keeps the signals: Prefect installs no SIGTERM handler off
    the main thread, and a stop never waits for a shard in flight."""
    from wikiembed.errors import ShardsFailed

    start_own_api_server()
    outcome: dict[str, Any] = {}
    context = contextvars.copy_context()

    def target() -> None:
        try:
            outcome["summary"] = context.run(flow, **params)
        except ShardsFailed as exc:  # the flow run ended Failed; its error carries what it finished
            if summary_on_failure:
                outcome["summary"] = exc.summary
            else:
                outcome["error"] = exc
        except BaseException as exc:  # noqa: BLE001 - re-raised in the main thread
            outcome["error"] = exc

    thread = threading.Thread(target=target, name="wikiembed-flow", daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(0.5)  # short waits: signal handlers run between them
    if "error" in outcome:
        raise outcome["error"]
    return outcome["summary"]


_OWN_SERVER: list[Any] = []  # the temporary Prefect API server this process started, if any


def start_own_api_server() -> None:
    """Start the Prefect API this run talks to, unless one is configured (see api_server.py)."""
    from wikiembed.flows.api_server import ApiServer, needs_own_server

    if not _OWN_SERVER and needs_own_server():
        server = ApiServer()
        _OWN_SERVER.append(server)
        # Stopped at exit after Prefect's own exit handlers (registered later, so run earlier)
        # have sent their last logs and events: stopping it first would make them retry for a minute.
        atexit.register(stop_own_api_server)
        server.start()


def stop_own_api_server(wait_s: float = 5.0) -> None:
    while _OWN_SERVER:
        _OWN_SERVER.pop().stop(wait_s=wait_s)
