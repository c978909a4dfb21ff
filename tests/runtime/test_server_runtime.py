"""The shared runtime over real sockets: health, reflection, error mapping, request
ids, metrics, graceful shutdown and identity/deadline forwarding to peers."""

from __future__ import annotations

import asyncio
import time
import urllib.request
from collections.abc import AsyncIterator

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from services.runtime.authn import AccessPolicy
from services.runtime.config import Env, RuntimeConfig
from services.runtime.context import current_principal, remaining_deadline
from services.runtime.errors import FieldViolation, InvalidArgument
from services.runtime.peers import peer_channel
from services.runtime.server import MeshServer, ServiceSpec, build_verifier
from tests.conftest import SERVICE_TOKEN, mesh_env
from tests.helpers import (
    LoggedIn,
    _detail,
    error_info,
    eventually,
    field_violations,
    rich_status,
)

PROBE = "llmmesh.test.Probe"


async def _no_keys() -> dict[str, object]:
    return {"keys": []}


def _probe_server(env: dict[str, str], handlers: dict[str, grpc.RpcMethodHandler],
                  fetch=_no_keys, public: bool = True) -> MeshServer:  # type: ignore[no-untyped-def]
    config = RuntimeConfig.from_env("embedding", Env(env))
    names = [f"/{PROBE}/{name}" for name in handlers]

    def register(server: grpc.aio.Server) -> None:
        server.add_generic_rpc_handlers(
            [grpc.method_handlers_generic_handler(PROBE, handlers)])

    policy = AccessPolicy.build(public=names if public else ())
    return MeshServer(config, ServiceSpec(names=[PROBE], register=register, policy=policy),
                      build_verifier(config, fetch))


@pytest.fixture
def env(redis_server, data_dir, auth_address) -> dict[str, str]:
    return mesh_env(redis_server, data_dir, LLMMESH_AUTH_ADDRESS=auth_address)


async def test_health_and_reflection_on_every_service(env, auth_server, embedding_server,
                                                     document_server) -> None:
    from services.chat.config import ChatConfig
    from services.chat.server import create_server as create_chat_server

    chat_server = create_chat_server(ChatConfig.from_env(Env(env)))
    await chat_server.start()
    try:
        for mesh_server in (auth_server, embedding_server, document_server, chat_server):
            await _assert_health_and_reflection(mesh_server)
    finally:
        await chat_server.stop(0)


async def _assert_health_and_reflection(mesh_server: MeshServer) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{mesh_server.port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for name in ["", *mesh_server.spec.names]:
            answer = await health.Check(health_pb2.HealthCheckRequest(service=name))
            assert answer.status == health_pb2.HealthCheckResponse.SERVING, name
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        responses = reflection.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        listed = {s.name async for r in responses for s in r.list_services_response.service}
        assert set(mesh_server.spec.names) <= listed
        assert "grpc.health.v1.Health" in listed


async def test_errors_are_mapped_and_never_leak_a_traceback(env) -> None:
    async def invalid(request: bytes, context) -> bytes:  # type: ignore[no-untyped-def]
        raise InvalidArgument([FieldViolation("thing.size", "must be positive")])

    async def crash(request: bytes, context) -> bytes:  # type: ignore[no-untyped-def]
        raise KeyError("secret internal detail")

    server = _probe_server(env, {
        "Invalid": grpc.unary_unary_rpc_method_handler(invalid),
        "Crash": grpc.unary_unary_rpc_method_handler(crash),
    })
    port = await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            with pytest.raises(grpc.aio.AioRpcError) as invalid_error:
                await channel.unary_unary(f"/{PROBE}/Invalid")(
                    b"", metadata=(("x-request-id", "req-123"),))
            assert invalid_error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert field_violations(invalid_error.value) == {"thing.size": "must be positive"}
            status = rich_status(invalid_error.value)
            assert status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
            assert ("x-request-id", "req-123") in tuple(invalid_error.value.trailing_metadata())

            with pytest.raises(grpc.aio.AioRpcError) as crash_error:
                await channel.unary_unary(f"/{PROBE}/Crash")(b"")
            assert crash_error.value.code() == grpc.StatusCode.INTERNAL
            assert "secret" not in crash_error.value.details()
            assert "Traceback" not in crash_error.value.details()
            assert error_info(crash_error.value).reason == "INTERNAL"
    finally:
        await server.stop(0)
    handled = server.metrics.registry.get_sample_value(
        "llmmesh_grpc_server_errors_total",
        {"grpc_service": PROBE, "grpc_method": "Crash", "grpc_code": "INTERNAL"})
    assert handled == 1


async def test_metrics_are_served_over_http(env) -> None:
    async def ok(request: bytes, context) -> bytes:  # type: ignore[no-untyped-def]
        return b"pong"

    from mesh.redis_server import free_port

    env = {**env, "LLMMESH_EMBEDDING_METRICS_PORT": str(free_port())}
    server = _probe_server(env, {"Ping": grpc.unary_unary_rpc_method_handler(ok)})
    port = await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            for _ in range(3):
                assert await channel.unary_unary(f"/{PROBE}/Ping")(b"") == b"pong"
        url = f"http://127.0.0.1:{server.metrics_port}/metrics"
        body = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=5).read())
        text = body.decode()
        assert ('llmmesh_grpc_server_handling_seconds_count{grpc_code="OK",'
                'grpc_method="Ping",grpc_service="llmmesh.test.Probe"} 3.0') in text
        assert "llmmesh_grpc_server_in_flight" in text
    finally:
        await server.stop(0)


async def test_shutdown_drains_in_flight_streams_and_refuses_new_calls(env) -> None:
    async def count(request: bytes, context) -> AsyncIterator[bytes]:  # type: ignore[no-untyped-def]
        for i in range(6):
            await asyncio.sleep(0.1)
            yield str(i).encode()

    server = _probe_server(env, {"Count": grpc.unary_stream_rpc_method_handler(count)})
    port = await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stream = channel.unary_stream(f"/{PROBE}/Count")(b"")
        first = await stream.read()
        stopping = asyncio.create_task(server.stop(grace=5))
        health = health_pb2_grpc.HealthStub(channel)

        async def serving() -> bool:
            try:
                answer = await health.Check(health_pb2.HealthCheckRequest(), timeout=1)
            except grpc.aio.AioRpcError:
                return False
            return answer.status == health_pb2.HealthCheckResponse.SERVING

        await eventually(serving, lambda up: not up, what="the shutdown beginning")
        rest = []
        while (message := await stream.read()) is not grpc.aio.EOF:
            rest.append(message)
        assert [first, *rest] == [str(i).encode() for i in range(6)]
        assert await stream.code() == grpc.StatusCode.OK
        await stopping
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await health.Check(health_pb2.HealthCheckRequest(), timeout=1)
        assert refused.value.code() in {grpc.StatusCode.UNAVAILABLE,
                                        grpc.StatusCode.DEADLINE_EXCEEDED}


async def test_peer_channel_forwards_identity_request_id_and_deadline(
        env, auth_server, alice: LoggedIn) -> None:
    """A service calling another forwards the caller's token and request id, presents
    the service credential, and never waits past its own caller's deadline."""
    from services.runtime.jwks_client import remote_jwks_fetcher

    seen: dict[str, object] = {}

    async def downstream(request: bytes, context) -> bytes:  # type: ignore[no-untyped-def]
        metadata = dict(context.invocation_metadata())
        seen.update(subject=current_principal().subject, request_id=metadata.get("x-request-id"),
                    service_token=metadata.get("x-llmmesh-service-token"),
                    remaining=context.time_remaining())
        return b"done"

    auth_channel = grpc.aio.insecure_channel(f"127.0.0.1:{auth_server.port}")
    down = _probe_server(env, {"Down": grpc.unary_unary_rpc_method_handler(downstream)},
                         fetch=remote_jwks_fetcher(auth_channel), public=False)
    down_port = await down.start()
    peer = peer_channel(f"127.0.0.1:{down_port}", SERVICE_TOKEN, default_timeout=30)

    async def upstream(request: bytes, context) -> bytes:  # type: ignore[no-untyped-def]
        seen["upstream_remaining"] = remaining_deadline()
        return await peer.unary_unary(f"/{PROBE}/Down")(b"")

    up = _probe_server(env, {"Up": grpc.unary_unary_rpc_method_handler(upstream)},
                       fetch=remote_jwks_fetcher(auth_channel), public=False)
    up_port = await up.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{up_port}") as channel:
            started = time.monotonic()
            answer = await channel.unary_unary(f"/{PROBE}/Up")(
                b"", timeout=2.0, metadata=(*alice.metadata, ("x-request-id", "trace-42")))
        assert answer == b"done" and time.monotonic() - started < 2
        assert seen["subject"] == alice.user_id
        assert seen["request_id"] == "trace-42"
        assert seen["service_token"] == SERVICE_TOKEN
        # The 30 s default was capped by ours (grpc-timeout rounds up: a few ms over 2 s).
        assert 0 < float(seen["remaining"]) <= 2.1
    finally:
        await up.stop(0)
        await down.stop(0)
        await peer.close()
        await auth_channel.close()


async def test_a_client_that_goes_away_stops_the_stream_handler(env) -> None:
    closed = asyncio.Event()
    produced = 0

    async def endless(request: bytes, context) -> AsyncIterator[bytes]:  # type: ignore[no-untyped-def]
        nonlocal produced
        try:
            while True:
                produced += 1
                yield b"tick"
                await asyncio.sleep(0.01)
        finally:
            closed.set()

    server = _probe_server(env, {"Endless": grpc.unary_stream_rpc_method_handler(endless)})
    port = await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = channel.unary_stream(f"/{PROBE}/Endless")(b"", timeout=30)
            for _ in range(3):
                await call.read()
            call.cancel()
            await asyncio.wait_for(closed.wait(), timeout=2)
            count = produced
            await asyncio.sleep(0.2)
            assert produced == count  # nothing runs after the client left
        in_flight = server.metrics.registry.get_sample_value(
            "llmmesh_grpc_server_in_flight",
            {"grpc_service": PROBE, "grpc_method": "Endless"})
        assert in_flight == 0
    finally:
        await server.stop(0)


async def test_streams_past_the_limit_are_refused_at_once_then_accepted(env) -> None:
    """Limit 2: two streams open, a third is refused before its handler runs (UNAVAILABLE,
    OVERLOADED, RetryInfo) while health still answers; once one ends, a new one is served."""
    gates = {name: asyncio.Event() for name in (b"a", b"b", b"c", b"d")}
    entered: list[bytes] = []

    async def hold(request: bytes, context) -> AsyncIterator[bytes]:  # type: ignore[no-untyped-def]
        entered.append(request)
        yield b"started"
        await gates[request].wait()
        yield b"done"

    env = {**env, "LLMMESH_EMBEDDING_MAX_CONCURRENT_STREAMS": "2"}
    server = _probe_server(env, {"Hold": grpc.unary_stream_rpc_method_handler(hold)})
    assert server.stream_limiter.limit == 2
    port = await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = channel.unary_stream(f"/{PROBE}/Hold")
            first, second = call(b"a"), call(b"b")
            assert await first.read() == b"started"
            assert await second.read() == b"started"

            third = call(b"c")
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await third.read()
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
            assert error_info(refused.value).reason == "OVERLOADED"
            retry = _detail(refused.value, error_details_pb2.RetryInfo)
            assert retry.retry_delay.ToTimedelta().total_seconds() > 0
            assert sorted(entered) == [b"a", b"b"]
            health = health_pb2_grpc.HealthStub(channel)
            answer = await health.Check(health_pb2.HealthCheckRequest())
            assert answer.status == health_pb2.HealthCheckResponse.SERVING

            gates[b"a"].set()
            assert await first.read() == b"done"
            assert await first.read() is grpc.aio.EOF
            assert await first.code() == grpc.StatusCode.OK
            fourth = call(b"d")
            assert await fourth.read() == b"started"
            gates[b"b"].set()
            gates[b"d"].set()
            assert await second.read() == b"done"
            assert await second.read() is grpc.aio.EOF
            assert await fourth.read() == b"done"
            assert await fourth.read() is grpc.aio.EOF
            assert sorted(entered) == [b"a", b"b", b"d"]
    finally:
        await server.stop(0)
    assert server.stream_limiter.in_use == 0
