"""The runtime every llmmesh service shares: config, server bootstrap, interceptors,
JWT verification, error mapping and peer clients."""
