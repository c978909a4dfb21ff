"""What the edge suite runs against: the test spec (llmmesh's spec plus the test-only
service) and the descriptors Envoy needs for it.

The suite starts Redis and auth (tests/conftest.py), the rate limit service and the test
upstream in-process, and real Envoy as a process on free ports (tests/edge/conftest.py).
"""

from __future__ import annotations

import functools
import tempfile
from dataclasses import replace
from pathlib import Path

from google.protobuf import descriptor_pb2

from gateway.spec import LLMMESH_SPEC, EdgeSpec, Limit, RouteClass, Upstream

TEST_SERVICE = "edgetest.v1.EdgeTestService"
TEST_UPSTREAM = "edgetest"
TIGHT_LIMIT = 5


def _test(*names: str) -> list[str]:
    return [f"/{TEST_SERVICE}/{name}" for name in names]


PUBLIC_TEST_METHODS = _test("GetThing", "ListThings", "CreateThing", "UpdateThing", "DoThing",
                            "DeleteThing", "GetFile", "GetLabel", "GetInner", "GetRaw", "Fail",
                            "Stream", "WasCancelled", "Limited", "GetPrivateIndex",
                            "Upload")

TEST_SPEC: EdgeSpec = replace(
    LLMMESH_SPEC,
    upstreams=(*LLMMESH_SPEC.upstreams,
               Upstream(TEST_UPSTREAM, 50070, (TEST_SERVICE,))),
    public_methods=LLMMESH_SPEC.public_methods | set(PUBLIC_TEST_METHODS),
    route_classes=(
        # The suite registers users through the edge from one address.
        *(RouteClass(c.name, c.key, Limit(1000, "minute")) if c.name == "account" else c
          for c in LLMMESH_SPEC.route_classes),
        RouteClass("edgetest", "remote_address", Limit(100_000, "minute")),
        RouteClass("tight_address", "remote_address", Limit(TIGHT_LIMIT, "minute")),
        RouteClass("tight_user", "user", Limit(TIGHT_LIMIT, "minute")),
    ),
    method_classes={**LLMMESH_SPEC.method_classes,
                    **dict.fromkeys(PUBLIC_TEST_METHODS, "edgetest"),
                    f"/{TEST_SERVICE}/Limited": "tight_address",
                    f"/{TEST_SERVICE}/GetSecret": "tight_user"},
    method_timeouts={**LLMMESH_SPEC.method_timeouts, f"/{TEST_SERVICE}/Fail": 5.0},
    # Generous: CI machines are busy, and a timed-out check fails open.
    ratelimit_timeout_seconds=2.0,
)


def merge(*sets: descriptor_pb2.FileDescriptorSet) -> descriptor_pb2.FileDescriptorSet:
    """One FileDescriptorSet holding every file of `sets` once, first occurrence kept."""
    merged = descriptor_pb2.FileDescriptorSet()
    seen: set[str] = set()
    for files in sets:
        for file in files.file:
            if file.name not in seen:
                seen.add(file.name)
                merged.file.add().CopyFrom(file)
    return merged


@functools.cache
def extra_descriptors() -> bytes:
    """edgetest.proto's files that the API's descriptor set lacks, serialized."""
    import llmmesh

    from gateway.descriptors import load_descriptor_set
    from tests.edge.upstream import compile_descriptor_set

    api_names = {f.name for f in load_descriptor_set(llmmesh.descriptor_set_path()).file}
    with tempfile.TemporaryDirectory() as scratch:
        test_files = compile_descriptor_set(Path(scratch) / "edgetest.binpb")
    extra = descriptor_pb2.FileDescriptorSet()
    for file in test_files.file:
        if file.name not in api_names:
            extra.file.add().CopyFrom(file)
    return extra.SerializeToString(deterministic=True)
