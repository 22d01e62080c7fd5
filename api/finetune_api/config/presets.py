"""Model presets: recommended settings for popular base models, as data.

The catalogue is ``presets.yaml`` beside this module (shipped in the wheel as package
data). Each preset is validated here against the contract's own section models
(:class:`LoraSpec`, :class:`QLoraSpec`, :class:`TrainingSpec`), so a preset can only
recommend values a user could have written.

``spec.model.preset: <name>`` fills the gaps the user left:
:func:`finetune_api.render.with_preset` gives
every option the user did not write (pydantic's ``model_fields_set``, i.e. absent from
the manifest) the preset's value; what the user wrote wins. It runs at render time
(:func:`finetune_api.render.render_trainer_config`), which both ``finetune run`` and the
operator use, so a preset means the same thing locally and in a cluster. It fills:

- ``training``: the preset's ``training`` options (learning rate, sequence length),
  whatever the method;
- ``method.<type>``: for ``lora`` and ``qlora``, the preset's options of that method and
  the architecture's ``targetModules``. ``method.type`` itself is never chosen by a
  preset (it decides memory and what is published), nor is ``model.uri`` (a preset
  covers several repositories and mirrors of them: the uri stays required).

This module lives in ``finetune_api.config`` because ``model.preset`` is a field of
:class:`~finetune_api.config.job.ModelSource`, whose enum of names comes from here; it
imports the method and training sections, never ``job`` (applying a preset to a spec is
:func:`finetune_api.render.with_preset`'s, one layer up).
"""

from __future__ import annotations

from functools import cache
from importlib import resources
from typing import TYPE_CHECKING, Any, Literal, Self

import yaml
from pydantic import Field, model_validator

from finetune_api.config.base import CamelModel, ModelUri
from finetune_api.config.methods._fields import ModuleNames
from finetune_api.config.methods.lora import LoraSpec
from finetune_api.config.methods.qlora import QLoraSpec
from finetune_api.config.training import TrainingSpec

CATALOGUE_FILE = "presets.yaml"

PRESET_METHODS = ("lora", "qlora")
"""The methods a preset has options for (the adapters popular bases are tuned with)."""


class Preset(CamelModel):
    """One base model family and the settings recommended for it."""

    name: str = Field(pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$", max_length=63)
    title: str = Field(min_length=1)
    models: list[ModelUri] = Field(
        min_length=1, description="The repositories the preset was written for."
    )
    architecture: str = Field(
        min_length=1, description="config.json's model_type, e.g. llama, qwen2, phi3."
    )
    target_modules: ModuleNames = Field(
        description="Every Linear of one decoder block, by name (attention and MLP)."
    )
    lora: LoraSpec = Field(description="method.lora options filled in for type lora.")
    qlora: QLoraSpec = Field(description="method.qlora options filled in for type qlora.")
    training: TrainingSpec = Field(description="training options filled in.")
    chat_template: str = Field(min_length=1, description="What the chat template expects.")
    notes: str = ""

    @model_validator(mode="after")
    def _modules_are_the_architectures(self) -> Self:
        """targetModules is the architecture's fact, written once per preset; a
        method section naming its own would make the tested list a lie."""
        for section in PRESET_METHODS:
            if "target_modules" in getattr(self, section).model_fields_set:
                raise ValueError(
                    f"preset {self.name}: {section}.targetModules is set; write the "
                    "architecture's modules once, as the preset's targetModules"
                )
        return self

    def method_options(self, method: str) -> dict[str, Any]:
        """What the preset fills in under ``method.<method>`` (wire names); empty for a
        method it has no options for."""
        if method not in PRESET_METHODS:
            return {}
        section: LoraSpec = getattr(self, method)
        given: dict[str, Any] = section.model_dump(exclude_unset=True)
        return {"targetModules": list(self.target_modules), **given}

    def training_options(self) -> dict[str, Any]:
        """What the preset fills in under ``training`` (wire names)."""
        given: dict[str, Any] = self.training.model_dump(exclude_unset=True)
        return given


class Catalogue(CamelModel):
    """The whole presets.yaml."""

    presets: list[Preset] = Field(min_length=1)

    @model_validator(mode="after")
    def _names_are_unique(self) -> Self:
        names = [p.name for p in self.presets]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"preset names must be unique: {', '.join(twice)}")
        return self


@cache
def load_catalogue() -> dict[str, Preset]:
    """Every preset by name, in catalogue order; read once from the package data."""
    text = resources.files(__package__).joinpath(CATALOGUE_FILE).read_text(encoding="utf-8")
    catalogue = Catalogue.model_validate(yaml.safe_load(text))
    return {p.name: p for p in catalogue.presets}


PRESET_NAMES: tuple[str, ...] = tuple(load_catalogue())

if TYPE_CHECKING:
    PresetName = str
else:
    PresetName = Literal[PRESET_NAMES]
"""The ``model.preset`` values (a Literal at run time: an enum in the CRD)."""


def check_preset_name(value: Any) -> Any:
    """Refuses an unknown name with the list to choose from, before the enum's generic
    'Input should be ...' message."""
    if isinstance(value, str) and value not in PRESET_NAMES:
        raise ValueError(
            f"unknown preset '{value}'; use one of: {', '.join(PRESET_NAMES)} (`finetune "
            "presets` lists them), or remove model.preset and set the options yourself"
        )
    return value


def get_preset(name: str) -> Preset:
    """The preset called ``name``; a ValueError naming the field and the choices."""
    check_preset_name(name)
    return load_catalogue()[name]


__all__ = [
    "PRESET_METHODS",
    "PRESET_NAMES",
    "Catalogue",
    "Preset",
    "PresetName",
    "check_preset_name",
    "get_preset",
    "load_catalogue",
]
