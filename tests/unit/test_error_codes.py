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
