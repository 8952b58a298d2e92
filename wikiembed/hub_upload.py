"""The Hugging Face Hub side of publishing: the token, and one folder uploaded as a dataset commit.

What it may touch: the environment (`HF_TOKEN`), Prefect's API (the Secret block `hf-token`),
the Hub through `huggingface_hub` (whoami, create_repo, create_branch, repo_info,
upload_folder), and the staging folder it uploads (read). The token never appears in logs,
return values or error messages: every message goes through `describe`, which removes it.

Upload speed: with `hf_xet` installed (the default) `upload_folder` streams through Xet and
resumes by re-running; set `HF_XET_HIGH_PERFORMANCE=1` for the fast path (`hf_transfer` is not
used by huggingface_hub >= 1.0).
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from wikiembed.errors import UploadError, WikiembedError

logger = logging.getLogger(__name__)

SECRET_BLOCK = "hf-token"


def token_and_source() -> tuple[str | None, str]:
    token = os.environ.get("HF_TOKEN", "").strip()
    if token:
        return token, "HF_TOKEN"
    try:
        from prefect.blocks.system import Secret

        # `Secret.load` hands back a coroutine when called inside an async flow or event loop; a
        # thread of our own has neither (context variables do not follow into it), so it is sync.
        with ThreadPoolExecutor(max_workers=1) as pool:
            block = pool.submit(Secret.load, SECRET_BLOCK).result()
        value = block.get()
    except Exception as exc:  # no such block, no Prefect API, no Prefect: all mean "no token here"
        logger.debug("no Prefect Secret block %r (%s)", SECRET_BLOCK, type(exc).__name__)
        return None, ""
    token = str(value).strip() if value else ""
    return (token or None), f"the Prefect Secret block {SECRET_BLOCK!r}"


def resolve_token() -> str | None:
    """The Hub token: `HF_TOKEN`, else the Prefect Secret block `hf-token`, else None."""
    return token_and_source()[0]


def _scrub(text: str, token: str | None) -> str:
    return text.replace(token, "***") if token else text


def _describe(exc: BaseException, token: str | None) -> str:
    """An exception and its causes as one line, with the token removed."""
    parts: list[str] = []
    seen: BaseException | None = exc
    while seen is not None and len(parts) < 4:
        message = " ".join(str(seen).split())
        parts.append(f"{type(seen).__name__}: {message}" if message else type(seen).__name__)
        seen = seen.__cause__
    return _scrub("; caused by ".join(parts), token)


def upload_folder(
    staging: Path,
    repo_id: str,
    *,
    token: str,
    token_source: str,
    private: bool,
    revision: str | None,
    create_pr: bool,
    commit_message: str,
) -> tuple[str, bool]:
    """whoami, create_repo, create_branch, upload_folder; return (commit or PR url, committed)."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    api = HfApi(token=token, library_name="wikiembed")
    # Check the token first, so a missing or rejected one fails before any data moves.
    try:
        user = api.whoami(token=token)
    except HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else None
        if status == 401:
            raise UploadError(
                f"the Hugging Face token from {token_source} was rejected (401 Unauthorized); create a "
                "token with write access at https://huggingface.co/settings/tokens and set HF_TOKEN "
                f"(or the Prefect Secret block {SECRET_BLOCK!r})."
            ) from None
        raise UploadError(f"checking the token with the Hub failed: {_describe(exc, token)}; try again later.") from None
    except Exception as exc:
        raise UploadError(
            f"could not reach the Hugging Face Hub to check the token ({_describe(exc, token)}); "
            "check the network (and HF_ENDPOINT if set) and run the same command again."
        ) from None
    logger.info("publishing to dataset %s as %s", repo_id, user.get("name", "?"))
    try:
        # private=None lets the Hub apply the namespace's default visibility; an existing repo
        # keeps its visibility either way.
        api.create_repo(repo_id, repo_type="dataset", private=True if private else None, exist_ok=True)
        if revision:
            api.create_branch(repo_id, repo_type="dataset", branch=revision, exist_ok=True)
        head = api.repo_info(repo_id, repo_type="dataset", revision=revision).sha
        info = api.upload_folder(
            repo_id=repo_id,
            repo_type="dataset",
            folder_path=staging,
            revision=revision,
            create_pr=create_pr,
            commit_message=commit_message,
            allow_patterns=["README.md", "data/*"],
            # Remote data files that are not in this layout would be read by the card's glob.
            delete_patterns=["data/*"],
        )
    except WikiembedError:
        raise
    except Exception as exc:
        # `from None`: the chained original could carry the token in its text; the message keeps its gist.
        raise UploadError(
            f"upload to hub:{repo_id} failed: {_describe(exc, token)}. Run the same command again to "
            "resume: files the Hub already has are not sent again."
        ) from None
    committed = info.oid != head or info.pr_url is not None
    return (info.pr_url or info.commit_url), committed
