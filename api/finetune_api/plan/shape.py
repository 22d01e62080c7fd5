"""A model's shape from its ``config.json``: every parameter tensor by module path,
without the weights.

The planner needs to know which linear layers a method's ``targetModules`` select, how
large each is, and which parameters are embeddings, norms or the output head, so the
architecture is written out here as module paths (the names transformers gives them)
for the families our users train: the Llama family (Llama, Mistral, Qwen2/3, Gemma,
SmolLM, Granite, OLMo...), Phi-3's fused projections, GPT-2 and BERT-style encoders.
A ``model_type`` outside these is read as a Llama-like decoder from the standard
fields and flagged ``approximate``; a config without those fields is refused.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

Family = Literal["llama", "phi3", "gpt2", "bert"]

_LLAMA_LIKE = frozenset(
    {
        "llama",
        "mistral",
        "qwen2",
        "qwen3",
        "gemma",
        "gemma2",
        "gemma3_text",
        "granite",
        "olmo",
        "olmo2",
        "smollm3",
        "cohere",
        "starcoder2",
        "stablelm",
        "internlm2",
        "deepseek_v2",
    }
)
_ENCODERS = frozenset({"bert", "roberta", "xlm-roberta", "distilbert", "electra", "mpnet"})


class ShapeError(ValueError):
    """The config cannot be read as a model shape; the message says which field."""


@dataclass(frozen=True)
class Linear:
    """One linear layer: its full module path, fan-in, fan-out and bias."""

    path: str
    fan_in: int
    fan_out: int
    bias: bool = False

    @property
    def params(self) -> int:
        return self.fan_in * self.fan_out + (self.fan_out if self.bias else 0)


@dataclass(frozen=True)
class ModelShape:
    """What the planner knows of a model: sizes, and every parameter by module path."""

    model_type: str
    family: Family
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tie_embeddings: bool
    decoder: bool
    approximate: bool = False
    """The model_type is not one we know: read as a Llama-like decoder."""
    linears: tuple[Linear, ...] = field(default=(), repr=False)
    """Every linear layer inside the transformer blocks (what all-linear selects)."""
    block_other: int = 0
    """Parameters of one block outside its linear layers (norms)."""
    embedding_params: int = 0
    """Input embeddings (tokens, positions, token types) and their norm."""
    final_params: int = 0
    """Parameters after the blocks and before the head (final norm, BERT's pooler)."""
    head_params: int = 0
    """The output head when it is not tied to the input embeddings."""
    block_prefix: str = "model.layers"
    file_dtype_bytes: int = 2
    """Bytes per weight in the checkpoint files (config.json's dtype; 2 when unsaid)."""

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim

    @property
    def block_params(self) -> int:
        return sum(lin.params for lin in self.linears) // self.layers + self.block_other

    @property
    def total_params(self) -> int:
        """Every parameter of the base model (a tied head counted once)."""
        return (
            self.embedding_params
            + self.layers * self.block_params
            + self.final_params
            + self.head_params
        )

    @property
    def token_embedding_params(self) -> int:
        return self.vocab * self.hidden

    def block_linears(self, index: int) -> Iterator[Linear]:
        prefix = f"{self.block_prefix}.{index}."
        return (lin for lin in self.linears if lin.path.startswith(prefix))

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> ModelShape:
        """The shape of the model a Hugging Face ``config.json`` describes."""
        dtype = config.get("dtype") or config.get("torch_dtype")
        return replace(cls._from_config(config), file_dtype_bytes=4 if dtype == "float32" else 2)

    @classmethod
    def _from_config(cls, config: Mapping[str, Any]) -> ModelShape:
        model_type = str(config.get("model_type") or "")
        if "image_size" in config and "vocab_size" not in config:
            raise ShapeError(
                f"config.json describes a vision model ({model_type or 'no model_type'}): the "
                "planner sizes language models and text encoders only, so task "
                "image-classification is not planned; run it and read its peakMemoryBytes"
            )
        if model_type in _ENCODERS:
            return _bert(config, model_type)
        if model_type == "gpt2":
            return _gpt2(config)
        if model_type in ("phi3", "phi4"):
            return _llama(config, model_type, family="phi3")
        text = config.get("text_config")
        if isinstance(text, Mapping) and "hidden_size" not in config:
            # A multimodal wrapper (Gemma 3, Llama 4...): the language model is what trains.
            return cls._from_config({**text, "model_type": text.get("model_type", model_type)})
        return _llama(config, model_type, family="llama", approximate=model_type not in _LLAMA_LIKE)


def _int(config: Mapping[str, Any], *names: str, default: int | None = None) -> int:
    for name in names:
        value = config.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    if default is not None:
        return default
    raise ShapeError(
        f"config.json has no positive integer {' or '.join(names)}: the planner needs it to "
        "size the model"
    )


def _llama(
    config: Mapping[str, Any], model_type: str, *, family: Family, approximate: bool = False
) -> ModelShape:
    hidden = _int(config, "hidden_size")
    layers = _int(config, "num_hidden_layers")
    heads = _int(config, "num_attention_heads")
    kv_heads = _int(config, "num_key_value_heads", default=heads)
    head_dim = _int(config, "head_dim", default=hidden // heads)
    intermediate = _int(config, "intermediate_size", default=4 * hidden)
    vocab = _int(config, "vocab_size")
    tie = bool(config.get("tie_word_embeddings", False))
    qkv_bias = bool(config.get("attention_bias", False)) or model_type == "qwen2"
    o_bias = bool(config.get("attention_bias", False))
    mlp_bias = bool(config.get("mlp_bias", False))
    q_out, kv_out = heads * head_dim, kv_heads * head_dim
    linears: list[Linear] = []
    for i in range(layers):
        p = f"model.layers.{i}"
        if family == "phi3":
            linears += [
                Linear(f"{p}.self_attn.qkv_proj", hidden, q_out + 2 * kv_out, qkv_bias),
                Linear(f"{p}.self_attn.o_proj", q_out, hidden, o_bias),
                Linear(f"{p}.mlp.gate_up_proj", hidden, 2 * intermediate, mlp_bias),
                Linear(f"{p}.mlp.down_proj", intermediate, hidden, mlp_bias),
            ]
        else:
            linears += [
                Linear(f"{p}.self_attn.q_proj", hidden, q_out, qkv_bias),
                Linear(f"{p}.self_attn.k_proj", hidden, kv_out, qkv_bias),
                Linear(f"{p}.self_attn.v_proj", hidden, kv_out, qkv_bias),
                Linear(f"{p}.self_attn.o_proj", q_out, hidden, o_bias),
                Linear(f"{p}.mlp.gate_proj", hidden, intermediate, mlp_bias),
                Linear(f"{p}.mlp.up_proj", hidden, intermediate, mlp_bias),
                Linear(f"{p}.mlp.down_proj", intermediate, hidden, mlp_bias),
            ]
    norms = 4 if model_type in ("gemma2", "gemma3_text") else 2
    block_other = norms * hidden + (2 * head_dim if model_type in ("qwen3", "gemma3_text") else 0)
    return ModelShape(
        model_type=model_type or "unknown",
        family=family,
        hidden=hidden,
        intermediate=intermediate,
        layers=layers,
        heads=heads,
        kv_heads=kv_heads,
        head_dim=head_dim,
        vocab=vocab,
        tie_embeddings=tie,
        decoder=True,
        approximate=approximate,
        linears=tuple(linears),
        block_other=block_other,
        embedding_params=vocab * hidden,
        final_params=hidden,
        head_params=0 if tie else vocab * hidden,
    )


def _gpt2(config: Mapping[str, Any]) -> ModelShape:
    hidden = _int(config, "n_embd", "hidden_size")
    layers = _int(config, "n_layer", "num_hidden_layers")
    heads = _int(config, "n_head", "num_attention_heads")
    inner = _int(config, "n_inner", default=4 * hidden)
    vocab = _int(config, "vocab_size")
    positions = _int(config, "n_positions", "max_position_embeddings", default=1024)
    linears: list[Linear] = []
    for i in range(layers):
        p = f"transformer.h.{i}"
        linears += [
            Linear(f"{p}.attn.c_attn", hidden, 3 * hidden, True),
            Linear(f"{p}.attn.c_proj", hidden, hidden, True),
            Linear(f"{p}.mlp.c_fc", hidden, inner, True),
            Linear(f"{p}.mlp.c_proj", inner, hidden, True),
        ]
    tie = bool(config.get("tie_word_embeddings", True))
    return ModelShape(
        model_type="gpt2",
        family="gpt2",
        hidden=hidden,
        intermediate=inner,
        layers=layers,
        heads=heads,
        kv_heads=heads,
        head_dim=hidden // heads,
        vocab=vocab,
        tie_embeddings=tie,
        decoder=True,
        linears=tuple(linears),
        block_other=4 * hidden,
        embedding_params=(vocab + positions) * hidden,
        final_params=2 * hidden,
        head_params=0 if tie else vocab * hidden,
        block_prefix="transformer.h",
    )


def _bert(config: Mapping[str, Any], model_type: str) -> ModelShape:
    hidden = _int(config, "hidden_size", "dim")
    layers = _int(config, "num_hidden_layers", "n_layers")
    heads = _int(config, "num_attention_heads", "n_heads")
    intermediate = _int(config, "intermediate_size", "hidden_dim", default=4 * hidden)
    vocab = _int(config, "vocab_size")
    positions = _int(config, "max_position_embeddings", default=512)
    types = int(config.get("type_vocab_size", 2) or 0)
    linears: list[Linear] = []
    for i in range(layers):
        p = f"{model_type.split('-')[-1]}.encoder.layer.{i}"
        linears += [
            Linear(f"{p}.attention.self.query", hidden, hidden, True),
            Linear(f"{p}.attention.self.key", hidden, hidden, True),
            Linear(f"{p}.attention.self.value", hidden, hidden, True),
            Linear(f"{p}.attention.output.dense", hidden, hidden, True),
            Linear(f"{p}.intermediate.dense", hidden, intermediate, True),
            Linear(f"{p}.output.dense", intermediate, hidden, True),
        ]
    prefix = f"{model_type.split('-')[-1]}.encoder.layer"
    return ModelShape(
        model_type=model_type,
        family="bert",
        hidden=hidden,
        intermediate=intermediate,
        layers=layers,
        heads=heads,
        kv_heads=heads,
        head_dim=hidden // heads,
        vocab=vocab,
        tie_embeddings=True,
        decoder=False,
        linears=tuple(linears),
        block_other=4 * hidden,  # two LayerNorms, weight and bias
        embedding_params=(vocab + positions + types) * hidden + 2 * hidden,
        final_params=hidden * hidden + hidden,  # the pooler a classifier reads
        head_params=0,
        block_prefix=prefix,
    )
