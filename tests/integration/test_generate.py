"""finetune generate / finetune chat: a published set loaded from storage answers as
base+adapter (or the merged model) answers when run directly, through its chat template.

The sets are built with peft on the tiny Llama (random, non-zero LoRA weights, so the
adapter visibly changes the answer) and staged by the trainer's own publish code, so
they have the published layout: adapter, tokenizer, model card, manifest.json.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from finetune_api.config import TrainerConfig
from finetune_cli.app import app

PROMPT = "What is colour 1?"
TOKENS = "8"


def _config(model_dir: Path, **spec: Any) -> TrainerConfig:
    return TrainerConfig.model_validate(
        {
            "jobName": "try",
            "model": {"uri": f"file://{model_dir}"},
            "dataset": {"train": "file://./train.jsonl"},
            "method": {"type": "lora", "lora": {"r": 4}},
            "output": {"uri": "file://./out"},
            **spec,
        }
    )


def _publish(model: Any, tokenizer: Any, config: TrainerConfig, out: Path) -> Path:
    from finetune_trainer.publish import stage_artifacts
    from finetune_trainer.runner import base_model_ref

    out.mkdir(parents=True)
    stage_artifacts(
        out, model, tokenizer, config, {"evalLoss": 1.0}, base_model_ref(config.model.uri)
    )
    return out


def _lora(model: Any, task_type: str) -> Any:
    import torch
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(1)
    config = LoraConfig(
        r=4,
        lora_alpha=8,
        target_modules=["q_proj", "v_proj"],
        task_type=task_type,
        init_lora_weights=False,  # random B: the adapter changes the output
    )
    return get_peft_model(model, config)


@pytest.fixture(scope="module")
def adapter_set(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = _lora(base, "CAUSAL_LM")
    return _publish(
        model, tokenizer, _config(tiny_model_dir), tmp_path_factory.mktemp("set") / "out"
    )


def _direct(model_dir: Path, adapter: Path | None, messages: list[dict[str, str]]) -> str:
    """What base (+adapter) answer greedily when called directly, as a user would."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(adapter or model_dir)
    model: Any = AutoModelForCausalLM.from_pretrained(model_dir)
    if adapter is not None:
        model = PeftModel.from_pretrained(model, adapter)
    ids = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    with torch.inference_mode():
        out = model.eval().generate(
            **ids,
            max_new_tokens=int(TOKENS),
            do_sample=False,
            pad_token_id=tokenizer.eos_token_id,
        )
    return str(tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True))


def invoke(*args: str, stdin: str | None = None) -> Result:
    return CliRunner().invoke(app, list(args), input=stdin, catch_exceptions=False)


def test_generate_from_an_adapter_set_equals_base_plus_adapter(
    adapter_set: Path, tiny_model_dir: Path
) -> None:
    result = invoke("generate", str(adapter_set), "-p", PROMPT, "--max-new-tokens", TOKENS)
    assert result.exit_code == 0, result.stderr
    expected = _direct(tiny_model_dir, adapter_set, [{"role": "user", "content": PROMPT}])
    assert expected.strip()
    assert result.stdout == expected + "\n"
    # The adapter is really applied: the base alone answers otherwise.
    assert _direct(tiny_model_dir, None, [{"role": "user", "content": PROMPT}]) != expected
    assert f"adapter on file://{tiny_model_dir}" in result.stderr
    assert "(verified)" in result.stderr


def test_the_chat_template_and_system_message_are_applied(
    adapter_set: Path, tiny_tokenizer: Any
) -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": PROMPT}]
    result = invoke(
        "generate", str(adapter_set), "-p", PROMPT, "--system", "Be brief.",
        "--max-new-tokens", "2", "--show-prompt",
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    rendered = tiny_tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=False
    )
    assert rendered in result.stderr
    raw = invoke(
        "generate", str(adapter_set), "-p", PROMPT, "--no-chat-template",
        "--max-new-tokens", "2", "--show-prompt",
    )  # fmt: skip
    assert raw.exit_code == 0, raw.stderr
    assert "<|im_start|>" not in raw.stderr


def test_several_prompts_and_stdin(adapter_set: Path, tiny_model_dir: Path) -> None:
    result = invoke(
        "generate", str(adapter_set), "-p", PROMPT, "-p", "-", "--max-new-tokens", TOKENS,
        stdin="What is colour 2?",
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    first = _direct(tiny_model_dir, adapter_set, [{"role": "user", "content": PROMPT}])
    second = _direct(
        tiny_model_dir, adapter_set, [{"role": "user", "content": "What is colour 2?"}]
    )
    assert result.stdout == f"{first}\n\n{second}\n"


def test_a_merged_model_directory(adapter_set: Path, tiny_model_dir: Path, tmp_path: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    merged = PeftModel.from_pretrained(base, adapter_set).merge_and_unload()
    merged.save_pretrained(tmp_path / "merged")
    AutoTokenizer.from_pretrained(adapter_set).save_pretrained(tmp_path / "merged")

    refused = invoke("generate", str(tmp_path / "merged"), "-p", PROMPT)
    assert refused.exit_code == 5
    assert "no manifest.json" in refused.stderr and "--no-verify" in refused.stderr

    result = invoke(
        "generate", str(tmp_path / "merged"), "-p", PROMPT, "--max-new-tokens", TOKENS,
        "--no-verify",
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert (
        result.stdout
        == _direct(tmp_path / "merged", None, [{"role": "user", "content": PROMPT}]) + "\n"
    )
    assert "loaded file://" in result.stderr and ": model, causal-lm" in result.stderr


def test_chat_keeps_the_history_and_reset_clears_it(adapter_set: Path, tiny_tokenizer: Any) -> None:
    lines = f"{PROMPT}\nWhat is colour 2?\n/reset\nWhat is colour 3?\n/exit\nnever read\n"
    result = invoke("chat", str(adapter_set), "--max-new-tokens", "4", "--show-prompt", stdin=lines)
    assert result.exit_code == 0, result.stderr
    answers = result.stdout.splitlines()
    assert len(answers) == 3
    first = [{"role": "user", "content": PROMPT}]
    second = [
        *first,
        {"role": "assistant", "content": answers[0]},
        {"role": "user", "content": "What is colour 2?"},
    ]
    after_reset = [{"role": "user", "content": "What is colour 3?"}]

    def render(messages: list[dict[str, str]]) -> str:
        return str(
            tiny_tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        )

    assert answers[0].strip()
    assert render(second) in result.stderr  # the second turn sees the first answer
    assert "(a new conversation)" in result.stderr
    third = result.stderr.split("(a new conversation)")[1]
    assert render(after_reset) in third and answers[0] not in third
    assert "never read" not in result.stderr


def test_a_set_on_s3(adapter_set: Path, tiny_model_dir: Path, s3_env: Any) -> None:
    from finetune_trainer.publish import publish

    uri = s3_env.uri("adapters/try")
    publish(adapter_set, uri)
    result = invoke("generate", uri, "-p", PROMPT, "--max-new-tokens", TOKENS)
    assert result.exit_code == 0, result.stderr
    expected = _direct(tiny_model_dir, adapter_set, [{"role": "user", "content": PROMPT}])
    assert result.stdout == expected + "\n"
    s3_env.client.put_object(
        Bucket=s3_env.bucket, Key="adapters/try/adapter_config.json", Body=b"{}"
    )
    tampered = invoke("generate", uri, "-p", PROMPT)
    assert tampered.exit_code == 5
    assert "adapter_config.json: size or sha256 differs" in tampered.stderr


def test_a_tampered_set_is_refused(adapter_set: Path, tmp_path: Path) -> None:
    copy = Path(shutil.copytree(adapter_set, tmp_path / "copy"))
    weights = copy / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    result = invoke("generate", str(copy), "-p", PROMPT)
    assert result.exit_code == 5
    assert "does not match its manifest.json" in result.stderr
    assert "adapter_model.safetensors: size or sha256 differs" in result.stderr
    assert result.stdout == ""


def test_unreadable_and_empty_locations(tmp_path: Path) -> None:
    missing = invoke("generate", str(tmp_path / "nowhere"), "-p", PROMPT)
    assert missing.exit_code == 5
    assert "no such directory" in missing.stderr
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "README.md").write_text("# nothing\n")
    empty = invoke("generate", str(tmp_path / "empty"), "-p", PROMPT, "--no-verify")
    assert empty.exit_code == 4
    assert "no model in this set" in empty.stderr
    bad = invoke("generate", str(tmp_path / "empty"), "-p", PROMPT, "--dtype", "fp8")
    assert bad.exit_code == 2 and "--dtype fp8" in bad.stderr


def test_trust_remote_code_follows_the_job(tiny_model_dir: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = _lora(AutoModelForCausalLM.from_pretrained(tiny_model_dir), "CAUSAL_LM")
    config = _config(
        tiny_model_dir, model={"uri": f"file://{tiny_model_dir}", "trustRemoteCode": True}
    )
    out = _publish(model, AutoTokenizer.from_pretrained(tiny_model_dir), config, tmp_path / "out")
    result = invoke("generate", str(out), "-p", PROMPT, "--max-new-tokens", "1")
    assert result.exit_code == 0, result.stderr
    assert "trust_remote_code is on: the job that trained this set asked for it" in result.stderr


def test_a_classifier_set_prints_its_labels(tiny_model_dir: Path, tmp_path: Path) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    tokenizer.pad_token = tokenizer.eos_token
    names = {0: "good", 1: "bad", 2: "neutral"}
    base = AutoModelForSequenceClassification.from_pretrained(
        tiny_model_dir, num_labels=3, pad_token_id=tokenizer.pad_token_id, id2label=names
    )
    model = _lora(base, "SEQ_CLS")
    config = _config(tiny_model_dir, task="sequence-classification",
                     dataset={"train": "file://./t.jsonl", "format": "classification"})  # fmt: skip
    out = _publish(model, tokenizer, config, tmp_path / "out")

    result = invoke("generate", str(out), "-p", "the answer is great")
    assert result.exit_code == 0, result.stderr
    rows = [line.split("\t") for line in result.stdout.splitlines()]
    assert len(rows) == 3
    fresh = AutoModelForSequenceClassification.from_pretrained(
        tiny_model_dir, num_labels=3, pad_token_id=tokenizer.pad_token_id
    )
    direct = PeftModel.from_pretrained(fresh, out).eval()
    with torch.inference_mode():
        logits = direct(**tokenizer("the answer is great", return_tensors="pt")).logits[0]
    probabilities = torch.softmax(logits, -1).tolist()
    best = max(range(3), key=lambda i: probabilities[i])
    assert rows[0][0] == names[best]  # named as the job's labels, from the manifest
    assert sorted(r[0] for r in rows) == sorted(names.values())
    assert float(rows[0][1]) == pytest.approx(probabilities[best], abs=1e-4)
    assert json.loads((out / "adapter_config.json").read_text())["task_type"] == "SEQ_CLS"
    chat = invoke("chat", str(out), stdin="hello\n")
    assert chat.exit_code == 2 and "does not chat" in chat.stderr


def test_a_set_on_the_hub(
    adapter_set: Path, tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """hf://: published through the Hub stand-in, read back verified (the set) or as a
    plain model repository through the Hub's cache (--no-verify)."""
    from finetune_trainer.publish import publish
    from finetune_trainer.storage.backends import open_store
    from finetune_trainer.storage.store import Holder
    from hub_server import HubStandIn

    with HubStandIn() as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        with open_store("hf://acme/try").lease(Holder("run")):  # creates the repository
            publish(adapter_set, "hf://acme/try")
        result = invoke("generate", "hf://acme/try", "-p", PROMPT, "--max-new-tokens", TOKENS)
        assert result.exit_code == 0, result.stderr
        expected = _direct(tiny_model_dir, adapter_set, [{"role": "user", "content": PROMPT}])
        assert result.stdout == expected + "\n"
        plain = invoke(
            "generate", "hf://acme/try", "-p", PROMPT, "--max-new-tokens", TOKENS, "--no-verify"
        )
        assert plain.exit_code == 0, plain.stderr
        assert plain.stdout == result.stdout


def test_a_prompt_tuning_set(tiny_model_dir: Path, tmp_path: Path) -> None:
    """Virtual-token methods generate through peft too (the prompt is prefixed inside)."""
    import torch
    from peft import PromptTuningConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(2)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    model = get_peft_model(base, PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4))
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    config = _config(tiny_model_dir, method={"type": "prompt"})
    out = _publish(model, tokenizer, config, tmp_path / "out")
    result = invoke("generate", str(out), "-p", PROMPT, "--max-new-tokens", TOKENS)
    assert result.exit_code == 0, result.stderr
    assert (
        result.stdout == _direct(tiny_model_dir, out, [{"role": "user", "content": PROMPT}]) + "\n"
    )


def test_sampling_with_a_seed_is_repeatable(adapter_set: Path) -> None:
    args = ("generate", str(adapter_set), "-p", PROMPT, "--max-new-tokens", "12")
    hot = ("--temperature", "5", "--top-p", "1.0")
    first = invoke(*args, *hot, "--seed", "3")
    again = invoke(*args, *hot, "--seed", "3")
    assert first.exit_code == 0, first.stderr
    assert first.stdout == again.stdout
    others = {invoke(*args, *hot, "--seed", str(seed)).stdout for seed in range(4, 8)}
    assert len(others | {first.stdout}) > 1  # it samples: seeds give different answers


def test_the_merged_model_of_a_set(adapter_set: Path, tiny_model_dir: Path, tmp_path: Path) -> None:
    """output.merge publishes merged/ inside the set, under the same manifest: --merged
    loads it (verified with the set); a set without it says how to get one."""
    from finetune_trainer.export.artifact import add_merged

    copy = Path(shutil.copytree(adapter_set, tmp_path / "set"))
    add_merged(copy, tiny_model_dir, json.loads((copy / "manifest.json").read_text()))
    result = invoke("generate", str(copy), "-p", PROMPT, "--max-new-tokens", TOKENS, "--merged")
    assert result.exit_code == 0, result.stderr
    messages = [{"role": "user", "content": PROMPT}]
    assert result.stdout == _direct(copy / "merged", None, messages) + "\n"
    assert "/merged: model, causal-lm" in result.stderr and "(verified)" in result.stderr
    (copy / "merged" / "config.json").write_text("{}")
    assert invoke("generate", str(copy), "-p", PROMPT, "--merged").exit_code == 5
    missing = invoke("generate", str(adapter_set), "-p", PROMPT, "--merged")
    assert missing.exit_code == 4 and "output.merge" in missing.stderr
