"""The descriptor set Envoy transcodes with, and the HTTP rules read from it.

The API's descriptor set (`llmmesh.descriptor_set_path()`) lacks
`google/rpc/error_details.proto`, which the transcoder needs to print the typed details
of an error (`ErrorInfo`, `BadRequest`, ...) as JSON. `edge_descriptor_set` adds it
(and its imports) for Envoy's copy in `envoy/`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from google.api import annotations_pb2, http_pb2
from google.protobuf import descriptor, descriptor_pb2, descriptor_pool
from google.protobuf.message import Message
from google.rpc import error_details_pb2

EXTRA_FILES = (error_details_pb2.DESCRIPTOR,)


@dataclass(frozen=True)
class Binding:
    """One HTTP binding of a method (the rule itself or an additional binding)."""

    http_method: str
    template: str
    body: str
    response_body: str


@dataclass(frozen=True)
class MethodInfo:
    """A gRPC method with its HTTP bindings."""

    full_name: str  # /pkg.Service/Method
    descriptor: descriptor.MethodDescriptor
    bindings: tuple[Binding, ...]

    @property
    def client_streaming(self) -> bool:
        return bool(self.descriptor.client_streaming)

    @property
    def server_streaming(self) -> bool:
        return bool(self.descriptor.server_streaming)


def load_descriptor_set(path: Path) -> descriptor_pb2.FileDescriptorSet:
    files = descriptor_pb2.FileDescriptorSet()
    files.ParseFromString(path.read_bytes())
    return files


def _with_imports(file: descriptor.FileDescriptor) -> Iterator[descriptor.FileDescriptor]:
    for dependency in file.dependencies:
        yield from _with_imports(dependency)
    yield file


def edge_descriptor_bytes(api: bytes) -> bytes:
    """The serialized API set `api` with the error-detail protos (and their imports) it
    lacks appended. The API's bytes are kept as they are, so the result does not depend
    on which option extensions this process happens to have registered."""
    files = descriptor_pb2.FileDescriptorSet()
    files.ParseFromString(api)
    present = {file.name for file in files.file}
    extra = descriptor_pb2.FileDescriptorSet()
    for wanted in EXTRA_FILES:
        for file in _with_imports(wanted):
            if file.name not in present:
                file.CopyToProto(extra.file.add())
                present.add(file.name)
    # Concatenated messages merge: the repeated `file` field gets the extras appended.
    return api + extra.SerializeToString(deterministic=True)


def edge_descriptor_set(api: descriptor_pb2.FileDescriptorSet) -> descriptor_pb2.FileDescriptorSet:
    """`api` plus the error-detail protos it lacks, in dependency order."""
    merged = descriptor_pb2.FileDescriptorSet()
    merged.ParseFromString(edge_descriptor_bytes(api.SerializeToString()))
    return merged


def build_pool(files: descriptor_pb2.FileDescriptorSet) -> descriptor_pool.DescriptorPool:
    """A private pool holding exactly `files` (the default pool is left alone)."""
    pool = descriptor_pool.DescriptorPool()
    for file in files.file:
        pool.Add(file)
    return pool


def http_rule(method: descriptor.MethodDescriptor) -> http_pb2.HttpRule | None:
    """The method's `google.api.http` option, read from its serialized options."""
    raw = method.GetOptions().SerializeToString()
    options = descriptor_pb2.MethodOptions()
    options.ParseFromString(raw)
    if not options.HasExtension(annotations_pb2.http):
        return None
    return options.Extensions[annotations_pb2.http]


def _binding(rule: http_pb2.HttpRule) -> Binding | None:
    pattern = rule.WhichOneof("pattern")
    if pattern is None:
        return None
    if pattern == "custom":
        return Binding(rule.custom.kind.upper(), rule.custom.path, rule.body, rule.response_body)
    return Binding(pattern.upper(), getattr(rule, pattern), rule.body, rule.response_body)


def bindings_of(rule: http_pb2.HttpRule) -> tuple[Binding, ...]:
    found = [_binding(rule)] + [_binding(extra) for extra in rule.additional_bindings]
    return tuple(binding for binding in found if binding is not None)


def methods_of(pool: descriptor_pool.DescriptorPool,
               services: Iterable[str]) -> list[MethodInfo]:
    """Every method of `services` with its bindings (empty when it has no http rule)."""
    found = []
    for service_name in services:
        service = pool.FindServiceByName(service_name)
        for method in service.methods:
            rule = http_rule(method)
            found.append(MethodInfo(
                full_name=f"/{service.full_name}/{method.name}", descriptor=method,
                bindings=bindings_of(rule) if rule is not None else ()))
    return found


def message_class(pool: descriptor_pool.DescriptorPool, full_name: str) -> type[Message]:
    from google.protobuf import message_factory

    return message_factory.GetMessageClass(pool.FindMessageTypeByName(full_name))
