"""Reading and validating a channel's response mode."""

import pytest

from relay_server.responses import ResponseSettings, validate


@pytest.mark.parametrize("settings", [{}, {"response": None}, {"response": {}}, {"dedupe_window": 0}])
def test_settings_without_response_get_defaults(settings):
    assert ResponseSettings.of(settings) == ResponseSettings(mode="async", timeout=5.0, fallback=202)


def test_settings_read_afresh_each_call():
    """A changed response setting takes effect on the next call, with nothing remembered from earlier ones."""
    settings = {}
    assert ResponseSettings.of(settings).mode == "async"

    settings["response"] = {"mode": "sync", "timeout": 2, "fallback": 503}

    assert ResponseSettings.of(settings) == ResponseSettings(mode="sync", timeout=2.0, fallback=503)


def test_validate_empty_gives_defaults():
    assert validate({}) == ResponseSettings()


def test_validate_rejects_bad_mode():
    with pytest.raises(ValueError) as info:
        validate({"mode": "later"})

    assert str(info.value) == "response mode must be one of async, sync, not 'later'"
