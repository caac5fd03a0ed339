"""Numbers and flags read from environment variables: refused by the variable's name, with what it must be."""

import pytest

from storage.env_numbers import env_flag, env_number


def test_env_number_names_the_variable_and_what_it_must_be():
    assert env_number("X", 7, what="w", env={}) == 7 and env_number("X", 7, what="w", env={"X": " "}) == 7
    assert env_number("X", 7, what="w", env={"X": "2.5"}) == 2.5
    assert env_number("X", 7, what="w", integer=True, minimum=1, env={"X": "3"}) == 3
    for raw, message in (("abc", "X='abc' is not w"), ("-1", "X='-1': it must be w"), ("inf", "X='inf': it must be w"),
                         ("nan", "X='nan': it must be w")):
        with pytest.raises(ValueError, match=message):
            env_number("X", 7, what="w", env={"X": raw})
    with pytest.raises(ValueError, match="X='2.5' is not w"):
        env_number("X", 7, what="w", integer=True, env={"X": "2.5"})


def test_env_number_reads_the_first_variable_set_and_names_it():
    names = ("PRH_A", "AWS_A")
    assert env_number(names, 7, what="w", env={"AWS_A": "3"}) == 3
    assert env_number(names, 7, what="w", env={"PRH_A": " ", "AWS_A": "3"}) == 3  # blank counts as unset
    assert env_number(names, 7, what="w", env={"PRH_A": "4", "AWS_A": "3"}) == 4
    with pytest.raises(ValueError, match="^AWS_A='x' is not w$"):
        env_number(names, 7, what="w", env={"AWS_A": "x"})


def test_env_number_above_minimum_refuses_the_minimum_itself():
    assert env_number("X", 7, what="w", env={"X": "0"}) == 0
    assert env_number("X", 7, what="w", above_minimum=True, env={"X": "0.001"}) == 0.001
    with pytest.raises(ValueError, match="^X='0': it must be w$"):
        env_number("X", 7, what="w", above_minimum=True, env={"X": "0"})


def test_env_number_reads_the_process_environment_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without ``env`` the variable is read from ``os.environ`` (what every PRH_* setting relies on)."""
    monkeypatch.setenv("PRH_TEST_ENV_NUMBER", "12")
    assert env_number("PRH_TEST_ENV_NUMBER", 7, what="w") == 12
    monkeypatch.delenv("PRH_TEST_ENV_NUMBER")
    assert env_number("PRH_TEST_ENV_NUMBER", 7, what="w") == 7


def test_env_flag_reads_yes_and_no_and_names_anything_else():
    """One vocabulary for prh's yes/no variables (``PRH_SINGLE_WRITER``, ``PRH_TRACEBACKS``): any
    case, blanks around ignored; unset or blank is no; anything else is refused by name, never
    taken silently as a no (``PRH_TRACEBACKS=2`` had been)."""
    for raw in ("1", "true", "YES", " On ", "True"):
        assert env_flag("X", env={"X": raw}) is True, raw
    for raw in ("0", "false", "No", "OFF", "", "  "):
        assert env_flag("X", env={"X": raw}) is False, raw
    assert env_flag("X", env={}) is False
    for raw in ("2", "maybe", "y", "enabled"):
        with pytest.raises(ValueError, match=f"^X={raw!r} is not 1/true/yes/on or 0/false/no/off$"):
            env_flag("X", env={"X": raw})
