"""API keys and OIDC users on Redis Cluster: the identity tests that need only auth,
run unchanged against an auth server on the cluster client (its fixtures re-declared
here, as conftest.py explains, so they bind to the cluster's `redis_server`)."""

from __future__ import annotations

from tests.identity.conftest import (  # noqa: F401 — re-declared for this module
    idp,
    keys,
    owner,
    sso_auth_address,
    sso_auth_server,
    sso_channel,
    users,
)
from tests.identity.test_api_keys import (
    test_an_expired_key_is_refused,
    test_another_users_keys_answer_not_found,
    test_create_get_list_revoke_and_the_secret_is_shown_once,
    test_invalid_requests_name_every_bad_field,
    test_unknown_and_malformed_keys_are_refused,
)
from tests.identity.test_oidc import test_concurrent_first_uses_create_one_user

__all__ = [
    "test_an_expired_key_is_refused",
    "test_another_users_keys_answer_not_found",
    "test_concurrent_first_uses_create_one_user",
    "test_create_get_list_revoke_and_the_secret_is_shown_once",
    "test_invalid_requests_name_every_bad_field",
    "test_unknown_and_malformed_keys_are_refused",
]
