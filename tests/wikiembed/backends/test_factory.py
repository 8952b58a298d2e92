"""The backends this process opens are one table (`factory.OPENERS`): another backend is one entry there, opened
once per process like the others, and a name the table lacks is refused with the names it has."""

from __future__ import annotations

import pytest

from wikiembed.backends import factory
from wikiembed.errors import BackendError
from wikiembed.model import DEFAULT_MODEL


def test_a_backend_is_one_entry_of_the_openers_table(monkeypatch):
    opened: list[factory.OpenRequest] = []
    stand_in = object()

    def open_stand_in(request: factory.OpenRequest):  # noqa: ANN202
        opened.append(request)
        return stand_in

    monkeypatch.setitem(factory.OPENERS, "stand-in", factory.Opener("a test's stand-in", open_stand_in))
    backend = factory.open_backend("stand-in", DEFAULT_MODEL, device="cpu", clients=2)
    try:
        assert backend is stand_in and len(opened) == 1
        assert (opened[0].model, opened[0].device, opened[0].clients) == (DEFAULT_MODEL, "cpu", 2)
        assert factory.open_backend("stand-in", DEFAULT_MODEL, device="cpu", clients=2) is backend and len(opened) == 1
        with pytest.raises(BackendError, match=r"the backends opened here are local \(the PyTorch engine\), "
                                               r"tei \(servers by URL\) and stand-in \(a test's stand-in\)\.$"):
            factory.open_backend("modal", DEFAULT_MODEL)
    finally:
        factory.release(backend)


def test_a_name_no_opener_has_is_refused_with_the_ones_there_are():
    with pytest.raises(BackendError) as refused:
        factory.open_backend("modal", DEFAULT_MODEL)
    assert str(refused.value) == (
        "--backend 'modal' embeds no texts in this process (whole shards go where its executor runs them); "
        "the backends opened here are local (the PyTorch engine) and tei (servers by URL).")
    with pytest.raises(BackendError, match=r"--backend tei needs --tei-url"):
        factory.open_backend("tei", DEFAULT_MODEL)
