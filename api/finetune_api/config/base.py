"""Shared pieces of the contract: the camelCase base model and URI field types."""

from __future__ import annotations

from typing import Annotated, Final

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
)
from pydantic.alias_generators import to_camel

from finetune_api.uri import Role, UriError, data_suffix, parse_uri

API_GROUP = "finetune-operator.io"
# Final with a literal value, so mypy types it as the Literal the field below expects.
TRAINER_CONFIG_VERSION: Final = "trainer.finetune-operator.io/v1alpha1"


class CamelModel(BaseModel):
    """Base for every contract model: camelCase aliases, unknown keys rejected."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        validate_by_name=True,
        validate_by_alias=True,
        serialize_by_alias=True,
        extra="forbid",
        frozen=True,
        use_attribute_docstrings=True,
        # JSON (and so Kubernetes and the TrainerConfig file) has no inf or nan:
        # `.inf` would be accepted here and arrive in the pod as null.
        allow_inf_nan=False,
    )


def _uri_validator(role: Role) -> AfterValidator:
    def check(value: str) -> str:
        try:
            parse_uri(value, role)
        except UriError as exc:
            raise ValueError(str(exc)) from None
        return value

    return AfterValidator(check)


def _check_dataset_uri(value: str) -> str:
    try:
        data_suffix(parse_uri(value, Role.DATASET))
    except UriError as exc:
        raise ValueError(str(exc)) from None
    return value


ModelUri = Annotated[
    str,
    _uri_validator(Role.MODEL),
    Field(
        description="Where the base model is: hf://org/name, s3://bucket/key, az://container/key, "
        "gs://bucket/key, file://path or pvc://claim/path (a directory in Hugging Face layout).",
        examples=["hf://HuggingFaceTB/SmolLM2-135M-Instruct"],
    ),
]
DatasetUri = Annotated[
    str,
    _uri_validator(Role.DATASET),
    AfterValidator(_check_dataset_uri),
    Field(
        description="A .jsonl, .json, .csv or .parquet file: file://, pvc://, s3://, az://, gs:// "
        "or hf://datasets/org/name.",
    ),
]
OutputUri = Annotated[
    str,
    _uri_validator(Role.OUTPUT),
    Field(
        description="Where artifacts are published: file://path, pvc://claim/path, "
        "s3://bucket/prefix, az://container/prefix, gs://bucket/prefix or hf://org/name[@branch] "
        "(a Hub model repository, one commit per published set; checkpoints stay on the "
        "trainer's disk)."
    ),
]

SecretName = Annotated[
    str,
    Field(
        max_length=253,
        pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$",
        description="A Kubernetes Secret in the job's namespace whose keys are mounted as "
        "files for this storage (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, "
        "AWS_SESSION_TOKEN, AWS_REGION, AWS_ENDPOINT_URL, AWS_S3_ADDRESSING_STYLE, "
        "HF_TOKEN; for gs:// a service-account key file under service-account.json; for "
        "az:// AZURE_STORAGE_CONNECTION_STRING or AZURE_STORAGE_ACCOUNT_NAME with its key "
        "or SAS). Unset: the standard AWS, Google, Azure and Hugging Face environment, "
        "shared files and workload identity.",
    ),
]
