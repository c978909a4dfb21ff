"""Running the whole mesh locally: a Redis server and every service as a process."""
