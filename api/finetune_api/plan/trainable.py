"""What each method trains, as tensor shapes, from the model's shape and the spec.

One function per method, registered by method name, so a new method in the contract's
registry comes with its planner entry (a test checks every registered method has one).
Counts follow what the trainer builds: peft's adapters for the PEFT methods (a test
compares them with peft's own count on a tiny Llama), the top blocks, head and final
norm for freeze, everything for full.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from finetune_api.config.job import JobSections
from finetune_api.config.methods.adalora import AdaLoraSpec
from finetune_api.config.methods.adapter import AdapterSpec
from finetune_api.config.methods.freeze import FreezeSpec
from finetune_api.config.methods.ia3 import IA3Spec
from finetune_api.config.methods.lora import LoraSpec
from finetune_api.config.methods.lora_fa import LoraFaSpec
from finetune_api.config.methods.p_tuning import PTuningSpec
from finetune_api.config.methods.prefix import PrefixSpec
from finetune_api.config.methods.progressive import ProgressiveSpec
from finetune_api.config.methods.prompt import PromptSpec
from finetune_api.config.methods.vera import VeraSpec
from finetune_api.plan.shape import Linear, ModelShape
from finetune_api.tasks import TASKS

Shape = tuple[int, ...]


@dataclass(frozen=True)
class Trainable:
    """What a method trains and what it changes in the frozen part."""

    tensors: tuple[Shape, ...]
    """Every trainable tensor's shape."""
    adapted: tuple[Linear, ...] = ()
    """Frozen linear layers that gain an adapter (their inputs are kept for backward)."""
    trained_linears: tuple[Linear, ...] = ()
    """Base linear layers whose own weights train (full, freeze)."""
    lowest_trained_block: int = 0
    """Backward runs from the head down to this block (freeze stops early)."""
    virtual_tokens: int = 0
    """Positions added to every sequence (prompt learning)."""
    base_copies: int = 0
    """Frozen parameters copied for training (peft's modules_to_save keep the original)."""
    adapter_rank: int = 0
    notes: tuple[str, ...] = field(default=())

    @property
    def params(self) -> int:
        total = 0
        for shape in self.tensors:
            n = 1
            for d in shape:
                n *= d
            total += n
        return total


def _select(
    shape: ModelShape, targets: str | Sequence[str] | None, default: Sequence[str]
) -> list[Linear]:
    """The block linears ``targets`` names, as peft matches them: all-linear; a list of
    names matching a module path's last components; a regular expression over the whole
    path."""
    if targets is None:
        targets = list(default)
    if targets == "all-linear":
        return list(shape.linears)
    if isinstance(targets, str):
        pattern = re.compile(targets)
        return [lin for lin in shape.linears if pattern.fullmatch(lin.path)]
    names = list(targets)
    return [
        lin
        for lin in shape.linears
        if any(lin.path == name or lin.path.endswith("." + name) for name in names)
    ]


def _saved_modules(shape: ModelShape, names: Sequence[str] | None, task: str) -> list[Shape]:
    """Modules peft trains in full beside the adapter (modules_to_save, and a
    classifier's head, which peft saves for sequence classification)."""
    found: list[Shape] = []
    for name in names or []:
        if name in ("lm_head", "embed_tokens", "wte", "word_embeddings"):
            found.append((shape.vocab, shape.hidden))
    return found


_SCORING = frozenset(
    name for name, info in TASKS.items() if info.auto_class == "AutoModelForSequenceClassification"
)
"""The tasks whose model ends in a scoring head, not the vocabulary."""
_ENCODING = frozenset(name for name, info in TASKS.items() if info.auto_class == "AutoModel")
"""The tasks whose model is a bare encoder (sentence-embedding): no head at all."""


def head_tensors(shape: ModelShape, task: str, num_labels: int) -> list[Shape]:
    """The classification head a sequence-classification model (or a reward model's
    one-score head) gains (trained by every method): Llama-style ``score`` has no bias,
    BERT's ``classifier`` has one."""
    if task == "reward-model":
        num_labels = 1  # one score
    elif task != "sequence-classification":
        return []
    if shape.family == "bert":
        return [(num_labels, shape.hidden), (num_labels,)]
    return [(num_labels, shape.hidden)]


def _lora(shape: ModelShape, job: JobSections, num_labels: int) -> Trainable:
    options = job.method.options()
    assert isinstance(options, LoraSpec)
    adapted = _select(shape, options.target_modules, ())
    tensors: list[Shape] = []
    for lin in adapted:
        tensors += [(options.r, lin.fan_in), (lin.fan_out, options.r)]
        if options.use_dora:
            tensors.append((lin.fan_out,))
    saved = _saved_modules(shape, options.modules_to_save, job.task)
    tensors += saved + head_tensors(shape, job.task, num_labels)
    return Trainable(
        tensors=tuple(tensors),
        adapted=tuple(adapted),
        base_copies=sum(a * b for a, b in saved),
        adapter_rank=options.r,
    )


def _adalora(shape: ModelShape, job: JobSections, num_labels: int) -> Trainable:
    options = job.method.options()
    assert isinstance(options, AdaLoraSpec)
    adapted = _select(shape, options.target_modules, ())
    tensors: list[Shape] = []
    for lin in adapted:
        tensors += [
            (options.init_r, lin.fan_in),
            (lin.fan_out, options.init_r),
            (options.init_r, 1),
        ]
    tensors += head_tensors(shape, job.task, num_labels)
    return Trainable(tensors=tuple(tensors), adapted=tuple(adapted), adapter_rank=options.init_r)


_IA3_DEFAULTS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    # (target modules, feed-forward modules): peft's defaults per family.
    "llama": (("k_proj", "v_proj", "down_proj"), ("down_proj",)),
    "phi3": (("qkv_proj", "down_proj"), ("down_proj",)),
    "gpt2": (("c_attn", "mlp.c_proj"), ("mlp.c_proj",)),
    "bert": (("key", "value", "output.dense"), ("output.dense",)),
}


def _ia3(shape: ModelShape, job: JobSections, num_labels: int) -> Trainable:
    options = job.method.options()
    assert isinstance(options, IA3Spec)
    targets, feedforward = _IA3_DEFAULTS[shape.family]
    adapted = _select(shape, options.target_modules, targets)
    ff = {lin.path for lin in _select(shape, options.feedforward_modules, feedforward)}
    tensors: list[Shape] = [
        (1, lin.fan_in) if lin.path in ff else (lin.fan_out, 1) for lin in adapted
    ]
    saved = _saved_modules(shape, options.modules_to_save, job.task)
    tensors += saved + head_tensors(shape, job.task, num_labels)
    return Trainable(
        tensors=tuple(tensors), adapted=tuple(adapted), base_copies=sum(a * b for a, b in saved)
    )


def _prefix(shape: ModelShape, job: JobSections, num_labels: int) -> Trainable:
    options = job.method.options()
    assert isinstance(options, PrefixSpec)
    tokens, width = options.num_virtual_tokens, shape.layers * 2 * shape.kv_dim
    if options.projection:
        enc = options.encoder_hidden_size or shape.hidden
        tensors: list[Shape] = [
            (tokens, shape.kv_dim),
            (enc, shape.kv_dim),
            (enc,),
            (width, enc),
            (width,),
        ]
    else:
        tensors = [(tokens, width)]
    tensors += head_tensors(shape, job.task, num_labels)
    return Trainable(tensors=tuple(tensors), virtual_tokens=tokens)


def _prompt(shape: ModelShape, job: JobSections, num_labels: int) -> Trainable:
    options = job.method.options()
    assert isinstance(options, PromptSpec)
    tensors: list[Shape] = [(options.num_virtual_tokens, shape.hidden)]
    tensors += head_tensors(shape, job.task, num_labels)
    return Trainable(tensors=tuple(tensors), virtual_tokens=options.num_virtual_tokens)


LSTM_LAYERS = 2
"""The trainer's default LSTM depth for p-tuning (peft's mlp encoder has two layers)."""


def _p_tuning(shape: ModelShape, job: JobSections, num_labels: int) -> Trainable:
    options = job.method.options()
    assert isinstance(options, PTuningSpec)
    h, enc, tokens = (
        shape.hidden,
        options.encoder_hidden_size or shape.hidden,
        options.num_virtual_tokens,
    )
    tensors: list[Shape] = [(tokens, h)]
    if options.encoder == "lstm":
        for layer in range(options.encoder_num_layers or LSTM_LAYERS):
            fan_in = h if layer == 0 else 2 * enc
            for _ in range(2):  # bidirectional
                tensors += [(4 * enc, fan_in), (4 * enc, enc), (4 * enc,), (4 * enc,)]
        tensors += [(2 * enc, 2 * enc), (2 * enc,), (h, 2 * enc), (h,)]
    else:
        tensors += [(enc, h), (enc,), (enc, enc), (enc,), (h, enc), (h,)]
    tensors += head_tensors(shape, job.task, num_labels)
    return Trainable(tensors=tuple(tensors), virtual_tokens=tokens)


def _linear_tensors(linears: Sequence[Linear]) -> list[Shape]:
    tensors: list[Shape] = []
    for lin in linears:
        tensors.append((lin.fan_out, lin.fan_in))
        if lin.bias:
            tensors.append((lin.fan_out,))
    return tensors


def _full(shape: ModelShape, job: JobSections, num_labels: int) -> Trainable:
    tensors: list[Shape] = [(shape.vocab, shape.hidden)]
    rest = shape.embedding_params - shape.vocab * shape.hidden
    tensors += _linear_tensors(shape.linears)
    tensors += [(rest + shape.layers * shape.block_other + shape.final_params,)]
    if shape.head_params:
        tensors.append((shape.vocab, shape.hidden))
    tensors += head_tensors(shape, job.task, num_labels)
    return Trainable(tensors=tuple(tensors), trained_linears=shape.linears)


def _freeze(shape: ModelShape, job: JobSections, num_labels: int) -> Trainable:
    options = job.method.options()
    assert isinstance(options, FreezeSpec)
    return _top_blocks(shape, job.task, num_labels, min(options.trainable_layers, shape.layers))


def _progressive(shape: ModelShape, job: JobSections, num_labels: int) -> Trainable:
    """The largest set the schedule reaches (the planner's peak): its end when the spec
    alone says when the run ends in the schedule's unit (maxSteps with everySteps;
    epochs with everyEpochs, which do not depend on the steps per epoch), else every
    block it may unfreeze (maxBlocks)."""
    options = job.method.options()
    assert isinstance(options, ProgressiveSpec)
    steps, epochs = job.training.max_steps, job.training.epochs
    top = options.final_blocks(shape.layers)
    if options.every_steps is not None and steps is not None:
        top = options.blocks_at(steps, shape.layers, steps_per_epoch=1)
    elif options.every_steps is None and steps is None:
        # step epochs x s of s per epoch, counted in epochs: the same for every s
        top = options.blocks_at(epochs, shape.layers, steps_per_epoch=1)
    return _top_blocks(shape, job.task, num_labels, top)


def _top_blocks(shape: ModelShape, task: str, num_labels: int, top: int) -> Trainable:
    """The top ``top`` blocks, the final norm and the head train (freeze, progressive)."""
    lowest = shape.layers - top
    linears = tuple(lin for i in range(lowest, shape.layers) for lin in shape.block_linears(i))
    tensors = _linear_tensors(linears)
    tensors.append((top * shape.block_other + shape.final_params,))
    if task in _SCORING:
        tensors += head_tensors(shape, task, num_labels)
    elif task in _ENCODING:
        # A bare encoder has no head; BERT's pooler is not loaded by the sentence vector.
        tensors[-1] = (
            top * shape.block_other + (0 if shape.family == "bert" else shape.final_params),
        )
        return Trainable(
            tensors=tuple(tensors), trained_linears=linears, lowest_trained_block=lowest
        )
    else:
        # The language-model head; tied to the input embeddings, it trains them too.
        tensors.append((shape.vocab, shape.hidden))
    if task not in _SCORING and shape.head_params == 0:
        # A head tied to the input embeddings trains them: backward runs down to the
        # embeddings, through every block, which all keep their activations.
        lowest = 0
    return Trainable(tensors=tuple(tensors), trained_linears=linears, lowest_trained_block=lowest)


def _adapter(shape: ModelShape, job: JobSections, num_labels: int) -> Trainable:
    """Bottleneck adapters: down (width x hidden, bias) and up (hidden x width, bias) at
    each site of every block above dropLayers; backward stops at the lowest adapted
    block (AdapterDrop's saving)."""
    options = job.method.options()
    assert isinstance(options, AdapterSpec)
    width, hidden = options.width(shape.hidden), shape.hidden
    lowest = min(options.drop_layers, shape.layers)
    sites = (shape.layers - lowest) * len(options.sites())
    tensors: list[Shape] = [(width, hidden), (width,), (hidden, width), (hidden,)] * sites
    tensors += head_tensors(shape, job.task, num_labels)
    return Trainable(tensors=tuple(tensors), lowest_trained_block=lowest)


def _vera(shape: ModelShape, job: JobSections, num_labels: int) -> Trainable:
    """Per adapted layer a scaling vector b (fan_out) and d (r); the shared random
    matrices are frozen buffers, not parameters."""
    options = job.method.options()
    assert isinstance(options, VeraSpec)
    adapted = _select(shape, options.target_modules, ())
    tensors: list[Shape] = []
    for lin in adapted:
        tensors += [(lin.fan_out,), (options.r,)]
    saved = _saved_modules(shape, options.modules_to_save, job.task)
    tensors += saved + head_tensors(shape, job.task, num_labels)
    return Trainable(
        tensors=tuple(tensors),
        adapted=tuple(adapted),
        base_copies=sum(a * b for a, b in saved),
        adapter_rank=options.r,
    )


def _lora_fa(shape: ModelShape, job: JobSections, num_labels: int) -> Trainable:
    """LoRA's B matrices only: A is frozen after its initialisation."""
    options = job.method.options()
    assert isinstance(options, LoraFaSpec)
    adapted = _select(shape, options.target_modules, ())
    tensors: list[Shape] = [(lin.fan_out, options.r) for lin in adapted]
    saved = _saved_modules(shape, options.modules_to_save, job.task)
    tensors += saved + head_tensors(shape, job.task, num_labels)
    return Trainable(
        tensors=tuple(tensors),
        adapted=tuple(adapted),
        base_copies=sum(a * b for a, b in saved),
        adapter_rank=options.r,
    )


TrainableFn = Callable[[ModelShape, JobSections, int], Trainable]

TRAINABLE: dict[str, TrainableFn] = {
    "lora": _lora,
    "qlora": _lora,
    "adalora": _adalora,
    "ia3": _ia3,
    "prefix": _prefix,
    "prompt": _prompt,
    "p-tuning": _p_tuning,
    "full": _full,
    "freeze": _freeze,
    "vera": _vera,
    "lora-fa": _lora_fa,
    "adapter": _adapter,
    "progressive": _progressive,
}
"""The planner's entry for every ``method.type``."""


def trainable_for(shape: ModelShape, job: JobSections, num_labels: int = 2) -> Trainable:
    fn = TRAINABLE.get(job.method.type)
    if fn is None:  # pragma: no cover - a test holds every method to an entry
        raise ValueError(f"the planner has no entry for method.type {job.method.type}")
    return fn(shape, job, num_labels)
