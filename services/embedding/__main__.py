"""The embedding service: `python -m services.embedding`."""
from services.embedding.server import main

main()
