"""The model card (README.md) of a published run, built with huggingface_hub's ModelCard.

The Hub, ``huggingface_hub.ModelCard.load`` and every tool that lists models read the
card's YAML front matter, so the facts a reader filters by live there, in the Hub's own
schema (:class:`~huggingface_hub.ModelCardData`): the base model, the library that loads
the artifact, the pipeline, the datasets and the evaluation results as a ``model-index``.
Facts the schema cannot hold honestly stay in the text: a base or a dataset that is no
Hub repository (a local path or a bucket) is named in the body, never written into
metadata that the Hub would try to link to a repository.

The "Use it" snippet is runnable as written: it names the real artifact location and
the real base, never a placeholder. Where the location needs a step first (an s3://
prefix to download, a claim to mount), the snippet says that step with the real names.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from finetune_api.config import TrainerConfig
from finetune_api.tasks import METRICS, TASKS
from finetune_api.uri import Role, hf_dataset_parts, hf_output_parts, parse_uri, without_credentials

_PIPELINE_BY_CLASS = {
    "AutoModelForCausalLM": "text-generation",
    "AutoModelForSequenceClassification": "text-classification",
    "AutoModel": "feature-extraction",
    "AutoModelForImageClassification": "image-classification",
}
PIPELINE_TAGS = {
    name: _PIPELINE_BY_CLASS.get(info.auto_class, "other") for name, info in TASKS.items()
}
"""The Hub's pipeline tag (and model-index task type) of each ``spec.task``, by the
transformers class that loads its model (a reward model is a one-output classifier)."""
LIBRARIES = ("torch", "transformers", "peft", "finetune-operator")
"""The libraries whose versions the card records: what loads the artifact, and what made it."""
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


def is_hub_id(ref: str) -> bool:
    """Whether ``ref`` is a Hub repository id (``org/name``), not a path or a URI."""
    return bool(_HUB_ID.match(ref)) and not Path(ref).exists()


def model_card(
    config: TrainerConfig,
    metrics: dict[str, Any],
    base_model_ref: str,
    artifact: str = "adapter",
    plots: Mapping[str, str] | None = None,
    *,
    license: str | None = None,
) -> str:
    """The README.md of the artifact; ``artifact`` is the method's (adapter or model).

    ``base_model_ref`` is what the adapter's config names as its base (a Hub id, or an
    absolute path); ``plots`` are the pictures staged beside the card (relative path to
    alt text), embedded under "Training curves" in that order; ``license`` is the base
    model's, when its own card says.
    """
    from huggingface_hub import ModelCard

    data = card_data(config, metrics, base_model_ref, artifact, license)
    body = _body(config, metrics, base_model_ref, artifact, plots or {})
    return str(ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}"))


def card_data(
    config: TrainerConfig,
    metrics: Mapping[str, Any],
    base_model_ref: str,
    artifact: str,
    license: str | None = None,
) -> Any:
    """The card's front matter as a :class:`huggingface_hub.ModelCardData`."""
    from huggingface_hub import EvalResult, ModelCardData

    task_type = PIPELINE_TAGS[config.task]
    dataset_type, dataset_name = _eval_dataset(config)
    results = [
        EvalResult(
            task_type=task_type,
            dataset_type=dataset_type,
            dataset_name=dataset_name,
            dataset_split="validation",
            metric_type=_snake(name),
            metric_name=name,
            metric_value=float(metrics[name]),
        )
        for name in _eval_metrics(metrics)
    ]
    return ModelCardData(
        model_name=config.job_name,
        base_model=base_model_ref if is_hub_id(base_model_ref) else None,
        library_name="transformers" if artifact == "model" or _bottleneck(config) else "peft",
        pipeline_tag=task_type,
        tags=["finetune-operator", config.method.type],
        datasets=hub_datasets(config) or None,
        license=license,
        eval_results=results or None,
    )


def hub_datasets(config: TrainerConfig) -> list[str]:
    """The Hub ids of the run's datasets that came from ``hf://datasets/...``, in order."""
    found: list[str] = []
    for uri in _dataset_uris(config):
        if uri.startswith("hf://"):
            repo, _ = hf_dataset_parts(uri.removeprefix("hf://"))
            if repo not in found:
                found.append(repo)
    return found


def _dataset_uris(config: TrainerConfig) -> list[str]:
    spec = config.dataset
    sources = [m.train for m in spec.mixture] if spec.mixture else [spec.train]
    return [u for u in [*sources, spec.validation] if u]


def _eval_dataset(config: TrainerConfig) -> tuple[str, str]:
    """(dataset type, dataset name) of the scores: the validation set, or the share of the
    training data held out when there is none; the type is a Hub id where there is one."""
    spec = config.dataset
    source = spec.validation or (spec.mixture[0].train if spec.mixture else spec.train) or ""
    hub = hf_dataset_parts(source.removeprefix("hf://"))[0] if source.startswith("hf://") else None
    shown = without_credentials(source)
    return (hub or "custom"), (shown if spec.validation else f"held-out share of {shown}")


def _eval_metrics(metrics: Mapping[str, Any]) -> list[str]:
    """The evaluation scores in ``metrics``: the contract's metrics, in its order."""
    return [
        name
        for name in METRICS
        if isinstance(metrics.get(name), int | float) and not isinstance(metrics[name], bool)
    ]


def _snake(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", name).lower()


def _body(
    config: TrainerConfig,
    metrics: Mapping[str, Any],
    base_model_ref: str,
    artifact: str,
    plots: Mapping[str, str],
) -> str:
    from finetune_trainer import __version__

    what = "adapter" if artifact == "adapter" else "fine-tuned model"
    return f"""# {config.job_name}

A {config.method.type.upper()} {what} of {_base_text(config, base_model_ref)}, trained by
finetune-operator {__version__} on {_data_summary(config)}.

## Results

{_results_table(metrics)}
{_plots_section(plots)}
## Method

`{config.method.type}` with these options:

```json
{json.dumps(config.method.options().model_dump(mode="json"), indent=2)}
```

## Training hyperparameters

```json
{json.dumps(config.training.model_dump(mode="json", by_alias=True), indent=2)}
```

## Data

{_data_section(config)}

## Libraries

{_library_table()}

## Use it

{usage(artifact, TASKS[config.task].auto_class, config=config, base_model_ref=base_model_ref)}

`manifest.json` lists every file with its sha256 and the full spec of the run.
"""


def _base_text(config: TrainerConfig, ref: str) -> str:
    """The base as the reader should know it: the spec's URI, and what the adapter's
    config names when that differs (a Hub id found in the base's config, a local path)."""
    uri = without_credentials(config.model.uri)
    at = f" at revision `{config.model.revision}`" if config.model.revision else ""
    if uri.removeprefix("hf://") == ref:
        return f"[`{ref}`](https://huggingface.co/{ref}){at}"
    if is_hub_id(ref):
        return f"`{uri}`{at} (a copy of the Hub's [`{ref}`](https://huggingface.co/{ref}))"
    if ref.startswith("/"):
        return (
            f"`{uri}`{at} (the adapter's config names the base by its absolute path, "
            f"`{ref}`: it loads as is on the machine that trained it; elsewhere, copy the "
            "base to that path or pass the base model explicitly, as below)"
        )
    return f"`{uri}`{at}"


def _results_table(metrics: Mapping[str, Any]) -> str:
    """Before/after scores on the validation data, then the run's other numbers."""
    rows = []
    for name in _eval_metrics(metrics):
        before = metrics.get(f"{name}Before")
        rows.append(
            f"| {name} | {'-' if before is None else _fmt(before)} | {_fmt(metrics[name])} |"
        )
    scores = (
        "| metric | base model | fine-tuned |\n|---|---|---|\n" + "\n".join(rows)
        if rows
        else "No evaluation scores were recorded."
    )
    shown = {*(_eval_metrics(metrics)), *(f"{n}Before" for n in _eval_metrics(metrics))}
    other = [
        f"| {k} | {_fmt(v)} |"
        for k, v in metrics.items()
        if k not in shown and isinstance(v, int | float | str) and not isinstance(v, bool)
    ]
    run = "\n\n| run | value |\n|---|---|\n" + "\n".join(other) if other else ""
    return scores + run


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _plots_section(plots: Mapping[str, str]) -> str:
    if not plots:
        return ""
    images = "\n\n".join(f"![{alt}]({path})" for path, alt in plots.items())
    return f"\n## Training curves\n\n{images}\n"


def _data_summary(config: TrainerConfig) -> str:
    spec = config.dataset
    if spec.mixture:
        sources = ", ".join(
            f"`{without_credentials(m.train)}` (weight {m.weight:g})" for m in spec.mixture
        )
        return f"a mixture of {sources}"
    return f"`{without_credentials(spec.train or '')}` (format `{spec.format}`)"


def _data_section(config: TrainerConfig) -> str:
    spec = config.dataset
    lines = [f"- training: {_data_summary(config)}"]
    if spec.validation:
        lines.append(f"- validation: `{without_credentials(spec.validation)}`")
    else:
        lines.append(
            f"- validation: a held-out share ({spec.validation_split or 'default'}) "
            "of the training data"
        )
    local = [u for u in _dataset_uris(config) if not u.startswith("hf://")]
    if local:
        lines.append(
            "- not on the Hub (so not in this card's `datasets` metadata): "
            + ", ".join(f"`{without_credentials(u)}`" for u in local)
        )
    return "\n".join(lines)


def _library_table() -> str:
    rows = "\n".join(f"| {name} | {_version(name)} |" for name in LIBRARIES)
    return f"| library | version |\n|---|---|\n{rows}"


def _version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        if package == "finetune-operator":
            from finetune_trainer import __version__

            return __version__
        return "not installed"


def usage(
    artifact: str,
    auto_class: str,
    *,
    config: TrainerConfig | None = None,
    base_model_ref: str | None = None,
) -> str:
    """How to load what was published, with the Auto class of the job's task, the real
    location of the artifact (``config.output.uri``) and the real base."""
    fetch, where, revision = artifact_location(config) if config else ("", ".", None)
    rev = f", revision={_py(revision)}" if revision else ""
    if auto_class == "AutoModelForImageClassification":
        return _image_usage(artifact, fetch, where, config, base_model_ref)
    if artifact != "adapter":
        return f"""{fetch}```python
from transformers import {auto_class}, AutoTokenizer

model = {auto_class}.from_pretrained({_py(where)}{rev})
tokenizer = AutoTokenizer.from_pretrained({_py(where)}{rev})
```"""
    peft_class = auto_class.replace("AutoModel", "AutoPeftModel")
    base_fetch, base = _base_location(config, base_model_ref)
    # A reward model's head has one output; the base would otherwise get two.
    head = ", num_labels=1" if config is not None and config.task == "reward-model" else ""
    if _bottleneck(config):
        return f"""{fetch}{base_fetch}Bottleneck adapters are not a peft format; the
trainer's loader attaches them to the base (`finetune generate` does this for you):

```python
from pathlib import Path

from finetune_trainer.methods.bottleneck import load_bottleneck_adapter
from transformers import {auto_class}, AutoTokenizer

base = {auto_class}.from_pretrained({_py(base)})
model = load_bottleneck_adapter(base, Path({_py(where)}))
tokenizer = AutoTokenizer.from_pretrained({_py(where)})
```"""
    base_rev = (
        f", revision={_py(config.model.revision)}"
        if config and config.model.revision and base == config.model.uri.removeprefix("hf://")
        else ""
    )
    auto = (
        f"""The adapter's config names its base (`{base_model_ref}`), so one call loads both:

```python
from peft import {peft_class}
from transformers import AutoTokenizer

model = {peft_class}.from_pretrained({_py(where)}{rev}{head})
tokenizer = AutoTokenizer.from_pretrained({_py(where)}{rev})
```

Or with the base loaded explicitly (to choose its dtype, device map or quantization):

"""
        if base_model_ref and (is_hub_id(base_model_ref) or base_model_ref.startswith("/"))
        else ""
    )
    return f"""{fetch}{base_fetch}{auto}```python
from peft import PeftModel
from transformers import {auto_class}, AutoTokenizer

base = {auto_class}.from_pretrained({_py(base)}{base_rev}{head})
model = PeftModel.from_pretrained(base, {_py(where)}{rev})
tokenizer = AutoTokenizer.from_pretrained({_py(where)}{rev})
```"""


def _bottleneck(config: TrainerConfig | None) -> bool:
    """Method adapter publishes bottleneck adapters in the trainer's own format."""
    return config is not None and config.method.type == "adapter"


def _py(text: str) -> str:
    """``text`` as a Python string literal, double-quoted as the snippets are written."""
    return json.dumps(text)


def artifact_location(config: TrainerConfig) -> tuple[str, str, str | None]:
    """(what to do first, as Markdown; the path or Hub id to load; the Hub revision) of
    the published set at ``config.output.uri``."""
    return _location(config.output.uri, Role.OUTPUT, f"./{config.job_name}")


def _image_usage(
    artifact: str,
    fetch: str,
    where: str,
    config: TrainerConfig | None,
    base_model_ref: str | None,
) -> str:
    """An image classifier: the published image processor and the model (an adapter:
    the base with a head of the manifest's classes, then peft, which has no Auto class
    for image classifiers)."""
    if artifact != "adapter":
        load = f"model = AutoModelForImageClassification.from_pretrained({_py(where)})"
        base_fetch, imports = "", ""
    else:
        base_fetch, base = _base_location(config, base_model_ref)
        imports = "import json\n\nfrom peft import PeftModel\n"
        load = f"""labels = json.load(open({_py(where + "/manifest.json")}))["labels"]
base = AutoModelForImageClassification.from_pretrained(
    {_py(base)},
    num_labels=len(labels),
    id2label=dict(enumerate(labels)),
    label2id={{name: i for i, name in enumerate(labels)}},
    ignore_mismatched_sizes=True,  # the base's own head is replaced by the trained one
)
model = PeftModel.from_pretrained(base, {_py(where)})"""
    return f"""{fetch}{base_fetch}```python
{imports}from PIL import Image
from transformers import AutoImageProcessor, AutoModelForImageClassification

processor = AutoImageProcessor.from_pretrained({_py(where)})
{load}
inputs = processor(Image.open("photo.jpg").convert("RGB"), return_tensors="pt")
print(model.config.id2label[model(**inputs).logits.argmax(-1).item()])
```"""


def _base_location(config: TrainerConfig | None, ref: str | None) -> tuple[str, str]:
    """(what to do first; what to load) for the base: the adapter's own reference when
    it loads as is (a Hub id, an absolute path), else a local copy of the base's URI."""
    if config is None or ref is None:
        return "", ref or "."
    if is_hub_id(ref) or ref.startswith("/"):
        return "", ref
    fetch, where, _ = _location(config.model.uri, Role.MODEL, "./base-model")
    return fetch, where


def _location(uri: str, role: Role, local_name: str) -> tuple[str, str, str | None]:
    parsed = parse_uri(uri, role)
    if parsed.scheme == "hf":
        repo, branch = hf_output_parts(parsed.location)  # a model's location has no branch
        return "", repo, branch
    if parsed.scheme == "s3":
        return (
            f"Download `{uri}` first, e.g. `aws s3 cp --recursive {uri} {local_name}` "
            f"(then `finetune verify {local_name}` checks it against its manifest):\n\n",
            local_name,
            None,
        )
    if parsed.scheme == "gs":
        return (
            f"Download `{uri}` first, e.g. `gcloud storage rsync --recursive {uri} {local_name}` "
            f"(then `finetune verify {local_name}` checks it against its manifest):\n\n",
            local_name,
            None,
        )
    if parsed.scheme == "az":
        container, _, prefix = parsed.location.partition("/")
        return (
            f"Download `{uri}` first, e.g. `az storage blob download-batch --source {container} "
            f"--pattern '{prefix}/*' --destination {local_name}` (then `finetune verify` the "
            f"`{prefix}` folder it creates):\n\n",
            f"{local_name}/{prefix}",
            None,
        )
    if parsed.scheme == "pvc":
        claim, _, path = parsed.location.partition("/")
        mounted = f"/mnt/{claim}" + (f"/{path}" if path else "")
        return (
            f"In a pod that mounts the PersistentVolumeClaim `{claim}` at `/mnt/{claim}`:\n\n",
            mounted,
            None,
        )
    return "", str(Path(parsed.location).expanduser().resolve()), None
