"""Paths on the command line where a storage URI is expected.

A manifest spells every location as a URI (``file://``, ``s3://``, ...): it travels to a
cluster, where a bare path would mean nothing. On the command line a person means this
machine, so ``finetune verify ./artifacts/x`` and ``finetune run --output ./out`` take a
path as it is typed and mean ``file://`` with it made absolute (what the shell's current
directory made it), which :func:`finetune_api.uri.parse_uri` then checks as usual.
"""

from __future__ import annotations

import os


def as_uri(value: str) -> str:
    """``value`` when it has a scheme, else the ``file://`` URI of the path it names.

    ``%`` is escaped because a URI's location is percent-decoded when parsed."""
    if "://" in value:
        return value
    path = os.path.abspath(os.path.expanduser(value))
    return "file://" + path.replace("%", "%25")
