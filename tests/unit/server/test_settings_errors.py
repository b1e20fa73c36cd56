"""Bad settings fail fast: one line on stderr naming each problem, exit status 2, before
anything starts (``main`` is what the ``jaxinit-server`` command returns as its status)."""

from __future__ import annotations

import pytest

from jaxinit_server.main import main


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--grpc-port", "70000"], "grpc_port: "),
        (["--default-pool", "9.9"], "--default-pool 9.9 is neither this server's JAX"),
        (["--pools", "bogus"], "pools: --pools: 'bogus' is not VERSION=URL"),
    ],
)
def test_bad_settings_are_one_line_and_exit_2(argv: list[str], says: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert not out
    assert err.startswith("jaxinit-server: invalid settings: ") and err.count("\n") == 1, err
    assert says in err, err
    # pydantic's wording is not the user's: no "Value error, ", no empty setting name
    assert "Value error" not in err and "settings: :" not in err, err
