"""`google.api.http` path templates: parsing, and the RE2 regex an Envoy route matches a
template's requests with (the transcoder itself binds the variables).

Grammar: Template = "/" Segments [":" Verb]; Segment = "*" | "**" | LITERAL | Variable;
Variable = "{" FieldPath ["=" Segments] "}".
"""

from __future__ import annotations

import re
from dataclasses import dataclass

SINGLE = "*"
DEEP = "**"


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


def envoy_regex(template: str) -> str:
    """An RE2 regex for Envoy route matching that accepts what the template matches.

    Literal segments match themselves, `*` any one segment, `**` any rest; templates
    without a verb also accept trailing slashes (the transcoder drops them).
    """
    parsed = parse_template(template)
    pattern = ""
    for segment in parsed.segments:
        if segment == SINGLE:
            pattern += "/[^/]+"
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
