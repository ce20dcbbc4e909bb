"""Doc lint: front matter against ``schemas/frontmatter.schema.json`` and a personal-data scan of page text.

Personal-data rules (what counts as a hit; each was chosen to keep false positives on ordinary technical
text low, and the scrubber uses exactly the same rules):

* **E-mail addresses**: ``local@domain.tld``. Addresses at the RFC 2606 reserved names (``example.com``,
  ``example.org``, ``example.net``, ``*.example``, ``*.test``, ``*.invalid``) and the ``git@host`` user of SSH
  remotes are not personal and pass.
* **Phone numbers**: international numbers starting with ``+`` (8-15 digits, spaces, dots, dashes or
  parentheses between groups) and North American ``(555) 123-4567`` / ``555-123-4567`` forms. Bare digit runs
  are not reported: they are far more often ids, sizes or timestamps.
* **Tokens and secrets**: GitHub tokens (``ghp_``, ``gho_``, ``ghu_``, ``ghs_``, ``ghr_``, ``github_pat_``),
  AWS access key ids (``AKIA``/``ASIA`` + 16), Slack tokens (``xox?-``), private key blocks, and a value
  of 16+ token characters (with at least one digit and one letter) assigned to a name such as ``password``,
  ``secret``, ``api_key``, ``token`` or ``aws_secret_access_key``.
* **IPv4 addresses**: four dot-separated numbers 0-255 without leading zeros that stand alone (not part of a
  longer dotted or alphanumeric token such as ``1.2.3.4.5``, ``v1.2.3.4``, ``pkg-1.2.3.4`` or ``1.2.3.4rc1``),
  are not preceded by the word ``version``/``release`` or a requirement operator (``==``, ``>=``, ``<``...),
  and where at least one part has two or more digits: a quad of single digits such as ``1.2.3.4`` is read as
  a version number. Loopback, unspecified and the
  documentation networks (192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24) are not personal and pass.
* **IPv6 addresses**: colon-separated hex groups (at least three non-empty groups) that parse as IPv6;
  loopback, unspecified, link-local and the documentation prefix ``2001:db8::/32`` pass.

Personal names cannot be recognised reliably from text and are not scanned for.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any

# types-jsonschema is not a dev dependency yet; the ignore stays harmless once it is.
from jsonschema import Draft202012Validator  # type: ignore[import-untyped,unused-ignore]
from jsonschema.exceptions import ValidationError  # type: ignore[import-untyped,unused-ignore]

import schemas
from quantapilot.docs.render import FrontMatterError, split_front_matter

if TYPE_CHECKING:
    from quantapilot.docs.model import GeneratedPage

REDACTED = "[redacted]"
SCHEMA_NAME = "frontmatter.schema.json"


@dataclass(frozen=True, slots=True)
class LintIssue:
    """One problem found in a page.

    Attributes:
        page: The page's path in the repository (or the name given to :func:`lint_markdown`).
        field: The front matter field (``owners``, ``owners[0]``; ``front_matter`` for the block as a
            whole) or ``content`` for the page body.
        message: What is wrong; never repeats the offending value, which may be a secret.
    """

    page: str
    field: str
    message: str


# --- personal data ---------------------------------------------------------------------------------------

_EMAIL_RE = re.compile(r"(?<![\w.%+-])([A-Za-z0-9][A-Za-z0-9._%+-]*)@((?:[A-Za-z0-9-]+\.)+[A-Za-z]{2,})(?![\w-])")
_RESERVED_EMAIL_DOMAINS = ("example.com", "example.org", "example.net")
_RESERVED_EMAIL_TLDS = (".example", ".test", ".invalid", ".localhost")

_PHONE_RE = re.compile(
    r"(?<![\w+])(?:"
    r"\+\d{1,3}(?:[ .\-]?\(?\d{1,4}\)?){2,6}"  # +44 20 7946 0958, +1 (555) 123-4567
    r"|\(\d{3}\)[ ]?\d{3}[ .\-]\d{4}"  # (555) 123-4567
    r"|\d{3}-\d{3}-\d{4}"  # 555-123-4567
    r")(?![\w])"
)

_TOKEN_RES: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("GitHub token", re.compile(r"(?<![A-Za-z0-9_])gh[pousr]_[A-Za-z0-9]{30,}")),
    ("GitHub token", re.compile(r"(?<![A-Za-z0-9_])github_pat_[A-Za-z0-9_]{22,}")),
    ("AWS access key id", re.compile(r"(?<![A-Z0-9])(?:AKIA|ASIA)[A-Z0-9]{16}(?![A-Z0-9])")),
    ("Slack token", re.compile(r"(?<![A-Za-z0-9])xox[abposr]-[A-Za-z0-9-]{10,}")),
    ("private key", re.compile(r"-----BEGIN (?:[A-Z]+ )?PRIVATE KEY-----")),
    (
        "secret value",
        re.compile(
            r"(?i)(?<![A-Za-z0-9])(?:aws_secret_access_key|secret_key|client_secret|secret|password|passwd"
            r"|api[_-]?key|access[_-]?token|auth[_-]?token|token)"
            r"[\"']?\s*[:=]\s*[\"']?(?=[A-Za-z0-9/+_\-]*\d)(?=[A-Za-z0-9/+_\-]*[A-Za-z])[A-Za-z0-9/+_\-]{16,}"
        ),
    ),
)

_IPV4_RE = re.compile(r"(?<![\w.\-])(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})(?![\w\-]|\.\d)")
_VERSION_WORD_RE = re.compile(r"(?i)(?:(?:version|release|ver\.?)\s*[:=]?|[=<>~!]=|[<>])\s*$")
_IPV4_DOC_NETS = tuple(
    ipaddress.ip_network(n) for n in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "0.0.0.0/8")
)

_IPV6_RE = re.compile(r"(?<![\w:.])(?=[0-9A-Fa-f:]*:[0-9A-Fa-f:]*:)[0-9A-Fa-f:]{2,39}(?:%\w+)?(?![\w:])")
_IPV6_DOC_NET = ipaddress.ip_network("2001:db8::/32")


@dataclass(frozen=True, slots=True)
class _Hit:
    kind: str
    start: int
    end: int


def _email_hits(text: str) -> Iterator[_Hit]:
    for m in _EMAIL_RE.finditer(text):
        local, domain = m.group(1), m.group(2).lower()
        if local.lower() == "git":
            continue  # git@github.com:owner/repo is an SSH remote, not a person
        if domain in _RESERVED_EMAIL_DOMAINS or domain.endswith(_RESERVED_EMAIL_TLDS):
            continue
        if any(domain.endswith("." + d) for d in _RESERVED_EMAIL_DOMAINS):
            continue
        yield _Hit("e-mail address", m.start(), m.end())


def _phone_hits(text: str) -> Iterator[_Hit]:
    for m in _PHONE_RE.finditer(text):
        digits = sum(c.isdigit() for c in m.group(0))
        if 8 <= digits <= 15:
            yield _Hit("phone number", m.start(), m.end())


def _token_hits(text: str) -> Iterator[_Hit]:
    for kind, pattern in _TOKEN_RES:
        for m in pattern.finditer(text):
            yield _Hit(kind, m.start(), m.end())


def _ipv4_hits(text: str) -> Iterator[_Hit]:
    for m in _IPV4_RE.finditer(text):
        parts = m.groups()
        if any(len(p) > 1 and p[0] == "0" for p in parts) or any(int(p) > 255 for p in parts):
            continue
        if all(len(p) == 1 for p in parts):
            continue  # 1.2.3.4: read as a version number (documented rule)
        if _VERSION_WORD_RE.search(text, max(0, m.start() - 12), m.start()):
            continue
        addr = ipaddress.IPv4Address(m.group(0))
        if addr.is_loopback or addr.is_unspecified or any(addr in n for n in _IPV4_DOC_NETS):
            continue
        yield _Hit("IPv4 address", m.start(), m.end())


def _ipv6_hits(text: str) -> Iterator[_Hit]:
    for m in _IPV6_RE.finditer(text):
        candidate = m.group(0).split("%", 1)[0]
        if sum(1 for g in candidate.split(":") if g) < 3:
            continue
        try:
            addr = ipaddress.IPv6Address(candidate)
        except ValueError:
            continue
        if addr.is_loopback or addr.is_unspecified or addr.is_link_local or addr in _IPV6_DOC_NET:
            continue
        yield _Hit("IPv6 address", m.start(), m.end())


_DETECTORS: tuple[Callable[[str], Iterator[_Hit]], ...] = (
    _token_hits,
    _email_hits,
    _phone_hits,
    _ipv4_hits,
    _ipv6_hits,
)


def _hits(text: str) -> list[_Hit]:
    found = [hit for detect in _DETECTORS for hit in detect(text)]
    found.sort(key=lambda h: (h.start, -h.end))
    # Drop hits inside an earlier, longer one (an e-mail inside a secret assignment) so spans never overlap.
    merged: list[_Hit] = []
    for hit in found:
        if merged and hit.start < merged[-1].end:
            continue
        merged.append(hit)
    return merged


def find_personal_data(text: str) -> list[tuple[str, int]]:
    """Find personal data and secrets in text.

    Args:
        text: Any text.

    Returns:
        ``(kind, line number)`` for each hit, in order of appearance; the values themselves are not returned.
    """
    return [(hit.kind, text.count("\n", 0, hit.start) + 1) for hit in _hits(text)]


def scrub_personal_data(text: str) -> str:
    """Replace every personal-data or secret hit (same rules as the lint) with ``[redacted]``.

    Args:
        text: Any text, e.g. a README embedded in generated documentation.

    Returns:
        The text with each hit replaced.
    """
    hits = _hits(text)
    if not hits:
        return text
    out: list[str] = []
    pos = 0
    for hit in hits:
        out.append(text[pos : hit.start])
        out.append(REDACTED)
        pos = hit.end
    out.append(text[pos:])
    return "".join(out)


# --- front matter schema ---------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def frontmatter_validator() -> Draft202012Validator:
    """Compile the validator of ``schemas/frontmatter.schema.json`` (through the shared ``schemas`` loader) once.

    Returns:
        The compiled validator.
    """
    validator = schemas.validator(SCHEMA_NAME)
    # The file is generated (`make schemas`); a hand edit that breaks it fails here rather than as odd lint results.
    validator.check_schema(validator.schema)
    return validator


def _field_name(path: Iterable[str | int]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out or "front_matter"


def _schema_message(validator: str, keyword_value: Any, subschema: Any) -> str:
    """Describe a schema violation without repeating the value, which may itself be personal data."""
    if validator == "type":
        return f"must be of type {keyword_value}"
    if validator == "enum":
        return "must be one of " + ", ".join(str(v) for v in keyword_value)
    if validator == "pattern":
        described = subschema.get("description") if isinstance(subschema, dict) else None
        return "has an invalid format" + (f" (expected: {described})" if described else "")
    if validator in ("minLength", "minItems"):
        return "must not be empty" if keyword_value == 1 else f"needs at least {keyword_value} items"
    if validator in ("maxLength", "maxItems"):
        return f"is longer than {keyword_value}"
    if validator == "uniqueItems":
        return "must not contain duplicates"
    return f"violates the schema's {validator!r} rule"


def _schema_issues(page: str, data: dict[str, Any]) -> list[LintIssue]:
    issues: dict[LintIssue, None] = {}  # ordered and free of duplicates
    errors: list[ValidationError] = sorted(
        frontmatter_validator().iter_errors(data), key=lambda e: [str(p) for p in e.absolute_path]
    )
    for error in errors:
        base = list(error.absolute_path)
        instance = error.instance
        # The validator's keyword arguments are typed loosely by jsonschema; they are JSON values here.
        keyword_value: Any = error.validator_value
        subschema: Any = error.schema
        if error.validator == "required" and isinstance(instance, dict):
            # jsonschema reports each missing property as its own error; the dict drops the repeats.
            for name in keyword_value:
                if name not in instance:
                    issues[LintIssue(page, _field_name([*base, name]), "required field is missing")] = None
        elif error.validator == "additionalProperties" and isinstance(instance, dict):
            known = subschema.get("properties", {})
            for name in sorted(str(k) for k in instance if k not in known):
                issues[LintIssue(page, _field_name([*base, name]), "unknown field")] = None
        else:
            message = _schema_message(str(error.validator), keyword_value, subschema)
            issues[LintIssue(page, _field_name(base), message)] = None
    return list(issues)


def _strings(value: Any, path: list[str | int]) -> Iterator[tuple[list[str | int], str]]:
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _strings(v, [*path, str(k)])
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _strings(v, [*path, i])


def lint_markdown(page: str, text: str) -> list[LintIssue]:
    """Lint one Markdown document: its front matter against the schema, then all its text for personal data.

    Args:
        page: How issues name the page (its path in the repository).
        text: The whole document including the front matter block.

    Returns:
        The issues, front matter first; empty when the page is clean.
    """
    issues: list[LintIssue] = []
    try:
        data, body = split_front_matter(text)
    except FrontMatterError as exc:
        return [LintIssue(page, "front_matter", str(exc)), *_content_issues(page, text)]
    if not data:
        issues.append(LintIssue(page, "front_matter", "missing front matter block"))
    else:
        issues.extend(_schema_issues(page, data))
        for path, value in _strings(data, []):
            for kind, _line in find_personal_data(value):
                issues.append(LintIssue(page, _field_name(path), f"contains personal data ({kind})"))
    issues.extend(_content_issues(page, body))
    return issues


def _content_issues(page: str, body: str) -> list[LintIssue]:
    return [
        LintIssue(page, "content", f"contains personal data ({kind}) at body line {line}")
        for kind, line in find_personal_data(body)
    ]


def lint_pages(pages: Iterable[GeneratedPage]) -> list[LintIssue]:
    """Lint generated pages (see :func:`lint_markdown`).

    Args:
        pages: Pages from :func:`quantapilot.docs.generate.generate_docs`.

    Returns:
        Every issue of every page, in page order; empty when all pages pass.
    """
    issues: list[LintIssue] = []
    for page in pages:
        issues.extend(lint_markdown(page.path, page.markdown))
    return issues
