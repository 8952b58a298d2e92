"""The smoke runs of bench/serve.py and bench/improve_manpages.py, the service and the improve loop (tests/bench/
test_smoke.py: SMOKE and PART), in a file of their own so that `make test`'s xdist workers can share the smoke runs
out."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.bench.test_smoke import keys_of, run_smoke


@pytest.mark.slow
@pytest.mark.parametrize("key", keys_of("loops"))
def test_smoke_run(key: str, tmp_path: Path, request: pytest.FixtureRequest):
    run_smoke(key, tmp_path, request)
