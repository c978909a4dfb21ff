"""Limits per descriptor, from a YAML file in the format of Envoy's reference rate limit
service (envoyproxy/ratelimit), so the same file serves either implementation:

    domain: llmmesh
    descriptors:
      - key: route_class          # an entry's key ...
        value: chat               # ... and value; no value = every value counted apart
        descriptors:              # nested: the descriptor's next entry
          - key: user
            rate_limit: {unit: minute, requests_per_unit: 30}
      - key: user
        rate_limit: {unit: minute, requests_per_unit: 300}

A request descriptor (a list of key/value entries) is walked through the tree entry by
entry, preferring a node with the same key and value over one with the key alone; the
node reached by the last entry gives the limit. No node, or no `rate_limit` there, means
the descriptor is not limited. `unlimited: true` also means not limited.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from gateway.spec import UNIT_SECONDS


class RulesError(ValueError):
    """The rate limit config file is malformed."""


@dataclass(frozen=True)
class Rule:
    """The limit a descriptor resolved to."""

    requests_per_unit: int
    unit: str
    name: str = ""

    @property
    def window_seconds(self) -> int:
        return UNIT_SECONDS[self.unit]


@dataclass
class _Node:
    rule: Rule | None = None
    unlimited: bool = False
    by_value: dict[tuple[str, str], _Node] = field(default_factory=dict)
    by_key: dict[str, _Node] = field(default_factory=dict)


@dataclass(frozen=True)
class RateLimitRules:
    """The limits of every domain in one config file."""

    domains: Mapping[str, _Node]

    @classmethod
    def load(cls, path: Path) -> RateLimitRules:
        try:
            documents = list(yaml.safe_load_all(path.read_text(encoding="utf-8")))
        except (OSError, yaml.YAMLError) as error:
            raise RulesError(f"cannot read rate limit rules {path}: {error}") from None
        return cls.parse(documents)

    @classmethod
    def parse(cls, documents: Sequence[Any]) -> RateLimitRules:
        domains: dict[str, _Node] = {}
        for document in documents:
            if document is None:
                continue
            if not isinstance(document, Mapping) or not document.get("domain"):
                raise RulesError("each document needs a non-empty 'domain'")
            domain = str(document["domain"])
            if domain in domains:
                raise RulesError(f"domain {domain!r} is defined twice")
            root = _Node()
            _add_children(root, document.get("descriptors") or [], domain)
            domains[domain] = root
        return cls(domains)

    def rule_for(self, domain: str, entries: Sequence[tuple[str, str]]) -> Rule | None:
        """The limit of one descriptor, or None when it is not limited."""
        node = self.domains.get(domain)
        for key, value in entries:
            if node is None:
                return None
            node = node.by_value.get((key, value)) or node.by_key.get(key)
        if node is None or node.unlimited:
            return None
        return node.rule


def _add_children(parent: _Node, items: Any, where: str) -> None:
    if not isinstance(items, list):
        raise RulesError(f"{where}: 'descriptors' must be a list")
    for item in items:
        if not isinstance(item, Mapping) or not item.get("key"):
            raise RulesError(f"{where}: every descriptor needs a 'key'")
        key = str(item["key"])
        value = item.get("value")
        node = _Node(unlimited=bool(item.get("unlimited", False)))
        limit = item.get("rate_limit")
        if limit is not None:
            node.rule = _rule(limit, f"{where}/{key}")
        _add_children(node, item.get("descriptors") or [], f"{where}/{key}")
        if value is None:
            if key in parent.by_key:
                raise RulesError(f"{where}: {key} is defined twice")
            parent.by_key[key] = node
        else:
            if (key, str(value)) in parent.by_value:
                raise RulesError(f"{where}: {key}={value} is defined twice")
            parent.by_value[(key, str(value))] = node


def _rule(limit: Any, where: str) -> Rule:
    if not isinstance(limit, Mapping):
        raise RulesError(f"{where}: rate_limit must be a mapping")
    unit = str(limit.get("unit", "")).lower()
    if unit not in UNIT_SECONDS:
        raise RulesError(f"{where}: unit must be one of {sorted(UNIT_SECONDS)}, got {unit!r}")
    count = limit.get("requests_per_unit")
    if not isinstance(count, int) or isinstance(count, bool) or count < 0:
        raise RulesError(f"{where}: requests_per_unit must be a non-negative integer")
    return Rule(requests_per_unit=count, unit=unit, name=str(limit.get("name", "")))
