"""The auth service: users, passwords, tokens, JWKS and monthly token quotas."""
