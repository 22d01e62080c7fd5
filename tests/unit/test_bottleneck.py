"""Bottleneck adapters (finetune_trainer.methods.bottleneck, method.type adapter): the
identity at init, where each variant sits, AdapterDrop, what trains (against the
planner's count), the published format's round trip, and the refusals."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from pydantic import ValidationError

from finetune_api.config.job import JobSections
from finetune_api.config.methods.adapter import AdapterSpec
from finetune_api.plan import ModelShape
from finetune_api.plan.trainable import trainable_for
from finetune_trainer.errors import ConfigError, ModelError
from finetune_trainer.methods import MethodContext
from finetune_trainer.methods.adapter import apply_adapter
from finetune_trainer.methods.bottleneck import (
    Bottleneck,
    is_bottleneck_adapter,
    load_bottleneck_adapter,
    save_bottleneck,
)
from finetune_trainer.modeling import resolve_compute

VARIANTS = ["houlsby", "pfeiffer", "parallel"]


def base(model_dir: Path, task: str = "causal-lm") -> Any:
    import transformers

    torch.manual_seed(0)
    if task == "causal-lm":
        return transformers.AutoModelForCausalLM.from_pretrained(model_dir).eval()
    return transformers.AutoModelForSequenceClassification.from_pretrained(
        model_dir, num_labels=3
    ).eval()


def job(options: dict[str, Any], task: str = "causal-lm") -> JobSections:
    data = {"format": "classification"} if task != "causal-lm" else {}
    return JobSections.model_validate(
        {
            "model": {"uri": "file:///m"},
            "task": task,
            "dataset": {"train": "file:///d.jsonl", **data},
            "method": {"type": "adapter", "lora": None, "adapter": options},
        }
    )


def adapted(model_dir: Path, options: dict[str, Any], task: str = "causal-lm") -> Any:
    context = MethodContext(resolve_compute("fp32"), 12, task, model_dir, None)
    model = base(model_dir, task)
    return apply_adapter(model, job(options, task).method.options(), context)


def randomize(model: torch.nn.Module, seed: int = 1) -> None:
    """Give every adapter's up-projection weights, as training would."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, Bottleneck):
                module.up.weight.copy_(torch.randn(module.up.weight.shape, generator=generator))
                module.up.bias.copy_(torch.randn(module.up.bias.shape, generator=generator))


IDS = torch.tensor([[5, 17, 42, 9, 3, 77, 12, 30]])


def logits(model: Any) -> torch.Tensor:
    with torch.no_grad():
        result: torch.Tensor = model(input_ids=IDS).logits
    return result


# --------------------------------------------------------------------------- the math


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_adapted_model_is_the_base_at_init_and_not_after(
    tiny_model_dir: Path, variant: str
) -> None:
    reference = logits(base(tiny_model_dir))
    model = adapted(tiny_model_dir, {"variant": variant, "nonlinearity": "gelu"})
    assert torch.equal(logits(model), reference)
    randomize(model)  # the adapters are in the forward path: moving them moves the output
    assert (logits(model) - reference).abs().max() > 1e-3


@pytest.mark.parametrize("variant", VARIANTS)
def test_each_variant_sits_where_it_says(tiny_model_dir: Path, variant: str) -> None:
    options = {"variant": variant, **({"scaling": 4.0} if variant == "parallel" else {})}
    model = adapted(tiny_model_dir, options)
    randomize(model)
    x = torch.randn(1, 8, 64)
    for block in model.model.layers:
        adapter = block.bottleneck_mlp
        raw = block.mlp.forward(x)  # forward() skips hooks: the base feed-forward
        with torch.no_grad():
            hooked = block.mlp(x)
            if variant == "parallel":  # from the feed-forward's input, scaled
                expected = raw + 4.0 * (adapter.up(adapter.act(adapter.down(x))))
            else:  # after its output, with the residual inside
                expected = raw + adapter.up(adapter.act(adapter.down(raw)))
        torch.testing.assert_close(hooked, expected)
        attention_hooked = len(block.self_attn._forward_hooks) > 0
        assert attention_hooked == (variant == "houlsby")
        assert hasattr(block, "bottleneck_attention") == (variant == "houlsby")


@pytest.mark.parametrize("checkpointing", [False, True])
def test_adapter_drop_leaves_the_lowest_blocks_alone_and_out_of_backward(
    tiny_model_dir: Path, checkpointing: bool
) -> None:
    from finetune_trainer.modeling import enable_gradient_checkpointing

    model = adapted(tiny_model_dir, {"variant": "houlsby", "dropLayers": 1})
    if checkpointing:  # it makes the embeddings' output require a gradient
        enable_gradient_checkpointing(model)
    lowest, top = model.model.layers
    assert not any(isinstance(m, Bottleneck) for m in lowest.modules())
    assert hasattr(top, "bottleneck_attention") and hasattr(top, "bottleneck_mlp")
    seen: list[bool] = []
    top.register_forward_pre_hook(lambda m, args: seen.append(_hidden(args).requires_grad))
    model.train()
    model(input_ids=IDS, labels=IDS).loss.backward()
    assert seen and not any(seen)  # nothing below the top block is differentiated
    assert all(p.grad is not None for p in top.bottleneck_mlp.parameters())


def _hidden(output: Any) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output


def test_drop_layers_must_leave_a_block(tiny_model_dir: Path) -> None:
    with pytest.raises(ConfigError, match=r"method\.adapter\.dropLayers is 2 .* at most 1"):
        adapted(tiny_model_dir, {"dropLayers": 2})


# --------------------------------------------------------------------------- what trains


@pytest.mark.parametrize(
    ("options", "task", "by_hand"),
    [
        # hidden 64 / 16 = width 4: down 4x64 + 4, up 64x4 + 64 = 580 per site
        ({"variant": "houlsby"}, "causal-lm", 2 * 2 * 580),
        ({"variant": "pfeiffer"}, "causal-lm", 2 * 580),
        ({"variant": "parallel", "bottleneckSize": 8}, "causal-lm", 2 * (8 * 64 + 8 + 64 * 8 + 64)),
        ({"variant": "houlsby", "dropLayers": 1}, "causal-lm", 2 * 580),
        # a classifier's fresh head (3 labels x 64, no bias for Llama's score) trains too
        ({"variant": "pfeiffer"}, "sequence-classification", 2 * 580 + 3 * 64),
    ],
    ids=["houlsby", "pfeiffer", "parallel-8", "drop-1", "classifier"],
)
def test_only_the_adapters_train_as_many_as_the_planner_counts(
    tiny_model_dir: Path, options: dict[str, Any], task: str, by_hand: int
) -> None:
    model = adapted(tiny_model_dir, options, task)
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert all(".bottleneck_" in n or n.startswith("score.") for n in trainable)
    assert sum(p.numel() for p in trainable.values()) == by_hand
    config = json.loads((tiny_model_dir / "config.json").read_text())
    planned = trainable_for(ModelShape.from_config(config), job(options, task), num_labels=3)
    assert planned.params == by_hand
    assert planned.lowest_trained_block == options.get("dropLayers", 0)


# --------------------------------------------------------------------------- the format


@pytest.mark.parametrize("task", ["causal-lm", "sequence-classification"])
def test_published_adapter_reloads_to_the_same_logits(
    tiny_model_dir: Path, tmp_path: Path, task: str
) -> None:
    model = adapted(tiny_model_dir, {"variant": "houlsby", "nonlinearity": "swish"}, task)
    randomize(model)
    if task != "causal-lm":
        with torch.no_grad():
            model.score.weight.add_(1.0)  # a trained head differs from a fresh one
    save_bottleneck(model, tmp_path)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["finetune_adapter"] == "bottleneck"
    assert config["options"]["variant"] == "houlsby" and config["width"] == 4
    assert is_bottleneck_adapter(tmp_path)

    fresh = base(tiny_model_dir, task)
    assert not torch.equal(logits(fresh), logits(model))
    loaded = load_bottleneck_adapter(fresh, tmp_path)
    assert torch.equal(logits(loaded), logits(model))


def test_an_adapter_for_another_base_is_refused(tiny_model_dir: Path, tmp_path: Path) -> None:
    model = adapted(tiny_model_dir, {"dropLayers": 1})
    save_bottleneck(model, tmp_path)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    config["options"]["dropLayers"] = 0  # claims adapters in block 0, which the file lacks
    (tmp_path / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(ModelError, match="do not fit this base"):
        load_bottleneck_adapter(base(tiny_model_dir), tmp_path)


# --------------------------------------------------------------------------- refusals


def test_a_model_without_decoder_blocks_is_refused_by_name(tmp_path: Path) -> None:
    from transformers import BertConfig, BertForSequenceClassification

    bert = BertForSequenceClassification(
        BertConfig(
            vocab_size=50,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
        )
    )
    context = MethodContext(resolve_compute("fp32"), 12, "sequence-classification", tmp_path, None)
    with pytest.raises(ConfigError, match=r"the bert architecture .* use method\.type lora"):
        apply_adapter(bert, AdapterSpec(), context)


def test_contract_refuses_two_widths_and_scaling_outside_parallel() -> None:
    with pytest.raises(ValidationError, match="reductionFactor and bottleneckSize"):
        job({"reductionFactor": 8, "bottleneckSize": 16})
    with pytest.raises(ValidationError, match="scaling applies to variant parallel"):
        job({"variant": "houlsby", "scaling": 2.0})
    assert job({"variant": "parallel", "scaling": 4.0}).method.options() == AdapterSpec(
        variant="parallel", scaling=4.0
    )


def test_vllm_is_not_told_it_is_a_lora_adapter(tiny_model_dir: Path, tmp_path: Path) -> None:
    from finetune_api.serving import vllm_compatibility

    save_bottleneck(adapted(tiny_model_dir, {}), tmp_path)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    problems = vllm_compatibility(config, 64)
    assert len(problems) == 1 and "peft_type is BOTTLENECK" in problems[0]
