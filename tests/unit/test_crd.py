"""The generated CRD: committed copy up to date, structural, and faithful to the models.

Kubernetes refuses a CRD whose schema is not structural, and the API server then enforces
only what the CRD says; so the schema must carry the same bounds, enums and cross-field
rules that pydantic enforces in `finetune validate` and in the operator.
"""

from __future__ import annotations

import copy
import math
import typing
from pathlib import Path
from typing import Any

import annotated_types
import kubernetes_validate.utils as kv  # type: ignore[import-untyped]
import pytest
import yaml
from pydantic import BaseModel

from finetune_api.config import DatasetSpec, JobSections, MethodSpec, MethodType
from finetune_api.crd import build_crd, render_crd_yaml
from finetune_api.manifests import model_in
from finetune_api.resource import FineTuneJobSpec, FineTuneJobStatus
from finetune_api.tasks import TASKS

ROOT = Path(__file__).resolve().parents[2]
CRD_FILE = ROOT / "crds" / "finetunejobs.finetune-operator.io.yaml"
REGENERATE = "regenerate it: .venv/bin/finetune crd > crds/finetunejobs.finetune-operator.io.yaml"

# kubernetes-validate ships the API schemas per Kubernetes release. CEL validation rules
# (x-kubernetes-validations) are GA since 1.29, the oldest release we support.
K8S_VERSIONS = ["1.29", kv.latest_version()]

JUNCTORS = ("anyOf", "allOf", "oneOf", "not")
INT_OR_STRING = [{"type": "integer"}, {"type": "string"}]
FORBIDDEN_IN_JUNCTORS = ("type", "description", "default", "nullable", "additionalProperties")


# --------------------------------------------------------------------------- helpers


def structural_problems(node: dict[str, Any], path: str = "") -> list[str]:
    """Where ``node`` breaks Kubernetes' structural schema rules (empty when it is fine).

    https://kubernetes.io/docs/tasks/extend-kubernetes/custom-resources/custom-resource-definitions/#specifying-a-structural-schema
    """
    problems: list[str] = []
    here = path or "<root>"
    preserve = node.get("x-kubernetes-preserve-unknown-fields") is True
    int_or_string = node.get("x-kubernetes-int-or-string") is True
    if "type" not in node and not (preserve or int_or_string):
        problems.append(f"{here}: no type")
    problems += _node_rules(node, here)
    for junctor in JUNCTORS:
        if junctor not in node:
            continue
        if junctor == "anyOf" and int_or_string and node["anyOf"] == INT_OR_STRING:
            continue  # the one pattern Kubernetes allows a type inside a junctor for
        branches = node[junctor] if isinstance(node[junctor], list) else [node[junctor]]
        for i, branch in enumerate(branches):
            problems += _junctor_problems(branch, f"{here}.{junctor}[{i}]")
    for name, sub in node.get("properties", {}).items():
        problems += structural_problems(sub, f"{path}.properties.{name}")
    if isinstance(node.get("items"), dict):
        problems += structural_problems(node["items"], f"{path}.items")
    if isinstance(node.get("additionalProperties"), dict):
        problems += structural_problems(
            node["additionalProperties"], f"{path}.additionalProperties"
        )
    return problems


def _node_rules(node: dict[str, Any], here: str) -> list[str]:
    problems = []
    if "$ref" in node:
        problems.append(f"{here}: $ref (must be inlined)")
    if node.get("additionalProperties") is False:
        problems.append(f"{here}: additionalProperties: false")
    if "properties" in node and "additionalProperties" in node:
        problems.append(f"{here}: properties and additionalProperties together")
    for key in ("exclusiveMinimum", "exclusiveMaximum"):
        if key in node and not isinstance(node[key], bool):
            problems.append(f"{here}: {key} must be a boolean in OpenAPI v3.0")
    return problems


def _junctor_problems(node: dict[str, Any], here: str) -> list[str]:
    """Inside anyOf/allOf/oneOf/not only value validations may appear, all the way down."""
    problems = [f"{here}: {key} inside a junctor" for key in FORBIDDEN_IN_JUNCTORS if key in node]
    problems += _node_rules(node, here)
    for name, sub in node.get("properties", {}).items():
        problems += _junctor_problems(sub, f"{here}.properties.{name}")
    if isinstance(node.get("items"), dict):
        problems += _junctor_problems(node["items"], f"{here}.items")
    for junctor in JUNCTORS:
        branches = node.get(junctor, [])
        for i, branch in enumerate(branches if isinstance(branches, list) else [branches]):
            problems += _junctor_problems(branch, f"{here}.{junctor}[{i}]")
    return problems


@pytest.fixture(scope="module")
def crd() -> dict[str, Any]:
    return build_crd()


@pytest.fixture(scope="module")
def version(crd: dict[str, Any]) -> dict[str, Any]:
    (only,) = crd["spec"]["versions"]
    return typing.cast(dict[str, Any], only)


@pytest.fixture(scope="module")
def schema(version: dict[str, Any]) -> dict[str, Any]:
    return typing.cast(dict[str, Any], version["schema"]["openAPIV3Schema"])


def at(schema: dict[str, Any], dotted: str) -> dict[str, Any]:
    """The schema node at a wire path such as ``spec.method.lora.r``."""
    node = schema
    for part in dotted.split("."):
        assert part in node.get("properties", {}), f"{dotted}: no property {part!r} in the CRD"
        node = node["properties"][part]
    return node


# --------------------------------------------------------------------------- committed copy


def test_committed_crd_matches_the_models() -> None:
    assert CRD_FILE.exists(), f"{CRD_FILE.relative_to(ROOT)} is missing; {REGENERATE}"
    committed = CRD_FILE.read_text(encoding="utf-8")
    assert committed == render_crd_yaml(), (
        f"{CRD_FILE.relative_to(ROOT)} is out of date with the pydantic models; {REGENERATE}"
    )


def test_committed_yaml_parses_to_the_built_object() -> None:
    assert yaml.safe_load(CRD_FILE.read_text(encoding="utf-8")) == build_crd()


# --------------------------------------------------------------------------- structural


def test_schema_is_structural(schema: dict[str, Any]) -> None:
    assert structural_problems(schema) == []


@pytest.mark.parametrize(
    ("bad", "complaint"),
    [
        ({"type": "object", "properties": {"a": {"description": "x"}}}, "no type"),
        ({"type": "object", "properties": {"a": {"$ref": "#/x", "type": "string"}}}, "$ref"),
        ({"type": "object", "additionalProperties": False}, "additionalProperties: false"),
        (
            {"type": "object", "properties": {}, "additionalProperties": {"type": "string"}},
            "properties and additionalProperties",
        ),
        ({"type": "number", "exclusiveMinimum": 0}, "exclusiveMinimum must be a boolean"),
        ({"type": "string", "anyOf": [{"type": "string"}, {"pattern": "a"}]}, "type inside"),
        ({"type": "string", "anyOf": [{"pattern": "a", "nullable": True}]}, "nullable inside"),
        ({"type": "string", "allOf": [{"description": "d"}]}, "description inside"),
        ({"type": "string", "not": {"default": "x"}}, "default inside"),
        # the int-or-string pair without its marker is not the allowed pattern
        ({"type": "string", "anyOf": INT_OR_STRING}, "type inside"),
        ({"type": "object", "properties": {"q": {"anyOf": INT_OR_STRING}}}, "no type"),
    ],
)
def test_structural_checker_catches(bad: dict[str, Any], complaint: str) -> None:
    assert any(complaint in p for p in structural_problems(bad)), structural_problems(bad)


def test_structural_checker_allows_the_kubernetes_escape_hatches() -> None:
    ok = {
        "type": "object",
        "properties": {
            "quantity": {
                "anyOf": INT_OR_STRING,
                "x-kubernetes-int-or-string": True,
                "pattern": "^[0-9]+m?$",
            },
            "anything": {"x-kubernetes-preserve-unknown-fields": True},
            "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        },
    }
    assert structural_problems(ok) == []


@pytest.mark.parametrize("k8s_version", K8S_VERSIONS)
def test_crd_object_is_valid_for_kubernetes(crd: dict[str, Any], k8s_version: str) -> None:
    # strict: unknown keys anywhere in the CRD (a misspelt x-kubernetes-* extension,
    # `nullable` at the wrong level) are errors, as the API server's decoder makes them.
    try:
        kv.validate(crd, k8s_version, strict=True)
    except kv.ValidationError as exc:
        where = ".".join(str(p) for p in exc.path)
        pytest.fail(
            f"CRD is not a valid {k8s_version} CustomResourceDefinition at {where}: {exc.message}"
        )


def test_kubernetes_validation_is_not_vacuous(crd: dict[str, Any]) -> None:
    broken = copy.deepcopy(crd)
    broken["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"][
        "x-kubernetes-validation"
    ] = []
    with pytest.raises(kv.ValidationError):
        kv.validate(broken, kv.latest_version(), strict=True)
    broken = copy.deepcopy(crd)
    broken["spec"]["scope"] = 1
    with pytest.raises(kv.ValidationError):
        kv.validate(broken, kv.latest_version(), strict=True)


# --------------------------------------------------------------------------- names and shape


def test_names_scope_and_group(crd: dict[str, Any]) -> None:
    assert crd["apiVersion"] == "apiextensions.k8s.io/v1"
    assert crd["kind"] == "CustomResourceDefinition"
    assert crd["metadata"]["name"] == "finetunejobs.finetune-operator.io"
    spec = crd["spec"]
    assert spec["group"] == "finetune-operator.io"
    assert spec["scope"] == "Namespaced"
    names = spec["names"]
    assert names["kind"] == "FineTuneJob"
    assert names["listKind"] == "FineTuneJobList"
    assert names["plural"] == "finetunejobs"
    assert names["singular"] == "finetunejob"
    assert names["shortNames"] == ["ftj"]


def test_one_served_storage_version_with_status_subresource(version: dict[str, Any]) -> None:
    assert version["name"] == "v1alpha1"
    assert version["served"] is True
    assert version["storage"] is True
    assert version["subresources"] == {"status": {}}


def test_printer_columns(version: dict[str, Any]) -> None:
    columns = {c["name"]: c for c in version["additionalPrinterColumns"]}
    assert list(columns) == [
        "Phase",
        "Progress",
        "Step",
        "ETA",
        "Estimate",
        "Method",
        "Model",
        "Age",
    ]
    # Step, ETA and the planner's Estimate show with `kubectl get ftj -o wide`.
    wide = {name for name, c in columns.items() if c.get("priority") == 1}
    assert wide == {"Step", "ETA", "Estimate"}
    assert columns["Estimate"]["jsonPath"] == ".status.plan.estimatedDuration"
    assert columns["Phase"]["jsonPath"] == ".status.phase"
    assert columns["Progress"]["jsonPath"] == ".status.progress.percent"
    assert columns["Method"]["jsonPath"] == ".spec.method.type"
    assert columns["Model"]["jsonPath"] == ".spec.model.uri"
    assert columns["Age"] == {
        "name": "Age",
        "type": "date",
        "jsonPath": ".metadata.creationTimestamp",
    }


@pytest.mark.parametrize(
    "json_path",
    [
        ".status.phase",
        ".status.progress.percent",
        ".status.progress.etaSeconds",
        ".status.plan.estimatedDuration",
        ".spec.method.type",
        ".spec.model.uri",
    ],
)
def test_printer_columns_point_at_schema_fields(schema: dict[str, Any], json_path: str) -> None:
    at(schema, json_path.lstrip("."))


def test_top_level_shape(schema: dict[str, Any]) -> None:
    assert schema["type"] == "object"
    assert schema["required"] == ["spec"]
    assert set(schema["properties"]) == {"apiVersion", "kind", "metadata", "spec", "status"}
    assert at(schema, "spec")["required"] == ["model", "dataset"]
    assert at(schema, "spec.model")["required"] == ["uri"]
    # train or mixture: neither is required alone, a CEL rule asks for exactly one.
    assert "required" not in at(schema, "spec.dataset")
    assert at(schema, "spec.dataset.mixture")["items"]["required"] == ["train"]


# --------------------------------------------------------------------------- faithful to pydantic


def test_named_bounds(schema: dict[str, Any]) -> None:
    r = at(schema, "spec.method.lora.r")
    assert (r["type"], r["minimum"], r["maximum"]) == ("integer", 1, 1024)
    assert "exclusiveMinimum" not in r
    split = at(schema, "spec.dataset.validationSplit")
    assert split["type"] == "number"
    assert (split["minimum"], split["exclusiveMinimum"]) == (0, True)
    assert (split["maximum"], split["exclusiveMaximum"]) == (1, True)
    assert split["nullable"] is True
    lr = at(schema, "spec.training.learningRate")
    assert lr["type"] == "number"
    assert (lr["minimum"], lr["exclusiveMinimum"]) == (0, True)
    assert lr["maximum"] == 1
    assert "exclusiveMaximum" not in lr
    assert at(schema, "spec.method.type")["enum"] == [
        "lora",
        "qlora",
        "adalora",
        "ia3",
        "full",
        "freeze",
        "prefix",
        "prompt",
        "p-tuning",
        "vera",
        "lora-fa",
        "adapter",
        "progressive",
    ]
    assert at(schema, "spec.model.trustRemoteCode")["type"] == "boolean"


def _models_with_schemas(
    model: type[BaseModel], node: dict[str, Any], path: str
) -> typing.Iterator[tuple[str, Any, dict[str, Any]]]:
    """Every (wire path, pydantic field, CRD node) pair under ``model``."""
    for name, info in model.model_fields.items():
        wire = info.alias or name
        assert wire in node["properties"], f"{path}.{wire} missing from the CRD"
        sub = node["properties"][wire]
        yield f"{path}.{wire}", info, sub
        nested = model_in(info.annotation)
        if nested is not None:
            target = sub["items"] if sub.get("type") == "array" else sub
            yield from _models_with_schemas(nested, target, f"{path}.{wire}")


def _all_fields(schema: dict[str, Any]) -> list[tuple[str, Any, dict[str, Any]]]:
    return [
        *_models_with_schemas(FineTuneJobSpec, at(schema, "spec"), "spec"),
        *_models_with_schemas(FineTuneJobStatus, at(schema, "status"), "status"),
    ]


def test_every_numeric_bound_matches_pydantic(schema: dict[str, Any]) -> None:
    checked = 0
    for path, info, node in _all_fields(schema):
        for meta in info.metadata:
            if isinstance(meta, annotated_types.Ge):
                assert node.get("minimum") == meta.ge, path
                assert not node.get("exclusiveMinimum"), path
            elif isinstance(meta, annotated_types.Gt):
                assert (node.get("minimum"), node.get("exclusiveMinimum")) == (meta.gt, True), path
            elif isinstance(meta, annotated_types.Le):
                assert node.get("maximum") == meta.le, path
                assert not node.get("exclusiveMaximum"), path
            elif isinstance(meta, annotated_types.Lt):
                assert (node.get("maximum"), node.get("exclusiveMaximum")) == (meta.lt, True), path
            elif isinstance(meta, annotated_types.MinLen) and node.get("type") == "string":
                assert node.get("minLength") == meta.min_length, path
            elif isinstance(meta, annotated_types.MaxLen) and node.get("type") == "string":
                assert node.get("maxLength") == meta.max_length, path
            else:
                continue
            checked += 1
    assert checked > 30, "the walk found too few bounds; is it still looking at the right models?"


def _literal_values(annotation: Any) -> list[Any] | None:
    if typing.get_origin(annotation) is typing.Literal:
        return list(typing.get_args(annotation))
    for arg in typing.get_args(annotation):
        if arg is not type(None):
            found = _literal_values(arg)
            if found is not None:
                return found
    return None


def test_every_enum_matches_its_literal(schema: dict[str, Any]) -> None:
    checked = 0
    for path, info, node in _all_fields(schema):
        values = _literal_values(info.annotation)
        if values is None or "x-kubernetes-preserve-unknown-fields" in node:
            continue
        assert node.get("enum") == values, path
        checked += 1
    assert checked >= 10


def test_required_lists_match_pydantic(schema: dict[str, Any]) -> None:
    nodes: dict[str, tuple[type[BaseModel], dict[str, Any]]] = {
        "spec": (FineTuneJobSpec, at(schema, "spec"))
    }
    for path, info, node in _all_fields(schema):
        model = model_in(info.annotation)
        if model is not None:
            nodes[path] = (model, node["items"] if node.get("type") == "array" else node)
    for path, (model, node) in nodes.items():
        expected = [f.alias or n for n, f in model.model_fields.items() if f.is_required()]
        assert node.get("required", []) == expected, path


def test_optional_fields_are_nullable(schema: dict[str, Any]) -> None:
    for path, info, node in _all_fields(schema):
        allows_none = type(None) in typing.get_args(info.annotation)
        assert node.get("nullable", False) is allows_none, path


def test_defaults_are_stated_not_applied(schema: dict[str, Any]) -> None:
    # Defaults live in pydantic only (so the operator and `finetune run` agree); the CRD
    # says them in the description for `kubectl explain`.
    for path, _, node in _all_fields(schema):
        assert "default" not in node, path
    assert "Default: 0.0002." in at(schema, "spec.training.learningRate")["description"]
    assert "Default: false." in at(schema, "spec.model.trustRemoteCode")["description"]


def undescribed(node: dict[str, Any], path: str) -> list[str]:
    """Every property under ``node`` (nested objects, array items' and map values'
    properties included) whose description is missing or blank."""
    missing: list[str] = []
    for name, sub in node.get("properties", {}).items():
        here = f"{path}.{name}"
        if not str(sub.get("description", "")).strip():
            missing.append(here)
        missing += undescribed(sub, here)
    if isinstance(node.get("items"), dict):
        missing += undescribed(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        missing += undescribed(node["additionalProperties"], f"{path}{{}}")
    return missing


def test_the_description_walker_reaches_nested_and_array_properties() -> None:
    node = {
        "type": "object",
        "properties": {
            "a": {"type": "string", "description": "  "},
            "b": {
                "type": "array",
                "description": "b",
                "items": {"type": "object", "properties": {"c": {"type": "integer"}}},
            },
            "d": {
                "type": "object",
                "description": "d",
                "properties": {"e": {"type": "object", "properties": {"f": {"type": "number"}}}},
            },
        },
    }
    assert undescribed(node, "s") == ["s.a", "s.b[].c", "s.d.e", "s.d.e.f"]


def test_every_status_field_is_described_for_kubectl_explain(schema: dict[str, Any]) -> None:
    # `kubectl explain ftj.status --recursive` shows these to whoever reads the status.
    status = at(schema, "status")
    assert str(status.get("description", "")).strip()
    assert undescribed(status, "status") == []


def test_quantities_are_int_or_string_with_the_kubernetes_pattern(schema: dict[str, Any]) -> None:
    for name in ("cpu", "memory"):
        node = at(schema, f"spec.resources.{name}")
        assert node["x-kubernetes-int-or-string"] is True
        assert node["anyOf"] == INT_OR_STRING
        assert node["pattern"].startswith("^(\\+|-)?")


def test_target_modules_keeps_its_union(schema: dict[str, Any]) -> None:
    paths = ["lora", "qlora", "adalora", "ia3"]
    for path in [f"{s}.targetModules" for s in paths] + ["ia3.feedforwardModules"]:
        node = at(schema, f"spec.method.{path}")
        assert node["x-kubernetes-preserve-unknown-fields"] is True
        assert "type" not in node
    # optional ones may be null, like every optional field
    assert at(schema, "spec.method.ia3.targetModules")["nullable"] is True
    assert "nullable" not in at(schema, "spec.method.lora.targetModules")


# --------------------------------------------------------------------------- CEL twins


def test_dataset_cel_rules(schema: dict[str, Any]) -> None:
    *rules, immutable = at(schema, "spec.dataset")["x-kubernetes-validations"]
    assert rules == DatasetSpec.model_json_schema()["x-kubernetes-validations"]
    assert immutable["rule"] == "self == oldSelf"
    validation, train, *image_folder_rules = rules[:5]
    assert [r["message"] for r in image_folder_rules] == [
        "format image-folder reads a folder (a URI ending in /), every other format a file",
        "format image-folder reads a folder (a URI ending in /), every other format a file",
        "the image formats read one train source, not a mixture",
    ]
    # hub and streaming (tests/unit/test_data_scale_spec.py holds their parity)
    assert [r["message"].split(":")[0] for r in rules[5:]] == [
        "hub names a subset and split of a Hub dataset",
        "set one held-out source",
        "streaming reads one train source, not a mixture",
        "streaming needs a held-out file",
        "streaming cannot deduplicate (it would hold every row's hash)",
        "streaming reads rows one by one, which a .json document (one JSON value) cannot give",
    ]
    assert "has(self.validation)" in validation["rule"]
    assert "has(self.validationSplit)" in validation["rule"]
    assert "not both" in validation["message"]
    assert train["rule"] == "has(self.train) != has(self.mixture)"
    assert "exactly one of train" in train["message"]
    # CEL over a list needs a bound for the API server's cost estimate.
    assert at(schema, "spec.dataset.mixture")["maxItems"] == 64


def test_task_cel_rules_pair_each_task_with_its_formats(schema: dict[str, Any]) -> None:
    *rules, presence = at(schema, "spec")["x-kubernetes-validations"]
    # the sections' own rules come first; the cross-field rules' twins follow
    # (tests/unit/test_rule_parity.py)
    sections = JobSections.model_json_schema()["x-kubernetes-validations"]
    assert rules[: len(sections)] == sections
    assert "has(self.model) == has(oldSelf.model)" in presence["rule"]
    (prompt_learning_packing,) = sections
    assert prompt_learning_packing["rule"].endswith(
        "!(self.method.type in ['p-tuning', 'prefix', 'prompt'])"
    )
    by_message = {r["message"]: r["rule"] for r in rules}
    fmt = next(rule for message, rule in by_message.items() if message.startswith("dataset.format"))
    for task, info in TASKS.items():
        assert f"== '{task}' && m.format in [" in fmt
        assert all(f"'{f}'" in fmt for f in info.formats)
    # every field a rule names exists where the rule looks for it
    for path in (
        "task",
        "dataset.format",
        "dataset.mixture",
        "training.packing",
        "method.type",
        "preference",
        "reinforcement",
    ):
        at(schema, f"spec.{path}")
    assert at(schema, "spec.task")["enum"] == list(TASKS)


def test_method_cel_rules_cover_every_section(schema: dict[str, Any]) -> None:
    *rules, immutable = at(schema, "spec.method")["x-kubernetes-validations"]
    assert immutable["rule"] == "self == oldSelf"
    types = list(typing.get_args(MethodType))
    sections = MethodSpec.section_names()
    # the wire name of a type's section: camelCase of the type with '-' read as '_'
    assert sections == [
        "lora",
        "qlora",
        "adalora",
        "ia3",
        "full",
        "freeze",
        "prefix",
        "prompt",
        "pTuning",
        "vera",
        "loraFa",
        "adapter",
        "progressive",
    ]
    # one rule per section, then one per method that builds on another (qlora on lora)
    section_rules, once_rules = rules[: len(sections)], rules[len(sections) :]
    assert len(section_rules) == len(sections) == len(types)
    for method_type, section, rule in zip(types, sections, section_rules, strict=True):
        # lora's section also takes qlora's LoRA options
        allowed = "in ['lora', 'qlora']" if section == "lora" else f"== '{method_type}'"
        assert rule["rule"] == (
            f"!has(self.{section}) || (has(self.type) ? self.type : 'lora') {allowed}"
        )
        assert section in rule["message"]
        # the section must exist in the schema for has(self.<section>) to compile
        assert section in at(schema, "spec.method")["properties"]
    p_tuning = section_rules[sections.index("pTuning")]["rule"]
    assert p_tuning.startswith("!has(self.pTuning) ||") and p_tuning.endswith("== 'p-tuning'")
    (once,) = once_rules
    assert once["rule"].startswith(
        "(has(self.type) ? self.type : 'lora') != 'qlora' || !has(self.lora) || !has(self.qlora)"
    )
    assert "(has(self.lora.r) && has(self.qlora.r))" in once["rule"]
    assert "quantType" not in once["rule"]  # qlora's own options have no twin under lora
    assert "under both lora and qlora" in once["message"]


def _method_cel_verdicts(method: dict[str, Any]) -> list[str]:
    """The messages of the spec.method CEL rules that refuse ``method``."""
    import celpy

    env = celpy.Environment()
    rules = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"][
        "properties"
    ]["method"]["x-kubernetes-validations"]
    return [
        rule["message"]
        for rule in rules
        if "oldSelf" not in rule["rule"]
        and not env.program(env.compile(rule["rule"])).evaluate({"self": celpy.json_to_cel(method)})
    ]


@pytest.mark.parametrize(
    ("method", "refused_by"),
    [
        ({"type": "qlora", "lora": {"r": 8}}, None),
        ({"type": "qlora", "lora": {"r": 8}, "qlora": {"quantType": "fp4"}}, None),
        ({"type": "qlora", "qlora": {"r": 8, "quantType": "fp4"}}, None),
        ({"lora": {"r": 8}}, None),
        ({"type": "lora", "lora": {"r": 8}}, None),
        ({"type": "adalora", "lora": {"r": 8}}, "section 'lora' is set but type is not lora"),
        ({"type": "lora", "qlora": {"r": 8}}, "section 'qlora' is set but type is not qlora"),
        ({"qlora": {}}, "section 'qlora' is set but type is not qlora"),
        (
            {"type": "qlora", "lora": {"r": 8}, "qlora": {"r": 16}},
            "an option is set under both lora and qlora",
        ),
        (
            {"type": "qlora", "lora": {"alpha": 8}, "qlora": {"loraPlusRatio": 4, "alpha": 2}},
            "an option is set under both lora and qlora",
        ),
    ],
)
def test_method_cel_rules_agree_with_pydantic(
    method: dict[str, Any], refused_by: str | None
) -> None:
    refused = _method_cel_verdicts(method)
    if refused_by is None:
        assert refused == []
        MethodSpec.model_validate(method)
    else:
        assert len(refused) == 1 and refused[0].startswith(refused_by), refused
        with pytest.raises(ValueError):
            MethodSpec.model_validate(method)


def test_metadata_name_cel_rule(schema: dict[str, Any]) -> None:
    # the first rule; the others are cross-field rules over the whole object
    rule = schema["x-kubernetes-validations"][0]
    assert "self.metadata.name.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')" in rule["rule"]
    assert "size(self.metadata.name) <= 63" in rule["rule"]


def test_every_spec_field_but_suspend_is_immutable(schema: dict[str, Any]) -> None:
    spec = at(schema, "spec")
    for name, prop in spec["properties"].items():
        rules = [r["rule"] for r in prop.get("x-kubernetes-validations", [])]
        if name == "suspend":
            assert "self == oldSelf" not in rules
        else:
            assert "self == oldSelf" in rules, name
    presence = spec["x-kubernetes-validations"][-1]["rule"]
    assert "has(self.runPolicy) == has(oldSelf.runPolicy)" in presence
    assert "suspend" not in presence


def _integers(node: Any, path: str = "") -> list[tuple[str, dict[str, Any]]]:
    """Every schema node of type integer under ``node``, with its path."""
    found = []
    if isinstance(node, dict):
        if node.get("type") == "integer":
            found.append((path, node))
        for key, value in node.items():
            found += _integers(value, f"{path}.{key}" if path else key)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found += _integers(value, f"{path}[{i}]")
    return found


def test_every_integer_is_int64_as_validate_holds_it(schema: dict[str, Any]) -> None:
    """The API server stores whole numbers in 64 bits and `finetune validate` refuses a
    larger one (manifests.INT64_MAX): the schema says so for every integer field."""
    integers = [(path, node) for path, node in _integers(schema) if ".anyOf" not in path]
    assert len(integers) > 20
    assert [path for path, node in integers if node.get("format") != "int64"] == []


def test_a_mixture_weight_is_bounded_so_the_sum_is_finite(schema: dict[str, Any]) -> None:
    from finetune_api.config.data import MAX_MIXTURE_SOURCES, MAX_MIXTURE_WEIGHT

    weight = at(schema, "spec.dataset.mixture")["items"]["properties"]["weight"]
    assert weight["maximum"] == MAX_MIXTURE_WEIGHT
    # The trainer's share of a source, rows x weight / sum(weights), stays finite.
    total = math.fsum([MAX_MIXTURE_WEIGHT] * MAX_MIXTURE_SOURCES)
    assert math.isfinite(2**60 * MAX_MIXTURE_WEIGHT / total)
