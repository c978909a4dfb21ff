"""The edge, local flavour: the Python edge (`python -m gateway`, gateway.app) and the
rate limit service (`python -m gateway.ratelimit`). Both follow gateway/spec.py, the
source Envoy's config in envoy/ is generated from (scripts/gen_edge.py)."""
