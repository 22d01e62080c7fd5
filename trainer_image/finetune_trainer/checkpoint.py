"""Checkpoints in the output storage, and resuming from the newest complete one.

A checkpoint is ``<output>/checkpoints/step-N/``: the trainable weights (adapter or
whole model, whatever requires a gradient), the optimizer, scheduler and gradient
scaler states, every rank's random generators, the loop's progress (step, tokens,
histories, early-stopping state; the step is also the position in the data, whose
order is a pure function of the seed), and ``manifest.json`` last, listing every file
with its size and sha256. Without its manifest a checkpoint does not exist.

A checkpoint resumes only the run it belongs to: its manifest holds the run's identity
(:func:`identity`), the configuration sections that shape training and the content of
the base model and the data. A model or data file rewritten in place keeps its URI; its
content decides whether an old checkpoint may continue (or, at its last step, stand for)
this run.

Nothing here is unpickled: weights are safetensors, progress is JSON, and state dicts
are read with ``torch.load(weights_only=True)``, so a checkpoint planted in a bucket
cannot run code in the trainer. Whatever is wrong with a checkpoint (damaged, planted,
written by a newer trainer) is a :class:`StorageError` naming the file and the way out.

Ranks: every rank writes its own random state; rank 0 writes the shared parts and,
once every rank's files are in, the manifest. Only this run writes under its output,
so anything else found under ``checkpoints/`` when a checkpoint completes (incomplete
sets from a killed attempt, sets beyond ``keepCheckpoints``, sets of an earlier
configuration) is removed then.
"""

from __future__ import annotations

import hashlib
import json
import logging
import pickle
import random
import re
import struct
import tempfile
from array import array
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, NotRequired, TypedDict

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from finetune_api.config import TrainerConfig
from finetune_trainer.errors import StorageError, StorageUnavailable
from finetune_trainer.outcome import is_out_of_memory
from finetune_trainer.publish import CHECKPOINTS, file_entries, sha256_file
from finetune_trainer.state import Checkpointable, LoopState, Resume
from finetune_trainer.storage.store import MANIFEST, Store, delete_set, join_key

if TYPE_CHECKING:
    from accelerate import Accelerator

    from finetune_trainer.data.prepare import PreparedData
    from finetune_trainer.data.tokenize import TokenizedExample

log = logging.getLogger("finetune.trainer")

FORMAT = 1
TRAINABLE = "trainable.safetensors"
BEST = "best.safetensors"
OPTIMIZER = "optimizer.pt"
SCHEDULER = "scheduler.pt"
SCALER = "scaler.pt"
STATE = "state.json"
DATA_STREAM = "data-stream.json"
"""A streaming run's position in its stream (``ExampleStream.state_dict``): with a
stream, the step is no position in the data, so the stream's own state is saved."""
_STEP_DIR = re.compile(rf"^{CHECKPOINTS}/step-(\d+)/(.+)$")
_OWN_FILE = re.compile(
    r"^(?:(?:trainable|best)\.safetensors|(?:optimizer|scheduler|scaler)\.pt|state\.json"
    r"|data-stream\.json"
    r"|(?:rng|optimizer)/rank-\d+\.pt)$"
)
"""Every file a checkpoint of this format may hold (its manifest lists no other)."""


def prefix_for(step: int) -> str:
    return f"{CHECKPOINTS}/step-{step}"


def rng_file(rank: int) -> str:
    return f"rng/rank-{rank}.pt"


def optimizer_shard(rank: int) -> str:
    return f"optimizer/rank-{rank}.pt"


# --------------------------------------------------------------------------- identity


Identity = dict[str, str]
"""What a checkpoint must share with a run to resume it: a short digest per part."""

CONTENT_PARTS = {
    "modelContent": "the base model's files",
    "trainContent": "the training examples",
    "validationContent": "the validation examples",
}
"""The identity's content parts (besides the configuration sections), in words."""

WHOLE_FILE_LIMIT = 64 << 20
"""Model files up to this size are hashed whole; bigger ones are sampled."""
SAMPLE_BLOCKS, SAMPLE_BLOCK = 64, 1 << 20
"""A big model file's digest reads this many blocks of this size, spread evenly."""
_HUB_BLOB = re.compile(r"^(?:[0-9a-f]{40}|[0-9a-f]{64})$")


def fingerprint(config: TrainerConfig) -> Identity:
    """A digest per section that shapes the training state, to tell whether a checkpoint
    can continue this run. Evaluation, output and the metrics port may change freely."""
    sections: dict[str, Any] = {
        "task": config.task,
        "model": config.model.model_dump(mode="json", exclude={"credentials_secret"}),
        "dataset": config.dataset.model_dump(mode="json", exclude={"credentials_secret"}),
        "method": config.method.model_dump(mode="json"),
        "training": config.training.model_dump(mode="json", exclude={"metrics_port"}),
        "distributed": config.distributed.model_dump(mode="json"),
    }
    return {
        name: hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:16]
        for name, value in sections.items()
    }


def identity(config: TrainerConfig, model_dir: Path, data: PreparedData) -> Identity:
    """The run's identity: the configuration's :func:`fingerprint` and the content of
    what it trains (:data:`CONTENT_PARTS`). The configuration names the model and the
    data by URI, and a file rewritten in place keeps its URI: without the content, a
    rerun on changed data would resume (or, finished, republish) the old weights."""
    return {
        **fingerprint(config),
        "modelContent": model_identity(model_dir),
        "trainContent": examples_identity(data.train),
        "validationContent": examples_identity(data.validation),
    }


def model_identity(directory: Path) -> str:
    """The content of a model directory: every file's path and content digest.

    Affordable for models of hundreds of GB, and stable across processes and downloads
    (no times, no absolute paths): a file of the Hugging Face cache is a link to a blob
    named by its content's hash, which is taken as is; other files up to
    :data:`WHOLE_FILE_LIMIT` (config, tokenizer, small weights) are hashed whole, and a
    bigger one by its size and :data:`SAMPLE_BLOCKS` blocks spread over it, the first
    holding the safetensors header (names, dtypes, shapes). Retrained weights differ in
    every block; an edit of a few bytes between the blocks of a file over 64 MiB would
    go unnoticed (that is the price of not reading the whole model at every start).
    Hidden files (download markers, locks) are not the model and are left out.
    """
    digest = hashlib.sha256()
    for path in sorted(directory.rglob("*")):
        rel = path.relative_to(directory)
        if any(part.startswith(".") or part == "__pycache__" for part in rel.parts):
            continue
        if path.is_file():
            digest.update(f"{rel.as_posix()}\0{_file_identity(path)}\n".encode())
    return digest.hexdigest()[:16]


def _tables_identity(examples: Sequence[TokenizedExample]) -> str | None:
    from finetune_trainer.data.table import ExampleTable, TableView

    if isinstance(examples, ExampleTable):
        examples = examples[:]
    if not isinstance(examples, TableView):
        return None
    digest = hashlib.sha256(b"tables\0")
    for table in examples.tables:
        digest.update(f"{table.kind}:{table.content_digest}\n".encode())
    digest.update(examples.indices.tobytes())
    if examples.sources is not None:
        digest.update(examples.sources.tobytes())
    return digest.hexdigest()[:16]


def _file_identity(path: Path) -> str:
    resolved = path.resolve()
    if resolved.parent.name == "blobs" and _HUB_BLOB.match(resolved.name):
        return f"blob:{resolved.name}"  # the Hub cache names a blob by its content's hash
    size = resolved.stat().st_size
    if size <= WHOLE_FILE_LIMIT:
        return f"sha256:{sha256_file(resolved)}"
    digest = hashlib.sha256()
    span = size - SAMPLE_BLOCK
    with resolved.open("rb") as f:
        for i in range(SAMPLE_BLOCKS):
            f.seek(span * i // (SAMPLE_BLOCKS - 1))
            digest.update(f.read(SAMPLE_BLOCK))
    return f"sampled:{size}:{digest.hexdigest()}"


def examples_identity(examples: Sequence[TokenizedExample]) -> str:
    """The content of tokenized examples in their order: exactly what the loop steps
    through (a checkpoint's step is a position in this list). It follows the data files,
    the tokenizer and the preparation settings, and costs one pass over ids already in
    memory, on rank 0 only. Examples in tables (:mod:`finetune_trainer.data.table`) are
    identified without building one: each table file's sha256 and the view's index
    arrays (which rows, in which order)."""
    tables = _tables_identity(examples)
    if tables is not None:
        return tables
    digest = hashlib.sha256(str(len(examples)).encode())
    for example in examples:
        label = -1 if example.label is None else example.label
        digest.update(
            struct.pack(
                "<qqq?", len(example.input_ids), len(example.labels), label, example.truncated
            )
        )
        digest.update(array("q", example.input_ids).tobytes())
        digest.update(array("q", example.labels).tobytes())
        # An image's content (task image-classification): it has no tokens to digest.
        digest.update(getattr(example, "digest", "").encode())
    return digest.hexdigest()[:16]


def differences(theirs: Mapping[str, Any], wanted: Identity) -> list[str]:
    """What differs between a checkpoint's identity and this run's, in words: each
    configuration section by name, each content part with both digests."""
    changed = []
    for part in sorted(set(wanted) | set(theirs)):
        old, new = theirs.get(part), wanted.get(part)
        if old == new:
            continue
        if part in CONTENT_PARTS:
            was = old if isinstance(old, str) else "not recorded (an older trainer)"
            changed.append(f"{CONTENT_PARTS[part]} ({part} {was} -> {new})")
        else:
            changed.append(f"configuration section {part}")
    return changed


# --------------------------------------------------------------------------- finding


def complete_checkpoints(store: Store) -> dict[int, set[str]]:
    """Every step under ``checkpoints/`` and whether it has a manifest: {step: keys}."""
    found: dict[int, set[str]] = {}
    for obj in store.list(CHECKPOINTS):
        match = _STEP_DIR.match(obj.key)
        if match:
            found.setdefault(int(match.group(1)), set()).add(match.group(2))
    return found


def read_manifest(store: Store, step: int, scratch: Path) -> dict[str, Any]:
    """Checkpoint ``step``'s manifest; a StorageError naming it when it is not one."""
    local = scratch / f"manifest-{step}.json"
    store.get_file(join_key(prefix_for(step), MANIFEST), local)
    where = f"{store.uri}/{prefix_for(step)}/{MANIFEST}"
    try:
        manifest = json.loads(local.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise damaged(store, step, f"{where}: not valid JSON ({exc})") from None
    if not isinstance(manifest, dict):
        raise damaged(store, step, f"{where}: not a JSON object")
    form = manifest.get("format")
    if isinstance(form, int) and not isinstance(form, bool) and form > FORMAT:
        raise newer_trainer(
            store, step, f"{where}: checkpoint format {form}, this trainer reads {FORMAT}"
        )
    return manifest


def damaged(store: Store, step: int, what: str) -> StorageError:
    """The error for a checkpoint that cannot be read as one: what is wrong, and the fix.
    Not resuming it silently would train again and then prune it; the user decides."""
    return StorageError(
        f"{what}: checkpoint {store.uri}/{prefix_for(step)} is damaged. Delete that "
        "directory to resume from an older checkpoint (or delete checkpoints/ to train from "
        "the beginning)"
    )


def newer_trainer(store: Store, step: int, what: str) -> StorageError:
    """The error for a checkpoint written by a newer trainer. It is not skipped: this run's
    first checkpoint would then delete it, and with it the progress it holds."""
    return StorageError(
        f"{what}: checkpoint {store.uri}/{prefix_for(step)} was written by a newer version "
        "of the trainer. Resume it with that version's image, or delete the output's "
        "checkpoints/ (or choose another output.uri) to train from the beginning"
    )


def latest_usable(store: Store, wanted: Identity, scratch: Path) -> int | None:
    """The newest complete checkpoint written by this run (its :func:`identity`), if any.

    Checkpoints of another configuration or other content are named in a warning with
    what changed, and not resumed: this run trains from the beginning, and removes them
    once its first checkpoint is complete. A retried pod has the same inputs, hence the
    same identity, and resumes its own checkpoints."""
    steps = complete_checkpoints(store)
    for step in sorted((s for s, keys in steps.items() if MANIFEST in keys), reverse=True):
        manifest = read_manifest(store, step, scratch)
        theirs = manifest.get("fingerprint")
        theirs = theirs if isinstance(theirs, dict) else {}
        if manifest.get("format") == FORMAT and theirs == wanted:
            return step
        changed = differences(theirs, wanted) if manifest.get("format") == FORMAT else []
        log.warning(
            "not resuming from %s/%s: it was written for other inputs (changed: %s); this "
            "run trains from the beginning, and removes it when its first checkpoint is "
            "complete",
            store.uri,
            prefix_for(step),
            "; ".join(changed or ["checkpoint format"]),
        )
    return None


# --------------------------------------------------------------------------- saving


class RngState(TypedDict):
    """One rank's random generators, as ``rng/rank-N.pt`` holds them (tensors, lists and
    numbers only, so ``torch.load(weights_only=True)`` reads them back)."""

    python: tuple[Any, ...]
    """``random.getstate()`` (nested lists after a round trip)."""
    numpy: list[Any]
    """numpy's legacy state: kind, keys (as a tensor), pos, has_gauss, cached."""
    torch: torch.Tensor
    cuda: NotRequired[list[torch.Tensor]]
    """Every CUDA device's state, when CUDA was in use."""


def _rng_state() -> RngState:
    numpy_state: Any = np.random.get_state(legacy=True)  # a tuple, not the dict form
    kind, keys, pos, has_gauss, cached = numpy_state
    state: RngState = {
        "python": random.getstate(),
        "numpy": [kind, torch.from_numpy(keys.copy()), pos, has_gauss, cached],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: RngState) -> None:
    random.setstate(_as_tuples(state["python"]))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy(), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuples(value: Any) -> Any:
    """random.setstate wants the nested tuples getstate gave (lists after a round trip)."""
    return tuple(_as_tuples(v) for v in value) if isinstance(value, list | tuple) else value


def _write_state_dicts(directory: Path, cp: Checkpointable, main: bool, rank: int) -> None:
    """Rank 0 writes the shared parts; with FSDP every rank also writes its optimizer
    shard. Gathering sharded weights is collective, so every rank takes part in it."""
    from finetune_trainer.distributed import localize_optimizer_state
    from finetune_trainer.state import trainable_state

    weights = trainable_state(cp.model)
    optimizer, sharded = localize_optimizer_state(cp.optimizer.state_dict())
    if sharded:
        torch.save(optimizer, directory / optimizer_shard(rank))
    if not main:
        return
    save_file(weights, directory / TRAINABLE)
    if cp.best is not None:
        save_file(cp.best, directory / BEST)
    if not sharded:
        torch.save(optimizer, directory / OPTIMIZER)
    torch.save(cp.scheduler.state_dict(), directory / SCHEDULER)
    if cp.scaler is not None:
        torch.save(cp.scaler.state_dict(), directory / SCALER)


def save(
    store: Store,
    cp: Checkpointable,
    *,
    config: TrainerConfig,
    identity: Identity,
    accelerator: Accelerator,
    stream_state: dict[str, Any] | None = None,
) -> None:
    """Write ``cp`` as ``checkpoints/step-N``, manifest last (with the run's ``identity``,
    see :func:`identity`); then drop what is stale. ``stream_state``: a streaming run's
    position in its stream after this step, saved as ``data-stream.json``."""
    from accelerate.utils import gather_object

    step, rank = cp.state.step, accelerator.process_index
    prefix = prefix_for(step)
    main = accelerator.is_main_process
    if main:
        store.delete([join_key(prefix, MANIFEST)])  # a set being rewritten is not complete
    accelerator.wait_for_everyone()
    with tempfile.TemporaryDirectory(prefix="finetune-checkpoint-") as tmp:
        staging = Path(tmp)
        (staging / "rng").mkdir()
        (staging / "optimizer").mkdir()
        torch.save(_rng_state(), staging / rng_file(rank))
        _write_state_dicts(staging, cp, main, rank)
        if main:
            state = {**asdict(cp.state), "worldSize": accelerator.num_processes}
            (staging / STATE).write_text(json.dumps(state) + "\n")
            if stream_state is not None:
                (staging / DATA_STREAM).write_text(json.dumps(stream_state) + "\n")
        entries = file_entries(staging)
        for entry in entries:
            store.put_file(staging / entry["path"], join_key(prefix, entry["path"]))
        every_rank = gather_object([entries])
        if main:
            manifest = {
                "kind": "Checkpoint",
                "format": FORMAT,
                "jobName": config.job_name,
                "step": step,
                "endOfEpoch": cp.end_of_epoch,
                "fingerprint": identity,
                "files": sorted((e for part in every_rank for e in part), key=lambda e: e["path"]),
            }
            (staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
            store.put_file(staging / MANIFEST, join_key(prefix, MANIFEST))
            log.info("checkpoint %s/%s saved", store.uri, prefix)
            prune(store, keep=config.output.keep_checkpoints, newest=step)
    accelerator.wait_for_everyone()


def prune(store: Store, *, keep: int, newest: int) -> None:
    """Keep the ``keep`` newest complete checkpoints up to ``newest``; remove the rest."""
    steps = complete_checkpoints(store)
    complete = sorted((s for s, keys in steps.items() if MANIFEST in keys), reverse=True)
    kept = set([s for s in complete if s <= newest][:keep])
    for step in sorted(steps):
        if step not in kept:
            delete_set(store, prefix_for(step))


# --------------------------------------------------------------------------- loading


def load(store: Store, step: int, *, rank: int) -> Resume:
    """Checkpoint ``step`` as a :class:`Resume`, every file checked against the manifest.

    Anything unexpected (a file missing, damaged or not this trainer's, a state from a
    newer trainer) is a :class:`StorageError` naming the file, never a traceback."""
    prefix = prefix_for(step)
    with tempfile.TemporaryDirectory(prefix="finetune-resume-") as tmp:
        local = Path(tmp)
        manifest = read_manifest(store, step, local)
        # The shared files, and of the per-rank ones (rng/, optimizer/) only this rank's.
        per_rank = {rng_file(rank), optimizer_shard(rank)}
        mine = {
            e["path"]: e
            for e in _manifest_files(store, step, manifest)
            if "/" not in e["path"] or e["path"] in per_rank
        }
        _require(store, step, mine, rank)
        for path, entry in mine.items():
            target = local / path
            _download(store, step, path, target)
            if target.stat().st_size != entry["size"] or sha256_file(target) != entry["sha256"]:
                raise damaged(
                    store,
                    step,
                    f"{store.uri}/{prefix}/{path}: does not match its manifest (size or sha256)",
                )
        files = _Files(store, step, local)
        rng = files.state_dict(rng_file(rank)) if rng_file(rank) in mine else None
        if rng is None:
            log.warning("checkpoint %s has no random state for rank %d", prefix, rank)
        sharded = OPTIMIZER not in mine
        return Resume(
            state=files.loop_state(),
            trainable=files.weights(TRAINABLE),
            optimizer=files.state_dict(optimizer_shard(rank) if sharded else OPTIMIZER),
            optimizer_sharded=sharded,
            scheduler=files.state_dict(SCHEDULER),
            scaler=files.state_dict(SCALER) if SCALER in mine else None,
            best=files.weights(BEST) if BEST in mine else None,
            restore_rng=(lambda: _set_rng_state(rng)) if rng is not None else (lambda: None),
            data_stream=files.json_object(DATA_STREAM) if DATA_STREAM in mine else None,
        )


def _download(store: Store, step: int, path: str, target: Path) -> None:
    """One file of checkpoint ``step``; one its manifest lists but the store does not
    give is a damaged checkpoint (a store that keeps failing stays StorageUnavailable)."""
    try:
        store.get_file(join_key(prefix_for(step), path), target)
    except StorageUnavailable:
        raise
    except StorageError as exc:
        where = f"{store.uri}/{prefix_for(step)}/{path}"
        raise damaged(
            store, step, f"{where}: listed in its manifest, cannot be read ({exc})"
        ) from exc


def _manifest_files(store: Store, step: int, manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """The manifest's file entries, each checked: a path this trainer writes, a size and
    a sha256. A path of its own choosing could point the download anywhere."""
    where = f"{store.uri}/{prefix_for(step)}/{MANIFEST}"
    files = manifest.get("files")
    if not isinstance(files, list):
        raise damaged(store, step, f"{where}: no list of files")
    for entry in files:
        if not (
            isinstance(entry, dict)
            and isinstance(entry.get("path"), str)
            and isinstance(entry.get("size"), int)
            and isinstance(entry.get("sha256"), str)
        ):
            raise damaged(store, step, f"{where}: a file entry without path, size and sha256")
        path = entry["path"]
        if not _OWN_FILE.match(path):
            what = f"{where}: lists {path!r:.80}, which this trainer never writes"
            unsafe = path.startswith(("/", "\\")) or ".." in path.replace("\\", "/").split("/")
            # A plain new name is a newer trainer's file; a path out of the checkpoint is not.
            raise (damaged if unsafe else newer_trainer)(store, step, what)
    return files


def _require(store: Store, step: int, mine: Mapping[str, Any], rank: int) -> None:
    """Every file a resume needs is in the manifest (this rank's optimizer shard, when
    the optimizer was sharded)."""
    needed = [STATE, TRAINABLE, SCHEDULER]
    if OPTIMIZER not in mine:
        needed.append(optimizer_shard(rank))
    missing = [name for name in needed if name not in mine]
    if missing:
        raise damaged(
            store,
            step,
            f"{store.uri}/{prefix_for(step)}/{MANIFEST}: lists no {', '.join(missing)}",
        )


class _Files:
    """A downloaded, verified checkpoint's files, read into what a Resume holds; a file
    that does not read as what it should be is a StorageError naming it."""

    def __init__(self, store: Store, step: int, local: Path) -> None:
        self.store, self.step, self.local = store, step, local

    def where(self, name: str) -> str:
        return f"{self.store.uri}/{prefix_for(self.step)}/{name}"

    def state_dict(self, name: str) -> Any:
        """A torch file of tensors and plain data; anything else is refused unread."""
        try:
            return torch.load(self.local / name, weights_only=True, map_location="cpu")
        except pickle.UnpicklingError:
            # torch's message suggests loading it with the safeguard off: never.
            raise StorageError(
                f"{self.where(name)}: holds Python objects besides tensors and plain data, so "
                "it is not a checkpoint file this trainer wrote, and it was not loaded: "
                "loading it could run code someone put in the output store. Find out what "
                f"wrote it, and delete {self.store.uri}/{prefix_for(self.step)} to resume from "
                "an older checkpoint (or checkpoints/ to train from the beginning)"
            ) from None
        except Exception as exc:
            if is_out_of_memory(exc):
                raise
            raise damaged(self.store, self.step, self._unreadable(name, exc)) from None

    def weights(self, name: str) -> dict[str, torch.Tensor]:
        try:
            return load_file(self.local / name)
        except Exception as exc:
            if is_out_of_memory(exc):
                raise
            raise damaged(self.store, self.step, self._unreadable(name, exc)) from None

    def json_object(self, name: str) -> dict[str, Any]:
        """A JSON object file of the checkpoint (``data-stream.json``)."""
        try:
            data = json.loads((self.local / name).read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            where = self.where(name)
            raise damaged(self.store, self.step, f"{where}: not valid JSON ({exc})") from None
        if not isinstance(data, dict):
            raise damaged(self.store, self.step, f"{self.where(name)}: not a JSON object")
        return data

    def loop_state(self) -> LoopState:
        """``state.json``, the loop's progress: fields of a newer trainer are refused."""
        where = self.where(STATE)
        try:
            data = json.loads((self.local / STATE).read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise damaged(self.store, self.step, f"{where}: not valid JSON ({exc})") from None
        if not isinstance(data, dict):
            raise damaged(self.store, self.step, f"{where}: not a JSON object")
        data.pop("worldSize", None)
        unknown = LoopState.unknown_fields(data)
        if unknown:
            raise newer_trainer(
                self.store, self.step, f"{where}: fields this trainer does not know: {unknown}"
            )
        try:
            state = LoopState.from_json(data)
        except ValueError as exc:
            raise damaged(self.store, self.step, f"{where}: {exc}") from None
        if state.step != self.step:
            raise damaged(self.store, self.step, f"{where}: step {state.step}, not {self.step}")
        return state

    def _unreadable(self, name: str, exc: Exception) -> str:
        """What went wrong, in the library's first line, unless that line suggests turning
        a safeguard off (torch's advice to load with ``weights_only=False``)."""
        lines = str(exc).strip().splitlines()
        first = lines[0].split(". ")[0][:200] if lines else ""
        detail = first if "weights_only" not in first else ""
        return (
            f"{self.where(name)}: unreadable ({type(exc).__name__}{': ' if detail else ''}{detail})"
        )


def find_and_load(
    store: Store, identity: Identity, accelerator: Accelerator
) -> tuple[int, Resume] | tuple[None, None]:
    """The newest checkpoint of this run (its ``identity``), loaded; rank 0 decides which
    for all (only its ``identity`` is read)."""
    from accelerate.utils import broadcast_object_list

    found: list[int | None] = [None]
    if accelerator.is_main_process:  # one scan of the store, not one per rank
        with tempfile.TemporaryDirectory(prefix="finetune-scan-") as tmp:
            found = [latest_usable(store, identity, Path(tmp))]
    if accelerator.num_processes > 1:
        broadcast_object_list(found, from_process=0)
    step = found[0]
    if step is None:
        return None, None
    log.info("resuming from %s/%s", store.uri, prefix_for(step))
    return step, load(store, step, rank=accelerator.process_index)
