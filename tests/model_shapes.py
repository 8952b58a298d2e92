"""Tiny random-weight models of every shape the engine must reproduce, built offline.

Each is a real sentence-transformers folder (saved by `SentenceTransformer.save`), with the
bundled MiniLM's tokenizer (BERT uncased) or a byte-level BPE trained here on the built-in
sample (the decoder), 2 layers of width 64: seconds to build and to run on a CPU. The
reference for every vector is what sentence-transformers itself makes from the same folder.

`build(name, root)` writes the model `name` under `root` and returns its folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

from wikiembed.model import DEFAULT_MODEL, resolve_model_path

HIDDEN = 64
E5_PROMPTS = {"query": "query: ", "document": "passage: "}
QWEN_QUERY = "Instruct: Given a web search query, retrieve relevant passages that answer the query\nQuery:"


def _bert_base(root: Path) -> Path:
    from transformers import AutoTokenizer, BertConfig, BertModel

    base = root / "bert-base"
    if not (base / "config.json").exists():
        torch.manual_seed(0)
        tokenizer = AutoTokenizer.from_pretrained(str(resolve_model_path(DEFAULT_MODEL)))
        config = BertConfig(
            vocab_size=tokenizer.vocab_size, hidden_size=HIDDEN, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=128, max_position_embeddings=512,
        )
        BertModel(config).save_pretrained(str(base))
        tokenizer.save_pretrained(str(base))
    return base


def _bert(root: Path, name: str, pooling: str | tuple[str, ...], *, include_prompt: bool = True,
          dense: int | None = None, prompts: dict[str, str] | None = None, default_prompt_name: str | None = None,
          normalize: bool = True, truncate_dim: int | None = None, max_seq_length: int = 128) -> Path:
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.base.modules import Dense, Normalize, Transformer
    from sentence_transformers.sentence_transformer.modules import Pooling

    torch.manual_seed(1)
    modules = [Transformer(str(_bert_base(root)), max_seq_length=max_seq_length)]
    modules.append(Pooling(HIDDEN, pooling, include_prompt=include_prompt))
    width = HIDDEN * (len(pooling) if isinstance(pooling, tuple) else 1)
    if dense:
        modules.append(Dense(width, dense, activation_function=torch.nn.Tanh()))
    if normalize:
        modules.append(Normalize())
    model = SentenceTransformer(
        modules=modules, prompts=prompts or {}, default_prompt_name=default_prompt_name, truncate_dim=truncate_dim, device="cpu"
    )
    folder = root / name
    model.save(str(folder))
    return folder


def _decoder(root: Path, name: str) -> Path:
    """A Qwen3-Embedding-shaped model: byte-level BPE, EOS appended, left padding, last-token pooling."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.base.modules import Normalize, Transformer
    from sentence_transformers.sentence_transformer.modules import Pooling
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast, Qwen3Config, Qwen3Model

    from wikiembed.sample import generate_articles

    base = root / f"{name}-base"
    eos = "<|endoftext|>"
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=1200, special_tokens=[eos], initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator((row["text"] for row in generate_articles(300)), trainer=trainer)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"$A {eos}", pair=f"$A {eos} $B {eos}", special_tokens=[(eos, tokenizer.token_to_id(eos))]
    )
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token=eos, pad_token=eos, padding_side="left", model_max_length=256)
    torch.manual_seed(2)
    config = Qwen3Config(
        vocab_size=tokenizer.get_vocab_size(), hidden_size=HIDDEN, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=256,
        eos_token_id=tokenizer.token_to_id(eos), pad_token_id=tokenizer.token_to_id(eos),
    )
    Qwen3Model(config).save_pretrained(str(base))
    fast.save_pretrained(str(base))
    transformer = Transformer(str(base), max_seq_length=256)
    transformer.tokenizer.padding_side = "left"
    model = SentenceTransformer(
        modules=[transformer, Pooling(HIDDEN, "lasttoken"), Normalize()],
        prompts={"query": QWEN_QUERY, "document": ""}, device="cpu",
    )
    folder = root / name
    model.save(str(folder))
    return folder


SHAPES: dict[str, Callable[[Path], Path]] = {
    "mean": lambda root: _bert(root, "mean", "mean"),
    "cls": lambda root: _bert(root, "cls", "cls"),
    "max": lambda root: _bert(root, "max", "max"),
    "mean-sqrt-len": lambda root: _bert(root, "mean-sqrt-len", "mean_sqrt_len_tokens"),
    "weighted-mean": lambda root: _bert(root, "weighted-mean", "weightedmean"),
    "last-token": lambda root: _bert(root, "last-token", "lasttoken"),
    "cls+mean": lambda root: _bert(root, "cls+mean", ("cls", "mean")),
    "e5-prompts": lambda root: _bert(root, "e5-prompts", "mean", prompts=E5_PROMPTS),
    "instructor": lambda root: _bert(root, "instructor", "mean", include_prompt=False, prompts={"query": "Represent the question: ", "document": "Represent the passage: "}),
    "bge-query": lambda root: _bert(root, "bge-query", "cls", prompts={"query": "Represent this sentence for searching relevant passages: "}),
    "dense": lambda root: _bert(root, "dense", "mean", dense=32),
    "matryoshka": lambda root: _bert(root, "matryoshka", "mean", truncate_dim=48),
    "no-normalize": lambda root: _bert(root, "no-normalize", "max", normalize=False),
    "decoder": lambda root: _decoder(root, "decoder"),
}


def build(name: str, root: Path) -> Path:
    folder = root / name
    if not (folder / "modules.json").exists():
        SHAPES[name](root)
    return folder
