"""Parsing and checking storage URIs, without touching any storage.

Every URI in a spec goes through :func:`parse_uri`, so the same rules apply when the
operator validates a manifest and when the trainer opens the data. Each scheme is one
entry in :data:`SCHEMES`, which says what the scheme can hold and how its location is
checked; adding a scheme is adding an entry.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from urllib.parse import unquote

from finetune_api.redaction import redact


class Role(StrEnum):
    """What a URI points at; not every scheme can serve every role."""

    MODEL = "model"
    DATASET = "dataset"
    OUTPUT = "output"


def _article(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"


@dataclass(frozen=True)
class ParsedUri:
    scheme: str
    location: str
    """Everything after ``scheme://``, percent-decoded."""

    def __str__(self) -> str:
        return f"{self.scheme}://{self.location}"


class UriError(ValueError):
    """A URI that cannot be used; the message says what would be accepted."""


_HF_REPO = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_GCS_BUCKET = re.compile(r"^(?=.{3,222}$)[a-z0-9][a-z0-9._-]*[a-z0-9]$")
_CONTAINER = re.compile(r"^(?!.*--)[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$")
"""Azure's container names: 3-63 lower-case letters, digits and single hyphens, starting
and ending with a letter or digit."""
_HF_BRANCH = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,99}$")
_CLAIM = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def _check_segments(location: str) -> None:
    """Reject ``..`` segments: a URI must never climb out of the place it names."""
    if any(part == ".." for part in location.split("/")):
        raise UriError("'..' path segments are not allowed")


def _check_file(location: str, role: Role) -> None:
    if not location:
        raise UriError("file:// needs a path, e.g. file://./data/train.jsonl or file:///data/x")
    if role is Role.OUTPUT:
        _check_segments(location)


def _check_pvc(location: str, role: Role) -> None:
    claim, _, path = location.partition("/")
    if not _CLAIM.match(claim):
        raise UriError(
            f"'{claim}' is not a PersistentVolumeClaim name; write pvc://<claim>/<path>, "
            "e.g. pvc://training-data/sets/train.jsonl"
        )
    if role is not Role.OUTPUT and not path:
        raise UriError("pvc:// needs a path inside the claim: pvc://<claim>/<path>")
    if path.startswith("/") or "//" in path:
        raise UriError(
            f"'{path}' is not a path inside the claim: pvc:// paths are relative to the "
            "claim's root, so write pvc://<claim>/<path> with single slashes (no '//')"
        )
    _check_segments(path)


def _check_s3(location: str, role: Role) -> None:
    bucket, _, key = location.partition("/")
    if not _BUCKET.match(bucket):
        raise UriError(
            f"'{bucket}' is not a valid bucket name (3-63 lower-case letters, digits, '.', '-'); "
            "write s3://<bucket>/<key>"
        )
    if role is not Role.OUTPUT and not key:
        raise UriError("s3:// needs an object key or prefix: s3://<bucket>/<key>")
    _check_segments(key)


def _check_gs(location: str, role: Role) -> None:
    """``gs://<bucket>/<key>``: a Cloud Storage bucket, named as GCS allows (3-63
    lower-case letters, digits, '-', '_' and '.', starting and ending with a letter or a
    digit; dotted names up to 222 with each part at most 63)."""
    bucket, _, key = location.partition("/")
    if not _GCS_BUCKET.match(bucket) or any(len(p) > 63 for p in bucket.split(".")):
        raise UriError(
            f"'{bucket}' is not a valid Cloud Storage bucket name (3-63 lower-case letters, "
            "digits, '-', '_' and '.', starting and ending with a letter or digit); write "
            "gs://<bucket>/<key>"
        )
    if role is not Role.OUTPUT and not key:
        raise UriError("gs:// needs an object name or prefix: gs://<bucket>/<key>")
    _check_segments(key)


def _check_az(location: str, role: Role) -> None:
    """``az://<container>/<key>``: the storage account is not in the URI but in the
    credentials (``AZURE_STORAGE_ACCOUNT_NAME`` or the connection string), as adlfs and
    the Azure CLI write blob URIs."""
    container, _, key = location.partition("/")
    if not _CONTAINER.match(container):
        raise UriError(
            f"'{container}' is not a valid container name (3-63 lower-case letters, digits and "
            "single '-', starting and ending with a letter or digit); write "
            "az://<container>/<key> (the storage account comes from the credentials)"
        )
    if role is not Role.OUTPUT and not key:
        raise UriError("az:// needs a blob name or prefix: az://<container>/<key>")
    _check_segments(key)


def _check_hf(location: str, role: Role) -> None:
    repo = location
    if role is Role.OUTPUT:
        repo, branch = hf_output_parts(location)
        if branch is not None and (not _HF_BRANCH.match(branch) or ".." in branch):
            raise UriError(
                f"'{branch}' is not a branch name; write hf://<org>/<name>[@<branch>], "
                "e.g. hf://acme/support-bot@candidate"
            )
        if "/" not in repo:
            raise UriError(f"'{repo}' names no organisation; write hf://<org>/<name>")
    if role is Role.DATASET:
        if not location.startswith("datasets/"):
            raise UriError(
                "Hub datasets are written hf://datasets/<org>/<name>[/<file in the repository>]"
            )
        repo, path = hf_dataset_parts(location)
        if path is not None:
            _check_segments(path)
            if any(not part for part in path.split("/")):
                raise UriError(f"'{path}' is not a file path inside the repository")
    if not _HF_REPO.match(repo):
        raise UriError(f"'{repo}' is not a Hub repository id; write hf://<org>/<name>")


def hf_output_parts(location: str) -> tuple[str, str | None]:
    """``<org>/<name>[@<branch>]`` split into the repository id and the branch (None: the
    repository's default branch). An output is written to a branch, never to a tag or a
    commit, so only a branch may follow the ``@``."""
    repo, at, branch = location.partition("@")
    return repo, (branch if at else None)


def hf_dataset_parts(location: str) -> tuple[str, str | None]:
    """``datasets/<org>/<name>[/<path>]`` split into the repository id and the file in it.

    The first two segments are the repository (``org/name``); anything after them names
    one file of the repository. A one-segment id (``datasets/squad``) has no file part.
    """
    parts = location.removeprefix("datasets/").split("/", 2)
    if len(parts) <= 2:
        return "/".join(parts), None
    return f"{parts[0]}/{parts[1]}", parts[2]


@dataclass(frozen=True)
class Scheme:
    name: str
    roles: frozenset[Role]
    check: Callable[[str, Role], None]
    example: str


SCHEMES: dict[str, Scheme] = {
    s.name: s
    for s in (
        Scheme("file", frozenset(Role), _check_file, "file://<path>"),
        Scheme("pvc", frozenset(Role), _check_pvc, "pvc://<claim>/<path>"),
        Scheme("s3", frozenset(Role), _check_s3, "s3://<bucket>/<key>"),
        Scheme("hf", frozenset(Role), _check_hf, "hf://<org>/<name>"),
        Scheme("az", frozenset(Role), _check_az, "az://<container>/<key>"),
        Scheme("gs", frozenset(Role), _check_gs, "gs://<bucket>/<key>"),
    )
}


def without_credentials(text: str) -> str:
    """``text`` as it may be shown: the ``user:password@`` of every URL in it and every
    registered secret masked (:func:`finetune_api.redaction.redact`, the one layer)."""
    return redact(text)


def _holds_credentials(rest: str, scheme: str) -> bool:
    """Whether the part after ``scheme://`` starts with ``user[:password]@``. A bucket,
    claim or Hub organisation never holds '@' (nor ':'), so for those an '@' before the
    first '/' is a credential, and so is a ':' there with an '@' later (an AWS secret key
    may hold '/'). A file path may hold '@' (``file://./runs@2024``): only the
    ``user:password@`` form counts there."""
    authority = rest.split("/", 1)[0]
    if scheme == "file":
        return bool(re.match(r"^[^/@:]*:[^/@]*@", authority))
    return "@" in authority or (":" in authority and "@" in rest)


def _refuse_credentials(scheme: str, rest: str) -> None:
    """Refuse a URI carrying credentials, without repeating them: the message may end up
    in a status, an Event or a log that many people read."""
    if _holds_credentials(rest, scheme) or _holds_credentials(unquote(rest), scheme):
        keys = {
            "s3": "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY",
            "hf": "HF_TOKEN",
            "az": "AZURE_STORAGE_CONNECTION_STRING (or AZURE_STORAGE_ACCOUNT_NAME and KEY)",
            "gs": "service-account.json (a service-account key file)",
        }
        raise UriError(
            "holds credentials (user:password@), which must never be written into a URI: "
            "remove them (rotate them if this file was shared) and put them in a Kubernetes "
            f"Secret with the keys {keys.get(scheme, 'the store needs')}, named by "
            "credentialsSecret next to this field"
        )


def schemes_for(role: Role) -> list[str]:
    return [name for name, s in SCHEMES.items() if role in s.roles]


def parse_uri(uri: str, role: Role) -> ParsedUri:
    """Split and check ``uri`` for ``role``; raise :class:`UriError` naming the fix."""
    allowed = schemes_for(role)
    examples = ", ".join(SCHEMES[s].example for s in allowed)
    scheme, sep, rest = uri.partition("://")
    if not sep:
        shown = "this URI" if "@" in uri else f"'{uri}'"  # user:password@host/..., unshown
        raise UriError(f"{shown} has no scheme; use one of: {examples}")
    scheme = scheme.lower()
    if scheme not in SCHEMES or scheme not in allowed:
        raise UriError(
            f"scheme '{scheme}://' is not supported for {_article(role.value)} {role.value}; "
            f"use one of: {examples}"
        )
    _refuse_credentials(scheme, rest)
    location = unquote(rest)
    if "\x00" in location:
        raise UriError("NUL bytes are not allowed in a URI")
    SCHEMES[scheme].check(location, role)
    return ParsedUri(scheme, location)


DATA_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")

DIRECTORY = "/"
"""``data_suffix`` of a directory: dataset.format image-folder reads a folder of class
folders, written with a trailing slash (file:///data/shapes/) so that a file name that
lost its suffix is still refused rather than taken for a folder."""
DIRECTORY_SCHEMES = ("file", "pvc")
"""Where a dataset may be a directory: the local schemes, whose folders the trainer can
list (an S3 prefix or a Hub repository is not a folder it walks)."""


def data_suffix(uri: ParsedUri) -> str | None:
    """The file type of a dataset URI, or None for a whole Hub dataset repository (the
    file found in the repository says, see ``HubBackend.local_file``)."""
    location = uri.location
    if uri.scheme == "hf":
        _, path = hf_dataset_parts(location)
        if path is None:
            return None
        location = path
    if location.endswith("/") and uri.scheme in DIRECTORY_SCHEMES:
        return DIRECTORY
    lowered = location.lower()
    for suffix in DATA_SUFFIXES:
        if lowered.endswith(suffix):
            return suffix
    raise UriError(
        f"cannot tell the file type of '{uri}'; name a file ending in "
        + ", ".join(DATA_SUFFIXES)
        + " (or, for dataset.format image-folder, a file:// or pvc:// folder ending in /)"
    )


def _place(uri: str) -> tuple[tuple[str, str], tuple[str, ...]] | None:
    """Where ``uri`` points, as (the namespace, the path's segments in it), or None when
    the URI alone cannot say (an unparseable URI, which its own field reports). A Hub
    repository is the namespace ``hf`` and its id (branch aside: a branch of the base
    model's repository is still that repository).

    The namespace is what must be equal for two places to meet: the scheme and the
    bucket, the claim, or (file://) whether the path is absolute or relative to the
    working directory, since the two cannot be compared without knowing that directory.
    """
    scheme, sep, rest = uri.partition("://")
    scheme, location = scheme.lower(), unquote(rest)
    if not sep or scheme not in ("file", "pvc", "s3", "hf", "az", "gs"):
        return None
    if scheme == "hf":
        return ("hf", ""), (location.partition("@")[0],)  # repositories do not nest
    if scheme == "file":
        root, path = ("/" if location.startswith("/") else "."), location
    else:
        root, _, path = location.partition("/")
    parts: list[str] = []
    for part in path.split("/"):
        if part == ".." and parts and parts[-1] != "..":
            parts.pop()
        elif part not in ("", "."):
            parts.append(part)
    return (scheme, root), tuple(parts)


def overlap(output: str, other: str) -> str | None:
    """How the location ``output`` meets the location ``other``: ``"is the same place as"``,
    ``"is inside"``, ``"contains"``, or None when they are apart or the URIs
    alone cannot tell (the trainer checks again with real paths, links resolved).

    Compared segment by segment (``s3://b/models/x`` does not contain
    ``s3://b/models/x-ft``), after ``.`` and ``..`` are resolved in file:// paths.
    """
    a, b = _place(output), _place(other)
    if a is None or b is None or a[0] != b[0]:
        return None
    mine, theirs = a[1], b[1]
    if mine == theirs:
        return "is the same place as"
    if theirs == mine[: len(theirs)]:
        return "is inside"
    if mine == theirs[: len(mine)]:
        return "contains"
    return None
