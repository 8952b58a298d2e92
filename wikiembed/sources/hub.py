"""A Hugging Face dataset id with `--config` and `--split`, streamed from the Hub.

The source is pinned first (`pin`): to the repo's current commit, with `latest.<lang>` resolved to the
newest `YYYYMMDD.<lang>` config there, so its fingerprint (the config's data files, by content id) and
its rows come from the same revision.
"""

from __future__ import annotations

import os
import re
from dataclasses import replace
from typing import Any, Iterator

from wikiembed.errors import InputError
from wikiembed.sources.base import RowReport, Source, SourceReader, batched, register

# `--config latest.<lang>` asks for the newest dump of a language among configs named like
# wikimedia/wikipedia's (`20231101.simple`); the date sorts as text.
LATEST_PREFIX = "latest."
_DUMP_CONFIG = re.compile(r"(\d{8})\.(.+)")


def _hub_offline_error(source: Source, exc: BaseException) -> InputError:
    offline = os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("HF_DATASETS_OFFLINE") == "1"
    why = "HF_HUB_OFFLINE=1 is set" if offline else f"the Hub could not be reached ({type(exc).__name__})"
    return InputError(
        f"--source {source.location!r} (config {source.config!r}) needs the Hugging Face Hub, but {why}. "
        "Unset HF_HUB_OFFLINE and check the network, or use a local copy: a parquet/jsonl file or folder, "
        "a datasets save_to_disk folder, or --source sample:N for the built-in sample."
    )


def newest_config(source: Source, lang: str, revision: str) -> str:
    """The newest `YYYYMMDD.<lang>` config of a Hub dataset at `revision`."""
    import datasets

    try:
        configs = datasets.get_dataset_config_names(source.location, revision=revision)
    except Exception as exc:
        raise _hub_offline_error(source, exc) from exc
    dumps = sorted(c for c in configs if (m := _DUMP_CONFIG.fullmatch(c)) and m.group(2) == lang)
    if not dumps:
        langs = sorted({m.group(2) for c in configs if (m := _DUMP_CONFIG.fullmatch(c))})
        raise InputError(
            f"--config {LATEST_PREFIX}{lang}: {source.location} has no YYYYMMDD.{lang} config at revision "
            f"{revision[:12]} (languages there: {', '.join(langs[:30]) or 'none'}); check the language code, "
            "or name a config such as 20231101.simple."
        )
    return dumps[-1]


def hub_data_files(source: Source) -> list[tuple[str, str]]:
    """(path, content id) of every data file of a pinned Hub source's config and split.

    The content id is the file's LFS sha256, or its git blob id for a small file:
    equal lists mean equal rows, whatever else the repo's commit changed.
    """
    import datasets
    from huggingface_hub import HfApi

    if source.revision is None:
        raise ValueError(f"{source.location}: pin() the Hub source before reading or fingerprinting it")
    try:
        builder = datasets.load_dataset_builder(source.location, source.config, revision=source.revision)
    except ValueError as exc:  # datasets: "BuilderConfig 'x' not found. Available: [...]"
        configs = _configs_or_none(source)
        listing = f"it has {', '.join(configs[:30])}{' ...' if len(configs) > 30 else ''}" if configs else str(exc)
        raise InputError(
            f"--config {source.config!r}: {source.location} has no such config at revision "
            f"{source.revision[:12]} ({listing}); pass one of them with --config."
        ) from exc
    except Exception as exc:
        raise _hub_offline_error(source, exc) from exc
    files = builder.config.data_files or {}
    if source.split not in files:
        raise InputError(
            f"--split {source.split!r}: {source.location} (config {source.config}) has splits "
            f"{sorted(files)}; pass one of them with --split."
        )
    prefix = f"hf://datasets/{source.location}@{source.revision}/"
    paths = [str(url).removeprefix(prefix) for url in files[source.split]]
    try:
        infos = HfApi().get_paths_info(source.location, paths, revision=source.revision, repo_type="dataset")
    except Exception as exc:
        raise _hub_offline_error(source, exc) from exc
    out = []
    for info in infos:
        lfs = getattr(info, "lfs", None)
        out.append((info.path, lfs.sha256 if lfs is not None else info.blob_id))
    return sorted(out)


def _configs_or_none(source: Source) -> list[str]:
    import datasets

    try:
        return list(datasets.get_dataset_config_names(source.location, revision=source.revision))
    except Exception:  # noqa: BLE001 - only for the error message
        return []


class HubReader(SourceReader):
    kind = "hub"

    def takes_remote(self, spec: str) -> bool:
        return True  # `parse_source` has refused what looks like a local path

    def pin(self, source: Source) -> Source:
        """Fixed to one commit (the repo's current one unless already pinned), with `latest.<lang>`
        resolved to the newest `YYYYMMDD.<lang>` config at that commit."""
        from huggingface_hub import HfApi
        from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

        try:
            sha = HfApi().dataset_info(source.location, revision=source.revision).sha
        except RepositoryNotFoundError as exc:
            raise InputError(
                f"--source {source.location!r}: no such dataset on the Hub (or it is private and HF_TOKEN "
                "cannot read it); check the id, e.g. wikimedia/wikipedia."
            ) from exc
        except RevisionNotFoundError as exc:
            raise InputError(f"--source {source.location!r}: no revision {source.revision!r}; give a branch, tag or commit.") from exc
        except Exception as exc:
            raise _hub_offline_error(source, exc) from exc
        config = source.config
        if config and config.startswith(LATEST_PREFIX):
            config = newest_config(source, config[len(LATEST_PREFIX):], sha)
        return replace(source, config=config, revision=sha)

    def fingerprint(self, source: Source, digest: Any) -> None:
        digest.update(f"hub:{source.location}:{source.config}".encode())
        for path, oid in hub_data_files(source):
            digest.update(f"\n{path}\0{oid}".encode())

    def batches(self, source: Source, report: RowReport) -> Iterator[list[dict]]:
        import datasets

        if source.revision is None:
            raise ValueError(f"{source.location}: pin() the Hub source before reading or fingerprinting it")
        try:
            ds = datasets.load_dataset(source.location, source.config, split=source.split, revision=source.revision, streaming=True)
        except Exception as exc:
            raise _hub_offline_error(source, exc) from exc
        return batched(ds)

    def estimate_sample(self, source: Source, k: int, seed: int) -> tuple[list[dict[str, str]], int, str]:
        """Rows streamed through a seeded shuffle buffer; the article count from the dataset's metadata."""
        import datasets

        from wikiembed.sources.cleaning import clean_rows

        try:
            builder = datasets.load_dataset_builder(source.location, source.config, revision=source.revision)
            splits = builder.info.splits or {}
            if source.split not in splits:
                raise InputError(f"--source {source.location}: no split {source.split!r} in its metadata; it has {sorted(splits)}.")
            population = int(splits[source.split].num_examples)
            stream = datasets.load_dataset(source.location, source.config, split=source.split, revision=source.revision, streaming=True)
            stream = stream.shuffle(seed=seed, buffer_size=10 * k)
        except InputError:
            raise
        except Exception as exc:
            raise _hub_offline_error(source, exc) from exc
        rows: list[dict[str, str]] = []

        def batches() -> Iterator[list[dict]]:
            batch: list[dict] = []
            for raw in stream:
                batch.append(raw)
                if len(batch) == 100:
                    yield batch
                    batch = []
            if batch:
                yield batch

        for row in clean_rows(batches(), source, RowReport()):
            rows.append(row)
            if len(rows) >= k:
                break
        if source.limit is not None:
            population = min(population, source.limit)
        how = f"Hub metadata for the article count; {len(rows)} articles streamed through a shuffle buffer for the rest"
        return rows, population, how

    def describe(self, source: Source) -> str:
        at = f", revision {source.revision[:12]}" if source.revision else ""
        return f"{source.location} (config {source.config}, split {source.split}{at})"


register(HubReader())
