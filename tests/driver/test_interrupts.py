"""StopOnSignal: interrupt at once until a stop callback is attached, then stop after the step,
and abandon it on a second signal."""

from __future__ import annotations

import signal

import pytest

from agentrl.driver.interrupts import StopOnSignal


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_first_signal_requests_a_stop_and_the_second_interrupts(sig: signal.Signals) -> None:
    before = signal.getsignal(sig)
    stops: list[str] = []
    with StopOnSignal() as stop:
        with pytest.raises(KeyboardInterrupt):  # nothing attached yet: interrupt at once
            signal.raise_signal(sig)
        stop.attach(lambda: stops.append("stop"))
        signal.raise_signal(sig)
        assert stops == ["stop"] and stop.requested == sig.name
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(sig)
        assert stops == ["stop"]
    assert signal.getsignal(sig) is before
