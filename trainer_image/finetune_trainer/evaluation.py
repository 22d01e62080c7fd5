"""Evaluation on the validation set: token-weighted loss and greedy exact match.

Exact match compares the model's greedy answer with the reference answer after
stripping surrounding whitespace: strict on purpose, it is the number users read
("did the model learn to answer exactly like this?").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from finetune_trainer.data.batching import collate, length_grouped_batches
from finetune_trainer.data.prepare import EvalSample
from finetune_trainer.data.tokenize import TokenizedExample


@dataclass(frozen=True)
class Prediction:
    answer: str
    generated: str

    @property
    def correct(self) -> bool:
        return normalize(self.generated) == normalize(self.answer)


def normalize(text: str) -> str:
    return text.strip()


@torch.no_grad()
def evaluation_loss(
    model: Any, examples: Sequence[TokenizedExample], batch_size: int, pad_id: int
) -> float | None:
    """Mean cross-entropy per label token over all of ``examples``."""
    if not examples:
        return None
    model.eval()
    device = next(model.parameters()).device
    total_loss, total_tokens = 0.0, 0
    lengths = [len(e.input_ids) for e in examples]
    for batch in length_grouped_batches(lengths, batch_size, seed=0, shuffle=False):
        tensors = {
            k: v.to(device) for k, v in collate([examples[i] for i in batch], pad_id).items()
        }
        logits = model(
            input_ids=tensors["input_ids"], attention_mask=tensors["attention_mask"]
        ).logits
        labels = tensors["labels"]
        # Prompt-learning methods prepend virtual tokens: score the real positions only.
        shift_logits = logits[:, -labels.size(1) : -1].float()
        shift_labels = labels[:, 1:]
        total_loss += torch.nn.functional.cross_entropy(
            shift_logits.reshape(-1, shift_logits.size(-1)),
            shift_labels.reshape(-1),
            ignore_index=-100,
            reduction="sum",
        ).item()
        total_tokens += int((shift_labels != -100).sum())
    return total_loss / max(total_tokens, 1)


@torch.no_grad()
def generate_answers(
    model: Any,
    tokenizer: Any,
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
        output = model.generate(
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
            predictions.append(Prediction(sample.answer, text))
    return predictions


def exact_match(predictions: Sequence[Prediction]) -> float | None:
    """Percentage (0-100) of correct predictions; None when there were none to score."""
    if not predictions:
        return None
    return 100.0 * sum(p.correct for p in predictions) / len(predictions)


@dataclass(frozen=True)
class EvalResult:
    loss: float | None
    exact_match: float | None
    predictions: list[Prediction]


def evaluate(
    model: Any,
    tokenizer: Any,
    validation: Sequence[TokenizedExample],
    samples: Sequence[EvalSample],
    *,
    batch_size: int,
    max_new_tokens: int,
) -> EvalResult:
    loss = evaluation_loss(model, validation, batch_size, tokenizer.pad_token_id)
    predictions = generate_answers(
        model, tokenizer, samples, batch_size=batch_size, max_new_tokens=max_new_tokens
    )
    return EvalResult(loss, exact_match(predictions), predictions)
