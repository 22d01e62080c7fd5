"""Progressive unfreezing: the schedule (the contract's pure function: which blocks train
at each step), its options' refusals, and the trainer's side of it on a 4-block tiny
Llama: the trainable set per step as the after-step hook moves it, the set a resumed
run starts from, the learning rate of every parameter group, and that the optimizer
leaves a frozen block's weights exactly alone (no weight decay without a gradient)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from pydantic import ValidationError

from conftest import build_tiny_model
from finetune_api.config import MethodSpec
from finetune_api.config.methods.progressive import ProgressiveSpec

BLOCKS = 4


def spec(**options: Any) -> ProgressiveSpec:
    return ProgressiveSpec.model_validate(options)


# --------------------------------------------------------------------------- the schedule


def test_every_steps_adds_one_block_per_interval_from_start_blocks() -> None:
    s = spec(everySteps=3)
    # steps 1-3: 0 blocks, 4-6: 1, 7-9: 2, 10-12: 3, 13-: all 4, never more
    assert [s.blocks_at(step, BLOCKS, 100) for step in range(1, 17)] == [
        0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4, 4,
    ]  # fmt: skip


def test_start_blocks_and_max_blocks_bound_the_schedule() -> None:
    s = spec(everySteps=2, startBlocks=1, maxBlocks=3)
    assert [s.blocks_at(step, BLOCKS, 100) for step in range(1, 10)] == [
        1, 1, 2, 2, 3, 3, 3, 3, 3,
    ]  # fmt: skip
    assert s.final_blocks(BLOCKS) == 3
    # a cap above the model's depth is the depth (the trainer refuses it before this)
    assert spec(everySteps=1, maxBlocks=9).final_blocks(BLOCKS) == BLOCKS


def test_every_epochs_counts_in_steps_per_epoch() -> None:
    s = spec(everyEpochs=2, startBlocks=1)
    # 5 steps an epoch: epochs 1-2 (steps 1-10) train 1 block, epochs 3-4 two, ...
    assert [s.blocks_at(step, BLOCKS, 5) for step in (1, 10, 11, 20, 21, 31)] == [1, 1, 2, 2, 3, 4]
    assert s.interval(5) == 10


def test_without_an_interval_it_is_ulmfit_one_block_per_epoch() -> None:
    s = spec()
    assert s.interval(7) == 7
    assert [s.blocks_at(step, BLOCKS, 7) for step in (1, 7, 8, 15)] == [0, 0, 1, 2]


def test_lr_decays_geometrically_from_the_top() -> None:
    s = spec(lrDecay=0.5)
    assert [s.block_lr_factor(k) for k in range(4)] == [1.0, 0.5, 0.25, 0.125]
    assert spec().block_lr_factor(29) == pytest.approx(0.9**29)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"everySteps": 2, "everyEpochs": 1}, "everySteps and everyEpochs are both set"),
        ({"startBlocks": 3, "maxBlocks": 2}, r"maxBlocks \(2\) is below startBlocks \(3\)"),
        ({"everySteps": 0}, "greater than or equal to 1"),
        ({"lrDecay": 0}, "greater than 0"),
        ({"lrDecay": 1.5}, "less than or equal to 1"),
    ],
)
def test_contradictory_options_are_refused_at_the_section(
    options: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValidationError, match=message) as info:
        MethodSpec.model_validate({"type": "progressive", "progressive": options})
    assert "progressive" in str(info.value)


# --------------------------------------------------------------------------- the trainer


@pytest.fixture(scope="module")
def four_blocks(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-4"), num_hidden_layers=BLOCKS)


def applied(model_dir: Path, options: dict[str, Any], **context: Any) -> Any:
    from transformers import AutoModelForCausalLM

    from finetune_trainer.methods import MethodContext, get_method
    from finetune_trainer.modeling import resolve_compute

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    ctx = MethodContext(resolve_compute("fp32"), 40, "causal-lm", model_dir, None, **context)
    return get_method("progressive").apply(model, spec(**options), ctx)


def trainable_blocks(model: Any) -> list[int]:
    """Layer indices (0 = the lowest) with trainable weights."""
    return sorted(
        {
            int(name.split(".")[2])
            for name, p in model.named_parameters()
            if p.requires_grad and name.startswith("model.layers.")
        }
    )


def other_trainable(model: Any) -> set[str]:
    return {
        n
        for n, p in model.named_parameters()
        if p.requires_grad and not n.startswith("model.layers.")
    }


def test_the_hook_moves_the_trainable_set_step_by_step(four_blocks: Path) -> None:
    from finetune_trainer.methods import get_method

    model = applied(four_blocks, {"everySteps": 2, "startBlocks": 1, "maxBlocks": 3})
    hook = get_method("progressive").after_step
    assert hook is not None
    seen = [trainable_blocks(model)]
    for step in range(1, 8):
        hook(model, step)  # after step `step`: the set of step + 1
        seen.append(trainable_blocks(model))
    # steps 1-2: the top block (3); 3-4: blocks 2-3; 5-: 1-3 (maxBlocks 3), never block 0
    assert seen == [[3], [3], [2, 3], [2, 3], [1, 2, 3], [1, 2, 3], [1, 2, 3], [1, 2, 3]]
    # the head and the final norm train all along; the input embeddings (untied) never
    assert other_trainable(model) == {"lm_head.weight", "model.norm.weight"}


def test_a_resumed_run_starts_from_the_set_of_the_step_after_its_checkpoint(
    four_blocks: Path,
) -> None:
    fresh = applied(four_blocks, {"everySteps": 2})
    assert trainable_blocks(fresh) == []
    resumed = applied(four_blocks, {"everySteps": 2}, resumed_step=4)  # next: step 5
    assert trainable_blocks(resumed) == [2, 3]
    by_epoch = applied(four_blocks, {"everyEpochs": 1}, steps_per_epoch=3, resumed_step=3)
    assert trainable_blocks(by_epoch) == [3]


def test_every_group_learns_at_its_discriminative_rate(four_blocks: Path) -> None:
    from finetune_trainer.methods import get_method

    options = {"everySteps": 1, "maxBlocks": 3, "lrDecay": 0.5, "headLrMultiplier": 10}
    model = applied(four_blocks, options)
    groups = get_method("progressive").param_groups
    assert groups is not None
    by_name = {g["name"]: g for g in groups(model, spec(**options), 1e-3)}
    assert set(by_name) == {"head", "norm", "block-0", "block-1", "block-2"}
    assert by_name["head"]["lr"] == pytest.approx(1e-2)
    assert by_name["norm"]["lr"] == pytest.approx(1e-3)
    for k, layer in ((0, 3), (1, 2), (2, 1)):
        group = by_name[f"block-{k}"]
        assert group["lr"] == pytest.approx(1e-3 * 0.5**k)
        names = {n for n, p in model.named_parameters() if any(p is q for q in group["params"])}
        assert names and all(n.startswith(f"model.layers.{layer}.") for n in names)
    # block 0 (lowest) is in no group: it never trains with maxBlocks 3
    grouped = {id(p) for g in by_name.values() for p in g["params"]}
    assert not any(id(p) in grouped for p in model.model.layers[0].parameters())


def test_a_frozen_block_in_the_optimizer_is_left_exactly_alone(four_blocks: Path) -> None:
    """AdamW with weight decay over every group: a block without a gradient keeps its
    weights bit for bit, and the block that has one moves."""
    from finetune_api.config import TrainingSpec
    from finetune_trainer.methods import get_method
    from finetune_trainer.optim import make_optimizer

    options = {"everySteps": 5, "startBlocks": 1}
    model = applied(four_blocks, options)
    groups = get_method("progressive").param_groups
    assert groups is not None
    optimizer = make_optimizer(
        groups(model, spec(**options), 1e-2), TrainingSpec(weightDecay=0.1, learningRate=1e-2)
    )
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    ids = torch.tensor([[5, 17, 42, 99, 7]])
    for _ in range(2):
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    moved = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert any(n.startswith("model.layers.3.") for n in moved)
    assert not any(n.startswith(("model.layers.0.", "model.layers.2.")) for n in moved)
    assert "model.embed_tokens.weight" not in moved


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"everySteps": 1, "startBlocks": 5}, r"startBlocks is 5 but the model has 4"),
        ({"everySteps": 1, "maxBlocks": 6}, r"maxBlocks is 6 but the model has 4"),
        ({"everyEpochs": 1}, "everyEpochs needs the run's steps per epoch"),
    ],
)
def test_what_the_model_cannot_take_is_refused_naming_the_option(
    four_blocks: Path, options: dict[str, Any], message: str
) -> None:
    from finetune_trainer.errors import ConfigError

    with pytest.raises(ConfigError, match=r"method\.progressive\.\w+.*") as info:
        applied(four_blocks, options)
    assert info.match(message)


def test_a_tied_head_is_the_embedding_matrix_and_trains_from_the_first_step(
    tmp_path: Path,
) -> None:
    tied = build_tiny_model(tmp_path / "tied", tie_word_embeddings=True)
    model = applied(tied, {"everySteps": 3})
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert other_trainable(model) == {"model.embed_tokens.weight", "model.norm.weight"}
    assert trainable_blocks(model) == []


# --------------------------------------------------------------------------- the planner

TINY_4: dict[str, Any] = {
    "model_type": "llama",
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": BLOCKS,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 100,
    "tie_word_embeddings": False,
}
# one block by hand: q, o 64x64; k, v 64x32 (2 kv heads of 16); gate, up, down 64x128;
# two norms of 64
BLOCK = 2 * 64 * 64 + 2 * 64 * 32 + 3 * 64 * 128 + 2 * 64
HEAD_AND_NORM = 100 * 64 + 64


@pytest.mark.parametrize(
    ("options", "training", "blocks"),
    [
        ({"everySteps": 3}, {"maxSteps": 7}, 2),  # steps 1-3: 0, 4-6: 1, 7: 2
        ({"everySteps": 3, "startBlocks": 1}, {"maxSteps": 30}, 4),  # all of them in time
        ({"everySteps": 1, "maxBlocks": 2}, {"maxSteps": 30}, 2),
        ({"everyEpochs": 2}, {"epochs": 5}, 2),  # epochs 1-2: 0, 3-4: 1, 5: 2
        ({}, {"epochs": 1}, 0),  # ULMFiT's per-epoch schedule in a 1-epoch run: the head
        # steps per epoch unknown to the planner: every block it may reach
        ({"everyEpochs": 1, "maxBlocks": 3}, {"maxSteps": 10}, 3),
    ],
)
def test_the_planner_counts_the_end_of_the_schedule(
    options: dict[str, Any], training: dict[str, Any], blocks: int
) -> None:
    from finetune_api.config.job import JobSections
    from finetune_api.plan.shape import ModelShape
    from finetune_api.plan.trainable import trainable_for

    job = JobSections.model_validate(
        {
            "model": {"uri": "file:///m"},
            "dataset": {"train": "file:///d.jsonl"},
            "method": {"type": "progressive", "progressive": options},
            "training": training,
        }
    )
    trainable = trainable_for(ModelShape.from_config(TINY_4), job)
    assert trainable.params == blocks * BLOCK + HEAD_AND_NORM
    assert trainable.lowest_trained_block == BLOCKS - blocks


def test_a_classifier_trains_its_fresh_score_head_from_the_first_step(tmp_path: Path) -> None:
    """ULMFiT's own setting: the new classifier trains first (at headLrMultiplier x),
    the blocks join later."""
    from transformers import AutoModelForSequenceClassification

    from finetune_trainer.methods import MethodContext, get_method
    from finetune_trainer.modeling import resolve_compute

    directory = build_tiny_model(
        tmp_path / "classifier",
        "LlamaForSequenceClassification",
        num_hidden_layers=BLOCKS,
        num_labels=3,
        pad_token_id=0,
    )
    base = AutoModelForSequenceClassification.from_pretrained(directory)
    ctx = MethodContext(resolve_compute("fp32"), 8, "sequence-classification", directory, None)
    options = spec(everySteps=2, headLrMultiplier=10)
    method = get_method("progressive")
    model = method.apply(base, options, ctx)
    assert other_trainable(model) == {"score.weight", "model.norm.weight"}
    assert trainable_blocks(model) == []
    assert method.param_groups is not None
    (head,) = [g for g in method.param_groups(model, options, 1e-3) if g["name"] == "head"]
    assert head["params"] == [model.score.weight] and head["lr"] == pytest.approx(1e-2)


def test_under_mixed_precision_every_block_that_will_train_is_fp32_from_the_start(
    four_blocks: Path,
) -> None:
    """A block joining later still gets fp32 master weights: they are made when the
    method is applied, for every block up to maxBlocks; the ones below keep bf16."""
    from transformers import AutoModelForCausalLM

    from finetune_trainer.methods import MethodContext, get_method
    from finetune_trainer.modeling import resolve_compute

    base = AutoModelForCausalLM.from_pretrained(four_blocks, dtype=torch.bfloat16)
    ctx = MethodContext(resolve_compute("bf16"), 8, "causal-lm", four_blocks, None)
    model = get_method("progressive").apply(base, spec(everySteps=2, maxBlocks=2), ctx)
    dtypes = {i: {p.dtype for p in model.model.layers[i].parameters()} for i in range(BLOCKS)}
    assert dtypes == {
        0: {torch.bfloat16},
        1: {torch.bfloat16},
        2: {torch.float32},
        3: {torch.float32},
    }
    assert model.lm_head.weight.dtype == model.model.norm.weight.dtype == torch.float32
    assert trainable_blocks(model) == []  # fp32 already, trainable from step 3


def test_the_hook_after_the_last_step_unfreezes_nothing_more(four_blocks: Path) -> None:
    """After the run's last step no block joins that would never train: the run's
    trainable count and its last checkpoint are what trained."""
    from transformers import AutoModelForCausalLM

    from finetune_trainer.methods import MethodContext, get_method
    from finetune_trainer.modeling import resolve_compute

    base = AutoModelForCausalLM.from_pretrained(four_blocks)
    ctx = MethodContext(resolve_compute("fp32"), 6, "causal-lm", four_blocks, None)
    method = get_method("progressive")
    model = method.apply(base, spec(everySteps=2), ctx)
    assert method.after_step is not None
    method.after_step(model, 5)
    assert trainable_blocks(model) == [2, 3]  # step 6: two blocks
    method.after_step(model, 6)  # the last step: step 7 never runs
    assert trainable_blocks(model) == [2, 3]
