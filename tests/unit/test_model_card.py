"""The model card is a Hub model card (``ModelCard.load`` reads its metadata), its "Use
it" snippet is runnable as written, and the published adapter names a base that
``AutoPeftModelForCausalLM`` loads, with the trained model's logits."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from finetune_api.config import TrainerConfig
from finetune_trainer.model_card import card_data, is_hub_id
from finetune_trainer.publish import model_card
from finetune_trainer.runner import base_model_ref

SMOLLM2 = "HuggingFaceTB/SmolLM2-135M-Instruct"
METRICS = {
    "evalLoss": 0.5,
    "evalLossBefore": 0.9,
    "exactMatch": 0.75,
    "exactMatchBefore": 0.125,
    "steps": 3,
    "trainSeconds": 1.5,
    "history": [{"step": 1, "loss": 1.0}],
}
PLACEHOLDER = re.compile(r"<[^>\n]*>|YOUR_|TODO|\bxxx\b", re.IGNORECASE)


def config(**spec: Any) -> TrainerConfig:
    base: dict[str, Any] = {
        "jobName": "card",
        "model": {"uri": f"hf://{SMOLLM2}"},
        "dataset": {
            "train": "hf://datasets/acme/support/train.jsonl",
            "validation": "file://./validation.jsonl",
        },
        "method": {"type": "lora", "lora": {"r": 4}},
        "output": {"uri": "s3://models/runs/card"},
    }
    return TrainerConfig.model_validate({**base, **spec})


def load(text: str, tmp_path: Path) -> Any:
    from huggingface_hub import ModelCard

    (tmp_path / "README.md").write_text(text)
    return ModelCard.load(tmp_path / "README.md")


def test_the_card_loads_with_huggingface_hub_and_carries_the_facts(tmp_path: Path) -> None:
    card = load(model_card(config(), METRICS, SMOLLM2), tmp_path)
    data = card.data
    assert data.base_model == SMOLLM2
    assert data.library_name == "peft"
    assert data.pipeline_tag == "text-generation"
    assert data.tags == ["finetune-operator", "lora"]
    assert data.datasets == ["acme/support"]  # the hf:// one; the local file is in the text
    results = {r.metric_name: r for r in data.eval_results}
    assert results["evalLoss"].metric_value == 0.5
    assert results["exactMatch"].metric_type == "exact_match"
    assert results["exactMatch"].task_type == "text-generation"
    assert results["exactMatch"].dataset_name == "file://./validation.jsonl"
    assert "steps" not in results  # a count of the run, not an evaluation score
    assert "| exactMatch | 0.125 | 0.75 |" in card.text
    assert "`file://./validation.jsonl`" in card.text.split("## Data")[1]


def test_the_card_records_method_hyperparameters_and_library_versions(
    tmp_path: Path,
) -> None:
    from importlib.metadata import version

    text = load(model_card(config(), METRICS, SMOLLM2), tmp_path).text
    assert '"r": 4' in text.split("## Method")[1]
    assert '"learningRate"' in text.split("## Training hyperparameters")[1]
    libraries = text.split("## Libraries")[1]
    for package in ("torch", "transformers", "peft"):
        assert f"| {package} | {version(package)} |" in libraries
    assert "| finetune-operator |" in libraries


def test_a_sequence_classifier_card_names_its_pipeline_and_loader(tmp_path: Path) -> None:
    cls = config(
        task="sequence-classification",
        dataset={"train": "file://t.jsonl", "format": "classification"},
        output={"uri": "hf://acme/classifier"},
    )
    card = load(model_card(cls, {"accuracy": 0.9}, SMOLLM2, artifact="model"), tmp_path)
    assert card.data.pipeline_tag == "text-classification"
    assert card.data.library_name == "transformers"
    assert card.data.datasets is None
    assert 'AutoModelForSequenceClassification.from_pretrained("acme/classifier")' in card.text


@pytest.mark.parametrize(
    ("output", "expected"),
    [
        ("s3://models/runs/card", ["aws s3 cp --recursive s3://models/runs/card ./card"]),
        (
            "gs://models/runs/card",
            ["gcloud storage rsync --recursive gs://models/runs/card ./card", '"./card"'],
        ),
        (
            "az://models/runs/card",
            [
                "az storage blob download-batch --source models --pattern 'runs/card/*' "
                "--destination ./card",
                'from_pretrained("./card/runs/card")',
            ],
        ),
        ("hf://acme/bot@candidate", ['from_pretrained("acme/bot", revision="candidate")']),
        ("pvc://models/runs/card", ['from_pretrained("/mnt/models/runs/card")']),
        ("file:///srv/runs/card", ['from_pretrained("/srv/runs/card")']),
    ],
)
def test_use_it_names_the_real_locations_and_no_placeholder(
    output: str, expected: list[str], tmp_path: Path
) -> None:
    text = model_card(config(output={"uri": output}), METRICS, SMOLLM2)
    use_it = text.split("## Use it")[1]
    for snippet in expected:
        assert snippet in use_it
    assert f'AutoModelForCausalLM.from_pretrained("{SMOLLM2}")' in use_it
    assert "AutoPeftModelForCausalLM.from_pretrained" in use_it
    assert PLACEHOLDER.search(use_it) is None, PLACEHOLDER.search(use_it)


def test_a_pinned_hub_base_is_loaded_at_its_revision() -> None:
    text = model_card(config(model={"uri": f"hf://{SMOLLM2}", "revision": "abc123"}), {}, SMOLLM2)
    assert f'from_pretrained("{SMOLLM2}", revision="abc123")' in text
    assert "at revision `abc123`" in text


def test_a_bucket_base_without_a_hub_id_is_downloaded_in_the_snippet(tmp_path: Path) -> None:
    uri = "s3://models/bases/tiny"
    cfg = config(model={"uri": uri})
    text = load(model_card(cfg, METRICS, base_model_ref(uri, None)), tmp_path)
    assert text.data.base_model is None  # not a Hub repository: no metadata link to one
    use_it = text.text.split("## Use it")[1]
    assert f"aws s3 cp --recursive {uri} ./base-model" in use_it
    assert 'AutoModelForCausalLM.from_pretrained("./base-model")' in use_it
    assert "AutoPeftModel" not in use_it  # its config cannot name a loadable base
    assert PLACEHOLDER.search(use_it) is None


def test_a_bucket_base_saved_from_the_hub_is_named_by_its_hub_id(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"_name_or_path": SMOLLM2}))
    assert base_model_ref("s3://models/bases/smol", tmp_path) == SMOLLM2
    (tmp_path / "config.json").write_text(json.dumps({"_name_or_path": "/tmp/cache/x"}))
    assert base_model_ref("s3://models/bases/smol", tmp_path) == "s3://models/bases/smol"


def test_a_file_base_is_named_by_its_absolute_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "base").mkdir()
    assert base_model_ref("file://./base") == str(tmp_path / "base")
    assert not is_hub_id(str(tmp_path / "base"))
    cfg = config(model={"uri": "file://./base"})
    data = card_data(cfg, METRICS, str(tmp_path / "base"), "adapter")
    assert data.base_model is None
    text = model_card(cfg, METRICS, str(tmp_path / "base"))
    assert "absolute path" in text and str(tmp_path / "base") in text


def test_no_scores_no_model_index(tmp_path: Path) -> None:
    card = load(model_card(config(), {"steps": 3}, SMOLLM2), tmp_path)
    assert card.data.eval_results is None
    assert "No evaluation scores were recorded." in card.text


def test_auto_peft_loads_an_adapter_trained_from_a_file_base(
    tmp_path: Path, tiny_model_dir: Path, tiny_tokenizer: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The issue's defect: ``AutoPeftModelForCausalLM.from_pretrained(<published dir>)``
    failed with "Repo id must be in the form ..." for a file:// base."""
    import torch
    from peft import AutoPeftModelForCausalLM, LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from finetune_trainer.publish import stage_artifacts

    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    lora = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    trained = get_peft_model(base, lora).eval()  # random B: the adapter changes the logits
    cfg = config(model={"uri": f"file://{tiny_model_dir}"}, output={"uri": "file://./out"})
    staging = tmp_path / "published"
    staging.mkdir()
    stage_artifacts(staging, trained, tiny_tokenizer, cfg, METRICS, base_model_ref(cfg.model.uri))

    adapter = json.loads((staging / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == str(tiny_model_dir.resolve())
    loaded = AutoPeftModelForCausalLM.from_pretrained(staging).eval()
    ids = torch.tensor([[1, 5, 9, 2]])
    with torch.no_grad():
        expected, got = trained(input_ids=ids).logits, loaded(input_ids=ids).logits
        plain = AutoModelForCausalLM.from_pretrained(tiny_model_dir)(input_ids=ids).logits
    assert torch.equal(got, expected)
    assert not torch.allclose(plain, expected)  # the adapter was loaded, not only the base
