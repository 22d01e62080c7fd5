"""targetModules / feedforwardModules as regular expressions can never hang a run.

peft matches a string with Python's backtracking ``re.fullmatch``; ``(a+)+$`` takes
time exponential in a module path's length. The contract refuses such shapes where
``finetune validate`` and the operator run (finetune_api.config.patterns), and the
trainer resolves a pattern to module paths itself, with RE2, before peft sees it.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from finetune_api.config import IA3Spec, LoraSpec
from finetune_api.config.patterns import UnsafePattern, check_module_pattern
from finetune_api.manifests import check_documents
from finetune_trainer.errors import ConfigError
from finetune_trainer.methods import MethodContext, get_method
from finetune_trainer.methods.common import pattern_matcher
from finetune_trainer.modeling import load_base_model, resolve_compute

SAFE = [
    r".*\.(q|v)_proj",
    r"model\.layers\.1[0-9]\..*_proj",
    r".*\.(q_proj|k_proj|v_proj)",
    r"model\.layers\.\d+\.self_attn\.\w+_proj",
    r".*\.layers\.\d+\..*_proj",
    r"^model\..*\.(gate|up|down)_proj$",
    r".*\.(q|v)_proj|lm_head",
]
CATASTROPHIC = [
    r"(a+)+$",
    r"(a*)*b",
    r"(a|a)*c",
    r"(a|ab)*c",
    r"(.*\.)+q_proj",
    r"([a-z]+\.)*q_proj",
    r"(x+x+)+y",
    r".*a.*b.*c.*d.*e",
]
UNSUPPORTED = [r"(?=q).*_proj", r"(?!k).*_proj", r"(q)\1_proj", r"(?>q).*", r"q*+_proj"]


def manifest(section: str) -> str:
    return (
        "apiVersion: finetune-operator.io/v1alpha1\nkind: FineTuneJob\nmetadata: {name: j}\n"
        "spec:\n  model: {uri: hf://org/model}\n  dataset: {train: file://t.jsonl}\n"
        f"  method:\n{section}"
    )


@pytest.mark.parametrize("pattern", SAFE)
def test_patterns_that_select_modules_are_accepted(pattern: str) -> None:
    check_module_pattern(pattern)
    assert LoraSpec(target_modules=pattern).target_modules == pattern


@pytest.mark.parametrize("pattern", CATASTROPHIC + UNSUPPORTED)
def test_a_catastrophic_pattern_is_refused_at_validate_time_at_once(pattern: str) -> None:
    text = manifest(f"    type: lora\n    lora: {{targetModules: '{pattern}'}}\n")
    started = time.perf_counter()
    (doc,) = check_documents(text, "job.yaml")
    assert time.perf_counter() - started < 0.5
    (problem,) = doc.problems
    assert problem.path == "spec.method.lora.targetModules"
    assert "use a list of module names (e.g. [q_proj, v_proj])" in problem.message


@pytest.mark.parametrize(
    "section",
    [
        "    type: adalora\n    adalora: {targetModules: '(a+)+$'}\n",
        "    type: ia3\n    ia3: {targetModules: '(a+)+$'}\n",
        "    type: ia3\n    ia3: {targetModules: [q_proj], feedforwardModules: '(a|ab)*c'}\n",
        "    type: qlora\n    lora: {targetModules: '(a+)+$'}\n",
    ],
)
def test_every_pattern_field_is_checked(section: str) -> None:
    (doc,) = check_documents(manifest(section), "job.yaml")
    assert doc.problems, section
    assert all("Modules" in p.path for p in doc.problems), doc.problems


def test_a_too_long_pattern_is_refused() -> None:
    with pytest.raises(UnsafePattern, match="more than 1024"):
        check_module_pattern(".*" + "q" * 2000)


@settings(max_examples=150, deadline=2000, suppress_health_check=[HealthCheck.too_slow])
@given(st.from_regex(r"[a-z.()|*+?\\]{1,12}", fullmatch=True))
def test_an_accepted_pattern_matches_a_long_path_quickly(pattern: str) -> None:
    """Whatever the check lets through, Python's re (the planner's, and peft's matcher
    when a pattern reaches it) fullmatches an adversarial path in bounded time."""
    try:
        check_module_pattern(pattern)
    except UnsafePattern:
        return
    compiled = re.compile(pattern)
    started = time.perf_counter()
    for path in ("a" * 40 + "!", "model." * 8 + "x", "ab" * 20 + "c"):
        compiled.fullmatch(path)
    assert time.perf_counter() - started < 0.5, pattern


# --------------------------------------------------------------------------- the trainer


def test_the_trainer_matches_in_linear_time_whatever_it_is_given() -> None:
    """A pattern that bypassed validation (a TrainerConfig written by hand to an old
    trainer) still cannot hang: RE2 matches it."""
    matches = pattern_matcher(r"(a+)+$")
    started = time.perf_counter()
    assert not matches("a" * 5000 + "!")
    assert time.perf_counter() - started < 0.5


def _apply(model_dir: Path, method: str, options: Any) -> Any:
    compute = resolve_compute("fp32", torch.device("cpu"))
    base = load_base_model(model_dir, compute, trust_remote_code=False, quantization=None)
    context = MethodContext(compute, 10, "causal-lm", model_dir, None)
    return get_method(method).apply(base, options, context)


def _adapted(model: Any, marker: str) -> set[str]:
    return {
        name.split(f".{marker}")[0].removeprefix("base_model.model.")
        for name, _ in model.named_parameters()
        if f".{marker}" in name
    }


def test_a_pattern_adapts_the_same_layers_and_peft_never_matches_it(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import peft.tuners.tuners_utils as tuners_utils

    pattern = r".*\.(q|v)_proj"

    def refuse(target: str, key: str) -> Any:
        raise AssertionError(f"peft matched {target!r} itself")

    monkeypatch.setattr(tuners_utils, "match_target_against_key", refuse)
    by_pattern = _apply(tiny_model_dir, "lora", LoraSpec(target_modules=pattern))
    monkeypatch.undo()
    by_names = _apply(tiny_model_dir, "lora", LoraSpec(target_modules=["q_proj", "v_proj"]))
    adapted = _adapted(by_pattern, "lora_A")
    assert adapted == _adapted(by_names, "lora_A")
    assert adapted == {f"model.layers.{i}.self_attn.{p}_proj" for i in (0, 1) for p in ("q", "v")}
    # The published adapter_config.json keeps the pattern as written.
    assert by_pattern.peft_config["default"].target_modules == pattern


def test_ia3_patterns_resolve_both_fields(tiny_model_dir: Path) -> None:
    options = IA3Spec(target_modules=r".*\.(k_proj|down_proj)", feedforward_modules=r".*down_proj")
    model = _apply(tiny_model_dir, "ia3", options)
    vectors = {
        name.split(".ia3_l")[0].removeprefix("base_model.model."): tuple(param.shape)
        for name, param in model.named_parameters()
        if ".ia3_l" in name
    }
    layers = (0, 1)
    # Feed-forward layers rescale their input (1, fan_in), the others their output.
    assert {k for k, shape in vectors.items() if shape[0] == 1} == {
        f"model.layers.{i}.mlp.down_proj" for i in layers
    }
    assert set(vectors) == {f"model.layers.{i}.mlp.down_proj" for i in layers} | {
        f"model.layers.{i}.self_attn.k_proj" for i in layers
    }
    assert model.peft_config["default"].feedforward_modules == r".*down_proj"


def test_a_pattern_matching_nothing_names_the_field_and_the_layers(tiny_model_dir: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        _apply(tiny_model_dir, "lora", LoraSpec(target_modules=r".*\.query"))
    message = str(caught.value)
    assert message.startswith("method.lora.targetModules: '.*\\.query' matches no module path")
    assert "q_proj" in message


@pytest.mark.parametrize("name", ["(a+)+", "lm_head$", ".*", "a b", "lm_head."])
def test_modules_to_save_takes_names_not_patterns(name: str) -> None:
    """peft writes each modulesToSave entry into a regular expression
    (``(^|.*\\.){name}($|\\..*)``): a pattern there would be matched unchecked."""
    for method in ("lora", "ia3"):
        text = manifest(f"    type: {method}\n    {method}: {{modulesToSave: ['{name}']}}\n")
        (doc,) = check_documents(text, "job.yaml")
        (problem,) = doc.problems
        assert problem.path == f"spec.method.{method}.modulesToSave[0]"
        assert problem.message.startswith("must be a module name or dotted path, e.g. lm_head")


@pytest.mark.parametrize("names", [["lm_head"], ["model.embed_tokens", "score"]])
def test_modules_to_save_names_are_accepted(names: list[str]) -> None:
    assert LoraSpec(modules_to_save=names).modules_to_save == names
