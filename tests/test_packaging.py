"""A regular install works: the wheel built from this repository, installed non-editable in a fresh
virtualenv, starts `wikiembed` and embeds the built-in sample.

The fresh virtualenv has only the wheel (`pip install --no-deps`); the project's dependencies come
from the test interpreter's own site-packages through a `.pth` path line (a path line does not run
the `.pth` files of the folder it adds, so the editable install living there stays out of it), and
nothing runs from the repository: the working folder is elsewhere and PYTHONPATH is unset. A
package missing from the wheel fails here as it would for a user.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Everything a build reads; the rest of a checkout (a virtualenv, runs, caches) stays out of the copy.
SKIP = shutil.ignore_patterns(".git", ".venv", "runs", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache")


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtualenv with the wheel installed; returns its bin folder."""
    work = tmp_path_factory.mktemp("wheel")
    shutil.copytree(ROOT, work / "src", ignore=SKIP)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(work / "dist"), str(work / "src")],
        check=True, capture_output=True, text=True,
    )
    (wheel,) = (work / "dist").glob("wikiembed-*.whl")
    env_dir = work / "env"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", str(wheel)],
        check=True, capture_output=True, text=True,
    )
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    (Path(site) / "zz-test-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return env_dir / "bin"


def _env(prefect_api: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PREFECT_API_URL"] = prefect_api
    return env


@pytest.mark.slow
def test_the_wheel_installs_and_runs_the_sample(installed: Path, prefect_api: str, tmp_path: Path) -> None:
    env = _env(prefect_api)
    where = subprocess.run(
        [str(installed / "python"), "-c", "import wikiembed, wikiembed.flows.cli, wikiembed.executors; print(wikiembed.__file__)"],
        cwd=tmp_path, env=env, capture_output=True, text=True,
    )
    assert where.returncode == 0, where.stderr[-3000:]
    assert Path(where.stdout.strip()).is_relative_to(installed.parent), where.stdout  # the wheel's copy, not the repository
    assert not Path(where.stdout.strip()).is_relative_to(ROOT)

    shown = subprocess.run([str(installed / "wikiembed"), "--help"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert shown.returncode == 0 and "run" in shown.stdout, shown.stderr[-3000:]

    run = subprocess.run(
        [str(installed / "wikiembed"), "run", "--source", "sample:20", "--store", str(tmp_path / "store")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    assert list((tmp_path / "store" / "data").glob("*.parquet")) and list((tmp_path / "store" / "_done").glob("*.json"))
    # The package data ships too: the dataset card's template and the rate tables the estimate reads.
    assert "sentence-transformers/all-MiniLM-L6-v2" in (tmp_path / "store" / "README.md").read_text()
