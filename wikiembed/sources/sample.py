"""`--source sample:N`: the built-in Wikipedia-shaped sample (`wikiembed.sample`), no network."""

from __future__ import annotations

from typing import Any, Iterator

from wikiembed import sample as generator
from wikiembed.errors import InputError
from wikiembed.sources.base import RowReport, Source, SourceReader, batched, register


class SampleReader(SourceReader):
    kind = "sample"
    checks_first_row = False  # its rows always have every column

    def parse(self, spec: str, config: str | None, split: str, limit: int | None,
              columns: tuple[tuple[str, str], ...]) -> Source | None:
        if not (spec.startswith("sample:") or spec == "sample"):
            return None
        raw = spec.partition(":")[2] or "1000"
        if not raw.isdigit() or int(raw) <= 0:
            raise InputError(f"--source {spec!r}: use sample:N with N a positive integer, e.g. sample:1000.")
        if int(raw) > generator.MAX_ARTICLES:
            raise InputError(
                f"--source {spec!r}: the built-in sample makes at most {generator.MAX_ARTICLES:,} articles (more than English "
                "Wikipedia has: about 12 GB of text, over an hour to write); use a smaller N, or a real source for a "
                "corpus that size."
            )
        return Source(spec, self.kind, raw, None, split, limit, columns)

    def fingerprint(self, source: Source, digest: Any) -> None:
        digest.update(f"sample-v{generator.GENERATOR_VERSION}-{source.location}".encode())

    def batches(self, source: Source, report: RowReport) -> Iterator[list[dict]]:
        return batched(generator.generate_articles(int(source.location)))

    def describe(self, source: Source) -> str:
        return f"built-in sample of {source.location} Wikipedia-shaped articles"

    def license(self, source: Source) -> str | None:
        return "cc-by-sa-3.0"


register(SampleReader())
