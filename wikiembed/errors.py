"""One error hierarchy for the whole project.

Every message names the bad input and says how to fix it; the CLI prints the
message (never a traceback) and exits non-zero. Nothing here touches I/O.
"""

from __future__ import annotations


class WikiembedError(Exception):
    """Base class: a problem the user can fix, with a message that says how."""


class InputError(WikiembedError):
    """A source, option or file the user gave is wrong (missing, unreadable, bad schema)."""


class StoreError(WikiembedError):
    """The run store cannot be read or written (permissions, full disk, foreign manifest)."""


class BackendError(WikiembedError):
    """An embedding backend failed for good (bad model, 422 from TEI, wrong vector shape)."""


class TransientBackendError(BackendError):
    """A backend failure worth retrying (timeout, 429, 503, dropped connection)."""


class UploadError(WikiembedError):
    """Publishing the dataset failed (missing/rejected token, Hub error)."""


class ShardsFailed(WikiembedError):
    """A run ended with shards not done; the message says how many, why, and the rerun to run.

    Carries the run's summary as its JSON (`wikiembed.results.RunSummary.to_json()`, what a flow run's
    state holds): finished shards stay finished, so a caller (the CLI) still reports what was done.
    """

    def __init__(self, message: str, summary: dict) -> None:
        super().__init__(message, summary)  # both in args, so the error pickles (Prefect may persist it)
        self.summary = summary

    def __str__(self) -> str:
        return str(self.args[0])
