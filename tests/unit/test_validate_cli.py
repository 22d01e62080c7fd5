"""`finetune validate`: exit codes, and error messages that name the field and the fix.

Every file in tests/manifests/invalid/ is one mistake a person makes. Its ``# expect:``
comment lines are fragments that must all appear in the command's output (files that
cannot hold a comment, like the empty one, get theirs from ``EXPECT_WITHOUT_COMMENTS``).
"""

from __future__ import annotations

import subprocess
import sys
import typing
from pathlib import Path

import pytest
from pydantic import ValidationError
from pydantic_core import InitErrorDetails
from pydantic_core.core_schema import ErrorType
from typer.testing import CliRunner

from finetune_api.manifests import (
    ManifestError,
    check_documents,
    explain,
    load_yaml_documents,
    validate_body,
)
from finetune_api.render import render_trainer_config
from finetune_api.resource import FineTuneJob
from finetune_api.rules import RULE_ERROR
from finetune_cli.app import EXIT_INVALID, app

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = ROOT / "tests" / "manifests"
VALID = sorted((MANIFESTS / "valid").glob("*.yaml"))
MINIMAL = MANIFESTS / "valid" / "minimal.yaml"
INVALID = sorted((MANIFESTS / "invalid").glob("*.yaml"))
EXAMPLES = sorted((ROOT / "examples").glob("**/*.yaml"))

EXPECT_WITHOUT_COMMENTS = {
    "empty.yaml": ["empty.yaml: no YAML documents found"],
}

# The mistakes the brief names; each must keep a file of its own.
REQUIRED_CASES = {
    "typo-top-level-section.yaml",
    "unknown-nested-field.yaml",
    "wrong-method-type.yaml",
    "method-section-mismatch.yaml",
    "validation-split-out-of-range.yaml",
    "validation-and-split.yaml",
    "bad-uri-scheme.yaml",
    "dataset-unknown-extension.yaml",
    "bad-metadata-name.yaml",
    "negative-batch-size.yaml",
    "bad-cpu-quantity.yaml",
    "target-modules-wrong-type.yaml",
    "wrong-api-version.yaml",
    "wrong-kind.yaml",
    "multi-document-one-bad.yaml",
    "not-yaml.yaml",
    "empty.yaml",
    # issue 14: each refusal of the preference and reinforcement tasks, offline
    "preference-with-messages.yaml",
    "prompts-for-causal-lm.yaml",
    "preference-with-prefix.yaml",
    "packing-with-preference.yaml",
    "preference-section-on-causal-lm.yaml",
    "reinforcement-without-rewards.yaml",
    "reinforcement-empty-rewards.yaml",
    "regex-reward-without-pattern.yaml",
    "reward-field-of-another-type.yaml",
    "unsafe-reward-pattern.yaml",
    "label-smoothing-with-ipo.yaml",
    "precompute-reference-with-orpo.yaml",
}

runner = CliRunner()


def expectations(path: Path) -> list[str]:
    prefix = "# expect:"
    lines = path.read_text(encoding="utf-8").splitlines()
    found = [line[len(prefix) :].strip() for line in lines if line.startswith(prefix)]
    return found + EXPECT_WITHOUT_COMMENTS.get(path.name, [])


def manifest(spec_yaml: str, name: str = "job") -> str:
    """A FineTuneJob document around an indented ``spec:`` body."""
    return (
        "apiVersion: finetune-operator.io/v1alpha1\nkind: FineTuneJob\n"
        f"metadata:\n  name: {name}\nspec:\n{spec_yaml}"
    )


BASE_SPEC = "  model: {uri: hf://org/model}\n  dataset: {train: file://train.jsonl}\n"


def only_job(text: str) -> FineTuneJob:
    (doc,) = check_documents(text, "test.yaml")
    assert doc.problems == [], doc.problems
    assert doc.job is not None
    return doc.job


# --------------------------------------------------------------------------- the CLI


def test_the_fixture_directories_hold_what_the_tests_rely_on() -> None:
    assert VALID, "tests/manifests/valid/ is empty"
    names = {p.name for p in INVALID}
    assert names >= REQUIRED_CASES, f"missing invalid manifests: {REQUIRED_CASES - names}"


@pytest.mark.parametrize("path", VALID, ids=lambda p: p.name)
def test_valid_manifest_exits_zero(path: Path) -> None:
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 0, result.output
    assert ": valid" in result.stdout
    assert "invalid" not in result.output


def test_all_valid_manifests_at_once() -> None:
    result = runner.invoke(app, ["validate", *map(str, VALID)])
    assert result.exit_code == 0, result.output
    # one line per document: two-jobs.yaml holds two (and one empty document, skipped)
    assert result.stdout.count(": valid") == len(VALID) + 1


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.name)
def test_invalid_manifest_exits_2_and_says_what_to_fix(path: Path) -> None:
    expected = expectations(path)
    assert expected, f"{path.name}: add '# expect: <fragment>' lines naming the field and the fix"
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == EXIT_INVALID, result.output
    assert result.exit_code == 2  # the documented status for invalid manifests
    assert isinstance(result.exception, SystemExit), result.exception  # no crash
    assert "Traceback" not in result.output
    for fragment in expected:
        assert fragment in result.output, f"{fragment!r} not in:\n{result.output}"


def test_problems_go_to_stderr_and_valid_lines_to_stdout() -> None:
    bad = MANIFESTS / "invalid" / "multi-document-one-bad.yaml"
    result = runner.invoke(app, ["validate", str(bad)])
    assert "good-job: valid" in result.stdout
    assert "bad-job: invalid" in result.stderr
    assert "spec.training.epochs" in result.stderr


def test_one_bad_file_fails_the_run_but_every_file_is_reported() -> None:
    bad = MANIFESTS / "invalid" / "typo-top-level-section.yaml"
    result = runner.invoke(app, ["validate", str(bad), str(MINIMAL)])
    assert result.exit_code == 2
    assert "did you mean 'training'?" in result.output
    assert f"{MINIMAL} (document 1) minimal: valid" in result.stdout


def test_missing_file_and_directory(tmp_path: Path) -> None:
    result = runner.invoke(app, ["validate", str(tmp_path / "nope.yaml"), str(tmp_path)])
    assert result.exit_code == 2
    assert "nope.yaml: no such file" in result.output
    assert "is a directory; pass a YAML file" in result.output


def test_binary_file_is_not_a_traceback(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"\xff\xfe\x00\x81binary")
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 2
    assert "not a text file (YAML must be UTF-8)" in result.output


def test_comment_only_file_counts_as_empty(tmp_path: Path) -> None:
    path = tmp_path / "comments.yaml"
    path.write_text("# nothing here\n---\n", encoding="utf-8")
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 2
    assert "no YAML documents found" in result.output


def test_console_script_entry_point() -> None:
    # The real process: exit status and streams as a shell or CI sees them.
    bad = MANIFESTS / "invalid" / "validation-and-split.yaml"
    proc = subprocess.run(
        [sys.executable, "-m", "finetune_cli.app", "validate", str(MINIMAL), str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2, proc.stderr
    assert "(document 1) minimal: valid" in proc.stdout
    assert "spec.dataset: set either validation" in proc.stderr


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: str(p.relative_to(ROOT)))
def test_examples_validate(path: Path) -> None:
    """The manifests users copy never drift from the schema (other kinds are skipped)."""
    docs = load_yaml_documents(path.read_text(encoding="utf-8"), str(path))
    jobs = [d for d in docs if isinstance(d, dict) and d.get("kind") == "FineTuneJob"]
    for body in jobs:
        _, problems = validate_body(body)
        assert problems == [], f"{path.relative_to(ROOT)}: {[str(p) for p in problems]}"


# --------------------------------------------------------------------------- YAML 1.2 numbers


def test_exponent_without_dot_is_a_number() -> None:
    # YAML 1.1 (PyYAML's default) reads 1e-4 as the string "1e-4"; kubectl reads a number.
    (doc,) = load_yaml_documents("learningRate: 1e-4\nbig: 5E+3\nplain: 2.5e-5\n", "t")
    assert doc == {"learningRate": 0.0001, "big": 5000.0, "plain": 2.5e-5}
    assert isinstance(doc["learningRate"], float)


def test_learning_rate_1e_minus_4_is_the_float() -> None:
    job = only_job(manifest(BASE_SPEC + "  training: {learningRate: 1e-4}\n"))
    assert job.spec.training.learning_rate == 0.0001
    assert type(job.spec.training.learning_rate) is float


@pytest.mark.parametrize(("written", "value"), [("1e3", 1000), ("1.5e3", 1500), ("2.0", 2)])
def test_whole_floats_are_accepted_for_integers(written: str, value: int) -> None:
    job = only_job(manifest(BASE_SPEC + f"  training: {{maxSteps: {written}}}\n"))
    assert job.spec.training.max_steps == value
    assert type(job.spec.training.max_steps) is int


def test_fractional_float_for_an_integer_is_refused() -> None:
    (doc,) = check_documents(manifest(BASE_SPEC + "  training: {maxSteps: 1e-1}\n"), "t")
    assert [p.path for p in doc.problems] == ["spec.training.maxSteps"]
    assert "fractional part" in doc.problems[0].message


def test_strings_that_look_like_numbers_when_quoted_stay_strings() -> None:
    (doc,) = load_yaml_documents("revision: '1e3'\nname: e10\n", "t")
    assert doc == {"revision": "1e3", "name": "e10"}


def test_the_yaml_12_resolver_does_not_leak_into_pyyaml() -> None:
    import yaml

    assert yaml.safe_load("x: 1e-4") == {"x": "1e-4"}


# --------------------------------------------------------------------------- defaults


def test_trust_remote_code_defaults_false_and_survives_rendering() -> None:
    job = only_job(manifest(BASE_SPEC))
    assert job.spec.model.trust_remote_code is False
    config = render_trainer_config(job, "file://./out")
    assert config.model.trust_remote_code is False


def test_defaults_fill_every_section() -> None:
    job = only_job(manifest(BASE_SPEC))
    assert job.spec.method.type == "lora"
    assert job.spec.method.options().r == 16
    assert job.spec.method.options().target_modules == "all-linear"
    assert job.spec.training.learning_rate == 2e-4
    assert job.spec.dataset.format == "messages"
    assert job.spec.dataset.effective_validation_split == 0.1
    assert job.spec.resources.nodes == 1
    assert job.spec.output.uri is None


def test_explicit_validation_file_means_no_split() -> None:
    spec = (
        "  model: {uri: hf://org/model}\n"
        "  dataset: {train: file://a.jsonl, validation: file://b.jsonl}\n"
    )
    job = only_job(manifest(spec))
    assert job.spec.dataset.validation == "file://b.jsonl"
    assert job.spec.dataset.validation_split is None


@pytest.mark.parametrize(
    ("resources", "cpu"),
    [("{cpu: 2}", 2), ("{cpu: 2.0}", 2), ("{cpu: '500m'}", "500m"), ("{cpu: 1.5}", None)],
)
def test_cpu_quantities(resources: str, cpu: int | str | None) -> None:
    (doc,) = check_documents(manifest(BASE_SPEC + f"  resources: {resources}\n"), "t")
    if cpu is None:
        assert [p.path for p in doc.problems] == ["spec.resources.cpu"]
    else:
        assert doc.job is not None, doc.problems
        assert doc.job.spec.resources.cpu == cpu


@pytest.mark.parametrize("value", ["true", "0", "-1"])
def test_cpu_is_never_a_boolean_zero_or_negative(value: str) -> None:
    (doc,) = check_documents(manifest(BASE_SPEC + f"  resources: {{cpu: {value}}}\n"), "t")
    assert [p.path for p in doc.problems] == ["spec.resources.cpu"]


# --------------------------------------------------------------------------- issue 23:
# what the API server refuses, `validate` refuses, in words a manifest's author can act on


def problems_of(spec_yaml: str) -> list[str]:
    (doc,) = check_documents(manifest(spec_yaml), "t.yaml")
    assert doc.job is None, "expected the manifest to be refused"
    return [str(p) for p in doc.problems]


def test_an_empty_section_is_named_with_its_fields_not_its_class() -> None:
    (problem,) = problems_of("  model:\n  dataset: {train: file://train.jsonl}\n")
    assert problem.startswith("spec.model: must be a section of fields (uri, revision")
    assert "got nothing" in problem
    assert "ModelSource" not in problem and "Input should" not in problem


@pytest.mark.parametrize(
    ("spec", "path", "fragment"),
    [
        (
            "  model: {uri: hf://org/model, trustRemoteCode: 'true'}\n",
            "spec.model.trustRemoteCode",
            "must be true or false; got the text 'true'; write it without quotes",
        ),
        (
            "  training: {epochs: '8'}\n",
            "spec.training.epochs",
            "must be a whole number; got the text '8'; write it without quotes",
        ),
        (
            "  training: {learningRate: '1e-4'}\n",
            "spec.training.learningRate",
            "must be a number; got the text '1e-4'; write it without quotes",
        ),
        (
            "  training: {packing: 1}\n",
            "spec.training.packing",
            "must be true or false; got the whole number 1",
        ),
        (
            "  model: {uri: hf://org/model, revision: 1234}\n",
            "spec.model.revision",
            "must be text (a string); got the whole number 1234; quote it to write it as text",
        ),
        (
            "  resources: {nodeSelector: {gpu: true}}\n",
            "spec.resources.nodeSelector.gpu",
            "must be text (a string); got the boolean true; quote it to write it as text",
        ),
    ],
)
def test_values_the_crd_refuses_are_refused_with_the_field(
    spec: str, path: str, fragment: str
) -> None:
    own_model = spec.startswith("  model:")
    body = spec + "  dataset: {train: file://train.jsonl}\n" if own_model else BASE_SPEC + spec
    assert problems_of(body) == [f"{path}: {fragment}"]


@pytest.mark.parametrize("value", [str(2**63), str(-(2**63) - 1), "1e19", "1e300"])
def test_integers_beyond_int64_are_refused(value: str) -> None:
    (problem,) = problems_of(BASE_SPEC + f"  training: {{maxSteps: {value}}}\n")
    assert problem.startswith("spec.training.maxSteps: ")
    assert "64 bits" in problem


def test_int64_max_itself_is_accepted() -> None:
    job = only_job(manifest(BASE_SPEC + f"  training: {{maxSteps: {2**63 - 1}}}\n"))
    assert job.spec.training.max_steps == 2**63 - 1


def test_a_key_written_twice_is_refused_with_its_line() -> None:
    text = manifest(
        BASE_SPEC + "  training:\n    epochs: 3\n  method: {type: lora}\n"
        "  training:\n    learningRate: 1e-4\n"
    )
    with pytest.raises(ManifestError) as caught:
        check_documents(text, "job.yaml")
    message = str(caught.value)
    assert "job.yaml: not valid YAML at line 11" in message
    assert "key 'training' appears twice in this mapping (first at line 8)" in message


def test_a_key_written_twice_exits_2_from_the_cli(tmp_path: Path) -> None:
    path = tmp_path / "twice.yaml"
    path.write_text(manifest(BASE_SPEC + "  training: {epochs: 3}\n  training: {epochs: 4}\n"))
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 2, result.output
    assert "key 'training' appears twice" in result.output


def test_a_merge_key_may_be_overridden() -> None:
    (doc,) = load_yaml_documents("base: &b {x: 1, y: 2}\nother:\n  <<: *b\n  x: 3\n", "t")
    assert doc["other"] == {"x": 3, "y": 2}


def test_dates_stay_strings_as_kubectl_sends_them() -> None:
    (doc,) = load_yaml_documents("revision: 2024-01-01\n", "t")
    assert doc == {"revision": "2024-01-01"}
    job = only_job(
        manifest(
            "  model: {uri: hf://org/model, revision: 2024-01-01}\n"
            "  dataset: {train: file://train.jsonl}\n"
        )
    )
    assert job.spec.model.revision == "2024-01-01"


def test_an_alias_bomb_is_refused_not_expanded() -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 7)]
    text = manifest(
        BASE_SPEC + "  resources:\n    affinity:\n" + "".join(f"      {line}\n" for line in lines)
    )
    (problem,) = problems_of_text(text)
    assert "holds more than" in problem


def problems_of_text(text: str) -> list[str]:
    (doc,) = check_documents(text, "t.yaml")
    return [str(p) for p in doc.problems]


def test_a_union_field_is_one_problem_naming_both_forms() -> None:
    (problem,) = problems_of(BASE_SPEC + "  resources: {cpu: [1]}\n")
    assert problem == "spec.resources.cpu: must be a whole number or text (a string); got a list"


_CONTEXT = {
    "error": "bad value",
    "class_name": "ModelSource",
    "class": "ModelSource",
    "attribute": "x",
    "method_name": "x",
    "gt": 0,
    "ge": 0,
    "lt": 1,
    "le": 1,
    "multiple_of": 2,
    "field_type": "List",
    "min_length": 1,
    "max_length": 2,
    "actual_length": 3,
    "pattern": "^[a-z]+$",
    "expected": "'a' or 'b'",
    "encoding": "utf-8",
    "encoding_unicode_error": "x",
    "tz_expected": 0,
    "discriminator": "'type'",
    "tag": "x",
    "expected_tags": "'a'",
    "expected_schemes": "'s3'",
    "expected_version": 4,
    "max_digits": 2,
    "decimal_places": 2,
    "whole_digits": 2,
    "expected_type": "str",
    "type_name": "ModelSource",
    "fields": ["a"],
    "messages": ["m"],
}
_ERROR_TYPES = typing.get_args(ErrorType)


@pytest.mark.parametrize("kind", _ERROR_TYPES)
@pytest.mark.parametrize("value", [None, "8", {"a": 1}])
def test_every_pydantic_error_reads_as_plain_words(kind: str, value: object) -> None:
    """Whatever pydantic can raise, the message names the field and never pydantic's
    phrasing ("Input should be"), its docs or a model's class name."""
    try:
        exc = ValidationError.from_exception_data(
            "FineTuneJob",
            [InitErrorDetails(type=kind, loc=("spec", "model"), input=value, ctx=_CONTEXT)],  # type: ignore[typeddict-item]
        )
    except (KeyError, TypeError, ValueError):
        pytest.skip(f"pydantic cannot build {kind} without more context")
    problems = explain(exc, FineTuneJob)
    assert problems, kind
    for problem in problems:
        text = str(problem)
        if kind != RULE_ERROR:
            assert text.startswith("spec.model: "), text
        for leak in ("should", "pydantic", "ModelSource", "http", "[type="):
            assert leak not in text, f"{kind}: {text}"


def test_mixture_weights_whose_sum_overflows_are_refused() -> None:
    spec = (
        "  model: {uri: hf://org/model}\n  dataset:\n    mixture:\n"
        "      - {train: file://a.jsonl, weight: 1e308}\n"
        "      - {train: file://b.jsonl, weight: 1e308}\n"
    )
    problems = problems_of(spec)
    assert [p.split(":")[0] for p in problems] == [
        "spec.dataset.mixture[0].weight",
        "spec.dataset.mixture[1].weight",
    ]
    assert "must be less than or equal to 1000000000" in problems[0]


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("ftp://host/out", "scheme 'ftp://' is not supported"),
        ("hf://my-adapter", "names no organisation"),
        ("s3://", "is not a valid bucket name"),
    ],
)
def test_run_names_output_when_its_value_is_invalid(
    tmp_path: Path, value: str, fragment: str
) -> None:
    """An invalid --output is reported against --output, in plain words, before any
    training starts (exit 2), not as a problem of the manifest's own fields."""
    path = tmp_path / "job.yaml"
    path.write_text(manifest(BASE_SPEC))
    result = runner.invoke(app, ["run", str(path), "--output", value])
    assert result.exit_code == 2, result.output
    assert result.output.startswith(f"--output {value}: "), result.output
    assert fragment in result.output
    for leak in ("pydantic", "Input should", "TrainerConfig", "OutputTarget", f"{path}:"):
        assert leak not in result.output


@pytest.mark.parametrize("value", ["1e20", "1e300", "1.7e308"])
def test_a_huge_whole_number_for_a_float_field_stays_a_number(value: str) -> None:
    """kubectl sends 1e20 as a JSON number, which a number field takes: only integer
    fields are held to int64."""
    job = only_job(manifest(BASE_SPEC + f"  training: {{maxGradNorm: {value}}}\n"))
    assert job.spec.training.max_grad_norm == float(value)
