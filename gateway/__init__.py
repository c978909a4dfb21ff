"""The Python edge (JWT checks, rate limiting, REST→gRPC transcoding); built in the edge issue."""
