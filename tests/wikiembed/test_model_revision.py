"""Model identity: a revision names the model's exact files, weights included, cheaply on reruns."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import wikiembed.model_revision as revision_module
from wikiembed.model import model_info
from wikiembed.model_revision import model_revision


def _folder(root: Path, weights: bytes = b"\x00" * 64) -> Path:
    root.mkdir(parents=True)
    (root / "config.json").write_text(json.dumps({"hidden_size": 8, "max_position_embeddings": 32}))
    (root / "model.safetensors").write_bytes(weights)
    (root / "1_Pooling").mkdir()
    (root / "1_Pooling" / "config.json").write_text("{}")
    return root


def test_revision_changes_with_the_weights_only(tmp_path: Path) -> None:
    folder = _folder(tmp_path / "m")
    before = model_info(str(folder)).revision
    assert before.startswith("sha256:") and model_revision(folder) == before
    (folder / "model.safetensors").write_bytes(b"\x01" + b"\x00" * 63)  # a fine-tune saved over it
    after = model_info(str(folder)).revision
    assert after != before
    (folder / "model.safetensors").write_bytes(b"\x00" * 64)
    assert model_revision(folder) == before  # the content, not the time it was written


def test_unchanged_files_are_not_read_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = _folder(tmp_path / "m")
    first = model_revision(folder)
    opened: list[str] = []
    real_open = Path.open

    def counting_open(self: Path, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003
        if folder in self.parents:
            opened.append(self.name)
        return real_open(self, *args, **kwargs)

    monkeypatch.setattr(Path, "open", counting_open)
    assert model_revision(folder) == first and opened == []  # every file's hash came from the stat cache
    (folder / "model.safetensors").write_bytes(b"\x02" * 64)
    opened.clear()  # (writing it opened it)
    assert model_revision(folder) != first and opened == ["model.safetensors"]  # only the changed file is read


def test_hub_snapshot_is_named_by_its_commit(tmp_path: Path) -> None:
    commit = "0123456789abcdef0123456789abcdef01234567"
    folder = _folder(tmp_path / "models--org--name" / "snapshots" / commit)
    assert model_revision(folder) == commit


def test_an_unwritable_cache_only_costs_rehashing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = _folder(tmp_path / "m")
    expected = model_revision(folder)
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    monkeypatch.setenv("WIKIEMBED_CACHE", str(blocker / "cache"))
    assert revision_module.cache_dir() == blocker / "cache"
    assert model_revision(folder) == expected
