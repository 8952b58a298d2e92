"""Vectors read by row from a data file's pages (wikiembed.vector_rows), against pyarrow's own read."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from wikiembed.embedding import writer_options
from wikiembed.vector_rows import RowVectors

DIM = 100  # not a divisor of the writer's batches of 1,024 values: pages still end at a row's end


def _table(rows: int, seed: int = 0, null_at: int | None = None) -> tuple[pa.Table, np.ndarray]:
    vectors = np.random.default_rng(seed).standard_normal((rows, DIM)).astype(np.float32)
    column = pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), DIM)
    if null_at is not None:
        mask = np.zeros(rows, dtype=bool)
        mask[null_at] = True
        column = pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), DIM, mask=pa.array(mask))
    table = pa.table({"id": [f"a{i}" for i in range(rows)], "text": [f"text {i}" * (i % 7) for i in range(rows)],
                      "embedding": column})
    return table, vectors


def _write(path: Path, table: pa.Table, **options) -> Path:  # noqa: ANN003
    pq.write_table(table, path, **{**writer_options(table.schema), **options})
    return path


@pytest.mark.parametrize("page_version", ["1.0", "2.0"])
def test_rows_over_many_pages_and_row_groups_read_as_pyarrow_reads_them(tmp_path, page_version):
    table, vectors = _table(3000)
    # Small pages and row groups: a row's page and group are found from the page headers.
    path = _write(tmp_path / "d.parquet", table, row_group_size=700, data_page_size=6000, data_page_version=page_version)
    meta = pq.ParquetFile(path).metadata
    assert meta.num_row_groups == 5
    by_row = RowVectors.open(path)
    assert by_row is not None and by_row.rows == 3000 and by_row.dim == DIM
    assert len(by_row._pages.offsets) > 5 * 5  # several pages a row group
    rows = np.random.default_rng(1).integers(0, 3000, 500)
    rows[:4] = [0, 2999, 699, 700]  # the first and last rows, and both sides of a row group's edge
    assert np.array_equal(by_row.read(rows), vectors[rows])
    assert by_row.read(np.array([], dtype=np.int64)).shape == (0, DIM)
    with pytest.raises(IndexError, match="rows outside 0..2999"):
        by_row.read(np.array([3000]))


def test_page_headers_with_statistics_and_checksums_are_walked(tmp_path):
    table, vectors = _table(400)
    path = _write(tmp_path / "d.parquet", table, write_statistics=True, write_page_checksum=True, write_page_index=True,
                  data_page_size=9000)
    by_row = RowVectors.open(path)
    assert by_row is not None
    assert np.array_equal(by_row.read(np.arange(400)[::-1]), vectors[::-1])


@pytest.mark.parametrize("options,null_at", [
    ({"compression": "zstd"}, None),  # a data file written before `embedding` was kept plain
    ({"use_dictionary": True}, None),  # a dictionary page first
    ({}, 17),  # a null vector: the rows after it are not where plain arithmetic puts them
], ids=["compressed", "dictionary", "null"])
def test_files_not_laid_out_for_it_are_not_read_by_row(tmp_path, options, null_at):
    table, _ = _table(300, null_at=null_at)
    assert RowVectors.open(_write(tmp_path / "d.parquet", table, **options)) is None


def test_a_column_of_another_kind_is_not_read_by_row(tmp_path):
    table = pa.table({"embedding": pa.FixedSizeListArray.from_arrays(pa.array(np.zeros(40, dtype=np.float16)), 4)})
    assert RowVectors.open(_write(tmp_path / "d.parquet", table)) is None
    assert RowVectors.open(tmp_path / "missing.parquet") is None


def test_data_files_keep_embedding_plain_and_other_columns_compressed():
    schema = pa.schema([("id", pa.string()), ("embedding", pa.list_(pa.float32(), 4)), ("embedding_int8", pa.list_(pa.int8(), 4))])
    assert writer_options(schema)["compression"] == {"id": "zstd", "embedding.list.element": "none",
                                                     "embedding_int8.list.element": "zstd"}
