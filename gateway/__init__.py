"""What the Envoy edge needs of us: its spec (gateway/spec.py), the generator of its
config per deployment target (gateway/envoy_config.py, gateway/deployment.py,
scripts/gen_edge.py writes envoy/), the code that runs the binary locally
(gateway/envoy_process.py, gateway/local_edge.py) and the rate limit service Envoy calls
(`python -m gateway.ratelimit`)."""
