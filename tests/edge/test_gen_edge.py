"""The one source of truth holds: envoy/ is what scripts/gen_edge.py makes from
gateway/spec.py and the current descriptor set, and the generator notices drift."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from types import ModuleType

import pytest
import yaml

from gateway.ratelimit.rules import RateLimitRules
from gateway.spec import LLMMESH_SPEC, Limit

ROOT = Path(__file__).resolve().parents[2]


def generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_edge", ROOT / "scripts" / "gen_edge.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_envoy_dir_is_current() -> None:
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_edge.py"), "--check"],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


ISSUERS = ('[{"issuer": "https://sso.example.com", "audience": "llmmesh", '
           '"jwks_uri": "https://sso.example.com/certs"}]')


@pytest.mark.parametrize("target", ["compose", "kubernetes"])
def test_a_deployment_renders_its_own_copy_with_its_oidc_issuers(target: str,
                                                                 tmp_path: Path) -> None:
    out = tmp_path / "envoy-sso"
    env = {**os.environ, "LLMMESH_OIDC_ISSUERS": ISSUERS}
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_edge.py"),
                             "--target", target, "--out", str(out)], env=env,
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 OIDC issuer(s): https://sso.example.com" in result.stdout
    config = yaml.safe_load((out / "envoy.yaml").read_text())
    text = json.dumps(config)
    assert '"issuer": "https://sso.example.com"' in text and "oidc_jwks_0" in text
    # Everything else is the committed target's: the same files, the same limits.
    committed = ROOT / ("envoy" if target == "compose" else "deploy/k8s/base/envoy")
    assert sorted(p.name for p in out.iterdir()) == sorted(
        p.name for p in committed.iterdir() if p.name != "README.md")
    assert (out / "ratelimit.yaml").read_bytes() == (committed / "ratelimit.yaml").read_bytes()
    # The committed files never take an issuer from the environment.
    check = subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_edge.py"), "--check"],
                           env=env, capture_output=True, text=True, timeout=60, check=False)
    assert check.returncode == 0, check.stdout + check.stderr


@pytest.mark.parametrize(("args", "env", "error"), [
    (["--target", "compose"], {}, "--target and --out go together"),
    (["--target", "compose", "--out", "envoy"], {}, "holds the committed files"),
    (["--target", "compose", "--out", "x"], {"LLMMESH_OIDC_ISSUERS": "[{"},
     "LLMMESH_OIDC_ISSUERS"),
])
def test_the_generator_refuses_a_bad_request(args: list[str], env: dict[str, str],
                                             error: str, tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_edge.py"), *args],
                            env={**os.environ, **env}, cwd=ROOT if "envoy" in args else tmp_path,
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 2 and error in result.stderr, result.stderr
    assert not (tmp_path / "x").exists()


def test_a_changed_spec_makes_envoy_dir_stale() -> None:
    gen = generator()
    classes = tuple(replace(c, limit=Limit(c.limit.requests_per_unit + 1, c.limit.unit))
                    if c.name == "chat" else c for c in LLMMESH_SPEC.route_classes)
    changed = gen.render_compose(replace(LLMMESH_SPEC, route_classes=classes))
    # The OpenAPI document states each method's limit.
    assert gen.stale_files(changed) == ["ratelimit.yaml", "openapi.json"]
    public = gen.render_compose(replace(LLMMESH_SPEC, public_methods=LLMMESH_SPEC.public_methods
                                        - {"/llmmesh.auth.v1.AuthService/RefreshToken"}))
    # ... and which methods need a token.
    assert gen.stale_files(public) == ["envoy.yaml", "openapi.json"]


def test_the_rate_limit_service_reads_the_spec_limits_from_the_generated_file() -> None:
    rules = RateLimitRules.load(ROOT / "envoy" / "ratelimit.yaml")
    for route_class in LLMMESH_SPEC.route_classes:
        key = "remote_address" if route_class.key == "remote_address" else "user"
        rule = rules.rule_for(LLMMESH_SPEC.domain, [("route_class", route_class.name),
                                                    (key, "someone")])
        assert rule is not None
        assert (rule.requests_per_unit, rule.unit) == (route_class.limit.requests_per_unit,
                                                       route_class.limit.unit)
    overall = rules.rule_for(LLMMESH_SPEC.domain, [("user", "someone")])
    assert overall is not None
    assert overall.requests_per_unit == LLMMESH_SPEC.per_user_limit.requests_per_unit
    document = yaml.safe_load((ROOT / "envoy" / "ratelimit.yaml").read_text())
    assert document["domain"] == LLMMESH_SPEC.domain
