"""The rate limit service over real gRPC and real Redis: Envoy's RateLimitService v3
protocol, limits from its config file, atomic counting under a burst, hits_addend,
the x-ratelimit-* headers, and what it answers while Redis is down."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
import yaml
from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc
from google.protobuf import wrappers_pb2

from gateway.config import RateLimitServiceConfig
from gateway.ratelimit.rules import RateLimitRules, RulesError
from gateway.ratelimit.server import create_server
from mesh.redis_server import LocalRedis, free_port
from services.runtime.config import Env
from services.runtime.server import MeshServer
from tests.conftest import mesh_env
from tests.helpers import clear_of_window_edge

OK = rls_pb2.RateLimitResponse.OK
OVER = rls_pb2.RateLimitResponse.OVER_LIMIT
RULES = {"domain": "test", "descriptors": [
    {"key": "route_class", "value": "burst", "descriptors": [
        {"key": "user", "rate_limit": {"unit": "minute", "requests_per_unit": 50}}]},
    {"key": "route_class", "value": "tiny", "descriptors": [
        {"key": "user", "rate_limit": {"unit": "hour", "requests_per_unit": 3}},
        {"key": "user", "value": "vip", "unlimited": True}]},
    {"key": "user", "rate_limit": {"unit": "minute", "requests_per_unit": 10_000}},
]}


async def start(redis_server: LocalRedis, data_dir: Path, rules: Path,
                failure: str = "error", redis_url: str | None = None) -> MeshServer:
    env = mesh_env(redis_server, data_dir, LLMMESH_RATELIMIT_PORT="0",
                   LLMMESH_RATELIMIT_METRICS_PORT="0", LLMMESH_RATELIMIT_CONFIG=str(rules),
                   LLMMESH_RATELIMIT_REDIS_FAILURE=failure,
                   LLMMESH_RATELIMIT_KEY_PREFIX=f"rls-{uuid.uuid4().hex[:8]}:",
                   # The test's client shares the server's event loop: 200 calls in flight
                   # can hold the loop past the production 0.2 s before Redis's reply is read.
                   LLMMESH_RATELIMIT_REDIS_TIMEOUT_SECONDS="5")
    if redis_url is not None:
        env["LLMMESH_REDIS_URL"] = redis_url
    server = create_server(RateLimitServiceConfig.from_env(Env(env)))
    await server.start()
    return server


@pytest.fixture(scope="module")
def rules_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("rules") / "ratelimit.yaml"
    path.write_text(yaml.safe_dump(RULES))
    return path


@pytest.fixture(scope="module")
async def stub(redis_server: LocalRedis, data_dir: Path,
               rules_file: Path) -> AsyncIterator[rls_pb2_grpc.RateLimitServiceStub]:
    server = await start(redis_server, data_dir, rules_file)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        yield rls_pb2_grpc.RateLimitServiceStub(channel)
    await server.stop(0)


def request(*descriptors: list[tuple[str, str]], hits: int = 0,
            domain: str = "test") -> rls_pb2.RateLimitRequest:
    return rls_pb2.RateLimitRequest(domain=domain, hits_addend=hits, descriptors=[
        ratelimit_pb2.RateLimitDescriptor(entries=[
            ratelimit_pb2.RateLimitDescriptor.Entry(key=k, value=v) for k, v in entries])
        for entries in descriptors])


@pytest.fixture(autouse=True)
async def _one_window() -> None:
    """Each test's counts fall in one window (they assert exact verdicts)."""
    await clear_of_window_edge()


async def test_a_burst_of_200_concurrent_requests_lets_exactly_the_limit_through(
        stub: rls_pb2_grpc.RateLimitServiceStub) -> None:
    user = uuid.uuid4().hex
    answers = await asyncio.gather(*(
        stub.ShouldRateLimit(request([("route_class", "burst"), ("user", user)]), timeout=10)
        for _ in range(200)))
    codes = [answer.overall_code for answer in answers]
    assert codes.count(OK) == 50 and codes.count(OVER) == 150
    remaining = sorted(answer.statuses[0].limit_remaining for answer in answers)
    assert remaining[:151] == [0] * 151 and remaining[-1] == 49


async def test_concurrent_requests_of_different_callers_each_get_their_own_verdict(
        stub: rls_pb2_grpc.RateLimitServiceStub) -> None:
    heavy, light = uuid.uuid4().hex, uuid.uuid4().hex
    calls = [(user, stub.ShouldRateLimit(request([("route_class", "burst"), ("user", user)],
                                                 [("user", user)]), timeout=10))
             for user in [heavy] * 80 + [light] * 20]
    answers = {heavy: [], light: []}
    for (user, _), answer in zip(calls, await asyncio.gather(*(call for _, call in calls)),
                                 strict=True):
        answers[user].append(answer)
    heavy_ok = [a for a in answers[heavy] if a.overall_code == OK]
    assert len(heavy_ok) == 50
    assert sorted(a.statuses[0].limit_remaining for a in heavy_ok) == list(range(50))
    assert sorted(a.statuses[1].limit_remaining for a in answers[heavy]) == list(
        range(10_000 - 80, 10_000))
    assert all(a.overall_code == OK for a in answers[light])
    assert sorted(a.statuses[0].limit_remaining for a in answers[light]) == list(
        range(30, 50))
    over = next(a for a in answers[heavy] if a.overall_code == OVER)
    assert [s.code for s in over.statuses] == [OVER, OK]
    assert over.raw_body == b"rate limit exceeded: 50 per minute"


async def test_statuses_limits_and_headers(stub: rls_pb2_grpc.RateLimitServiceStub) -> None:
    user = uuid.uuid4().hex
    tiny = [("route_class", "tiny"), ("user", user)]
    first = await stub.ShouldRateLimit(request(tiny, [("user", user)], [("other", "x")]))
    assert first.overall_code == OK
    assert [s.code for s in first.statuses] == [OK, OK, OK]
    status = first.statuses[0]
    assert status.current_limit.requests_per_unit == 3
    assert status.current_limit.unit == rls_pb2.RateLimitResponse.RateLimit.HOUR
    assert status.limit_remaining == 2
    assert 0 < status.duration_until_reset.ToSeconds() <= 3600
    assert not first.statuses[2].HasField("current_limit"), "no rule, no limit"
    headers = {h.key: h.value for h in first.response_headers_to_add}
    assert headers["x-ratelimit-limit"] == "3, 3;w=3600, 10000;w=60"
    assert headers["x-ratelimit-remaining"] == "2"
    assert 0 < int(headers["x-ratelimit-reset"]) <= 3600
    over = await stub.ShouldRateLimit(request(tiny, hits=3))
    assert over.overall_code == OVER and over.statuses[0].limit_remaining == 0
    assert b"3 per hour" in over.raw_body
    assert {h.key: h.value for h in over.response_headers_to_add}["x-ratelimit-remaining"] == "0"


async def test_hits_addend_per_request_and_per_descriptor(
        stub: rls_pb2_grpc.RateLimitServiceStub) -> None:
    user = uuid.uuid4().hex
    burst = [("route_class", "burst"), ("user", user)]
    assert (await stub.ShouldRateLimit(request(burst, hits=49))).overall_code == OK
    one_more = request(burst, hits=49)
    one_more.descriptors[0].hits_addend.CopyFrom(wrappers_pb2.UInt64Value(value=1))
    answer = await stub.ShouldRateLimit(one_more)
    assert answer.overall_code == OK and answer.statuses[0].limit_remaining == 0
    assert (await stub.ShouldRateLimit(request(burst))).overall_code == OVER


async def test_long_descriptor_values_are_counted_like_short_ones(
        stub: rls_pb2_grpc.RateLimitServiceStub) -> None:
    user = uuid.uuid4().hex * 40  # past the limiter's cache of resolved descriptors
    tiny = [("route_class", "tiny"), ("user", user)]
    codes = [(await stub.ShouldRateLimit(request(tiny))).overall_code for _ in range(4)]
    assert codes == [OK, OK, OK, OVER]


async def test_specific_values_win_over_wildcards_and_unknown_domains_are_unlimited(
        stub: rls_pb2_grpc.RateLimitServiceStub) -> None:
    vip = [("route_class", "tiny"), ("user", "vip")]
    for _ in range(5):
        answer = await stub.ShouldRateLimit(request(vip))
        assert answer.overall_code == OK and not answer.statuses[0].HasField("current_limit")
    answer = await stub.ShouldRateLimit(request([("user", "x")], domain="elsewhere"))
    assert answer.overall_code == OK and not answer.response_headers_to_add


@pytest.mark.parametrize("bad", [request([("a", "b")], domain=""), request()])
async def test_malformed_requests_are_invalid_arguments(
        stub: rls_pb2_grpc.RateLimitServiceStub, bad: rls_pb2.RateLimitRequest) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.ShouldRateLimit(bad)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize("mode, outcome", [("error", grpc.StatusCode.UNAVAILABLE),
                                           ("allow", OK), ("deny", OVER)])
async def test_redis_down_answers_as_configured(redis_server: LocalRedis, data_dir: Path,
                                                rules_file: Path, mode: str,
                                                outcome: object) -> None:
    server = await start(redis_server, data_dir, rules_file, mode,
                         redis_url=f"redis://127.0.0.1:{free_port()}/0")
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = rls_pb2_grpc.RateLimitServiceStub(channel)
            answers = await asyncio.gather(*(  # concurrent: counted (and failed) together
                stub.ShouldRateLimit(request([("route_class", "tiny"), ("user", f"u{i}")],
                                             [("user", f"u{i}")]), timeout=5)
                for i in range(10)), return_exceptions=True)
    finally:
        await server.stop(0)
    for answer in answers:
        if isinstance(outcome, grpc.StatusCode):
            assert isinstance(answer, grpc.aio.AioRpcError)
            assert answer.code() == outcome
        else:
            assert isinstance(answer, rls_pb2.RateLimitResponse)
            assert answer.overall_code == outcome
            assert [s.code for s in answer.statuses] == [outcome, outcome]


def test_malformed_rule_files_are_refused() -> None:
    with pytest.raises(RulesError, match="unit"):
        RateLimitRules.parse([{"domain": "d", "descriptors": [
            {"key": "k", "rate_limit": {"unit": "fortnight", "requests_per_unit": 1}}]}])
    with pytest.raises(RulesError, match="twice"):
        RateLimitRules.parse([{"domain": "d", "descriptors": [{"key": "k"}, {"key": "k"}]}])
    with pytest.raises(RulesError, match="domain"):
        RateLimitRules.parse([{"descriptors": []}])
