"""Storage URI parsing: which scheme serves which role, and what each location must look like.

Output URIs get the strictest checks: the trainer writes there, so a URI must never
climb out of the place it names, whether written as ``..`` or percent-encoded.
"""

from __future__ import annotations

import pytest

from finetune_api.uri import (
    SCHEMES,
    ParsedUri,
    Role,
    UriError,
    data_suffix,
    hf_dataset_parts,
    parse_uri,
    schemes_for,
)

MODEL, DATA, OUT = Role.MODEL, Role.DATASET, Role.OUTPUT


@pytest.mark.parametrize(
    ("uri", "role", "scheme", "location"),
    [
        (
            "hf://HuggingFaceTB/SmolLM2-135M-Instruct",
            MODEL,
            "hf",
            "HuggingFaceTB/SmolLM2-135M-Instruct",
        ),
        ("hf://gpt2", MODEL, "hf", "gpt2"),
        ("hf://datasets/org/chat-data", DATA, "hf", "datasets/org/chat-data"),
        ("hf://datasets/squad", DATA, "hf", "datasets/squad"),
        ("hf://datasets/org/name/train.jsonl", DATA, "hf", "datasets/org/name/train.jsonl"),
        ("hf://datasets/org/name/data/x.parquet", DATA, "hf", "datasets/org/name/data/x.parquet"),
        ("file://./data/train.jsonl", DATA, "file", "./data/train.jsonl"),
        ("file:///abs/data/train.jsonl", DATA, "file", "/abs/data/train.jsonl"),
        ("file://../shared/models/base", MODEL, "file", "../shared/models/base"),
        ("file://./artifacts/job", OUT, "file", "./artifacts/job"),
        ("pvc://training-data/sets/train.jsonl", DATA, "pvc", "training-data/sets/train.jsonl"),
        ("pvc://models/smollm2", MODEL, "pvc", "models/smollm2"),
        ("pvc://artifacts", OUT, "pvc", "artifacts"),
        ("pvc://artifacts/team-a/job", OUT, "pvc", "artifacts/team-a/job"),
        ("s3://my-bucket/data/train.parquet", DATA, "s3", "my-bucket/data/train.parquet"),
        ("s3://my.bucket-01/models/base", MODEL, "s3", "my.bucket-01/models/base"),
        ("s3://artifacts-bucket", OUT, "s3", "artifacts-bucket"),
        ("s3://artifacts-bucket/adapters/job/", OUT, "s3", "artifacts-bucket/adapters/job/"),
        ("S3://my-bucket/key.json", DATA, "s3", "my-bucket/key.json"),
        ("file://./data/my%20file.csv", DATA, "file", "./data/my file.csv"),
        ("hf://acme/support-bot", OUT, "hf", "acme/support-bot"),
        ("hf://acme/support-bot@candidate", OUT, "hf", "acme/support-bot@candidate"),
        ("gs://my-bucket/data/train.jsonl", DATA, "gs", "my-bucket/data/train.jsonl"),
        (
            "gs://my_bucket.example.com/models/base",
            MODEL,
            "gs",
            "my_bucket.example.com/models/base",
        ),
        ("gs://artifacts-bucket", OUT, "gs", "artifacts-bucket"),
    ],
)
def test_accepted(uri: str, role: Role, scheme: str, location: str) -> None:
    parsed = parse_uri(uri, role)
    assert parsed == ParsedUri(scheme, location)
    assert str(parsed) == f"{scheme}://{location}"


@pytest.mark.parametrize(
    ("uri", "role", "message"),
    [
        ("HuggingFaceTB/SmolLM2", MODEL, "has no scheme; use one of: file://<path>"),
        ("./data/train.jsonl", DATA, "has no scheme"),
        ("ftp://bucket/key", MODEL, "scheme 'ftp://' is not supported for a model"),
        ("http://example.com/x.jsonl", DATA, "scheme 'http://' is not supported for a dataset"),
        ("hf://name", OUT, "names no organisation"),
        ("hf://org/name@a..b", OUT, "is not a branch name"),
        ("hf://org/name@-x", OUT, "is not a branch name"),
        ("file://", MODEL, "file:// needs a path"),
        ("hf://org/name/extra", MODEL, "is not a Hub repository id"),
        ("hf://-org/name", MODEL, "is not a Hub repository id"),
        ("hf://org/chat-data", DATA, "Hub datasets are written hf://datasets/<org>/<name>"),
        ("hf://datasets/-org/name/train.jsonl", DATA, "is not a Hub repository id"),
        ("hf://datasets/org/name/../other/x.jsonl", DATA, "'..' path segments are not allowed"),
        ("hf://datasets/org/name/a//x.jsonl", DATA, "is not a file path inside the repository"),
        ("hf://datasets/org/name", MODEL, "is not a Hub repository id"),
        ("s3://ab/key", DATA, "'ab' is not a valid bucket name"),
        ("s3://My_Bucket/key", DATA, "'My_Bucket' is not a valid bucket name"),
        ("s3://-bucket/key", MODEL, "is not a valid bucket name"),
        ("s3://" + "b" * 64 + "/key", MODEL, "is not a valid bucket name"),
        ("s3:///key", DATA, "'' is not a valid bucket name"),
        ("s3://my-bucket", DATA, "s3:// needs an object key"),
        ("s3://my-bucket/", MODEL, "s3:// needs an object key"),
        ("gs://ab/key", DATA, "'ab' is not a valid Cloud Storage bucket name"),
        ("gs://My-Bucket/key", DATA, "is not a valid Cloud Storage bucket name"),
        ("gs://_bucket/key", MODEL, "is not a valid Cloud Storage bucket name"),
        ("gs://" + "b" * 64 + "/key", MODEL, "is not a valid Cloud Storage bucket name"),
        ("gs://" + "b" * 64 + ".example.com/key", MODEL, "is not a valid Cloud Storage bucket"),
        ("gs://my-bucket", DATA, "gs:// needs an object name"),
        ("gs://my-bucket/a/../../x", OUT, "'..' path segments are not allowed"),
        ("gs://user:pass@bucket/x", DATA, "service-account.json"),
        (
            "pvc://Training_Data/train.jsonl",
            DATA,
            "'Training_Data' is not a PersistentVolumeClaim name",
        ),
        ("pvc://-claim/x", DATA, "is not a PersistentVolumeClaim name"),
        ("pvc:///train.jsonl", DATA, "is not a PersistentVolumeClaim name"),
        ("pvc://claim", DATA, "pvc:// needs a path inside the claim"),
        ("file://data/%00.jsonl", DATA, "NUL bytes are not allowed"),
    ],
)
def test_rejected(uri: str, role: Role, message: str) -> None:
    with pytest.raises(UriError) as info:
        parse_uri(uri, role)
    assert message in str(info.value)


@pytest.mark.parametrize(
    "uri",
    [
        "file://../elsewhere",
        "file://./artifacts/../../etc",
        "file:///..",
        "file://a/..",
        "pvc://artifacts/../other",
        "s3://artifacts-bucket/adapters/../other-team",
        # percent-encoded dots are decoded before the check
        "s3://artifacts-bucket/adapters/%2e%2e/other-team",
        "s3://artifacts-bucket/adapters/%2E%2E/other-team",
        "file://./artifacts/%2e%2e/%2e%2e/etc",
        "pvc://artifacts/.%2e/x",
        # an encoded slash does not hide a segment either
        "s3://artifacts-bucket/adapters%2f..%2fother",
    ],
)
def test_output_never_climbs_out(uri: str) -> None:
    with pytest.raises(UriError, match=r"'\.\.' path segments are not allowed"):
        parse_uri(uri, OUT)


@pytest.mark.parametrize(
    "uri", ["file://./artifacts/my..job", "s3://bucket/a/...", "file://./a/.hidden/b"]
)
def test_dots_inside_a_name_are_not_traversal(uri: str) -> None:
    parse_uri(uri, OUT)


@pytest.mark.parametrize(
    "uri", ["pvc://data/../secrets/train.jsonl", "s3://my-bucket/%2e%2e/train.jsonl"]
)
def test_claims_and_buckets_refuse_traversal_for_every_role(uri: str) -> None:
    for role in (MODEL, DATA):
        with pytest.raises(UriError, match="path segments"):
            parse_uri(uri, role)


def test_local_inputs_may_use_relative_parents() -> None:
    # Reading ../data on your own machine is fine; only the claim/bucket and outputs are fenced.
    assert parse_uri("file://../data/train.jsonl", DATA).location == "../data/train.jsonl"


def test_scheme_registry_roles() -> None:
    for role in (MODEL, DATA, OUT):  # the object stores after these, in any order
        assert schemes_for(role)[:4] == ["file", "pvc", "s3", "hf"]
        assert "az" in schemes_for(role)
        assert "gs" in schemes_for(role)
    for scheme in SCHEMES.values():
        assert scheme.example.startswith(f"{scheme.name}://")


@pytest.mark.parametrize(
    ("uri", "suffix"),
    [
        ("file://./data/train.jsonl", ".jsonl"),
        ("file://./data/TRAIN.JSONL", ".jsonl"),
        ("s3://my-bucket/sets/rows.json", ".json"),
        ("pvc://data/rows.csv", ".csv"),
        ("s3://my-bucket/sets/part-0.parquet", ".parquet"),
        ("hf://datasets/org/name", None),
        ("hf://datasets/org/name/sub/train.CSV", ".csv"),
    ],
)
def test_data_suffix(uri: str, suffix: str | None) -> None:
    assert data_suffix(parse_uri(uri, DATA)) == suffix


@pytest.mark.parametrize(
    "uri",
    [
        "file://./data/train.txt",
        "s3://my-bucket/sets/",
        "pvc://d/x.jsonl.gz",
        "hf://datasets/org/name/extra",
    ],
)
def test_data_suffix_unknown(uri: str) -> None:
    with pytest.raises(UriError, match=r"name a file ending in \.jsonl, \.json, \.csv, \.parquet"):
        data_suffix(parse_uri(uri, DATA))


@pytest.mark.parametrize(
    ("location", "parts"),
    [
        ("datasets/squad", ("squad", None)),
        ("datasets/org/name", ("org/name", None)),
        ("datasets/org/name/train.jsonl", ("org/name", "train.jsonl")),
        ("datasets/org/name/a/b/c.csv", ("org/name", "a/b/c.csv")),
    ],
)
def test_hub_dataset_parts(location: str, parts: tuple[str, str | None]) -> None:
    assert hf_dataset_parts(location) == parts
