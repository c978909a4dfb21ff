"""The rate limit service: Envoy's `envoy.service.ratelimit.v3.RateLimitService`,
backed by Redis fixed windows. Envoy's ratelimit filter calls it."""
