"""The ``finetune`` command line. Each command is thin: it parses its arguments and
calls the contract (validate, crd, docs), the trainer (run, train, verify) or the
controller (operator), importing the trainer and the controller only inside the
command that needs them, so each image runs the commands of its own side."""
