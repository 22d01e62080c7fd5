"""What ``finetune plan`` reads before the planner (:mod:`finetune_api.plan`) runs: the
base model's config and tokenizer without its weights, and the training data as the
run will tokenize it.

The data goes through the run's own preparation (:func:`prepare_data`, the same
cleaning, truncation, packing and cache), so rows, tokens, the longest sequence and the
label share are the run's, not a guess; the tokenization is cached for the run that
follows.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from finetune_api.config import TrainerConfig
from finetune_api.plan import DataFacts, ModelShape
from finetune_api.uri import Role, parse_uri
from finetune_trainer.data.batching import length_grouped_batches
from finetune_trainer.errors import ModelError
from finetune_trainer.recipe.setup import model_access
from finetune_trainer.storage.backends import fetch_model_dir, open_store
from finetune_trainer.storage.credentials import hf_token
from finetune_trainer.storage.store import Access

log = logging.getLogger(__name__)

METADATA_PATTERNS = (
    "config.json",
    "generation_config.json",
    "tokenizer*",
    "special_tokens_map.json",
    "chat_template.*",
    "vocab.*",
    "merges.txt",
    "*.model",
    "added_tokens.json",
)
"""The files of a model directory the planner reads: no weights."""


def _is_metadata(name: str) -> bool:
    from fnmatch import fnmatch

    return any(fnmatch(name, pattern) for pattern in METADATA_PATTERNS)


def model_metadata_dir(uri: str, revision: str | None, access: Access) -> Path:
    """A directory with the model's config and tokenizer files, without downloading the
    weights (a local model is read where it is)."""
    parsed = parse_uri(uri, Role.MODEL)
    if parsed.scheme == "hf":
        from huggingface_hub import snapshot_download

        return Path(
            snapshot_download(
                repo_id=parsed.location,
                revision=revision,
                token=hf_token(access.credentials_secret),
                allow_patterns=list(METADATA_PATTERNS),
            )
        )
    if parsed.scheme in ("s3", "az", "gs"):  # only the metadata, not the weights
        store = open_store(uri, access)
        directory = Path(tempfile.mkdtemp(prefix="finetune-plan-"))
        for info in store.list():
            if "/" not in info.key and _is_metadata(info.key):
                store.get_file(info.key, directory / info.key)
        return directory
    return fetch_model_dir(uri, revision, access)


def read_shape(directory: Path) -> ModelShape:
    """The model's shape from ``config.json`` in ``directory``."""
    path = directory / "config.json"
    try:
        config: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot read the model's config.json ({path}): {exc}") from exc
    return ModelShape.from_config(config)


def data_facts(config: TrainerConfig, tokenizer: Any) -> DataFacts:
    """The training data as the run prepares it: rows, tokens, label tokens, the longest
    row and the tokens once micro-batches are padded (the run's own batching)."""
    from finetune_trainer.recipe.setup import setup_data

    data = setup_data(config, tokenizer)
    lengths = [len(example.input_ids) for example in data.train]
    batches = length_grouped_batches(lengths, config.training.batch_size, config.training.seed)
    padded = sum(len(batch) * max(lengths[i] for i in batch) for batch in batches)
    return DataFacts(
        rows=len(lengths),
        tokens=sum(lengths),
        label_tokens=sum(example.trained_tokens for example in data.train),
        longest=max(lengths, default=0),
        padded_tokens=padded,
        num_labels=len(data.labels) if data.labels is not None else 2,
    )


def host_cores() -> int:
    """The cores this process may run on (a container's CPU set, not the host's)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def host_memory() -> int | None:
    """This machine's memory in bytes (a cgroup limit when lower)."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - not POSIX
        return None
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit.isdigit():
            total = min(total, int(limit))
    except OSError:
        pass
    return int(total)


def plan_inputs(config: TrainerConfig, *, read_data: bool) -> tuple[ModelShape, DataFacts | None]:
    """The shape of ``config``'s base model and, when ``read_data``, its data's facts.
    A stream (``dataset.streaming``) is not read: it may be larger than this machine,
    and its steps are maxSteps; the plan takes the spec's worst case (maxSeqLength)."""
    directory = model_metadata_dir(config.model.uri, config.model.revision, model_access(config))
    shape = read_shape(directory)
    if not read_data or config.dataset.streaming:
        return shape, None
    from finetune_trainer.modeling import load_tokenizer

    tokenizer = load_tokenizer(directory, config.model.trust_remote_code)
    return shape, data_facts(config, tokenizer)
