"""The client side of the deployed Modal apps (`modal_workers/`): whole shards and store operations.

- `ModalShards`: what `--backend modal` runs. A shard reference goes to `TEIShards` /
  `TorchShards`, which chunk, embed and checkpoint the shard on the store's Volume; the
  marker comes back. Nothing else travels.
- `StoreOps`: the store's own operations on its Volume (`wikiembed.volume_store.VolumeStore`).
- `FinetuneApp`: the improve loop's GPU steps at the Volume (fine-tune, comparison): Volume paths
  go out, the fine-tune's record or the comparison's figures come back.

No text is embedded through this client: the per-text `TEI` / `Torch` classes of the apps are
there for `modal run modal_workers/...` smoke tests of a deployment.

What it may touch: Modal's API, through the `modal` client and the user's Modal
token. Nothing on disk, no local GPU. This module only calls the deployed classes
and turns Modal's failures into the project's errors:

- transient (Modal timeouts, internal failures, lost connections, rate
  limits, a cancelled or preempted input, and our own `TransientBackendError`
  raised inside a container) -> `TransientBackendError`: the pipeline retries
  the shard;
- everything else -> `BackendError`, whose message names the app and class and,
  where the app is missing or stale, says to run `modal deploy`.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator, Literal

import modal
import modal.exception

from wikiembed.errors import BackendError, InputError, TransientBackendError, WikiembedError

ClassName = Literal["TEI", "Torch"]

# The deployed apps' names; the apps (`modal_workers/`) take theirs from here, so this client never
# imports them (importing an app builds its image definition).
APP_NAMES: dict[str, str] = {"TEI": "wikiembed-tei", "Torch": "wikiembed-torch"}
DEPLOY_FILES: dict[str, str] = {"TEI": "modal_workers/tei_app.py", "Torch": "modal_workers/torch_app.py"}
# The classes in those apps that take whole shards (a store reference in, a marker out).
SHARD_CLASSES: dict[str, str] = {"TEI": "TEIShards", "Torch": "TorchShards"}
# The CPU app that runs the store's own operations (download, states, export) where its Volume is mounted.
STORE_APP = "wikiembed-store"
STORE_DEPLOY_FILE = "modal_workers/store_app.py"
# The GPU app that fine-tunes a store's model and compares two stores where their Volume is mounted.
FINETUNE_APP = "wikiembed-finetune"
FINETUNE_DEPLOY_FILE = "modal_workers/finetune_app.py"

_TRANSIENT: tuple[type[BaseException], ...] = (
    modal.exception.TimeoutError,  # includes FunctionTimeoutError
    modal.exception.InternalFailure,
    modal.exception.InternalError,
    modal.exception.ConnectionError,
    modal.exception.ServiceError,
    modal.exception.ResourceExhaustedError,
    modal.exception.InputCancellation,  # a BaseException: preempted or cancelled input
    ConnectionError,
    TimeoutError,
)


def _check_class(class_name: str) -> None:
    if class_name not in APP_NAMES:
        raise InputError(f"--modal-class {class_name!r}: use 'TEI' or 'Torch'.")


class ModalShards:
    """Whole shards on a deployed shard class (`TEIShards` / `TorchShards`): a reference goes out,
    the shard's marker comes back, and the text and vectors stay on the store's Volume.

    Retries: a shard that raised (a transient Modal error included) is retried by the flow's
    embed task (Prefect: counted, visible in the UI, ending in `_failed/` when exhausted); the
    deployed classes set `retries=0` so no error is retried twice. Modal itself reschedules the
    inputs of a container that crashed (OOM, preemption): `run_shard` is idempotent, so that
    rerun lands on another container and finishes or returns the committed marker.
    """

    def __init__(self, app_name: str | None, class_name: ClassName = "TEI", *, model_id: str, gpu: str | None = None) -> None:
        _check_class(class_name)
        self.app_name = app_name or APP_NAMES[class_name]
        self.class_name = SHARD_CLASSES[class_name]
        self.deploy = DEPLOY_FILES[class_name]
        with modal_errors(f"Modal app {self.app_name!r} class {self.class_name}", self.deploy):
            cls = modal.Cls.from_name(self.app_name, self.class_name)  # lazy: a missing app fails on the first call
            if gpu:
                cls = cls.with_options(gpu=gpu)
            self._obj = cls(model_id=model_id)

    def run(self, root: str, gen: str, shard: int) -> dict[str, Any]:
        """Run shard `shard` of the store at mount path `root`; return its marker."""
        with modal_errors(f"Modal app {self.app_name!r} class {self.class_name}.run_shard (shard {shard})", self.deploy):
            return self._obj.run_shard.remote(root, gen, shard)

    def calibrate(self, root: str, gen: str) -> dict[str, Any] | None:
        """Fix the int8 ranges of the generation at mount path `root` with the deployed backend (see
        `wikiembed.calibration`); return them."""
        with modal_errors(f"Modal app {self.app_name!r} class {self.class_name}.calibrate", self.deploy):
            return self._obj.calibrate.remote(root, gen)


class StoreOps:
    """The deployed `StoreOps` class of `modal_workers/store_app.py`: the store's own operations at its mount."""

    def __init__(self, volume: str) -> None:
        self.where = f"Modal app {STORE_APP!r} class StoreOps (Volume {volume!r})"
        with modal_errors(self.where, STORE_DEPLOY_FILE):
            self._obj = modal.Cls.from_name(STORE_APP, "StoreOps")(volume=volume)

    def call(self, method: str, *args: Any) -> Any:
        with modal_errors(f"{self.where}.{method}", STORE_DEPLOY_FILE):
            return getattr(self._obj, method).remote(*args)


def store_ops(volume: str) -> StoreOps:
    return StoreOps(volume)


class FinetuneApp:
    """The deployed `Finetune` class of `modal_workers/finetune_app.py`; paths are relative to the Volume's root.

    An error of our own raised in the container (a pairs file naming nothing in the store, a folder
    that holds another fine-tune) comes back as it is: its message already names the input and the fix."""

    def __init__(self, volume: str) -> None:
        self.where = f"Modal app {FINETUNE_APP!r} class Finetune (Volume {volume!r})"
        with modal_errors(self.where, FINETUNE_DEPLOY_FILE):
            self._obj = modal.Cls.from_name(FINETUNE_APP, "Finetune")(volume=volume)

    def run(self, store: str, pairs: str, out: str, settings: dict[str, Any]) -> dict[str, Any]:
        """Fine-tune the store's model on the pairs into `out`; return its record (`finetune.json`)."""
        with modal_errors(f"{self.where}.run", FINETUNE_DEPLOY_FILE, keep=(WikiembedError,)):
            return self._obj.run.remote(store, pairs, out, settings)

    def compare(self, old: str, new: str, queries: str) -> dict[str, Any]:
        """Both stores scored on the judged queries with paired differences (`evaluate(old, against=new)`)."""
        with modal_errors(f"{self.where}.compare", FINETUNE_DEPLOY_FILE, keep=(WikiembedError,)):
            return self._obj.compare.remote(old, new, queries)


@contextlib.contextmanager
def modal_errors(where: str, deploy_file: str, keep: tuple[type[BaseException], ...] = (BackendError,)) -> Iterator[None]:
    """Turn Modal's failures into the project's: transient ones retryable, the rest with their fix.
    `keep`: errors raised by our own code inside the container that pass as they are."""
    deploy = f"modal deploy {deploy_file}"
    try:
        yield
    except keep:
        raise  # raised by our own code inside the container: already says what happened
    except modal.exception.NotFoundError as exc:
        raise BackendError(
            f"{where}: not found ({exc}). Deploy it first: `{deploy}` "
            "(with the same Modal environment and workspace as this run)."
        ) from exc
    except modal.exception.AuthError as exc:
        raise BackendError(
            f"{where}: Modal refused the credentials ({exc}); run `modal token new` "
            "or set MODAL_TOKEN_ID and MODAL_TOKEN_SECRET."
        ) from exc
    except _TRANSIENT as exc:
        raise TransientBackendError(f"{where}: {type(exc).__name__}: {exc}; the shard can be retried.") from exc
    except Exception as exc:
        raise BackendError(
            f"{where} failed: {type(exc).__name__}: {exc}. If the app is older than this code, "
            f"redeploy it: `{deploy}`."
        ) from exc

