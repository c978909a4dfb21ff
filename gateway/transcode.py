"""JSON <-> protobuf for the Python edge, with the transcoder's rules:

- the body goes to the whole request (`body: "*"`) or to one field (`body: "field"`);
  unknown JSON fields are dropped; an empty body is an empty message;
- path variables, then query parameters, are bound to fields by dotted path (proto or
  JSON names), converted from text to the field's type (enums by name or number,
  64-bit integers, bools, bytes as base64, well-known types from their JSON strings);
  a later binding of a singular field wins, repeated fields collect every value;
- a singular field the body already sets keeps the body's value (the binding is
  dropped); a repeated one gets the bound value appended;
- a query parameter that names no field, or a value that does not convert, is a 400;
- responses print lowerCamelCase names, 64-bit integers as strings and omit defaults;
  `response_body` prints one field; `google.api.HttpBody` is sent raw.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Sequence
from typing import Any

from google.protobuf import descriptor, descriptor_pool, json_format
from google.protobuf.message import Message

from gateway.httprule import unescape

FD = descriptor.FieldDescriptor
HTTP_BODY = "google.api.HttpBody"
_INTS = {FD.TYPE_INT32: (-(2**31), 2**31 - 1), FD.TYPE_SINT32: (-(2**31), 2**31 - 1),
         FD.TYPE_SFIXED32: (-(2**31), 2**31 - 1), FD.TYPE_INT64: (-(2**63), 2**63 - 1),
         FD.TYPE_SINT64: (-(2**63), 2**63 - 1), FD.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
         FD.TYPE_UINT32: (0, 2**32 - 1), FD.TYPE_FIXED32: (0, 2**32 - 1),
         FD.TYPE_UINT64: (0, 2**64 - 1), FD.TYPE_FIXED64: (0, 2**64 - 1)}
_TRUE = {"true", "t", "yes", "y", "1"}
_FALSE = {"false", "f", "no", "n", "0"}
# Well-known message types a single text value can fill (from their JSON string form).
_TEXT_MESSAGES = {"google.protobuf.Timestamp", "google.protobuf.Duration",
                  "google.protobuf.FieldMask", "google.protobuf.StringValue",
                  "google.protobuf.BytesValue", "google.protobuf.Int32Value",
                  "google.protobuf.Int64Value", "google.protobuf.UInt32Value",
                  "google.protobuf.UInt64Value", "google.protobuf.FloatValue",
                  "google.protobuf.DoubleValue", "google.protobuf.BoolValue"}

Binding = tuple[tuple[str, ...], str]


class TranscodeError(ValueError):
    """The request cannot be transcoded (HTTP 400, text/plain, as Envoy answers)."""


def parse_query(query: str) -> list[Binding]:
    """`a.b=1&c=x%20y` -> bindings; a parameter without `=` or name is ignored, the value
    is fully percent-decoded, `+` stays `+`."""
    bindings = []
    for param in query.split("&") if query else []:
        name, equals, value = param.partition("=")
        if not equals or not name:
            continue
        try:
            bindings.append((tuple(name.split(".")), unescape(value, keep_reserved=False)))
        except UnicodeDecodeError:
            raise TranscodeError(f"query parameter {name} is not UTF-8") from None
    return bindings


def _field(message_descriptor: descriptor.Descriptor, name: str) -> FD | None:
    found = message_descriptor.fields_by_name.get(name)
    if found is not None:
        return found
    return next((f for f in message_descriptor.fields if f.json_name == name), None)


def _resolve(message_descriptor: descriptor.Descriptor,
             path: Sequence[str]) -> list[FD]:
    fields = []
    current = message_descriptor
    for index, name in enumerate(path):
        field = _field(current, name) if current is not None else None
        if field is None:
            raise TranscodeError(f"{'.'.join(path)}: no such field in {message_descriptor.name}")
        last = index == len(path) - 1
        if not last and (field.message_type is None or _is_repeated(field)):
            raise TranscodeError(f"{'.'.join(path)}: cannot bind through {field.name}")
        fields.append(field)
        current = field.message_type
    return fields


def _is_repeated(field: FD) -> bool:
    return bool(field.is_repeated)


def _convert(field: FD, text: str, pool: descriptor_pool.DescriptorPool) -> Any:
    name = field.full_name
    kind = field.type
    if kind == FD.TYPE_STRING:
        return text
    if kind == FD.TYPE_BYTES:
        padded = text + "=" * (-len(text) % 4)
        try:
            if "-" in text or "_" in text:
                return base64.urlsafe_b64decode(padded)
            return base64.b64decode(padded, validate=True)
        except (binascii.Error, ValueError):
            raise TranscodeError(f"{name}: {text!r} is not base64") from None
    if kind == FD.TYPE_BOOL:
        if text.lower() in _TRUE:
            return True
        if text.lower() in _FALSE:
            return False
        raise TranscodeError(f"{name}: {text!r} is not a bool")
    if kind in _INTS:
        low, high = _INTS[kind]
        try:
            value = int(text, 10)
        except ValueError:
            raise TranscodeError(f"{name}: {text!r} is not an integer") from None
        if not low <= value <= high:
            raise TranscodeError(f"{name}: {text} is out of range")
        return value
    if kind in (FD.TYPE_FLOAT, FD.TYPE_DOUBLE):
        try:
            return float(text)
        except ValueError:
            raise TranscodeError(f"{name}: {text!r} is not a number") from None
    if kind == FD.TYPE_ENUM:
        value_descriptor = field.enum_type.values_by_name.get(text)
        if value_descriptor is not None:
            return value_descriptor.number
        try:
            return int(text, 10)
        except ValueError:
            raise TranscodeError(f"{name}: {text!r} is not a value of "
                                 f"{field.enum_type.full_name}") from None
    raise TranscodeError(f"{name}: cannot be bound from text")


def _in_body(body: Any, fields: Sequence[FD]) -> bool:
    node = body
    for field in fields:
        if not isinstance(node, dict):
            return False
        key = field.name if field.name in node else field.json_name
        if key not in node or node[key] is None:
            return False
        node = node[key]
    return True


def _bind(message: Message, fields: Sequence[FD], text: str,
          pool: descriptor_pool.DescriptorPool) -> None:
    target = message
    for field in fields[:-1]:
        target = getattr(target, field.name)
    leaf = fields[-1]
    if leaf.message_type is not None:
        if leaf.message_type.full_name not in _TEXT_MESSAGES or _is_repeated(leaf):
            raise TranscodeError(f"{leaf.full_name}: a message cannot be bound from text")
        try:
            json_format.ParseDict({leaf.name: text}, target, descriptor_pool=pool)
        except json_format.ParseError as error:
            raise TranscodeError(f"{leaf.full_name}: {error}") from None
        return
    value = _convert(leaf, text, pool)
    if _is_repeated(leaf):
        getattr(target, leaf.name).append(value)
    else:
        setattr(target, leaf.name, value)


def _body_json(raw: bytes) -> Any:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise TranscodeError("request body is not UTF-8") from None
    if not text.strip():
        return None
    try:
        return json.loads(text)
    except ValueError as error:
        raise TranscodeError(f"request body is not JSON: {error}") from None


def _nest(message_descriptor: descriptor.Descriptor, body_field: str, data: Any) -> Any:
    """The body for `body: "a.b"` as a whole-message JSON object."""
    fields = _resolve(message_descriptor, body_field.split("."))
    for field in reversed(fields):
        data = {field.name: data}
    return data


def build_requests(message_class: type[Message], pool: descriptor_pool.DescriptorPool,
                   body_rule: str, raw_body: bytes, bindings: Sequence[Binding],
                   *, stream: bool = False) -> list[Message]:
    """The request message(s) for one HTTP request; a streaming request's body may be a
    JSON array (one message per element). Raises TranscodeError."""
    message_descriptor = message_class.DESCRIPTOR
    data = _body_json(raw_body) if body_rule else None
    items = data if stream and isinstance(data, list) else [data]
    messages = []
    for item in items:
        whole = item
        if body_rule and body_rule != "*" and item is not None:
            whole = _nest(message_descriptor, body_rule, item)
        if whole is not None and not isinstance(whole, dict):
            raise TranscodeError("request body must be a JSON object")
        message = message_class()
        if whole:
            try:
                json_format.ParseDict(whole, message, ignore_unknown_fields=True,
                                      descriptor_pool=pool)
            except json_format.ParseError as error:
                raise TranscodeError(f"request body does not fit "
                                     f"{message_descriptor.full_name}: {error}") from None
        for path, text in bindings:
            fields = _resolve(message_descriptor, path)
            if not _is_repeated(fields[-1]) and _in_body(whole, fields):
                continue  # the body's value stands
            _bind(message, fields, text, pool)
        messages.append(message)
    return messages


def to_json(message: Message, pool: descriptor_pool.DescriptorPool) -> bytes:
    """Compact proto3 JSON, as the transcoder prints it."""
    data = json_format.MessageToDict(message, descriptor_pool=pool)
    return json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode()


def render_response(message: Message, pool: descriptor_pool.DescriptorPool,
                    response_body: str) -> tuple[bytes, str | None]:
    """(body, content type) of a unary response."""
    if message.DESCRIPTOR.full_name == HTTP_BODY:
        return bytes(message.data), message.content_type or None  # type: ignore[attr-defined]
    if not response_body:
        return to_json(message, pool), "application/json"
    target: Any = message
    fields = _resolve(message.DESCRIPTOR, response_body.split("."))
    for field in fields[:-1]:
        target = getattr(target, field.name)
    leaf = fields[-1]
    if leaf.message_type is not None and not _is_repeated(leaf):
        return to_json(getattr(target, leaf.name), pool), "application/json"
    printed = json_format.MessageToDict(target, descriptor_pool=pool,
                                        always_print_fields_with_no_presence=True)
    value = printed.get(leaf.json_name)
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode(), \
        "application/json"
