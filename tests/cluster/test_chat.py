"""Conversations, chat's token holds and resumable turns on Redis Cluster: the existing tests, run
unchanged against a chat server on the cluster client (see conftest.py)."""

from __future__ import annotations

from tests.chat.test_conversations import (
    test_another_users_conversation_is_not_found,
    test_conversations_list_newest_first_across_pages,
    test_get_list_messages_and_delete,
    test_the_last_n_turns_go_to_the_model,
    test_turns_extend_retention_and_expired_ones_leave_the_index,
)
from tests.chat.test_quota import (
    test_a_request_that_does_not_fit_is_refused_before_the_model,
    test_fifty_concurrent_streams_against_room_for_ten,
)
from tests.chat.test_resume import (
    test_a_finished_turn_replays_the_rest_and_refuses_a_sequence_past_its_end,
    test_a_resumer_keeps_a_turn_running_past_the_grace,
    test_a_stream_cut_at_a_random_point_resumes_with_every_later_event_once,
    test_cancel_stops_a_turn_at_once_and_charges_what_it_generated,
)

__all__ = [
    "test_a_finished_turn_replays_the_rest_and_refuses_a_sequence_past_its_end",
    "test_a_request_that_does_not_fit_is_refused_before_the_model",
    "test_a_resumer_keeps_a_turn_running_past_the_grace",
    "test_a_stream_cut_at_a_random_point_resumes_with_every_later_event_once",
    "test_another_users_conversation_is_not_found",
    "test_cancel_stops_a_turn_at_once_and_charges_what_it_generated",
    "test_conversations_list_newest_first_across_pages",
    "test_fifty_concurrent_streams_against_room_for_ten",
    "test_get_list_messages_and_delete",
    "test_the_last_n_turns_go_to_the_model",
    "test_turns_extend_retention_and_expired_ones_leave_the_index",
]
