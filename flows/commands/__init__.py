"""The `wikiembed` commands: one module per group, each command one `Command` entry (name, help line, its
arguments, what runs it, and what `main` does around it), listed in `COMMANDS` in the order `wikiembed --help`
shows them. `wikiembed.flows.cli` builds the parser from this table and runs the entry a command line names.

| module | commands |
| --- | --- |
| `run.py` | run, rerun (and the run summary they print) |
| `status.py` | status |
| `publish.py` | export, upload |
| `estimate.py` | estimate |
| `search.py` | search, index, eval |
| `improve.py` | finetune, improve |
| `serve.py` | serve |

A new command is one `Command` in the module of its group (or a new module) and its place in `COMMANDS`.
"""

from __future__ import annotations

from wikiembed.flows.commands import estimate, improve, publish, run, search, serve, status
from wikiembed.flows.commands.base import Command

COMMANDS: tuple[Command, ...] = (
    run.RUN, status.STATUS, run.RERUN, publish.EXPORT, publish.UPLOAD, estimate.ESTIMATE, search.SEARCH, search.INDEX,
    search.EVAL, improve.FINETUNE, improve.IMPROVE, serve.SERVE,
)
