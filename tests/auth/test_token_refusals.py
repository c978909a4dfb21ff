"""Forged, expired and misdirected access tokens are refused by the interceptor —
on auth itself (local JWKS) and on another service (JWKS fetched from auth)."""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Callable

import grpc
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from llmmesh.auth.v1 import auth_pb2
from llmmesh.embedding.v1 import embedding_pb2

from services.auth.keys import SigningKey, load_or_create
from tests.helpers import LoggedIn, error_info, register_and_login


def _b64(data: dict | bytes) -> str:
    raw = data if isinstance(data, bytes) else json.dumps(data).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _claims(user_id: str, **overrides: object) -> dict[str, object]:
    now = int(time.time())
    claims: dict[str, object] = {"iss": "llmmesh-auth", "aud": "llmmesh", "sub": user_id,
                                 "iat": now, "exp": now + 300, "jti": uuid.uuid4().hex}
    claims.update(overrides)
    return claims


def _signed(key: SigningKey, claims: dict[str, object], kid: str | None = None) -> str:
    return jwt.encode(claims, key.private_key, algorithm="ES256",
                      headers={"kid": kid or key.kid})


def _tampered(token: str) -> str:
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["sub"] = "0" * 32  # become someone else, keep the signature
    return f"{header}.{_b64(claims)}.{signature}"


def _alg_none(key: SigningKey, user_id: str) -> str:
    return f"{_b64({'alg': 'none', 'typ': 'JWT', 'kid': key.kid})}.{_b64(_claims(user_id))}."


def _hs256_with_public_key(key: SigningKey, user_id: str) -> str:
    # The classic confusion attack: HMAC "signed" with the published public key.
    public_pem = key.private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    header = {"alg": "HS256", "typ": "JWT", "kid": key.kid}
    signing_input = f"{_b64(header)}.{_b64(_claims(user_id))}".encode()
    import hashlib
    import hmac

    signature = hmac.new(public_pem, signing_input, hashlib.sha256).digest()
    return f"{signing_input.decode()}.{_b64(signature)}"


def _cases(key: SigningKey, user_id: str) -> dict[str, tuple[Callable[[str], str], str]]:
    stranger = SigningKey(private_key=ec.generate_private_key(ec.SECP256R1()), kid="stranger")
    return {
        "expired": (lambda _: _signed(key, _claims(user_id, iat=int(time.time()) - 7200,
                                                   exp=int(time.time()) - 3600)),
                    "TOKEN_EXPIRED"),
        "tampered": (_tampered, "INVALID_TOKEN"),
        "alg-none": (lambda _: _alg_none(key, user_id), "UNSUPPORTED_ALGORITHM"),
        "wrong-aud": (lambda _: _signed(key, _claims(user_id, aud="someone-else")),
                      "WRONG_AUDIENCE"),
        "wrong-iss": (lambda _: _signed(key, _claims(user_id, iss="https://evil.example")),
                      "WRONG_ISSUER"),
        "unknown-kid": (lambda _: _signed(stranger, _claims(user_id)), "UNKNOWN_KEY_ID"),
        "own-key-unknown-kid": (lambda _: _signed(key, _claims(user_id), kid="rotated-away"),
                                "UNKNOWN_KEY_ID"),
        "hs256-public-key": (lambda _: _hs256_with_public_key(key, user_id),
                             "UNSUPPORTED_ALGORITHM"),
        "hs256-secret": (lambda _: jwt.encode(_claims(user_id), "s" * 32, algorithm="HS256",
                                              headers={"kid": key.kid}),
                         "UNSUPPORTED_ALGORITHM"),
        "missing-jti": (lambda _: _signed(key, {k: v for k, v in _claims(user_id).items()
                                                if k != "jti"}), "INVALID_TOKEN"),
        "garbage": (lambda _: "not.a.jwt", "MALFORMED_TOKEN"),
    }


CASES = list(_cases(SigningKey.generate(), "x"))


@pytest.mark.parametrize("case", CASES)
async def test_refused_by_auth_and_by_a_peer_service(case: str, auth_stub, embedding_stub,
                                                     alice: LoggedIn, data_dir) -> None:
    key = load_or_create(None, data_dir)  # the key the test auth server signs with
    make, reason = _cases(key, alice.user_id)[case]
    token = make(alice.tokens.access_token)
    metadata = (("authorization", f"Bearer {token}"),)
    calls = [
        auth_stub.GetUser(auth_pb2.GetUserRequest(name="users/me"), metadata=metadata),
        embedding_stub.ListEmbeddingModels(embedding_pb2.ListEmbeddingModelsRequest(),
                                           metadata=metadata),
    ]
    for call in calls:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED, case
        assert error_info(caught.value).reason == reason
        assert "Traceback" not in caught.value.details()


async def test_the_real_token_passes_both(auth_stub, embedding_stub, alice: LoggedIn) -> None:
    me = await auth_stub.GetUser(auth_pb2.GetUserRequest(name="users/me"),
                                 metadata=alice.metadata)
    assert me.name == alice.user.name
    listed = await embedding_stub.ListEmbeddingModels(
        embedding_pb2.ListEmbeddingModelsRequest(), metadata=alice.metadata)
    assert listed.embedding_models


@pytest.mark.parametrize("metadata", [(), (("authorization", "Basic dXNlcjpwYXNz"),),
                                      (("authorization", "Bearer "),)])
async def test_missing_or_malformed_authorization(embedding_stub, metadata) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await embedding_stub.ListEmbeddingModels(embedding_pb2.ListEmbeddingModelsRequest(),
                                                 metadata=metadata)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert error_info(caught.value).reason in {"MISSING_TOKEN", "MALFORMED_TOKEN"}


async def test_a_bad_token_on_a_public_method_is_still_refused(auth_stub, alice) -> None:
    # Like Envoy's allow_missing: no token is fine on login, a bad one is not.
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await auth_stub.Login(auth_pb2.LoginRequest(username="x", password="y" * 8),
                              metadata=(("authorization", "Bearer not.a.jwt"),))
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_two_authorization_values_are_refused(auth_stub, alice: LoggedIn) -> None:
    # Serving the first or the last would let a proxy's choice decide who the caller is.
    other = await register_and_login(auth_stub)
    for metadata in [alice.metadata * 2, alice.metadata + other.metadata]:
        for call in [auth_stub.GetUser(auth_pb2.GetUserRequest(name="users/me"),
                                       metadata=metadata),
                     auth_stub.Login(auth_pb2.LoginRequest(username="x", password="y" * 8),
                                     metadata=metadata)]:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await call
            assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert error_info(caught.value).reason == "AMBIGUOUS_CREDENTIALS"


async def test_two_service_credentials_are_refused(quota_stub) -> None:
    from llmmesh.auth.v1 import quota_pb2

    from tests.conftest import SERVICE_METADATA
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await quota_stub.ReleaseReservation(quota_pb2.ReleaseReservationRequest(),
                                            metadata=SERVICE_METADATA * 2)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert error_info(caught.value).reason == "AMBIGUOUS_CREDENTIALS"
