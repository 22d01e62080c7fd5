"""The planner (finetune_api.plan): model shapes against real models' parameter counts,
trainable parameters against what the trainer's methods build, each memory term against
hand-computed values, and the fit verdict with its suggestions."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from conftest import REPO
from finetune_api.config.job import JobSections
from finetune_api.config.methods import METHODS
from finetune_api.plan import DEVICES, DataFacts, ModelShape, Target, plan_job
from finetune_api.plan import devices as cal
from finetune_api.plan.planner import resolve_precision
from finetune_api.plan.target import duration_text, plan_status, quantity_value, target_for
from finetune_api.plan.text import render_plan
from finetune_api.plan.trainable import TRAINABLE, trainable_for
from finetune_api.resource import FineTuneJobSpec

SMOLLM2 = json.loads((REPO / "models/SmolLM2-135M-Instruct/config.json").read_text())

TINY: dict[str, Any] = {
    "model_type": "llama",
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 100,
    "tie_word_embeddings": False,
}


def job(**sections: Any) -> JobSections:
    return JobSections.model_validate(
        {"model": {"uri": "file:///m"}, "dataset": {"train": "file:///d.jsonl"}, **sections}
    )


def spec(**sections: Any) -> FineTuneJobSpec:
    return FineTuneJobSpec.model_validate(
        {"model": {"uri": "hf://org/m"}, "dataset": {"train": "s3://bkt/d.jsonl"}, **sections}
    )


def terms(plan: Any) -> dict[str, int]:
    return {t.name: t.bytes for t in plan.memory.terms}


# --------------------------------------------------------------------------- shapes


def _real_count(config: dict[str, Any]) -> int:
    import torch
    import transformers

    cfg = transformers.AutoConfig.for_model(**config)
    with torch.device("meta"):
        if config["model_type"] == "bert":
            model = transformers.AutoModel.from_config(cfg)
        else:
            model = transformers.AutoModelForCausalLM.from_config(cfg)
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    "config",
    [
        SMOLLM2,
        TINY,
        {**TINY, "tie_word_embeddings": True, "num_key_value_heads": 4},
        {**TINY, "model_type": "qwen2"},  # q/k/v biases
        {**TINY, "model_type": "mistral"},
        {**TINY, "model_type": "phi3", "pad_token_id": 0},  # fused qkv and gate_up
        {"model_type": "gpt2", "n_embd": 64, "n_layer": 2, "n_head": 4, "vocab_size": 100},
        json.loads((REPO / "models/all-MiniLM-L6-v2/config.json").read_text()),
    ],
    ids=["smollm2", "llama", "tied-mha", "qwen2", "mistral", "phi3", "gpt2", "minilm"],
)
def test_the_shape_counts_every_parameter_of_the_real_model(config: dict[str, Any]) -> None:
    shape = ModelShape.from_config(config)
    assert not shape.approximate
    assert shape.total_params == _real_count(config)


def test_an_unknown_architecture_is_read_as_llama_like_and_flagged() -> None:
    shape = ModelShape.from_config({**TINY, "model_type": "brand-new"})
    assert shape.approximate
    assert shape.total_params == ModelShape.from_config(TINY).total_params


def test_a_config_without_sizes_is_refused_naming_the_field() -> None:
    from finetune_api.plan import ShapeError

    with pytest.raises(ShapeError, match="hidden_size"):
        ModelShape.from_config({"model_type": "llama", "num_hidden_layers": 2})


# --------------------------------------------------------------------------- trainable

METHOD_CASES: list[tuple[str, dict[str, Any]]] = [
    ("lora", {"r": 4, "targetModules": "all-linear"}),
    ("lora", {"r": 8, "targetModules": ["q_proj", "v_proj"], "useDora": True}),
    ("lora", {"r": 4, "targetModules": r"model\.layers\.1\..*_proj", "modulesToSave": ["lm_head"]}),
    ("adalora", {"initR": 6, "targetR": 2, "tinit": 1, "tfinal": 1}),
    ("ia3", {}),
    ("prefix", {"numVirtualTokens": 5}),
    ("prefix", {"numVirtualTokens": 5, "projection": True, "encoderHiddenSize": 16}),
    ("prompt", {"numVirtualTokens": 7}),
    ("p-tuning", {"numVirtualTokens": 5, "encoderHiddenSize": 16}),
    ("p-tuning", {"numVirtualTokens": 5, "encoder": "lstm", "encoderHiddenSize": 16}),
    ("full", {}),
    ("freeze", {"trainableLayers": 1}),
    # its first step's set is its last with maxBlocks = startBlocks (the planner's is the last)
    ("progressive", {"everySteps": 1, "startBlocks": 1, "maxBlocks": 1}),
]


def test_every_method_has_a_planner_entry() -> None:
    assert set(TRAINABLE) == set(METHODS)


@pytest.mark.parametrize(
    ("method", "options", "task"),
    [(m, o, "causal-lm") for m, o in METHOD_CASES]
    + [("lora", {"r": 4}, "sequence-classification"), ("freeze", {}, "sequence-classification")],
    ids=lambda v: v if isinstance(v, str) else json.dumps(v, sort_keys=True)[:40],
)
def test_trainable_parameters_are_what_the_trainer_builds(
    tiny_model_dir: Path, method: str, options: dict[str, Any], task: str
) -> None:
    import transformers

    from finetune_trainer.methods import MethodContext, get_method
    from finetune_trainer.modeling import resolve_compute

    entry = METHODS[method]
    data = {"format": "classification"} if task != "causal-lm" else {}
    j = job(
        task=task,
        dataset={"train": "file:///d.jsonl", **data},
        method={"type": method, entry.section: options},
    )
    config = json.loads((tiny_model_dir / "config.json").read_text())
    if task == "causal-lm":
        model = transformers.AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    else:
        model = transformers.AutoModelForSequenceClassification.from_pretrained(
            tiny_model_dir, num_labels=3
        )
    context = MethodContext(resolve_compute("fp32"), 12, task, tiny_model_dir, None)
    trained = get_method(method).apply(model, j.method.options(), context)
    real = sum(p.numel() for p in trained.parameters() if p.requires_grad)
    planned = trainable_for(ModelShape.from_config(config), j, num_labels=3).params
    assert planned == real


# --------------------------------------------------------------------------- memory terms


def test_static_terms_by_hand_for_lora_on_a_tiny_llama() -> None:
    shape = ModelShape.from_config(TINY)
    j = job(method={"type": "lora", "lora": {"r": 8, "targetModules": ["q_proj", "v_proj"]}})
    plan = plan_job(j, shape, Target())
    # q: 64 -> 64, v: 64 -> 32 (2 kv heads x 16); r x (in + out) each, in 2 blocks
    trainable = 2 * (8 * (64 + 64) + 8 * (64 + 32))
    assert plan.parameters.trainable == trainable
    t = terms(plan)
    assert t["weights"] == shape.total_params * 4  # fp32 on a CPU
    assert t["trainableWeights"] == t["gradients"] == trainable * 4
    assert t["optimizerStates"] == trainable * 8  # adamw: two fp32 moments
    assert t["runtime"] == cal.CPU.runtime_bytes


@pytest.mark.parametrize(
    ("optimizer", "per_param"),
    [("adamw", 8), ("adamw-8bit", 2), ("sgd", 4)],
)
def test_optimizer_states_per_trainable_parameter(optimizer: str, per_param: int) -> None:
    plan = plan_job(job(training={"optimizer": optimizer}), ModelShape.from_config(TINY), Target())
    assert terms(plan)["optimizerStates"] == plan.parameters.trainable * per_param


def test_sgd_without_momentum_keeps_no_state_and_adafactor_factors_matrices() -> None:
    shape = ModelShape.from_config(TINY)
    sgd = plan_job(job(training={"optimizer": "sgd", "momentum": 0}), shape, Target())
    assert "optimizerStates" not in terms(sgd)
    lora = {"type": "lora", "lora": {"r": 8, "targetModules": ["q_proj"]}}
    ada = plan_job(job(method=lora, training={"optimizer": "adafactor"}), shape, Target())
    # A (8 x 64) and B (64 x 8) in 2 blocks: a row and a column vector each
    assert terms(ada)["optimizerStates"] == 2 * 2 * (8 + 64) * 4


def test_qlora_holds_the_block_linears_in_4_bits_with_their_constants() -> None:
    shape = ModelShape.from_config(TINY)
    linear = sum(lin.fan_in * lin.fan_out for lin in shape.linears)
    other = shape.total_params - linear
    gpu = Target(device=DEVICES["L4"])
    double = terms(plan_job(job(method={"type": "qlora"}), shape, gpu))["weights"]
    assert double == int(linear * (0.5 + (1 + 4 / 256) / 64)) + other * 2
    single = job(method={"type": "qlora", "qlora": {"doubleQuant": False}})
    assert terms(plan_job(single, shape, gpu))["weights"] == int(linear * 0.5625) + other * 2
    smollm2 = ModelShape.from_config(SMOLLM2)
    four_bit = terms(plan_job(job(method={"type": "qlora"}), smollm2, gpu))["weights"]
    assert four_bit < terms(plan_job(job(), smollm2, gpu))["weights"] / 2


def test_precision_sets_the_frozen_weights_and_activation_bytes() -> None:
    shape = ModelShape.from_config(TINY)
    gpu = Target(device=DEVICES["H100"])
    assert resolve_precision("auto", gpu) == "bf16"
    assert resolve_precision("auto", Target()) == "fp32"
    bf16 = terms(plan_job(job(), shape, gpu))
    fp32 = terms(plan_job(job(training={"precision": "fp32"}), shape, gpu))
    assert bf16["weights"] * 2 == fp32["weights"]
    assert bf16["activations"] < fp32["activations"]


def test_activations_scale_with_batch_and_length_and_checkpointing_keeps_block_inputs() -> None:
    shape = ModelShape.from_config(TINY)
    lora = {"type": "lora", "lora": {"dropout": 0.0, "r": 4, "targetModules": ["q_proj"]}}
    small_eval = {"batchSize": 1}

    def activations(**training: Any) -> int:
        j = job(method=lora, training=training, evaluation=small_eval)
        return terms(plan_job(j, shape, Target()))["activations"]

    base = {"activations": activations(batchSize=2, maxSeqLength=64)}
    double = {"activations": activations(batchSize=4, maxSeqLength=64)}
    assert double["activations"] == 2 * base["activations"]
    # Per token and block: norms 4h, rotary and attention 2q + 3kv + heads, a gated MLP
    # 3i, and q_proj's adapter: its fp32 input (h) and its rank-r output; each scaled by
    # the calibration's factor.
    h, i, q, kv, heads = 64, 128, 64, 32, 4
    c = cal.CPU
    block = (4 * h + 2 * q + 3 * kv + 3 * i + heads) * 4 * c.block + (h * 4 + 4 * 4) * c.adapter
    assert base["activations"] == pytest.approx(2 * 64 * (2 * block + 4 * h * 4), abs=1)
    # checkpointing: the 2 blocks' inputs, one block recomputed, what the allocator keeps
    kept = 2 * h * 4 + block + c.checkpoint_retained * 2 * block
    checkpointed = {
        "activations": activations(batchSize=2, maxSeqLength=64, gradientCheckpointing=True)
    }
    assert checkpointed["activations"] == pytest.approx(2 * 64 * (kept + 4 * h * 4), abs=1)
    assert checkpointed["activations"] < base["activations"]


def test_logits_count_only_label_positions() -> None:
    shape = ModelShape.from_config(TINY)
    j = job(training={"batchSize": 2, "maxSeqLength": 64})
    facts = DataFacts(rows=10, tokens=1000, label_tokens=250, longest=50)
    t = terms(plan_job(j, shape, Target(), facts))
    # 2 sequences of the longest row's 50 tokens, a quarter of them labels, x vocab 100,
    # 12 bytes each in fp32 (logits, log-softmax, its gradient), scaled by the calibration
    assert t["logits"] == int(2 * 50 * 0.25 * 100 * 12 * cal.CPU.logits)


def test_cpu_effects_qlora_keeps_the_full_weights_8bit_steps_in_fp32_and_loading() -> None:
    shape = ModelShape.from_config(SMOLLM2)
    assert shape.file_dtype_bytes == 4  # config.json: "dtype": "float32"
    cpu, gpu = Target(), Target(device=DEVICES["L4"])
    qlora = job(method={"type": "qlora"})
    assert terms(plan_job(qlora, shape, cpu))["weights"] == shape.total_params * 4
    assert terms(plan_job(qlora, shape, gpu))["weights"] < shape.total_params
    eight = job(
        method={"type": "full"},
        training={"optimizer": "adamw-8bit", "batchSize": 1, "maxSeqLength": 64},
        evaluation={"batchSize": 1},
    )
    # three fp32 copies of the largest trainable tensor, the tied embedding
    assert terms(plan_job(eight, shape, cpu))["optimizerStep"] == 12 * shape.vocab * shape.hidden
    assert "optimizerStep" not in terms(plan_job(eight, shape, gpu))
    tiny = job(training={"batchSize": 1, "maxSeqLength": 16}, evaluation={"batchSize": 1})
    loading = plan_job(tiny, shape, cpu)
    assert loading.memory.phase == "loading"
    assert terms(loading)["loading"] == shape.total_params * (4 + 4)  # the file mapped, and built


def test_a_tied_head_makes_freeze_keep_every_blocks_activations() -> None:
    smollm2 = ModelShape.from_config(SMOLLM2)  # tied
    untied = ModelShape.from_config({**SMOLLM2, "tie_word_embeddings": False})
    small_eval = {"evaluation": {"batchSize": 1}, "training": {"maxSeqLength": 512}}
    freeze = job(method={"type": "freeze", "freeze": {"trainableLayers": 2}}, **small_eval)
    lora = job(**small_eval)
    assert trainable_for(smollm2, freeze).lowest_trained_block == 0
    assert trainable_for(untied, freeze).lowest_trained_block == 28
    tied_plan = plan_job(freeze, smollm2, Target(device=DEVICES["H100"]))
    untied_plan = plan_job(freeze, untied, Target(device=DEVICES["H100"]))
    assert terms(tied_plan)["activations"] > 5 * terms(untied_plan)["activations"]
    assert (
        terms(tied_plan)["activations"]
        < terms(plan_job(lora, smollm2, Target(device=DEVICES["H100"])))["activations"]
    )


def test_packing_pays_for_its_mask_and_cpu_attention_scores() -> None:
    shape = ModelShape.from_config(TINY)
    packed = job(training={"batchSize": 2, "maxSeqLength": 128, "packing": True})
    t = terms(plan_job(packed, shape, Target()))
    assert t["packingMask"] == 2 * 128 * 128 * 4
    assert t["attentionScores"] == 2 * 4 * 128**2 * 4 * 2 * 2  # batch x heads x L^2, 2 blocks
    on_gpu = terms(plan_job(packed, shape, Target(device=DEVICES["H100"])))
    assert "attentionScores" not in on_gpu  # fused attention takes the mask


def test_fsdp_shards_weights_gradients_and_optimizer_and_ddp_pays_buckets() -> None:
    shape = ModelShape.from_config(SMOLLM2)
    full = job(method={"type": "full"})
    one = terms(plan_job(full, shape, Target(device=DEVICES["H100"])))
    four = terms(
        plan_job(full, shape, Target(device=DEVICES["H100"], devices_per_node=4, strategy="fsdp"))
    )
    for name in ("weights", "trainableWeights", "gradients", "optimizerStates"):
        assert four.get(name, 0) == one.get(name, 0) // 4
    assert four["fsdpGathered"] > 0
    ddp = terms(plan_job(full, shape, Target(device=DEVICES["H100"], devices_per_node=4)))
    assert ddp["ddpBuckets"] == ddp["gradients"]


# --------------------------------------------------------------------------- data and time


def test_steps_and_tokens_come_from_the_data_like_the_trainer_counts_them() -> None:
    from finetune_trainer.steps import total_steps

    shape = ModelShape.from_config(TINY)
    j = job(training={"epochs": 3, "batchSize": 4, "gradientAccumulation": 2})
    facts = DataFacts(rows=50, tokens=5000, label_tokens=2000, longest=200)
    plan = plan_job(j, shape, Target(), facts)
    assert plan.data.steps == total_steps(50, j.training) == 3 * math.ceil(13 / 2)
    assert plan.data.tokens == 15000
    capped = plan_job(job(training={"maxSteps": 2, "batchSize": 4}), shape, Target(), facts)
    assert capped.data.steps == 2 and capped.data.tokens == 5000 * 2 // 13


def test_without_data_only_max_steps_gives_a_duration() -> None:
    shape = ModelShape.from_config(SMOLLM2)
    assert plan_job(job(), shape, Target()).time.seconds is None
    plan = plan_job(
        job(training={"maxSteps": 100, "batchSize": 2, "maxSeqLength": 512}), shape, Target()
    )
    assert plan.data.source == "spec"
    assert plan.data.tokens == 100 * 2 * 512
    assert plan.time.seconds is not None and plan.time.seconds > 0


def test_full_fine_tuning_costs_more_flops_a_token_than_lora_and_checkpointing_more_still() -> None:
    shape = ModelShape.from_config(SMOLLM2)
    linear = sum(lin.fan_in * lin.fan_out for lin in shape.linears)
    lora_plan = plan_job(job(), shape, Target())
    lora = lora_plan.time.flops_per_token
    full = plan_job(job(method={"type": "full"}), shape, Target()).time.flops_per_token
    ckpt = plan_job(job(training={"gradientCheckpointing": True}), shape, Target())
    # full adds the base's weight gradients (2 x linear) and drops the adapters' own
    # forward and backward (6 x their parameters)
    assert full - lora == pytest.approx(2 * linear - 6 * lora_plan.parameters.trainable)
    assert ckpt.time.flops_per_token - lora > 2 * linear  # a second forward


def test_a_faster_gpu_plans_a_shorter_run() -> None:
    shape = ModelShape.from_config(SMOLLM2)
    j = job(training={"maxSteps": 1000, "batchSize": 16, "maxSeqLength": 2048})
    h100 = plan_job(j, shape, Target(device=DEVICES["H100"])).time.seconds
    l4 = plan_job(j, shape, Target(device=DEVICES["L4"])).time.seconds
    assert h100 is not None and l4 is not None and h100 < l4


# --------------------------------------------------------------------------- the verdict


def test_a_job_that_fits_says_so_and_suggests_nothing() -> None:
    plan = plan_job(job(), ModelShape.from_config(SMOLLM2), Target(device=DEVICES["H100"]))
    assert plan.fits is True
    assert plan.suggestions == []
    assert plan.verdict.startswith("fits:")


def test_unknown_memory_gives_no_verdict_and_says_what_to_set() -> None:
    plan = plan_job(job(), ModelShape.from_config(SMOLLM2), Target())
    assert plan.fits is None
    assert "resources.gpuType" in plan.verdict


def _apply(j: JobSections, target: Target, fields: dict[str, Any]) -> tuple[JobSections, Target]:
    """A suggestion's fields set on the job (and its resources on the target)."""
    from dataclasses import replace

    data = j.model_dump(by_alias=True)
    for path, value in fields.items():
        section, key = path.split(".", 1)
        if path == "resources.gpus":
            target = replace(target, devices_per_node=value)
        elif path == "resources.strategy":
            target = replace(target, strategy=value)
        elif path == "method.type":
            data["method"] = {"type": value}
        else:
            data[section][key] = value
    return JobSections.model_validate(data), target


def test_a_job_that_cannot_fit_gets_suggestions_whose_estimates_are_true() -> None:
    shape = ModelShape.from_config(SMOLLM2)
    big = job(method={"type": "full"}, training={"batchSize": 32, "maxSeqLength": 4096})
    l4 = Target(device=DEVICES["L4"])
    plan = plan_job(big, shape, l4)
    assert plan.fits is False
    assert plan.verdict.startswith("does not fit")
    assert plan.memory.largest in ("activations", "logits")
    assert plan.suggestions and plan.suggestions[0].fits
    assert plan.suggestions[0].change in plan.verdict
    for s in plan.suggestions:
        changed, where = _apply(big, l4, s.set)
        again = plan_job(changed, shape, where, suggest=False)
        assert again.memory.per_device_bytes == s.per_device_bytes
        assert again.fits == s.fits
    # the result-preserving changes come first among those that fit
    fitting = [s for s in plan.suggestions if s.fits]
    assert fitting == sorted(fitting, key=lambda s: not s.same_result)
    # every suggestion lowers the peak
    assert all(s.per_device_bytes < plan.memory.per_device_bytes for s in plan.suggestions)


def test_when_no_single_change_fits_the_changes_are_combined() -> None:
    shape = ModelShape.from_config(SMOLLM2)
    huge = job(
        method={"type": "full"},
        training={"batchSize": 64, "maxSeqLength": 16384, "gradientCheckpointing": False},
    )
    a10g = Target(device=DEVICES["A10G"])
    plan = plan_job(huge, shape, a10g)
    assert plan.fits is False
    assert not any(s.fits for s in plan.suggestions[1:])
    combined = plan.suggestions[0]
    assert combined.fits and " and " in combined.change
    changed, where = _apply(huge, a10g, combined.set)
    again = plan_job(changed, shape, where, suggest=False)
    assert again.fits and again.memory.per_device_bytes == combined.per_device_bytes


# --------------------------------------------------------------------------- targets, status, text


def test_the_target_comes_from_the_resources() -> None:
    gpu = target_for(spec(resources={"gpus": 2, "nodes": 2, "gpuType": "L4", "strategy": "fsdp"}))
    assert gpu.device is DEVICES["L4"] and gpu.world == 4 and gpu.fsdp
    assert gpu.capacity == DEVICES["L4"].memory_bytes
    custom = target_for(spec(resources={"gpus": 1, "gpuMemory": "48Gi"}))
    assert custom.capacity == 48 * 2**30 and custom.device is not None
    unknown = target_for(spec(resources={"gpus": 1}))
    assert unknown.capacity is None
    cpu = target_for(spec(resources={"cpu": "1500m", "memory": "8Gi"}), cpu_cores=4, host_memory=1)
    assert cpu.device is None and cpu.cpu_cores == 1.5 and cpu.capacity == 8 * 2**30
    host = target_for(spec(), cpu_cores=4, host_memory=123)
    assert host.cpu_cores == 4 and host.capacity == 123
    assert target_for(spec(), gpu="H200").device is DEVICES["H200"]


def test_gpu_facts_without_gpus_are_refused() -> None:
    with pytest.raises(ValueError, match=r"resources\.gpuType .* gpus is 0"):
        spec(resources={"gpuType": "L4"})


@pytest.mark.parametrize(
    ("quantity", "value"),
    [(4, 4), ("16Gi", 16 * 2**30), ("500m", 0.5), ("1.5G", 1.5e9), ("2e3", 2000)],
)
def test_quantities(quantity: int | str, value: float) -> None:
    assert float(quantity_value(quantity)) == value


def test_status_summary_and_durations() -> None:
    shape = ModelShape.from_config(SMOLLM2)
    plan = plan_job(job(training={"maxSteps": 50}), shape, Target(device=DEVICES["H100"]))
    status = plan_status(plan)
    assert status.fits is True and status.device == "H100" and status.steps == 50
    assert status.estimated_seconds == round(plan.time.seconds or 0)
    assert status.memory_per_device.endswith("Gi") or status.memory_per_device.endswith("Mi")
    assert [duration_text(s) for s in (45, 754, 4830, 200000)] == ["45s", "12m", "1h20m", "2d7h"]


def test_the_table_lists_every_term_the_verdict_and_suggestions() -> None:
    shape = ModelShape.from_config(SMOLLM2)
    big = job(method={"type": "full"}, training={"batchSize": 32, "maxSeqLength": 4096})
    plan = plan_job(big, shape, Target(device=DEVICES["L4"]))
    text = render_plan(plan, "big")
    for term in plan.memory.terms:
        assert term.name in text
    assert plan.verdict in text
    assert "to make it fit:" in text and "training.gradientCheckpointing: true" in text


# --------------------------------------------------------------------------- the command


def test_finetune_plan_reads_the_model_and_data_and_exits_6_when_it_cannot_fit(
    make_job: Any,
) -> None:
    from finetune_cli.app import app

    path = make_job(training={"maxSteps": 3, "batchSize": 2})
    result = CliRunner().invoke(app, ["plan", str(path), "-o", "json"])
    assert result.exit_code == 0, result.output
    plan = json.loads(result.stdout)
    assert plan["data"]["source"] == "dataset" and plan["data"]["rows"] > 0
    assert plan["data"]["steps"] == 3
    assert plan["time"]["seconds"] > 0
    table = CliRunner().invoke(app, ["plan", str(path)])
    assert table.exit_code == 0 and "memory per process" in table.stdout
    huge = make_job(
        name="huge", training={"batchSize": 4096, "maxSeqLength": 1048576, "maxSteps": 1}
    )
    result = CliRunner().invoke(app, ["plan", str(huge), "--gpu", "L4", "--no-data"])
    assert result.exit_code == 6, result.output
    assert "does not fit" in result.stdout
    bad = CliRunner().invoke(app, ["plan", str(path), "--gpu", "Z80"])
    assert bad.exit_code == 2 and "H100" in bad.stderr


def test_suggestions_never_pair_qlora_with_fsdp() -> None:
    from finetune_api import rules

    shape = ModelShape.from_config(SMOLLM2)
    big = job(method={"type": "qlora"}, training={"batchSize": 64, "maxSeqLength": 8192})
    plan = plan_job(big, shape, Target(device=DEVICES["L4"]))
    assert plan.suggestions
    for s in plan.suggestions:
        assert s.set.get("resources.strategy") != "fsdp"
    sharded = Target(device=DEVICES["L4"], devices_per_node=2, strategy="fsdp")
    full = plan_job(job(method={"type": "full"}, training={"batchSize": 64}), shape, sharded)
    assert all(s.set.get("method.type") != "qlora" for s in full.suggestions)
    assert "fsdp cannot shard the 4-bit weights" in str(rules.cel_rules())


# --------------------------------------------------------------------------- issue 14's tasks

PAIRS = {"train": "file:///pairs.jsonl", "format": "preference"}
PROMPTS = {"train": "file:///prompts.jsonl", "format": "prompts"}
LORA_Q = {"type": "lora", "lora": {"dropout": 0.0, "r": 4, "targetModules": ["q_proj"]}}
SMALL_EVAL = {"batchSize": 1}


def test_a_preference_pair_puts_two_rows_through_the_model() -> None:
    on_cpu = (ModelShape.from_config(TINY), Target())
    training = {"batchSize": 2, "maxSeqLength": 64}
    sft = terms(plan_job(job(method=LORA_Q, training=training, evaluation=SMALL_EVAL), *on_cpu))
    pairs = plan_job(
        job(
            task="preference",
            dataset=PAIRS,
            method=LORA_Q,
            training=training,
            evaluation=SMALL_EVAL,
        ),
        *on_cpu,
    )
    dpo = terms(pairs)
    # chosen and rejected: the activations and label logits of 2 x batchSize rows
    assert dpo["activations"] == 2 * sft["activations"]
    assert dpo["logits"] == 2 * sft["logits"]
    # the reference is the same weights with the adapter off: no copy
    assert "referenceWeights" not in dpo and dpo["weights"] == sft["weights"]
    # and doubled by hand: 2 x 2 rows x 64 labels x vocab 100 x 12 fp32 bytes
    assert dpo["logits"] == int(2 * 2 * 64 * 100 * 12 * cal.CPU.logits)


def test_full_and_freeze_keep_a_frozen_reference_copy_unless_reference_free_or_precomputed() -> (
    None
):
    shape = ModelShape.from_config(TINY)

    def reference(method: str, **preference: Any) -> int:
        j = job(task="preference", dataset=PAIRS, method={"type": method}, preference=preference)
        return terms(plan_job(j, shape, Target())).get("referenceWeights", 0)

    # fp32 on a CPU: 4 bytes for every parameter of the base
    assert reference("full") == shape.total_params * 4
    assert reference("freeze", loss="ipo") == shape.total_params * 4
    assert reference("full", loss="simpo") == 0
    assert reference("full", loss="orpo") == 0
    assert reference("full", precomputeReference=True) == 0
    assert reference("lora") == 0


def test_precomputed_or_reference_free_steps_skip_the_reference_forward() -> None:
    shape = ModelShape.from_config(SMOLLM2)
    training = {"maxSteps": 10, "batchSize": 2, "maxSeqLength": 256}

    def seconds(**preference: Any) -> float:
        j = job(task="preference", dataset=PAIRS, training=training, preference=preference)
        plan = plan_job(j, shape, Target())
        assert plan.time.seconds is not None
        return plan.time.seconds

    per_step, precomputed, simpo = (
        seconds(),
        seconds(precomputeReference=True),
        seconds(loss="simpo"),
    )
    # maxSteps: the precomputation is one forward pass over the tokens, like the steps'
    assert simpo < per_step and precomputed == pytest.approx(per_step)
    sft = plan_job(job(training=training, evaluation=SMALL_EVAL), shape, Target()).time.seconds
    assert sft is not None and simpo == pytest.approx(2 * sft, rel=0.05)


def test_a_reward_model_scores_with_one_output_and_no_vocabulary_logits() -> None:
    shape = ModelShape.from_config(TINY)
    j = job(task="reward-model", dataset=PAIRS, method=LORA_Q, training={"batchSize": 2})
    plan = plan_job(j, shape, Target())
    t = terms(plan)
    assert "logits" not in t and "referenceWeights" not in t
    adapter = 2 * (4 * 64 + 64 * 4)  # q_proj's A and B in 2 layers
    assert plan.parameters.trainable == adapter + 64  # the score head: 1 x hidden
    assert plan.parameters.total == shape.total_params + 64


def test_reinforcement_samples_generations_per_prompt_and_caches_their_keys_and_values() -> None:
    shape = ModelShape.from_config(TINY)
    rl = {"generations": 4, "maxNewTokens": 16, "rewards": [{"type": "exactMatch"}]}
    j = job(
        task="reinforcement",
        dataset=PROMPTS,
        method=LORA_Q,
        training={"batchSize": 2, "maxSeqLength": 64},
        evaluation=SMALL_EVAL,
        reinforcement=rl,
    )
    t = terms(plan_job(j, shape, Target()))
    # 2 prompts x 4 completions, each 64 prompt + 16 new tokens: a causal-lm batch of 8
    # sequences of 80 tokens keeps the same activations
    sft = job(method=LORA_Q, training={"batchSize": 8, "maxSeqLength": 80}, evaluation=SMALL_EVAL)
    assert t["activations"] == terms(plan_job(sft, shape, Target()))["activations"]
    # the loss reads the completions: 8 x 16 positions x vocab 100 x 12 bytes
    assert t["logits"] == int(8 * 16 * 100 * 12 * cal.CPU.logits)
    # sampling's cache, by hand: 8 rows x 80 positions x 2 layers x (keys, values) x
    # kv_dim 32 x 4 bytes, and the last position's fp32 logits
    cache = 8 * 80 * 2 * 2 * 32 * 4 + 8 * 100 * 4
    from finetune_api.plan.planner import _estimate, _generation_cache

    setting = _estimate(j, shape, Target(), None)[0]
    assert _generation_cache(setting, 8) == cache


def test_reinforcement_time_grows_with_generated_tokens_and_the_kl_reference() -> None:
    shape = ModelShape.from_config(SMOLLM2)

    def seconds(**rl: Any) -> float:
        j = job(
            task="reinforcement",
            dataset=PROMPTS,
            training={"maxSteps": 5, "batchSize": 2, "maxSeqLength": 64},
            reinforcement={"rewards": [{"type": "json"}], "generations": 4, **rl},
        )
        plan = plan_job(j, shape, Target())
        assert plan.time.seconds is not None
        return plan.time.seconds

    assert seconds(maxNewTokens=64) > seconds(maxNewTokens=16)
    assert seconds(beta=0.0) < seconds(beta=0.04)
    assert seconds(generations=8) > seconds(generations=4)


def test_freeze_on_a_reward_model_trains_the_score_head_not_the_vocabulary() -> None:
    shape = ModelShape.from_config(TINY)  # an untied head: backward stops at the top blocks
    freeze = {"type": "freeze", "freeze": {"trainableLayers": 1}}
    lm = trainable_for(shape, job(method=freeze))
    rm = trainable_for(shape, job(task="reward-model", dataset=PAIRS, method=freeze))
    # the same top block and final norm; a 1 x hidden score instead of vocab x hidden
    assert rm.params == lm.params - 100 * 64 + 64


def test_each_model_reward_is_planned_as_a_copy_of_the_base_with_its_score() -> None:
    shape = ModelShape.from_config(TINY)

    def rewards(*kinds: str) -> int:
        listed = [
            {"type": "model", "uri": f"s3://rm-bucket/rm{i}"} if kind == "model" else {"type": kind}
            for i, kind in enumerate(kinds)
        ]
        j = job(
            task="reinforcement",
            dataset=PROMPTS,
            evaluation=SMALL_EVAL,
            reinforcement={"rewards": listed},
        )
        return terms(plan_job(j, shape, Target())).get("rewardModels", 0)

    assert rewards("json", "exactMatch") == 0
    # fp32 on a CPU: the base's parameters and a 1 x hidden score, per reward model
    assert rewards("model") == (shape.total_params + 64) * 4
    assert rewards("model", "json", "model") == 2 * rewards("model")
