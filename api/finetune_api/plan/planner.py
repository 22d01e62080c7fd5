"""The planner: memory per device, time and fit of a job, from its spec and its base
model's shape, before anything is allocated.

Pure arithmetic over the contract (no torch), so the operator image uses it to refuse a
job that cannot fit before a pod is created, and ``finetune plan`` prints it. Each
memory term is one function of the spec and the shape, named like the term it
computes; the constants measured on real runs are in :mod:`finetune_api.plan.devices`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from finetune_api.config.job import JobSections
from finetune_api.config.methods import METHODS, MethodSpec
from finetune_api.config.methods.qlora import QLoraSpec
from finetune_api.config.training import steps_per_epoch, total_steps
from finetune_api.plan import devices as cal
from finetune_api.plan.devices import Device, GiB
from finetune_api.plan.report import (
    MemoryTerm,
    Phase,
    Plan,
    PlanData,
    PlanMemory,
    PlanParameters,
    PlanTime,
    Suggestion,
)
from finetune_api.plan.shape import ModelShape
from finetune_api.plan.trainable import Trainable, trainable_for
from finetune_api.tasks import TASKS

# --------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class Target:
    """Where the job runs: the device, how many, and how they share the model."""

    device: Device | None = None
    """A GPU; None: CPU processes."""
    devices_per_node: int = 1
    nodes: int = 1
    strategy: str = "auto"
    memory_bytes: int | None = None
    """Memory of one device (a GPU's, or a CPU process's pod); default the GPU's own."""
    cpu_cores: float = 1.0
    """Cores one CPU process computes on."""

    @property
    def world(self) -> int:
        return self.devices_per_node * self.nodes

    @property
    def capacity(self) -> int | None:
        if self.memory_bytes is not None:
            return self.memory_bytes
        return self.device.memory_bytes if self.device is not None else None

    @property
    def name(self) -> str:
        return self.device.name if self.device is not None else "CPU"

    @property
    def fsdp(self) -> bool:
        return self.strategy == "fsdp" and self.world > 1


@dataclass(frozen=True)
class DataFacts:
    """The training data as tokenized (``finetune plan`` counts it where it can read it)."""

    rows: int
    """Training sequences per epoch (packed sequences when packing)."""
    tokens: int
    """Tokens in those sequences."""
    label_tokens: int
    """Tokens with a label (the loss's positions)."""
    longest: int
    """Tokens in the longest sequence."""
    padded_tokens: int | None = None
    """Tokens per epoch once micro-batches are padded to their longest row."""
    num_labels: int = 2
    """Classes (sequence-classification)."""


def resolve_precision(precision: str, target: Target) -> str:
    """What ``training.precision: auto`` becomes on the target (as the trainer decides)."""
    if precision != "auto":
        return precision
    if target.device is None:
        return "fp32"
    return "bf16" if target.device.bf16 else "fp16"


# --------------------------------------------------------------------------- memory


@dataclass(frozen=True)
class _Setting:
    """Everything the terms read, resolved once."""

    job: JobSections
    shape: ModelShape
    target: Target
    data: DataFacts | None
    trainable: Trainable
    precision: str

    @property
    def gpu(self) -> bool:
        return self.target.device is not None

    @property
    def calibration(self) -> cal.Calibration:
        return cal.GPU if self.gpu else cal.CPU

    @property
    def weight_bytes(self) -> int:
        """Bytes per frozen weight: fp32 on CPU and with fp16 (fp32 master weights kept
        for the GradScaler), 2 for bf16."""
        return 2 if self.precision == "bf16" else 4

    @property
    def act_bytes(self) -> int:
        return 4 if self.precision == "fp32" else 2

    @property
    def quantized(self) -> bool:
        return METHODS[self.job.method.type].quantized_base

    @property
    def trains_base(self) -> bool:
        return METHODS[self.job.method.type].artifact == "model"

    @property
    def scores(self) -> bool:
        """Whether the model ends in a scoring head (classification, reward model), not
        the vocabulary: no label logits."""
        return TASKS[self.job.task].auto_class == "AutoModelForSequenceClassification"

    @property
    def vocabulary(self) -> bool:
        """Whether the model ends in the vocabulary head (a language model): a scoring
        head or a bare encoder (task sentence-embedding) has no label logits."""
        return TASKS[self.job.task].auto_class == "AutoModelForCausalLM"

    @property
    def rows_per_example(self) -> int:
        """Sequences one example puts through the model: a preference pair's chosen and
        rejected answers (two rows of the micro-batch), a reinforcement prompt's
        ``generations`` completions, else one."""
        if self.job.task in ("preference", "reward-model"):
            return 2
        if self.job.task == "sentence-embedding":
            # anchor and positive; a triplet's negative too (with multipleNegatives a
            # negative column adds a third row the spec alone does not show)
            return 3 if self.job.contrastive_options.loss == "triplet" else 2
        rl = self.job.reinforcement
        if self.job.task == "reinforcement" and rl is not None:
            return rl.generations
        return 1

    @property
    def new_tokens(self) -> int:
        """Tokens a reinforcement step generates after each prompt (0: no generation)."""
        rl = self.job.reinforcement
        return rl.max_new_tokens if self.job.task == "reinforcement" and rl is not None else 0

    @property
    def reference_per_step(self) -> bool:
        """Whether every step runs a reference forward pass (no gradient): dpo and ipo
        unless precomputed, reinforcement with a KL penalty."""
        if self.job.task == "preference":
            options = self.job.preference_options
            return options.uses_reference and not options.precompute_reference
        rl = self.job.reinforcement
        return self.job.task == "reinforcement" and rl is not None and rl.beta > 0

    @property
    def reference_copy(self) -> bool:
        """Whether the reference is a frozen copy of the base beside the trained one:
        full and freeze train the base itself, so switching an adapter off cannot give
        it back. A precomputed reference is read before training and let go."""
        return self.trains_base and self.reference_per_step

    @property
    def seq_len(self) -> int:
        """Tokens of the longest sequence, with the virtual tokens prompt learning adds
        (and a reinforcement prompt's generated completion)."""
        t = self.job.training
        longest = t.max_seq_length if self.data is None or t.packing else self.data.longest
        added = 0 if self.job.method.type == "prefix" else self.trainable.virtual_tokens
        return min(longest, t.max_seq_length) + added + self.new_tokens

    @property
    def real_len(self) -> int:
        """Tokens of the longest sequence without virtual tokens (they have no labels)."""
        added = 0 if self.job.method.type == "prefix" else self.trainable.virtual_tokens
        return self.seq_len - added

    @property
    def label_fraction(self) -> float:
        if self.new_tokens:
            return self.new_tokens / self.real_len  # the loss reads the completions
        if self.data is None or self.data.tokens == 0:
            return 1.0
        return min(1.0, self.data.label_tokens / self.data.tokens)

    @property
    def grad_layers(self) -> int:
        """Blocks that keep activations for backward."""
        return self.shape.layers - self.trainable.lowest_trained_block


def _frozen_weights(s: _Setting) -> int:
    shape = s.shape
    frozen = shape.total_params - (s.trainable.params if s.trains_base else 0)
    if s.scores and s.trains_base:
        frozen = max(0, frozen + _head_params(s))
    if not s.quantized or not s.gpu:
        # On a CPU the full-precision weights a 4-bit model is quantized from stay in
        # the process's memory (measured: QLoRA's peak RSS is LoRA's).
        return frozen * s.weight_bytes
    options = s.job.method.options()
    assert isinstance(options, QLoraSpec)
    linear = sum(lin.fan_in * lin.fan_out for lin in shape.linears)
    # NF4/FP4: 4 bits a weight, an fp32 absmax per 64 (double quant: 8-bit absmax plus an
    # fp32 constant per 256 of them).
    per_weight = 0.5 + ((1 + 4 / 256) / 64 if options.double_quant else 4 / 64)
    compute = 4 if s.precision in ("fp32", "fp16") else 2
    return int(linear * per_weight) + (frozen - linear) * compute


def _head_params(s: _Setting) -> int:
    if s.job.task == "reward-model":
        return s.shape.hidden  # one score
    labels = s.data.num_labels if s.data is not None else 2
    return labels * s.shape.hidden


def _trainable_weights(s: _Setting) -> int:
    return s.trainable.params * 4


def _gradients(s: _Setting) -> int:
    return s.trainable.params * 4


def _optimizer_states(s: _Setting) -> int:
    t = s.job.training
    if t.optimizer == "adamw":
        return s.trainable.params * 8
    if t.optimizer == "adamw-8bit":
        return s.trainable.params * 2
    if t.optimizer == "sgd":
        return s.trainable.params * 4 if t.momentum > 0 else 0
    # adafactor: factored second moments (a row and a column vector) for matrices.
    total = 0
    for shape in s.trainable.tensors:
        total += (shape[0] + shape[1]) * 4 if len(shape) >= 2 else shape[0] * 4
    return total


def _block_bytes(s: _Setting) -> tuple[float, float]:
    """Per token and block, the bytes kept for backward: (the block's own tensors at
    the activation dtype, the adapters' fp32 inputs, dropout masks and low-rank outputs)."""
    sh = s.shape
    a, i, q, kv = sh.hidden, sh.intermediate, sh.heads * sh.head_dim, sh.kv_dim
    mlp = 3 * i if sh.family in ("llama", "phi3") else 2 * i
    # Two norms (input and output), rotary q/k, attention inputs, output and
    # log-sum-exp, the MLP's projections and activation.
    elements = 4 * a + 2 * q + 3 * kv + mlp + sh.heads
    if s.trainable.trained_linears:
        elements += q + i  # inputs of o_proj and down_proj, kept for their weight grads
    adapter = 0.0
    per_block = len(s.trainable.adapted) / max(1, sh.layers)
    if per_block:
        dropout = float(getattr(s.job.method.options(), "dropout", 0.0))
        fan_in = sum(lin.fan_in for lin in s.trainable.adapted) / sh.layers
        adapter = per_block * s.trainable.adapter_rank * 4
        # the (dropped-out) input in fp32, and dropout's mask
        adapter += fan_in * (5 if dropout > 0 else 4)
    return elements * s.act_bytes, adapter


def _activations(s: _Setting) -> int:
    t = s.job.training
    c = s.calibration
    tokens = t.batch_size * s.rows_per_example * s.seq_len
    block, adapter = _block_bytes(s)
    full_block = block * c.block + adapter * c.adapter
    kept = s.grad_layers * full_block
    if t.gradient_checkpointing:
        # Block inputs, one block recomputed at a time, and what the allocator keeps.
        checkpointed = s.grad_layers * s.shape.hidden * s.act_bytes + full_block
        kept = checkpointed + c.checkpoint_retained * kept
    kept += 4 * s.shape.hidden * s.act_bytes  # embeddings out and the final norm
    return int(tokens * kept)


def _attention_scores(s: _Setting) -> int:
    """Attention probabilities materialised per block: on a CPU, and for a packed
    block-diagonal mask, torch's math attention keeps batch x heads x L x L of them."""
    t = s.job.training
    if s.gpu or not t.packing:
        return 0
    layers = 1 if t.gradient_checkpointing else s.grad_layers
    return t.batch_size * s.shape.heads * s.seq_len**2 * s.act_bytes * 2 * layers


def _packing_mask(s: _Setting) -> int:
    t = s.job.training
    return t.batch_size * s.seq_len**2 * 4 if t.packing else 0


def _logits(s: _Setting) -> int:
    """Logits at the label positions only (the trainer selects them before the output
    projection): the head's output, an fp32 copy, log-softmax and its gradient."""
    if not s.vocabulary:
        return 0
    t = s.job.training
    labels = t.batch_size * s.rows_per_example * s.real_len * s.label_fraction
    per_logit = s.act_bytes + (0 if s.act_bytes == 4 else 4) + 8
    return int(labels * s.shape.vocab * per_logit * s.calibration.logits)


def _reference_weights(s: _Setting) -> int:
    """The reference policy's frozen copy of the base (full and freeze only: a weight
    adapter's reference is the same weights with the adapter switched off)."""
    if not s.reference_copy:
        return 0
    return s.shape.total_params * s.weight_bytes


def _reward_models(s: _Setting) -> int:
    """The reward models of reinforcement.rewards (type model), each loaded once beside
    the policy. Their shape is not read: each is taken as the base's size, what a task
    reward-model job on the same base publishes (its adapter applied to a copy)."""
    rl = s.job.reinforcement
    if s.job.task != "reinforcement" or rl is None:
        return 0
    models = sum(1 for reward in rl.rewards if reward.type == "model")
    return models * (s.shape.total_params + s.shape.hidden) * s.weight_bytes


def _generation_cache(s: _Setting, rows: int) -> int:
    """The key/value cache of sampling ``rows`` completions: every block's keys and
    values for the prompt and the generated tokens, and the last position's logits."""
    if not s.new_tokens:
        return 0
    sh = s.shape
    cache = rows * s.seq_len * sh.layers * 2 * sh.kv_dim * s.act_bytes
    return cache + rows * sh.vocab * 4


def _ddp_buckets(s: _Setting) -> int:
    return s.trainable.params * 4 if s.target.world > 1 and not s.target.fsdp else 0


def _runtime(s: _Setting) -> int:
    return s.calibration.runtime_bytes


def _optimizer_step(s: _Setting) -> int:
    """bitsandbytes' 8-bit optimizer on a CPU dequantizes each tensor's two states to
    fp32 while it steps it: three fp32 copies of the largest trainable tensor."""
    if s.gpu or s.job.training.optimizer != "adamw-8bit":
        return 0
    largest = max((math.prod(shape) for shape in s.trainable.tensors), default=0)
    return 12 * largest


def _loading(s: _Setting) -> int:
    """Loading on a CPU: the weights file's pages (memory-mapped) beside the weights
    built from them."""
    if s.gpu:
        return 0
    return s.shape.total_params * (s.shape.file_dtype_bytes + s.weight_bytes)


def _eval_peak(s: _Setting) -> int:
    """The evaluation's own working memory: its batch's label logits and one block's
    transient activations (nothing is kept for backward)."""
    e = s.job.evaluation
    if s.new_tokens:  # greedy completions of the held-out prompts
        return _generation_cache(s, e.batch_size)
    rows = e.batch_size * s.rows_per_example
    tokens = rows * s.seq_len
    block = tokens * (2 * s.shape.hidden + 2 * s.shape.intermediate) * s.act_bytes
    if not s.vocabulary:
        return int(block)
    per_logit = s.act_bytes + (0 if s.act_bytes == 4 else 4) + 4
    labels = rows * s.real_len * s.label_fraction
    return int(block + labels * s.shape.vocab * per_logit)


TermFn = Callable[[_Setting], int]

_STATIC: list[tuple[str, TermFn, str]] = [
    ("weights", _frozen_weights, "frozen base weights"),
    ("referenceWeights", _reference_weights, "the reference policy's frozen copy of the base"),
    ("rewardModels", _reward_models, "reward models, each taken as the base's size"),
    ("trainableWeights", _trainable_weights, "trainable weights, fp32"),
    ("gradients", _gradients, "fp32 gradients of the trainable weights"),
    ("optimizerStates", _optimizer_states, "the optimizer's state"),
]
_TRAINING: list[tuple[str, TermFn, str]] = [
    ("activations", _activations, "kept for backward, at the peak micro-batch"),
    ("attentionScores", _attention_scores, "materialised attention probabilities"),
    ("packingMask", _packing_mask, "the block-diagonal float mask"),
    ("logits", _logits, "label positions x vocabulary"),
    ("ddpBuckets", _ddp_buckets, "DDP's gradient buckets"),
    ("optimizerStep", _optimizer_step, "8-bit states dequantized while stepping"),
]
_LOADING = "the weights file mapped beside the weights built from it"
_SHARDED = frozenset({"weights", "trainableWeights", "gradients", "optimizerStates"})


def _memory(s: _Setting) -> tuple[int, Phase, list[MemoryTerm]]:
    world = s.target.world if s.target.fsdp else 1
    static = [
        MemoryTerm(name=name, bytes=fn(s) // (world if name in _SHARDED else 1), detail=detail)
        for name, fn, detail in _STATIC
    ]
    if s.target.fsdp:
        block = s.shape.block_params * s.weight_bytes * 2
        static.append(MemoryTerm(name="fsdpGathered", bytes=block, detail="two gathered blocks"))
    training = [MemoryTerm(name=n, bytes=fn(s), detail=d) for n, fn, d in _TRAINING]
    training = [term for term in training if term.bytes > 0]
    evaluation = [MemoryTerm(name="evaluation", bytes=_eval_peak(s), detail="evaluation batch")]
    no_grads = [term for term in static if term.name != "gradients"]
    candidates: list[tuple[Phase, list[MemoryTerm]]] = [
        ("training", static + training),
        ("evaluation", no_grads + evaluation),
        ("loading", [MemoryTerm(name="loading", bytes=_loading(s), detail=_LOADING)]),
    ]
    if s.new_tokens:
        # Sampling runs before the step's forward pass, with the gradients of the last
        # step still held (set to None only by the next zero_grad).
        rows = s.job.training.batch_size * s.rows_per_example
        cache = MemoryTerm(
            name="generationCache",
            bytes=_generation_cache(s, rows),
            detail=f"keys and values of {rows} sampled completions",
        )
        candidates.append(("generation", [*static, cache]))
    phase, terms = max(candidates, key=lambda c: sum(t.bytes for t in c[1]))
    terms = [*terms, MemoryTerm(name="runtime", bytes=_runtime(s), detail=_runtime_detail(s))]
    if s.gpu:
        allocated = sum(t.bytes for t in terms)
        terms.append(
            MemoryTerm(
                name="allocatorOverhead",
                bytes=int(allocated * s.calibration.allocator_overhead),
                detail="caching allocator fragmentation",
            )
        )
    terms = [t for t in terms if t.bytes > 0]
    return sum(t.bytes for t in terms), phase, terms


def _runtime_detail(s: _Setting) -> str:
    return "CUDA context and workspaces" if s.gpu else "Python, torch and the libraries"


# --------------------------------------------------------------------------- time


def _flops_per_token(s: _Setting) -> tuple[float, float]:
    """(FLOPs per trained token in the blocks, FLOPs per label token in the head)."""
    sh = s.shape
    linear = sum(lin.fan_in * lin.fan_out for lin in sh.linears)
    context = s.seq_len / 2 if sh.decoder else s.seq_len
    attention = 4 * sh.heads * sh.head_dim * context * sh.layers
    forward = 2 * linear + attention
    backward_share = s.grad_layers / sh.layers
    backward = backward_share * forward  # gradients of the inputs
    backward += 2 * sum(lin.fan_in * lin.fan_out for lin in s.trainable.trained_linears)
    adapters = 6 * s.trainable.params if not s.trains_base else 0
    recompute = backward_share * forward if s.job.training.gradient_checkpointing else 0
    head_trains = s.trains_base and not s.scores
    head = 2 * sh.hidden * sh.vocab * (3 if head_trains else 2) if s.vocabulary else 0
    return forward + backward + adapters + recompute, head


def _forward_flops(s: _Setting) -> tuple[float, float]:
    """(FLOPs per token of a forward pass through the blocks, per position of the head's
    forward): a reference pass or a sampling step, no gradient."""
    sh = s.shape
    linear = sum(lin.fan_in * lin.fan_out for lin in sh.linears)
    context = s.seq_len / 2 if sh.decoder else s.seq_len
    return 2 * linear + 4 * sh.heads * sh.head_dim * context * sh.layers, 2 * sh.hidden * sh.vocab


def _mean_prompt(s: _Setting) -> float:
    """Tokens of a reinforcement prompt on average (the longest without the data)."""
    if s.data is not None and s.data.rows:
        return max(1.0, s.data.tokens / s.data.rows)
    return float(max(1, s.real_len - s.new_tokens))


def _alignment_seconds(
    s: _Setting, tokens: float, labels: float, micro_batches: int, rate: float
) -> float:
    """What issue 14's tasks add to a step's compute: the reference forward pass (each
    step, or once over the data when precomputed) and reinforcement's sampling, one
    forward pass per generated token, each paying the per-block overhead again."""
    forward, head = _forward_flops(s)
    seconds = 0.0
    if s.reference_per_step:
        seconds += (tokens * forward + labels * head) / rate
    elif s.job.task == "preference" and s.job.preference_options.precompute_reference:
        epochs = max(1, s.job.training.epochs) if s.job.training.max_steps is None else 1
        seconds += (tokens * forward + labels * head) / rate / epochs
    if s.new_tokens:
        generated = labels  # every completion token is sampled once, then trained on
        prompts = tokens - labels
        seconds += (prompts * forward + generated * (forward + head)) / rate
        seconds += micro_batches * s.new_tokens * s.shape.layers * s.calibration.seconds_per_block
    return seconds


def _time(s: _Setting, steps: int | None, tokens: int | None) -> PlanTime:
    block, head = _flops_per_token(s)
    t = s.job.training
    c = s.calibration
    if s.target.device is not None:
        device = s.target.device
        peak = device.peak_flops_32bit if s.precision == "fp32" else device.peak_flops_16bit
        rate = peak * c.flops
    else:
        rate = c.flops * s.target.cpu_cores
    seconds = per_step = None
    if steps is not None and tokens is not None:
        per_rank_tokens = tokens / s.target.world
        padded = per_rank_tokens
        if s.data is not None and s.data.padded_tokens and s.data.tokens:
            padded *= s.data.padded_tokens / s.data.tokens
        labels = per_rank_tokens * s.rows_per_example * s.label_fraction
        if s.new_tokens:
            # tokens counts the prompts; each is sampled G times and trained on with
            # each completion (taken as maxNewTokens long: an upper bound)
            prompts = per_rank_tokens / _mean_prompt(s)
            padded *= (_mean_prompt(s) + s.new_tokens) / _mean_prompt(s)
            labels = prompts * s.rows_per_example * s.new_tokens
        padded *= s.rows_per_example
        compute = (padded * block + labels * head) / rate
        micro_batches = steps * t.gradient_accumulation
        fixed = s.shape.layers * c.seconds_per_block
        compute += _alignment_seconds(s, padded, labels, micro_batches, rate)
        adapter_inputs = sum(lin.fan_in for lin in s.trainable.adapted)
        compute += padded * adapter_inputs * c.seconds_per_adapter_input
        per_parameter = (
            c.seconds_per_parameter_step_8bit
            if t.optimizer == "adamw-8bit"
            else c.seconds_per_parameter_step
        )
        optimizer = steps * s.trainable.params * per_parameter
        seconds = compute + micro_batches * fixed + optimizer
        per_step = seconds / steps if steps else None
    return PlanTime(
        device=s.target.name,
        devices=s.target.world,
        cpu_cores=None if s.gpu else s.target.cpu_cores,
        flops_per_token=block,
        seconds=seconds,
        seconds_per_step=per_step,
    )


def _data(s: _Setting) -> tuple[PlanData, int | None, int | None]:
    t = s.job.training
    world = s.target.world
    if s.data is None:
        steps = t.max_steps
        per_step = t.batch_size * t.gradient_accumulation * world * t.max_seq_length
        tokens = steps * per_step if steps is not None else None
        return (
            PlanData(source="spec", longest_sequence=t.max_seq_length, steps=steps, tokens=tokens),
            steps,
            tokens,
        )
    d = s.data
    steps = total_steps(d.rows, t, world)
    per_epoch = steps_per_epoch(d.rows, t, world)
    tokens = d.tokens * t.epochs if t.max_steps is None else int(d.tokens * steps / per_epoch)
    return (
        PlanData(
            source="dataset",
            rows=d.rows,
            tokens_per_epoch=d.tokens,
            longest_sequence=d.longest,
            steps=steps,
            tokens=tokens,
        ),
        steps,
        tokens,
    )


# --------------------------------------------------------------------------- the plan


def format_bytes(n: int | float) -> str:
    """``12.3 GiB``: the unit people read memory in."""
    for unit, size in (("GiB", GiB), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} B"


def _estimate(
    job: JobSections, shape: ModelShape, target: Target, data: DataFacts | None
) -> tuple[_Setting, int, Phase, list[MemoryTerm]]:
    trainable = trainable_for(shape, job, data.num_labels if data is not None else 2)
    setting = _Setting(
        job=job,
        shape=shape,
        target=target,
        data=data,
        trainable=trainable,
        precision=resolve_precision(job.training.precision, target),
    )
    peak, phase, terms = _memory(setting)
    return setting, peak, phase, terms


def plan_job(
    job: JobSections,
    shape: ModelShape,
    target: Target,
    data: DataFacts | None = None,
    *,
    suggest: bool = True,
) -> Plan:
    """The plan of ``job`` on ``target``: memory per device itemised, parameters, data,
    time and, when it does not fit, the changes that would make it fit."""
    s, peak, phase, terms = _estimate(job, shape, target, data)
    plan_data, steps, tokens = _data(s)
    capacity = target.capacity
    fits = None if capacity is None else peak <= capacity
    largest = max(
        (t for t in terms if t.name not in ("runtime", "allocatorOverhead")),
        key=lambda t: t.bytes,
    )
    suggestions = _suggestions(job, shape, target, data) if suggest and fits is False else []
    total = shape.total_params + (_head_params(s) if s.scores else 0)
    return Plan(
        model=f"{shape.model_type}, {shape.total_params / 1e6:,.1f}M parameters",
        approximate=shape.approximate,
        method=job.method.type,
        precision=s.precision,
        parameters=PlanParameters(
            total=total,
            trainable=s.trainable.params,
            trainable_percent=round(100 * s.trainable.params / max(1, total), 4),
        ),
        memory=PlanMemory(
            per_device_bytes=peak,
            capacity_bytes=capacity,
            phase=phase,
            terms=terms,
            largest=largest.name,
        ),
        data=plan_data,
        time=_time(s, steps, tokens),
        fits=fits,
        verdict=_verdict(peak, capacity, target, largest, suggestions, from_spec=data is None),
        suggestions=suggestions,
    )


def _verdict(
    peak: int,
    capacity: int | None,
    target: Target,
    largest: MemoryTerm,
    suggestions: list[Suggestion],
    *,
    from_spec: bool,
) -> str:
    where = f"per {target.name}" if target.device is not None else "per process"
    head = f"largest term: {largest.name} {format_bytes(largest.bytes)}"
    if from_spec:
        # Without the data every sequence is taken as maxSeqLength long: an upper bound.
        head += "; sequences taken as maxSeqLength long, the data unread"
    if capacity is None:
        return (
            f"needs {format_bytes(peak)} {where} ({head}); memory unknown: set "
            "resources.gpuType or resources.gpuMemory (CPU: resources.memory) to check the fit"
        )
    if peak <= capacity:
        return f"fits: {format_bytes(peak)} of {format_bytes(capacity)} {where} ({head})"
    text = f"does not fit: needs {format_bytes(peak)} of {format_bytes(capacity)} {where} ({head})"
    fitting = [x for x in suggestions if x.fits]
    if fitting:
        best = fitting[0]
        text += f"; {best.change} needs {format_bytes(best.per_device_bytes)}"
    else:
        text += "; no single change found makes it fit: use a GPU with more memory"
    return text


# --------------------------------------------------------------------------- suggestions


@dataclass(frozen=True)
class _Change:
    kind: str
    change: str
    set: dict[str, Any]
    same_result: bool
    job: JobSections
    target: Target


def _with_training(job: JobSections, **update: Any) -> JobSections:
    return job.model_copy(update={"training": job.training.model_copy(update=update)})


def _changes(job: JobSections, target: Target, data: DataFacts | None) -> list[_Change]:
    t = job.training
    out: list[_Change] = []
    if not t.gradient_checkpointing:
        out.append(
            _Change(
                "checkpointing",
                "turn on gradient checkpointing",
                {"training.gradientCheckpointing": True},
                True,
                _with_training(job, gradient_checkpointing=True),
                target,
            )
        )
    batch, accumulation = t.batch_size, t.gradient_accumulation
    while batch > 1:
        batch, accumulation = (batch + 1) // 2, accumulation * 2
        out.append(
            _Change(
                "batch",
                f"micro-batch {batch} with gradient accumulation {accumulation}",
                {"training.batchSize": batch, "training.gradientAccumulation": accumulation},
                True,
                _with_training(job, batch_size=batch, gradient_accumulation=accumulation),
                target,
            )
        )
    if job.evaluation.batch_size > 1:
        size = (job.evaluation.batch_size + 1) // 2
        out.append(
            _Change(
                "evaluation",
                f"evaluation batch {size}",
                {"evaluation.batchSize": size},
                True,
                job.model_copy(
                    update={"evaluation": job.evaluation.model_copy(update={"batch_size": size})}
                ),
                target,
            )
        )
    quantized = METHODS[job.method.type].quantized_base
    if target.device is not None and not quantized:  # FSDP cannot shard 4-bit weights
        gpus = target.devices_per_node
        while gpus < 8:
            gpus *= 2
            new_target = replace(target, devices_per_node=gpus, strategy="fsdp")
            out.append(
                _Change(
                    "fsdp",
                    f"{gpus} GPUs per node with FSDP",
                    {"resources.gpus": gpus, "resources.strategy": "fsdp"},
                    False,
                    job,
                    new_target,
                )
            )
    method = job.method.type
    if method in ("lora", "full") and not target.fsdp:
        lora = job.method.options().model_dump(exclude_unset=True) if method == "lora" else {}
        qlora = job.model_copy(
            update={"method": MethodSpec.model_validate({"type": "qlora", "lora": lora})}
        )
        out.append(
            _Change(
                "qlora",
                "method qlora (a 4-bit base)",
                {"method.type": "qlora"},
                False,
                qlora,
                target,
            )
        )
    if t.optimizer == "adamw":
        out.append(
            _Change(
                "optimizer",
                "optimizer adamw-8bit",
                {"training.optimizer": "adamw-8bit"},
                False,
                _with_training(job, optimizer="adamw-8bit"),
                target,
            )
        )
    length = t.max_seq_length
    longest = data.longest if data is not None else length
    if longest >= length and length >= 64:
        out.append(
            _Change(
                "length",
                f"maxSeqLength {length // 2}",
                {"training.maxSeqLength": length // 2},
                False,
                _with_training(job, max_seq_length=length // 2),
                target,
            )
        )
    return out


def _suggestions(
    job: JobSections, shape: ModelShape, target: Target, data: DataFacts | None
) -> list[Suggestion]:
    """Each change alone with its new peak; when none fits alone, the changes that keep
    the result (then the others) applied together, in order, until the job fits."""
    capacity = target.capacity
    _, now, _, _ = _estimate(job, shape, target, data)
    singles: list[Suggestion] = []
    for c in _changes(job, target, data):
        _, peak, _, _ = _estimate(c.job, shape, c.target, data)
        if peak > 0.95 * now:  # saves too little to be worth a change
            continue
        singles.append(
            Suggestion(
                change=c.change,
                set=c.set,
                per_device_bytes=peak,
                fits=None if capacity is None else peak <= capacity,
                same_result=c.same_result,
            )
        )
    # Fitting ones first, the result-preserving first among them, then by the peak.
    singles.sort(key=lambda x: (not x.fits, not x.same_result, x.per_device_bytes))
    # Keep one micro-batch suggestion: the largest batch that fits, else the smallest.
    seen_batch = False
    kept: list[Suggestion] = []
    for x in singles:
        if "training.batchSize" in x.set and "training.gradientCheckpointing" not in x.set:
            if seen_batch:
                continue
            seen_batch = True
        kept.append(x)
    singles = kept
    if any(x.fits for x in singles):
        return singles[:6]
    combined = _combined(job, shape, target, data)
    return ([combined] if combined is not None else []) + singles[:5]


def _combined(
    job: JobSections, shape: ModelShape, target: Target, data: DataFacts | None
) -> Suggestion | None:
    """Changes applied one after another until the job fits: at each turn the one that
    lowers the peak most, except that one keeping the result wins when it saves at
    least a tenth; a change that saves nothing is never taken."""
    capacity = target.capacity
    if capacity is None:
        return None
    _, peak, _, _ = _estimate(job, shape, target, data)
    applied: dict[str, str] = {}
    fields: dict[str, Any] = {}
    same = True
    for _ in range(24):
        best: tuple[_Change, int] | None = None
        best_same: tuple[_Change, int] | None = None
        for c in {c.kind: c for c in reversed(_changes(job, target, data))}.values():
            _, new_peak, _, _ = _estimate(c.job, shape, c.target, data)
            if new_peak >= peak:
                continue
            if best is None or new_peak < best[1]:
                best = (c, new_peak)
            if (
                c.same_result
                and new_peak <= 0.9 * peak
                and (best_same is None or new_peak < best_same[1])
            ):
                best_same = (c, new_peak)
        chosen = best_same or best
        if chosen is None:
            return None
        c, peak = chosen
        job, target = c.job, c.target
        applied[c.kind] = c.change
        fields.update(c.set)
        same = same and c.same_result
        if peak <= capacity:
            return Suggestion(
                change=" and ".join(applied.values()),
                set=fields,
                per_device_bytes=peak,
                fits=True,
                same_result=same,
            )
    return None
