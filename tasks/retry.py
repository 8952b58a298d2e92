"""Which failed task runs Prefect retries: what can heal, never the user's own input."""

from __future__ import annotations

from typing import Any

from wikiembed.errors import BackendError, InputError, TransientBackendError


def retry_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Retry what can heal (timeouts, 429/503, dropped connections, a store hiccup); not a bad
    input or a backend that answered "invalid", which would fail the same way again."""
    try:
        state.result()
    except TransientBackendError:
        return True
    except (InputError, BackendError):
        return False
    except Exception:  # noqa: BLE001 - unknown errors get the benefit of the doubt
        return True
    return False
