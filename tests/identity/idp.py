"""A stand-in for an external OIDC identity provider: a real HTTP server on 127.0.0.1
(stdlib, in a thread) serving a real JWKS (one RSA and one P-256 key), and real tokens
signed with them (PyJWT + cryptography). Nothing leaves the machine."""

from __future__ import annotations

import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

AUDIENCE = "llmmesh-sso"


class IdentityProvider:
    """Start with `start()`; `issuer` is then its URL, `jwks_uri` its key set."""

    def __init__(self) -> None:
        self.rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.ec = ec.generate_private_key(ec.SECP256R1())
        self.jwks_requests = 0
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def _jwks(self) -> bytes:
        rsa_jwk = {**json.loads(RSAAlgorithm.to_jwk(self.rsa.public_key())), "kid": "rsa-1",
                   "use": "sig"}  # no `alg`: as many providers publish them
        ec_jwk = {**json.loads(ECAlgorithm.to_jwk(self.ec.public_key())), "kid": "ec-1",
                  "alg": "ES256", "use": "sig"}
        return json.dumps({"keys": [rsa_jwk, ec_jwk]}).encode()

    def start(self) -> None:
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path != "/jwks.json":
                    self.send_error(404)
                    return
                provider.jwks_requests += 1
                body = provider._jwks()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                return

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    @property
    def issuer(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def jwks_uri(self) -> str:
        return f"{self.issuer}/jwks.json"

    def config(self) -> dict[str, object]:
        """This provider's entry in LLMMESH_OIDC_ISSUERS."""
        return {"issuer": self.issuer, "audience": AUDIENCE, "jwks_uri": self.jwks_uri,
                "groups_claim": "groups"}

    def token(self, subject: str, *, algorithm: str = "RS256", audience: str = AUDIENCE,
              issuer: str | None = None, lifetime: float = 300.0,
              signing_key: Any = None, **claims: Any) -> str:
        """A token as the provider would issue it (or, with overrides, a bad one)."""
        now = int(time.time())
        payload = {"iss": issuer or self.issuer, "aud": audience, "sub": subject,
                   "iat": now, "exp": int(now + lifetime), "jti": uuid.uuid4().hex, **claims}
        key = signing_key or (self.rsa if algorithm == "RS256" else self.ec)
        kid = "rsa-1" if algorithm == "RS256" else "ec-1"
        return jwt.encode(payload, key, algorithm=algorithm, headers={"kid": kid})
