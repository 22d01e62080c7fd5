"""The task table: what each ``spec.task`` predicts, reads and reports, as data.

The spec rules (:mod:`finetune_api.rules`), the CRD's CEL twins, the docs and the
trainer's task registry all read this table, so a task's metrics or data formats are
written once. The trainer pairs each entry with its loss and model class
(``finetune_trainer.tasks``); nothing here imports the training stack.
"""

from __future__ import annotations

import math
import typing
from dataclasses import dataclass
from typing import Final, Literal

TaskName = Literal[
    "causal-lm",
    "sequence-classification",
    "reward-model",
    "preference",
    "reinforcement",
    "sentence-embedding",
    "image-classification",
]

EvalMetric = Literal[
    "evalLoss",
    "perplexity",
    "tokenAccuracy",
    "accuracy",
    "macroF1",
    "pairwiseAccuracy",
    "meanMargin",
    "preferenceAccuracy",
    "rewardAccuracy",
    "rewardMargin",
    "meanReward",
    "recallAt1",
    "recallAt5",
    "mrr",
]
"""Every score a periodic evaluation can report (early stopping picks one)."""

Unit = Literal[
    "fraction",
    "fraction change",
    "loss",
    "loss change",
    "perplexity",
    "reward",
    "log-probability",
]
"""How a score is measured. ``fraction``: 0 to 1, never a percentage (a CLI may print
one); ``fraction change``: a difference of two fractions, -1 to 1; ``loss``: mean
loss in nats (cross-entropy, or a preference loss), 0 or more; ``loss change``: a
difference of two losses; ``perplexity``: exp(loss), 1 or more; ``reward``: a score
on the reward's own scale, any real number; ``log-probability``: a sum of token
log-probabilities in nats, 0 or less."""

Better = Literal["higher", "lower"]


@dataclass(frozen=True)
class MetricInfo:
    """One score of metrics.json, as the contract knows it: what evaluation gates,
    early stopping, plots, the model card and the status read to interpret it."""

    name: str
    """Its key in metrics.json and status.metrics (camelCase)."""
    unit: Unit
    better: Better
    description: str
    tasks: tuple[TaskName, ...]
    """The tasks that can report it."""
    needs: str | None = None
    """The setting that turns it on, when it is not always measured."""
    before: bool = True
    """Whether the base model is scored too, as ``<name>Before`` on the same data."""

    @property
    def bounds(self) -> tuple[float, float | None]:
        """The values it can take (None: unbounded above)."""
        return {
            "fraction": (0.0, 1.0),
            "fraction change": (-1.0, 1.0),
            "loss": (0.0, None),
            "loss change": (-math.inf, None),
            "perplexity": (1.0, None),
            "reward": (-math.inf, None),
            "log-probability": (-math.inf, 0.0),
        }[self.unit]


_LM: Final[tuple[TaskName, ...]] = ("causal-lm",)
_CLS: Final[tuple[TaskName, ...]] = ("sequence-classification",)
_RM: Final[tuple[TaskName, ...]] = ("reward-model",)
_PREF: Final[tuple[TaskName, ...]] = ("preference",)
_RL: Final[tuple[TaskName, ...]] = ("reinforcement",)
_EMB: Final[tuple[TaskName, ...]] = ("sentence-embedding",)
_CLASSIFIERS: Final[tuple[TaskName, ...]] = ("sequence-classification", "image-classification")
_GENERATING: Final[tuple[TaskName, ...]] = ("causal-lm", "preference")
"""The tasks whose held-out greedy generations are scored against a reference answer
(``TaskInfo.generates``; a test holds the two together)."""
_GENERATIONS = "evaluation.exactMatchSamples > 0"

METRICS: Final[dict[str, MetricInfo]] = {
    m.name: m
    for m in (
        MetricInfo(
            "evalLoss",
            "loss",
            "lower",
            "Validation loss: cross-entropy per label token (causal-lm) or per example "
            "(sequence- and image-classification); the Bradley-Terry loss per pair "
            "(reward-model); the configured preference.loss per pair (preference); the configured "
            "contrastive.loss per pair, every held-out pair one batch (sentence-embedding).",
            (
                "causal-lm",
                "sequence-classification",
                "reward-model",
                "preference",
                "sentence-embedding",
                "image-classification",
            ),
        ),
        MetricInfo("perplexity", "perplexity", "lower", "exp(evalLoss).", _LM),
        MetricInfo(
            "tokenAccuracy",
            "fraction",
            "higher",
            "Share of label tokens the model predicts exactly (greedy next token).",
            _LM,
        ),
        MetricInfo(
            "exactMatch",
            "fraction",
            "higher",
            "Share of the evaluation.exactMatchSamples validation rows whose greedy "
            "generation equals the reference answer (surrounding whitespace stripped; for "
            "preference, the chosen answer).",
            _GENERATING,
            _GENERATIONS,
        ),
        MetricInfo(
            "rougeL",
            "fraction",
            "higher",
            "Mean ROUGE-L F1 of the generations against the reference answers (torchmetrics).",
            _GENERATING,
            _GENERATIONS,
        ),
        MetricInfo(
            "bleu",
            "fraction",
            "higher",
            "Corpus BLEU of the generations against the reference answers (sacrebleu, its "
            "0-100 score divided by 100).",
            _GENERATING,
            _GENERATIONS,
        ),
        MetricInfo(
            "chrF",
            "fraction",
            "higher",
            "Corpus chrF of the generations against the reference answers (sacrebleu, its "
            "0-100 score divided by 100).",
            _GENERATING,
            _GENERATIONS,
        ),
        MetricInfo(
            "bertScoreF1",
            "fraction",
            "higher",
            "Mean BERTScore F1 of the generations against the reference answers, with the "
            "encoder evaluation.bertScore.model names (torchmetrics, no baseline rescaling).",
            _GENERATING,
            "evaluation.bertScore",
        ),
        MetricInfo(
            "accuracy",
            "fraction",
            "higher",
            "Share of validation rows (texts or images) classified correctly (top-1).",
            _CLASSIFIERS,
        ),
        MetricInfo(
            "macroPrecision",
            "fraction",
            "higher",
            "Precision averaged over the classes (torchmetrics); per class in perClass.",
            _CLASSIFIERS,
        ),
        MetricInfo(
            "macroRecall",
            "fraction",
            "higher",
            "Recall averaged over the classes (torchmetrics); per class in perClass.",
            _CLASSIFIERS,
        ),
        MetricInfo(
            "macroF1",
            "fraction",
            "higher",
            "F1 averaged over the classes (torchmetrics); per class in perClass.",
            _CLASSIFIERS,
        ),
        MetricInfo(
            "retentionLoss",
            "loss",
            "lower",
            "Loss on the general dataset evaluation.retention.dataset: how much of what "
            "the base model knew is kept (catastrophic forgetting raises it).",
            ("causal-lm",),
            "evaluation.retention",
        ),
        MetricInfo(
            "retentionExactMatch",
            "fraction",
            "higher",
            "exactMatch on the rows of evaluation.retention.dataset that have answers "
            "(up to evaluation.exactMatchSamples of them).",
            ("causal-lm",),
            "evaluation.retention",
        ),
        MetricInfo(
            "retentionLossIncrease",
            "loss change",
            "lower",
            "retentionLoss - retentionLossBefore: how much training raised the loss on "
            "the general dataset (negative: it fell).",
            ("causal-lm",),
            "evaluation.retention",
            before=False,
        ),
        MetricInfo(
            "retentionExactMatchDrop",
            "fraction change",
            "lower",
            "retentionExactMatchBefore - retentionExactMatch: how much exact match on the "
            "general dataset training lost (negative: it gained).",
            ("causal-lm",),
            "evaluation.retention",
            before=False,
        ),
        MetricInfo(
            "pairwiseAccuracy",
            "fraction",
            "higher",
            "Share of held-out pairs whose chosen answer the reward model scores higher than "
            "the rejected one.",
            _RM,
        ),
        MetricInfo(
            "meanMargin",
            "reward",
            "higher",
            "Mean of score(chosen) - score(rejected) over the held-out pairs, in the reward "
            "model's units.",
            _RM,
        ),
        MetricInfo(
            "preferenceAccuracy",
            "fraction",
            "higher",
            "Share of held-out pairs where the model's mean per-token log-probability of the "
            "chosen answer exceeds the rejected one's: the model's own preference, "
            "comparable before and after training for every preference.loss.",
            _PREF,
        ),
        MetricInfo(
            "rewardAccuracy",
            "fraction",
            "higher",
            "Share of held-out pairs whose implicit reward (the loss's: beta x (log-prob - "
            "reference log-prob) for dpo and ipo, beta x mean log-prob for simpo, the "
            "log-odds for orpo) is higher for the chosen answer.",
            _PREF,
            before=False,
        ),
        MetricInfo(
            "rewardMargin",
            "reward",
            "higher",
            "Mean implicit reward of the chosen answer minus the rejected one's over the "
            "held-out pairs (see rewardAccuracy).",
            _PREF,
            before=False,
        ),
        MetricInfo(
            "chosenLogps",
            "log-probability",
            "higher",
            "Mean over the held-out pairs of the summed log-probability of the chosen "
            "answer's tokens.",
            _PREF,
        ),
        MetricInfo(
            "rejectedLogps",
            "log-probability",
            "lower",
            "Mean over the held-out pairs of the summed log-probability of the rejected "
            "answer's tokens.",
            _PREF,
        ),
        MetricInfo(
            "meanReward",
            "reward",
            "higher",
            "Mean combined reward (reinforcement.rewards, weighted) of greedy completions of "
            "the held-out prompts.",
            _RL,
        ),
        MetricInfo(
            "recallAt1",
            "fraction",
            "higher",
            "Share of held-out anchors whose own positive is the most cosine-similar of all "
            "held-out positives and negatives (retrieval among the whole validation set).",
            _EMB,
        ),
        MetricInfo(
            "recallAt5",
            "fraction",
            "higher",
            "Share of held-out anchors whose own positive is among the 5 most cosine-similar "
            "of all held-out positives and negatives.",
            _EMB,
        ),
        MetricInfo(
            "mrr",
            "fraction",
            "higher",
            "Mean reciprocal rank of each held-out anchor's own positive among all held-out "
            "positives and negatives (1: always first).",
            _EMB,
        ),
    )
}
"""Every score metrics.json and status.metrics can carry, once. A ``<name>Before``
key (when ``before``) is the same score of the base model, before training."""

STEP_METRICS: Final[dict[str, str]] = {
    "reward": "mean combined reward of the step's sampled completions",
    "rewardStd": "its standard deviation",
    "kl": "mean KL divergence of the policy from the reference over the completion tokens "
    "(k3 estimator)",
    "completionLength": "mean tokens per sampled completion",
    "clipFraction": "share of completion tokens whose policy ratio was clipped",
}
"""The per-step numbers task reinforcement reports beside the loss (the step history,
the JSON progress line, Prometheus), and each reward under its name; not METRICS:
they describe a step's samples, not a held-out evaluation."""

LOWER_IS_BETTER: Final[frozenset[str]] = frozenset(
    name for name, m in METRICS.items() if m.better == "lower"
)


@dataclass(frozen=True)
class TaskInfo:
    """One task as the contract knows it."""

    name: TaskName
    auto_class: str
    """The transformers Auto class that loads a model for this task."""
    metrics: tuple[EvalMetric, ...]
    """Periodic evaluation metrics this task reports (early stopping picks one)."""
    generates: bool
    """Whether exact match and ROUGE-L of greedy generations apply."""
    distillation: bool
    """Whether a teacher's token distributions can be learned from (training.distillation)."""
    loss_over: Literal["label tokens", "examples"]
    """What a step's loss is averaged over (examples: a pair, a prompt)."""
    formats: tuple[str, ...]
    """The dataset formats (``dataset.format``) this task reads."""
    methods: frozenset[str] | None = None
    """The methods (``method.type``) that can train it; None: every method."""
    methods_why: str = ""
    """Why the other methods cannot train it, for the refusal (empty: nothing to add)."""
    description: str = ""
    """One sentence for ``spec.task``'s reference."""
    fsdp_why: str | None = None
    """Why ``resources.strategy: fsdp`` cannot train it (None: it can)."""

    @property
    def packs(self) -> bool:
        """Whether training.packing applies: several examples in one sequence under a
        block mask only make sense when the loss is over label tokens (a pair, a prompt
        or a classified text is one unit)."""
        return self.loss_over == "label tokens"


_ALIGNMENT_METHODS: Final = frozenset({"lora", "qlora", "full", "freeze"})
"""The methods the reward-model, preference and reinforcement tasks train with: weight
methods, whose reference policy is the same model with the adapter switched off (or a
frozen copy for full and freeze). The prompt-learning methods (prefix, prompt, p-tuning)
are not among them: their virtual tokens shift every position the pair's log-probabilities
are read at."""
_POLICY_METHODS: Final = _ALIGNMENT_METHODS | {"adalora", "ia3"}
"""The preference and reinforcement tasks add AdaLoRA and IA3: peft adapters too, so the
reference is the adapter switched off (tests/integration/test_alignment_methods.py)."""

TASKS: Final[dict[str, TaskInfo]] = {
    "causal-lm": TaskInfo(
        name="causal-lm",
        auto_class="AutoModelForCausalLM",
        metrics=("evalLoss", "perplexity", "tokenAccuracy"),
        generates=True,
        distillation=True,
        loss_over="label tokens",
        formats=("messages", "instruction", "prompt-completion", "text"),
        description="supervised fine-tuning or continued pretraining of a decoder language model.",
    ),
    "sequence-classification": TaskInfo(
        name="sequence-classification",
        auto_class="AutoModelForSequenceClassification",
        metrics=("evalLoss", "accuracy", "macroF1"),
        generates=False,
        distillation=False,
        loss_over="examples",
        formats=("classification",),
        description="a classification head on the model, trained on dataset.format classification.",
    ),
    "reward-model": TaskInfo(
        name="reward-model",
        auto_class="AutoModelForSequenceClassification",
        metrics=("evalLoss", "pairwiseAccuracy", "meanMargin"),
        generates=False,
        distillation=False,
        loss_over="examples",
        formats=("preference",),
        methods=_ALIGNMENT_METHODS,
        description="a scalar scoring head (one output) trained on dataset.format preference "
        "pairs with the Bradley-Terry loss; the published set is a reward for task "
        "reinforcement (reinforcement.rewards type model).",
    ),
    "preference": TaskInfo(
        name="preference",
        auto_class="AutoModelForCausalLM",
        metrics=("evalLoss", "preferenceAccuracy", "rewardAccuracy", "rewardMargin"),
        generates=True,
        distillation=False,
        loss_over="examples",
        formats=("preference",),
        methods=_POLICY_METHODS,
        description="preference tuning of a language model (DPO, IPO, SimPO, ORPO: the "
        "preference section) on dataset.format preference pairs.",
    ),
    "reinforcement": TaskInfo(
        name="reinforcement",
        auto_class="AutoModelForCausalLM",
        metrics=("meanReward",),
        generates=False,
        distillation=False,
        loss_over="examples",
        formats=("prompts",),
        methods=_POLICY_METHODS,
        description="online reinforcement learning (GRPO): completions sampled for each "
        "dataset.format prompts row are scored by the reinforcement section's rewards.",
        fsdp_why="its completions are sampled with model.generate, which a sharded model "
        "does not run as one (untested, so refused)",
    ),
    "sentence-embedding": TaskInfo(
        name="sentence-embedding",
        auto_class="AutoModel",
        metrics=("evalLoss", "recallAt1", "recallAt5", "mrr"),
        generates=False,
        distillation=False,
        loss_over="examples",
        formats=("pairs",),
        methods=frozenset({"lora", "full", "freeze"}),
        description="contrastive fine-tuning of a sentence encoder (a BERT-like model, "
        "mean or CLS pooling) on dataset.format pairs (the contrastive section: "
        "multiple-negatives ranking or triplet loss); scored by retrieval among the "
        "held-out pairs, published in the sentence-transformers layout.",
    ),
    "image-classification": TaskInfo(
        name="image-classification",
        auto_class="AutoModelForImageClassification",
        metrics=("evalLoss", "accuracy", "macroF1"),
        generates=False,
        distillation=False,
        loss_over="examples",
        formats=("image-folder", "image-manifest"),
        methods=frozenset({"full", "freeze", "lora"}),
        methods_why="an image model reads pixels, not tokens: prefix, prompt and p-tuning "
        "prepend virtual tokens it has no place for; qlora's 4-bit base and the other "
        "adapters are not tried on vision backbones here",
        description="transfer learning of a vision backbone (ViT, ConvNeXt, ResNet...) with "
        "a new classification head sized to the data's classes, trained at "
        "imageClassification.headLrMultiplier x the learning rate, on dataset.format "
        "image-folder or image-manifest, with random resized crops and flips.",
        fsdp_why="fsdp does not shard its backbones (they fit one device)",
    ),
}

assert set(TASKS) == set(typing.get_args(TaskName)), "every task name has one entry"
assert set(typing.get_args(EvalMetric)) <= set(METRICS), "every periodic metric is described"
assert {n for n, t in TASKS.items() if t.generates} == set(_GENERATING), "one list of generators"


def task_description() -> str:
    """``spec.task``'s reference: every task, from this table."""
    return " ".join(f"{name}: {info.description}" for name, info in TASKS.items())
