"""Evaluation on the validation set: token-weighted loss and greedy exact match.

Exact match compares the model's greedy answer with the reference answer after
stripping surrounding whitespace: strict on purpose, it is the number users read
("did the model learn to answer exactly like this?").
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, cast

import torch
import torch.nn.functional as F

from finetune_trainer.data.batching import collate, length_grouped_batches
from finetune_trainer.data.prepare import EvalSample
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


@dataclass(frozen=True)
class TokenScores:
    """Next-token scores over every label token of a set of examples."""

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
class ClassScores:
    """Classification scores over a set of examples."""

    loss: float
    accuracy: float
    macro_f1: float

    def as_metrics(self) -> dict[str, float]:
        return {"evalLoss": self.loss, "accuracy": self.accuracy, "macroF1": self.macro_f1}


@torch.no_grad()
def class_scores(
    model: torch.nn.Module,
    examples: Sequence[TokenizedExample],
    batch_size: int,
    pad_id: int,
    num_labels: int,
) -> ClassScores | None:
    """Mean cross-entropy, accuracy and macro-F1 (torchmetrics) of a classifier."""
    if not examples:
        return None
    from torchmetrics.functional.classification import multiclass_f1_score

    model.eval()
    device = next(model.parameters()).device
    total_loss, predictions, targets = 0.0, [], []
    for start in range(0, len(examples), batch_size):
        tensors = {
            k: v.to(device)
            for k, v in collate(examples[start : start + batch_size], pad_id).items()
        }
        labels = tensors.pop("labels")
        logits = model(**tensors).logits.float()
        total_loss += F.cross_entropy(logits, labels, reduction="sum").item()
        predictions.append(logits.argmax(dim=-1).cpu())
        targets.append(labels.cpu())
    predicted, target = torch.cat(predictions), torch.cat(targets)
    f1 = multiclass_f1_score(predicted, target, num_classes=num_labels, average="macro")
    return ClassScores(
        loss=total_loss / len(examples),
        accuracy=float((predicted == target).float().mean()),
        macro_f1=float(f1),
    )


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
    """Percentage (0-100) of correct predictions; None when there were none to score."""
    if not predictions:
        return None
    return 100.0 * sum(p.correct for p in predictions) / len(predictions)


@dataclass(frozen=True)
class EvalResult:
    scores: TokenScores | ClassScores | None
    exact_match: float | None = None
    rouge_l: float | None = None
    predictions: list[Prediction] = field(default_factory=list)

    @property
    def loss(self) -> float | None:
        return None if self.scores is None else self.scores.loss

    def as_metrics(self, suffix: str = "") -> dict[str, float | None]:
        """Every score under its metrics.json name, each followed by ``suffix``."""
        values: dict[str, float | None] = {"evalLoss": None}
        if self.scores is not None:
            values.update(self.scores.as_metrics())
        if not isinstance(self.scores, ClassScores):
            values.update(exactMatch=self.exact_match, rougeL=self.rouge_l)
        return {f"{name}{suffix}": value for name, value in values.items()}


def scores_for(
    model: torch.nn.Module,
    examples: Sequence[TokenizedExample],
    batch_size: int,
    pad_id: int,
    num_labels: int | None,
) -> TokenScores | ClassScores | None:
    """Class scores for a classifier (``num_labels`` set), token scores otherwise."""
    if num_labels is not None:
        return class_scores(model, examples, batch_size, pad_id, num_labels)
    return token_scores(model, examples, batch_size, pad_id)


def evaluate(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    validation: Sequence[TokenizedExample],
    samples: Sequence[EvalSample],
    *,
    batch_size: int,
    max_new_tokens: int,
    num_labels: int | None = None,
) -> EvalResult:
    """The full evaluation: scores on every validation example, plus greedy generations
    scored by exact match and ROUGE-L for language models."""
    scores = scores_for(model, validation, batch_size, tokenizer.pad_token_id, num_labels)
    if num_labels is not None:
        return EvalResult(scores)
    predictions = generate_answers(
        model, tokenizer, samples, batch_size=batch_size, max_new_tokens=max_new_tokens
    )
    return EvalResult(scores, exact_match(predictions), rouge_l(predictions), predictions)
