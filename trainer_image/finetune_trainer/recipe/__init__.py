"""The fine-tuning recipe: a run as typed setup steps, then a short loop.

- :mod:`~finetune_trainer.recipe.setup`: the setup steps, each one small function to one
  typed value: hardware (accelerator and compute), checkpoints (output and resume), the
  method, the base model's files and tokenizer, the data, the base model, the method
  applied, the loss, the optimizer and schedule, and the progress reporting;
- :mod:`~finetune_trainer.recipe.scoring`: the evaluations before, during and after;
- :mod:`~finetune_trainer.recipe.run`: :func:`fine_tune`, those steps in their order
  around :func:`finetune_trainer.loop.train`, and the metrics of the run.

Publishing is not part of it: :mod:`finetune_trainer.runner` publishes what it returns.
"""

from finetune_trainer.recipe.run import TrainedRun, fine_tune, run_metrics

__all__ = ["TrainedRun", "fine_tune", "run_metrics"]
