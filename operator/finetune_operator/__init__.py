"""The operator side: the FineTuneJob API, its CRD, manifest builders and the CLI.

Nothing here imports torch, transformers or peft: the operator image does not carry
them. The trainer contract (``finetune_api.config``) is pure pydantic and is
embedded in the FineTuneJob spec, so both sides validate with the same models.
"""

__version__ = "0.1.0"
