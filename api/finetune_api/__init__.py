"""The contract between everything that reads a FineTuneJob: the CLI, the operator and
the trainer.

It holds what both sides must agree on and nothing that runs a job: the FineTuneJob
and TrainerConfig models (``resource``, ``config``), every rule a spec must satisfy
(``rules``), the task table (``tasks``), exit codes and the termination message
(``outcome``), rendering a FineTuneJob into its TrainerConfig (``render``), reading
manifests (``manifests``), the CRD and the field reference (``crd``, ``docs``) and the
storage URI grammar (``uri``). Pure pydantic: importing it never imports torch,
transformers, peft or kopf (import-linter checks it), so both images install it.
"""

__version__ = "0.1.0"
