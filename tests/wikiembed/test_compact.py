"""Compact forms: option checks, encodings that map back, and scorers that rank like their definitions."""

from __future__ import annotations

import numpy as np
import pytest

from wikiembed.compact import (
    Form,
    Scorer,
    calibrate_int8,
    encode,
    form_by_name,
    parse_compact,
    truncate,
)
from wikiembed.errors import InputError


def _unit(n: int, dim: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_options_name_columns_in_one_order():
    spec = parse_compact(128, "binary,int8,float32,float16", 384)
    assert spec is not None and spec.precisions == ("float32", "float16", "int8", "binary")
    assert [f.column for f in spec.forms(384)] == [
        "embedding_128_float32", "embedding_128_float16", "embedding_128_int8", "embedding_128_binary"
    ]
    both = parse_compact("128,384", "int8", 384)
    assert both.dimensions == (384, 128) and [f.name for f in both.forms(384)] == ["int8", "int8@128"]
    full = parse_compact(None, ["int8", "binary"], 384)
    assert [(f.name, f.column, f.bytes_per_vector) for f in full.forms(384)] == [
        ("int8", "embedding_int8", 384), ("binary", "embedding_binary", 48)
    ]
    assert parse_compact(None, ["float32"], 384) is None  # float32 at full size is `embedding` itself
    assert parse_compact(384, None, 384) is None
    assert parse_compact([384], "float32", 384) is None


@pytest.mark.parametrize(
    "dims, precision, needle",
    [(None, "int4", "--precision int4"), (100, None, "--dimensions 100"), (512, None, "--dimensions 512"), (4, None, "multiples of 8"), ("1x", None, "whole numbers")],
)
def test_bad_options_name_the_flag(dims, precision, needle):
    with pytest.raises(InputError, match=needle.replace("-", r"\-")):
        parse_compact(dims, precision, 384)


def test_form_by_name_lists_what_the_store_has():
    spec = parse_compact(None, "int8", 384)
    assert form_by_name("int8", spec, 384).column == "embedding_int8"
    with pytest.raises(InputError, match="float32, int8"):
        form_by_name("binary", spec, 384)


def test_truncation_renormalizes_and_int8_maps_back():
    x = _unit(500, 64)
    t = truncate(x, 32)
    assert np.allclose(np.linalg.norm(t, axis=1), 1.0, atol=1e-6)
    assert np.allclose(t, x[:, :32] / np.linalg.norm(x[:, :32], axis=1, keepdims=True), atol=1e-6)
    cal = calibrate_int8(x, [32])
    codes = encode(x, Form("int8", 32, 64), cal)
    assert codes.dtype == np.int8 and codes.shape == (500, 32)
    lo, hi = np.array(cal.ranges["32"].min), np.array(cal.ranges["32"].max)
    back = (codes.astype(np.float32) + 128) * (hi - lo) / 255 + lo
    assert np.abs(back - t).max() <= (hi - lo).max() / 255 / 2 + 1e-6  # half a step at most


def test_binary_is_packed_sign_bits():
    x = _unit(10, 64)
    bits = encode(x, Form("binary", 64, 64))
    assert bits.dtype == np.uint8 and bits.shape == (10, 8)
    assert np.array_equal(np.unpackbits(bits, axis=1).astype(bool), x > 0)


def test_scorers_match_their_definitions():
    docs, queries = _unit(300, 64, 1), _unit(5, 64, 2)
    cal = calibrate_int8(docs, [64])
    int8 = Form("int8", 64, 64)
    codes = encode(docs, int8, cal)
    lo, hi = np.array(cal.ranges["64"].min), np.array(cal.ranges["64"].max)
    dequant = (codes.astype(np.float64) + 128) * (np.maximum(hi - lo, 1e-12) / 255) + lo
    assert np.allclose(Scorer(queries, int8, cal).score(codes), queries @ dequant.T, atol=1e-4)

    binary = Form("binary", 64, 64)
    bits = encode(docs, binary)
    scorer = Scorer(queries, binary)
    hamming = np.array([[np.count_nonzero((q > 0) != (d > 0)) for d in docs] for q in queries])
    assert np.allclose(scorer.score(bits), 1 - 2 * hamming / 64, atol=1e-6)
    signs = np.where(docs > 0, 1.0, -1.0)
    assert np.allclose(scorer.rescore(bits), queries @ signs.T / 8, atol=1e-5)

    half = Form("float16", 64, 64)
    assert np.allclose(Scorer(queries, half).score(encode(docs, half)), queries @ docs.T, atol=2e-3)
