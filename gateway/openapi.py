"""The edge's OpenAPI 3.1 document, generated from the API's descriptor set (messages,
HTTP rules, comments, `google.api.field_behavior`) and the edge spec (which methods are
public, rate limits, body limit). It describes REST as the edge serves it, i.e. as
Envoy's transcoder with the print options of `gateway/envoy_config.py` emits it:

- proto3 JSON mapping: lowerCamelCase names (snake_case accepted in requests), 64-bit
  integers as strings, enums as names, Timestamp/Duration/FieldMask as strings, wrappers
  as their value, default values left out of responses; oneofs as "at most one of";
- paths from the HTTP rules: each `*` of a `{field=pattern}` variable becomes a path
  parameter named after the collection before it (`{name=users/*}` -> `/v1/users/{user}`:
  several methods bind `name` under the same prefix, so `/v1/{name}` would collide);
- request bodies per `body:` (`*` = the message minus what the path binds; a client
  stream is a JSON array of messages), query parameters for the other fields of a rule
  without `body: "*"`;
- responses: 200 with the message; server streams as Server-Sent Events; errors as the
  `google.rpc.Status` JSON the edge returns; `bearerAuth` on every method that is not
  public in the spec.

`gateway/edge_files.py` renders it as `openapi.json` beside Envoy's bootstrap, which
serves it at `/openapi.json`; `scripts/gen_edge.py` writes compose's copy to `envoy/`.
"""

from __future__ import annotations

import json
import textwrap
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from google.api import field_behavior_pb2
from google.protobuf import descriptor, descriptor_pb2

from gateway.descriptors import Binding, MethodInfo, build_pool, methods_of
from gateway.httprule import DEEP, SINGLE, Template, parse_template
from gateway.spec import EdgeSpec

OPENAPI_FILE = "openapi.json"
OPENAPI_PATH = "/openapi.json"
OPENAPI_VERSION = "3.1.0"
SECURITY_SCHEME = "bearerAuth"
ERROR_RESPONSE = "Error"
STATUS_MESSAGE = "google.rpc.Status"
ANY_MESSAGE = "google.protobuf.Any"
HTTP_BODY = "google.api.HttpBody"
ERROR_DETAILS_FILE = "google/rpc/error_details.proto"
EDGE_TAG = "edge"

Schema = dict[str, Any]
F = descriptor.FieldDescriptor

# proto3 JSON mapping of scalar field types.
_INT64 = {"type": "string", "format": "int64", "pattern": "^-?[0-9]+$"}
_UINT64 = {"type": "string", "format": "uint64", "pattern": "^[0-9]+$"}
_SCALARS: Mapping[int, Schema] = {
    F.TYPE_DOUBLE: {"type": "number", "format": "double"},
    F.TYPE_FLOAT: {"type": "number", "format": "float"},
    F.TYPE_INT64: _INT64, F.TYPE_SINT64: _INT64, F.TYPE_SFIXED64: _INT64,
    F.TYPE_UINT64: _UINT64, F.TYPE_FIXED64: _UINT64,
    F.TYPE_INT32: {"type": "integer", "format": "int32"},
    F.TYPE_SINT32: {"type": "integer", "format": "int32"},
    F.TYPE_SFIXED32: {"type": "integer", "format": "int32"},
    F.TYPE_UINT32: {"type": "integer", "format": "int64", "minimum": 0, "maximum": 2**32 - 1},
    F.TYPE_FIXED32: {"type": "integer", "format": "int64", "minimum": 0, "maximum": 2**32 - 1},
    F.TYPE_BOOL: {"type": "boolean"},
    F.TYPE_STRING: {"type": "string"},
    F.TYPE_BYTES: {"type": "string", "format": "byte", "contentEncoding": "base64"},
}
# Well-known types with a JSON form of their own, written inline.
_WELL_KNOWN: Mapping[str, Schema] = {
    "google.protobuf.Timestamp": {"type": "string", "format": "date-time"},
    "google.protobuf.Duration": {"type": "string", "pattern": "^-?[0-9]+(\\.[0-9]{1,9})?s$",
                                 "description": "Seconds with an `s` suffix, e.g. `1.5s`."},
    "google.protobuf.FieldMask": {"type": "string",
                                  "description": "Comma-separated lowerCamelCase paths."},
    "google.protobuf.Struct": {"type": "object"},
    "google.protobuf.Value": {},
    "google.protobuf.ListValue": {"type": "array"},
    "google.protobuf.DoubleValue": _SCALARS[F.TYPE_DOUBLE],
    "google.protobuf.FloatValue": _SCALARS[F.TYPE_FLOAT],
    "google.protobuf.Int64Value": _INT64,
    "google.protobuf.UInt64Value": _UINT64,
    "google.protobuf.Int32Value": _SCALARS[F.TYPE_INT32],
    "google.protobuf.UInt32Value": _SCALARS[F.TYPE_UINT32],
    "google.protobuf.BoolValue": _SCALARS[F.TYPE_BOOL],
    "google.protobuf.StringValue": _SCALARS[F.TYPE_STRING],
    "google.protobuf.BytesValue": _SCALARS[F.TYPE_BYTES],
}

SSE_DESCRIPTION = (
    "A server stream as Server-Sent Events, flushed as the service sends them: each "
    "message is one event `data: <message as JSON>` followed by a blank line (no `event:` "
    "or `id:` lines, no closing event; an empty stream is an empty body). "
    "`x-sse-data` is the schema of each event's data. Once the first event is sent the "
    "status stays 200: an error after that can only end the stream (over HTTP/1.1 it "
    "arrives nowhere), so the stream's own messages say how it ended. An error before "
    "the first event is an ordinary error response.")
HTTP_BODY_DESCRIPTION = ("The body as the method sets it (`google.api.HttpBody`): its "
                         "content type and bytes, not JSON-wrapped.")


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


# --- comments ----------------------------------------------------------------------------


class Comments:
    """Leading comments of the descriptor set's elements, by full name (fields as
    `Message.field`, methods as `Service.Method`, enum values as `Enum.VALUE`)."""

    def __init__(self, files: descriptor_pb2.FileDescriptorSet) -> None:
        self._by_name: dict[str, str] = {}
        for file in files.file:
            self._read_file(file)

    def __getitem__(self, full_name: str) -> str:
        return self._by_name.get(full_name, "")

    def of_field(self, field: descriptor.FieldDescriptor) -> str:
        message = field.containing_type
        return "" if message is None else self[f"{message.full_name}.{field.name}"]

    def _read_file(self, file: descriptor_pb2.FileDescriptorProto) -> None:
        located = {tuple(loc.path): loc.leading_comments
                   for loc in file.source_code_info.location if loc.leading_comments}
        prefix = f"{file.package}." if file.package else ""
        names = dict(_element_names(file, prefix))
        for path, text in located.items():
            if path in names:
                self._by_name[names[path]] = _clean(text)


def _element_names(file: descriptor_pb2.FileDescriptorProto,
                   prefix: str) -> Iterator[tuple[tuple[int, ...], str]]:
    """(source-location path, full name) of every message, field, enum and method.

    Paths use FileDescriptorProto's field numbers: message_type 4, enum_type 5,
    service 6; in a message field 2, nested_type 3, enum_type 4, oneof_decl 8; in an
    enum value 2; in a service method 2."""
    for index, message in enumerate(file.message_type):
        yield from _message_names(message, (4, index), prefix)
    for index, enum in enumerate(file.enum_type):
        yield from _enum_names(enum, (5, index), prefix)
    for index, service in enumerate(file.service):
        name = prefix + service.name
        yield (6, index), name
        for number, method in enumerate(service.method):
            yield (6, index, 2, number), f"{name}.{method.name}"


def _message_names(message: descriptor_pb2.DescriptorProto, path: tuple[int, ...],
                   prefix: str) -> Iterator[tuple[tuple[int, ...], str]]:
    name = prefix + message.name
    yield path, name
    for index, field in enumerate(message.field):
        yield (*path, 2, index), f"{name}.{field.name}"
    for index, oneof in enumerate(message.oneof_decl):
        yield (*path, 8, index), f"{name}.{oneof.name}"
    for index, nested in enumerate(message.nested_type):
        yield from _message_names(nested, (*path, 3, index), f"{name}.")
    for index, enum in enumerate(message.enum_type):
        yield from _enum_names(enum, (*path, 4, index), f"{name}.")


def _enum_names(enum: descriptor_pb2.EnumDescriptorProto, path: tuple[int, ...],
                prefix: str) -> Iterator[tuple[tuple[int, ...], str]]:
    name = prefix + enum.name
    yield path, name
    for index, value in enumerate(enum.value):
        yield (*path, 2, index), f"{name}.{value.name}"


def _clean(comment: str) -> str:
    return textwrap.dedent(comment).strip()


def _summary(comment: str) -> str:
    first = " ".join(comment.split("\n\n")[0].split())
    end = first.find(". ")
    return first if end < 0 else first[:end + 1]


# --- field options -----------------------------------------------------------------------


def field_behaviors(field: descriptor.FieldDescriptor) -> set[int]:
    """The field's `google.api.field_behavior` values, read from its serialized options
    (the pool the field comes from need not know the extension)."""
    options = descriptor_pb2.FieldOptions()
    options.ParseFromString(field.GetOptions().SerializeToString())
    return set(options.Extensions[field_behavior_pb2.field_behavior])


def is_required(field: descriptor.FieldDescriptor) -> bool:
    return field_behavior_pb2.REQUIRED in field_behaviors(field)


def is_map(field: descriptor.FieldDescriptor) -> bool:
    message = field.message_type
    return message is not None and message.GetOptions().map_entry


def is_repeated(field: descriptor.FieldDescriptor) -> bool:
    return bool(field.is_repeated)


def real_oneofs(message: descriptor.Descriptor) -> list[descriptor.OneofDescriptor]:
    """The message's oneofs, without the synthetic ones of proto3 `optional` fields."""
    proto = descriptor_pb2.DescriptorProto()
    message.CopyToProto(proto)
    synthetic = {proto.oneof_decl[f.oneof_index].name for f in proto.field
                 if f.proto3_optional}
    return [oneof for oneof in message.oneofs if oneof.name not in synthetic]


# --- schemas -----------------------------------------------------------------------------


class Schemas:
    """The document's component schemas, collected as operations refer to messages."""

    def __init__(self, comments: Comments, detail_types: Sequence[descriptor.Descriptor]):
        self.comments = comments
        self.detail_types = tuple(detail_types)
        self._messages: dict[str, descriptor.Descriptor] = {}
        self._enums: dict[str, descriptor.EnumDescriptor] = {}

    def message(self, message: descriptor.Descriptor) -> Schema:
        """A reference to `message`'s schema (inline for the well-known JSON types)."""
        if message.full_name in _WELL_KNOWN:
            return dict(_WELL_KNOWN[message.full_name])
        self._messages.setdefault(message.full_name, message)
        return ref(message.full_name)

    def field(self, field: descriptor.FieldDescriptor) -> Schema:
        """`field`'s value schema (an array for repeated, an object for maps)."""
        if field.message_type is not None and is_map(field):
            value = field.message_type.fields_by_name["value"]
            return {"type": "object", "additionalProperties": self.singular(value)}
        value_schema = self.singular(field)
        if is_repeated(field):
            return {"type": "array", "items": value_schema}
        return value_schema

    def singular(self, field: descriptor.FieldDescriptor) -> Schema:
        if field.message_type is not None:
            return self.message(field.message_type)
        if field.enum_type is not None:
            return self.enum(field.enum_type)
        return dict(_SCALARS[field.type])

    def enum(self, enum: descriptor.EnumDescriptor) -> Schema:
        if enum.full_name == "google.protobuf.NullValue":
            return {"type": "null"}
        self._enums.setdefault(enum.full_name, enum)
        return ref(enum.full_name)

    def property(self, field: descriptor.FieldDescriptor) -> Schema:
        """`field` as a property: its schema with its comment and field behavior."""
        schema = self.field(field)
        comment = self.comments.of_field(field)
        if comment:
            schema["description"] = comment
        behaviors = field_behaviors(field)
        if field_behavior_pb2.OUTPUT_ONLY in behaviors:
            schema["readOnly"] = True
        if field_behavior_pb2.INPUT_ONLY in behaviors:
            schema["writeOnly"] = True
        return schema

    def components(self) -> dict[str, Schema]:
        """Every schema referred to so far, and everything those refer to, by name."""
        built: dict[str, Schema] = {}
        while len(built) < len(self._messages) + len(self._enums):
            for name, message in list(self._messages.items()):
                if name not in built:
                    built[name] = self.message_schema(message)
            for name, enum in list(self._enums.items()):
                if name not in built:
                    built[name] = self._enum_schema(enum)
        return dict(sorted(built.items()))

    def message_schema(self, message: descriptor.Descriptor) -> Schema:
        """`message`'s own schema (what its component holds)."""
        if message.full_name == ANY_MESSAGE:
            return self._any_schema()
        schema: Schema = {"type": "object"}
        description = [self.comments[message.full_name]]
        schema["properties"] = {f.json_name: self.property(f) for f in message.fields}
        required = [f.json_name for f in message.fields if is_required(f)]
        if required:
            schema["required"] = required
        constraints = []
        for oneof in real_oneofs(message):
            names = [f.json_name for f in oneof.fields]
            description.append(f"At most one of {', '.join(f'`{n}`' for n in names)} "
                               f"(oneof `{oneof.name}`).")
            constraints.append(at_most_one(names))
        if constraints:
            schema["allOf"] = constraints
        text = "\n\n".join(part for part in description if part)
        return {"description": text, **schema} if text else schema

    def _enum_schema(self, enum: descriptor.EnumDescriptor) -> Schema:
        values = [value.name for value in enum.values]
        lines = [self.comments[enum.full_name], "Values:"]
        lines += [f"- `{value}`: {self.comments[f'{enum.full_name}.{value}'] or '-'}"
                  for value in values]
        return {"type": "string", "enum": values,
                "description": "\n".join(line for line in lines if line)}

    def _any_schema(self) -> Schema:
        """`google.protobuf.Any` in JSON: `@type` plus the packed message's fields; the
        error detail types the edge can print are spelled out."""
        cases = [{"if": {"properties": {"@type": {"const": _type_url(d)}},
                         "required": ["@type"]},
                  "then": self.message(d)} for d in self.detail_types]
        schema: Schema = {
            "type": "object",
            "description": "A message of any type: `@type` names it "
                           "(`type.googleapis.com/<full name>`), its JSON fields follow.",
            "properties": {"@type": {"type": "string"}},
            "required": ["@type"],
            "additionalProperties": True}
        if cases:
            schema["allOf"] = cases
        return schema


def _type_url(message: descriptor.Descriptor) -> str:
    return f"type.googleapis.com/{message.full_name}"


def at_most_one(names: Sequence[str]) -> Schema:
    """JSON Schema: at most one of `names` present (exactly one branch matches)."""
    return {"oneOf": [*({"required": [name]} for name in names),
                      {"not": {"anyOf": [{"required": [name]} for name in names]}}]}


# --- paths -------------------------------------------------------------------------------


@dataclass(frozen=True)
class PathParameter:
    """One templated piece of an OpenAPI path and the request field it fills."""

    name: str
    field_path: tuple[str, ...]
    binding: str  # the variable's pattern with this piece named, e.g. `users/{user}`
    deep: bool  # `**`: may contain `/`
    whole: bool  # the variable is this piece alone (`{tag}`)


def singular(collection: str) -> str:
    if collection.endswith("ies"):
        return collection[:-3] + "y"
    if collection.endswith("s") and not collection.endswith("ss"):
        return collection[:-1]
    return collection


def openapi_path(template: str, json_names: Mapping[tuple[str, ...], str]
                 ) -> tuple[str, list[PathParameter]]:
    """The OpenAPI path of an HTTP rule's template and its parameters.

    `json_names` maps a field path to its JSON name path (`display_name` ->
    `displayName`), used for variables that are one whole segment."""
    parsed = parse_template(template)
    pieces = list(parsed.segments)
    parameters: list[PathParameter] = []
    used: set[str] = set()
    for variable in parsed.variables:
        span = range(variable.start, variable.end)
        whole = len(span) == 1
        named: list[tuple[str, bool]] = []
        for index in span:
            if pieces[index] not in (SINGLE, DEEP):
                continue
            base = json_names[variable.field_path] if whole else \
                singular(_previous_literal(parsed, index) or "value")
            name = _unique(base, used)
            pieces[index] = "{" + name + "}"
            named.append((name, parsed.segments[index] == DEEP))
        binding = "/".join(pieces[variable.start:variable.end])
        parameters += [PathParameter(name, variable.field_path, binding, deep, whole)
                       for name, deep in named]
    path = "/" + "/".join(pieces) + (f":{parsed.verb}" if parsed.verb else "")
    return path, parameters


def _previous_literal(parsed: Template, index: int) -> str | None:
    for segment in reversed(parsed.segments[:index]):
        if segment not in (SINGLE, DEEP):
            return segment
    return None


def _unique(base: str, used: set[str]) -> str:
    name, number = base, 2
    while name in used:
        name, number = f"{base}{number}", number + 1
    used.add(name)
    return name


# --- operations --------------------------------------------------------------------------


@dataclass(frozen=True)
class Operation:
    path: str
    http_method: str  # lower case, as OpenAPI keys operations
    body: Schema


class Builder:
    """Builds the document for one spec and its routed methods."""

    def __init__(self, spec: EdgeSpec, comments: Comments,
                 detail_types: Sequence[descriptor.Descriptor]) -> None:
        self.spec = spec
        self.comments = comments
        self.schemas = Schemas(comments, detail_types)

    def operations(self, method: MethodInfo) -> Iterator[Operation]:
        for index, binding in enumerate(method.bindings):
            yield self.operation(method, binding, index)

    def operation(self, method: MethodInfo, binding: Binding, index: int) -> Operation:
        request = method.descriptor.input_type
        path, path_parameters = openapi_path(binding.template, json_name_paths(request))
        service, name = method.full_name.strip("/").split("/")
        comment = self.comments[f"{service}.{name}"]
        short_service = service.rsplit(".", 1)[-1]
        body: Schema = {
            "operationId": f"{short_service}_{name}" + (f"_{index}" if index else ""),
            "tags": [short_service],
            "summary": _summary(comment) or name,
            "description": self._description(method, comment),
            "x-grpc-method": method.full_name,
            "x-http-rule": f"{binding.http_method} {binding.template}",
        }
        parameters = [self._path_parameter(request, p) for p in path_parameters]
        bound = {p.field_path for p in path_parameters}
        parameters += self._query_parameters(request, binding, bound)
        if parameters:
            body["parameters"] = parameters
        if binding.body:
            body["requestBody"] = self._request_body(method, binding, bound)
        body["responses"] = self._responses(method, binding)
        public = method.full_name in self.spec.public_methods
        body["security"] = [] if public else [{SECURITY_SCHEME: []}]
        return Operation(path, binding.http_method.lower(), body)

    def _description(self, method: MethodInfo, comment: str) -> str:
        parts = [comment] if comment else []
        parts.append(f"gRPC: `{method.full_name}`. " + self._limits(method.full_name))
        return "\n\n".join(parts)

    def _limits(self, full_name: str) -> str:
        route_class = self.spec.route_class(self.spec.class_of(full_name))
        limit = route_class.limit
        per = "user" if route_class.key == "user" else "client address"
        text = (f"Rate limit: {limit.requests_per_unit} requests per {limit.unit} per "
                f"{per} (class `{route_class.name}`)")
        if full_name in self.spec.public_methods:
            return text + "; no token needed (a bad one is still refused with 401)."
        overall = self.spec.per_user_limit
        return text + (f", and {overall.requests_per_unit} per {overall.unit} per user "
                       "over all methods.")

    def _path_parameter(self, request: descriptor.Descriptor,
                        parameter: PathParameter) -> Schema:
        field = field_at(request, parameter.field_path)
        comment = self.comments.of_field(field)
        field_name = ".".join(parameter.field_path)
        if parameter.whole:
            schema = self.schemas.singular(field)
            text = comment
        else:
            schema = {"type": "string",
                      "pattern": "^.+$" if parameter.deep else "^[^/]+$"}
            text = (f"Sets `{field_name}` to `{parameter.binding}`"
                    + (" (may contain `/`, sent unescaped)" if parameter.deep else "")
                    + "." + (f" `{field_name}`: {comment}" if comment else ""))
        result: Schema = {"name": parameter.name, "in": "path", "required": True,
                          "schema": schema}
        if text:
            result["description"] = text
        return result

    def _query_parameters(self, request: descriptor.Descriptor, binding: Binding,
                          bound: set[tuple[str, ...]]) -> list[Schema]:
        if binding.body == "*":
            return []
        excluded = set(bound)
        if binding.body:
            excluded.add(tuple(binding.body.split(".")))
        return [self._query_parameter(field, json_path)
                for field, path, json_path in query_fields(request)
                if not any(path[:len(e)] == e for e in excluded)]

    def _query_parameter(self, field: descriptor.FieldDescriptor, json_path: str) -> Schema:
        parameter: Schema = {"name": json_path, "in": "query",
                             "schema": self.schemas.field(field)}
        comment = self.comments.of_field(field)
        if comment:
            parameter["description"] = comment
        if is_required(field):
            parameter["required"] = True
        if is_repeated(field):
            parameter["style"], parameter["explode"] = "form", True
        return parameter

    def _request_body(self, method: MethodInfo, binding: Binding,
                      bound: set[tuple[str, ...]]) -> Schema:
        request = method.descriptor.input_type
        if binding.body == "*":
            target: descriptor.Descriptor | None = request
            schema = self._body_message(request, bound)
        else:
            field = field_at(request, tuple(binding.body.split(".")))
            target = field.message_type
            schema = self.schemas.field(field)
        if target is not None and target.full_name == HTTP_BODY:
            return {"required": True, "description": HTTP_BODY_DESCRIPTION,
                    "content": {"*/*": {"schema": {}}}}
        description = "The request message as JSON."
        if method.client_streaming:
            schema = {"type": "array", "items": schema}
            description = ("A client stream: a JSON array of request messages, sent to the "
                           "method in order (path parameters fill the first).")
        return {"required": True, "description": description,
                "content": {"application/json": {"schema": schema}}}

    def _body_message(self, request: descriptor.Descriptor,
                      bound: set[tuple[str, ...]]) -> Schema:
        """`body: "*"`: the request message, less the top-level fields the path sets."""
        top = {path[0] for path in bound if len(path) == 1}
        if not top:
            return self.schemas.message(request)
        schema = self.schemas.message_schema(request)
        names = {f.json_name for f in request.fields if f.name in top}
        schema["properties"] = {k: v for k, v in schema["properties"].items()
                                if k not in names}
        if "required" in schema:
            schema["required"] = [k for k in schema["required"] if k not in names]
            if not schema["required"]:
                del schema["required"]
        return schema

    def _responses(self, method: MethodInfo, binding: Binding) -> Schema:
        ok = self._ok(method, binding)
        responses: Schema = {"200": ok}
        responses["401"] = {"$ref": "#/components/responses/Unauthenticated"}
        if binding.body:
            responses["413"] = {"$ref": f"#/components/responses/{ERROR_RESPONSE}"}
        responses["429"] = {"$ref": "#/components/responses/RateLimited"}
        responses["4XX"] = {"$ref": f"#/components/responses/{ERROR_RESPONSE}"}
        responses["5XX"] = {"$ref": f"#/components/responses/{ERROR_RESPONSE}"}
        return responses

    def _ok(self, method: MethodInfo, binding: Binding) -> Schema:
        output = method.descriptor.output_type
        field = output.fields_by_name[binding.response_body] if binding.response_body \
            else None
        body_type = output if field is None else field.message_type
        if body_type is not None and body_type.full_name == HTTP_BODY:
            return {"description": HTTP_BODY_DESCRIPTION, "content": {"*/*": {"schema": {}}}}
        schema = self.schemas.message(output) if field is None else self.schemas.field(field)
        if method.server_streaming:
            return {"description": SSE_DESCRIPTION, "content": {"text/event-stream": {
                "schema": {"type": "string"}, "x-sse-data": schema}}}
        return {"description": "The response message as JSON.",
                "content": {"application/json": {"schema": schema}}}


def json_name_paths(message: descriptor.Descriptor) -> dict[tuple[str, ...], str]:
    """Every field path of `message` (through singular message fields, no cycles) ->
    its dotted JSON-name path."""
    return {path: json_path for _, path, json_path in _field_paths(message, (), (), set())}


def query_fields(message: descriptor.Descriptor
                 ) -> Iterator[tuple[descriptor.FieldDescriptor, tuple[str, ...], str]]:
    """The fields a query parameter can set (scalars, enums, their repeated forms, and
    well-known types written as strings), with their proto and JSON paths."""
    for field, path, json_path in _field_paths(message, (), (), set()):
        if is_map(field):
            continue
        if field.message_type is None or field.message_type.full_name in _WELL_KNOWN:
            yield field, path, json_path


def _field_paths(message: descriptor.Descriptor, path: tuple[str, ...],
                 json_path: tuple[str, ...], seen: set[str]
                 ) -> Iterator[tuple[descriptor.FieldDescriptor, tuple[str, ...], str]]:
    for field in message.fields:
        here, json_here = (*path, field.name), (*json_path, field.json_name)
        yield field, here, ".".join(json_here)
        nested = field.message_type
        if nested is None or is_map(field) or is_repeated(field) or \
                nested.full_name in _WELL_KNOWN or nested.full_name in seen:
            continue
        yield from _field_paths(nested, here, json_here, seen | {message.full_name})


def field_at(message: descriptor.Descriptor, path: Sequence[str]) -> descriptor.FieldDescriptor:
    field = message.fields_by_name[path[0]]
    for name in path[1:]:
        if field.message_type is None:
            raise KeyError(f"{field.full_name} has no field {name!r}")
        field = field.message_type.fields_by_name[name]
    return field


# --- the document ------------------------------------------------------------------------


def document(spec: EdgeSpec, files: descriptor_pb2.FileDescriptorSet, *, title: str,
             version: str) -> dict[str, Any]:
    """The OpenAPI document of `spec`'s services in `files` (with their imports)."""
    pool = build_pool(files)
    methods = methods_of(pool, spec.services)
    builder = Builder(spec, Comments(files), _detail_types(pool, files))
    paths: dict[str, dict[str, Schema]] = {}
    for method in methods:
        for operation in builder.operations(method):
            methods_at = paths.setdefault(operation.path, {})
            if operation.http_method in methods_at:
                raise ValueError(f"two operations for {operation.http_method.upper()} "
                                 f"{operation.path}")
            methods_at[operation.http_method] = operation.body
    paths.update(_edge_paths(spec))
    status = builder.schemas.message(pool.FindMessageTypeByName(STATUS_MESSAGE))
    return {
        "openapi": OPENAPI_VERSION,
        "info": {"title": title, "version": version, "description": _overview(spec)},
        "tags": _tags(methods, builder.comments),
        "paths": dict(sorted(paths.items())),
        "components": {
            "schemas": builder.schemas.components(),
            "responses": _error_responses(status),
            "securitySchemes": {SECURITY_SCHEME: {
                "type": "http", "scheme": "bearer", "bearerFormat": "JWT",
                "description": "An access token from `POST /v1/auth:login` or "
                               "`POST /v1/auth:refresh` (`tokens.accessToken`), sent as "
                               "`Authorization: Bearer <token>`; never in the URL."}},
        },
    }


def render(spec: EdgeSpec, files: descriptor_pb2.FileDescriptorSet, *, title: str,
           version: str) -> bytes:
    """The document as the file the edge serves."""
    text = json.dumps(document(spec, files, title=title, version=version), indent=2,
                      ensure_ascii=False)
    return (text + "\n").encode()


def _detail_types(pool: Any, files: descriptor_pb2.FileDescriptorSet
                  ) -> list[descriptor.Descriptor]:
    return [pool.FindMessageTypeByName(f"{file.package}.{message.name}")
            for file in files.file if file.name == ERROR_DETAILS_FILE
            for message in file.message_type]


def _tags(methods: Iterable[MethodInfo], comments: Comments) -> list[Schema]:
    services = dict.fromkeys(m.full_name.strip("/").split("/")[0] for m in methods
                             if m.bindings)
    tags = [{"name": s.rsplit(".", 1)[-1], "description": _summary(comments[s]) or s}
            for s in services]
    return [*tags, {"name": EDGE_TAG, "description": "The edge itself."}]


def _edge_paths(spec: EdgeSpec) -> dict[str, dict[str, Schema]]:
    """What Envoy answers itself: its health check and this document."""
    return {
        spec.health_path: {"get": {
            "operationId": "edge_health", "tags": [EDGE_TAG], "summary": "Edge health.",
            "description": "Answers `OK` while Envoy is up (it checks no upstream).",
            "security": [],
            "responses": {"200": {"description": "Envoy is up.", "content": {
                "text/plain": {"schema": {"type": "string", "const": "OK\n"}}}}}}},
        OPENAPI_PATH: {"get": {
            "operationId": "edge_openapi", "tags": [EDGE_TAG],
            "summary": "This document.", "security": [],
            "responses": {"200": {"description": "The OpenAPI document.", "content": {
                "application/json": {"schema": {"type": "object"}}}}}}},
    }


def _error_responses(status: Schema) -> dict[str, Schema]:
    error = {"application/json": {"schema": status}}
    limit_headers = {name: {"description": text, "schema": {"type": "integer"}}
                     for name, text in (
                         ("x-ratelimit-limit", "Requests allowed per window."),
                         ("x-ratelimit-remaining", "Requests left in this window."),
                         ("x-ratelimit-reset", "Seconds until the window resets."))}
    return {
        ERROR_RESPONSE: {
            "description": "An error: the gRPC status as JSON (`code` is the gRPC code, "
                           "`details` typed, e.g. `google.rpc.ErrorInfo` with reason "
                           "and domain `llmmesh`, `google.rpc.BadRequest`, "
                           "`google.rpc.RetryInfo`). The HTTP status follows the gRPC "
                           "code: INVALID_ARGUMENT, FAILED_PRECONDITION, OUT_OF_RANGE 400; "
                           "UNAUTHENTICATED 401; PERMISSION_DENIED 403; NOT_FOUND 404; "
                           "ALREADY_EXISTS, ABORTED 409; RESOURCE_EXHAUSTED 429; "
                           "CANCELLED 499; UNKNOWN, INTERNAL, DATA_LOSS 500; "
                           "UNIMPLEMENTED 501; UNAVAILABLE 503; DEADLINE_EXCEEDED 504. "
                           "Errors the edge makes itself (a body over the limit 413, "
                           "an unknown path 404, an upstream down 503) have the same "
                           "shape.",
            "content": error},
        "Unauthenticated": {
            "description": "No valid access token (missing, expired, forged, wrong "
                           "audience), or credentials refused; code 16 (UNAUTHENTICATED).",
            "headers": {"www-authenticate": {
                "description": 'Bearer realm="llmmesh", with error="invalid_token" '
                               "when a token was sent.",
                "schema": {"type": "string"}}},
            "content": error},
        "RateLimited": {
            "description": "Over a rate limit (the x-ratelimit-* headers say which window "
                           "and when it resets) or over the monthly token quota (code 8, "
                           "RESOURCE_EXHAUSTED, with QuotaFailure / RetryInfo details).",
            "headers": limit_headers, "content": error},
    }


def _overview(spec: EdgeSpec) -> str:
    limit_mib = spec.max_request_body_bytes // (1024 * 1024)
    return "\n".join([
        "REST through the llmmesh edge (Envoy transcodes it to the gRPC services). "
        "Generated from the protos and `gateway/spec.py`.",
        "",
        "- JSON is proto3's JSON mapping: lowerCamelCase names (requests also accept the "
        "proto's snake_case), 64-bit integers as strings, enums by name, timestamps as "
        "RFC 3339 strings; fields at their default value are left out of responses; "
        "unknown request fields are ignored, unknown query parameters refused (400).",
        "- Resource names travel in the path with their `/` unescaped "
        "(`GET /v1/users/me` reads `users/me`).",
        f"- Request bodies over {limit_mib} MiB are refused with 413 before any service "
        "sees them.",
        "- Server streams are Server-Sent Events (`text/event-stream`).",
        "- Errors are `google.rpc.Status` JSON, from the services and the edge alike.",
        "- gRPC clients use the same port.",
    ])
