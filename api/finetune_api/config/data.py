"""The ``dataset`` section: where rows come from, how they are read and cleaned.

Rows come either from one ``train`` file or from a ``mixture`` of weighted sources
(multi-task fine-tuning); exactly one of the two is set.
"""

from __future__ import annotations

from typing import Literal, Self

from pydantic import (
    ConfigDict,
    Field,
    model_validator,
)

from finetune_api.config.base import CamelModel, DatasetUri, SecretName
from finetune_api.uri import hf_dataset_parts

# --------------------------------------------------------------------------- dataset

DatasetFormat = Literal[
    "messages",
    "instruction",
    "prompt-completion",
    "text",
    "classification",
    "preference",
    "prompts",
    "pairs",
    "image-folder",
    "image-manifest",
]

IMAGE_FORMATS = ("image-folder", "image-manifest")
"""The formats whose rows are images (task image-classification); they read one train
source (no mixture) and image-folder reads a folder, not a file."""

_FORMAT_DESCRIPTION = (
    "messages (chat turns), instruction (instruction/input/output), prompt-completion, "
    "text (continued pretraining on raw text), classification (a text, optionally a "
    "second text, and a label; needs task: sequence-classification), preference (a "
    "prompt, a chosen and a rejected answer, each a string or a list of chat messages; "
    "for task reward-model or preference), prompts (a prompt and an optional reference "
    "answer; for task reinforcement), or pairs (an anchor text, a positive text that "
    "matches it and optionally a negative text that does not; for task "
    "sentence-embedding), image-folder (dataset.train is a file:// or pvc:// folder "
    "ending in /, with one sub-folder of .png/.jpg/.jpeg/.bmp/.gif/.webp images per class, "
    "the folder's name the label; for task image-classification) or image-manifest (a "
    "file with columns image, a path relative to the file or absolute, and label; for "
    "task image-classification)."
)


class ColumnMapping(CamelModel):
    """Which dataset columns hold each field; the defaults are the usual names."""

    messages: str = Field(
        default="messages", min_length=1, description="Format messages: a list of {role, content}."
    )
    instruction: str = Field(
        default="instruction", min_length=1, description="Format instruction: the task."
    )
    input: str = Field(
        default="input",
        min_length=1,
        description="Format instruction: optional context for the task.",
    )
    output: str = Field(
        default="output", min_length=1, description="Format instruction: the answer."
    )
    prompt: str = Field(
        default="prompt",
        min_length=1,
        description="Formats prompt-completion, preference and prompts: the prompt. For "
        "preference and prompts, a string (one user turn) or a list of {role, content} "
        "messages (the conversation so far).",
    )
    completion: str = Field(
        default="completion", min_length=1, description="Format prompt-completion: the completion."
    )
    chosen: str = Field(
        default="chosen",
        min_length=1,
        description="Format preference: the preferred answer, a string or a list of "
        "assistant {role, content} messages.",
    )
    rejected: str = Field(
        default="rejected",
        min_length=1,
        description="Format preference: the dispreferred answer, a string or a list of "
        "assistant {role, content} messages.",
    )
    answer: str = Field(
        default="answer",
        min_length=1,
        description="Format prompts: an optional reference answer per prompt (what "
        "reinforcement.rewards type exactMatch compares with); rows may leave it out.",
    )
    anchor: str = Field(
        default="anchor",
        min_length=1,
        description="Format pairs: the text to find a match for (a query, a question), a string.",
    )
    positive: str = Field(
        default="positive",
        min_length=1,
        description="Format pairs: the text that matches the anchor (its answer, a "
        "paraphrase), a string.",
    )
    negative: str = Field(
        default="negative",
        min_length=1,
        description="Format pairs: an optional text that does not match the anchor (a hard "
        "negative), a string; rows may leave it out, except with contrastive.loss triplet.",
    )
    image: str = Field(
        default="image",
        min_length=1,
        description="Format image-manifest: the image's path, relative to the manifest "
        "file's folder or absolute (on the trainer's file system).",
    )
    text: str = Field(
        default="text",
        min_length=1,
        description="Formats text and classification: the text.",
    )
    text_pair: str | None = Field(
        default=None,
        min_length=1,
        description="Format classification: a second text column for sentence-pair tasks "
        "(e.g. premise and hypothesis), encoded with the first as the tokenizer pairs them. "
        "Unset: single texts.",
    )
    label: str = Field(
        default="label",
        min_length=1,
        description="Formats classification and image-manifest: the class of each row, a "
        "string or an integer. "
        "Class ids are the training set's labels sorted (numerically when every label is an "
        "integer).",
    )
    system: str | None = Field(
        default=None,
        min_length=1,
        description="Formats instruction, prompt-completion, preference and prompts: a "
        "column with a system prompt per row.",
    )


MAX_MIXTURE_WEIGHT = 1e9
"""The largest mixture weight: weights are ratios, and a row count fits under it."""


class MixtureSource(CamelModel):
    """One source of a dataset mixture and its share of the training set."""

    train: DatasetUri = Field(
        description="This source's rows: a .jsonl, .json, .csv or .parquet file "
        "(file://, pvc://, s3://, az://, gs:// or hf://datasets/org/name)."
    )
    weight: float = Field(
        default=1.0,
        gt=0,
        # Bounded so that any MAX_MIXTURE_SOURCES weights sum, and a share
        # (rows x weight / sum) computes, as a finite number: 1e308 + 1e308 overflows.
        le=MAX_MIXTURE_WEIGHT,
        description="This source's share of the mixed training set, relative to the other "
        "weights (2 and 1: two thirds and one third of the rows). The mixed set has as many "
        "rows as all sources together; a source is subsampled or repeated to its share.",
    )
    format: DatasetFormat | None = Field(
        default=None, description="How this source's rows are read. Default: dataset.format."
    )
    columns: ColumnMapping | None = Field(
        default=None,
        description="Column names of this source; replaces dataset.columns for it (unset "
        "names take their usual defaults). Default: dataset.columns.",
    )


HUB_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"
"""A Hub subset (configuration) or split name: what ``datasets.load_dataset`` accepts."""


class HubDatasetOptions(CamelModel):
    """How rows are read from a Hub dataset repository (``dataset.train:
    hf://datasets/org/name``), named as ``datasets.load_dataset(name, subset, split=...,
    revision=...)`` names them; the repository's README (its ``configs``) or its folder
    layout says which files make each subset and split, and every file of the split is read,
    in order."""

    subset: str | None = Field(
        default=None,
        pattern=HUB_NAME_PATTERN,
        description="The subset (configuration) to read, e.g. 'main' or 'en'. Default: the "
        "repository's default subset, or its only one.",
    )
    split: str = Field(
        default="train",
        pattern=HUB_NAME_PATTERN,
        description="The split trained on.",
    )
    validation: str | None = Field(
        default=None,
        pattern=HUB_NAME_PATTERN,
        description="A split of the same subset held out for evaluation (e.g. 'test'), "
        "instead of dataset.validation or dataset.validationSplit.",
    )
    revision: str | None = Field(
        default=None,
        min_length=1,
        max_length=255,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_./-]*$",
        description="A branch, tag or commit of the repository. Default: main. Pin a commit "
        "for a reproducible run.",
    )


MAX_MIXTURE_SOURCES = 64
"""Bounded so the API server can estimate the cost of CEL rules over the list."""


class DatasetSpec(CamelModel):
    """The training data, its validation data and how to read rows."""

    # The CEL twins of the model validators below, so the API server refuses these too.
    model_config = CamelModel.model_config | ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "!(has(self.validation) && has(self.validationSplit))",
                    "message": "set either validation or validationSplit, not both",
                },
                {
                    "rule": "has(self.train) != has(self.mixture)",
                    "message": "set exactly one of train (one file) or mixture (weighted sources)",
                },
                {
                    "rule": "!has(self.train) || (has(self.format) && self.format == "
                    "'image-folder') == self.train.endsWith('/')",
                    "message": "format image-folder reads a folder (a URI ending in /), "
                    "every other format a file",
                },
                {
                    "rule": "!has(self.validation) || (has(self.format) && self.format == "
                    "'image-folder') == self.validation.endsWith('/')",
                    "message": "format image-folder reads a folder (a URI ending in /), "
                    "every other format a file",
                },
                {
                    "rule": "!has(self.mixture) || !has(self.format) || "
                    "!(self.format in ['image-folder', 'image-manifest'])",
                    "message": "the image formats read one train source, not a mixture",
                },
                {
                    "rule": "!has(self.hub) || (has(self.train) && "
                    "self.train.matches('^hf://datasets/[^/]+(/[^/]+)?$'))",
                    "message": "hub names a subset and split of a Hub dataset: set train to "
                    "the repository, hf://datasets/org/name (no file in it)",
                },
                {
                    "rule": "!has(self.hub) || !has(self.hub.validation) || "
                    "!(has(self.validation) || has(self.validationSplit))",
                    "message": "set one held-out source: hub.validation, validation or "
                    "validationSplit",
                },
                {
                    "rule": "!has(self.streaming) || !self.streaming || has(self.train)",
                    "message": "streaming reads one train source, not a mixture",
                },
                {
                    "rule": "!has(self.streaming) || !self.streaming || "
                    "has(self.validation) || (has(self.hub) && has(self.hub.validation))",
                    "message": "streaming needs a held-out file: set validation (or "
                    "hub.validation); a stream cannot be split",
                },
                {
                    "rule": "!has(self.streaming) || !self.streaming || "
                    "(has(self.deduplicate) && !self.deduplicate)",
                    "message": "streaming cannot deduplicate (it would hold every row's "
                    "hash): set deduplicate: false",
                },
                {
                    "rule": "!has(self.streaming) || !self.streaming || !has(self.train) || "
                    "!self.train.matches('(?i)[.]json$')",
                    "message": "streaming reads rows one by one, which a .json document "
                    "(one JSON value) cannot give: convert train to JSON Lines (.jsonl)",
                },
            ]
        }
    )

    train: DatasetUri | None = Field(
        default=None,
        description="The training rows: a .jsonl, .json, .csv or .parquet file (file://, "
        "pvc://, s3://, az://, gs:// or hf://datasets/org/name). Set train or mixture.",
    )
    mixture: list[MixtureSource] | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_MIXTURE_SOURCES,
        description="Several training sources mixed by weight (multi-task fine-tuning), "
        "instead of train. Sampled once, seeded by training.seed; validationSplit holds "
        "out that fraction of each source before sampling.",
    )
    validation: DatasetUri | None = Field(
        default=None,
        description="Held-out rows, read with format and columns. Default: split from "
        "train, or from each mixture source (validationSplit).",
    )
    validation_split: float | None = Field(
        default=None,
        gt=0,
        lt=1,
        description="Fraction of train (of each mixture source) held out for evaluation "
        "when no validation set is given. Default: 0.1.",
    )
    format: DatasetFormat = Field(default="messages", description=_FORMAT_DESCRIPTION)
    columns: ColumnMapping = Field(default_factory=ColumnMapping)
    overlong: Literal["truncate", "drop"] = Field(
        default="truncate",
        description="Rows longer than training.maxSeqLength tokens: truncate keeps their "
        "first maxSeqLength tokens, drop leaves them out. Both are counted in metrics.json.",
    )
    deduplicate: bool = Field(
        default=True,
        description="Drop rows whose content repeats an earlier row of the same file "
        "(compared after Unicode NFC, CRLF to LF and trimming). Turn off to keep "
        "deliberate repeats; mixture weights are the cleaner way to upsample.",
    )
    credentials_secret: SecretName | None = None
    hub: HubDatasetOptions | None = Field(
        default=None,
        description="For a Hub dataset repository (train: hf://datasets/org/name): the "
        "subset, split, held-out split and revision to read.",
    )
    streaming: bool = Field(
        default=False,
        description="Read train as a stream, tokenizing rows as training consumes them, "
        "instead of preparing the whole file first: for datasets larger than the pod's "
        "disk or memory. Rows are shuffled through a buffer of shuffleBuffer rows (seeded "
        "by training.seed) and a resumed run continues at the same example. Needs "
        "training.maxSteps and a held-out file (validation or hub.validation); causal-lm "
        "only, without packing; set deduplicate: false.",
    )
    shuffle_buffer: int = Field(
        default=10_000,
        ge=1,
        le=1_000_000,
        description="Streaming: rows held in memory for shuffling; 1 keeps the file's order.",
    )
    tokenize_processes: int | None = Field(
        default=None,
        ge=1,
        le=64,
        description="Processes that tokenize the data, once per node (local rank 0; the "
        "other ranks map its result). Default: the CPUs the container may use, at most 8.",
    )

    @model_validator(mode="after")
    def _one_validation_source(self) -> Self:
        if self.validation is not None and self.validation_split is not None:
            raise ValueError(
                "set either validation (a held-out file) or validationSplit (a fraction of "
                "train), not both"
            )
        return self

    @model_validator(mode="after")
    def _train_or_mixture(self) -> Self:
        if self.train is None and self.mixture is None:
            raise ValueError(
                "no training data: set train (one file) or mixture (a list of {train, "
                "weight} sources)"
            )
        if self.train is not None and self.mixture is not None:
            raise ValueError(
                "set either train (one file) or mixture (weighted sources), not both; "
                "to mix train with other data, make it a mixture source"
            )
        return self

    @model_validator(mode="after")
    def _folder_only_for_image_folder(self) -> Self:
        folder = self.format == "image-folder"
        for field, uri in (("train", self.train), ("validation", self.validation)):
            if uri is None or uri.endswith("/") == folder:
                continue
            if folder:
                raise ValueError(
                    f"{field}: format image-folder reads a folder of class folders: write "
                    "it as a file:// or pvc:// URI ending in / (e.g. file:///data/shapes/), "
                    "or use format image-manifest for a file listing the images"
                )
            raise ValueError(
                f"{field}: {uri} is a folder (it ends in /), which only format image-folder "
                "reads; name a data file, or set format: image-folder"
            )
        if self.mixture is not None and self.format in IMAGE_FORMATS:
            raise ValueError(
                f"format {self.format} reads one train source, not a mixture: set train"
            )
        return self

    @model_validator(mode="after")
    def _hub_options_for_a_hub_dataset(self) -> Self:
        if self.hub is None:
            return self
        if self.train is None or not self.train.startswith("hf://datasets/"):
            raise ValueError(
                "hub names a subset and split of a Hub dataset repository: set train to "
                "hf://datasets/org/name (or remove hub)"
            )
        repo, path = hf_dataset_parts(self.train.removeprefix("hf://"))
        if path is not None:
            raise ValueError(
                f"hub reads a repository by subset and split, and train names one file in "
                f"it ({path}): set train to hf://datasets/{repo} (or remove hub)"
            )
        if self.hub.validation is not None and (
            self.validation is not None or self.validation_split is not None
        ):
            raise ValueError(
                "set one held-out source: hub.validation (a split of the repository), "
                "validation (a file) or validationSplit (a fraction of train)"
            )
        return self

    @model_validator(mode="after")
    def _streaming_reads_one_file(self) -> Self:
        if not self.streaming:
            return self
        if self.train is None:
            raise ValueError("streaming reads one train source: set train, not mixture")
        if self.validation is None and (self.hub is None or self.hub.validation is None):
            raise ValueError(
                "streaming needs a held-out file: set validation (or hub.validation); a "
                "stream cannot be split (validationSplit) without reading it all first"
            )
        if self.deduplicate:
            raise ValueError(
                "streaming cannot deduplicate: finding repeats means holding every row's "
                "hash, which a stream larger than memory cannot; set deduplicate: false "
                "(and deduplicate the files beforehand if needed)"
            )
        if self.train.lower().endswith(".json"):
            raise ValueError(
                "streaming reads rows one by one, which a .json document (one JSON value) "
                "cannot give: convert train to JSON Lines (.jsonl), or set streaming: false"
            )
        return self

    @property
    def effective_validation_split(self) -> float:
        return 0.1 if self.validation_split is None else self.validation_split
