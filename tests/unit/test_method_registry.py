"""A method is one registration: the contract's entry (name, options model, facts) from
which MethodSpec is derived, and the trainer's implementation registered against it,
exactly one per entry."""

from __future__ import annotations

import typing
from typing import Any

import pytest

import finetune_api.config.methods._registry as contract_registry
from finetune_api.config import FullSpec, LoraSpec, MethodSpec, MethodType
from finetune_api.config.methods import (
    METHODS,
    PROMPT_LEARNING_METHODS,
    MethodEntry,
    register_method,
    section_types,
)
from finetune_api.config.methods.lora import LORA
from finetune_api.config.methods.qlora import QLORA, QLoraSpec

# --------------------------------------------------------------------------- the contract


def test_method_spec_is_derived_from_the_entries() -> None:
    assert list(typing.get_args(MethodType)) == list(METHODS)
    assert [entry.order for entry in METHODS.values()] == sorted(
        entry.order for entry in METHODS.values()
    )
    assert MethodSpec.section_names() == [entry.section for entry in METHODS.values()]
    for entry in METHODS.values():
        assert entry.options in typing.get_args(MethodSpec.model_fields[entry.field].annotation)
        assert type(MethodSpec(type=entry.name).options()) is entry.options
    virtual_tokens = {n for n, e in METHODS.items() if e.virtual_tokens}
    assert virtual_tokens == {"prefix", "prompt", "p-tuning"} == set(PROMPT_LEARNING_METHODS)
    description = MethodSpec.model_fields["type"].description or ""
    for name in METHODS:
        assert name in description
    assert {n for n, e in METHODS.items() if e.artifact == "model"} == {
        "full",
        "freeze",
        "progressive",
    }
    assert [n for n, e in METHODS.items() if e.quantized_base] == ["qlora"]


def test_qlora_builds_on_lora() -> None:
    assert QLORA.builds_on is LORA
    assert section_types(LORA) == ["lora", "qlora"]
    assert section_types(QLORA) == ["qlora"]
    assert QLORA.own_fields() == ["quant_type", "double_quant", "compute_dtype"]
    assert QLORA.shared_fields() == list(LoraSpec.model_fields)


def test_options_for_is_typed_by_the_entry() -> None:
    spec = MethodSpec.model_validate({"type": "qlora", "lora": {"r": 4}})
    options: QLoraSpec = spec.options_for(QLORA)
    assert options.r == 4
    assert spec.section(LORA) == LoraSpec(r=4)
    assert spec.section(QLORA) is None
    with pytest.raises(ValueError, match=r"method\.type is qlora, not lora"):
        spec.options_for(LORA)


@pytest.fixture
def open_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """The contract registry as while the package loads (a copy: the real one stays)."""
    monkeypatch.setattr(contract_registry, "_closed", False)
    monkeypatch.setattr(contract_registry, "_ENTRIES", dict(METHODS))


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (MethodEntry(name="lora", options=LoraSpec, order=99), "registered twice"),
        (MethodEntry(name="extra", options=FullSpec, order=1), "which 'lora' has"),
        (MethodEntry(name="Extra_Method", options=FullSpec, order=99), "lower-case words"),
        (
            MethodEntry(name="extra", options=FullSpec, order=99, builds_on=LORA),
            "FullSpec must extend LoraSpec",
        ),
        (
            MethodEntry(name="extra", options=QLoraSpec, order=99, builds_on=QLORA),
            "builds on 'qlora', which builds on another",
        ),
        (
            MethodEntry(
                name="extra",
                options=QLoraSpec,
                order=99,
                builds_on=MethodEntry(name="lora", options=LoraSpec, order=1),
            ),
            "builds on an unregistered method",
        ),
    ],
)
def test_register_method_refuses(
    entry: MethodEntry[Any], message: str, open_registry: None
) -> None:
    with pytest.raises(ValueError, match=message):
        register_method(entry)


def test_a_method_registered_after_the_spec_was_built_is_refused() -> None:
    with pytest.raises(RuntimeError, match="registered after MethodSpec was built"):
        register_method(MethodEntry(name="late", options=FullSpec, order=99))


# --------------------------------------------------------------------------- the trainer


def test_every_contract_method_has_exactly_one_implementation() -> None:
    from finetune_trainer.methods import REGISTRY, get_method

    get_method("lora")
    assert list(REGISTRY) != [] and set(REGISTRY) == set(METHODS)
    for name, method in REGISTRY.items():
        assert method.entry is METHODS[name]
        assert (method.name, method.artifact) == (name, METHODS[name].artifact)


def test_the_trainer_refuses_a_second_or_a_foreign_implementation() -> None:
    from finetune_trainer.methods import Method, get_method, register
    from finetune_trainer.methods.full import apply_full

    get_method("lora")
    with pytest.raises(ValueError, match="'full' registered twice"):
        register(Method(METHODS["full"], apply=apply_full))
    foreign = MethodEntry(name="full", options=FullSpec, order=5, artifact="model")
    with pytest.raises(ValueError, match="'full' is not a contract method"):
        register(Method(foreign, apply=apply_full))


def test_a_quantised_base_needs_a_quantization_and_only_then(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import finetune_trainer.methods as methods
    from finetune_trainer.methods.lora import apply_lora
    from finetune_trainer.methods.qlora import apply_qlora, quantization

    monkeypatch.setattr(methods, "REGISTRY", {})
    with pytest.raises(ValueError, match="'qlora': give it a quantization exactly when"):
        methods.register(methods.Method(QLORA, apply=apply_qlora))
    with pytest.raises(ValueError, match="'lora': give it a quantization exactly when"):
        methods.register(methods.Method(LORA, apply=apply_lora, quantization=quantization))


def test_a_method_without_implementation_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    import finetune_trainer.methods as methods

    methods.get_method("lora")
    partial = {n: m for n, m in methods.REGISTRY.items() if n != "p-tuning"}
    monkeypatch.setattr(methods, "REGISTRY", partial)
    with pytest.raises(RuntimeError, match=r"no implementation of method\(s\) p-tuning"):
        methods.load_implementations()
