"""One training run from a TrainerConfig: the recipe, then publishing.

This is what both ``finetune run`` (in-process) and ``finetune train`` (in a pod)
call. The run itself is the recipe (:mod:`finetune_trainer.recipe`: typed setup steps,
the loop, the scores); here it is wrapped in SIGTERM handling and published.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from finetune_api.config import TrainerConfig
from finetune_api.gate import GateVerdict, judge
from finetune_api.outcome import Ending
from finetune_trainer.logs import kv
from finetune_trainer.recipe import TrainedRun, fine_tune, run_metrics
from finetune_trainer.recipe.setup import (
    hold_output,
    model_access,
    output_access,
    quiet_libraries,
)
from finetune_trainer.telemetry import Telemetry, rank_from_env
from finetune_trainer.tracking import Trackers, open_trackers
from finetune_trainer.vision.recipe import fine_tune_images

__all__ = [
    "RunResult",
    "TrainedRun",
    "base_model_ref",
    "fine_tune",
    "model_access",
    "output_access",
    "run_metrics",
    "run_training",
]

log = logging.getLogger("finetune.trainer")


@dataclass(frozen=True)
class RunResult:
    """What a published run tells its caller: where it went and what it measured."""

    output_uri: str
    metrics: dict[str, Any]
    files: tuple[dict[str, Any], ...] = ()
    """The published files as the manifest lists them (path, size, sha256); rank 0 only.
    They go to the termination message, so the operator needs no storage credentials."""
    trackers: dict[str, str] = field(default_factory=dict)
    """Where each experiment tracker shows the run (tracker name to URL)."""
    gate: GateVerdict | None = None
    """The evaluation gate's verdict (None: the spec has no gate, or not rank 0)."""

    def summary(self) -> str:
        m = self.metrics
        lines = []
        if m.get("accuracy") is not None:
            before, after = 100 * m["accuracyBefore"], 100 * m["accuracy"]
            lines.append(
                f"held-out accuracy: base model {before:.1f}% -> fine-tuned {after:.1f}% "
                f"({after - before:+.1f} points; macro-F1 {m['macroF1']:.3f})"
            )
        if m.get("exactMatch") is not None:
            # Stored as fractions (0-1); shown as percentages.
            before, after = 100 * m["exactMatchBefore"], 100 * m["exactMatch"]
            lines.append(
                f"held-out exact match: base model {before:.1f}% -> fine-tuned {after:.1f}% "
                f"({after - before:+.1f} points, {m['exactMatchSamples']} examples)"
            )
        if m.get("recallAt1") is not None:
            before, after = 100 * m["recallAt1Before"], 100 * m["recallAt1"]
            lines.append(
                f"held-out retrieval recall@1: base model {before:.1f}% -> fine-tuned "
                f"{after:.1f}% ({after - before:+.1f} points; MRR {m['mrrBefore']:.3f} -> "
                f"{m['mrr']:.3f})"
            )
        if m.get("meanReward") is not None and m.get("meanRewardBefore") is not None:
            before, after = m["meanRewardBefore"], m["meanReward"]
            lines.append(
                f"held-out mean reward: base model {before:.3f} -> fine-tuned {after:.3f} "
                f"({after - before:+.3f}; greedy completions, reinforcement.rewards weighted)"
            )
        if m.get("evalLoss") is not None:
            lines.append(f"eval loss: {m['evalLossBefore']:.4f} -> {m['evalLoss']:.4f}")
        lines.append(f"{self._training_line()}; artifacts: {self.output_uri}")
        if self.gate is not None:
            lines.append(self.gate.summary())
        lines += [f"{name}: {url}" for name, url in self.trackers.items()]
        return "\n".join(lines)

    def _training_line(self) -> str:
        """What training did, in this run and in all: a run resumed from a checkpoint
        trained only the steps after it, and one resumed at its end trained none."""
        m = self.metrics
        resumed, now = m.get("resumedFromStep"), m.get("stepsThisRun", m["steps"])
        seconds, speed = f"{m['trainSeconds']:.0f}s", f"{m['tokensPerSecond']:.0f} tokens/s"
        if resumed is None:
            return f"trained {m['steps']} steps in {seconds} ({speed})"
        if now == 0:
            return (
                f"already complete: resumed at its last step ({resumed}), nothing trained in "
                f"this run; the same weights evaluated and published again ({speed})"
            )
        return (
            f"trained {now} steps after resuming at step {resumed} "
            f"({m['steps']} steps, {seconds} of training in all; {speed})"
        )


def base_model_ref(uri: str, directory: Path | None = None) -> str:
    """How the published adapter's config names its base, so that
    ``AutoPeftModelFor*.from_pretrained(<published set>)`` finds it.

    hf:// bases: the Hub id (the revision goes into the config's own ``revision``).
    file:// bases: the absolute path, which loads on the machine that trained (the model
    card says how to load it elsewhere). s3:// and pvc:// bases, whose URIs no loader
    reads: the Hub id the base's own ``config.json`` records (``_name_or_path``, written
    by ``save_pretrained`` of a model from the Hub) when ``directory`` (its local copy)
    has one, else the URI, which the card explains how to fetch.
    """
    from finetune_api.uri import Role
    from finetune_trainer.storage.backends import LocalBackend, backend_for

    if uri.startswith("hf://"):
        return uri.removeprefix("hf://")
    backend, parsed = backend_for(uri, Role.MODEL)
    if parsed.scheme == "file" and isinstance(backend, LocalBackend):
        return str(backend.resolve(parsed).resolve())
    recorded = _recorded_hub_id(directory) if directory is not None else None
    return recorded or uri


def _recorded_hub_id(directory: Path) -> str | None:
    """The Hub id a model directory's ``config.json`` says it was saved from, if any."""
    import json

    from finetune_trainer.model_card import is_hub_id

    try:
        name = json.loads((directory / "config.json").read_text()).get("_name_or_path")
    except (OSError, ValueError, AttributeError):
        return None
    return name if isinstance(name, str) and is_hub_id(name) else None


def _loaded_from(model: Any) -> Path | None:
    """The local directory the base model was loaded from (its config's name_or_path)."""
    name = getattr(getattr(model, "config", None), "name_or_path", None)
    return Path(name) if isinstance(name, str) and name and Path(name).is_dir() else None


def run_training(config: TrainerConfig, telemetry: Telemetry | None = None) -> RunResult:
    """Fine-tune as ``config`` says and publish to ``config.output.uri``.

    ``telemetry`` receives the progress (metrics, JSON lines, the last step); the caller
    starts and closes it, so /metrics is up from model loading to publishing.
    """
    from finetune_trainer.preemption import handle_sigterm

    quiet_libraries()  # before the trackers: their log lines go where the run's do
    main = telemetry.reporting if telemetry is not None else rank_from_env() == 0
    # The output is checked and leased before anything loads, until it is published.
    with (
        hold_output(config, main=main),
        handle_sigterm() as stop,
        open_trackers(config, main=main) as trackers,
    ):
        if telemetry is not None:
            telemetry.on_trackers(trackers.urls())
        train = fine_tune_images if config.task == "image-classification" else fine_tune
        run = train(config, telemetry, stop=stop, trackers=trackers)
        if not run.main:
            return RunResult(config.output.uri, {})
        gate = evaluation_gate(config, run.metrics)
        files = _publish(run, config, trackers, gate)
    return RunResult(config.output.uri, run.metrics, files, trackers.urls(), gate)


def evaluation_gate(config: TrainerConfig, metrics: dict[str, Any]) -> GateVerdict | None:
    """Judge the final metrics against ``evaluation.gate`` (None without one), before
    publishing: the manifest records the verdict. A failed gate still publishes, so the
    model can be inspected; the run then ends EvaluationGateFailed (exit 8)."""
    if not config.evaluation.gate:
        return None
    verdict = judge(config.evaluation.gate, metrics)
    log.log(logging.INFO if verdict.passed else logging.WARNING, "%s", verdict.summary())
    return verdict


def _publish(
    run: TrainedRun, config: TrainerConfig, trackers: Trackers, gate: GateVerdict | None = None
) -> tuple[dict[str, Any], ...]:
    """Stage (the trackers' files too) and publish; return the manifest's file entries.
    The trackers learn the run succeeded, and where it went, once it is published."""
    from finetune_trainer.publish import publish, stage_artifacts

    with tempfile.TemporaryDirectory(prefix="finetune-publish-") as staging:
        trackers.stage(Path(staging), run.metrics)
        manifest = stage_artifacts(
            Path(staging),
            run.model,
            run.tokenizer,
            config,
            run.metrics,
            base_model_ref(config.model.uri, _loaded_from(run.model)),
            state_dict=run.state_dict,
            gate=None if gate is None else gate.as_manifest(),
        )
        if config.output.merge:  # the merged model under merged/, in the same manifest
            manifest = _add_merged(Path(staging), config, manifest)
        publish(Path(staging), config.output.uri, output_access(config))
        ending: Ending = "Failed" if gate is not None and not gate.passed else "Succeeded"
        trackers.finish(ending, run.metrics, config.output.uri)
    log.info("published %s", kv(uri=config.output.uri))
    return tuple(manifest["files"])


def _add_merged(staging: Path, config: TrainerConfig, manifest: dict[str, Any]) -> dict[str, Any]:
    """``output.merge``: the staged adapter merged into the base, shard by shard (the base
    is in the download cache already: the run loaded it)."""
    from finetune_trainer.export.artifact import add_merged
    from finetune_trainer.storage.backends import fetch_model_dir

    base_dir = fetch_model_dir(config.model.uri, config.model.revision, model_access(config))
    merged = add_merged(staging, base_dir, manifest)
    log.info("merged the adapter into the base %s", kv(path="merged/"))
    return merged
