"""An export: a published artifact set turned into a model a server loads, with a manifest.

``finetune export SRC --to URI`` and a run's ``output.merge`` both come here. The
source is a published set (an adapter, or a whole model from full/freeze), checked
against its own manifest before anything is read from it; the base model is the one the
manifest names (``baseModel``, at the spec's revision) unless the caller names another.

An export directory holds, for ``safetensors``: the merged weights under the base's
shard names (with ``model.safetensors.index.json`` when there are several),
``config.json`` and ``generation_config.json`` of the base, the tokenizer files with the
chat template, and ``manifest.json`` (written last) listing each with its sha256, so
``finetune verify`` checks an export like any published set. For ``gguf``: one
``model.gguf`` (tokenizer and chat template inside) and ``manifest.json``.

A run with ``output.merge`` publishes the merged model under ``merged/`` of its own set,
listed in the set's one manifest.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from finetune_api.uri import Role, without_credentials
from finetune_trainer import __version__
from finetune_trainer.embedding.layout import LAYOUT_FILES
from finetune_trainer.errors import ConfigError
from finetune_trainer.export.merge import (
    ADAPTER_CONFIG,
    MergeReport,
    merge_shards,
    read_adapter,
)
from finetune_trainer.publish import MANIFEST_KIND, file_entries, parse_manifest, verify_manifest
from finetune_trainer.storage.backends import (
    Access,
    LocalBackend,
    backend_for,
    fetch_model_dir,
    open_store,
)
from finetune_trainer.storage.store import MANIFEST, publish_dir

Format = Literal["safetensors", "gguf"]
MERGED = "merged"
"""Where a run with output.merge publishes the merged model inside its artifact set."""
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "vocab.txt",
    "preprocessor_config.json",  # an image classifier's processor: its tokenizer's place
)
MODEL_FILES = ("config.json", "generation_config.json")


@dataclass(frozen=True)
class ExportResult:
    uri: str
    format: Format
    merged: bool
    """False for a whole-model source (full, freeze): converted, nothing to merge."""
    report: MergeReport | None
    files: list[dict[str, Any]]


def read_source(uri: str, into: Path) -> tuple[Path, dict[str, Any]]:
    """A local directory holding the published set at ``uri`` and its manifest.

    A local set is read in place; a remote one has the files its manifest lists
    downloaded into ``into``. Either way the set must match its manifest: an export of
    a damaged or incomplete set would vouch for weights nobody trained.
    """
    backend, parsed = backend_for(uri, Role.OUTPUT)
    if isinstance(backend, LocalBackend):
        directory = backend.resolve(parsed)
    else:
        store = open_store(uri)
        into.mkdir(parents=True, exist_ok=True)
        if not store.exists(MANIFEST):
            raise ConfigError(f"{uri}: no {MANIFEST}, not a complete published set")
        store.get_file(MANIFEST, into / MANIFEST)
        listed = parse_manifest((into / MANIFEST).read_bytes(), f"{uri}/{MANIFEST}")
        if isinstance(listed, str):
            raise ConfigError(listed)
        for entry in listed["files"]:
            (into / entry["path"]).parent.mkdir(parents=True, exist_ok=True)
            store.get_file(entry["path"], into / entry["path"])
        directory = into
    problems = verify_manifest(directory)
    if problems:
        raise ConfigError(f"{uri}: does not match its manifest: {'; '.join(problems[:5])}")
    manifest = json.loads((directory / MANIFEST).read_text())
    return directory, manifest


def base_of(manifest: dict[str, Any], base_uri: str | None) -> tuple[str, str | None]:
    """The base model's URI and revision: ``base_uri`` if given, else the manifest's."""
    if base_uri is not None:
        return base_uri, None
    base = manifest.get("baseModel")
    if not isinstance(base, str):
        raise ConfigError(f"{MANIFEST} names no baseModel; name the base with --base URI")
    revision = ((manifest.get("spec") or {}).get("model") or {}).get("revision")
    return base, revision


def write_model_dir(
    source: Path,
    base_dir: Path | None,
    out: Path,
    fmt: Format = "safetensors",
    dtype: str | None = None,
) -> MergeReport:
    """The model files of an export into ``out`` (no manifest): ``source`` merged into
    ``base_dir`` when it is an adapter (``base_dir`` None: ``source`` is a whole model)."""
    adapter = read_adapter(source) if (source / ADAPTER_CONFIG).is_file() else None
    weights_dir = source if adapter is None else base_dir
    if weights_dir is None:
        raise ConfigError(f"{source} is an adapter: its base model is needed to merge it")
    if fmt == "gguf":
        from finetune_trainer.export.gguf_writer import write_gguf

        with tempfile.TemporaryDirectory(prefix="finetune-merge-") as tmp:
            report = merge_shards(weights_dir, adapter, Path(tmp), dtype)
            write_gguf(Path(tmp), weights_dir, _tokenizer_dir(source, weights_dir), out, dtype)
        return report
    report = merge_shards(weights_dir, adapter, out, dtype)
    for name in MODEL_FILES:
        if (weights_dir / name).is_file():
            shutil.copyfile(weights_dir / name, out / name)
    if dtype is not None and (out / "config.json").is_file():
        config = json.loads((out / "config.json").read_text())
        config["dtype" if "dtype" in config else "torch_dtype"] = dtype
        (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    tokenizer = _tokenizer_dir(source, weights_dir)
    for name in TOKENIZER_FILES:
        if (tokenizer / name).is_file():
            shutil.copyfile(tokenizer / name, out / name)
    for name in LAYOUT_FILES:  # a sentence encoder stays one: its pooling goes along
        if (source / name).is_file():
            (out / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source / name, out / name)
    return report


def _tokenizer_dir(source: Path, base_dir: Path) -> Path:
    """The run's tokenizer (published with the adapter: its chat template, its pad
    token) where there is one, else the base's."""
    return source if (source / "tokenizer_config.json").is_file() else base_dir


def export_manifest(
    out: Path, source_manifest: dict[str, Any], export: dict[str, Any]
) -> dict[str, Any]:
    """The export's manifest: its own files, the source's job, spec and metrics, and
    what was done (``export``: from where, format, dtype, merged)."""
    keep = ("apiVersion", "jobName", "baseModel", "method", "metrics", "spec")
    manifest = {
        **{k: source_manifest[k] for k in keep if k in source_manifest},
        "kind": MANIFEST_KIND,
        "createdAt": datetime.now(UTC).isoformat(timespec="seconds"),
        "trainerVersion": __version__,
        "export": export,
        "files": file_entries(out),
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def export(
    src: str,
    to: str,
    *,
    fmt: Format = "safetensors",
    dtype: str | None = None,
    base_uri: str | None = None,
    access: Access | None = None,
) -> ExportResult:
    """Merge (or convert) the published set at ``src`` and publish it to ``to``."""
    with tempfile.TemporaryDirectory(prefix="finetune-export-") as tmp:
        source, manifest = read_source(src, Path(tmp) / "source")
        adapter = (source / ADAPTER_CONFIG).is_file()
        if adapter and (manifest.get("spec") or {}).get("task") == "image-classification":
            raise ConfigError(
                f"{src}: an image classifier's adapter is not merged here (the merge maps a "
                "text model's weights, not a vision backbone's or its new head); load the "
                "set with peft as its README.md shows, or train with method.type full"
            )
        base_dir = None
        base = None
        if adapter:
            read_adapter(source)  # refuse prefix/prompt/p-tuning before any download
            base, revision = base_of(manifest, base_uri)
            base_dir = fetch_model_dir(base, revision, access)
        out = Path(tmp) / "out"
        out.mkdir()
        report = write_model_dir(source, base_dir, out, fmt, dtype)
        entries = export_manifest(
            out,
            manifest,
            {
                "from": without_credentials(src),
                "base": base,
                "format": fmt,
                "dtype": dtype,
                "merged": adapter,
            },
        )["files"]
        publish_dir(out, open_store(to, access))
    return ExportResult(to, fmt, adapter, report, entries)


def add_merged(staging: Path, base_dir: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """A run's ``output.merge``: the staged adapter merged into ``base_dir`` under
    ``merged/``, and the staged manifest rewritten to list those files too."""
    write_model_dir(staging, base_dir, staging / MERGED)
    manifest = {**manifest, "merged": f"{MERGED}/", "files": file_entries(staging)}
    (staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest
