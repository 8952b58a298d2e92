"""Deployments for real: `prefect server start`, a process work pool, `prefect deploy --all`,
a process worker, `prefect deployment run` for the sample and for a one-shard rerun.

Slow (a server, a worker and two flow-run subprocesses), and it runs in CI.
"""

from __future__ import annotations

import http.server
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.standins.tei_server import start_server
from wikiembed.flows.run_reports import artifact_key
from wikiembed.store import Store

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
TOKEN = "hf_wikiembedTestSecret0123456789"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _prefect(env, *args, timeout=300):
    proc = subprocess.run([str(BIN / "prefect"), *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"prefect {' '.join(args)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    return proc.stdout


def _stop(proc: subprocess.Popen) -> None:
    """Stop a process group politely, then for sure."""
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)


def _wait_run(api: str, run_id: str, timeout: float = 420) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = httpx.get(f"{api}/flow_runs/{run_id}").json()
        if run["state"]["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
            return run
        time.sleep(1)
    raise AssertionError(f"flow run {run_id} did not finish in {timeout} s: {run['state']}")


def _run_deployment(env, api, name, *params) -> dict:
    args = ["deployment", "run", name]
    for p in params:
        args += ["--param", p]
    out = _prefect(env, *args)
    run_id = re.search(r"UUID:\s*([0-9a-f-]{36})", out) or re.search(r"([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})", out)
    assert run_id, out
    return _wait_run(api, run_id.group(1))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    home = tmp_path_factory.mktemp("prefect-server")
    port = _free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = dict(os.environ, PREFECT_HOME=str(home), PREFECT_API_URL=api, PREFECT_SERVER_ANALYTICS_ENABLED="false",
               PWD=str(ROOT), PREFECT_LOGGING_LEVEL="INFO")
    proc = subprocess.Popen([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                            env=env, cwd=home, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                if httpx.get(f"{api}/health", timeout=2).json() is True:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "prefect server did not become healthy"
            time.sleep(0.5)
        yield env, api
    finally:
        _stop(proc)


@pytest.fixture(scope="module")
def deployed(server):
    """The README's steps: a process pool, `prefect deploy --all`, a worker; yields (env, api, deployments)."""
    env, api = server
    _prefect(env, "work-pool", "create", "wikiembed-pool", "--type", "process")
    deployed = _prefect(env, "--no-prompt", "deploy", "--all")
    for name in ("wikiembed-daily", "wikiembed-rerun", "wikiembed-sample"):
        assert name in deployed
    deployments = {d["name"]: d for d in httpx.post(f"{api}/deployments/filter", json={}).json()}
    worker_env = dict(env, PREFECT_WORKER_QUERY_SECONDS="1", HF_TOKEN=TOKEN, HF_HUB_OFFLINE="1")
    worker = subprocess.Popen([str(BIN / "prefect"), "worker", "start", "--pool", "wikiembed-pool"], env=worker_env,
                              cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        yield env, api, deployments
    finally:
        _stop(worker)


def test_deployments_have_a_schedule_and_a_described_form(deployed):
    _, _, deployments = deployed
    daily = deployments["wikiembed-daily"]
    assert daily["schedules"] and daily["schedules"][0]["schedule"]["cron"] == "0 3 * * *"
    assert not deployments["wikiembed-rerun"]["schedules"]
    assert "upload_to" in daily["description"] and daily["parameters"]["upload_to"] is None
    # The improve form says where its paths are read from, and that the pairs file must be there.
    improve = deployments["wikiembed-improve"]
    pairs = improve["parameter_openapi_schema"]["properties"]["pairs"]["description"]
    assert "it must exist" in pairs and "worker's clone" in pairs, pairs
    assert "Relative paths are read from the worker's working folder" in improve["description"]
    for name in ("wikiembed-daily", "wikiembed-rerun", "wikiembed-sample"):
        schema = deployments[name]["parameter_openapi_schema"]
        for param, prop in schema["properties"].items():
            group = schema["definitions"][prop["$ref"].rsplit("/", 1)[-1]] if "$ref" in prop else None
            assert (group or prop)["description"], f"{name}: {param} has no description"
            assert not group or all(f["description"] for f in group["properties"].values()), f"{name}: {param}"


def test_deploy_sample_then_rerun_two_shards(deployed, tmp_path):
    env, api, _ = deployed
    store = tmp_path / "store"
    run = _run_deployment(env, api, "embed-dataset/wikiembed-sample",
                          "source=sample:30", f"store={store}", "shard_rows=10", f"upload_to=dir:{tmp_path / 'pub'}")
    assert run["state"]["type"] == "COMPLETED", run["state"]
    assert run["name"] == f"embed sample:30 with all-MiniLM-L6-v2 on local into {store}"
    assert {"model:sentence-transformers/all-MiniLM-L6-v2", "source:sample:30", "backend:local"} <= set(run["tags"])
    markers = {p.name: p.stat().st_mtime_ns for p in (store / "_done").glob("*.json")}
    assert sorted(markers) == ["00000.json", "00001.json", "00002.json"]

    rerun = _run_deployment(env, api, "rerun-shards/wikiembed-rerun", f"store={store}", "shards=0,1")  # text, as typed
    assert rerun["state"]["type"] == "COMPLETED", rerun["state"]
    assert rerun["name"] == f"re-embed shards 0,1 of {store}"
    after = {p.name: p.stat().st_mtime_ns for p in (store / "_done").glob("*.json")}
    assert after["00002.json"] == markers["00002.json"]
    assert after["00000.json"] != markers["00000.json"] and after["00001.json"] != markers["00001.json"]

    # The UI's view: progress, shard table and summary artifacts under this store's keys; the token nowhere.
    artifacts = httpx.post(f"{api}/artifacts/filter", json={}).json()
    keys = {artifact_key(kind, Store(store)) for kind in ("progress", "shards", "summary")}
    mine = {a["type"]: a for a in artifacts if a["key"] in keys}
    assert {"progress", "table", "markdown"} <= set(mine), [a["key"] for a in artifacts]
    assert "3/3 shards done" in mine["markdown"]["data"]
    logs = httpx.post(f"{api}/logs/filter", json={"limit": 200}).json()
    blob = json.dumps(artifacts) + json.dumps(logs) + json.dumps(httpx.post(f"{api}/flow_runs/filter", json={}).json())
    assert TOKEN not in blob


# The README's automation, with a webhook block on this machine instead of Slack.
_ALERTS = """
from prefect.automations import Automation
from prefect.blocks.notifications import CustomWebhookNotificationBlock
from prefect.events.actions import SendNotification
from prefect.events.schemas.automations import EventTrigger

block_id = CustomWebhookNotificationBlock(name="alerts", url="{url}", json_data={{"text": "{{{{subject}}}}: {{{{body}}}}"}}).save(
    "wikiembed-alerts", overwrite=True)
Automation(
    name="wikiembed run failed",
    trigger=EventTrigger(
        expect={{"prefect.flow-run.Failed"}},
        match_related={{"prefect.resource.role": "flow", "prefect.resource.name": ["embed-dataset", "rerun-shards"]}},
    ),
    actions=[SendNotification(block_document_id=block_id, subject="wikiembed: {{{{ flow_run.name }}}} failed",
                              body="{{{{ flow_run.state.message }}}}")],
).create()
"""


@pytest.fixture(scope="module")
def alerts(deployed):
    """Webhook posts received from an automation on Failed flow runs (as the README sets one up)."""
    received: list[str] = []

    class Hook(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
            received.append(self.rfile.read(int(self.headers["Content-Length"])).decode())
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    hook = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=hook.serve_forever, daemon=True).start()
    env = deployed[0]
    proc = subprocess.run([sys.executable, "-c", _ALERTS.format(url=f"http://127.0.0.1:{hook.server_port}/")], env=env,
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    try:
        yield received
    finally:
        hook.shutdown()


@pytest.mark.parametrize("poison,failed", [("a", 3), ("Felham", 2)])  # "a": every shard, not the backend check's probe text; articles 3 and 16 of sample:30 (shards 0 and 1)
def test_a_run_with_failed_shards_ends_failed_with_the_rerun(deployed, alerts, tmp_path, poison, failed):
    """A TEI server that rejects (422) any input holding `poison`: the flow run is Failed, says how to
    rerun, and the automation on Failed flow runs delivers that message."""
    env, api, _ = deployed
    url, tei = start_server(model_id="sentence-transformers/all-MiniLM-L6-v2", poison=poison)
    store = tmp_path / "store"
    try:
        run = _run_deployment(env, api, "embed-dataset/wikiembed-sample", "source=sample:30", f"store={store}",
                              "shard_rows=10", "backend=tei", f'compute={{"tei_url": ["{url}"]}}')
    finally:
        tei.stop()
    assert run["state"]["type"] == "FAILED", run["state"]
    message = run["state"]["message"]
    assert message.startswith(f"{failed}/3 shards failed: "), message
    assert f"wikiembed rerun --store {store} --failed" in message
    assert f"prefect deployment run rerun-shards/wikiembed-rerun -p store={store} -p shards=failed" in message
    assert "backend:tei" in run["tags"]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not any(str(store) in post for post in alerts):
        time.sleep(1)
    post = next((p for p in alerts if str(store) in p), None)
    assert post is not None, f"no notification for {store}: {alerts}"
    assert f"wikiembed: {run['name']} failed" in json.loads(post)["text"] and f"{failed}/3 shards failed" in post
