"""`google.api.http` path templates: parsing, request matching and variable extraction,
with the semantics of Envoy's transcoder (grpc-httpjson-transcoding's path matcher):

- a trie over path segments; at each step a literal child is tried before `*`, then `**`,
  depth first with backtracking; the HTTP method and custom verb select the leaf;
- a trailing `:verb` is split off only when some template registers that verb;
- trailing empty segments are dropped (`/v1/users/` is `/v1/users`); the query is ignored;
- single-segment variables are fully percent-decoded; variables spanning several segments
  (or `**`) keep RFC 6570 reserved characters encoded (`ALL_CHARACTERS_EXCEPT_RESERVED`);
- a path registered twice for one method matches nothing.

Grammar: Template = "/" Segments [":" Verb]; Segment = "*" | "**" | LITERAL | Variable;
Variable = "{" FieldPath ["=" Segments] "}".
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")

SINGLE = "*"
DEEP = "**"
RESERVED = frozenset(":/?#[]@!$&'()*+,;=")
_HEX = re.compile(r"%([0-9A-Fa-f]{2})")


class TemplateError(ValueError):
    """A path template does not follow the grammar."""


@dataclass(frozen=True)
class Variable:
    field_path: tuple[str, ...]
    start: int  # index into the template's segments
    end: int  # exclusive


@dataclass(frozen=True)
class Template:
    segments: tuple[str, ...]  # literals, "*" or "**"
    variables: tuple[Variable, ...]
    verb: str

    @property
    def deep_index(self) -> int | None:
        return self.segments.index(DEEP) if DEEP in self.segments else None


def parse_template(text: str) -> Template:
    """Parse a path template such as `/v1/{name=shelves/*/books/*}:publish`."""
    if not text.startswith("/"):
        raise TemplateError(f"template must start with '/': {text!r}")
    body, verb = _split_verb(text[1:])
    segments: list[str] = []
    variables: list[Variable] = []
    for token in _top_level_split(body):
        if token.startswith("{"):
            if not token.endswith("}"):
                raise TemplateError(f"unclosed variable in {text!r}")
            name, _, pattern = token[1:-1].partition("=")
            parts = pattern.split("/") if pattern else [SINGLE]
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*", name):
                raise TemplateError(f"bad field path {name!r} in {text!r}")
            start = len(segments)
            segments.extend(parts)
            variables.append(Variable(tuple(name.split(".")), start, len(segments)))
        else:
            segments.append(token)
    if not segments or any(not segment for segment in segments):
        raise TemplateError(f"empty segment in {text!r}")
    if segments.count(DEEP) > 1:
        raise TemplateError(f"at most one '**' in {text!r}")
    deep = segments.index(DEEP) if DEEP in segments else None
    if deep is not None and any(s in {SINGLE, DEEP} for s in segments[deep + 1:]):
        raise TemplateError(f"only literals may follow '**' in {text!r}")
    return Template(tuple(segments), tuple(variables), verb)


def _split_verb(body: str) -> tuple[str, str]:
    depth = 0
    last_slash = -1
    colon = -1
    for index, char in enumerate(body):
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
        elif depth == 0 and char == "/":
            last_slash = index
        elif depth == 0 and char == ":":
            colon = index
    if colon > last_slash:
        return body[:colon], body[colon + 1:]
    return body, ""


def _top_level_split(body: str) -> list[str]:
    tokens, current, depth = [], "", 0
    for char in body:
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
        if char == "/" and depth == 0:
            tokens.append(current)
            current = ""
        else:
            current += char
    tokens.append(current)
    return tokens


def unescape(text: str, *, keep_reserved: bool) -> str:
    """Percent-decode `text` (UTF-8); with `keep_reserved`, reserved characters stay encoded.

    Raises UnicodeDecodeError when the decoded bytes are not UTF-8.
    """
    def replace(match: re.Match[str]) -> str:
        char = chr(int(match.group(1), 16))
        if keep_reserved and char in RESERVED:
            return match.group(0)
        return f"\x00{match.group(1)}"  # decoded below, as bytes

    marked = _HEX.sub(replace, text)
    if "\x00" not in marked:
        return marked
    raw = bytearray()
    index = 0
    while index < len(marked):
        if marked[index] == "\x00":
            raw.append(int(marked[index + 1:index + 3], 16))
            index += 3
        else:
            raw.extend(marked[index].encode())
            index += 1
    return raw.decode("utf-8")


def split_request_path(path: str, verbs: Iterable[str]) -> tuple[list[str], str]:
    """Request path (query removed) -> (segments, custom verb or "")."""
    path = path.split("?", 1)[0]
    verb = ""
    colon, slash = path.rfind(":"), path.rfind("/")
    if colon != -1 and colon > slash and path[colon + 1:] in set(verbs):
        path, verb = path[:colon], path[colon + 1:]
    parts = path[1:].split("/") if path else []
    while parts and not parts[-1]:
        parts.pop()
    return parts, verb


@dataclass
class _Node(Generic[T]):
    children: dict[str, _Node[T]] = field(default_factory=dict)
    results: dict[str, tuple[T, Template] | None] = field(default_factory=dict)
    deep: bool = False


@dataclass(frozen=True)
class Match(Generic[T]):
    """A matched route: its payload and variable bindings in path order."""

    value: T
    bindings: tuple[tuple[tuple[str, ...], str], ...]


class PathMatcher(Generic[T]):
    """Routes (HTTP method, request path) to a registered payload."""

    def __init__(self) -> None:
        self._root: _Node[T] = _Node()
        self._verbs: set[str] = set()

    def register(self, http_method: str, template: str, value: T) -> None:
        parsed = parse_template(template)
        node = self._root
        for segment in parsed.segments:
            node = node.children.setdefault(segment, _Node())
            if segment == DEEP:
                node.deep = True
        key = http_method.upper() + parsed.verb
        node.results[key] = None if key in node.results else (value, parsed)
        if parsed.verb:
            self._verbs.add(parsed.verb)

    @property
    def verbs(self) -> frozenset[str]:
        return frozenset(self._verbs)

    def lookup(self, http_method: str, path: str) -> Match[T] | None:
        """The route for a request, or None. Raises UnicodeDecodeError on bad escapes."""
        parts, verb = split_request_path(path, self._verbs)
        found = _lookup(self._root, parts, 0, http_method.upper() + verb)
        if found is None:
            return None
        value, template = found
        return Match(value, tuple(_bind(template, parts)))


def _result(node: _Node[T], key: str) -> tuple[T, Template] | None:
    if key in node.results:
        return node.results[key]
    return None


def _lookup(node: _Node[T], parts: Sequence[str], index: int,
            key: str) -> tuple[T, Template] | None:
    if index == len(parts):
        found = _result(node, key)
        if found is None and key not in node.results and DEEP in node.children:
            found = _result(node.children[DEEP], key)
        return found
    child = node.children.get(parts[index])
    if child is not None:
        found = _lookup(child, parts, index + 1, key)
        if found is not None:
            return found
    if node.deep:
        return _lookup(node, parts, index + 1, key)
    for wildcard in (SINGLE, DEEP):
        child = node.children.get(wildcard)
        if child is not None:
            found = _lookup(child, parts, index + 1, key)
            if found is not None:
                return found
    return None


def _position(template: Template, index: int, count: int) -> int:
    """Where template segment `index` lands among `count` request segments."""
    deep = template.deep_index
    if deep is None or index <= deep:
        return index
    return count - (len(template.segments) - index)


def _bind(template: Template, parts: Sequence[str]) -> list[tuple[tuple[str, ...], str]]:
    bindings = []
    for variable in template.variables:
        start = _position(template, variable.start, len(parts))
        end = _position(template, variable.end, len(parts))
        multipart = end - start > 1 or DEEP in template.segments[variable.start:variable.end]
        value = "/".join(unescape(part, keep_reserved=multipart) for part in parts[start:end])
        bindings.append((variable.field_path, value))
    return bindings


def envoy_regex(template: str) -> str:
    """An RE2 regex for Envoy route matching that accepts what the template matches.

    Literal segments match themselves, `*` any one segment, `**` any rest; templates
    without a verb also accept trailing slashes (the transcoder drops them).
    """
    parsed = parse_template(template)
    pattern = ""
    for segment in parsed.segments:
        if segment == SINGLE:
            pattern += "/[^/]*"
        elif segment == DEEP:
            pattern += "(?:/.*)?"
        else:
            pattern += "/" + _re2_escape(segment)
    if parsed.verb:
        pattern += ":" + _re2_escape(parsed.verb)
    else:
        pattern += "/*"
    return f"^{pattern}$"


def _re2_escape(text: str) -> str:
    return "".join(char if char.isalnum() or char == "_" else "\\" + char for char in text)
