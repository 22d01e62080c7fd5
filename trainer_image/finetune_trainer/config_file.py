"""Reading the TrainerConfig a trainer pod is given (``finetune train --config``).

The contract's model does all the judging: the same field rules and cross-field rules
(:mod:`finetune_api.rules`) that ``finetune validate`` and the operator applied to the
FineTuneJob. Anything it refuses is a configuration error (exit 2), reported per field
with the contract's own wording, so a hand-written or stale config fails before any
model or data is loaded.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import ValidationError

from finetune_api.config import TrainerConfig
from finetune_api.manifests import explain
from finetune_trainer.errors import ConfigError


def load_trainer_config(path: Path) -> TrainerConfig:
    """The TrainerConfig in ``path``, or :class:`ConfigError` naming every problem."""
    try:
        text = path.read_bytes()
    except OSError as exc:
        raise ConfigError(
            f"{path}: not a valid TrainerConfig: cannot read it ({exc.strerror or exc})"
        ) from None
    return parse_trainer_config(text, str(path))


def parse_trainer_config(text: str | bytes, source: str) -> TrainerConfig:
    """Parse and judge a TrainerConfig's JSON; ``source`` names it in the error."""
    try:
        return TrainerConfig.from_json(text)
    except ValidationError as exc:
        problems = "; ".join(str(p) for p in explain(exc, TrainerConfig))
        raise ConfigError(f"{source}: not a valid TrainerConfig: {problems}") from None
