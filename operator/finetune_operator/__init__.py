"""The controller: runs FineTuneJobs as training Jobs and reports on them.

- :mod:`.handlers`: the kopf registrations, each a shell around :mod:`.reconcile`;
- :mod:`.reconcile`: create or adopt the children, refresh and write the status, post
  Events, keep the Job's suspension in line with the spec;
- :mod:`.builders`: pure functions from a spec to the ConfigMap, Job and Service dicts;
- :mod:`.status`: the status derivation, pure, split by concern;
- :mod:`.observation`: the trainer's progress, the operator's metrics and probes;
- :mod:`.kube`, :mod:`.names`, :mod:`.settings`, :mod:`.values`: the API calls, the
  children's names and labels, the operator's settings, shared value readers.

Nothing here imports torch, transformers or peft: the operator image does not carry
them. The contract (``finetune_api``) is pure pydantic, so the operator validates specs
and reads the trainer's exit codes and termination message with the same models as the
CLI and the trainer.
"""

__version__ = "0.1.0"
