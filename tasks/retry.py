"""Which failed task runs Prefect retries (what can heal, never the user's own input), and how
many attempts a failure took."""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

from wikiembed.errors import TransientBackendError, WikiembedError


def retry_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Retry what can heal (timeouts, 429/503, dropped connections, unknown errors); never one of
    our own errors otherwise: a bad input, a refused store, a backend that answered "invalid" or
    a full disk fail the same way again, and a retry could step around a refusal."""
    try:
        state.result()
    except TransientBackendError:
        return True
    except WikiembedError:
        return False
    except Exception:  # noqa: BLE001 - unknown errors get the benefit of the doubt
        return True
    return False


@contextlib.contextmanager
def counted_attempts() -> Iterator[None]:
    """Inside a task: tag an exception with the attempt it ended on (Prefect's run count), so the
    flow records the attempts that happened: one for an error that is never retried."""
    from prefect.runtime import task_run

    try:
        yield
    except Exception as exc:
        exc.attempts = task_run.run_count or 1  # type: ignore[attr-defined]
        raise


def attempts_of(exc: BaseException) -> int:
    """Attempts a failed task made: its tag from `counted_attempts`, else one (it failed outside its body)."""
    return int(getattr(exc, "attempts", 1))
