"""tests/faultproxy.py's QuietServer (the fault proxy's and the B2-faithful server's base): a
client hanging up mid-request prints nothing; any other error in a handler still does."""

from __future__ import annotations

import socketserver

import pytest
from faultproxy import QuietServer


class _Handler(socketserver.BaseRequestHandler):
    def handle(self) -> None:  # never called: the tests call handle_error directly
        raise AssertionError


@pytest.fixture
def server():
    with QuietServer(("127.0.0.1", 0), _Handler) as made:
        yield made


def _report(server: QuietServer, error: BaseException) -> None:
    try:
        raise error
    except BaseException:
        server.handle_error(None, ("127.0.0.1", 40000))


@pytest.mark.parametrize(
    "error", [ConnectionResetError(104, "reset"), BrokenPipeError(32, "pipe"), TimeoutError()]
)
def test_a_client_hanging_up_is_not_reported(server, capsys, error):
    _report(server, error)
    assert capsys.readouterr().err == ""


def test_any_other_handler_error_is_still_printed(server, capsys):
    _report(server, ValueError("a real bug in a test server"))
    err = capsys.readouterr().err
    assert "ValueError: a real bug in a test server" in err and "127.0.0.1" in err
