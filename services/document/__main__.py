"""The document service: `python -m services.document`."""
from services.document.server import main

main()
