"""A small dataset in wikimedia/wikipedia's Hub layout, and the environment that points a client
at the Hub stand-in (`hub_server.py`).

Layout as on the Hub: a README whose YAML lists `YYYYMMDD.<lang>` configs, each config's parquet
files under a folder of its name. Tests push these with `HubServer.push_files`.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from tests.standins.hub_server import HubServer

ROOT = Path(__file__).resolve().parents[2]
REPO = "wikimedia/wikipedia"


def parquet(rows: list[dict]) -> bytes:
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), buf)
    return buf.getvalue()


def readme(configs: list[str]) -> bytes:
    """A dataset card whose YAML lists the configs the way wikimedia/wikipedia's does."""
    lines = ["---", "configs:"]
    for name in configs:
        lines += [f"- config_name: {name}", "  data_files:", "  - split: train", f"    path: {name}/train-*"]
    return ("\n".join(lines + ["---", "# Wikipedia (test copy)", ""])).encode()


def articles(n: int, prefix: str = "") -> list[dict]:
    return [
        {"id": f"{prefix}{i}", "url": f"https://simple.wikipedia.org/wiki/A{prefix}{i}", "title": f"Article {prefix}{i}",
         "text": f"Article {prefix}{i} is about rivers and bridges. " * 6}
        for i in range(n)
    ]


def dump(config: str, rows: list[dict]) -> dict[str, bytes]:
    return {f"{config}/train-00000-of-00001.parquet": parquet(rows)}


def hub_env(hub: HubServer, home: Path) -> dict[str, str]:
    """What a user's shell has when it talks to this Hub: online, its endpoint, a fresh cache."""
    env = dict(os.environ, HF_ENDPOINT=hub.url, HF_HUB_OFFLINE="0", HF_DATASETS_OFFLINE="0", HF_HUB_DISABLE_XET="1",
               HF_HOME=str(home), HF_HUB_DISABLE_TELEMETRY="1")
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env
