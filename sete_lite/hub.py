"""The Hugging Face Hub: pushing a trained adapter or an export, and the model card that goes with it.

A push is checked before any work starts (HF_HUB_OFFLINE set, no token, a hub that cannot be reached or
refuses the token: one line each, naming the fix), so that a training run or an export never ends in a
network traceback after its work is done. The token is the environment's (HF_TOKEN, or `hf auth login`'s
stored one), as huggingface_hub finds it.

The model card is a run's README (method, data, curriculum stages, held-out table, command) under the
hub's metadata header; `base_model` is written only when the base is a hub repository, since a local
path or a builtin name means nothing on someone else's machine.
"""

from __future__ import annotations

import re
from pathlib import Path

# user/name, as the hub spells repository ids
REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
CARD_TAGS = ("sete_lite", "sent", "grpo", "lora", "reinforcement-learning", "trl")


def is_hub_repository(name: str) -> bool:
    """Whether a model name is a hub repository id (not a builtin name or an existing local path)."""
    return REPO_ID.fullmatch(name) is not None and not Path(name).exists()


def shareable_base(name: str) -> str:
    """How an adapter names its base for other machines (adapter_config.json): a hub repository or a
    builtin:NAME as is; a local directory by the hub repository its config.json says it came from, else by
    its own name (never this machine's absolute path)."""
    import json

    config = Path(name) / "config.json"
    if name.startswith("builtin:") or not config.is_file():
        return name
    origin = json.loads(config.read_text()).get("_name_or_path", "")
    return origin if is_hub_repository(origin) else Path(name).resolve().name


def check_hub_access(
    repo_id: str | None, flag: str, token: str | None = None, default_name: str | None = None
) -> tuple[str, str]:
    """(repository, token) to push to, after checking that a push can happen; `flag` is the setting that
    asked for it (named in the errors). With no `repo_id`, the repository is `default_name` under the
    token's user, as transformers' Trainer names it (the output directory's name)."""
    from huggingface_hub import HfApi, constants, get_token
    from huggingface_hub.errors import HfHubHTTPError

    if (repo_id is None and default_name is None) or (repo_id is not None and REPO_ID.fullmatch(repo_id) is None):
        raise ValueError(f"{flag} needs a hub repository as user/name (e.g. me/qwen-sent), got '{repo_id}'")
    if constants.HF_HUB_OFFLINE:
        raise RuntimeError(f"{flag}: HF_HUB_OFFLINE is set, so nothing can be pushed; unset it, or leave {flag} out")
    token = token or get_token()
    if token is None:
        raise RuntimeError(f"{flag} needs a Hugging Face token with write access: set HF_TOKEN, or run `hf auth login`")
    try:
        user = HfApi(token=token).whoami()["name"]
    except HfHubHTTPError as error:
        refusal = str(error).splitlines()[0]
        raise RuntimeError(f"{flag}: the hub refused the token ({refusal}); check HF_TOKEN") from None
    except Exception as error:  # httpx's and the OS's connection errors alike
        raise RuntimeError(
            f"{flag}: cannot reach the Hugging Face Hub at {constants.ENDPOINT} ({error}); check the connection, "
            f"or leave {flag} out and push later with python -m sete_lite.export --push-to-hub"
        ) from None
    return repo_id or f"{user}/{default_name}", token


def push_folder(folder: Path, repo_id: str, token: str, *, private: bool, message: str) -> str:
    """Upload every file of `folder` to the model repository `repo_id` (created if missing); its URL."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    url = api.create_repo(repo_id, private=private, exist_ok=True)
    api.upload_folder(folder_path=str(folder), repo_id=repo_id, commit_message=message)
    return str(url)


def model_card(base_model: str, body: str, library: str) -> str:
    """A hub model card: the metadata header (base model when it is a hub repository, library, tags), then
    `body` (markdown). `library` is what loads the files: peft for an adapter, transformers when merged."""
    header = ["---", f"library_name: {library}", "tags:", *[f"- {tag}" for tag in CARD_TAGS]]
    if is_hub_repository(base_model):
        header.insert(1, f"base_model: {base_model}")
    return "\n".join([*header, "---", "", body.strip(), ""])


def card_body(card: str) -> str:
    """A model card's markdown without its metadata header."""
    return card.split("\n---\n", 1)[1] if card.startswith("---\n") else card
