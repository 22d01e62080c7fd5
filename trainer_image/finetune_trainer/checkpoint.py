"""Checkpoints in the output storage, and resuming from the newest complete one.

A checkpoint is ``<output>/checkpoints/step-N/``: the trainable weights (adapter or
whole model, whatever requires a gradient), the optimizer, scheduler and gradient
scaler states, every rank's random generators, the loop's progress (step, tokens,
histories, early-stopping state; the step is also the position in the data, whose
order is a pure function of the seed), and ``manifest.json`` last, listing every file
with its size and sha256. Without its manifest a checkpoint does not exist.

Nothing here is unpickled: weights are safetensors, progress is JSON, and state dicts
are read with ``torch.load(weights_only=True)``, so a checkpoint planted in a bucket
cannot run code in the trainer.

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
import random
import re
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, NotRequired, TypedDict

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from finetune_api.config import TrainerConfig
from finetune_trainer.errors import StorageError
from finetune_trainer.publish import CHECKPOINTS, file_entries, sha256_file
from finetune_trainer.state import Checkpointable, LoopState, Resume
from finetune_trainer.storage.store import MANIFEST, Store, delete_set, join_key

if TYPE_CHECKING:
    from accelerate import Accelerator

log = logging.getLogger("finetune.trainer")

FORMAT = 1
TRAINABLE = "trainable.safetensors"
BEST = "best.safetensors"
OPTIMIZER = "optimizer.pt"
SCHEDULER = "scheduler.pt"
SCALER = "scaler.pt"
STATE = "state.json"
_STEP_DIR = re.compile(rf"^{CHECKPOINTS}/step-(\d+)/(.+)$")


def prefix_for(step: int) -> str:
    return f"{CHECKPOINTS}/step-{step}"


def rng_file(rank: int) -> str:
    return f"rng/rank-{rank}.pt"


def optimizer_shard(rank: int) -> str:
    return f"optimizer/rank-{rank}.pt"


# --------------------------------------------------------------------------- identity


def fingerprint(config: TrainerConfig) -> dict[str, str]:
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
    local = scratch / f"manifest-{step}.json"
    store.get_file(join_key(prefix_for(step), MANIFEST), local)
    manifest: dict[str, Any] = json.loads(local.read_text())
    return manifest


def latest_usable(store: Store, wanted: dict[str, str], scratch: Path) -> int | None:
    """The newest complete checkpoint written by this configuration, if any."""
    steps = complete_checkpoints(store)
    for step in sorted((s for s, keys in steps.items() if MANIFEST in keys), reverse=True):
        manifest = read_manifest(store, step, scratch)
        theirs = manifest.get("fingerprint", {})
        if manifest.get("format") == FORMAT and theirs == wanted:
            return step
        changed = sorted(k for k in wanted if theirs.get(k) != wanted[k]) or ["format"]
        log.warning(
            "not resuming from %s/%s: written by a different configuration (changed: %s); "
            "it is removed when this run's first checkpoint completes",
            store.uri,
            prefix_for(step),
            ", ".join(changed),
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
    accelerator: Accelerator,
) -> None:
    """Write ``cp`` as ``checkpoints/step-N``, manifest last; then drop what is stale."""
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
                "fingerprint": fingerprint(config),
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
    """Checkpoint ``step`` as a :class:`Resume`, every file checked against the manifest."""
    prefix = prefix_for(step)
    with tempfile.TemporaryDirectory(prefix="finetune-resume-") as tmp:
        local = Path(tmp)
        manifest = read_manifest(store, step, local)
        # The shared files, and of the per-rank ones (rng/, optimizer/) only this rank's.
        per_rank = {rng_file(rank), optimizer_shard(rank)}
        mine = {
            e["path"]: e for e in manifest["files"] if "/" not in e["path"] or e["path"] in per_rank
        }
        rng_entry = mine.get(rng_file(rank))
        for path, entry in mine.items():
            target = local / path
            store.get_file(join_key(prefix, path), target)
            if target.stat().st_size != entry["size"] or sha256_file(target) != entry["sha256"]:
                raise StorageError(
                    f"{store.uri}/{prefix}/{path}: does not match its manifest (size or "
                    "sha256); the checkpoint is damaged. Delete it to resume from an older one."
                )
        state = json.loads((local / STATE).read_text())
        state.pop("worldSize", None)
        rng = torch.load(local / rng_file(rank), weights_only=True) if rng_entry else None
        if rng is None:
            log.warning("checkpoint %s has no random state for rank %d", prefix, rank)
        return Resume(
            state=LoopState(**state),
            trainable=load_file(local / TRAINABLE),
            optimizer=torch.load(
                local / (OPTIMIZER if (local / OPTIMIZER).exists() else optimizer_shard(rank)),
                weights_only=True,
                map_location="cpu",
            ),
            optimizer_sharded=not (local / OPTIMIZER).exists(),
            scheduler=torch.load(local / SCHEDULER, weights_only=True),
            scaler=torch.load(local / SCALER, weights_only=True)
            if (local / SCALER).exists()
            else None,
            best=load_file(local / BEST) if (local / BEST).exists() else None,
            restore_rng=(lambda: _set_rng_state(rng)) if rng is not None else (lambda: None),
        )


def find_and_load(
    store: Store, config: TrainerConfig, accelerator: Accelerator
) -> tuple[int, Resume] | tuple[None, None]:
    """The newest usable checkpoint of this run, loaded; rank 0 decides which for all."""
    from accelerate.utils import broadcast_object_list

    found: list[int | None] = [None]
    if accelerator.is_main_process:  # one scan of the store, not one per rank
        with tempfile.TemporaryDirectory(prefix="finetune-scan-") as tmp:
            found = [latest_usable(store, fingerprint(config), Path(tmp))]
    if accelerator.num_processes > 1:
        broadcast_object_list(found, from_process=0)
    step = found[0]
    if step is None:
        return None, None
    log.info("resuming from %s/%s", store.uri, prefix_for(step))
    return step, load(store, step, rank=accelerator.process_index)
