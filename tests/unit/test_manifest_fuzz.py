"""Property tests of the manifest loader: whatever a file holds, `finetune validate`
either accepts it or says what is wrong (exit 2) naming a field, the file or a line:
never a traceback, never exit 1 (which a cluster retries), never pydantic's phrasing,
a link to its docs or the name of an internal model class.

Documents come from two sources: random YAML (random structure and scalars: huge
integers, NaN and infinities, unicode, deep nesting, anchors and aliases) and the
example manifests with one field changed to a random value.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from finetune_api.manifests import (
    KIND,
    ManifestError,
    Problem,
    check_documents,
    load_yaml_documents,
    model_names,
    validate_body,
)
from finetune_cli.app import app

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted(
    p
    for p in (ROOT / "examples").glob("**/*.yaml")
    if any(
        isinstance(d, dict) and d.get("kind") == KIND
        for d in load_yaml_documents(p.read_text(encoding="utf-8"), str(p))
    )
)
FAST = settings(
    max_examples=150,
    deadline=2000,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


LEAKS = {"Input should", "pydantic", "errors.pydantic.dev", "Traceback", "[type="}
CLASS_NAMES = model_names()  # the names the messages must never show


def assert_readable(problems: list[Problem], body: Any) -> None:
    assert problems, "a refused document must say why"
    for problem in problems:
        text = str(problem)
        assert text.strip(), problems
        for leak in LEAKS:
            assert leak not in text, text
        for name in CLASS_NAMES:
            if name not in json.dumps(body, default=str):  # unless the user wrote it
                assert f" {name}" not in text and f"{name} " not in text, text


def check(body: Any) -> None:
    job, problems = validate_body(body)
    if job is None:
        assert_readable(problems, body)
        if isinstance(body, dict) and body.get("kind") == KIND and "spec" in body:
            assert all(p.path for p in problems), problems  # each names a field
    else:
        assert problems == []
        json.loads(job.model_dump_json())  # what the operator stores: valid JSON


# --------------------------------------------------------------------------- random YAML

SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=2**62, max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.sampled_from(["true", "8", "1e-4", "2024-01-01", "null", "~", ".inf", "0x1F", "1_000"]),
)
KEYS = st.one_of(
    st.text(max_size=12),
    st.sampled_from(["spec", "model", "dataset", "training", "method", "lora", "uri", "train"]),
    st.integers(),
    st.booleans(),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(KEYS, inner, max_size=4),
    max_leaves=25,
)


@FAST
@given(spec=VALUES, kind=st.sampled_from([KIND, "Job", None]))
def test_random_documents_are_accepted_or_explained(spec: Any, kind: str | None) -> None:
    body = {
        "apiVersion": "finetune-operator.io/v1alpha1",
        "kind": kind,
        "metadata": {"name": "fuzz"},
        "spec": spec,
    }
    text = yaml.safe_dump(body, allow_unicode=True)
    try:
        documents = check_documents(text, "fuzz.yaml")
    except ManifestError as exc:
        assert str(exc).startswith("fuzz.yaml: ")
        return
    for doc in documents:
        if doc.job is None:
            assert_readable(doc.problems, doc.body)


@FAST
@given(st.text(max_size=200))
def test_any_text_is_a_manifest_error_or_documents(text: str) -> None:
    try:
        documents = check_documents(text, "any.yaml")
    except ManifestError as exc:
        assert str(exc).startswith("any.yaml: ")
        return
    for doc in documents:
        if doc.job is None:
            assert_readable(doc.problems, doc.body)


@FAST
@given(
    anchored=VALUES,
    where=st.sampled_from(["training", "model", "resources", "method"]),
    repeat=st.integers(min_value=1, max_value=3),
)
def test_anchors_and_aliases(anchored: Any, where: str, repeat: int) -> None:
    value = yaml.safe_dump(anchored, default_flow_style=True, allow_unicode=True).strip()
    value = value.removesuffix("...").strip() or "null"
    lines = [
        "apiVersion: finetune-operator.io/v1alpha1",
        "kind: FineTuneJob",
        "metadata: {name: fuzz}",
        f"x-shared: &v {value}",
        "spec:",
        "  model: {uri: hf://org/m}",
        "  dataset: {train: file://t.jsonl}",
        f"  {where}: *v",
    ]
    lines += [f"  extra{i}: *v" for i in range(repeat)]
    try:
        documents = check_documents("\n".join(lines) + "\n", "alias.yaml")
    except ManifestError as exc:
        assert str(exc).startswith("alias.yaml: ")
        return
    (doc,) = documents
    assert doc.job is None  # x-shared and extraN are unknown fields
    assert_readable(doc.problems, doc.body)


def test_deep_nesting_is_a_manifest_error() -> None:
    for text in ("[" * 20000, "a:\n" + "".join(f"{' ' * i}b:\n" for i in range(1, 3000))):
        try:
            check_documents(text, "deep.yaml")
        except ManifestError as exc:
            assert str(exc).startswith("deep.yaml: ")


# --------------------------------------------------------------------------- mutated examples


def _paths(node: Any, here: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every key path in ``node`` (sections and leaves)."""
    found = [here] if here else []
    if isinstance(node, dict):
        for key, value in node.items():
            found += _paths(value, (*here, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found += _paths(value, (*here, i))
    return found


def _example_bodies() -> list[dict[str, Any]]:
    bodies = []
    for path in EXAMPLES:
        for doc in load_yaml_documents(path.read_text(encoding="utf-8"), str(path)):
            if isinstance(doc, dict) and doc.get("kind") == KIND:
                bodies.append(doc)
    return bodies


BODIES = _example_bodies()


@FAST
@given(data=st.data(), value=VALUES)
def test_an_example_with_one_field_changed_is_accepted_or_explained(
    data: st.DataObject, value: Any
) -> None:
    body = copy.deepcopy(data.draw(st.sampled_from(BODIES)))
    path = data.draw(st.sampled_from([p for p in _paths(body) if p[0] == "spec"]))
    node = body
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value
    check(body)


def test_the_examples_are_the_mutation_seeds() -> None:
    assert len(BODIES) >= 5
    for body in BODIES:
        job, problems = validate_body(body)
        assert job is not None, problems


@settings(max_examples=40, deadline=5000, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), value=VALUES)
def test_validate_exits_0_or_2_and_never_prints_a_traceback(
    tmp_path_factory: Any, data: st.DataObject, value: Any
) -> None:
    body = copy.deepcopy(data.draw(st.sampled_from(BODIES)))
    path = data.draw(st.sampled_from([p for p in _paths(body) if p[0] == "spec"]))
    node = body
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value
    file = tmp_path_factory.mktemp("fuzz") / "job.yaml"
    file.write_text(yaml.safe_dump(body, allow_unicode=True), encoding="utf-8")
    result = CliRunner().invoke(app, ["validate", str(file)])
    assert result.exit_code in (0, 2), result.output
    assert isinstance(result.exception, SystemExit | None), result.exception
    for leak in LEAKS:
        assert leak not in result.output


@given(st.floats(min_value=1e300, allow_infinity=True), st.floats(min_value=1e300))
@settings(max_examples=50, deadline=2000)
def test_mixture_weights_never_make_a_traceback(a: float, b: float) -> None:
    body = copy.deepcopy(BODIES[0])
    spec = body["spec"]
    spec["dataset"] = {
        "mixture": [
            {"train": "file://a.jsonl", "weight": a},
            {"train": "file://b.jsonl", "weight": b},
        ]
    }
    job, problems = validate_body(body)
    if job is not None:
        weights = [m.weight for m in job.spec.dataset.mixture or []]
        assert math.isfinite(math.fsum(weights))
    else:
        assert all(p.path.startswith("spec.dataset") for p in problems), problems
