"""Every `method.type` end to end on the tiny Llama: it learns, it trains exactly the
parameters it promises (counted from the model's shapes, not from the code under test),
and what it publishes reloads to the model that was evaluated.

Plus what single methods promise beyond that: LoRA+ and freeze optimizer groups, AdaLoRA
rank reallocation, regex target modules, PiSSA/OLoRA conversion to a plain adapter,
text-initialised prompts, BitFit.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

from conftest import build_tiny_model, build_tokenizer
from finetune_api.config import TrainerConfig
from finetune_cli.app import app
from finetune_trainer.publish import verify_manifest

runner = CliRunner()


# --------------------------------------------------------------------------- shapes


@dataclass(frozen=True)
class Shapes:
    """The tiny model's dimensions, read from its config.json."""

    hidden: int
    intermediate: int
    layers: int
    kv: int
    """Width of the k/v projections: key-value heads x head dim."""
    vocab: int

    @classmethod
    def of(cls, model_dir: Path) -> Shapes:
        c = json.loads((model_dir / "config.json").read_text())
        head_dim = c.get("head_dim") or c["hidden_size"] // c["num_attention_heads"]
        return cls(
            hidden=c["hidden_size"],
            intermediate=c["intermediate_size"],
            layers=c["num_hidden_layers"],
            kv=c["num_key_value_heads"] * head_dim,
            vocab=c["vocab_size"],
        )

    def linears(self) -> dict[str, tuple[int, int]]:
        """(in, out) features of each linear layer of one decoder block."""
        h, i, kv = self.hidden, self.intermediate, self.kv
        return {
            "q_proj": (h, h),
            "k_proj": (h, kv),
            "v_proj": (h, kv),
            "o_proj": (h, h),
            "gate_proj": (h, i),
            "up_proj": (h, i),
            "down_proj": (i, h),
        }

    def lora(self, r: int, names: list[str] | None = None) -> int:
        """r x (in + out) per adapted linear, in every block."""
        chosen = {n: s for n, s in self.linears().items() if names is None or n in names}
        return self.layers * sum(r * (i + o) for i, o in chosen.values())

    def dora_magnitudes(self) -> int:
        return self.layers * sum(o for _, o in self.linears().values())

    def block(self) -> int:
        """All parameters of one decoder block: its linears and its two norms."""
        return sum(i * o for i, o in self.linears().values()) + 2 * self.hidden

    def everything(self) -> int:
        embed = head = self.vocab * self.hidden
        return embed + self.layers * self.block() + self.hidden + head


def lstm_encoder(token_dim: int, hidden: int, layers: int) -> int:
    """peft's p-tuning LSTM encoder: a bidirectional LSTM, then Linear(2h,2h), Linear(2h,d)."""
    lstm = 0
    for layer in range(layers):
        inputs = token_dim if layer == 0 else 2 * hidden
        lstm += 2 * (4 * hidden * inputs + 4 * hidden * hidden + 8 * hidden)
    mlp = (2 * hidden * 2 * hidden + 2 * hidden) + (2 * hidden * token_dim + token_dim)
    return lstm + mlp


# --------------------------------------------------------------------------- the cases


@dataclass(frozen=True)
class Case:
    id: str
    type: str
    options: dict[str, Any]
    expected: Callable[[Shapes], int]
    """The trainable parameter count the method promises for these options."""
    lr: float = 3e-2
    artifact: str = "adapter"
    adapter: dict[str, Any] = field(default_factory=dict)
    """Entries the published adapter_config.json must have."""


TINY_LORA = {"r": 4, "alpha": 8, "dropout": 0.0}
LAYER_1_Q_V = r"model\.layers\.1\.self_attn\.(q|v)_proj"

CASES = [
    Case(
        "lora-rslora-gaussian",
        "lora",
        {**TINY_LORA, "useRslora": True, "init": "gaussian"},
        lambda s: s.lora(4),
        adapter={"use_rslora": True, "init_lora_weights": "gaussian"},
    ),
    Case(
        "lora-dora-loraplus",
        "lora",
        {**TINY_LORA, "useDora": True, "loraPlusRatio": 4},
        lambda s: s.lora(4) + s.dora_magnitudes(),
        adapter={"use_dora": True},
    ),
    Case(
        "lora-regex-modules-to-save",
        "lora",
        {**TINY_LORA, "targetModules": LAYER_1_Q_V, "modulesToSave": ["lm_head"]},
        # one block's q and v only, plus a trainable copy of the head
        lambda s: s.lora(4, ["q_proj", "v_proj"]) // s.layers + s.vocab * s.hidden,
        adapter={"target_modules": LAYER_1_Q_V, "modules_to_save": ["lm_head"]},
    ),
    Case(
        "lora-pissa",
        "lora",
        {**TINY_LORA, "init": "pissa"},
        lambda s: s.lora(4),
        # converted on saving: rank 2r over the original base, alpha doubled with it
        adapter={"r": 8, "lora_alpha": 16, "init_lora_weights": True},
    ),
    Case(
        "lora-olora",
        "lora",
        {**TINY_LORA, "init": "olora"},
        lambda s: s.lora(4),
        adapter={"r": 8, "lora_alpha": 16, "init_lora_weights": True},
    ),
    Case(
        "qlora-dora",
        "qlora",
        {**TINY_LORA, "useDora": True},
        lambda s: s.lora(4) + s.dora_magnitudes(),
        adapter={"use_dora": True, "r": 4},
    ),
    Case(
        "adalora",
        "adalora",
        {"initR": 6, "targetR": 2, "alpha": 8, "dropout": 0.0, "tinit": 2, "tfinal": 2},
        # P (r x in), Q (out x r) and the r singular values E, per adapted linear
        lambda s: s.lora(6) + s.layers * len(s.linears()) * 6,
        lr=0.1,
        adapter={"peft_type": "ADALORA", "init_r": 6, "target_r": 2, "total_step": 12},
    ),
    Case(
        "ia3",
        "ia3",
        {},
        # peft's Llama default: k and v outputs scaled, down_proj's input scaled
        lambda s: s.layers * (s.kv + s.kv + s.intermediate),
        lr=0.3,
        adapter={"peft_type": "IA3"},
    ),
    Case("full", "full", {}, lambda s: s.everything(), lr=1e-3, artifact="model"),
    Case(
        "freeze",
        "freeze",
        {"trainableLayers": 1, "headLrMultiplier": 10},
        lambda s: s.block() + s.hidden + s.vocab * s.hidden,  # top block, norm, lm_head
        lr=3e-3,
        artifact="model",
    ),
    Case(
        "prefix",
        "prefix",
        {"numVirtualTokens": 4},
        # a key and a value prefix per layer, as wide as the k/v projections
        lambda s: 4 * s.layers * 2 * s.kv,
        lr=0.3,
        adapter={"peft_type": "PREFIX_TUNING", "num_virtual_tokens": 4},
    ),
    Case(
        "prefix-projection",
        "prefix",
        {"numVirtualTokens": 4, "projection": True, "encoderHiddenSize": 16},
        # embedding (n x kv), Linear(kv, 16), Linear(16, layers x 2 x kv)
        lambda s: 4 * s.kv + (s.kv * 16 + 16) + (16 * s.layers * 2 * s.kv + s.layers * 2 * s.kv),
        lr=0.1,
        adapter={"prefix_projection": True, "encoder_hidden_size": 16},
    ),
    Case(
        "prompt-text",
        "prompt",
        {"numVirtualTokens": 4, "init": "text", "initText": "colour answer"},
        lambda s: 4 * s.hidden,
        lr=0.1,
        adapter={"peft_type": "PROMPT_TUNING", "prompt_tuning_init": "TEXT"},
    ),
    Case(
        "p-tuning-mlp",
        "p-tuning",
        {"numVirtualTokens": 4, "encoderHiddenSize": 32},
        # embedding (n x hidden), Linear(hidden, 32), Linear(32, 32), Linear(32, hidden)
        lambda s: 4 * s.hidden + (s.hidden * 32 + 32) + (32 * 32 + 32) + (32 * s.hidden + s.hidden),
        lr=0.1,
        adapter={"peft_type": "P_TUNING", "encoder_reparameterization_type": "MLP"},
    ),
    Case(
        "p-tuning-lstm",
        "p-tuning",
        {"numVirtualTokens": 4, "encoder": "lstm", "encoderHiddenSize": 16, "encoderNumLayers": 1},
        lambda s: 4 * s.hidden + lstm_encoder(s.hidden, 16, 1),
        lr=0.1,
        adapter={"encoder_reparameterization_type": "LSTM", "encoder_num_layers": 1},
    ),
]


def section(method_type: str) -> str:
    return "pTuning" if method_type == "p-tuning" else method_type


def run_job(make_job: Any, method_type: str, options: dict[str, Any], **patch: Any) -> Path:
    """`finetune run` a job with this method on the tiny model; the output directory."""
    method = {"type": method_type, "lora": None, section(method_type): options}
    job = make_job(method=method, **patch)
    result = runner.invoke(app, ["run", str(job)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return job.parent / "out"


def metrics_of(out: Path) -> dict[str, Any]:
    return json.loads((out / "metrics.json").read_text())


def reload(out: Path, case: Case, base_dir: Path) -> Any:
    """The published artifact loaded the way its model card says."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    if case.artifact == "model":
        return AutoModelForCausalLM.from_pretrained(out)
    if case.type == "qlora":
        from finetune_trainer.methods import get_method
        from finetune_trainer.modeling import load_base_model, resolve_compute

        config = TrainerConfig.model_validate(
            json.loads((out / "manifest.json").read_text())["spec"]
        )
        compute = resolve_compute("fp32", torch.device("cpu"))
        quantization = get_method("qlora").quantization(config.method.options(), compute)
        base = load_base_model(
            base_dir, compute, trust_remote_code=False, quantization=quantization
        )
    else:
        base = AutoModelForCausalLM.from_pretrained(base_dir)
    return PeftModel.from_pretrained(base, out)


def validation_loss(model: Any, out: Path) -> float | None:
    from transformers import AutoTokenizer

    from finetune_trainer.data.prepare import prepare_data
    from finetune_trainer.evaluation import evaluation_loss

    config = TrainerConfig.model_validate(json.loads((out / "manifest.json").read_text())["spec"])
    tokenizer = AutoTokenizer.from_pretrained(out)
    data = prepare_data(
        tokenizer,
        config.dataset,
        max_length=config.training.max_seq_length,
        seed=config.training.seed,
        eval_samples=0,
    )
    return evaluation_loss(model, data.validation, 4, tokenizer.pad_token_id)


# --------------------------------------------------------------------------- every method


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_method_learns_trains_what_it_promises_and_reloads(
    case: Case, make_job: Any, tiny_model_dir: Path
) -> None:
    out = run_job(make_job, case.type, case.options, training={"learningRate": case.lr})
    metrics = metrics_of(out)

    # (1) It learns: the training loss falls, and so does the held-out loss.
    losses = [h["loss"] for h in metrics["history"]]
    assert len(losses) == 12
    assert sum(losses[-3:]) / 3 < 0.8 * losses[0], losses
    assert metrics["evalLoss"] < metrics["evalLossBefore"]
    # and generation works for it (exact match is scored on greedy generations)
    assert metrics["exactMatchSamples"] > 0
    assert metrics["exactMatch"] is not None

    # (2) It trains exactly what it promises.
    assert metrics["trainableParameters"] == case.expected(Shapes.of(tiny_model_dir))

    # (3) What it publishes is complete, of the right kind, and reloads to the model
    # that was evaluated.
    assert verify_manifest(out) == []
    names = {p.name for p in out.iterdir()}
    card = (out / "README.md").read_text()
    if case.artifact == "adapter":
        assert {"adapter_config.json", "adapter_model.safetensors"} <= names
        assert "model.safetensors" not in names
        assert "library_name: peft" in card
        adapter = json.loads((out / "adapter_config.json").read_text())
        for key, value in case.adapter.items():
            assert adapter[key] == value, (key, adapter[key])
    else:
        assert {"config.json", "model.safetensors"} <= names
        assert "adapter_config.json" not in names
        assert "library_name: transformers" in card
        assert "AutoModelForCausalLM.from_pretrained" in card
    model = reload(out, case, tiny_model_dir)
    assert validation_loss(model, out) == pytest.approx(metrics["evalLoss"], rel=1e-5)


# --------------------------------------------------------------------------- optimizer groups


@pytest.fixture
def optimizer_groups(monkeypatch: pytest.MonkeyPatch) -> list[list[dict[str, Any]]]:
    """The parameter groups of every optimizer a run builds (lr as configured)."""
    import finetune_trainer.loop as loop

    seen: list[list[dict[str, Any]]] = []
    real = loop.make_optimizer

    def recording(groups: list[dict[str, Any]], spec: Any) -> Any:
        optimizer = real(groups, spec)
        seen.append([dict(g, params=list(g["params"])) for g in optimizer.param_groups])
        return optimizer

    monkeypatch.setattr(loop, "make_optimizer", recording)
    return seen


def test_lora_plus_trains_the_b_matrices_at_lr_times_ratio(
    make_job: Any, optimizer_groups: list[list[dict[str, Any]]], tiny_model_dir: Path
) -> None:
    run_job(make_job, "lora", {**TINY_LORA, "loraPlusRatio": 16}, training={"maxSteps": 1})
    (groups,) = optimizer_groups
    by_rate = rates_and_sizes(groups)
    shapes = Shapes.of(tiny_model_dir)
    b = shapes.layers * sum(4 * o for _, o in shapes.linears().values())
    a = shapes.layers * sum(4 * i for i, _ in shapes.linears().values())
    assert by_rate == {round(3e-2 * 16, 9): b, 3e-2: a}


def rates_and_sizes(groups: list[dict[str, Any]]) -> dict[float, int]:
    """{learning rate: parameters trained at it}."""
    by_rate: dict[float, int] = {}
    for group in groups:
        rate = round(group["lr"], 9)
        by_rate[rate] = by_rate.get(rate, 0) + sum(p.numel() for p in group["params"])
    return by_rate


def test_freeze_trains_the_head_at_its_own_rate(
    make_job: Any, optimizer_groups: list[list[dict[str, Any]]], tiny_model_dir: Path
) -> None:
    run_job(
        make_job,
        "freeze",
        {"trainableLayers": 1, "headLrMultiplier": 10},
        training={"maxSteps": 1, "learningRate": 1e-3},
    )
    (groups,) = optimizer_groups
    shapes = Shapes.of(tiny_model_dir)
    assert rates_and_sizes(groups) == {
        round(1e-3 * 10, 9): shapes.vocab * shapes.hidden,  # lm_head
        1e-3: shapes.block() + shapes.hidden,  # the top block and the final norm
    }


# --------------------------------------------------------------------------- single methods


def test_adalora_reallocates_ranks_while_training(make_job: Any, tiny_model_dir: Path) -> None:
    """update_and_allocate runs after each step: the final budget is targetR per layer on
    average, shared unevenly by importance, and the published tensors are cut to it."""
    from safetensors.torch import load_file

    options = {"initR": 6, "targetR": 2, "alpha": 8, "dropout": 0.0, "tinit": 2, "tfinal": 2}
    out = run_job(make_job, "adalora", options, training={"learningRate": 0.1})
    adapter = json.loads((out / "adapter_config.json").read_text())
    pattern = adapter["rank_pattern"]
    shapes = Shapes.of(tiny_model_dir)
    adapted = shapes.layers * len(shapes.linears())
    assert len(pattern) == adapted
    ranks = [sum(kept) for kept in pattern.values()]
    assert all(len(kept) == 6 for kept in pattern.values())
    assert sum(ranks) == 2 * adapted  # targetR x layers: pruned from 6 x layers
    assert len(set(ranks)) > 1, ranks  # reallocated by importance, not cut evenly
    tensors = load_file(out / "adapter_model.safetensors")
    kept_e = sum(t.shape[0] for name, t in tensors.items() if ".lora_E" in name)
    assert kept_e == sum(ranks)


def test_adalora_needs_steps_to_reallocate_in(make_job: Any) -> None:
    job = make_job(
        method={"type": "adalora", "lora": None, "adalora": {"tinit": 8, "tfinal": 4}},
    )
    result = runner.invoke(app, ["run", str(job)])
    assert result.exit_code == 2, result.output
    assert "method.adalora: tinit (8) + tfinal (4)" in result.output
    assert "12" in result.output


def test_target_modules_regex_adapts_exactly_the_matching_modules(make_job: Any) -> None:
    from safetensors.torch import load_file

    out = run_job(
        make_job, "lora", {**TINY_LORA, "targetModules": LAYER_1_Q_V}, training={"maxSteps": 1}
    )
    adapted = {
        name.split(".lora_")[0].removeprefix("base_model.model.")
        for name in load_file(out / "adapter_model.safetensors")
    }
    assert adapted == {"model.layers.1.self_attn.q_proj", "model.layers.1.self_attn.v_proj"}


def test_target_modules_matching_nothing_is_a_config_error(make_job: Any) -> None:
    job = make_job(method={"type": "lora", "lora": {"targetModules": r".*\.query_key_value"}})
    result = runner.invoke(app, ["run", str(job)])
    assert result.exit_code == 2, result.output
    assert "method.lora.targetModules:" in result.output  # the field, named
    assert "q_proj" in result.output  # the names the model does have
    assert "Traceback" not in result.output


@pytest.mark.parametrize("init", ["pissa", "olora"])
def test_pissa_and_olora_move_the_base_weights_into_the_adapter(
    init: str, tiny_model_dir: Path
) -> None:
    """As peft documents: the adapter starts from a decomposition of each weight and the
    base keeps the residual, so the model's function is unchanged at the start."""
    from transformers import AutoModelForCausalLM

    from finetune_api.config import LoraSpec
    from finetune_trainer.methods import MethodContext, get_method
    from finetune_trainer.modeling import resolve_compute

    original = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    before = original.model.layers[0].self_attn.q_proj.weight.detach().clone()
    ids = torch.tensor([[5, 17, 42, 99, 120, 7]])
    with torch.no_grad():
        logits_before = original(input_ids=ids).logits
    context = MethodContext(resolve_compute("fp32"), 12, "causal-lm", tiny_model_dir, None)
    model = get_method("lora").apply(original, LoraSpec(r=4, alpha=8, init=init), context)
    layer = model.base_model.model.model.layers[0].self_attn.q_proj
    residual = layer.base_layer.weight.detach()
    delta = layer.lora_B["default"].weight @ layer.lora_A["default"].weight
    assert not torch.allclose(residual, before, atol=1e-3)  # the base was rewritten
    assert delta.abs().max() > 1e-2  # and the adapter is not zero
    torch.testing.assert_close(
        residual + layer.scaling["default"] * delta, before, atol=1e-4, rtol=0
    )
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, logits_before, atol=1e-3, rtol=0)


def test_qlora_takes_its_lora_options_from_the_lora_section(
    make_job: Any, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """type: qlora as KAITO writes it: the LoRA options under lora:, only the quantisation
    under qlora:. The adapter is the one lora: describes, on the base qlora: quantises."""
    import dataclasses

    from finetune_trainer.methods import REGISTRY, get_method

    qlora = get_method("qlora")
    quantizations: list[Any] = []

    def recording(options: Any, compute: Any) -> Any:
        quantizations.append(qlora.quantization(options, compute))
        return quantizations[-1]

    monkeypatch.setitem(REGISTRY, "qlora", dataclasses.replace(qlora, quantization=recording))
    lora = {**TINY_LORA, "targetModules": ["q_proj", "v_proj"]}
    job = make_job(
        method={"type": "qlora", "lora": lora, "qlora": {"quantType": "fp4"}},
        training={"maxSteps": 2},
    )
    result = runner.invoke(app, ["run", str(job)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    out = job.parent / "out"

    adapter = json.loads((out / "adapter_config.json").read_text())
    assert (adapter["r"], adapter["lora_alpha"]) == (4, 8)
    assert set(adapter["target_modules"]) == {"q_proj", "v_proj"}
    shapes = Shapes.of(tiny_model_dir)
    assert metrics_of(out)["trainableParameters"] == shapes.lora(4, ["q_proj", "v_proj"])
    (quantization,) = quantizations
    assert quantization.load_in_4bit
    assert quantization.bnb_4bit_quant_type == "fp4"
    assert verify_manifest(out) == []


def test_prompt_text_init_starts_from_the_texts_token_embeddings(tiny_model_dir: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from finetune_api.config import PromptSpec
    from finetune_trainer.methods import MethodContext, get_method
    from finetune_trainer.modeling import resolve_compute

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    words = base.get_input_embeddings().weight.detach().clone()
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    text = "colour answer"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    n = 2 * len(ids) + 1  # repeated, then cut
    context = MethodContext(resolve_compute("fp32"), 12, "causal-lm", tiny_model_dir, tokenizer)
    options = PromptSpec(num_virtual_tokens=n, init="text", init_text=text)
    model = get_method("prompt").apply(base, options, context)
    prompt = model.prompt_encoder["default"].embedding.weight.detach()
    expected = words[(ids * 3)[:n]]
    torch.testing.assert_close(prompt, expected)


# --------------------------------------------------------------------------- BitFit


@pytest.fixture(scope="module")
def biased_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer random Llama with attention and MLP biases, for BitFit."""
    return build_tiny_model(
        tmp_path_factory.mktemp("tiny-llama-biases"), attention_bias=True, mlp_bias=True
    )


def test_bitfit_trains_only_the_bias_terms(make_job: Any, biased_model_dir: Path) -> None:
    from transformers import AutoModelForCausalLM

    options = {"trainableLayers": 2, "trainBiasOnly": True}
    out = run_job(
        make_job,
        "freeze",
        options,
        model={"uri": f"file://{biased_model_dir}"},
        training={"learningRate": 0.1},
    )
    metrics = metrics_of(out)
    shapes = Shapes.of(biased_model_dir)
    # every linear of both blocks has a bias of its output width; lm_head and norms none
    assert metrics["trainableParameters"] == shapes.layers * sum(
        o for _, o in shapes.linears().values()
    )
    losses = [h["loss"] for h in metrics["history"]]
    assert sum(losses[-3:]) / 3 < 0.8 * losses[0], losses

    trained = AutoModelForCausalLM.from_pretrained(out).state_dict()
    base = AutoModelForCausalLM.from_pretrained(biased_model_dir).state_dict()
    changed = {name for name, t in trained.items() if not torch.equal(t, base[name])}
    assert changed and all(name.endswith(".bias") for name in changed), changed
    reloaded = AutoModelForCausalLM.from_pretrained(out)
    assert validation_loss(reloaded, out) == pytest.approx(metrics["evalLoss"], rel=1e-5)


def test_bitfit_on_a_model_without_biases_says_so(make_job: Any) -> None:
    job = make_job(method={"type": "freeze", "lora": None, "freeze": {"trainBiasOnly": True}})
    result = runner.invoke(app, ["run", str(job)])
    assert result.exit_code == 2, result.output
    assert "method.freeze.trainBiasOnly: LlamaForCausalLM has no bias terms" in result.output
    assert "set trainBiasOnly: false" in result.output


def test_freeze_refuses_more_layers_than_the_model_has(make_job: Any) -> None:
    job = make_job(method={"type": "freeze", "lora": None, "freeze": {"trainableLayers": 3}})
    result = runner.invoke(app, ["run", str(job)])
    assert result.exit_code == 2, result.output
    assert "method.freeze.trainableLayers is 3" in result.output
    assert "has 2 transformer blocks; use at most 2" in result.output


# --------------------------------------------------------------------------- task types


@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer random Llama with a 3-class score head (sequence classification)."""
    directory = tmp_path_factory.mktemp("tiny-llama-classifier")
    tokenizer = build_tokenizer()
    return build_tiny_model(
        directory,
        "LlamaForSequenceClassification",
        pad_token_id=tokenizer.eos_token_id,
        num_labels=3,
        initializer_range=0.02,
    )


CLASSIFIER_OPTIONS = {
    "lora": {"r": 4},
    "adalora": {"initR": 4, "targetR": 2},
    "ia3": {},
    "full": {},
    "freeze": {"trainableLayers": 1},
    "prefix": {"numVirtualTokens": 4},
    "prompt": {"numVirtualTokens": 4, "init": "text", "initText": "colour"},
    "p-tuning": {"numVirtualTokens": 4},
}


@pytest.mark.parametrize("method_type", list(CLASSIFIER_OPTIONS))
def test_sequence_classification_trains_the_classifier_head(
    method_type: str, classifier_dir: Path
) -> None:
    """With task sequence-classification the methods build peft's classification model
    (SEQ_CLS), which trains and saves the fresh score head with the adapter; a causal-LM
    task type would leave that head frozen at its random initialisation."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from finetune_api.config import MethodSpec
    from finetune_trainer.methods import MethodContext, get_method
    from finetune_trainer.modeling import resolve_compute

    base = AutoModelForSequenceClassification.from_pretrained(classifier_dir)
    tokenizer = AutoTokenizer.from_pretrained(classifier_dir)
    spec = MethodSpec.model_validate(
        {"type": method_type, section(method_type): CLASSIFIER_OPTIONS[method_type]}
    )
    context = MethodContext(
        resolve_compute("fp32"), 12, "sequence-classification", classifier_dir, tokenizer
    )
    model = get_method(method_type).apply(base, spec.options(), context)
    if method_type not in ("full", "freeze"):
        assert type(model).__name__ == "PeftModelForSequenceClassification"
    score = {n: p for n, p in model.named_parameters() if "score" in n and p.requires_grad}
    assert score, [n for n, p in model.named_parameters() if p.requires_grad]
    ids = torch.tensor([[5, 17, 42, 99], [7, 8, 9, 10]])
    model.train()
    loss = model(
        input_ids=ids, attention_mask=torch.ones_like(ids), labels=torch.tensor([0, 2])
    ).loss
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in score.values())


def test_adalora_keeps_its_rank_count_fixed_under_mixed_precision(tiny_model_dir: Path) -> None:
    """peft's fp32 upcast of a bf16 model's adapters makes `ranknum` (the denominator of
    the scale, which is never saved) trainable; the method freezes it again."""
    from transformers import AutoModelForCausalLM

    from finetune_api.config import AdaLoraSpec
    from finetune_trainer.methods import MethodContext, get_method
    from finetune_trainer.modeling import resolve_compute

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.bfloat16)
    context = MethodContext(resolve_compute("bf16"), 12, "causal-lm", tiny_model_dir, None)
    model = get_method("adalora").apply(base, AdaLoraSpec(init_r=6, target_r=2), context)
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert not [n for n in trainable if "ranknum" in n]
    shapes = Shapes.of(tiny_model_dir)
    assert sum(p.numel() for p in trainable.values()) == (
        shapes.lora(6) + shapes.layers * len(shapes.linears()) * 6
    )
    assert {p.dtype for p in trainable.values()} == {torch.float32}
