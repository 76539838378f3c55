"""Hugging Face Hub ids: ``whatruns.load("deepseek-ai/DeepSeek-V3")`` reads that repository's ``config.json``.

The file comes through ``huggingface_hub`` (``hf_hub_download``), so its conventions hold: the cache under
``HF_HOME`` (or ``HF_HUB_CACHE``), ``HF_HUB_OFFLINE=1`` to read only the cache, ``HF_TOKEN`` (or a saved
login) for gated repositories. A model fetched once counts offline afterwards.

Only ``config.json`` is read, and only as JSON: nothing from a repository is ever executed (no
``trust_remote_code``, no ``auto_map`` imports). Without network and without a cached copy the error says
so in one line and suggests a local path.
"""

from __future__ import annotations

import re
from typing import Optional

from .spec import SpecError

HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
"""What a Hub model id looks like: ``owner/name`` (letters, digits, ``.``, ``_``, ``-``)."""


def looks_like_hub_id(text: str) -> bool:
    """Whether ``text`` has the form of a Hub model id (``owner/name``, no ``..`` and no file suffix)."""
    return bool(HUB_ID.match(text)) and ".." not in text and not text.endswith(".json")


def config_path(repo_id: str, revision: Optional[str] = None) -> str:
    """The local path of ``repo_id``'s ``config.json``: from the cache if it is there (a config, once
    fetched, is read from the cache without asking the Hub), else downloaded into it. huggingface_hub's
    own log lines (retries when the network is down) are kept off the terminal: the error is one line."""
    try:
        from huggingface_hub import errors, hf_hub_download
        from huggingface_hub.utils import logging as hub_logging
    except ImportError:
        raise SpecError(f"{repo_id!r} looks like a Hugging Face Hub id, but huggingface_hub is not installed "
                        "(pip install huggingface_hub); or give a path to its config.json") from None
    try:
        return hf_hub_download(repo_id, "config.json", revision=revision, local_files_only=True)
    except (errors.LocalEntryNotFoundError, errors.HFValidationError):
        pass
    from huggingface_hub import constants, get_hf_file_metadata, hf_hub_url
    logger = hub_logging.get_logger()
    level = logger.level
    logger.setLevel(hub_logging.CRITICAL)
    try:
        if not constants.is_offline_mode():  # one quick look first: no network fails now, not after retries
            try:
                get_hf_file_metadata(hf_hub_url(repo_id, "config.json", revision=revision), timeout=10)
            except errors.HfHubHTTPError:
                pass  # the download below says which (not found, gated, ...)
            except Exception as e:  # noqa: BLE001 - httpx's connection errors, timeouts, DNS failures
                raise SpecError(f"{repo_id}: no config.json in the Hugging Face cache, and the Hub cannot be "
                                f"reached ({type(e).__name__}); fetch it once with network, or give a path to its "
                                "config.json") from None
        return hf_hub_download(repo_id, "config.json", revision=revision)
    except SpecError:
        raise
    except errors.LocalEntryNotFoundError:
        raise SpecError(f"{repo_id}: no config.json in the Hugging Face cache, and the Hub cannot be reached "
                        "(offline, or no network); fetch it once with network, or give a path to its config.json") \
            from None
    except errors.GatedRepoError:
        raise SpecError(f"{repo_id}: a gated repository; accept its terms on the Hub and log in "
                        "(huggingface-cli login, or HF_TOKEN), or give a path to its config.json") from None
    except errors.RepositoryNotFoundError:
        raise SpecError(f"{repo_id}: no such model on the Hugging Face Hub (or it is private: set HF_TOKEN)") from None
    except errors.RevisionNotFoundError:
        raise SpecError(f"{repo_id}: no revision {revision!r} on the Hub") from None
    except errors.EntryNotFoundError:
        raise SpecError(f"{repo_id}: the repository has no config.json") from None
    except (errors.HfHubHTTPError, OSError, ValueError) as e:
        raise SpecError(f"{repo_id}: could not fetch config.json from the Hub ({type(e).__name__}: {e})") from None
    finally:
        logger.setLevel(level)
