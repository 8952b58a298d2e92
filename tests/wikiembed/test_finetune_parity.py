"""The fine-tune's first check: the engine must reproduce the model's own vectors, or a fine-tune of it could not
re-embed the store. The bundled model passes; the same model with a Dense head (which the engine does not run) is
refused by name."""

from __future__ import annotations

import pytest

from wikiembed.errors import InputError
from wikiembed.finetune import _check_engine_parity
from wikiembed.model import DEFAULT_MODEL, resolve_model_path

TEXTS = ["The break statement leaves the innermost loop.", "Floating point literals have an exponent."]


def test_the_bundled_model_passes_and_one_with_a_dense_head_is_refused(tmp_path):
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Dense, Normalize

    base = SentenceTransformer(str(resolve_model_path(DEFAULT_MODEL)), device="cpu")
    _check_engine_parity(DEFAULT_MODEL, base, TEXTS, "cpu")
    torch.manual_seed(0)
    headed = SentenceTransformer(modules=[base[0], base[1], Dense(384, 384), Normalize()], device="cpu")
    folder = tmp_path / "minilm-dense"
    headed.save(str(folder))
    with pytest.raises(InputError, match="the engine's vectors differ from sentence-transformers' own"):
        _check_engine_parity(str(folder), SentenceTransformer(str(folder), device="cpu"), TEXTS, "cpu")
