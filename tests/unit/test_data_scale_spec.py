"""The dataset options for data at scale (hub, streaming, shuffleBuffer,
tokenizeProcesses): each refusal names the field and the fix, and the CRD's CEL twins
accept and refuse exactly what the model does."""

from __future__ import annotations

from typing import Any

import celpy
import pytest
from pydantic import ValidationError

from finetune_api.config import DatasetSpec
from finetune_api.crd import openapi_schema

_CEL = celpy.Environment()
HUB = "hf://datasets/acme/support-chats"
STREAM = {
    "train": "s3://data-bucket/train.jsonl",
    "validation": "s3://data-bucket/val.jsonl",
    "streaming": True,
    "deduplicate": False,
}

CASES: list[tuple[dict[str, Any], str | None]] = [
    ({"train": HUB, "hub": {"subset": "en", "split": "train", "revision": "v1.0"}}, None),
    ({"train": HUB, "hub": {"validation": "test"}}, None),
    (
        {"train": "s3://data-bucket/t.jsonl", "hub": {"split": "train"}},
        "set train to hf://datasets",
    ),
    ({"train": HUB, "hub": {"validation": "test"}, "validationSplit": 0.2}, "one held-out"),
    ({"train": HUB + "/data/train.jsonl", "hub": {"split": "train"}}, "names one file"),
    ({"train": "hf://datasets/squad", "hub": {"split": "validation"}}, None),
    (
        {"train": HUB, "hub": {"validation": "test"}, "validation": "s3://data-bucket/v.jsonl"},
        "one held-out",
    ),
    (STREAM, None),
    ({**STREAM, "shuffleBuffer": 1, "tokenizeProcesses": 4}, None),
    ({"train": HUB, "hub": {"validation": "test"}, "streaming": True, "deduplicate": False}, None),
    ({**STREAM, "validation": None}, "needs a held-out file"),
    ({**STREAM, "deduplicate": True}, "deduplicate: false"),
    ({**STREAM, "train": "s3://data-bucket/train.JSON"}, "convert train to JSON Lines"),
    ({**STREAM, "train": "s3://data-bucket/train.json.gz.jsonl"}, None),
    (
        {**STREAM, "train": None, "mixture": [{"train": "s3://data-bucket/a.jsonl"}]},
        "one train source",
    ),
]


def _clean(data: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in data.items() if v is not None}


def _cel_accepts(data: dict[str, Any]) -> bool:
    rules = openapi_schema(DatasetSpec)["x-kubernetes-validations"]
    target = celpy.json_to_cel(data)
    return all(
        bool(_CEL.program(_CEL.compile(rule["rule"])).evaluate({"self": target})) for rule in rules
    )


@pytest.mark.parametrize(("data", "refusal"), CASES)
def test_the_model_and_its_cel_twins_agree(data: dict[str, Any], refusal: str | None) -> None:
    data = _clean(data)
    if refusal is None:
        DatasetSpec.model_validate(data)
    else:
        with pytest.raises(ValidationError, match=refusal):
            DatasetSpec.model_validate(data)
    assert _cel_accepts(data) == (refusal is None)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("shuffleBuffer", 0),
        ("tokenizeProcesses", 0),
        ("tokenizeProcesses", 65),
    ],
)
def test_bounds_are_refused_naming_the_field(field: str, value: int) -> None:
    with pytest.raises(ValidationError, match=field):
        DatasetSpec.model_validate({**STREAM, field: value})


@pytest.mark.parametrize("name", ["../etc", "a b", "", "-x"])
def test_hub_names_are_plain_names(name: str) -> None:
    with pytest.raises(ValidationError, match="hub"):
        DatasetSpec.model_validate({"train": HUB, "hub": {"subset": name}})
