"""A `datasets` `save_to_disk` folder (a Dataset, or a DatasetDict and `--split`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import pyarrow as pa

from wikiembed.errors import InputError
from wikiembed.sources.base import READ_BATCH, RowReport, Source, SourceReader, check_columns, hash_files, register

# Files `save_to_disk` writes at a folder's top, one of which marks it.
_MARKERS = ("dataset_info.json", "dataset_dict.json", "state.json")


class SavedDatasetReader(SourceReader):
    kind = "disk"
    checks_first_row = False  # the dataset's columns are checked before its first batch

    def claims_folder(self, folder: Path) -> bool:
        return any((folder / name).exists() for name in _MARKERS)

    def fingerprint(self, source: Source, digest: Any) -> None:
        root = Path(source.location)
        hash_files(root, sorted(p for p in root.rglob("*") if p.is_file()), digest)

    def batches(self, source: Source, report: RowReport) -> Iterator[list[dict]]:
        return (table.to_pylist() for table in self.tables(source, READ_BATCH))

    def tables(self, source: Source, batch_size: int) -> Iterator[pa.Table]:
        import datasets

        try:
            ds = datasets.load_from_disk(source.location)
        except Exception as exc:
            raise InputError(f"--source {source.location}: not a datasets save_to_disk folder ({exc}).") from exc
        if isinstance(ds, datasets.DatasetDict):
            if source.split not in ds:
                raise InputError(f"--source {source.location}: no split {source.split!r}; it has {sorted(ds)}. Use --split.")
            ds = ds[source.split]
        check_columns(source, ds.column_names, source.location)
        yield from ds.with_format("arrow").iter(batch_size=batch_size)


register(SavedDatasetReader())
