"""The Modal workers' own code, run in-process (Modal's cloud is out of reach here).

- TEI: the router lifecycle (spawn, health wait, crash and deadline reports,
  shutdown) against `fake_router`, a stand-in `text-embeddings-router` that
  parses TEI's flags strictly and serves the TEI 1.9 test server; then the
  Modal class's enter/method/exit hooks around it.
- PyTorch: the Modal class on the CPU with the bundled model, against the engine called directly.
- The app objects: GPU, image tag, limits, as modal 1.6 exposes them without network.
- ModalShards (the flow's client of the shard classes): against a double of the slice of
  Modal's client API it uses (`Cls.from_name` -> `with_options` -> `(model_id=...)` ->
  `.run_shard.remote`), for what it sends and how Modal's failures map to ours; and against
  the real client with no token.
"""

import json
import os
import shlex
import socket
import subprocess
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

import modal
import modal.exception
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # `tests.` importable however pytest is started
    sys.path.insert(0, str(ROOT))

from modal_workers import tei_app, torch_app  # noqa: E402
from wikiembed.backends.modal_client import APP_NAMES, ModalShards  # noqa: E402
from wikiembed.errors import BackendError, InputError, TransientBackendError  # noqa: E402
from wikiembed.model import DEFAULT_MODEL  # noqa: E402
from tests.standins.tei_server import DIM, embed_texts  # noqa: E402

# `.local()` runs off Modal, so there is no Volume; Modal says so on every call.
pytestmark = pytest.mark.filterwarnings("ignore:The .* function is executing locally:UserWarning")

FAKE_ROUTER = Path(__file__).parents[1] / "standins" / "fake_router"
MODEL = "wikiembed-test/router-model"
TEXTS = ["a first chunk", "a second, longer chunk of text", "émoji 🚀", ""]


@pytest.fixture
def fake_router(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    monkeypatch.setenv(tei_app.ROUTER_ENV, f"{shlex.quote(sys.executable)} {shlex.quote(str(FAKE_ROUTER))}")
    for var in ("FAKE_ROUTER_CRASH", "FAKE_ROUTER_STARTUP_S", "FAKE_ROUTER_ARGV", "FAKE_ROUTER_SERVER_ARGS"):
        monkeypatch.delenv(var, raising=False)
    return monkeypatch


def port_is_closed(url: str) -> bool:
    host, port = url.removeprefix("http://").split(":")
    with socket.socket() as sock:
        return sock.connect_ex((host, int(port))) != 0


# ---------------------------------------------------------------------------
# Knobs and app objects
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("gpu", "tag"),
    [("A10G", "86-1.9"), ("L4", "89-1.9"), ("L40S", "89-1.9"), ("H100", "hopper-1.9"), ("h100!", "hopper-1.9"),
     ("A100", "1.9"), ("A100-80GB:2", "1.9"), ("T4", "turing-1.9")],
)  # fmt: skip
def test_tei_image_tag_follows_the_gpu(gpu: str, tag: str) -> None:
    assert tei_app.tei_image_tag(gpu) == tag


def test_unknown_gpu_names_the_env_var_and_choices() -> None:
    with pytest.raises(InputError, match=r"WIKIEMBED_GPU.*A10G"):
        tei_app.tei_image_tag("V100")


@pytest.mark.parametrize(
    ("name", "prefix"),
    [("NVIDIA A10G", "86"), ("NVIDIA A100-SXM4-80GB", ""), ("NVIDIA H100 80GB HBM3", "hopper"),
     ("NVIDIA L40S", "89"), ("NVIDIA L4", "89"), ("Tesla T4", "turing"), ("Quadro RTX", None)],
)  # fmt: skip
def test_gpu_arch_from_nvidia_smi_names(name: str, prefix: str | None) -> None:
    assert tei_app.gpu_arch_prefix(name) == prefix


def test_router_flags_leave_room_for_our_own_load() -> None:
    args = tei_app.router_args(MODEL, 4321)
    flags = dict(zip(args[::2], args[1::2]))
    assert flags["--model-id"] == MODEL and flags["--port"] == "4321" and flags["--hostname"] == "127.0.0.1"
    # TEI 1.9 takes one permit per input: everything our client keeps in flight must fit.
    assert int(flags["--max-concurrent-requests"]) >= tei_app.CLIENT_IN_FLIGHT * int(flags["--max-client-batch-size"])
    # The router caches weights where the Volume is mounted, so later containers skip the download.
    assert flags["--huggingface-hub-cache"].startswith(tei_app.CACHE_DIR)


def test_gpu_and_container_count_are_chosen_at_deploy_time() -> None:
    # Decorators run at import, so the environment of `modal deploy` decides; a fresh interpreter shows it.
    probe = (
        "import warnings; warnings.simplefilter('ignore')\n"
        "from modal_workers import tei_app, torch_app\n"
        "import json\n"
        "print(json.dumps([tei_app.TEI_IMAGE, tei_app.GPU, torch_app.GPU, tei_app.CAPACITY, torch_app.CAPACITY]))\n"
    )
    env = {**os.environ, "WIKIEMBED_GPU": "H100", "WIKIEMBED_MAX_CONTAINERS": "100"}
    out = subprocess.run([sys.executable, "-c", probe], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    image, tei_gpu, torch_gpu, tei_capacity, torch_capacity = json.loads(out.stdout.strip().splitlines()[-1])
    assert image.endswith(":hopper-1.9")
    assert tei_gpu == torch_gpu == "H100"
    assert tei_capacity["max_containers"] == torch_capacity["max_containers"] == 100


APPS = ("tei_app", "torch_app", "store_app", "finetune_app")


def test_every_app_imports_as_modal_deploy_imports_it_and_ships_the_shared_module() -> None:
    """`modal deploy modal_workers/x.py` from the repository root imports the file as a top-level module
    (Modal's own `import_file_or_module`, in a fresh interpreter each): the shared `modal_workers.common`
    resolves, and each image carries the `modal_workers` package (so `common.py`) into its containers."""
    probe = (
        "import sys, json, warnings; warnings.simplefilter('ignore')\n"
        "from modal.cli.import_refs import ImportRef, import_file_or_module\n"
        "from modal._utils.async_utils import synchronizer\n"
        "from modal.mount import _MountedPythonModule\n"
        "module = import_file_or_module(ImportRef(sys.argv[1], use_module_mode=False))\n"
        "image = synchronizer._translate_in(module.image)\n"
        "shipped = [str(remote) for _, remote in _MountedPythonModule('modal_workers', '/root', None).get_files_to_upload()]\n"
        "print(json.dumps([module.__name__, module.RETRIES, sorted(image._added_python_source_set), shipped]))\n"
    )
    for app in APPS:
        out = subprocess.run([sys.executable, "-c", probe, f"modal_workers/{app}.py"], cwd=ROOT, capture_output=True,
                             text=True, timeout=120)
        assert out.returncode == 0, (app, out.stderr[-2000:])
        name, retries, sources, shipped = json.loads(out.stdout.strip().splitlines()[-1])
        assert name == app and isinstance(retries, int)
        assert sources == ["modal_workers", "wikiembed"], app
        assert "/root/modal_workers/common.py" in shipped


def test_the_images_packages_have_the_bounds_pyproject_gives_them() -> None:
    import tomllib

    from modal_workers import common

    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert sorted(common.REQUIREMENTS.values()) == sorted(d for d in declared if d in common.REQUIREMENTS.values())
    assert all(spec.startswith(name) for name, spec in common.REQUIREMENTS.items())
    assert common.packages("torch", "numpy")[:2] == ["torch>=2.4", "numpy>=1.26"]  # each once, the app's first
    assert len(common.packages("torch", "numpy")) == 1 + len(common.BASE_PACKAGES)


def test_router_starts_serves_and_stops(fake_router: pytest.MonkeyPatch, tmp_path: Path) -> None:
    argv_file = tmp_path / "argv.json"
    fake_router.setenv("FAKE_ROUTER_ARGV", str(argv_file))
    router = tei_app.TEIRouter(MODEL)
    router.start()
    try:
        # The stand-in parses TEI's flags strictly: getting here means ours are all valid flags.
        assert json.loads(argv_file.read_text())[:2] == ["--model-id", MODEL]
        assert router.client is not None and router.client.batch_size == tei_app.MAX_CLIENT_BATCH_SIZE
        np.testing.assert_array_equal(router.embed(TEXTS), embed_texts(TEXTS))
        facts = router.describe()
        assert {k: facts[k] for k in ("model_id", "dim", "max_tokens")} == {"model_id": MODEL, "dim": DIM, "max_tokens": 512}
        # TEI normalizes and reports its pooling and dtype; the stand-in's model has no Hub commit
        assert facts["kind"] == {"backend": "tei", "model": MODEL, "revision": "unknown", "pooling": "mean",
                                 "normalize": True, "dtype": "float32", "prompt": "", "include_prompt": True,
                                 "dense": [], "truncate_dim": None}
    finally:
        router.stop()
    assert router.proc is not None and router.proc.poll() is not None
    assert port_is_closed(router.url)
    with pytest.raises(BackendError, match="not running"):
        router.embed(TEXTS)


def test_router_crash_is_reported_with_its_stderr(fake_router: pytest.MonkeyPatch) -> None:
    fake_router.setenv("FAKE_ROUTER_CRASH", "Error: Could not download model artifacts: 401 Unauthorized")
    router = tei_app.TEIRouter(MODEL)
    with pytest.raises(BackendError, match=r"exited with code 1 .*\n.*401 Unauthorized"):
        router.start()
    assert router.proc is not None and router.proc.returncode == 1


def test_router_refuses_flags_tei_does_not_know(fake_router: pytest.MonkeyPatch) -> None:
    router = tei_app.TEIRouter(MODEL, command=[sys.executable, str(FAKE_ROUTER), "--max-batch-size", "4"])
    with pytest.raises(BackendError, match=r"(?s)exited with code 2 .*unrecognized arguments: --max-batch-size"):
        router.start()


def test_router_that_never_gets_healthy_is_killed_at_the_deadline(fake_router: pytest.MonkeyPatch) -> None:
    fake_router.setenv("FAKE_ROUTER_STARTUP_S", "60")
    router = tei_app.TEIRouter(MODEL, startup_s=1.0)
    with pytest.raises(BackendError, match=r"not healthy within 1s"):
        router.start()
    assert router.proc is not None and router.proc.poll() is not None


def test_missing_router_binary_says_how_to_point_at_one() -> None:
    router = tei_app.TEIRouter(MODEL, command=["/nonexistent/text-embeddings-router"])
    with pytest.raises(BackendError, match="WIKIEMBED_TEI_ROUTER"):
        router.start()


# ---------------------------------------------------------------------------
# The Modal classes, in-process
# ---------------------------------------------------------------------------


def test_tei_class_through_modal_local_calls(fake_router: pytest.MonkeyPatch) -> None:
    obj = tei_app.TEI(model_id=MODEL)
    try:
        np.testing.assert_array_equal(obj.embed.local(TEXTS), embed_texts(TEXTS))  # runs @modal.enter first
        facts = obj.describe.local()
        assert facts.pop("kind")["normalize"] is True
        assert facts == {"model_id": MODEL, "dim": DIM, "max_tokens": 512, "gpu": tei_app.GPU, "image": tei_app.TEI_IMAGE, **tei_app.CAPACITY}
    finally:
        obj.router.stop()  # `.local()` never runs @modal.exit; the next test calls it


def test_torch_class_runs_the_engine_on_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    from wikiembed.backends import engine as engine_module

    monkeypatch.setenv(torch_app.DEVICE_ENV, "cpu")
    obj = torch_app.Torch()
    vectors = obj.embed.local(TEXTS)
    assert vectors.shape == (len(TEXTS), 384) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    with engine_module.TorchEngine(DEFAULT_MODEL, device="cpu") as engine:
        np.testing.assert_allclose(vectors, engine.embed(TEXTS), atol=1e-6)  # same code as the local backend
    facts = obj.describe.local()
    assert facts.pop("kind")["backend"] == "local"  # the engine's own record; the Modal client relabels it
    assert facts == {"model_id": DEFAULT_MODEL, "dim": 384, "max_tokens": 256, "gpu": torch_app.GPU, **torch_app.CAPACITY}
    obj.worker.close()  # what @modal.exit does; `.local()` never runs it


# ---------------------------------------------------------------------------
# ModalShards
# ---------------------------------------------------------------------------

MARKER = {"shard": 3, "rows": 30, "chunks": 91, "sha256": "ab" * 32}


class FakeModal:
    """Modal's `Cls.from_name(app, cls).with_options(...)(model_id=...).run_shard.remote(...)`:
    records what is asked, answers with a marker or raises the failure it was given."""

    def __init__(self, fail: BaseException | None = None) -> None:
        self.fail = fail
        self.looked_up: list[tuple[str, str]] = []
        self.options: dict[str, Any] = {}
        self.params: dict[str, Any] = {}
        self.sent: list[tuple] = []

    def from_name(self, app_name: str, class_name: str, **_: Any) -> "FakeModal":
        self.looked_up.append((app_name, class_name))
        return self

    def with_options(self, **options: Any) -> "FakeModal":
        self.options.update(options)
        return self

    def __call__(self, **params: Any) -> SimpleNamespace:
        self.params = params
        return SimpleNamespace(run_shard=SimpleNamespace(remote=self._run_shard))

    def _run_shard(self, *args: Any) -> dict[str, Any]:
        self.sent.append(args)
        if self.fail is not None:
            raise self.fail
        return MARKER


@pytest.fixture
def fake_modal(monkeypatch: pytest.MonkeyPatch) -> Callable[..., FakeModal]:
    def install(fail: BaseException | None = None) -> FakeModal:
        fake = FakeModal(fail)
        monkeypatch.setattr(modal.Cls, "from_name", fake.from_name)
        return fake

    return install


def test_modal_shards_sends_a_reference_and_gets_the_marker(fake_modal: Callable[..., FakeModal]) -> None:
    fake = fake_modal()
    shards = ModalShards(None, "TEI", model_id=MODEL, gpu="A10G")
    assert shards.run("/store/wiki", "0123abcd", 3) == MARKER
    assert fake.looked_up == [(tei_app.APP_NAME, "TEIShards")] and fake.options == {"gpu": "A10G"}
    assert fake.params == {"model_id": MODEL} and fake.sent == [("/store/wiki", "0123abcd", 3)]
    fake = fake_modal()
    ModalShards("my-torch", "Torch", model_id=MODEL).run("/store/wiki", "0123abcd", 0)
    assert fake.looked_up == [("my-torch", "TorchShards")] and fake.options == {}


def test_modal_shards_missing_app_says_to_deploy(fake_modal: Callable[..., FakeModal]) -> None:
    fake_modal(modal.exception.NotFoundError("App 'wikiembed-tei' not found in environment 'main'"))
    with pytest.raises(BackendError, match=r"'wikiembed-tei' class TEIShards.*`modal deploy modal_workers/tei_app.py`"):
        ModalShards(None, "TEI", model_id=MODEL).run("/store/wiki", "g", 0)


@pytest.mark.parametrize(
    ("failure", "expected"),
    [
        (modal.exception.InternalFailure("worker lost"), TransientBackendError),
        (modal.exception.FunctionTimeoutError("timed out after 900s"), TransientBackendError),
        (modal.exception.InputCancellation("preempted"), TransientBackendError),
        (TransientBackendError("TEI at http://127.0.0.1:1234 kept failing: HTTP 503"), TransientBackendError),
        (BackendError("TEI refused an input as too long"), BackendError),
        (ValueError("unpickling error"), BackendError),
    ],
    ids=["internal", "timeout", "preempted", "ours-transient", "ours-final", "other"],
)
def test_modal_shards_map_failures(
    fake_modal: Callable[..., FakeModal], failure: BaseException, expected: type[Exception]
) -> None:
    fake_modal(failure)
    with pytest.raises(expected) as caught:
        ModalShards("my-tei", "TEI", model_id=MODEL).run("/store/wiki", "g", 7)
    assert type(caught.value) is expected
    if not isinstance(failure, BackendError):
        assert "'my-tei' class TEIShards.run_shard (shard 7)" in str(caught.value)


def test_modal_shards_without_a_token_say_how_to_log_in(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MODAL_TOKEN_ID", raising=False)
    monkeypatch.delenv("MODAL_TOKEN_SECRET", raising=False)
    if modal.config.config.get("token_id"):
        pytest.skip("a Modal token is configured on this machine; this test needs none")
    with pytest.raises(BackendError, match="modal token new"):
        ModalShards(None, "Torch", model_id=DEFAULT_MODEL).run("/store/wiki", "g", 0)


def test_modal_shards_reject_unknown_classes() -> None:
    with pytest.raises(InputError, match="--modal-class"):
        ModalShards(None, "Triton", model_id=MODEL)  # type: ignore[arg-type]
    assert APP_NAMES == {"TEI": tei_app.APP_NAME, "Torch": torch_app.APP_NAME}
