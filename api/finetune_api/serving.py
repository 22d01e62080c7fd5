"""Will vLLM load this adapter? The checks vLLM makes when it loads a LoRA adapter,
made before a serving pod is started (pure: dictionaries in, sentences out).

vLLM refuses an adapter at load time, after the server has pulled the base model and
allocated the GPU, with one ``ValueError`` in its log. These are the same checks, taken
from vLLM's own loader (``vllm/lora/peft_helper.py``: ``PEFTHelper._validate_features``
and ``validate_legal``) and engine arguments (``vllm/config/lora.py``:
``MaxLoRARanks``), so that a test, a pipeline or a reader of the docs learns it from the
job's spec or the published ``adapter_config.json`` instead:

- only LoRA adapters load (``peft_type`` LORA): AdaLoRA, IA3, prefix, prompt and
  p-tuning have no vLLM loader, and a full or frozen fine-tune is a whole model;
- ``--max-lora-rank`` is one of vLLM's fixed choices and at least the adapter's ``r``;
- no DoRA (``use_dora``), no ``modules_to_save``, no adapter bias;
- adapters only on layers vLLM wraps with LoRA in Llama-style models: the decoder's
  linear layers (``q_proj`` ... ``down_proj``, or their fused ``qkv_proj`` and
  ``gate_up_proj``) and the ``embed_tokens``/``lm_head`` its Llama-style models declare
  as embedding modules; anything else (a GPT-2 ``c_attn``, a vision tower) is refused.

Each problem names the setting to change and the fix; a merged model (``output.merge``
or ``finetune export``) sidesteps every one of them, since vLLM then serves plain weights.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any, Final

from finetune_api.config.job import JobSections
from finetune_api.config.methods import METHODS
from finetune_api.config.methods.lora import LoraSpec
from finetune_api.plan.shape import ModelShape
from finetune_api.plan.trainable import trainable_for

VLLM_MAX_LORA_RANKS: Final = (1, 8, 16, 32, 64, 128, 256, 320, 512)
"""The values vLLM's ``--max-lora-rank`` accepts (``MaxLoRARanks`` in vllm/config/lora.py)."""

VLLM_LORA_MODULES: Final = frozenset(
    {
        *("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
        *("qkv_proj", "gate_up_proj", "embed_tokens", "lm_head"),
    }
)
"""The layers vLLM applies LoRA to in Llama-style decoders (Llama, Mistral, Qwen2/3,
SmolLM, Phi-3...): the linear layers (its packed ``qkv_proj`` and ``gate_up_proj`` take
the adapters of their parts, and are Phi-3's own names) and the embedding modules
``embed_tokens`` and ``lm_head`` these models declare."""

_LORA_METHODS: Final = ("lora", "qlora", "lora-fa")
"""Methods whose published adapter is a plain peft LoRA adapter."""

_PEFT_TYPES: Final = {
    "adalora": "ADALORA",
    "ia3": "IA3",
    "vera": "VERA",
    "prefix": "PREFIX_TUNING",
    "prompt": "PROMPT_TUNING",
    "p-tuning": "P_TUNING",
    "adapter": "BOTTLENECK",  # not peft's: finetune_trainer.methods.bottleneck's format
}
"""peft's ``peft_type`` for the other adapter methods (what their adapter_config says)."""

_WEIGHT_SUFFIX = re.compile(r"\.(lora_[AB]|lora_embedding_[AB]|lora_magnitude_vector)(\..*)?$")


def smallest_max_lora_rank(r: int) -> int | None:
    """The smallest ``--max-lora-rank`` vLLM accepts that holds rank ``r`` (None: none does)."""
    return next((choice for choice in VLLM_MAX_LORA_RANKS if choice >= r), None)


def module_names_from_weights(weight_names: Iterable[str]) -> set[str]:
    """The adapted layers' last names from an adapter's tensor names, as vLLM reads them:
    ``base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight`` -> ``q_proj``."""
    names: set[str] = set()
    for weight in weight_names:
        stripped = _WEIGHT_SUFFIX.sub("", weight)
        if stripped != weight:
            names.add(stripped.rsplit(".", 1)[-1])
    return names


def _target_names(adapter_config: Mapping[str, Any]) -> set[str] | None:
    """The layer names ``target_modules`` lists; None when it is a pattern (a string),
    which only the weights can resolve."""
    targets = adapter_config.get("target_modules")
    if isinstance(targets, list | tuple | set | frozenset):
        return {str(t).rsplit(".", 1)[-1] for t in targets}
    return None


def _rank_problems(adapter_config: Mapping[str, Any], max_lora_rank: int) -> list[str]:
    problems: list[str] = []
    if max_lora_rank not in VLLM_MAX_LORA_RANKS:
        problems.append(
            f"--max-lora-rank {max_lora_rank} is not a value vLLM accepts; choose one of "
            f"{', '.join(map(str, VLLM_MAX_LORA_RANKS))}"
        )
    r = adapter_config.get("r")
    if not isinstance(r, int) or isinstance(r, bool) or r < 1:
        problems.append(f"adapter_config.json: r is {r!r}, vLLM needs a positive integer rank")
        return problems
    if r > max_lora_rank:
        fit = smallest_max_lora_rank(r)
        fix = (
            f"start vLLM with --max-lora-rank {fit}"
            if fit is not None
            else f"retrain with r <= {VLLM_MAX_LORA_RANKS[-1]}, or serve the merged model"
        )
        problems.append(f"the adapter's rank r={r} is above --max-lora-rank {max_lora_rank}: {fix}")
    for key in ("rank_pattern", "alpha_pattern"):
        if adapter_config.get(key):
            problems.append(
                f"adapter_config.json: {key} gives some layers their own rank or alpha, but "
                f"vLLM scales every layer by one lora_alpha/r: serve the merged model instead"
            )
    return problems


def _feature_problems(adapter_config: Mapping[str, Any]) -> list[str]:
    problems: list[str] = []
    peft_type = str(adapter_config.get("peft_type") or "LORA").upper()
    if peft_type != "LORA":
        problems.append(
            f"adapter_config.json: peft_type is {peft_type}, and vLLM loads LoRA adapters "
            f"only: train with method.type lora (or qlora), or serve the merged model"
        )
    if adapter_config.get("use_dora"):
        problems.append(
            "adapter_config.json: use_dora is true, and vLLM does not support DoRA: set "
            "method.lora.useDora: false, or serve the merged model"
        )
    if adapter_config.get("modules_to_save"):
        problems.append(
            f"adapter_config.json: modules_to_save is {adapter_config['modules_to_save']}, "
            f"and vLLM only loads adapters without it: drop method.lora.modulesToSave, or "
            f"serve the merged model"
        )
    bias = adapter_config.get("bias", "none")
    if bias not in (None, "none"):
        problems.append(
            f"adapter_config.json: bias is {bias!r}, and vLLM does not support adapter "
            f"biases: train with bias 'none'"
        )
    return problems


def _module_problems(names: set[str], supported: frozenset[str]) -> list[str]:
    unsupported = sorted(names - supported)
    if not unsupported:
        return []
    return [
        f"the adapter adapts {', '.join(unsupported)}, which vLLM does not apply LoRA to "
        f"(it does to {', '.join(sorted(supported))}): set method.lora.targetModules to "
        f"those (all-linear selects them), or serve the merged model"
    ]


def vllm_compatibility(
    adapter_config: Mapping[str, Any],
    max_lora_rank: int,
    weight_names: Iterable[str] | None = None,
    supported_modules: frozenset[str] = VLLM_LORA_MODULES,
) -> list[str]:
    """Why vLLM, started with ``--max-lora-rank max_lora_rank``, would refuse this adapter
    (its ``adapter_config.json`` as a dict); empty when it would load it.

    ``weight_names`` (the tensor names of ``adapter_model.safetensors``) resolve a
    ``target_modules`` pattern to the layers it really adapted, which is what vLLM
    checks; without them a list in ``target_modules`` is checked and a pattern is not.
    """
    if str(adapter_config.get("peft_type") or "LORA").upper() != "LORA":
        return _feature_problems(adapter_config)[:1]  # no LoRA: its rank and layers are moot
    problems = _feature_problems(adapter_config) + _rank_problems(adapter_config, max_lora_rank)
    names = (
        module_names_from_weights(weight_names)
        if weight_names is not None
        else _target_names(adapter_config)
    )
    if names is not None:
        problems += _module_problems(names, supported_modules)
    return problems


def _alpha_factor(converted: bool, rslora: bool) -> float:
    """peft's conversion to rank 2r keeps the scale: alpha x2, or x sqrt(2) under rsLoRA."""
    if not converted:
        return 1
    return 2**0.5 if rslora else 2


def adapter_config_for(job: JobSections, model_config: Mapping[str, Any]) -> dict[str, Any]:
    """The ``adapter_config.json`` fields vLLM reads, as the trainer would publish them for
    ``job`` on the model ``model_config`` (its ``config.json``) describes: the targets
    resolved as the planner resolves them, the rank doubled for PiSSA/OLoRA (published
    converted to rank 2r so that it applies to the original base)."""
    options = job.method.options()
    if job.method.type not in _LORA_METHODS or not isinstance(options, LoraSpec):
        return {"peft_type": _PEFT_TYPES.get(job.method.type, job.method.type.upper())}
    trainable = trainable_for(ModelShape.from_config(model_config), job)
    converted = options.init in ("pissa", "olora")
    return {
        "peft_type": "LORA",
        "r": options.r * (2 if converted else 1),
        "lora_alpha": options.alpha * _alpha_factor(converted, options.use_rslora),
        "target_modules": sorted({lin.path.rsplit(".", 1)[-1] for lin in trainable.adapted}),
        "use_dora": options.use_dora,
        "modules_to_save": list(options.modules_to_save) if options.modules_to_save else None,
        "bias": "none",
    }


def job_vllm_compatibility(
    job: JobSections, model_config: Mapping[str, Any], max_lora_rank: int
) -> list[str]:
    """Why the adapter ``job`` publishes would not load in vLLM started with
    ``--max-lora-rank max_lora_rank``: the answer before training, from the spec and the
    base model's ``config.json``."""
    if METHODS[job.method.type].artifact == "model":
        return []  # a whole model: vLLM serves it as a base model, no LoRA involved
    return vllm_compatibility(adapter_config_for(job, model_config), max_lora_rank)
