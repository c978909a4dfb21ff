#!/usr/bin/env python3
"""Generate the edge's config for docker-compose and Kubernetes from its one source of
truth (`gateway/spec.py`) and the API's descriptor set (rendering: gateway/edge_files.py):

  envoy/envoy.yaml             Envoy's bootstrap for docker-compose (listener, filters,
                               routes, clusters by compose service name)
  envoy/ratelimit.yaml         limits per descriptor, read by the rate limit service
  envoy/descriptor_set.binpb   the descriptor set Envoy's transcoder loads (the API's,
                               plus google/rpc/error_details.proto for error details)
  envoy/openapi.json           the REST API's OpenAPI 3.1 document, which Envoy serves
                               at /openapi.json (gateway/openapi.py)
  deploy/k8s/base/envoy/       the same files for Kubernetes (upstreams by their
                               headless Service; Kustomize puts them in ConfigMaps)

The local run (`./scripts/run.sh`) and the tests render the same spec for a local
target at start-up (gateway/deployment.py).

The committed files name no external OIDC issuer, whatever the environment says. For a
deployment that verifies some (docs/identity.md), render its own copy with the issuers
of LLMMESH_OIDC_ISSUERS and mount that instead (compose: ENVOY_CONFIG_DIR):

  LLMMESH_OIDC_ISSUERS='[...]' python scripts/gen_edge.py --target compose --out envoy-sso

Usage: python scripts/gen_edge.py [--check | --target compose|kubernetes --out DIR]
  --check   exit 1 if the files in envoy/ or deploy/k8s/base/envoy/ differ from what
            would be generated (the staleness tests run this check).
  --target, --out
            write one target's files to DIR, with the issuers of LLMMESH_OIDC_ISSUERS.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gateway import deployment  # noqa: E402
from gateway.edge_files import render, write  # noqa: E402
from gateway.spec import LLMMESH_SPEC, EdgeSpec  # noqa: E402
from services.runtime.config import ConfigError, Env  # noqa: E402
from services.runtime.identity_providers import OidcIssuer, oidc_issuers  # noqa: E402

ENVOY_DIR = ROOT / "envoy"
K8S_ENVOY_DIR = ROOT / "deploy" / "k8s" / "base" / "envoy"


def render_compose(spec: EdgeSpec = LLMMESH_SPEC,
                   issuers: tuple[OidcIssuer, ...] = ()) -> dict[str, bytes]:
    import llmmesh

    return render(spec, llmmesh.descriptor_set_path(), deployment.compose(spec, issuers))


def render_kubernetes(spec: EdgeSpec = LLMMESH_SPEC,
                      issuers: tuple[OidcIssuer, ...] = ()) -> dict[str, bytes]:
    import llmmesh

    return render(spec, llmmesh.descriptor_set_path(), deployment.kubernetes(spec, issuers))


RENDERERS = {"compose": render_compose, "kubernetes": render_kubernetes}


def targets(spec: EdgeSpec = LLMMESH_SPEC) -> dict[Path, dict[str, bytes]]:
    """Each generated directory and its files."""
    return {ENVOY_DIR: render_compose(spec), K8S_ENVOY_DIR: render_kubernetes(spec)}


def stale_files(rendered: dict[str, bytes], directory: Path = ENVOY_DIR) -> list[str]:
    return [name for name, data in rendered.items()
            if not (directory / name).is_file() or (directory / name).read_bytes() != data]


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="fail if a generated file is stale")
    parser.add_argument("--target", choices=sorted(RENDERERS),
                        help="render this deployment's files only (with --out)")
    parser.add_argument("--out", type=Path,
                        help="where --target's files go, with LLMMESH_OIDC_ISSUERS' issuers")
    args = parser.parse_args()
    if (args.target is None) != (args.out is None) or (args.target and args.check):
        parser.error("--target and --out go together, without --check")
    if args.target:
        try:
            issuers = oidc_issuers(Env())
        except ConfigError as error:
            parser.error(str(error))
        rendered = RENDERERS[args.target](LLMMESH_SPEC, issuers)
        out = args.out.resolve()
        if out in {ENVOY_DIR, K8S_ENVOY_DIR}:
            parser.error(f"{args.out} holds the committed files: choose another directory")
        write(rendered, out)
        print(f"generated {', '.join(sorted(rendered))} in {args.out} for {args.target}, "
              f"{len(issuers)} OIDC issuer(s): {', '.join(i.issuer for i in issuers) or '-'}")
        return 0
    generated = targets()
    if args.check:
        stale = [str((directory / name).relative_to(ROOT))
                 for directory, rendered in generated.items()
                 for name in stale_files(rendered, directory)]
        if stale:
            print("the edge config is stale; run: python scripts/gen_edge.py", *stale,
                  sep="\n")
            return 1
        print("envoy/ and deploy/k8s/base/envoy/ are current")
        return 0
    for directory, rendered in generated.items():
        write(rendered, directory)
        print(f"generated {', '.join(sorted(rendered))} in {directory.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
