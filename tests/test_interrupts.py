"""Ctrl-C (or batch's SIGTERM) that numba turns into a SystemError is still reported as an interruption."""

from __future__ import annotations

import os
import signal
import sys
import time

import pytest

from kquant_codec import batch, cli
from kquant_codec.interrupts import interrupt_seen, noting_sigint

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="POSIX signals")


def _swallowed_ctrl_c():
    """What a SIGINT landing while a numba kernel returns looks like to the caller."""
    try:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(1)
    except KeyboardInterrupt:
        raise SystemError("CPUDispatcher(<function k>) returned a result with an exception set") from None
    raise AssertionError("SIGINT did not arrive")


@pytest.fixture
def default_sigint():
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_noting_sigint_notes_raises_nests_and_restores(default_sigint):
    with noting_sigint():
        assert interrupt_seen() is None
        with noting_sigint():  # nested: still noted, the outer handler comes back
            pass
        with pytest.raises(SystemError):
            _swallowed_ctrl_c()
        assert interrupt_seen() == "SIGINT"
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a background job: left alone
    with noting_sigint():
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN


def test_cli_reports_a_swallowed_ctrl_c_as_interrupted(default_sigint, monkeypatch, capsys):
    parser = cli.build_parser()

    def interrupted(args):
        _swallowed_ctrl_c()

    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    monkeypatch.setattr(parser, "parse_args", lambda argv: type("Args", (), {"func": staticmethod(interrupted)})())
    assert cli.main(["info", "x"]) == cli.EXIT_INTERRUPTED
    assert capsys.readouterr().err.strip() == "kquant: interrupted"


def test_serial_batch_stops_on_a_swallowed_ctrl_c(default_sigint, monkeypatch):
    def process(task):
        try:
            _swallowed_ctrl_c()
        except SystemError as exc:
            return batch.FileResult(task, task, "failed", error=str(exc))

    monkeypatch.setattr(batch, "_process", process)
    seen = []
    with pytest.raises(KeyboardInterrupt):
        batch._run_serial(["a", "b"], lambda task, result: seen.append(task))
    assert seen == []  # the file is not counted, and the run stops


def test_serial_batch_stops_on_a_swallowed_sigterm_as_terminated(monkeypatch):
    """batch's SIGTERM handler notes the signal, so a SystemError it became inside numba stops a serial run
    as SIGTERM (exit 143, summary "SIGTERM"), not as a failed file followed by the rest of the run."""

    def process(task):
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)
        except batch._Terminated:
            return batch.FileResult(task, task, "failed", error="returned a result with an exception set")
        raise AssertionError("SIGTERM did not arrive")

    monkeypatch.setattr(batch, "_process", process)
    seen = []
    with batch._sigterm_as_interrupt(), pytest.raises(batch._Terminated):
        batch._run_serial(["a", "b"], lambda task, result: seen.append(task))
    assert seen == []


def test_signals_deferred_holds_a_signal_until_the_block_ends_and_restores_the_handlers():
    """kquant batch's bookkeeping runs under it: a SIGINT inside waits for the end, then raises as usual; the
    handlers are those of before, also when the block raises or a signal was held."""
    import os
    import signal

    from kquant_codec.interrupts import signals_deferred

    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    reached = []
    with pytest.raises(KeyboardInterrupt):
        with signals_deferred():
            os.kill(os.getpid(), signal.SIGINT)
            reached.append("after the signal")
    assert reached == ["after the signal"]
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
    with pytest.raises(ValueError):
        with signals_deferred():
            raise ValueError
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # ignored: left alone, and stays ignored
    try:
        with signals_deferred():
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
            os.kill(os.getpid(), signal.SIGINT)
    finally:
        signal.signal(signal.SIGINT, previous)
