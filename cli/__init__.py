"""The `llmmesh` command line: account, documents and chat through the public gRPC API."""
