"""Trying a published model: load an artifact set from any storage scheme and generate.

``finetune generate`` and ``finetune chat`` sit on this module. A set is either an
adapter (``adapter_config.json`` and its weights; the base model is the one the job
trained on, named in the set's ``manifest.json``) or a whole model (``config.json``: a
full or freeze run, or a merged export). Everything goes through the trainer's own
pieces, so a set loads here exactly as the run that wrote it loaded its base: the
storage registry fetches (``file://``, ``pvc://``, ``s3://``, ``hf://``), publish.py's
verification checks the sha256 of every file before any of it is deserialised, and
modeling.py picks the device and precision and loads the tokenizer and base model.

Prompts go through the tokenizer's chat template, as the trainer rendered the
conversations it learned from; a classifier set prints its labels' scores instead.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from finetune_trainer.errors import ConfigError, ModelError, StorageError

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase

ADAPTER_CONFIG = "adapter_config.json"
MODEL_CONFIG = "config.json"
MERGED = "merged"
"""Where a run with ``output.merge`` publishes the merged model, inside its set."""
CAUSAL_LM = "causal-lm"
CLASSIFICATION = "sequence-classification"
EMBEDDING = "sentence-embedding"
PEFT_TASKS = {"CAUSAL_LM": CAUSAL_LM, "SEQ_CLS": CLASSIFICATION, "FEATURE_EXTRACTION": EMBEDDING}
"""peft's ``task_type`` in an adapter_config.json, as the contract's task names."""

Messages = list[dict[str, str]]
Write = Callable[[str], None]


class UnverifiedSet(StorageError):
    """The set does not match its manifest (tampered, damaged or half-written): nothing
    in it is loaded, since unpickling or even parsing untrusted weights is a risk."""


# --------------------------------------------------------------------------- the set


@dataclass(frozen=True)
class ArtifactSet:
    """A published set, copied to this machine, and what loading it needs."""

    uri: str
    directory: Path
    kind: str
    """``adapter`` or ``model``."""
    task: str
    manifest: dict[str, Any] | None
    base_uri: str | None = None
    """An adapter's base model as a storage URI; None for whole models."""
    base_revision: str | None = None
    trust_remote_code: bool = False
    """True only when the job that trained the set asked for it (``spec.model``)."""


def describe_set(
    uri: str, directory: Path, manifest: dict[str, Any] | None, base: str | None = None
) -> ArtifactSet:
    """What the files in ``directory`` are: adapter or whole model, which task, which
    base; ``base`` (a URI) replaces the base the set names, e.g. a copy on this machine
    of a model the job read from a volume only the cluster has."""
    if (directory / ADAPTER_CONFIG).is_file():
        kind = "adapter"
    elif (directory / MODEL_CONFIG).is_file():
        kind = "model"
    else:
        raise ModelError(
            f"{uri}: no model in this set (neither {ADAPTER_CONFIG} nor {MODEL_CONFIG}); "
            "point at the output of a finished job, or at a directory saved with "
            "save_pretrained"
        )
    spec = _job_spec(uri, manifest)
    if spec is None:  # not a published set: the files say what they can, no remote code
        task = _task_from_files(directory, kind)
        base_uri = _base_from_adapter(directory) if kind == "adapter" else None
        revision, trust = None, False
    else:
        task, trust = spec.task, spec.model.trust_remote_code
        base_uri, revision = spec.model.uri, spec.model.revision
    if kind == "model":
        base_uri = revision = None
    elif base is not None:
        base_uri, revision = base, None
    return ArtifactSet(uri, directory, kind, task, manifest, base_uri, revision, trust)


def _job_spec(uri: str, manifest: dict[str, Any] | None) -> Any:
    """The TrainerConfig the set was trained with (the manifest's ``spec``), if any."""
    if manifest is None or "spec" not in manifest:
        return None
    from pydantic import ValidationError

    from finetune_api.config import TrainerConfig

    try:
        return TrainerConfig.model_validate(manifest["spec"])
    except ValidationError as exc:
        raise ModelError(
            f"{uri}: the manifest's spec is not a TrainerConfig this version reads "
            f"({exc.error_count()} problems, first: {exc.errors()[0]['msg']}); pass --base "
            "URI and --no-verify to load the files without it"
        ) from None


def _task_from_files(directory: Path, kind: str) -> str:
    """The task of a set without a manifest: peft's task_type, or the architecture."""
    if kind == "adapter":
        config = json.loads((directory / ADAPTER_CONFIG).read_text())
        return PEFT_TASKS.get(str(config.get("task_type")), CAUSAL_LM)
    if (directory / "modules.json").is_file():  # the sentence-transformers layout
        return EMBEDDING
    config = json.loads((directory / MODEL_CONFIG).read_text())
    architectures = config.get("architectures") or []
    if any(str(a).endswith("ForSequenceClassification") for a in architectures):
        return CLASSIFICATION
    return CAUSAL_LM


def _base_from_adapter(directory: Path) -> str | None:
    """The adapter's ``base_model_name_or_path`` as a URI: trainer sets write a URI, or a
    Hub id (``org/name``) for a base read from the Hub."""
    config = json.loads((directory / ADAPTER_CONFIG).read_text())
    name = config.get("base_model_name_or_path")
    if not isinstance(name, str) or not name:
        return None
    if "://" in name:
        return name
    return f"file://{name}" if name.startswith("/") else f"hf://{name}"


@contextmanager
def open_set(
    uri: str, *, verify: bool = True, base: str | None = None, merged: bool = False
) -> Iterator[ArtifactSet]:
    """The set at ``uri`` on this machine, checked against its manifest unless
    ``verify`` is off; remote copies live in a temporary directory while the context
    lasts. ``merged`` picks the merged model a run with ``output.merge`` published
    under ``merged/`` (listed in the same manifest) instead of the adapter.

    A set without ``manifest.json`` is refused when verifying: a publish that was
    interrupted leaves exactly that, and a half-written adapter must not be loaded.
    """
    with _open_set(uri, verify, base) as artifact:
        yield _merged_model(artifact) if merged else artifact


def _merged_model(artifact: ArtifactSet) -> ArtifactSet:
    """The whole model under the set's ``merged/`` (verified with the set)."""
    where = str((artifact.manifest or {}).get("merged") or MERGED).strip("/")
    directory = artifact.directory / where
    if not (directory / MODEL_CONFIG).is_file():
        raise ModelError(
            f"{artifact.uri}: no merged model in this set (no {where}/{MODEL_CONFIG}; the job "
            "ran without output.merge); leave out --merged, or merge it with finetune export"
        )
    return describe_set(f"{artifact.uri}/{where}", directory, artifact.manifest)


@contextmanager
def _open_set(uri: str, verify: bool, base: str | None) -> Iterator[ArtifactSet]:
    from finetune_api.uri import Role
    from finetune_trainer.storage.backends import LocalBackend, backend_for, fetch_model_dir

    if uri.startswith("hf://") and not verify:
        # A Hub repository that is not a published set (a base model, someone's merge):
        # read as a model, through the Hub's cache.
        yield _checked(uri, fetch_model_dir(uri, None), verify, base)
        return
    backend, parsed = backend_for(uri, Role.OUTPUT)
    if isinstance(backend, LocalBackend):
        directory = backend.resolve(parsed)
        if not directory.is_dir():
            raise StorageError(f"{uri}: no such directory ({directory})")
        yield _checked(uri, directory, verify, base)
        return
    with tempfile.TemporaryDirectory(prefix="finetune-try-") as tmp:
        _download_set(uri, Path(tmp))
        yield _checked(uri, Path(tmp), verify, base)


def _download_set(uri: str, target: Path) -> None:
    """Every file of the set under ``uri`` (not its checkpoints) into ``target``."""
    from finetune_trainer.publish import CHECKPOINTS
    from finetune_trainer.storage.backends import open_store

    store = open_store(uri)
    objects = [o for o in store.list() if not o.key.startswith(f"{CHECKPOINTS}/")]
    if not objects:
        raise StorageError(f"{uri}: nothing under this location; check the bucket and prefix")
    for obj in objects:
        store.get_file(obj.key, target / obj.key)


def _no_manifest(uri: str) -> str:
    return (
        f"{uri}: no manifest.json, so nothing vouches for these files (an interrupted "
        "publish leaves exactly this); for a model directory that is not a published set "
        "(a base model, a Hub repository) pass --no-verify"
    )


def _checked(uri: str, directory: Path, verify: bool, base: str | None) -> ArtifactSet:
    """``directory`` verified (when asked) and described."""
    from finetune_trainer.publish import compare_to_manifest, parse_manifest, sha256_file
    from finetune_trainer.storage.backends import MANIFEST
    from finetune_trainer.storage.store import local_files

    manifest: dict[str, Any] | None = None
    if (directory / MANIFEST).is_file():
        parsed = parse_manifest((directory / MANIFEST).read_bytes(), f"{uri}/{MANIFEST}")
        if isinstance(parsed, str):
            raise UnverifiedSet(parsed)
        manifest = parsed
    if verify:
        if manifest is None:
            raise UnverifiedSet(_no_manifest(uri))
        present = {rel: (directory / rel).stat().st_size for rel in local_files(directory)}
        problems = compare_to_manifest(manifest, present, lambda r: sha256_file(directory / r))
        if problems:
            listing = "".join(f"\n  - {p}" for p in problems)
            raise UnverifiedSet(
                f"{uri}: does not match its manifest.json, refusing to load it{listing}\n"
                "publish the set again, or check where it was copied from"
            )
    return describe_set(uri, directory, manifest, base)


# --------------------------------------------------------------------------- loading


@dataclass
class LoadedModel:
    """A set's model in eval mode on its device, with its tokenizer."""

    artifact: ArtifactSet
    model: Any
    """A transformers model, or peft's wrapper of one."""
    tokenizer: PreTrainedTokenizerBase
    device: torch.device
    labels: list[str] = field(default_factory=list)
    """A classifier's class names in logit order."""

    @property
    def classifies(self) -> bool:
        return self.artifact.task == CLASSIFICATION

    @property
    def rewards(self) -> bool:
        """A reward model (task reward-model): it scores a prompt and an answer, it
        neither generates nor classifies."""
        return self.artifact.task == "reward-model"

    @property
    def embeds(self) -> bool:
        """A sentence encoder: it maps texts to vectors, it does not generate."""
        return self.artifact.task == EMBEDDING


def load(artifact: ArtifactSet, dtype: str = "auto", warn: Write | None = None) -> LoadedModel:
    """The set's model: the base with the adapter on top, or the whole model.

    ``dtype`` is ``auto`` (bf16 or fp16 on CUDA, fp32 on CPU), ``fp32``, ``bf16`` or
    ``fp16``, with the trainer's rules for what the hardware can run.
    """
    from finetune_trainer.logs import quiet_libraries
    from finetune_trainer.modeling import load_base_model, load_tokenizer, resolve_compute

    quiet_libraries()  # the answer and our few lines, not the libraries' progress bars
    if artifact.task == "image-classification":
        raise ConfigError(
            f"{artifact.uri}: an image classifier reads images, not text prompts; load it "
            "with transformers' AutoImageProcessor and AutoModelForImageClassification (an "
            "adapter set: peft's PeftModel over the base with the manifest's labels), as "
            "its README.md shows"
        )
    try:
        compute = resolve_compute(dtype)
    except ConfigError as exc:
        raise ConfigError(str(exc).replace("training.precision", "--dtype")) from None
    trust = artifact.trust_remote_code
    if trust and warn is not None:
        warn(
            f"{artifact.uri}: trust_remote_code is on: the job that trained this set asked "
            "for it (spec.model.trustRemoteCode), so the model's own Python code runs"
        )
    tokenizer = load_tokenizer(artifact.directory, trust)
    labels: list[str] = []
    if artifact.kind == "model":
        model = load_base_model(
            artifact.directory,
            compute,
            trust_remote_code=trust,
            task=artifact.task,
            pad_token_id=tokenizer.pad_token_id,
        )
    else:
        model = _load_adapter(artifact, compute, tokenizer)
    if artifact.task == CLASSIFICATION:
        id2label: dict[Any, str] = dict(model.config.id2label or {})
        labels = [str(id2label.get(i, id2label.get(str(i), i))) for i in range(len(id2label))]
    model.eval()  # type: ignore[no-untyped-call]
    return LoadedModel(artifact, model, tokenizer, compute.device, labels)


def _load_adapter(artifact: ArtifactSet, compute: Any, tokenizer: Any) -> Any:
    """The base model (fetched from its own URI) with the set's adapter applied."""
    from peft import PeftModel

    from finetune_trainer.data.labels import LabelVocabulary
    from finetune_trainer.methods.bottleneck import is_bottleneck_adapter, load_bottleneck_adapter
    from finetune_trainer.modeling import load_base_model
    from finetune_trainer.storage.backends import fetch_model_dir

    if artifact.base_uri is None:
        raise ModelError(
            f"{artifact.uri}: the adapter does not say which base model it was trained "
            "on; pass --base URI"
        )
    base_dir = fetch_model_dir(artifact.base_uri, artifact.base_revision)
    labels = None
    if artifact.task == CLASSIFICATION:
        count = head_size(artifact.directory)
        names = (artifact.manifest or {}).get("labels")
        if not (isinstance(names, list) and len(names) == count):  # sets from before it
            names = [f"LABEL_{i}" for i in range(count)]
        labels = LabelVocabulary(tuple(str(n) for n in names))
    base = load_base_model(
        base_dir,
        compute,
        trust_remote_code=artifact.trust_remote_code,
        task=artifact.task,
        labels=labels,
        pad_token_id=tokenizer.pad_token_id,
    )
    try:
        if is_bottleneck_adapter(artifact.directory):  # method adapter: not a peft format
            return load_bottleneck_adapter(base, artifact.directory)
        return PeftModel.from_pretrained(base, artifact.directory)
    except (OSError, ValueError, RuntimeError) as exc:
        raise ModelError(
            f"{artifact.uri}: the adapter does not fit the base model {artifact.base_uri} "
            f"({exc}); pass --base URI naming the model it was trained on"
        ) from exc


def head_size(directory: Path) -> int:
    """A classifier adapter's class count: the rows of the head it saves.

    peft stores the trained head (``modules_to_save``) beside the adapter; the base's
    fresh head must have the same shape for it to load.
    """
    from safetensors import safe_open

    config = json.loads((directory / ADAPTER_CONFIG).read_text())
    heads = tuple(f"{m}.weight" for m in config.get("modules_to_save") or ())
    weights = directory / "adapter_model.safetensors"
    if heads and weights.is_file():
        with safe_open(str(weights), framework="pt") as tensors:
            for key in tensors.keys():  # noqa: SIM118 (safe_open is not a mapping)
                if key.endswith(heads):
                    return int(tensors.get_slice(key).get_shape()[0])
    raise ModelError(
        f"{directory}: a classifier adapter without its head ({', '.join(heads) or 'none'}) "
        "in adapter_model.safetensors; publish the set again"
    )


# --------------------------------------------------------------------------- prompting


@dataclass(frozen=True)
class Sampling:
    """How tokens are chosen: greedy at temperature 0, else sampled with top-p."""

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None

    def generate_kwargs(self) -> dict[str, Any]:
        if self.temperature == 0:
            # Explicit Nones: the model's generation_config may ask for sampling.
            return {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
        return {"do_sample": True, "temperature": self.temperature, "top_p": self.top_p}


def conversation(user: str, system: str | None = None) -> Messages:
    messages = [{"role": "system", "content": system}] if system else []
    return [*messages, {"role": "user", "content": user}]


def render(tokenizer: PreTrainedTokenizerBase, messages: Messages, chat_template: bool) -> str:
    """The text the model sees: the conversation through the tokenizer's chat template
    (with the assistant's turn opened), or the last message as it is when
    ``chat_template`` is off (plain completion)."""
    if not chat_template:
        return messages[-1]["content"]
    if not getattr(tokenizer, "chat_template", None):
        raise ConfigError(
            "the tokenizer of this set has no chat template; pass --no-chat-template to "
            "complete the prompt as plain text"
        )
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return str(text)


def _encode(loaded: LoadedModel, text: str, chat_template: bool) -> dict[str, Any]:
    # A chat template writes its own special tokens; adding BOS again would double it.
    encoded = loaded.tokenizer(text, return_tensors="pt", add_special_tokens=not chat_template)
    return {k: v.to(loaded.device) for k, v in encoded.items()}


def generate(
    loaded: LoadedModel,
    text: str,
    sampling: Sampling,
    write: Write,
    *,
    chat_template: bool = True,
) -> str:
    """Generate from the rendered prompt ``text``, streaming the new text to ``write``
    as it is decoded; return the whole answer."""
    import torch
    from transformers import set_seed

    if sampling.seed is not None:
        set_seed(sampling.seed)
    streamer = echo_streamer(loaded.tokenizer, write)
    inputs = _encode(loaded, text, chat_template)
    tokenizer = loaded.tokenizer
    with torch.inference_mode():
        output = loaded.model.generate(
            **inputs,
            max_new_tokens=sampling.max_new_tokens,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            streamer=streamer,
            **sampling.generate_kwargs(),
        )
    new = output[0, inputs["input_ids"].shape[1] :]
    return str(tokenizer.decode(new, skip_special_tokens=True))


def echo_streamer(tokenizer: PreTrainedTokenizerBase, write: Write) -> Any:
    """transformers' TextStreamer (it decodes whole words only, never half a character)
    writing the new text to ``write`` instead of printing it."""
    from transformers import TextStreamer

    class Echo(TextStreamer):
        def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
            write(text + ("\n" if stream_end else ""))

    return Echo(tokenizer, skip_prompt=True, skip_special_tokens=True)


def classify(loaded: LoadedModel, text: str) -> list[tuple[str, float]]:
    """Each class with its probability, most likely first."""
    import torch

    inputs = _encode(loaded, text, chat_template=False)
    with torch.inference_mode():
        logits = loaded.model(**inputs).logits[0].float()
    probabilities = torch.softmax(logits, dim=-1).tolist()
    return sorted(zip(loaded.labels, probabilities, strict=True), key=lambda p: -p[1])


def embed(loaded: LoadedModel, texts: list[str]) -> torch.Tensor:
    """[N, H]: the texts as the published sentence encoder embeds them (its pooling and
    normalisation from the set's sentence-transformers files; mean and normalised for a
    set without them)."""
    from finetune_trainer.embedding.layout import Layout, embed, read_layout

    layout = read_layout(loaded.artifact.directory) or Layout("mean", normalize=True)
    return embed(loaded.model, loaded.tokenizer, texts, layout)


def similarities(loaded: LoadedModel, query: str, candidates: list[str]) -> list[tuple[str, float]]:
    """Each candidate with its cosine similarity to ``query``, most similar first."""
    import torch.nn.functional as F

    vectors = F.normalize(embed(loaded, [query, *candidates]), dim=-1)
    scores = (vectors[1:] @ vectors[0]).tolist()
    return sorted(zip(candidates, scores, strict=True), key=lambda p: -p[1])


# --------------------------------------------------------------------------- chat


@dataclass
class Chat:
    """A conversation kept through the chat template: each turn renders the whole
    history, so the model sees its own earlier answers."""

    loaded: LoadedModel
    sampling: Sampling
    system: str | None = None
    history: Messages = field(default_factory=list)

    def reset(self) -> None:
        self.history.clear()

    def prompt(self, user: str) -> str:
        """The text the model sees for the next turn ``user``."""
        head = [{"role": "system", "content": self.system}] if self.system else []
        return render(
            self.loaded.tokenizer, [*head, *self.history, {"role": "user", "content": user}], True
        )

    def turn(self, user: str, write: Write) -> str:
        answer = generate(self.loaded, self.prompt(user), self.sampling, write)
        self.history += [
            {"role": "user", "content": user},
            {"role": "assistant", "content": answer},
        ]
        return answer
