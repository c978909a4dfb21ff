"""Auth flows and token quotas on Redis Cluster: the existing tests, run unchanged
against servers on the cluster client (see conftest.py)."""

from __future__ import annotations

from tests.auth.test_flow import (
    test_logout_revokes_the_session,
    test_refresh_rotates_and_reuse_revokes_the_family,
    test_register_login_and_read_self,
)
from tests.auth.test_quota import (
    test_a_users_own_limit_shows_on_their_profile_and_can_be_cleared,
    test_extend_grows_a_hold_only_when_it_fits,
    test_fifty_concurrent_reservations_admit_at_most_what_fits,
    test_reserve_settle_release,
    test_settle_is_once_only_and_a_retry_answers_ok,
)
from tests.auth.test_validation import (
    test_twenty_concurrent_registrations_of_one_email,
    test_twenty_concurrent_registrations_of_one_username,
)

__all__ = [
    "test_a_users_own_limit_shows_on_their_profile_and_can_be_cleared",
    "test_extend_grows_a_hold_only_when_it_fits",
    "test_fifty_concurrent_reservations_admit_at_most_what_fits",
    "test_logout_revokes_the_session",
    "test_refresh_rotates_and_reuse_revokes_the_family",
    "test_register_login_and_read_self",
    "test_reserve_settle_release",
    "test_settle_is_once_only_and_a_retry_answers_ok",
    "test_twenty_concurrent_registrations_of_one_email",
    "test_twenty_concurrent_registrations_of_one_username",
]
