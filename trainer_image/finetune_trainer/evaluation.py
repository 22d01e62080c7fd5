"""Evaluation on the validation set: token-weighted loss and greedy exact match.

Exact match compares the model's greedy answer with the reference answer after
stripping surrounding whitespace: strict on purpose, it is the number users read
("did the model learn to answer exactly like this?"). The same generations are also
scored by measures that give partial credit, each from the library its community
trusts: ROUGE-L (torchmetrics), BLEU and chrF (sacrebleu), and BERTScore with an
encoder the user names (torchmetrics). Classifiers get precision, recall and F1 per
class (torchmetrics). A retention set, a general dataset not trained on, is scored by
loss and exact match, before and after, to show what fine-tuning made the model forget.

Every score is in the unit the contract's metrics table gives it
(:data:`finetune_api.tasks.METRICS`): shares are fractions 0-1, never percentages.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Protocol, cast

import torch
import torch.nn.functional as F

from finetune_api.tasks import METRICS
from finetune_trainer.data.batching import collate, length_grouped_batches
from finetune_trainer.data.prepare import EvalSample, GeneralData
from finetune_trainer.data.tokenize import TokenizedExample
from finetune_trainer.losses import label_logits

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


class _Generates(Protocol):
    """A model's ``generate``: transformers' GenerationMixin, or PEFT's wrapper of it.
    torch types an attribute it does not declare as ``Tensor | Module``, and
    ``PreTrainedModel`` leaves the mixin to the concrete model classes."""

    def generate(
        self, *, input_ids: torch.Tensor, attention_mask: torch.Tensor, **options: object
    ) -> torch.Tensor: ...


@dataclass(frozen=True)
class Prediction:
    answer: str
    generated: str

    @property
    def correct(self) -> bool:
        return normalize(self.generated) == normalize(self.answer)


def normalize(text: str) -> str:
    return text.strip()


class Scores(Protocol):
    """A set of scores on validation data: a loss and its metrics.json names; whether
    greedy generations are scored beside them (``generations``)."""

    generations: ClassVar[bool]

    @property
    def loss(self) -> float: ...

    def as_metrics(self) -> dict[str, float]: ...


@dataclass(frozen=True)
class TokenScores:
    """Next-token scores over every label token of a set of examples."""

    generations: ClassVar[bool] = True
    loss: float
    accuracy: float
    tokens: int

    @property
    def perplexity(self) -> float:
        return math.exp(min(self.loss, 50.0))

    def as_metrics(self) -> dict[str, float]:
        return {
            "evalLoss": self.loss,
            "perplexity": self.perplexity,
            "tokenAccuracy": self.accuracy,
        }


@torch.no_grad()
def token_scores(
    model: torch.nn.Module, examples: Sequence[TokenizedExample], batch_size: int, pad_id: int
) -> TokenScores | None:
    """Token-weighted cross-entropy and greedy next-token accuracy over ``examples``."""
    if not examples:
        return None
    model.eval()
    device = next(model.parameters()).device
    total_loss, total_correct, total_tokens = 0.0, 0, 0
    lengths = [len(e.input_ids) for e in examples]
    for batch in length_grouped_batches(lengths, batch_size, seed=0, shuffle=False):
        tensors = {
            k: v.to(device) for k, v in collate([examples[i] for i in batch], pad_id).items()
        }
        labels = tensors.pop("labels")
        logits, target = label_logits(model, tensors, labels)
        total_loss += F.cross_entropy(logits.float(), target, reduction="sum").item()
        total_correct += int((logits.argmax(dim=-1) == target).sum())
        total_tokens += int(target.numel())
    n = max(total_tokens, 1)
    return TokenScores(total_loss / n, total_correct / n, total_tokens)


@dataclass(frozen=True)
class ClassScore:
    """Precision, recall and F1 of one class, and how many validation rows have it."""

    precision: float
    recall: float
    f1: float
    support: int


@dataclass(frozen=True)
class ClassScores:
    """Classification scores over a set of examples."""

    generations: ClassVar[bool] = False
    loss: float
    accuracy: float
    macro_f1: float
    macro_precision: float = 0.0
    macro_recall: float = 0.0
    per_class: dict[str, ClassScore] = field(default_factory=dict)
    """By class name, in the classifier's id order."""

    def as_metrics(self) -> dict[str, float]:
        return {
            "evalLoss": self.loss,
            "accuracy": self.accuracy,
            "macroPrecision": self.macro_precision,
            "macroRecall": self.macro_recall,
            "macroF1": self.macro_f1,
        }

    def per_class_metrics(self) -> dict[str, dict[str, float | int]]:
        """metrics.json's ``perClass``: each class's scores under its label name."""
        return {
            name: {"precision": c.precision, "recall": c.recall, "f1": c.f1, "support": c.support}
            for name, c in self.per_class.items()
        }


def per_class_scores(
    predicted: torch.Tensor, target: torch.Tensor, names: Sequence[str]
) -> ClassScores:
    """Accuracy, macro and per-class precision/recall/F1 (torchmetrics) of predicted
    class ids against the true ones; ``names[i]`` is class ``i``. A class never
    predicted has precision 0 (torchmetrics' convention), not a division by zero.
    The loss is left 0 for the caller."""
    from torchmetrics.functional.classification import (
        multiclass_f1_score,
        multiclass_precision,
        multiclass_recall,
    )

    n = len(names)
    per = {
        "precision": multiclass_precision(predicted, target, num_classes=n, average="none"),
        "recall": multiclass_recall(predicted, target, num_classes=n, average="none"),
        "f1": multiclass_f1_score(predicted, target, num_classes=n, average="none"),
    }
    support = torch.bincount(target, minlength=n)
    return ClassScores(
        loss=0.0,
        accuracy=float((predicted == target).float().mean()),
        macro_f1=float(multiclass_f1_score(predicted, target, num_classes=n, average="macro")),
        macro_precision=float(
            multiclass_precision(predicted, target, num_classes=n, average="macro")
        ),
        macro_recall=float(multiclass_recall(predicted, target, num_classes=n, average="macro")),
        per_class={
            name: ClassScore(
                float(per["precision"][i]),
                float(per["recall"][i]),
                float(per["f1"][i]),
                int(support[i]),
            )
            for i, name in enumerate(names)
        },
    )


@torch.no_grad()
def class_scores(
    model: torch.nn.Module,
    examples: Sequence[TokenizedExample],
    batch_size: int,
    pad_id: int,
    labels: int | Sequence[str],
) -> ClassScores | None:
    """Mean cross-entropy of a classifier, with :func:`per_class_scores`; ``labels``
    names the classes in id order (a count names them by id)."""
    if not examples:
        return None
    names = [str(i) for i in range(labels)] if isinstance(labels, int) else list(labels)
    model.eval()
    device = next(model.parameters()).device
    total_loss, predictions, targets = 0.0, [], []
    for start in range(0, len(examples), batch_size):
        tensors = {
            k: v.to(device)
            for k, v in collate(examples[start : start + batch_size], pad_id).items()
        }
        labels_ = tensors.pop("labels")
        logits = model(**tensors).logits.float()
        total_loss += F.cross_entropy(logits, labels_, reduction="sum").item()
        predictions.append(logits.argmax(dim=-1).cpu())
        targets.append(labels_.cpu())
    scores = per_class_scores(torch.cat(predictions), torch.cat(targets), names)
    return replace(scores, loss=total_loss / len(examples))


def evaluation_loss(
    model: torch.nn.Module, examples: Sequence[TokenizedExample], batch_size: int, pad_id: int
) -> float | None:
    """Mean cross-entropy per label token over all of ``examples``."""
    scores = token_scores(model, examples, batch_size, pad_id)
    return None if scores is None else scores.loss


@torch.no_grad()
def generate_answers(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    samples: Sequence[EvalSample],
    *,
    batch_size: int,
    max_new_tokens: int,
) -> list[Prediction]:
    """Greedy generations for ``samples``, batched with left padding."""
    model.eval()
    device = next(model.parameters()).device
    predictions: list[Prediction] = []
    for start in range(0, len(samples), batch_size):
        chunk = samples[start : start + batch_size]
        width = max(len(s.prompt_ids) for s in chunk)
        ids = torch.full((len(chunk), width), tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, sample in enumerate(chunk):
            n = len(sample.prompt_ids)
            ids[row, width - n :] = torch.tensor(sample.prompt_ids)
            mask[row, width - n :] = 1
        output = cast(_Generates, model).generate(
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            temperature=None,
            top_p=None,
            top_k=None,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        for row, sample in enumerate(chunk):
            text = tokenizer.decode(output[row, width:], skip_special_tokens=True)
            assert isinstance(text, str)  # one sequence decodes to one string
            predictions.append(Prediction(sample.answer, text))
    return predictions


def rouge_l(predictions: Sequence[Prediction]) -> float | None:
    """Mean ROUGE-L F1 (0-1) of generations against references (torchmetrics)."""
    if not predictions:
        return None
    from torchmetrics.functional.text.rouge import rouge_score

    scores = rouge_score(
        [p.generated for p in predictions],
        [p.answer for p in predictions],
        rouge_keys="rougeL",
        accumulate="avg",
    )
    return float(scores["rougeL_fmeasure"])


def exact_match(predictions: Sequence[Prediction]) -> float | None:
    """Fraction (0-1) of correct predictions; None when there were none to score."""
    if not predictions:
        return None
    return sum(p.correct for p in predictions) / len(predictions)


@dataclass(frozen=True)
class OverlapScores:
    """Corpus BLEU and chrF (sacrebleu) as fractions: sacrebleu's 0-100 scores / 100,
    so that every share in metrics.json has one unit."""

    bleu: float
    chrf: float


def overlap_scores(predictions: Sequence[Prediction]) -> OverlapScores | None:
    """Corpus-level BLEU and chrF of the generations against the references, with
    sacrebleu's defaults (13a tokenization, exponential smoothing; chrF: character
    6-grams, beta 2); None when there were none to score."""
    if not predictions:
        return None
    import sacrebleu

    hypotheses = [p.generated for p in predictions]
    references = [[p.answer for p in predictions]]
    bleu = sacrebleu.corpus_bleu(hypotheses, references).score
    chrf = sacrebleu.corpus_chrf(hypotheses, references).score
    return OverlapScores(bleu / 100.0, chrf / 100.0)


def bert_score_f1(predictions: Sequence[Prediction], encoder: Path) -> float | None:
    """Mean BERTScore F1 (torchmetrics) of the generations against the references,
    embedded by the encoder in the local directory ``encoder`` (its last layer, no
    baseline rescaling, no remote code); None when there were none to score."""
    if not predictions:
        return None
    from torchmetrics.functional.text.bert import bert_score
    from transformers import AutoModel, AutoTokenizer

    model = AutoModel.from_pretrained(str(encoder), trust_remote_code=False)
    tokenizer = AutoTokenizer.from_pretrained(str(encoder), trust_remote_code=False)
    scores = bert_score(
        [p.generated for p in predictions],
        [p.answer for p in predictions],
        model=model,
        user_tokenizer=tokenizer,
        user_forward_fn=_last_hidden_state,
        max_length=min(512, int(getattr(tokenizer, "model_max_length", 512))),
        truncation=True,
    )
    f1 = scores["f1"]
    values = f1 if isinstance(f1, torch.Tensor) else torch.tensor(f1)
    return float(values.float().mean())


def _last_hidden_state(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The encoder's token embeddings for BERTScore: its last hidden layer."""
    output = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    hidden: torch.Tensor = output.last_hidden_state
    return hidden


@dataclass(frozen=True)
class RetentionScores:
    """The model on a general dataset it was not trained on."""

    loss: float
    exact_match: float | None
    rows: int

    def as_metrics(self) -> dict[str, float | None]:
        return {"retentionLoss": self.loss, "retentionExactMatch": self.exact_match}


def retention_scores(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    general: GeneralData,
    *,
    batch_size: int,
    max_new_tokens: int,
) -> RetentionScores | None:
    """Loss over every row of ``general`` and exact match over its rows with answers."""
    scores = token_scores(model, general.examples, batch_size, tokenizer.pad_token_id)
    if scores is None:
        return None
    predictions = generate_answers(
        model, tokenizer, general.samples, batch_size=batch_size, max_new_tokens=max_new_tokens
    )
    return RetentionScores(scores.loss, exact_match(predictions), len(general.examples))


def retention_changes(
    before: Mapping[str, object], after: Mapping[str, object]
) -> dict[str, float]:
    """retentionLossIncrease (after - before) and retentionExactMatchDrop (before -
    after), where both sides were measured: what a gate bounds against forgetting."""
    changes: dict[str, float] = {}
    pairs = (
        ("retentionLossIncrease", "retentionLoss", 1.0),
        ("retentionExactMatchDrop", "retentionExactMatch", -1.0),
    )
    for name, key, sign in pairs:
        old, new = before.get(f"{key}Before"), after.get(key)
        if isinstance(old, int | float) and isinstance(new, int | float):
            changes[name] = sign * (float(new) - float(old))
    return changes


@dataclass(frozen=True)
class EvalResult:
    scores: Scores | None
    exact_match: float | None = None
    rouge_l: float | None = None
    predictions: list[Prediction] = field(default_factory=list)
    overlap: OverlapScores | None = None
    bert_score_f1: float | None = None
    retention: RetentionScores | None = None

    @property
    def loss(self) -> float | None:
        return None if self.scores is None else self.scores.loss

    def as_metrics(self, suffix: str = "") -> dict[str, float | None]:
        """Every score under its metrics.json name, each followed by ``suffix``; a
        score that means nothing before training (``MetricInfo.before``) has no
        ``Before`` twin."""
        values: dict[str, float | None] = {"evalLoss": None}
        if self.scores is not None:
            values.update(self.scores.as_metrics())
        if self.scores is None or self.scores.generations:
            values.update(exactMatch=self.exact_match, rougeL=self.rouge_l)
            if self.overlap is not None:
                values.update(bleu=self.overlap.bleu, chrF=self.overlap.chrf)
            if self.bert_score_f1 is not None:
                values.update(bertScoreF1=self.bert_score_f1)
        if self.retention is not None:
            values.update(self.retention.as_metrics())
        if suffix == "Before":
            values = {k: v for k, v in values.items() if k not in METRICS or METRICS[k].before}
        return {f"{name}{suffix}": value for name, value in values.items()}

    def details(self, suffix: str = "") -> dict[str, object]:
        """What is not a single number: per-class scores of a classifier, the number of
        retention rows scored."""
        out: dict[str, object] = {}
        if isinstance(self.scores, ClassScores) and self.scores.per_class:
            out[f"perClass{suffix}"] = self.scores.per_class_metrics()
        if self.retention is not None and not suffix:
            out["retentionRows"] = self.retention.rows
        return out


def scores_for(
    model: torch.nn.Module,
    examples: Sequence[TokenizedExample],
    batch_size: int,
    pad_id: int,
    labels: int | Sequence[str] | None,
) -> TokenScores | ClassScores | None:
    """Class scores for a classifier (``labels`` set: its class names, or their
    number), token scores otherwise."""
    if labels is not None:
        return class_scores(model, examples, batch_size, pad_id, labels)
    return token_scores(model, examples, batch_size, pad_id)


@dataclass(frozen=True)
class Extras:
    """The optional evaluations (``evaluation.retention``, ``evaluation.bertScore``),
    their inputs fetched and read already."""

    general: GeneralData | None = None
    encoder: Path | None = None


def evaluate(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    validation: Sequence[TokenizedExample],
    samples: Sequence[EvalSample],
    *,
    batch_size: int,
    max_new_tokens: int,
    num_labels: int | Sequence[str] | None = None,
    extras: Extras | None = None,
) -> EvalResult:
    """The full evaluation: scores on every validation example, plus greedy generations
    scored by exact match, ROUGE-L, BLEU, chrF (and BERTScore when an encoder is given)
    for language models, and the retention set's scores when there is one."""
    extras = extras or Extras()
    scores = scores_for(model, validation, batch_size, tokenizer.pad_token_id, num_labels)
    if num_labels is not None:
        return EvalResult(scores)
    predictions = generate_answers(
        model, tokenizer, samples, batch_size=batch_size, max_new_tokens=max_new_tokens
    )
    retention = None
    if extras.general is not None:
        retention = retention_scores(
            model, tokenizer, extras.general, batch_size=batch_size, max_new_tokens=max_new_tokens
        )
    bert = None
    if extras.encoder is not None:
        bert = bert_score_f1(predictions, extras.encoder)
    return EvalResult(
        scores,
        exact_match(predictions),
        rouge_l(predictions),
        predictions,
        overlap_scores(predictions),
        bert,
        retention,
    )
