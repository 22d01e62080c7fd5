"""The trainer's loss computes logits only at label positions: for every method it must
equal the model's own loss (transformers' shifted cross-entropy over full logits, plus
what peft adds), with the same gradients, on padded and on packed batches.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from conftest import colour_rows
from finetune_api.config.job import PROMPT_LEARNING_METHODS

METHODS = {
    "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
    "adalora": {"initR": 6, "targetR": 2, "dropout": 0.0, "tinit": 1, "tfinal": 1},
    "ia3": {},
    "full": {},
    "prefix": {"numVirtualTokens": 4},
    "prompt": {"numVirtualTokens": 4},
    "p-tuning": {"numVirtualTokens": 4},
}


def _model(method: str, model_dir: Path, tokenizer: Any) -> Any:
    from transformers import AutoModelForCausalLM

    from finetune_api.config import MethodSpec
    from finetune_trainer.methods import MethodContext, get_method
    from finetune_trainer.modeling import resolve_compute

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(model_dir)
    section = {"p-tuning": "pTuning"}.get(method, method)
    spec = MethodSpec.model_validate({"type": method, section: METHODS[method]})
    context = MethodContext(resolve_compute("fp32"), 12, "causal-lm", model_dir, tokenizer)
    model = get_method(method).apply(base, spec.options(), context)
    if method == "adalora":  # peft starts P and Q orthonormal-ish: make the term count
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_A" in name:
                    p.add_(0.3 * torch.randn_like(p))
    return model.train()


def _batch(tokenizer: Any, packed: bool) -> tuple[dict[str, torch.Tensor], int]:
    from finetune_trainer.data.batching import collate, count_label_tokens
    from finetune_trainer.data.formats import Example
    from finetune_trainer.data.packing import pack_examples
    from finetune_trainer.data.tokenize import tokenize_example

    examples = [
        tokenize_example(tokenizer, Example(messages=tuple(r["messages"])), 64)
        for r in colour_rows(5)
    ]
    weight = count_label_tokens(examples)
    if packed:
        rows = pack_examples(examples, 512)
        assert len(rows) == 1
        return collate(rows, tokenizer.eos_token_id), weight
    return collate(examples, tokenizer.eos_token_id), weight


def _grads(model: Any) -> dict[str, torch.Tensor]:
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return grads


# Prompt learning does not take packed rows (the configuration refuses them).
CASES = [
    (method, packed)
    for method in METHODS
    for packed in (False, True)
    if not (packed and method in PROMPT_LEARNING_METHODS)
]


@pytest.mark.parametrize(
    ("method", "packed"), CASES, ids=[f"{m}-{'packed' if p else 'padded'}" for m, p in CASES]
)
def test_selected_logits_loss_equals_the_models_own_loss(
    method: str, packed: bool, tiny_model_dir: Path, tiny_tokenizer: Any
) -> None:
    from finetune_trainer.losses import causal_lm_loss, with_term
    from finetune_trainer.methods import get_method

    model = _model(method, tiny_model_dir, tiny_tokenizer)
    batch, weight = _batch(tiny_tokenizer, packed)
    term = get_method(method).loss_term
    loss_fn = causal_lm_loss if term is None else with_term(causal_lm_loss, term)

    ours = loss_fn(model, batch, weight)
    ours.backward()
    ours_grads = _grads(model)
    reference = model(**batch, num_items_in_batch=weight).loss
    reference.backward()
    reference_grads = _grads(model)

    assert ours.item() == pytest.approx(reference.item(), rel=1e-5)
    assert ours_grads.keys() == reference_grads.keys() and ours_grads
    for name, grad in ours_grads.items():
        torch.testing.assert_close(grad, reference_grads[name], atol=1e-6, rtol=1e-4, msg=name)
    if term is not None:  # the method's term is really part of it
        assert abs(term(model).item()) > 1e-3


def test_only_the_label_positions_reach_the_output_projection(
    tiny_model_dir: Path, tiny_tokenizer: Any
) -> None:
    from finetune_trainer.losses import label_logits

    model = _model("lora", tiny_model_dir, tiny_tokenizer)
    batch, _ = _batch(tiny_tokenizer, packed=False)
    seen: list[tuple[int, ...]] = []
    head = model.get_output_embeddings()
    hook = head.register_forward_hook(lambda m, a, out: seen.append(tuple(out.shape)))
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    logits, target = label_logits(model, inputs, batch["labels"])
    hook.remove()
    labelled = int((batch["labels"][:, 1:] != -100).sum())
    assert seen == [(labelled, model.config.vocab_size)]
    assert labelled < batch["input_ids"].numel() / 2  # prompts and padding were left out
    assert logits.shape[0] == target.shape[0] == labelled
    # the hook is gone: a plain forward projects every position again
    full = model(**inputs).logits
    assert full.shape[:2] == batch["input_ids"].shape
