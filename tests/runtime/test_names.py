"""Names two services accept, defined once (services/runtime/names.py)."""

from __future__ import annotations

import uuid

import pytest

from services.runtime.errors import FieldViolation, InvalidArgument
from services.runtime.names import (
    collection_violation,
    document_id,
    document_name,
    document_name_violation,
)


def test_a_document_service_id_round_trips() -> None:
    new_id = uuid.uuid4().hex  # how the document service makes ids (ingestion.py)
    name = document_name(new_id)
    assert document_name_violation(name, "f") is None
    assert document_id(name) == new_id


@pytest.mark.parametrize("name", [
    "", "documents/", "documents/xyz", "documents/" + "A" * 32, "documents/" + "a" * 31,
    "documents/" + "a" * 33, "docs/" + "a" * 32, "documents/" + "a" * 32 + "/chunks",
])
def test_anything_else_is_refused_on_the_named_field(name: str) -> None:
    assert document_name_violation(name, "options.documents[2]") == FieldViolation(
        "options.documents[2]", "must be documents/{document}")
    with pytest.raises(InvalidArgument) as caught:
        document_id(name, "documents[0]")
    assert [v.field for v in caught.value.violations] == ["documents[0]"]


@pytest.mark.parametrize(("collection", "ok"), [
    ("", True), ("default", True), ("a_b-C9", True), ("x" * 64, True), ("x" * 65, False),
    ("no spaces", False), ("slash/es", False),
])
def test_collections(collection: str, ok: bool) -> None:
    assert (collection_violation(collection, "collection") is None) is ok
