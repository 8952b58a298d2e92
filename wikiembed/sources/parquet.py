"""A local parquet file, or a folder of them (`*.parquet`, read in name order)."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pyarrow as pa

from wikiembed.errors import InputError
from wikiembed.sources.base import (
    READ_BATCH, RowReport, Source, SourceReader, check_columns, data_files, register, streamed, their_names,
)


class ParquetReader(SourceReader):
    kind = "parquet"
    file_hint = ".parquet"
    folder_label = "parquet files"
    checks_first_row = False  # the file's schema is checked before its first batch

    def takes_file(self, path: Path) -> bool:
        return path.suffix.lower() == ".parquet"

    def folder_files(self, folder: Path) -> list[Path]:
        return data_files(folder, ("*.parquet",))

    def batches(self, source: Source, report: RowReport) -> Iterator[list[dict]]:
        return (table.to_pylist() for table in self.tables(source, READ_BATCH))

    def tables(self, source: Source, batch_size: int) -> Iterator[pa.Table]:
        for f in self.files(source):
            try:
                pf = streamed(f)
                names = pf.schema_arrow.names
                check_columns(source, names, f)
                wanted = [c for c in their_names(source) if c in names]
                # One thread: a batch is small, and sharing its decoding out cost more CPU than it saved.
                for batch in pf.iter_batches(batch_size=batch_size, columns=wanted, use_threads=False):
                    yield pa.Table.from_batches([batch])
            except (pa.ArrowInvalid, OSError) as exc:
                raise InputError(f"--source {f}: not a readable parquet file ({exc}); re-export it or remove it.") from exc


register(ParquetReader())
