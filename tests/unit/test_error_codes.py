"""A `warm.Code` is its stable string wherever a person or a script sees it: str(), format(), print()."""
from __future__ import annotations

import pytest

from warm import Code, WarmdError


def test_a_code_prints_as_its_stable_string(capsys: pytest.CaptureFixture[str]) -> None:
    err = WarmdError(Code.MODEL_NOT_FOUND, "no model named 'x'")
    assert str(err.code) == format(err.code) == f"{err.code}" == "model_not_found"
    assert f"{err.code:>17}|" == "  model_not_found|"          # format specs apply to the string
    print(err.code, err)
    assert capsys.readouterr().out == "model_not_found model_not_found: no model named 'x'\n"
    assert err.code == "model_not_found" and Code("model_not_found") is err.code    # still compares and parses


def test_every_code_has_an_http_status_a_caller_mistake_4xx_the_daemon_state_5xx() -> None:
    statuses = {code: code.http_status for code in Code}
    assert statuses[Code.MODEL_NOT_FOUND] == 404 and statuses[Code.INVALID_ARGUMENT] == 400
    assert statuses[Code.BUSY] == 429 and statuses[Code.INSUFFICIENT_MEMORY] == 507
    assert statuses[Code.UNAUTHENTICATED] == 401 and statuses[Code.PERMISSION_DENIED] == 403
    assert all(400 <= s < 600 for s in statuses.values())
