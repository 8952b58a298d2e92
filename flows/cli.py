"""The `wikiembed` command line: run, status, rerun, export, upload, estimate, search, index, eval, finetune, improve, serve.

Each command is a thin shell over a flow or a plain function. Errors a user
can fix print one message that names the input and the fix (exit 2); a run
with failed shards prints their ids and the rerun command (exit 1).

The commands are a table, `wikiembed.flows.commands.COMMANDS`: one module per group of commands, one
entry per command (its arguments, what runs it, and what `main` does around it); this module builds the
parser from it and runs the entry a command line names.

Touches: argv, stdout/stderr, and whatever the command's flow touches.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path
from typing import Sequence

from wikiembed.flows.commands import COMMANDS
from wikiembed.flows.commands.base import (EXIT_USAGE, Command, check_writable, stop_own_api_server)
# What tests and other modules import from here.
from wikiembed.flows.commands.estimate import ESTIMATE_OPTIONS  # noqa: F401
from wikiembed.flows.commands.run import print_summary as _print_summary  # noqa: F401
from wikiembed.flows.commands.status import building_line, note_building, status_payload  # noqa: F401

# Defaults for a terminal: no Prefect telemetry (it also causes SQLite "database is
# locked" noise). The CLI prints its own progress bar, summary and errors, so
# Prefect's console handler shows only critical records; the Prefect API (the UI)
# still gets every log. PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL=INFO shows them here too.
_ENV_DEFAULTS = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL": "CRITICAL",
    "PREFECT_SERVER_LOGGING_LEVEL": "WARNING",
    "TRANSFORMERS_VERBOSITY": "error",
    "TOKENIZERS_PARALLELISM": "true",
}

# How long a stop (Ctrl-C, SIGTERM) waits for the temporary Prefect server to exit.
STOP_SERVER_WAIT_S = 2.0
# The command table (`wikiembed.flows.commands`), by name.
_BY_NAME = {command.name: command for command in COMMANDS}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="wikiembed", description="Embed a text corpus into a Hugging Face dataset, resumably.")
    sub = p.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.arguments(sub.add_parser(command.name, help=command.help))
    return p


def _check_outputs(args: argparse.Namespace, command: Command) -> None:
    """Where a command will write, checked before it does any work: a JSON file named by a folder, or a path on a
    read-only disk, is refused with one message now, not with a traceback after the work (the improve loop's whole
    round). The store an index is written into counts too."""
    from wikiembed.errors import InputError

    for flag, dest in (("--json", "json_path"), ("--summary-json", "summary_json")):
        path = getattr(args, dest, None)
        if not path:
            continue
        target = Path(path).expanduser()
        if target.is_dir():
            raise InputError(f"{flag} {path}: is a folder; give a file name for the JSON, e.g. {target / 'result.json'}.")
        check_writable(target.parent, flag, path)
    if command.check_outputs is not None:
        command.check_outputs(args)


def _stop_on_signals() -> None:
    """Ctrl-C and SIGTERM stop at once: one line, the temporary server stopped, exit 128 + signal.

    What is on disk stays resumable as after a SIGKILL: data and markers are written to temp
    names and renamed, the store's flock dies with the process, and the temp files this process
    was writing are removed (the next run removes those of dead worker processes)."""

    from wikiembed import atomic

    def stop(signum: int, frame: object) -> None:
        from wikiembed.progress import Progress

        Progress.mute()  # the stop message is the last line, not a progress bar drawn after it
        what = "interrupted" if signum == signal.SIGINT else f"stopped by {signal.Signals(signum).name}"
        print(f"wikiembed: {what}; finished shards are kept, run the same command to resume.", file=sys.stderr, flush=True)
        atomic.remove_unfinished()
        stop_own_api_server(wait_s=STOP_SERVER_WAIT_S)
        sys.stdout.flush()
        os._exit(128 + signum)  # don't wait for shard threads: their work is redone on resume

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)


def main(argv: Sequence[str] | None = None) -> int:
    for key, value in _ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)
    args = _parser().parse_args(argv)
    from pydantic import ValidationError

    from wikiembed.errors import WikiembedError

    command = _BY_NAME[args.command]
    if command.quiet_downloads:
        # Our progress bar is the one to watch; transformers' weight-loading bar would break its line.
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if command.stops_on_signals:
        _stop_on_signals()
    try:
        _check_outputs(args, command)
        from wikiembed.store_location import locate

        if command.reads_vectors(args):
            for spec in (args.store, getattr(args, "against", None)):
                if spec:
                    locate(spec).check_vectors_here(args.command)
            note_building(args.command, args.store)
        code = command.run(args)
        sys.stdout.flush()  # a reader that left shows up here, not as a traceback in Python's exit handler
        return code
    except BrokenPipeError:
        # `wikiembed search ... | head -1`: the reader took what it wanted and closed the pipe. Nothing
        # else may reach it, not even the final flush, so stdout goes to /dev/null; the exit status
        # is the shell's for a process ended by SIGPIPE.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE
    except WikiembedError as exc:
        print(f"wikiembed {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ValidationError as exc:
        problems = "; ".join(f"--{[p for p in e['loc'] if isinstance(p, str)][-1].replace('_', '-')}: {e['msg']}" for e in exc.errors())
        print(f"wikiembed {args.command}: error: {problems}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("wikiembed: interrupted; finished shards are kept, run the same command to resume.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
