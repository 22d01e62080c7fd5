"""Merge and export end to end on the tiny model: a run with ``output.merge: true``
publishes the merged model under ``merged/`` in its one manifest; ``finetune export``
turns the published adapter into a safetensors model (verify passes, transformers loads
it, logits equal base+adapter) or a GGUF file (GGUFReader reads back the tensors and
metadata); ``finetune validate`` refuses ``output.merge`` with a prefix adapter."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

from conftest import colour_rows, write_jsonl
from finetune_cli.app import app
from finetune_trainer.publish import verify_manifest

runner = CliRunner()
ATOL = 1e-4  # fp32, as in tests/unit/test_export_merge.py
IDS = torch.tensor([[5, 17, 42, 99, 3, 250, 7, 11]])


def cli(*args: str) -> Any:
    return runner.invoke(app, list(args), catch_exceptions=False)


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    """One tiny LoRA run with output.merge: true (module-scoped: the tests read it)."""
    import yaml

    tmp = tmp_path_factory.mktemp("merge-run")
    spec = {
        "model": {"uri": f"file://{tiny_model_dir}"},
        "dataset": {
            "train": f"file://{write_jsonl(tmp / 'train.jsonl', colour_rows(32))}",
            "validation": f"file://{write_jsonl(tmp / 'validation.jsonl', colour_rows(8))}",
        },
        "method": {"type": "lora", "lora": {"r": 8, "alpha": 16, "dropout": 0.0}},
        "training": {"maxSteps": 3, "learningRate": 3e-2, "batchSize": 8, "maxSeqLength": 64},
        "evaluation": {"exactMatchSamples": 2, "maxNewTokens": 2},
        "output": {"uri": f"file://{tmp / 'out'}", "merge": True},
    }
    job = tmp / "job.yaml"
    job.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "finetune-operator.io/v1alpha1",
                "kind": "FineTuneJob",
                "metadata": {"name": "merge"},
                "spec": spec,
            }
        )
    )
    result = cli("run", str(job))
    assert result.exit_code == 0, result.output
    return tmp / "out"


def logits_of(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(input_ids=IDS).logits


def adapter_logits(base: Path, adapter: Path) -> torch.Tensor:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    return logits_of(PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), adapter))


def test_a_run_with_output_merge_publishes_the_merged_model_in_its_manifest(
    published: Path, tiny_model_dir: Path
) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert verify_manifest(published) == []
    manifest = json.loads((published / "manifest.json").read_text())
    listed = {f["path"] for f in manifest["files"]}
    assert manifest["merged"] == "merged/"
    assert {
        "merged/model.safetensors",
        "merged/config.json",
        "merged/tokenizer_config.json",
    } <= listed
    merged = AutoModelForCausalLM.from_pretrained(published / "merged")
    torch.testing.assert_close(
        logits_of(merged), adapter_logits(tiny_model_dir, published), atol=ATOL, rtol=0
    )
    assert AutoTokenizer.from_pretrained(published / "merged").chat_template


def test_export_round_trip_verifies_and_loads(
    published: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    from transformers import AutoModelForCausalLM

    out = tmp_path / "export"
    result = cli("export", str(published), "--to", f"file://{out}")
    assert result.exit_code == 0, result.output
    assert "merged, safetensors" in result.output
    assert cli("verify", f"file://{out}").exit_code == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["export"]["merged"] is True
    assert manifest["baseModel"] == f"file://{tiny_model_dir}"
    torch.testing.assert_close(
        logits_of(AutoModelForCausalLM.from_pretrained(out)),
        adapter_logits(tiny_model_dir, published),
        atol=ATOL,
        rtol=0,
    )


def test_export_with_a_dtype(published: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    out = tmp_path / "bf16"
    assert cli("export", str(published), "--to", str(out), "--dtype", "bfloat16").exit_code == 0
    model = AutoModelForCausalLM.from_pretrained(out, dtype="auto")
    assert next(model.parameters()).dtype == torch.bfloat16


def test_gguf_export_reads_back(published: Path, tiny_model_dir: Path, tmp_path: Path) -> None:
    import gguf
    from safetensors.torch import load_file

    from finetune_trainer.export.gguf_writer import permute

    out = tmp_path / "gguf"
    result = cli("export", str(published), "--to", str(out), "--format", "gguf")
    assert result.exit_code == 0, result.output
    assert cli("verify", str(out)).exit_code == 0
    reader = gguf.GGUFReader(out / "model.gguf")
    fields = {name: f.contents() for name, f in reader.fields.items()}
    config = json.loads((tiny_model_dir / "config.json").read_text())
    assert fields["general.architecture"] == "llama"
    assert fields["llama.context_length"] == config["max_position_embeddings"]
    assert fields["llama.block_count"] == config["num_hidden_layers"]
    assert len(fields["tokenizer.ggml.tokens"]) == config["vocab_size"]
    assert "im_start" in fields["tokenizer.chat_template"]
    tensors = {t.name: torch.from_numpy(t.data.copy()) for t in reader.tensors}
    merged = load_file(published / "merged" / "model.safetensors")
    assert len(tensors) == len(merged)
    torch.testing.assert_close(
        tensors["blk.0.ffn_down.weight"], merged["model.layers.0.mlp.down_proj.weight"]
    )
    q = merged["model.layers.1.self_attn.q_proj.weight"]
    torch.testing.assert_close(
        tensors["blk.1.attn_q.weight"], permute(q, config["num_attention_heads"])
    )


def test_gguf_export_of_a_model_transformers_reads_back(published: Path, tmp_path: Path) -> None:
    """transformers' GGUF loader undoes llama.cpp's q/k permutation: the logits of the
    GGUF equal the merged model's, which checks the permutation and the metadata."""
    from transformers import AutoModelForCausalLM

    out = tmp_path / "gguf"
    assert cli("export", str(published), "--to", str(out), "--format", "gguf").exit_code == 0
    from_gguf = AutoModelForCausalLM.from_pretrained(out, gguf_file="model.gguf")
    merged = AutoModelForCausalLM.from_pretrained(published / "merged")
    torch.testing.assert_close(logits_of(from_gguf), logits_of(merged), atol=ATOL, rtol=0)


def test_validate_refuses_output_merge_with_a_prefix_adapter(make_job: Any) -> None:
    import yaml

    job = make_job(output={"merge": True})
    manifest = yaml.safe_load(job.read_text())
    manifest["spec"]["method"] = {"type": "prefix"}
    job.write_text(yaml.safe_dump(manifest))
    result = cli("validate", str(job))
    assert result.exit_code == 2
    assert "output.merge" in result.output
    assert (
        "method.type prefix cannot be merged: its virtual tokens are not weights" in result.output
    )


def test_export_refuses_a_prefix_adapter_naming_the_method(tmp_path: Path) -> None:
    source = tmp_path / "set"
    source.mkdir()
    (source / "adapter_config.json").write_text(json.dumps({"peft_type": "PREFIX_TUNING"}))
    from finetune_trainer.publish import file_entries

    files = file_entries(source)
    (source / "manifest.json").write_text(json.dumps({"kind": "ArtifactManifest", "files": files}))
    result = runner.invoke(app, ["export", str(source), "--to", str(tmp_path / "x")])
    assert result.exit_code == 2
    assert "method prefix cannot be merged" in result.output


def test_export_from_s3_to_s3(published: Path, tiny_model_dir: Path, s3_env: Any) -> None:
    """A remote set is downloaded as its manifest lists it, checked, merged and the
    export published to another prefix, manifest last (verify reads it there)."""
    for path in published.rglob("*"):
        rel = path.relative_to(published).as_posix()
        if path.is_file() and not rel.startswith("checkpoints/"):
            s3_env.client.upload_file(str(path), s3_env.bucket, f"adapters/merge/{rel}")
    to = s3_env.uri("models/merge")
    result = cli("export", s3_env.uri("adapters/merge"), "--to", to)
    assert result.exit_code == 0, result.output
    assert cli("verify", to).exit_code == 0
    assert "models/merge/model.safetensors" in s3_env.objects("models/merge/")
