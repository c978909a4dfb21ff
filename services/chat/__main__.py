"""The chat service: `python -m services.chat`."""
from services.chat.server import main

main()
