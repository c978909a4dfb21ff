"""The one source of truth holds: envoy/ is what scripts/gen_edge.py makes from
gateway/spec.py and the current descriptor set, and the generator notices drift."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from types import ModuleType

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
