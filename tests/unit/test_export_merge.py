"""The shard-by-shard merge equals peft's base+adapter: the merged model's logits match
the PeftModel's (adapter on, eval mode) within fp32 round-off (atol 1e-5), for LoRA,
rsLoRA, DoRA, AdaLoRA and IA3, on a single-file and a sharded base; adapters that are
virtual tokens are refused naming the method."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from finetune_trainer.export.merge import (
    SHARD_INDEX,
    MergeError,
    merge_shards,
    read_adapter,
)

ATOL = 1e-4
"""fp32 against the unmerged PeftModel: a merged weight rounds ``W + s*B@A`` once where the
adapter's forward rounds ``x@W^T`` and ``s*(x@A^T)@B^T`` apart. The tiny model's logits
reach 10, so this is 1e-5 relative; measured: at most 2.2e-5 (peft's own merge_and_unload
differs by the same), and the merge equals merge_and_unload to 1e-6."""


@pytest.fixture(scope="module")
def sharded_base(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model re-saved in several safetensors shards with an index."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path_factory.mktemp("sharded")
    AutoModelForCausalLM.from_pretrained(tiny_model_dir).save_pretrained(
        out, max_shard_size="100KB"
    )
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(out)
    assert (out / SHARD_INDEX).is_file()
    return out


def _peft_config(kind: str) -> Any:
    from peft import AdaLoraConfig, IA3Config, LoraConfig

    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "down_proj"]
    if kind == "ia3":
        return IA3Config(
            target_modules=targets, feedforward_modules=["down_proj"], task_type="CAUSAL_LM"
        )
    if kind == "adalora":
        return AdaLoraConfig(
            init_r=4, target_r=2, total_step=10, target_modules=targets, task_type="CAUSAL_LM"
        )
    return LoraConfig(
        r=4,
        lora_alpha=8,
        target_modules=targets,
        use_rslora=kind == "rslora",
        use_dora=kind == "dora",
        init_lora_weights=False,  # random B: a zero delta would prove nothing
        task_type="CAUSAL_LM",
    )


def _randomise(model: torch.nn.Module) -> None:
    """Move every adapter weight off its initial value (IA3 starts at 1, AdaLoRA's E at 0)."""
    torch.manual_seed(1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "ia3_l" in name or "lora_E" in name or "lora_magnitude" in name:
                param.add_(torch.randn_like(param) * 0.3)


def _adapter(base: Path, kind: str, out: Path) -> torch.Tensor:
    """Save an adapter of ``kind`` on ``base`` to ``out``; return its PeftModel's logits."""
    from peft import PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base), _peft_config(kind))
    _randomise(model)
    model.save_pretrained(out)
    # the reference: the adapter as a user loads it (eval mode, adapter on)
    reloaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), out).eval()
    with torch.no_grad():
        return reloaded(input_ids=IDS).logits


IDS = torch.tensor([[5, 17, 42, 99, 3, 250, 7, 11]])


def _logits(model_dir: Path) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    with torch.no_grad():
        return model(input_ids=IDS).logits


def _merged_dir(base: Path, adapter_dir: Path, out: Path) -> Path:
    merge_shards(base, read_adapter(adapter_dir), out)
    for name in ("config.json", "generation_config.json"):
        (out / name).write_bytes((base / name).read_bytes())
    return out


@pytest.mark.parametrize("kind", ["lora", "rslora", "dora", "adalora", "ia3"])
def test_merged_logits_equal_base_plus_adapter(
    kind: str, tiny_model_dir: Path, tmp_path: Path
) -> None:
    expected = _adapter(tiny_model_dir, kind, tmp_path / "adapter")
    merged = _merged_dir(tiny_model_dir, tmp_path / "adapter", tmp_path / "merged")
    actual = _logits(merged)
    assert not torch.allclose(actual, _logits(tiny_model_dir), atol=1e-3), "adapter is a no-op"
    torch.testing.assert_close(actual, expected, atol=ATOL, rtol=0)
    torch.testing.assert_close(
        actual, _peft_merged(tiny_model_dir, tmp_path / "adapter"), atol=1e-6, rtol=0
    )


def _peft_merged(base: Path, adapter_dir: Path) -> torch.Tensor:
    """The logits of peft's own merge (the whole model in memory)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), adapter_dir)
    with torch.no_grad():
        return model.merge_and_unload().eval()(input_ids=IDS).logits


def test_a_sharded_base_is_merged_shard_by_shard(sharded_base: Path, tmp_path: Path) -> None:
    expected = _adapter(sharded_base, "lora", tmp_path / "adapter")
    report = merge_shards(sharded_base, read_adapter(tmp_path / "adapter"), tmp_path / "merged")
    assert len(report.shards) > 1
    index = json.loads((tmp_path / "merged" / SHARD_INDEX).read_text())
    assert set(index["weight_map"].values()) == set(report.shards)
    assert report.tensors_changed == 2 * 5  # two layers, five target modules
    for name in ("config.json", "generation_config.json"):
        (tmp_path / "merged" / name).write_bytes((sharded_base / name).read_bytes())
    torch.testing.assert_close(_logits(tmp_path / "merged"), expected, atol=ATOL, rtol=0)


def test_dtype_converts_every_float_tensor(tiny_model_dir: Path, tmp_path: Path) -> None:
    from safetensors import safe_open

    merge_shards(tiny_model_dir, None, tmp_path / "out", "bfloat16")
    with safe_open(str(tmp_path / "out" / "model.safetensors"), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.bfloat16}  # noqa: SIM118


@pytest.mark.parametrize(
    ("peft_type", "method"),
    [("PREFIX_TUNING", "prefix"), ("PROMPT_TUNING", "prompt"), ("P_TUNING", "p-tuning")],
)
def test_virtual_token_adapters_are_refused_naming_the_method(
    peft_type: str, method: str, tmp_path: Path
) -> None:
    (tmp_path / "adapter_config.json").write_text(json.dumps({"peft_type": peft_type}))
    with pytest.raises(MergeError, match=f"method {method} cannot be merged: its virtual tokens"):
        read_adapter(tmp_path)


def test_a_prompt_tuning_adapter_saved_by_peft_is_refused(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    from peft import PromptTuningConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(tiny_model_dir),
        PromptTuningConfig(num_virtual_tokens=4, task_type="CAUSAL_LM"),
    )
    model.save_pretrained(tmp_path)
    with pytest.raises(MergeError, match="method prompt cannot be merged"):
        read_adapter(tmp_path)


def test_an_adapter_for_another_base_is_refused(tiny_model_dir: Path, tmp_path: Path) -> None:
    _adapter(tiny_model_dir, "lora", tmp_path / "adapter")
    adapter = read_adapter(tmp_path / "adapter")
    adapter.modules["model.layers.7.self_attn.q_proj"] = adapter.modules.popitem()[1]
    with pytest.raises(MergeError, match="trained on another base"):
        merge_shards(tiny_model_dir, adapter, tmp_path / "merged")
