"""``cityflux status`` says why an /api/v1 part is missing and what to do about it."""

from __future__ import annotations

import httpx

from cityflux.status import _problem


def test_a_missing_token_names_the_option_and_the_command_that_makes_one() -> None:
    with httpx.Client() as client:
        note = _problem("/api/v1/status", 401, client)
    assert note.startswith("/api/v1/status: HTTP 401: ")
    assert "--token" in note
    assert "cityflux tokens create" in note


def test_a_refused_token_is_not_called_missing() -> None:
    with httpx.Client(headers={"Authorization": "Bearer x"}) as client:
        note = _problem("/api/v1/status", 401, client)
    assert "refused" in note
    assert "tokens create" not in note


def test_other_answers_say_why() -> None:
    with httpx.Client() as client:
        assert "scope read" in _problem("/api/v1/status", 403, client)
        assert "rules_file" in _problem("/api/v1/alerts/summary", 404, client)
        assert _problem("/api/v1/status", 500, client) == "/api/v1/status: HTTP 500"
