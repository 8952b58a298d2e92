"""How a flow ends on a user's mistake: a `WikiembedError` (what, why, the fix) ends the flow run Failed
with its message (`ends_failed_on_user_errors`), and Prefect's flow and task run loggers show such an
error as its message, never as a traceback (a log filter, installed when this module is imported).

Touches: the `prefect.flow_runs` and `prefect.task_runs` loggers (their filters).
"""

from __future__ import annotations

import functools
import inspect
import logging
from typing import Any, Callable

from prefect import get_run_logger
from prefect.states import Failed

from wikiembed.errors import WikiembedError


class _NoTracebackForUserErrors(logging.Filter):
    """A user's mistake or a failed shard (a `WikiembedError`) is logged as its message, never as a traceback.

    Prefect logs an exception a task or flow raised with its traceback, and the engine that runs a
    deployment's flow run logs "Engine execution exited with unexpected exception" with the error
    of every Failed state the flow returned (it re-raises it to end the process). For our errors the
    message says all (what, why, the fix) and the flow run's state carries it: the traceback goes,
    and so does the engine's record, which is no news after the run's own "Finished in state Failed"."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if not isinstance(error, WikiembedError):
            return True
        if record.getMessage().startswith("Engine execution exited with unexpected exception"):
            return False
        record.exc_info, record.exc_text = None, None
        return True


for _name in ("prefect.flow_runs", "prefect.task_runs"):
    if not any(isinstance(f, _NoTracebackForUserErrors) for f in logging.getLogger(_name).filters):
        logging.getLogger(_name).addFilter(_NoTracebackForUserErrors())


def ends_failed_on_user_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """A flow function that ends its run Failed with the message of a `WikiembedError` it raised, instead of
    raising it: the run's state says what to fix and its log holds that line, not a traceback. A caller of
    the flow still gets the error raised (Prefect raises a Failed state's error), so the CLI's messages and
    exit codes are the same."""

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except WikiembedError as exc:
            get_run_logger().error("%s", exc)
            return Failed(message=str(exc), data=exc)

    # Prefect reads the parameters' types from the signature, in this module's names: resolved in fn's own.
    run.__signature__ = inspect.signature(fn, eval_str=True)  # type: ignore[attr-defined]
    return run
