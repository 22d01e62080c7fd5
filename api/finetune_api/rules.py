"""The cross-field rules of a FineTuneJob: one table, read by every place that judges a spec.

A rule that depends only on the spec is checked before anything runs, by everyone, the
same way: ``finetune validate`` and ``finetune run`` (through the FineTuneJob model), the
operator's admission (before any child object exists) and the trainer (through the
TrainerConfig model it parses at start), with the same field path and message. Where CEL
can say it, the rule has a CEL twin in the CRD, so a real API server refuses the object at
``kubectl apply``; ``tests/unit/test_rule_parity.py`` runs every rule through all of
them, each side of it.

Rules on a single section (a LoRA option, a dataset's two sources) stay validators of
that section's model, where pydantic reports them at their own field. The ones here span
sections. Each is a :class:`Rule`: where it points, the check (on :class:`Facts`, which
a FineTuneJob spec and a TrainerConfig both give), its CEL twin over the spec, and the
scope it applies to:

- ``job``: every target. The FineTuneJob model refuses it, and so does the TrainerConfig
  when the facts are in it.
- ``cluster``: only a spec that runs in a cluster (the operator, ``finetune validate
  --cluster``, and the CRD's CEL): what Kubernetes objects need (a name short enough for
  every pod) or what ``finetune run`` supplies itself on a laptop (the output URI, a GPU).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Final, Literal

from pydantic import JsonValue
from pydantic_core import PydanticCustomError

from finetune_api.tasks import METRICS, TASKS
from finetune_api.uri import overlap

Scope = Literal["job", "cluster"]

RULE_ERROR: Final = "spec_rule"
"""The pydantic error type of a broken rule; its context carries each field path."""

MAX_NAME_LENGTH: Final = 63
"""Pod names are DNS labels."""


@dataclass(frozen=True, kw_only=True)
class Facts:
    """What the rules read, flattened from a FineTuneJob spec or a TrainerConfig
    (``JobSections.rule_facts``), so the rules depend on no model and no model on them
    but through this record.

    A TrainerConfig knows the processes but not the pods: ``gpus`` and ``name`` are None
    there, and the cluster rules, which need them, do not apply to it.
    """

    task: str
    method: str
    quantized_base: bool
    """The method trains on a 4-bit base (finetune_api.config.methods)."""
    reserved_steps: Mapping[str, int] | None
    """Steps the method keeps from its own schedule, by option (AdaLoRA's tinit and
    tfinal); the rest of the run must have at least one."""
    reserved_field: str
    early_stopping_metric: str | None
    every_steps: int | None
    distillation: bool
    max_steps: int | None
    precision: str
    strategy: str
    """resources.strategy (spec) or distributed.strategy (TrainerConfig)."""
    strategy_field: str
    nodes: int = 1
    gpus: int | None = None
    name: str | None = None
    output_uri: str | None = None
    merge: bool = False
    gate_metrics: tuple[str, ...] = ()
    """The metric of each evaluation.gate condition, in order."""
    metric_settings: frozenset[str] = frozenset()
    """The settings that turn optional metrics on (``MetricInfo.needs``) that are on."""
    """output.merge: publish the adapter merged into the base too."""
    inputs: tuple[tuple[str, str], ...] = ()
    """Every location the run reads, as (field path, URI): the model, the data files,
    a distillation teacher; the output must be apart from each."""
    formats: tuple[tuple[str, str], ...] = ()
    """Every dataset format the run reads, as (field path, format)."""
    packing: bool = False
    """training.packing."""
    streaming: bool = False
    """dataset.streaming."""
    sections: frozenset[str] = frozenset()
    """The task-owned sections the spec sets (``preference``, ``reinforcement``,
    ``contrastive``)."""


@dataclass(frozen=True)
class Violation:
    field: str
    """Path under the spec (under the TrainerConfig for its own fields)."""
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


Check = Callable[[Facts], Violation | None]


@dataclass(frozen=True)
class Rule:
    name: str
    field: str
    """Where a violation points, under the spec (``metadata.name`` is the object's)."""
    scope: Scope
    check: Check
    summary: str
    """What the rule says, in one sentence: the CEL twin's message and the line in
    docs/concepts/validation.md."""
    cel: str | None
    """The CEL twin (None: CEL cannot say it), over ``self`` = the spec, or the whole
    object when ``cel_on_object`` (a rule that needs metadata.name)."""
    cel_on_object: bool = False


# --------------------------------------------------------------------------- helpers

_TASK = "(has(self.task) ? self.task : 'causal-lm')"


def _cel_list(values: Iterable[str]) -> str:
    return "[" + ", ".join(f"'{v}'" for v in sorted(values)) + "]"


def _tasks_with(feature: Callable[[str], bool]) -> list[str]:
    return [name for name in TASKS if feature(name)]


# --------------------------------------------------------------------------- the rules

_FORMAT_COLUMNS: Final[dict[str, str]] = {
    "messages": "messages",
    "instruction": "instruction, input, output",
    "prompt-completion": "prompt, completion",
    "text": "text",
    "classification": "text, label",
    "preference": "prompt, chosen, rejected",
    "prompts": "prompt, answer",
    "pairs": "anchor, positive, negative",
    "image-folder": "a folder of class folders of images",
    "image-manifest": "image, label",
}
"""Each dataset format's columns, for an error message (a test holds it to DatasetFormat)."""


def _formats_said(formats: Iterable[str]) -> str:
    return " or ".join(f"format {f} ({_FORMAT_COLUMNS[f]})" for f in formats)


def _format_fits_the_task(facts: Facts) -> Violation | None:
    task = TASKS[facts.task]
    for field, fmt in facts.formats:
        if fmt not in task.formats:
            readers = [t for t, info in TASKS.items() if fmt in info.formats]
            return Violation(
                field,
                f"task {task.name} reads {_formats_said(task.formats)}, not {fmt}; set "
                f"{field}: {task.formats[0]}, or task: {' or '.join(readers)} to read "
                f"format {fmt}",
            )
    return None


def _format_cel(fmt: str) -> str:
    """CEL: the format ``fmt`` (a CEL expression) is one the spec's task reads."""
    return " || ".join(
        f"({_TASK} == '{name}' && {fmt} in {_cel_list(info.formats)})"
        for name, info in TASKS.items()
    )


def _format_rule_cel() -> str:
    spec = _format_cel("(has(self.dataset.format) ? self.dataset.format : 'messages')")
    mixture = (
        "!has(self.dataset.mixture) || self.dataset.mixture.all(m, !has(m.format) || "
        f"{_format_cel('m.format')})"
    )
    return f"({spec}) && ({mixture})"


_PACKING_TASKS: Final = _tasks_with(lambda t: TASKS[t].packs)


_STREAMING_TASKS: Final = ("causal-lm",)
_STREAMING: Final = "has(self.dataset) && has(self.dataset.streaming) && self.dataset.streaming"


def _streaming_needs_max_steps(facts: Facts) -> Violation | None:
    if facts.streaming and facts.max_steps is None:
        return Violation(
            "training.maxSteps",
            "is needed with dataset.streaming: a stream's length is not known before it "
            "is read, so epochs cannot be counted; set training.maxSteps",
        )
    return None


def _streaming_fits_the_task(facts: Facts) -> Violation | None:
    if not facts.streaming:
        return None
    if facts.task not in _STREAMING_TASKS:
        return Violation(
            "dataset.streaming",
            f"is for task {', '.join(_STREAMING_TASKS)}; task {facts.task} prepares its "
            "whole dataset first (set streaming: false)",
        )
    if facts.packing:
        return Violation(
            "training.packing",
            "cannot pack a stream (packing plans over the whole dataset); set packing: "
            "false or streaming: false",
        )
    return None


def _packing_fits_the_task(facts: Facts) -> Violation | None:
    if facts.packing and not TASKS[facts.task].packs:
        return Violation(
            "training.packing",
            f"is for task {', '.join(_PACKING_TASKS)}: an example of task {facts.task} is "
            "one unit (a classified text, a pair, a prompt), not tokens to fill a sequence "
            "with; remove packing or set it to false",
        )
    return None


def _method_fits_the_task(facts: Facts) -> Violation | None:
    allowed = TASKS[facts.task].methods
    if allowed is not None and facts.method not in allowed:
        return Violation(
            "method.type",
            f"task {facts.task} does not train with method {facts.method}; use one of "
            f"{', '.join(sorted(allowed))}"
            + (f" ({TASKS[facts.task].methods_why})" if TASKS[facts.task].methods_why else ""),
        )
    return None


def _method_cel() -> str:
    limited = [
        f"({_TASK} != '{name}' || self.method.type in {_cel_list(info.methods)})"
        for name, info in TASKS.items()
        if info.methods is not None
    ]
    return "!has(self.method) || !has(self.method.type) || (" + " && ".join(limited) + ")"


def _preference_fits_the_task(facts: Facts) -> Violation | None:
    if "preference" in facts.sections and facts.task != "preference":
        return Violation(
            "preference",
            f"is the preference loss of task preference, not of task {facts.task}; remove "
            "it, or set task: preference",
        )
    return None


def _reinforcement_fits_the_task(facts: Facts) -> Violation | None:
    given = "reinforcement" in facts.sections
    if given and facts.task != "reinforcement":
        return Violation(
            "reinforcement",
            f"is for task reinforcement, not {facts.task}; remove it, or set task: reinforcement",
        )
    if not given and facts.task == "reinforcement":
        return Violation(
            "reinforcement",
            "is required by task reinforcement: set reinforcement.rewards (what a "
            "completion earns), e.g. rewards: [{type: exactMatch}]",
        )
    return None


def _contrastive_fits_the_task(facts: Facts) -> Violation | None:
    if "contrastive" in facts.sections and facts.task != "sentence-embedding":
        return Violation(
            "contrastive",
            f"is the contrastive loss of task sentence-embedding, not of task {facts.task}; "
            "remove it, or set task: sentence-embedding",
        )
    return None


def _image_classification_fits_the_task(facts: Facts) -> Violation | None:
    if "imageClassification" in facts.sections and facts.task != "image-classification":
        return Violation(
            "imageClassification",
            f"is the recipe of task image-classification, not of task {facts.task}; "
            "remove it, or set task: image-classification",
        )
    return None


def _early_stopping_needs_periodic_evaluation(facts: Facts) -> Violation | None:
    if facts.early_stopping_metric is not None and facts.every_steps is None:
        return Violation(
            "training.earlyStopping",
            "needs periodic evaluation: set evaluation.everySteps (e.g. 50), or remove "
            "earlyStopping",
        )
    return None


def _early_stopping_metric_is_measured(facts: Facts) -> Violation | None:
    metric = facts.early_stopping_metric
    task = TASKS[facts.task]
    if metric is not None and metric not in task.metrics:
        return Violation(
            "training.earlyStopping.metric",
            f"{metric} is not measured for task {task.name}; use one of {', '.join(task.metrics)}",
        )
    return None


def _early_stopping_metric_cel() -> str:
    metric = (
        "(has(self.training.earlyStopping.metric) ? self.training.earlyStopping.metric "
        ": 'evalLoss')"
    )
    per_task = " || ".join(
        f"({_TASK} == '{name}' && {metric} in {_cel_list(info.metrics)})"
        for name, info in TASKS.items()
    )
    return f"!has(self.training) || !has(self.training.earlyStopping) || {per_task}"


def _distillation_fits_the_task(facts: Facts) -> Violation | None:
    if facts.distillation and not TASKS[facts.task].distillation:
        allowed = ", ".join(_tasks_with(lambda t: TASKS[t].distillation))
        return Violation(
            "training.distillation",
            f"learns a teacher's token distributions, which task {facts.task} does not "
            f"predict; remove it (it is for task {allowed})",
        )
    return None


def _tasks_measuring(setting: str) -> list[str]:
    """The tasks that report a metric ``setting`` turns on (the contract's metrics table)."""
    return _tasks_with(lambda t: any(m.needs == setting and t in m.tasks for m in METRICS.values()))


def _evaluation_setting_fits_the_task(setting: str, field: str) -> Check:
    """A check that ``setting`` (an evaluation section turning metrics on) is only set
    for a task that reports them: otherwise it would be read, fetched and ignored."""

    def check(facts: Facts) -> Violation | None:
        allowed = _tasks_measuring(setting)
        if setting in facts.metric_settings and facts.task not in allowed:
            return Violation(
                field,
                f"scores generations and text, which task {facts.task} does not produce; "
                f"remove it (it is for task {', '.join(allowed)})",
            )
        return None

    return check


def _evaluation_setting_rule(name: str, key: str) -> Rule:
    """The rule (with its CEL twin) that evaluation.<key> fits the task."""
    setting = field = f"evaluation.{key}"
    allowed = _tasks_measuring(setting)
    return Rule(
        name,
        field,
        "job",
        _evaluation_setting_fits_the_task(setting, field),
        f"{field} is for task {', '.join(allowed)}",
        f"!has(self.evaluation) || !has(self.evaluation.{key}) || {_TASK} in {_cel_list(allowed)}",
    )


def _fsdp_cannot_shard_4bit_weights(facts: Facts) -> Violation | None:
    method = facts.method
    if facts.strategy == "fsdp" and facts.quantized_base:
        return Violation(
            facts.strategy_field,
            f"fsdp cannot shard {method}'s 4-bit weights; use strategy ddp (each GPU holds "
            f"the quantized model, which is what {method} is for) or method.type lora",
        )
    return None


def _fsdp_fits_the_task(facts: Facts) -> Violation | None:
    why = TASKS[facts.task].fsdp_why
    if facts.strategy == "fsdp" and why is not None:
        return Violation(
            facts.strategy_field,
            f"strategy fsdp is not for task {facts.task}: {why}; use strategy ddp",
        )
    return None


_QUANTIZED = ["qlora"]
"""The methods on a 4-bit base, for the CEL twin (a test holds it to the registry)."""


def _method_leaves_steps_to_train(facts: Facts) -> Violation | None:
    steps, reserved = facts.max_steps, facts.reserved_steps
    if steps is None or not reserved or sum(reserved.values()) < steps:
        return None
    parts = " + ".join(f"{name} ({value})" for name, value in reserved.items())
    return Violation(
        facts.reserved_field,
        f"{parts} leave no step of training.maxSteps ({steps}) for reallocating ranks; "
        f"lower {' or '.join(reserved)}, or raise maxSteps",
    )


def _cluster_needs_an_output(facts: Facts) -> Violation | None:
    if facts.output_uri is None:
        return Violation(
            "output.uri",
            "is required in a cluster (a pod's filesystem goes with it): set it, e.g. "
            f"s3://my-bucket/adapters/{facts.name or '<name>'} or pvc://claim/path",
        )
    return None


def _pod_names_fit(facts: Facts) -> Violation | None:
    if facts.name is None or facts.nodes <= 1:
        return None
    longest = len(f"{facts.name}-{facts.nodes - 1}")
    if longest > MAX_NAME_LENGTH:
        return Violation(
            "metadata.name",
            f"a {facts.nodes}-node job's pods are named <name>-<index> (at most "
            f"{MAX_NAME_LENGTH} characters); shorten the name by "
            f"{longest - MAX_NAME_LENGTH} characters",
        )
    return None


_GROWING = ["progressive"]
"""Methods whose trainable set grows while training (progressive unfreezing)."""


def _early_stopping_fits_the_method(facts: Facts) -> Violation | None:
    """Early stopping ends with the best evaluation's trainable weights; a block that
    joined after that evaluation has none saved from then, so the model restored would
    mix the best step's weights with later ones."""
    if facts.early_stopping_metric is not None and facts.method in _GROWING:
        return Violation(
            "training.earlyStopping",
            f"cannot restore the best evaluation's weights with method.type {facts.method}: "
            "blocks unfrozen after it were not saved then; remove earlyStopping "
            "(evaluation.everySteps still reports the metric), or use type freeze",
        )
    return None


def _growing_set_trains_in_one_process(facts: Facts) -> Violation | None:
    """DDP registers gradient averaging on the parameters that require a gradient when
    it wraps the model, and FSDP fixes what it shards as trainable: a block unfrozen
    later would train unsynchronised."""
    if facts.method not in _GROWING:
        return None
    fix = f"; method.type {facts.method} trains in one process: use gpus 1, or type freeze"
    if facts.strategy == "fsdp":
        return Violation(facts.strategy_field, f"fsdp cannot shard a growing trainable set{fix}")
    if facts.nodes > 1:
        return Violation("resources.nodes", f"{facts.nodes} nodes are several processes{fix}")
    if facts.gpus is not None and facts.gpus > 1:
        return Violation("resources.gpus", f"{facts.gpus} GPUs are several processes{fix}")
    return None


def _fp16_needs_a_gpu(facts: Facts) -> Violation | None:
    if facts.gpus == 0 and facts.precision == "fp16":
        return Violation(
            "training.precision",
            "fp16 needs a CUDA GPU but resources.gpus is 0 (the pod trains on CPU); set "
            "resources.gpus, or precision auto, bf16 or fp32",
        )
    return None


def _output_apart_from_inputs(facts: Facts) -> Violation | None:
    """Publishing (and checkpointing) writes the output: one that is an input's place,
    inside it or around it overwrites the base model's weights or the user's data."""
    if facts.output_uri is None:
        return None
    clashes = [
        f"{how} {field} ({uri})"
        for field, uri in facts.inputs
        if (how := overlap(facts.output_uri, uri)) is not None
    ]
    if not clashes:
        return None
    return Violation(
        "output.uri",
        f"{facts.output_uri} {'; and '.join(clashes)}: the run would write over what it "
        "reads; publish to a location of its own, e.g. a new directory or prefix "
        "beside the inputs",
    )


_VIRTUAL_TOKENS = ["p-tuning", "prefix", "prompt"]
"""Methods whose adapter is virtual tokens, not weights: nothing to merge (a test holds
this to the registry's ``virtual_tokens``)."""
_WHOLE_MODELS = ["freeze", "full", "progressive"]
"""Methods that publish a whole model already (the registry's ``artifact: model``)."""
_NON_LINEAR = ["adapter"]
"""Adapters that are modules, not weight changes: nothing a merge could write."""


def _merge_is_not_for_images(facts: Facts) -> Violation | None:
    if facts.merge and facts.task == "image-classification":
        return Violation(
            "output.merge",
            "an image classifier's adapter is not merged here (the merge maps a text "
            "model's weights, not a vision backbone's or its new head); remove output.merge "
            "(the adapter set loads with peft), or use method.type full",
        )
    return None


def _merge_needs_a_weight_adapter(facts: Facts) -> Violation | None:
    """The trainer's merge (finetune_trainer.export) would refuse these after training;
    refused here, before any GPU time is spent."""
    if not facts.merge:
        return None
    if facts.method in _VIRTUAL_TOKENS:
        return Violation(
            "output.merge",
            f"method.type {facts.method} cannot be merged: its virtual tokens are not "
            "weights; remove output.merge and serve the base model with the adapter, or "
            "use a weight adapter such as lora",
        )
    if facts.method in _WHOLE_MODELS:
        return Violation(
            "output.merge",
            f"method.type {facts.method} publishes a whole model already: there is no "
            "adapter to merge; remove output.merge",
        )
    if facts.method in _NON_LINEAR:
        return Violation(
            "output.merge",
            f"method.type {facts.method} cannot be merged: bottleneck adapters are non-linear "
            "modules, which no change to the base weights reproduces; remove output.merge "
            "(finetune generate loads the base with the adapter), or use lora",
        )
    return None


def _gate_metric_fits_the_task(facts: Facts) -> Violation | None:
    for i, metric in enumerate(facts.gate_metrics):
        info = METRICS.get(metric)
        if info is not None and facts.task not in info.tasks:
            reported = [name for name, m in METRICS.items() if facts.task in m.tasks]
            return Violation(
                f"evaluation.gate[{i}].metric",
                f"{metric} is not reported for task {facts.task}; gate on one of "
                f"{', '.join(reported)}",
            )
    return None


def _gate_metric_is_measured(facts: Facts) -> Violation | None:
    """A condition on a metric the run would not measure could never pass: refused
    before the run rather than failed after it."""
    for i, metric in enumerate(facts.gate_metrics):
        info = METRICS.get(metric)
        if info is None or info.needs is None or info.needs in facts.metric_settings:
            continue
        return Violation(
            f"evaluation.gate[{i}].metric",
            f"{metric} is measured only with {info.needs}, which this spec does not "
            "set; set it, or remove the condition",
        )
    return None


_NO_GATE = "!has(self.evaluation) || !has(self.evaluation.gate)"


def _gate_task_cel() -> str:
    per_task = " || ".join(
        f"({_TASK} == '{task}' && c.metric in "
        f"{_cel_list(n for n, m in METRICS.items() if task in m.tasks)})"
        for task in TASKS
    )
    return f"{_NO_GATE} || self.evaluation.gate.all(c, {per_task})"


_SETTING_CEL: Final[dict[str, str]] = {
    "evaluation.exactMatchSamples > 0": "(!has(self.evaluation.exactMatchSamples) || "
    "self.evaluation.exactMatchSamples > 0)",
    "evaluation.retention": "has(self.evaluation.retention)",
    "evaluation.bertScore": "has(self.evaluation.bertScore)",
}
"""Each metric setting (``MetricInfo.needs``) as CEL over the spec; a test holds it to
the metrics table."""


def _gate_settings_cel() -> str:
    needing: dict[str, list[str]] = {}
    for name, info in METRICS.items():
        if info.needs is not None and info.needs in _SETTING_CEL:
            needing.setdefault(info.needs, []).append(name)
    each = " && ".join(
        f"(!(c.metric in {_cel_list(names)}) || {_SETTING_CEL[setting]})"
        for setting, names in needing.items()
    )
    return f"{_NO_GATE} || self.evaluation.gate.all(c, {each})"


def _gate_settings_summary() -> str:
    needing: dict[str, list[str]] = {}
    for name, info in METRICS.items():
        if info.needs is not None:
            needing.setdefault(info.needs, []).append(name)
    return "; ".join(f"{', '.join(names)}: {setting}" for setting, names in needing.items())


RULES: Final[tuple[Rule, ...]] = (
    Rule(
        "format-fits-the-task",
        "dataset.format",
        "job",
        _format_fits_the_task,
        "dataset.format (and each dataset.mixture format) must be one the task reads ("
        + "; ".join(f"{n}: {', '.join(i.formats)}" for n, i in TASKS.items())
        + ")",
        _format_rule_cel(),
    ),
    Rule(
        "packing-fits-the-task",
        "training.packing",
        "job",
        _packing_fits_the_task,
        f"training.packing is for task {', '.join(_PACKING_TASKS)}",
        f"{_TASK} in {_cel_list(_PACKING_TASKS)} || !has(self.training) || "
        "!has(self.training.packing) || !self.training.packing",
    ),
    Rule(
        "streaming-needs-max-steps",
        "training.maxSteps",
        "job",
        _streaming_needs_max_steps,
        "dataset.streaming needs training.maxSteps",
        f"!({_STREAMING}) || (has(self.training) && has(self.training.maxSteps))",
    ),
    Rule(
        "streaming-fits-the-task",
        "dataset.streaming",
        "job",
        _streaming_fits_the_task,
        f"dataset.streaming is for task {', '.join(_STREAMING_TASKS)}, without training.packing",
        f"!({_STREAMING}) || ({_TASK} in {_cel_list(_STREAMING_TASKS)} && "
        "!(has(self.training) && has(self.training.packing) && self.training.packing))",
    ),
    Rule(
        "method-fits-the-task",
        "method.type",
        "job",
        _method_fits_the_task,
        "method.type must be one the task trains with ("
        + "; ".join(f"{n}: {', '.join(sorted(i.methods))}" for n, i in TASKS.items() if i.methods)
        + ")",
        _method_cel(),
    ),
    Rule(
        "preference-fits-the-task",
        "preference",
        "job",
        _preference_fits_the_task,
        "preference is for task preference",
        f"!has(self.preference) || {_TASK} == 'preference'",
    ),
    Rule(
        "reinforcement-fits-the-task",
        "reinforcement",
        "job",
        _reinforcement_fits_the_task,
        "reinforcement is required by task reinforcement, and for it only",
        f"has(self.reinforcement) == ({_TASK} == 'reinforcement')",
    ),
    Rule(
        "contrastive-fits-the-task",
        "contrastive",
        "job",
        _contrastive_fits_the_task,
        "contrastive is for task sentence-embedding",
        f"!has(self.contrastive) || {_TASK} == 'sentence-embedding'",
    ),
    Rule(
        "image-classification-fits-the-task",
        "imageClassification",
        "job",
        _image_classification_fits_the_task,
        "imageClassification is for task image-classification",
        f"!has(self.imageClassification) || {_TASK} == 'image-classification'",
    ),
    Rule(
        "early-stopping-needs-periodic-evaluation",
        "training.earlyStopping",
        "job",
        _early_stopping_needs_periodic_evaluation,
        "training.earlyStopping needs periodic evaluation: set evaluation.everySteps",
        "!has(self.training) || !has(self.training.earlyStopping) || "
        "(has(self.evaluation) && has(self.evaluation.everySteps))",
    ),
    Rule(
        "early-stopping-metric-is-measured",
        "training.earlyStopping.metric",
        "job",
        _early_stopping_metric_is_measured,
        "training.earlyStopping.metric is not measured for this task ("
        + "; ".join(f"{n}: {', '.join(i.metrics)}" for n, i in TASKS.items())
        + ")",
        _early_stopping_metric_cel(),
    ),
    Rule(
        "distillation-fits-the-task",
        "training.distillation",
        "job",
        _distillation_fits_the_task,
        "training.distillation is for task "
        + ", ".join(_tasks_with(lambda t: TASKS[t].distillation)),
        "!has(self.training) || !has(self.training.distillation) || "
        f"{_TASK} in {_cel_list(_tasks_with(lambda t: TASKS[t].distillation))}",
    ),
    _evaluation_setting_rule("retention-fits-the-task", "retention"),
    _evaluation_setting_rule("bert-score-fits-the-task", "bertScore"),
    Rule(
        "fsdp-cannot-shard-4bit-weights",
        "resources.strategy",
        "job",
        _fsdp_cannot_shard_4bit_weights,
        "resources.strategy fsdp cannot shard the 4-bit weights of "
        + ", ".join(_QUANTIZED)
        + "; use strategy ddp",
        "!has(self.resources) || !has(self.resources.strategy) || "
        "self.resources.strategy != 'fsdp' || !has(self.method) || !has(self.method.type) "
        f"|| !(self.method.type in {_cel_list(_QUANTIZED)})",
    ),
    Rule(
        "fsdp-fits-the-task",
        "resources.strategy",
        "job",
        _fsdp_fits_the_task,
        "resources.strategy fsdp is not for tasks "
        + ", ".join(_tasks_with(lambda t: TASKS[t].fsdp_why is not None))
        + "; use strategy ddp",
        "!has(self.resources) || !has(self.resources.strategy) || "
        "self.resources.strategy != 'fsdp' || "
        f"!({_TASK} in {_cel_list(_tasks_with(lambda t: TASKS[t].fsdp_why is not None))})",
    ),
    Rule(
        "adalora-leaves-steps-to-reallocate",
        "method.adalora",
        "job",
        _method_leaves_steps_to_train,
        "method.adalora: tinit + tfinal must leave steps of training.maxSteps for "
        "reallocating ranks",
        "!has(self.method) || !has(self.method.type) || self.method.type != 'adalora' || "
        "!has(self.training) || !has(self.training.maxSteps) || "
        "(has(self.method.adalora) && has(self.method.adalora.tinit) ? "
        "self.method.adalora.tinit : 0) + (has(self.method.adalora) && "
        "has(self.method.adalora.tfinal) ? self.method.adalora.tfinal : 0) < "
        "self.training.maxSteps",
    ),
    Rule(
        "merge-needs-a-weight-adapter",
        "output.merge",
        "job",
        _merge_needs_a_weight_adapter,
        "output.merge needs a weight adapter: method.type "
        + ", ".join(_VIRTUAL_TOKENS)
        + " (virtual tokens), "
        + ", ".join(_WHOLE_MODELS)
        + " (whole models) and "
        + ", ".join(_NON_LINEAR)
        + " (non-linear modules) have nothing to merge",
        "!has(self.output) || !has(self.output.merge) || !self.output.merge || "
        "!has(self.method) || !has(self.method.type) || "
        f"!(self.method.type in {_cel_list(_VIRTUAL_TOKENS + _WHOLE_MODELS + _NON_LINEAR)})",
    ),
    Rule(
        "merge-is-not-for-images",
        "output.merge",
        "job",
        _merge_is_not_for_images,
        "output.merge is not for task image-classification",
        "!has(self.output) || !has(self.output.merge) || !self.output.merge || "
        f"{_TASK} != 'image-classification'",
    ),
    Rule(
        "gate-metric-fits-the-task",
        "evaluation.gate",
        "job",
        _gate_metric_fits_the_task,
        "evaluation.gate: a condition names a metric this task does not report ("
        + "; ".join(
            f"{t}: {', '.join(n for n, m in METRICS.items() if t in m.tasks)}" for t in TASKS
        )
        + ")",
        _gate_task_cel(),
    ),
    Rule(
        "gate-metric-is-measured",
        "evaluation.gate",
        "job",
        _gate_metric_is_measured,
        "evaluation.gate: a condition names a metric its setting turns off ("
        + _gate_settings_summary()
        + ")",
        _gate_settings_cel(),
    ),
    Rule(
        "output-apart-from-inputs",
        "output.uri",
        "job",
        _output_apart_from_inputs,
        "output.uri must be apart from model.uri, the dataset files, a distillation "
        "teacher and a reward model: not the same place, inside one, or containing one",
        None,
    ),
    Rule(
        "cluster-needs-an-output",
        "output.uri",
        "cluster",
        _cluster_needs_an_output,
        "output.uri is required in a cluster: set it, e.g. s3://my-bucket/adapters/<name>",
        "has(self.output) && has(self.output.uri)",
    ),
    Rule(
        "pod-names-fit",
        "metadata.name",
        "cluster",
        _pod_names_fit,
        "a multi-node job's pods are named <metadata.name>-<index>, at most "
        f"{MAX_NAME_LENGTH} characters: shorten metadata.name",
        "!has(self.spec.resources) || !has(self.spec.resources.nodes) || "
        "self.spec.resources.nodes <= 1 || "
        f"size(self.metadata.name) + 1 + size(string(self.spec.resources.nodes - 1)) <= "
        f"{MAX_NAME_LENGTH}",
        cel_on_object=True,
    ),
    Rule(
        "fp16-needs-a-gpu",
        "training.precision",
        "cluster",
        _fp16_needs_a_gpu,
        "training.precision fp16 needs a GPU: set resources.gpus, or precision auto",
        "!has(self.training) || !has(self.training.precision) || "
        "self.training.precision != 'fp16' || (has(self.resources) && "
        "has(self.resources.gpus) && self.resources.gpus > 0)",
    ),
    Rule(
        "early-stopping-fits-the-method",
        "training.earlyStopping",
        "job",
        _early_stopping_fits_the_method,
        "training.earlyStopping cannot restore the best weights of method.type "
        + ", ".join(_GROWING)
        + " (blocks unfrozen later were not saved then): remove it",
        "!has(self.training) || !has(self.training.earlyStopping) || !has(self.method) || "
        f"!has(self.method.type) || !(self.method.type in {_cel_list(_GROWING)})",
    ),
    Rule(
        "growing-set-trains-in-one-process",
        "resources.gpus",
        "cluster",
        _growing_set_trains_in_one_process,
        "method.type "
        + ", ".join(_GROWING)
        + " trains in one process: resources.gpus at most 1, nodes 1, no fsdp",
        "!has(self.method) || !has(self.method.type) || "
        f"!(self.method.type in {_cel_list(_GROWING)}) || !has(self.resources) || "
        "((!has(self.resources.gpus) || self.resources.gpus <= 1) && "
        "(!has(self.resources.nodes) || self.resources.nodes <= 1) && "
        "(!has(self.resources.strategy) || self.resources.strategy != 'fsdp'))",
    ),
)


def violations(facts: Facts, scope: Scope = "job") -> list[Violation]:
    """Every rule of ``scope`` that ``facts`` break. The job rules are the models' own
    (:func:`enforce`); admission for a cluster adds the cluster ones to a valid job."""
    found = (rule.check(facts) for rule in RULES if rule.scope == scope)
    return [v for v in found if v is not None]


def enforce(facts: Facts) -> None:
    """Raise the job rules ``facts`` break as one pydantic error, for a model validator.

    Its context keeps each violation's field path, so :func:`finetune_api.manifests.explain`
    reports every one at its own field (``spec.training.earlyStopping: ...``) rather than
    at the model the validator belongs to.
    """
    broken = violations(facts)
    if broken:
        raise PydanticCustomError(
            RULE_ERROR,
            "{summary}",
            {
                "summary": "; ".join(str(v) for v in broken),
                "fields": [v.field for v in broken],
                "messages": [v.message for v in broken],
            },
        )


def cel_rules(*, on_object: bool = False) -> list[JsonValue]:
    """The CEL twins, as ``x-kubernetes-validations`` entries: those over the spec, or
    (``on_object``) those over the whole object. A CRD only ever serves a cluster, so
    the cluster rules have their twins there too."""
    entries: list[JsonValue] = [
        {"rule": rule.cel, "message": rule.summary}
        for rule in RULES
        if rule.cel is not None and rule.cel_on_object == on_object
    ]
    return entries
