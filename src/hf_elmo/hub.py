"""Pushing a converted checkpoint folder to the Hugging Face Hub in one commit."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

# What a converted folder must hold before it is worth pushing (the tokenizer and code files come with it).
REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer_config.json", "README.md")


class HubPushError(RuntimeError):
    """A push that failed: the message names the repository, the endpoint, the step and the server's answer."""


@dataclass
class PushResult:
    """The outcome of `push_checkpoint_folder`."""

    repo_id: str
    revision: str
    commit_oid: str | None
    commit_url: str | None
    changed: bool  # False when the remote already held exactly these files (no commit was made)


def hub_endpoint() -> str:
    """The Hub to talk to: `HF_ENDPOINT` as set now (huggingface_hub reads it only once, at import)."""
    from huggingface_hub import constants

    return (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def push_checkpoint_folder(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    private: bool = False,
    revision: str | None = None,
    commit_message: str | None = None,
    token: str | None = None,
    endpoint: str | None = None,
) -> PushResult:
    """
    Upload every file of a converted checkpoint folder (weights, config, tokenizer, model card, remote code)
    to `repo_id` in a single commit, creating the repository (and the `revision` branch) if needed.

    Files the remote already holds with the same content are skipped, so pushing the same checkpoint twice makes
    no second commit (`changed=False`). The local folder is only read, never modified.

    Args:
        private: create the repository as private (an existing repository keeps its visibility).
        revision: branch to commit to (created from the default branch if missing); default `main`.
        token: Hub token; default `HF_TOKEN` / the saved login, as huggingface_hub resolves it.
        endpoint: Hub URL; default `HF_ENDPOINT`, else https://huggingface.co.
    Raises:
        HubPushError: naming what failed; the local folder is left as it was.
    """
    from huggingface_hub import HfApi
    from huggingface_hub.errors import RevisionNotFoundError

    folder = Path(folder)
    missing = [name for name in REQUIRED_FILES if not (folder / name).is_file()]
    if missing:
        raise HubPushError(f"{folder}: not a complete checkpoint folder (missing {', '.join(missing)}); nothing pushed")
    endpoint = (endpoint or hub_endpoint()).rstrip("/")
    branch = revision or "main"
    api = HfApi(endpoint=endpoint, token=token)
    where = f"{repo_id} at {endpoint}"
    step = "creating the repository"
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        head_before = None
        if branch != "main":
            step = f"creating the branch {branch!r}"
            api.create_branch(repo_id, branch=branch, exist_ok=True)
        step = "reading the current revision"
        try:
            head_before = api.repo_info(repo_id, revision=branch).sha
        except RevisionNotFoundError:
            head_before = None
        step = "uploading the folder"
        info = api.upload_folder(
            repo_id=repo_id,
            folder_path=folder,
            revision=branch,
            commit_message=commit_message or "Upload ELMo checkpoint converted by hf-elmo",
            ignore_patterns=[".*", "**/.*"],  # no hidden files (editor or staging leftovers)
        )
    except Exception as error:  # HTTP errors, network failures (connection refused, timeouts), malformed answers
        raise HubPushError(f"push to {where} failed while {step}: {_describe(error)}. "
                           f"The local checkpoint {folder} is intact; fix the cause and push again.") from None
    changed = info.oid != head_before
    return PushResult(repo_id=repo_id, revision=branch, commit_oid=info.oid, commit_url=info.commit_url if changed else None,
                      changed=changed)


def _describe(error: BaseException) -> str:
    """One line: the error and the errors that caused it (huggingface_hub wraps e.g. an LFS upload's HTTP error)."""
    from huggingface_hub.errors import HfHubHTTPError

    parts, seen = [], set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen and len(parts) < 4:
        seen.add(id(current))
        text = " ".join(str(current).split())
        if isinstance(current, HfHubHTTPError):  # carries the status, the URL and the server's message
            parts.append(text)
            break
        parts.append(f"{type(current).__name__}: {text}")
        current = current.__cause__ or current.__context__
    return " <- caused by: ".join(parts)


__all__ = ["HubPushError", "PushResult", "hub_endpoint", "push_checkpoint_folder"]
