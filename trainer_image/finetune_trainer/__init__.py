"""The trainer: everything that runs inside a training pod (or in `finetune run`).

It reads one contract, :class:`finetune_api.config.TrainerConfig`, and knows
nothing about Kubernetes objects. Importing this package (and its ``config`` and
``storage.uri`` modules) must stay cheap and torch-free: the operator imports the
contract to validate specs and render ConfigMaps without the training stack.
"""

__version__ = "0.1.0"
