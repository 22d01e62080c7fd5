"""VeRA and LoRA-FA: what trains and what stays frozen, on the tiny Llama.

VeRA: the random matrices A and B are one pair shared by every adapted layer (the same
tensors, not equal copies), frozen, and only the per-layer scaling vectors train.
LoRA-FA: after a backward pass A has no gradient and B has one. For both, the trainable
count is the planner's."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from pydantic import ValidationError

from finetune_api.config.job import JobSections
from finetune_api.config.methods import METHODS, MethodSpec
from finetune_api.plan.shape import ModelShape
from finetune_api.plan.trainable import trainable_for


def job(method: str, options: dict[str, Any]) -> JobSections:
    return JobSections.model_validate(
        {
            "model": {"uri": "file:///m"},
            "dataset": {"train": "file:///d.jsonl"},
            "method": {"type": method, METHODS[method].section: options},
        }
    )


def applied(tiny_model_dir: Path, j: JobSections) -> torch.nn.Module:
    import transformers

    from finetune_trainer.methods import MethodContext, get_method
    from finetune_trainer.modeling import resolve_compute

    torch.manual_seed(0)
    base = transformers.AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    context = MethodContext(resolve_compute("fp32"), 12, "causal-lm", tiny_model_dir, None)
    model: torch.nn.Module = get_method(j.method.type).apply(base, j.method.options(), context)
    return model


def backward(model: torch.nn.Module) -> None:
    ids = torch.randint(0, 50, (2, 9))
    model(input_ids=ids, labels=ids).loss.backward()


def trainable(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def planned(tiny_model_dir: Path, j: JobSections) -> int:
    config = json.loads((tiny_model_dir / "config.json").read_text())
    return trainable_for(ModelShape.from_config(config), j).params


# --------------------------------------------------------------------------- VeRA


def test_vera_shares_one_frozen_pair_of_matrices_and_trains_only_the_scaling_vectors(
    tiny_model_dir: Path,
) -> None:
    from peft.tuners.vera import VeraLayer

    j = job("vera", {"r": 16, "targetModules": "all-linear"})
    model = applied(tiny_model_dir, j)
    layers = [m for m in model.modules() if isinstance(m, VeraLayer)]
    assert len(layers) == 2 * 7  # two blocks, seven projections each
    first_a, first_b = layers[0].vera_A["default"], layers[0].vera_B["default"]
    for layer in layers:
        # the same tensors (one storage), not copies that happen to be equal
        assert layer.vera_A["default"] is first_a
        assert layer.vera_B["default"] is first_b
    assert first_a.data_ptr() != first_b.data_ptr()
    assert not first_a.requires_grad and not first_b.requires_grad
    # sized for the largest adapted layer: rank x max input, max output x rank
    assert first_a.shape == (16, 128) and first_b.shape == (128, 16)
    names = trainable(model)
    assert names and all(".vera_lambda_b." in n or ".vera_lambda_d." in n for n in names)
    assert sum(p.numel() for p in names.values()) == planned(tiny_model_dir, j)

    before_a, before_b = first_a.clone(), first_b.clone()
    backward(model)
    assert all(p.grad is not None for p in names.values())
    assert first_a.grad is None and first_b.grad is None
    torch.optim.SGD(list(names.values()), lr=0.1).step()
    assert torch.equal(first_a, before_a) and torch.equal(first_b, before_b)


def test_vera_starts_from_the_base_model(tiny_model_dir: Path) -> None:
    """b starts at zero: the adapted model's logits are the base model's."""
    import transformers

    ids = torch.randint(0, 50, (1, 7))
    base = transformers.AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        expected = base(input_ids=ids).logits
        got = applied(tiny_model_dir, job("vera", {"r": 8})).eval()(input_ids=ids).logits
    assert torch.equal(got, expected)


def test_vera_matrices_come_from_the_projection_key(tiny_model_dir: Path) -> None:
    def matrices(key: int) -> torch.Tensor:
        model = applied(tiny_model_dir, job("vera", {"r": 8, "projectionPrngKey": key}))
        found: torch.Tensor = next(b for n, b in model.named_buffers() if "vera_A" in n)
        return found

    assert torch.equal(matrices(3), matrices(3))
    assert not torch.equal(matrices(3), matrices(4))


# --------------------------------------------------------------------------- LoRA-FA


def test_lora_fa_a_gets_no_gradient_and_b_does(tiny_model_dir: Path) -> None:
    j = job("lora-fa", {"r": 4, "alpha": 8, "dropout": 0.0, "targetModules": ["q_proj", "v_proj"]})
    model = applied(tiny_model_dir, j)
    a = {n: p for n, p in model.named_parameters() if ".lora_A." in n}
    b = {n: p for n, p in model.named_parameters() if ".lora_B." in n}
    assert len(a) == len(b) == 4  # q and v in two blocks
    assert set(trainable(model)) == set(b)
    backward(model)
    for name, p in a.items():
        assert p.grad is None, name
    for name, p in b.items():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert sum(p.numel() for p in b.values()) == planned(tiny_model_dir, j)


def test_lora_fa_trains_half_of_lora_at_equal_rank_on_square_layers(tiny_model_dir: Path) -> None:
    options = {"r": 4, "targetModules": ["q_proj", "o_proj"]}  # 64 x 64 each
    lora = planned(tiny_model_dir, job("lora", options))
    assert planned(tiny_model_dir, job("lora-fa", options)) * 2 == lora


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"useDora": True}, "useDora"),
        ({"loraPlusRatio": 16}, "loraPlusRatio"),
        ({"init": "pissa"}, "init pissa"),
    ],
)
def test_lora_fa_refuses_what_would_train_a(options: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        MethodSpec.model_validate({"type": "lora-fa", "loraFa": options})
    assert "loraFa" in str(caught.value) and field in str(caught.value)


def test_lora_fa_options_go_under_its_own_section() -> None:
    with pytest.raises(ValidationError, match="section 'lora' is set but type is 'lora-fa'"):
        MethodSpec.model_validate({"type": "lora-fa", "lora": {"r": 8}})


def test_lora_fa_a_stays_frozen_through_an_evaluation_of_the_base(tiny_model_dir: Path) -> None:
    """Scoring the base through the adapted model (a sharded run's "before" scores)
    switches the adapter off and on; peft then marks all of it trainable, A included.
    base_only puts every flag back."""
    from finetune_trainer.recipe.scoring import base_only

    j = job("lora-fa", {"r": 4, "targetModules": ["q_proj", "v_proj"]})
    model = applied(tiny_model_dir, j)
    with model.disable_adapter():  # type: ignore[operator]
        pass
    assert any(p.requires_grad for n, p in model.named_parameters() if ".lora_A." in n)

    model = applied(tiny_model_dir, j)
    before = {n for n, p in model.named_parameters() if p.requires_grad}
    with base_only(model):
        pass
    assert {n for n, p in model.named_parameters() if p.requires_grad} == before
