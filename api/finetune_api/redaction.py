"""One redaction layer: every text the project shows passes through :func:`redact`.

A credential can reach a message by many roads: pasted into a URI
(``s3://KEY:SECRET@bucket/x``), quoted by a library's exception (botocore prints the
endpoint URL with its password, http.client the header holding a session token), or in
a ``password=...`` pair. Rather than each output path guarding against the roads it
knows, they all call this module, which masks two kinds of things with :data:`MASK`:

* Values it was told are secret (:func:`register`): what the trainer reads from a
  credentials Secret or the environment. Each value is matched in every form a message
  may carry it in (:func:`forms`): as-is, JSON- or repr-escaped (a token with a line
  break shows as ``\\n``), URL-encoded, base64 (alone, as a Secret's ``data`` holds it,
  or inside a longer base64 text), and each line of a multi-line value on its own.
* Shapes that are credentials whatever their value (:data:`PATTERNS`): the
  ``user:password@`` of a URL, signature and token query parameters of presigned URLs,
  ``password=...``/``"token": "..."`` pairs, ``Authorization: Bearer ...`` values and
  AWS access key ids.

Values shorter than :data:`MIN_SECRET_LENGTH` are not registered: see there. The
module is pure (standard library only), so the trainer, the operator and the CLI share
it; :func:`install_logging` puts it in front of every log record of a process.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import threading
from collections.abc import Iterable, Mapping
from typing import Any, Final
from urllib.parse import quote, quote_plus, unquote, urlsplit

MASK: Final = "***"

MIN_SECRET_LENGTH: Final = 8
"""The shortest value :func:`register` accepts. A shorter one ("admin", "1234", "test")
would also be found inside ordinary words, numbers and paths of unrelated messages,
which the mask would garble and, by where the masks fall, give the value away. Real
credentials are far longer (AWS access key ids 20 characters, secret keys 40, Hugging
Face tokens 37, session tokens hundreds); a short password in a URL or a ``password=``
pair is still masked by :data:`PATTERNS`, which do not depend on its length."""

_SECRET_NAME = re.compile(
    r"secret|token|passw|credential|api_?key|access_?key|auth(?!or)|signature|private_?key",
    re.I,
)
_NOT_A_VALUE = re.compile(
    r"_(?:FILE|PATH|DIR|ROOT|HOME|SOCK|URI|URL|ENDPOINT|REGION|STYLE|TYPE|MODE|NAME)$", re.I
)


def is_secret_name(name: str) -> bool:
    """Whether a variable or Secret key called ``name`` holds a credential by its name
    (``AWS_SECRET_ACCESS_KEY``, ``HF_TOKEN``, ``MLFLOW_TRACKING_PASSWORD``,
    ``WANDB_API_KEY``), not a place or a setting (``AWS_SHARED_CREDENTIALS_FILE``,
    ``FINETUNE_SECRETS_ROOT``, ``HF_TOKEN_PATH``), whose value is no secret."""
    return bool(_SECRET_NAME.search(name)) and not _NOT_A_VALUE.search(name)


# --------------------------------------------------------------------------- forms


def _base64_forms(raw: bytes) -> set[str]:
    """``raw`` in base64, standard and URL-safe, with and without padding; and the parts
    of it that are the same wherever ``raw`` sits inside a longer base64 text: base64
    encodes 3 bytes at a time, so from each of the 3 possible alignments the whole
    groups of ``raw`` encode the same way whatever surrounds them."""
    found: set[str] = set()
    for encode in (base64.b64encode, base64.urlsafe_b64encode):
        whole = encode(raw).decode("ascii")
        found |= {whole, whole.rstrip("=")}
        for skip in range(3):
            groups = (len(raw) - skip) // 3
            if groups > 0:
                found.add(encode(raw[skip : skip + 3 * groups]).decode("ascii"))
    return found


def _url_forms(value: str) -> set[str]:
    """``value`` percent-encoded as URL builders write it (path, query, form), with
    upper- and lower-case hex digits."""
    found = {quote(value, safe=""), quote(value), quote_plus(value)}
    return found | {re.sub(r"%[0-9A-F]{2}", lambda m: m.group().lower(), f) for f in found}


def _escaped_forms(value: str) -> set[str]:
    """``value`` inside a JSON string (ASCII or not) or a Python repr of the text or its
    UTF-8 bytes (what ``%r`` and ``http.client``'s "Invalid header value b'...'" show)."""
    return {
        json.dumps(value)[1:-1],
        json.dumps(value, ensure_ascii=False)[1:-1],
        repr(value)[1:-1],
        repr(value.encode("utf-8"))[2:-1],
    }


def forms(value: str) -> set[str]:
    """Every form of ``value`` a message may carry, each at least
    :data:`MIN_SECRET_LENGTH` long: as-is, escaped, URL-encoded, base64, and each line of
    a multi-line value (a message often quotes the first line of something)."""
    if len(value) < MIN_SECRET_LENGTH:
        return set()
    found = {value} | _escaped_forms(value) | _url_forms(value)
    found |= _base64_forms(value.encode("utf-8"))
    for line in value.splitlines():
        line = line.strip()
        if len(line) >= MIN_SECRET_LENGTH and line != value:
            found |= {line} | _escaped_forms(line) | _url_forms(line)
    return {f for f in found if len(f) >= MIN_SECRET_LENGTH}


def url_credentials(url: str) -> list[str]:
    """The user and password written into ``url`` (``scheme://user:password@host``),
    percent-decoded; empty when it has none or is no URL."""
    try:
        parts = urlsplit(url.strip())
    except ValueError:
        return []
    return [unquote(p) for p in (parts.username, parts.password) if p]


def environment_secrets(environ: Mapping[str, str]) -> list[str]:
    """What in ``environ`` is secret: the values of credential-named variables
    (:func:`is_secret_name`) and the user and password in any URL value
    (``AWS_ENDPOINT_URL=http://user:pass@minio:9000``, ``HTTPS_PROXY``)."""
    found: list[str] = []
    for name, value in environ.items():
        if is_secret_name(name):
            found.append(value)
        if "@" in value and "://" in value:
            found += url_credentials(value)
    return found


# --------------------------------------------------------------------------- patterns

PATTERNS: Final[tuple[tuple[re.Pattern[str], str], ...]] = (
    # scheme://user:password@ (the password may hold '/', as AWS secret keys do) or
    # scheme://user@: everything up to the last '@' of the authority.
    (
        re.compile(r"(\b[a-z][a-z0-9+.-]*://)(?:[^\s/@'\"<>]+:[^\s'\"<>]*|[^\s/@'\"<>:]+)@", re.I),
        rf"\g<1>{MASK}@",
    ),
    # Presigned URLs and token query parameters.
    (
        re.compile(
            r"(?i)([?&](?:x-amz-(?:signature|credential|security-token)|x-goog-(?:signature|"
            r"credential)|signature|sig|awsaccesskeyid|access_token|token|api_?key|password)=)"
            r"[^&\s'\"#<>]+"
        ),
        rf"\g<1>{MASK}",
    ),
    # password=..., token: ..., "secret_access_key": "..." (not a tokenizer's pad_token).
    (
        re.compile(
            r"(?i)\b(?!(?:pad|eos|bos|unk|sep|cls|mask)_token\b)"
            r"([\w-]*(?:secret[_-]?(?:access[_-]?)?key|token|password|passwd|api[_-]?key)"
            r"[\"']?\s*[=:]\s*[\"']?)[^\s\"',;&]+"
        ),
        rf"\g<1>{MASK}",
    ),
    (re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{8,}"), rf"\g<1> {MASK}"),
    # AWS access key ids (long-term AKIA, temporary ASIA).
    (re.compile(r"\b(?:AKIA|ASIA)[A-Z0-9]{16}\b"), MASK),
)
"""(pattern, replacement): credentials recognised by their shape alone."""


# --------------------------------------------------------------------------- the layer


def _mask_values(text: str, needles: Iterable[str]) -> str:
    """``text`` with every occurrence of every needle masked; overlapping or adjacent
    occurrences (two secrets sharing characters) become one mask, so no part of either
    is left between two masks."""
    spans: list[tuple[int, int]] = []
    for needle in needles:
        start = text.find(needle)
        while start != -1:
            spans.append((start, start + len(needle)))
            start = text.find(needle, start + 1)
    if not spans:
        return text
    merged: list[list[int]] = []
    for start, stop in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], stop)
        else:
            merged.append([start, stop])
    out, kept = [], 0
    for start, stop in merged:
        out += [text[kept:start], MASK]
        kept = stop
    out.append(text[kept:])
    return "".join(out)


def _mask_patterns(text: str) -> str:
    for pattern, replacement in PATTERNS:
        text = pattern.sub(replacement, text)
    return text


class Redactor:
    """The registry of secret values and the masking; one per process (:data:`REDACTOR`),
    fed by whatever reads a credential, read by every output path."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: set[str] = set()
        self._needles: tuple[str, ...] = ()

    def register(self, *values: str | None) -> None:
        """Treat each value as secret from now on, in all its :func:`forms`. Values
        shorter than :data:`MIN_SECRET_LENGTH` (and None) are ignored."""
        fresh = {v for v in values if v and len(v) >= MIN_SECRET_LENGTH} - self._values
        if not fresh:
            return
        with self._lock:
            self._values |= fresh
            needles = set(self._needles)
            for value in fresh:
                needles |= forms(value)
            self._needles = tuple(sorted(needles, key=len, reverse=True))

    def register_environment(self, environ: Mapping[str, str]) -> None:
        """Register the secrets of ``environ`` (:func:`environment_secrets`)."""
        self.register(*environment_secrets(environ))

    def clear(self) -> None:
        """Forget every registered value (for tests)."""
        with self._lock:
            self._values, self._needles = set(), ()

    def redact(self, text: str, extra: Iterable[str | None] = ()) -> str:
        """``text`` with every registered value, every value of ``extra`` and every
        credential-shaped part masked. Repeated until nothing changes, so that a mask
        never joins two pieces into a secret."""
        needles = list(self._needles)
        for value in extra:
            if value:
                needles += forms(value)
        for _ in range(5):
            masked = _mask_patterns(_mask_values(text, needles))
            if masked == text:
                return text
            text = masked
        while (masked := _mask_values(text, needles)) != text:  # each pass shortens text
            text = masked
        return text


REDACTOR: Final = Redactor()
register = REDACTOR.register
register_environment = REDACTOR.register_environment


def redact(text: str, extra: Iterable[str | None] = ()) -> str:
    """``text`` as it may be shown: see :meth:`Redactor.redact`."""
    return REDACTOR.redact(text, extra)


def redact_data(value: Any, extra: Iterable[str | None] = ()) -> Any:
    """``value`` (JSON-like: dicts, lists, strings, numbers) with every string in it,
    keys included, redacted; other values as they are."""
    extra = list(extra)
    if isinstance(value, str):
        return redact(value, extra)
    if isinstance(value, Mapping):
        return {redact_data(k, extra): redact_data(v, extra) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(redact_data(v, extra) for v in value)
    return value


# --------------------------------------------------------------------------- logging


def redact_record(record: logging.LogRecord) -> None:
    """Redact a log record in place: its message (arguments merged in), the traceback
    and the stack it carries. A record whose arguments do not format is left to the
    handler, which reports that itself."""
    try:
        message = record.getMessage()
    except Exception:
        return
    shown = redact(message)
    if shown != message or record.args:
        record.msg, record.args = shown, None
    if record.exc_info and not record.exc_text:
        record.exc_text = logging.Formatter().formatException(record.exc_info)
    if record.exc_text:
        record.exc_text = redact(record.exc_text)
    if record.stack_info:
        record.stack_info = redact(record.stack_info)


class RedactingFilter(logging.Filter):
    """A handler filter that redacts each record (:func:`redact_record`) and keeps it."""

    def filter(self, record: logging.LogRecord) -> bool:
        redact_record(record)
        return True


_installed = threading.Lock()
_factory_installed = False


def install_logging() -> None:
    """Redact every log record this process makes, whichever logger makes it (our own,
    boto's, tenacity's, kopf's) and whichever handler shows it (ours, the host
    program's, logging's last resort, kopf's Event poster): the record factory is
    wrapped, once. The handlers of our own output add :class:`RedactingFilter` too, in
    case something replaces the factory afterwards."""
    global _factory_installed
    with _installed:
        if _factory_installed:
            return
        make = logging.getLogRecordFactory()

        def redacting_factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
            record = make(*args, **kwargs)
            redact_record(record)
            return record

        logging.setLogRecordFactory(redacting_factory)
        _factory_installed = True
