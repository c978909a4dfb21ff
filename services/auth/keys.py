"""The ES256 key that signs access tokens, and the JWKS that publishes it."""

from __future__ import annotations

import base64
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

from services.runtime.config import ConfigError

ALGORITHM = "ES256"


@dataclass(frozen=True)
class SigningKey:
    """A P-256 private key with its RFC 7638 thumbprint as `kid`."""

    private_key: ec.EllipticCurvePrivateKey
    kid: str

    @classmethod
    def from_pem(cls, pem: str | bytes) -> SigningKey:
        data = pem.encode() if isinstance(pem, str) else pem
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except ValueError as error:
            raise ConfigError(f"signing key is not a PEM private key: {error}") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
            raise ConfigError("signing key must be an EC P-256 key (ES256)")
        return cls(private_key=key, kid=_thumbprint(_public_jwk(key)))

    @classmethod
    def generate(cls) -> SigningKey:
        key = ec.generate_private_key(ec.SECP256R1())
        return cls(private_key=key, kid=_thumbprint(_public_jwk(key)))

    def pem(self) -> bytes:
        return self.private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def jwk(self) -> dict[str, Any]:
        """The public key as a JWK with kid, alg and use."""
        return {**_public_jwk(self.private_key), "kid": self.kid, "alg": ALGORITHM, "use": "sig"}


def load_or_create(pem: str | None, data_dir: Path) -> SigningKey:
    """The configured key; else the one persisted under the data dir (made on first start)."""
    if pem is not None:
        return SigningKey.from_pem(pem)
    path = data_dir / "keys" / "auth-signing-key.pem"
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return SigningKey.from_pem(path.read_bytes())
    key = SigningKey.generate()
    with os.fdopen(fd, "wb") as handle:
        handle.write(key.pem())
    return key


def jwks_document(keys: list[SigningKey]) -> bytes:
    """The JWKS JSON for `keys`."""
    return json.dumps({"keys": [key.jwk() for key in keys]}, sort_keys=True).encode()


def _public_jwk(key: ec.EllipticCurvePrivateKey) -> dict[str, Any]:
    jwk = ECAlgorithm.to_jwk(key.public_key(), as_dict=True)
    return {name: jwk[name] for name in ("kty", "crv", "x", "y")}


def _thumbprint(jwk: dict[str, Any]) -> str:
    canonical = json.dumps({k: jwk[k] for k in ("crv", "kty", "x", "y")},
                           separators=(",", ":"), sort_keys=True)
    digest = hashlib.sha256(canonical.encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
