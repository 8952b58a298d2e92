"""Fault injection for the embed step, installed by tests only (never a user-facing option).

Wraps the real engine: every `fail_every`-th call fails transiently (the kinds
TEI and Modal produce; 5 = a fifth of all calls, retries included), and/or any
call whose texts contain a poison string fails permanently, as an input that a
backend always rejects would.
"""

from __future__ import annotations

import random
import threading

from wikiembed.backends.factory import open_backend
from wikiembed.errors import BackendError, TransientBackendError

TRANSIENT_ERRORS = (
    "503 Unhealthy: model is loading",
    "429 Overloaded: too many requests",
    "timed out after 30 s",
    "connection dropped by peer",
)


class FaultyBackend:
    def __init__(self, inner, *, fail_every: int = 0, poison: str | None = None, seed: int = 0) -> None:
        self.inner = inner
        self.model_id, self.dim, self.max_tokens, self.kind = inner.model_id, inner.dim, inner.max_tokens, inner.kind
        self.device = getattr(inner, "device", None)
        self.fail_every = fail_every
        self.poison = poison
        self.rng = random.Random(seed)
        self.calls = self.injected = self.retries = 0
        self._lock = threading.Lock()

    def embed(self, texts, prompt=""):
        with self._lock:
            self.calls += 1
            fail = bool(self.fail_every) and self.calls % self.fail_every == 2 % self.fail_every
            if fail:
                self.injected += 1
        if fail:
            raise TransientBackendError(f"injected: {self.rng.choice(TRANSIENT_ERRORS)}")
        if self.poison and any(self.poison in t for t in texts):
            raise BackendError(f"injected: input containing {self.poison!r} is always rejected")
        return self.inner.embed(texts, prompt)

    def close(self) -> None:
        pass


def install(monkeypatch, **faults) -> FaultyBackend:
    """Route the run's backend through a FaultyBackend around the real local engine."""
    import wikiembed.backends.factory as factory
    import wikiembed.flows.embed_dataset as flow_module

    faulty = FaultyBackend(open_backend("local", "sentence-transformers/all-MiniLM-L6-v2"), **faults)
    monkeypatch.setattr(factory, "open_backend", lambda **_: faulty)  # what every executor opens through
    # retries stay real, only faster
    monkeypatch.setattr(flow_module, "embed_task", flow_module.embed_task.with_options(retry_delay_seconds=0.2))
    return faulty
