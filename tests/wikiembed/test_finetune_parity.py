"""The fine-tune's first check: the engine must reproduce the model's own vectors, or a fine-tune of it could not
re-embed the store. The bundled model passes, and so does the same model with a Dense head and a document prompt
(the engine runs both); a module the engine does not run is refused by name."""

from __future__ import annotations

import pytest

from wikiembed.errors import InputError
from wikiembed.finetune import _check_engine_parity
from wikiembed.model import DEFAULT_MODEL, resolve_model_path

TEXTS = ["The break statement leaves the innermost loop.", "Floating point literals have an exponent."]


def test_the_engines_shapes_pass_and_a_module_it_does_not_run_is_refused(tmp_path):
    import json

    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Dense, Normalize

    base = SentenceTransformer(str(resolve_model_path(DEFAULT_MODEL)), device="cpu")
    _check_engine_parity(DEFAULT_MODEL, base, TEXTS, "cpu")
    torch.manual_seed(0)
    headed = SentenceTransformer(modules=[base[0], base[1], Dense(384, 384), Normalize()], device="cpu",
                                 prompts={"document": "passage: ", "query": "query: "})
    folder = tmp_path / "minilm-dense"
    headed.save(str(folder))
    _check_engine_parity(str(folder), SentenceTransformer(str(folder), device="cpu"), TEXTS, "cpu")
    modules = json.loads((folder / "modules.json").read_text())
    modules.insert(2, {"idx": 2, "name": "2", "path": "2_LayerNorm", "type": "sentence_transformers.models.LayerNorm"})
    (folder / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(InputError, match="LayerNorm"):
        _check_engine_parity(str(folder), None, TEXTS, "cpu")
