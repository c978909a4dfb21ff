"""llmmesh services: auth, chat, document and embedding, on one shared runtime."""
