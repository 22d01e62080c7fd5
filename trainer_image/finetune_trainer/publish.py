"""Publishing a run: adapter, tokenizer, metrics, plots, model card, and the manifest last.

The artifact directory is assembled in a local staging directory, then handed to the
output URI's storage backend, which copies every file and ``manifest.json`` last. The
manifest lists every file with its size and sha256, the spec that produced it and the
metrics: a directory without it is incomplete, one with it can be verified.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

from finetune_api.config import TrainerConfig
from finetune_trainer import __version__
from finetune_trainer.model_card import model_card as model_card  # built there
from finetune_trainer.model_card import usage as usage
from finetune_trainer.plots import titles, write_plots
from finetune_trainer.storage.backends import Access, open_store
from finetune_trainer.storage.hub import HubStore
from finetune_trainer.storage.store import MANIFEST, Store, local_files, publish_dir

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase

MANIFEST_KIND = "ArtifactManifest"
CHECKPOINTS = "checkpoints"
"""Reserved under every output: the run's checkpoints, not part of the artifact set."""
METRICS = "metrics.json"
MODEL_CARD = "README.md"


def sha256_file(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


class FileEntry(TypedDict):
    """One file as a manifest lists it."""

    path: str
    """Relative to the manifest's directory, ``/``-separated."""
    size: int
    sha256: str


def file_entries(directory: Path) -> list[FileEntry]:
    """Every artifact file with its size and sha256."""
    return [
        {
            "path": rel,
            "size": (directory / rel).stat().st_size,
            "sha256": sha256_file(directory / rel),
        }
        for rel in local_files(directory)
    ]


def build_manifest(
    files: list[FileEntry],
    config: TrainerConfig,
    metrics: dict[str, Any],
    gate: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The manifest; ``gate`` is the evaluation gate's verdict when the spec has one
    (:meth:`finetune_api.gate.GateVerdict.as_manifest`): a pipeline promotes a set only
    when ``gate.passed`` is true, since a failed gate publishes too (for inspection)."""
    manifest = {
        "apiVersion": config.api_version,
        "kind": MANIFEST_KIND,
        "jobName": config.job_name,
        "createdAt": datetime.now(UTC).isoformat(timespec="seconds"),
        "trainerVersion": __version__,
        "baseModel": config.model.uri,
        "method": config.method.type,
        "files": files,
        "metrics": metrics,
        "spec": config.redacted(),
    }
    if gate is not None:
        manifest["gate"] = gate
    return manifest


def verify_manifest(directory: Path) -> list[str]:
    """Problems found checking ``directory`` against its manifest; empty when it matches.

    Files the manifest does not list count as problems too: the set a reader gets must
    be exactly the set the trainer vouched for.
    """
    manifest_path = directory / MANIFEST
    if not manifest_path.is_file():
        return [f"{directory}: no {MANIFEST}, the artifact set is incomplete"]
    present = {rel: (directory / rel).stat().st_size for rel in local_files(directory)}
    manifest = parse_manifest(manifest_path.read_bytes(), str(manifest_path))
    if isinstance(manifest, str):
        return [manifest]
    return compare_to_manifest(manifest, present, lambda rel: sha256_file(directory / rel))


def parse_manifest(data: bytes, where: str) -> dict[str, Any] | str:
    """The manifest in ``data``, or the problem that makes it unusable (not JSON, not an
    ArtifactManifest, a malformed file entry): a damaged manifest vouches for nothing,
    and is reported as one problem of the set rather than as a traceback."""
    try:
        manifest = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        return f"{where}: damaged, not valid JSON ({exc}); publish the set again"
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, list):
        return f"{where}: damaged, no list of files (not an {MANIFEST_KIND}); publish the set again"
    for i, entry in enumerate(files):
        if not (
            isinstance(entry, dict)
            and isinstance(entry.get("path"), str)
            and isinstance(entry.get("size"), int)
            and isinstance(entry.get("sha256"), str)
        ):
            return (
                f"{where}: damaged, files[{i}] is not a path, size and sha256; publish the "
                "set again"
            )
    return dict(manifest)


def verify_store(store: Store) -> list[str]:
    """:func:`verify_manifest` for any store (``s3://`` included).

    Sizes come from the listing; each listed file of the right size is then downloaded,
    one at a time into a temporary directory, hashed and deleted, so the check needs the
    disk space of the largest file, never of the set, and no memory to speak of.
    """
    present = {o.key: o.size for o in store.list()}
    if MANIFEST not in present:
        return [f"{store.uri}: no {MANIFEST}, the artifact set is incomplete"]
    del present[MANIFEST]
    with tempfile.TemporaryDirectory(prefix="finetune-verify-") as tmp:
        store.get_file(MANIFEST, Path(tmp) / MANIFEST)
        manifest = parse_manifest((Path(tmp) / MANIFEST).read_bytes(), f"{store.uri}/{MANIFEST}")
        if isinstance(manifest, str):
            return [manifest]

        def remote_sha256(rel: str) -> str:
            local = Path(tmp) / "file"
            store.get_file(rel, local)
            try:
                return sha256_file(local)
            finally:
                local.unlink(missing_ok=True)

        return compare_to_manifest(manifest, present, remote_sha256)


def compare_to_manifest(
    manifest: dict[str, Any], present: dict[str, int], sha256_of: Callable[[str], str]
) -> list[str]:
    """Problems between a manifest and the files ``present`` (relative path to size)."""
    problems = []
    listed = set()
    for entry in manifest["files"]:
        listed.add(entry["path"])
        size = present.get(entry["path"])
        if size is None:
            problems.append(f"{entry['path']}: missing")
        elif size != entry["size"] or sha256_of(entry["path"]) != entry["sha256"]:
            problems.append(f"{entry['path']}: size or sha256 differs from the manifest")
    # checkpoints/ is the run's own workspace (each checkpoint has its own manifest, and
    # the output's lease lives there), not part of the published set. Anything else the
    # manifest does not list is reported, hidden files too (a local store's interrupted
    # writes are emptied by the next run that takes the output).
    unlisted = {p for p in present if not p.startswith(f"{CHECKPOINTS}/")} - listed
    for extra in sorted(unlisted):
        problems.append(f"{extra}: not listed in the manifest")
    return problems


def stage_artifacts(
    staging: Path,
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    config: TrainerConfig,
    metrics: dict[str, Any],
    base_model_ref: str,
    *,
    state_dict: dict[str, Any] | None = None,
    gate: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write everything a run publishes into ``staging``, manifest last; return the manifest.

    The method writes its weights (an adapter, or the whole model for full and freeze);
    ``state_dict`` replaces the model's own where the weights were gathered from shards.
    """
    from finetune_trainer.methods import get_method

    method = get_method(config.method.type)
    method.save(model, staging, state_dict)
    hub_base = config.model.uri.startswith("hf://")
    _point_adapter_at(staging, base_model_ref, config.model.revision if hub_base else None)
    tokenizer.save_pretrained(staging)
    if config.task == "sentence-embedding":
        _write_sentence_layout(staging, model, config, metrics)
    (staging / METRICS).write_text(json.dumps(metrics, indent=2) + "\n")
    alt = titles(metrics)
    plots = {path: alt[path] for path in write_plots(metrics, staging)}
    (staging / MODEL_CARD).write_text(
        model_card(config, _headline(metrics), base_model_ref, method.artifact, plots)
    )
    manifest = build_manifest(file_entries(staging), config, _headline(metrics), gate)
    manifest.update(class_labels(model, config))
    (staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def _write_sentence_layout(
    staging: Path, model: torch.nn.Module, config: TrainerConfig, metrics: dict[str, Any]
) -> None:
    """A sentence encoder's sentence-transformers files, with the pooling it trained
    with (metrics ``pooling``, resolved by the run from the base model)."""
    from finetune_trainer.embedding.layout import Layout, write_layout

    layout = Layout(metrics.get("pooling", "mean"), config.contrastive_options.normalize)
    dimension = int(getattr(model, "config", None).hidden_size)  # type: ignore[union-attr]
    write_layout(staging, layout, dimension, config.training.max_seq_length)


def class_labels(model: torch.nn.Module, config: TrainerConfig) -> dict[str, list[str]]:
    """A classifier's class names in logit order, as the manifest's ``labels``: an
    adapter set has no config.json, so without them whoever loads it (``finetune
    generate``) would know its classes only as LABEL_0, LABEL_1, ..."""
    if config.task not in ("sequence-classification", "image-classification"):
        return {}
    id2label = getattr(getattr(model, "config", None), "id2label", None) or {}
    return {"labels": [str(id2label[i]) for i in sorted(id2label)]}


def _headline(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in metrics.items() if not isinstance(v, list | dict)}


def _point_adapter_at(staging: Path, base_model_ref: str, revision: str | None = None) -> None:
    """Record the base model as ``AutoPeftModel`` loads it (see ``runner.base_model_ref``),
    not this machine's cache path, and the Hub revision it was trained on when pinned:
    peft passes the config's ``revision`` to the base's ``from_pretrained``."""
    path = staging / "adapter_config.json"
    if path.is_file():
        adapter = json.loads(path.read_text())
        adapter["base_model_name_or_path"] = base_model_ref
        if revision is not None:
            adapter["revision"] = revision
        path.write_text(json.dumps(adapter, indent=2, sort_keys=True) + "\n")


def publish(staging: Path, uri: str, access: Access | None = None) -> None:
    """Publish the staged artifact set to ``uri``, ``manifest.json`` last; to the Hub in
    one commit, which is all-or-nothing itself (``storage.hub``)."""
    store = open_store(uri, access)
    if isinstance(store, HubStore):
        store.publish_set(staging)
    else:
        publish_dir(staging, store)
