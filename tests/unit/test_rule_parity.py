"""One validation path: every cross-field rule gets the same verdict everywhere.

For each rule of :data:`finetune_api.rules.RULES`, a spec that breaks it and one that
keeps it (the smallest change apart) go through every place that judges a spec:

- ``finetune validate`` and ``finetune validate --cluster`` (the CLI),
- the operator's admission, which refuses before it creates any child object,
- the trainer reading the TrainerConfig it is given (``finetune train --config``),
- the CEL twin in the generated CRD, as a real API server evaluates it at apply time.

Each must refuse the breaking spec (the trainer and plain ``validate`` only for rules of
every target: a TrainerConfig has no pods or GPUs to check) with the same field path and
message, and accept the other. A new rule without its two cases fails the first test.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import celpy
import pytest
import yaml
from typer.testing import CliRunner

from finetune_api.crd import build_crd
from finetune_api.rules import RULES, Rule
from finetune_cli.app import app
from finetune_trainer.config_file import parse_trainer_config
from finetune_trainer.errors import ConfigError

NAME = "parity"
BASE_SPEC: dict[str, Any] = {
    "model": {"uri": "hf://HuggingFaceTB/SmolLM2-135M-Instruct"},
    "dataset": {"train": "s3://data-bucket/chat/train.jsonl"},
    "method": {"type": "lora"},
    "training": {"maxSteps": 20},
    "resources": {"gpus": 1},
    "output": {"uri": "s3://artifacts-bucket/adapters/parity"},
}
DELETE = object()
"""A patch value that removes the key."""

CLASSIFY = {"task": "sequence-classification", "dataset": {"format": "classification"}}
IMAGES = {
    "task": "image-classification",
    "dataset": {"format": "image-manifest", "train": "file:///data/images.jsonl"},
    "method": {"type": "full"},
}
PREFERENCE = {"task": "preference", "dataset": {"format": "preference"}}
REINFORCEMENT = {
    "task": "reinforcement",
    "dataset": {"format": "prompts"},
    "reinforcement": {"rewards": [{"type": "exactMatch"}]},
}
STREAM = {
    "dataset": {
        "streaming": True,
        "deduplicate": False,
        "validation": "s3://data-bucket/chat/validation.jsonl",
    }
}
TEACHER = {"distillation": {"teacherUri": "hf://HuggingFaceTB/SmolLM2-360M-Instruct"}}

# rule name -> (a patch that breaks it, a patch that keeps it), each applied to BASE_SPEC;
# "metadata.name" patches the object's name.
CASES: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "early-stopping-needs-periodic-evaluation": (
        {"training": {"earlyStopping": {"metric": "evalLoss"}}},
        {"training": {"earlyStopping": {"metric": "evalLoss"}}, "evaluation": {"everySteps": 5}},
    ),
    "early-stopping-metric-is-measured": (
        {"training": {"earlyStopping": {"metric": "accuracy"}}, "evaluation": {"everySteps": 5}},
        {
            "training": {"earlyStopping": {"metric": "tokenAccuracy"}},
            "evaluation": {"everySteps": 5},
        },
    ),
    "distillation-fits-the-task": (
        {**CLASSIFY, "training": TEACHER},
        {"training": TEACHER},
    ),
    "retention-fits-the-task": (
        {**CLASSIFY, "evaluation": {"retention": {"dataset": "s3://data-bucket/general.jsonl"}}},
        {"evaluation": {"retention": {"dataset": "s3://data-bucket/general.jsonl"}}},
    ),
    "bert-score-fits-the-task": (
        {**CLASSIFY, "evaluation": {"bertScore": {"model": "hf://org/encoder"}}},
        {"evaluation": {"bertScore": {"model": "hf://org/encoder"}}},
    ),
    "fsdp-cannot-shard-4bit-weights": (
        {"method": {"type": "qlora"}, "resources": {"gpus": 2, "strategy": "fsdp"}},
        {"method": {"type": "lora"}, "resources": {"gpus": 2, "strategy": "fsdp"}},
    ),
    "fsdp-fits-the-task": (
        {**IMAGES, "resources": {"gpus": 2, "strategy": "fsdp"}},
        {**IMAGES, "resources": {"gpus": 2, "strategy": "ddp"}},
    ),
    "adalora-leaves-steps-to-reallocate": (
        {
            "method": {"type": "adalora", "adalora": {"tinit": 5, "tfinal": 5}},
            "training": {"maxSteps": 10},
        },
        {
            "method": {"type": "adalora", "adalora": {"tinit": 5, "tfinal": 5}},
            "training": {"maxSteps": 11},
        },
    ),
    "gate-metric-fits-the-task": (
        {**CLASSIFY, "evaluation": {"gate": [{"metric": "bleu", "min": 0.2}]}},
        {**CLASSIFY, "evaluation": {"gate": [{"metric": "accuracy", "min": 0.9}]}},
    ),
    "gate-metric-is-measured": (
        {"evaluation": {"exactMatchSamples": 0, "gate": [{"metric": "exactMatch", "min": 0.9}]}},
        {"evaluation": {"exactMatchSamples": 8, "gate": [{"metric": "exactMatch", "min": 0.9}]}},
    ),
    "output-apart-from-inputs": (
        {"output": {"uri": "s3://data-bucket/chat"}},  # holds dataset.train
        {"output": {"uri": "s3://data-bucket/chat-adapters"}},
    ),
    "merge-needs-a-weight-adapter": (
        {"method": {"type": "prefix"}, "output": {"merge": True}},
        {"method": {"type": "lora"}, "output": {"merge": True}},
    ),
    "merge-is-not-for-images": (
        {**IMAGES, "method": {"type": "lora"}, "output": {"merge": True}},
        {**IMAGES, "method": {"type": "lora"}},
    ),
    "cluster-needs-an-output": ({"output": DELETE}, {}),
    "pod-names-fit": (
        {"metadata.name": "n" * 62, "resources": {"nodes": 2}},
        {"metadata.name": "n" * 61, "resources": {"nodes": 2}},
    ),
    "fp16-needs-a-gpu": (
        {"training": {"precision": "fp16"}, "resources": {"gpus": 0}},
        {"training": {"precision": "fp16"}, "resources": {"gpus": 1}},
    ),
    "early-stopping-fits-the-method": (
        {
            "method": {"type": "progressive"},
            "training": {"earlyStopping": {"metric": "evalLoss"}},
            "evaluation": {"everySteps": 5},
        },
        {
            "method": {"type": "freeze"},
            "training": {"earlyStopping": {"metric": "evalLoss"}},
            "evaluation": {"everySteps": 5},
        },
    ),
    "growing-set-trains-in-one-process": (
        {"method": {"type": "progressive"}, "resources": {"gpus": 2}},
        {"method": {"type": "progressive"}, "resources": {"gpus": 1}},
    ),
}
CASES |= {
    "format-fits-the-task": (
        {"task": "preference"},  # reads dataset.format messages
        PREFERENCE,
    ),
    "streaming-needs-max-steps": (
        {**STREAM, "training": DELETE},
        STREAM,
    ),
    "streaming-fits-the-task": (
        {**STREAM, "training": {"packing": True}},
        STREAM,
    ),
    "packing-fits-the-task": (
        {**PREFERENCE, "training": {"packing": True}},
        {"training": {"packing": True}},
    ),
    "method-fits-the-task": (
        {**PREFERENCE, "method": {"type": "prefix"}},
        {**PREFERENCE, "method": {"type": "full"}},
    ),
    "preference-fits-the-task": (
        {"preference": {"loss": "ipo"}},
        {**PREFERENCE, "preference": {"loss": "ipo"}},
    ),
    "reinforcement-fits-the-task": (
        {k: v for k, v in REINFORCEMENT.items() if k != "reinforcement"},
        REINFORCEMENT,
    ),
    "contrastive-fits-the-task": (
        {"contrastive": {"loss": "triplet"}},
        {
            "task": "sentence-embedding",
            "dataset": {"format": "pairs"},
            "method": {"type": "full"},
            "contrastive": {"loss": "triplet"},
        },
    ),
    "image-classification-fits-the-task": (
        {"imageClassification": {"headLrMultiplier": 5}},
        {**IMAGES, "imageClassification": {"headLrMultiplier": 5}},
    ),
}
# How the rule's spec field is named in a TrainerConfig, where it differs.
TRAINER_FIELD = {"resources.strategy": "distributed.strategy"}


def manifest(patch: dict[str, Any]) -> dict[str, Any]:
    spec = copy.deepcopy(BASE_SPEC)
    name = NAME
    for key, value in patch.items():
        if key == "metadata.name":
            name = value
        elif value is DELETE:
            spec.pop(key, None)
        elif isinstance(value, dict):
            spec[key] = {**spec.get(key, {}), **copy.deepcopy(value)}
        else:
            spec[key] = value
    return {
        "apiVersion": "finetune-operator.io/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": name, "namespace": "ml", "uid": "u-1"},
        "spec": spec,
    }


def trainer_config_json(body: dict[str, Any]) -> str:
    """The TrainerConfig the operator would render for ``body``, written without the
    models (so a spec they refuse still reaches the trainer, as a stale or hand-written
    config would)."""
    import json

    spec = body["spec"]
    resources = spec.get("resources", {})
    config = {
        "apiVersion": "trainer.finetune-operator.io/v1alpha1",
        "jobName": body["metadata"]["name"][:63],
        **{
            k: spec[k]
            for k in (
                "task",
                "model",
                "dataset",
                "method",
                "training",
                "preference",
                "reinforcement",
                "contrastive",
                "imageClassification",
            )
            if k in spec
        },
        "evaluation": spec.get("evaluation", {}),
        "output": spec.get("output") or {"uri": "file:///tmp/parity-out"},
        "distributed": {
            "nodes": resources.get("nodes", 1),
            "processesPerNode": max(1, resources.get("gpus", 0)),
            "strategy": resources.get("strategy", "auto"),
        },
    }
    return json.dumps(config)


# --------------------------------------------------------------------------- the judges


def cli_verdict(body: dict[str, Any], tmp_path: Path, *, cluster: bool) -> tuple[bool, str]:
    path = tmp_path / f"job-{'cluster' if cluster else 'job'}.yaml"
    path.write_text(yaml.safe_dump(body))
    args = ["validate", str(path), *(["--cluster"] if cluster else [])]
    result = CliRunner().invoke(app, args)
    assert result.exit_code in (0, 2), result.output
    assert "Traceback" not in result.output
    return result.exit_code == 0, result.output


def operator_verdict(body: dict[str, Any]) -> tuple[bool, str]:
    from finetune_operator.reconcile import admit

    job, message = admit(copy.deepcopy(body))
    return job is not None, message


def trainer_verdict(body: dict[str, Any]) -> tuple[bool, str]:
    try:
        parse_trainer_config(trainer_config_json(body), "trainer-config.json")
    except ConfigError as exc:
        return False, str(exc)
    return True, ""


_CEL = celpy.Environment()


def cel_rules_of_the_crd() -> Iterator[tuple[str, str, bool]]:
    """(rule, message, on the whole object) for every non-transition CEL rule the CRD
    puts on the spec or on the object."""
    schema = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for entry in schema["x-kubernetes-validations"]:
        yield entry["rule"], entry.get("message", ""), True
    for entry in schema["properties"]["spec"]["x-kubernetes-validations"]:
        if "oldSelf" not in entry["rule"]:
            yield entry["rule"], entry.get("message", ""), False


def cel_holds(rule: str, body: dict[str, Any], on_object: bool) -> bool:
    program = _CEL.program(_CEL.compile(rule))
    target = body if on_object else body["spec"]
    return bool(program.evaluate({"self": celpy.json_to_cel(target)}))


# --------------------------------------------------------------------------- the tests


def test_every_rule_has_a_breaking_and_a_keeping_case() -> None:
    assert set(CASES) == {rule.name for rule in RULES}


def test_the_cel_twin_knows_every_method_on_a_quantised_base() -> None:
    from finetune_api.config.methods import METHODS
    from finetune_api.rules import _QUANTIZED

    assert [name for name, entry in METHODS.items() if entry.quantized_base] == _QUANTIZED


def test_the_cel_twin_knows_every_method_with_nothing_to_merge() -> None:
    from finetune_api.config.methods import METHODS
    from finetune_api.rules import _VIRTUAL_TOKENS, _WHOLE_MODELS

    assert sorted(n for n, e in METHODS.items() if e.virtual_tokens) == _VIRTUAL_TOKENS
    assert sorted(n for n, e in METHODS.items() if e.artifact == "model") == _WHOLE_MODELS


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.name)
def test_a_spec_that_keeps_the_rule_is_accepted_everywhere(rule: Rule, tmp_path: Path) -> None:
    body = manifest(CASES[rule.name][1])
    assert cli_verdict(body, tmp_path, cluster=False)[0]
    assert cli_verdict(body, tmp_path, cluster=True)[0]
    assert operator_verdict(body)[0]
    assert trainer_verdict(body)[0]
    for cel, message, on_object in cel_rules_of_the_crd():
        assert cel_holds(cel, body, on_object), message


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.name)
def test_a_spec_that_breaks_the_rule_is_refused_with_the_same_words(
    rule: Rule, tmp_path: Path
) -> None:
    body = manifest(CASES[rule.name][0])
    field, message = rule_violation(rule, body)
    where = field if field.startswith("metadata.") else f"spec.{field}"
    said = f"{where}: {message}"

    ok, output = cli_verdict(body, tmp_path, cluster=True)
    assert not ok and said in output, output
    ok, status_message = operator_verdict(body)
    assert not ok and said in status_message, status_message

    ok, output = cli_verdict(body, tmp_path, cluster=False)
    ok_trainer, trainer_message = trainer_verdict(body)
    if rule.scope == "job":
        assert not ok and said in output, output
        trainer_field = TRAINER_FIELD.get(field, field)
        assert not ok_trainer
        assert f"{trainer_field}: {message}" in trainer_message, trainer_message
    else:  # a laptop run supplies these itself; a TrainerConfig has no pods or GPUs
        assert ok, output
        assert ok_trainer, trainer_message

    if rule.cel is not None:
        assert not cel_holds(rule.cel, body, rule.cel_on_object)
        # and it is in the CRD, where the API server reads it
        assert (rule.cel, rule.cel_on_object) in {
            (cel, on_object) for cel, _, on_object in cel_rules_of_the_crd()
        }
    # no other CEL twin refuses it: each rule breaks alone
    others = [
        message
        for cel, message, on_object in cel_rules_of_the_crd()
        if cel != rule.cel and not cel_holds(cel, body, on_object)
    ]
    assert others == []


def rule_violation(rule: Rule, body: dict[str, Any]) -> tuple[str, str]:
    """What the rule itself says of ``body``: its field path and message. The sections
    are validated on their own (JobSections carries no cross-field rule), so a spec that
    breaks one still gives the rule its facts."""
    from finetune_api.config import JobSections
    from finetune_api.resource import Resources

    spec = body["spec"]
    keys = (
        "task",
        "model",
        "dataset",
        "method",
        "training",
        "evaluation",
        "preference",
        "reinforcement",
        "contrastive",
        "imageClassification",
    )
    sections = JobSections.model_validate({k: spec[k] for k in keys if k in spec})
    resources = Resources.model_validate(spec.get("resources", {}))
    facts = sections.rule_facts(
        resources.strategy,
        "resources.strategy",
        nodes=resources.nodes,
        gpus=resources.gpus,
        name=body["metadata"]["name"],
        output_uri=(spec.get("output") or {}).get("uri"),
        merge=(spec.get("output") or {}).get("merge", False),
    )
    violation = rule.check(facts)
    assert violation is not None, f"{rule.name}: the breaking case does not break it"
    return violation.field, violation.message


# --------------------------------------------------------------------------- moved here


def cluster_problems(job: Any) -> list[str]:
    """The pod-name rule's verdict as the operator's builders used to give it."""
    from finetune_api.rules import violations

    facts = job.spec.facts(job.metadata.name)
    return [str(v) for v in violations(facts, "cluster") if v.field == "metadata.name"]


def ftj(name: str, **spec: Any) -> Any:
    from finetune_api.resource import FineTuneJob

    return FineTuneJob.model_validate(manifest({"metadata.name": name, **spec}))


def test_a_multi_node_name_must_leave_room_for_the_pod_index() -> None:
    assert cluster_problems(ftj("a" * 63)) == []  # one node: no index suffix
    (problem,) = cluster_problems(ftj("a" * 62, resources={"nodes": 16}))
    assert problem.startswith("metadata.name:") and "shorten the name by 2" in problem
    assert cluster_problems(ftj("a" * 60, resources={"nodes": 16})) == []
