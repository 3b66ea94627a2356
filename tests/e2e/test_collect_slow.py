"""A slow stamp never delays the daemon's loop: while a usage page trickles in (the simulator's
`slow` fault, an eighth of the answer at a time), the watchdog keeps pinging at its interval,
SIGHUP reloads the configuration (RELOADING=1, then READY=1), and SIGTERM stops the daemon with
status 0 at once, the request in flight cancelled rather than waited for.
"""
import signal

from collect_helpers import Sim, collect_scenario, daemon_conf, start
from conftest import NotifySocket
from waiting import limit, wait_until


def test_slow_stamp_does_not_block_the_loop(tmp_path, daemon_bin):
    # the answer takes 16 eighths... of a delay twice the give-up limit of every wait below
    delay_ms = int(limit(10) * 1000 / 4)
    sc = collect_scenario(2, faults=[{"endpoint": "usage", "action": "slow",
                                      "delayMs": delay_ms, "times": 1}])
    notify = NotifySocket()
    with Sim(sc) as sim:
        conf = daemon_conf(sim, tmp_path / "d")
        d = start(daemon_bin, tmp_path / "d", conf,
                  env={"NOTIFY_SOCKET": notify.address, "WATCHDOG_USEC": "400000"})
        try:
            notify.wait_for("READY=1")
            wait_until(lambda: any(r["action"] == "slow" for r in sim.requests()["requests"]),
                       "the slow usage request", 30, alive=d.proc)
            # the loop runs while the answer trickles in: pings keep coming
            for _ in range(5):
                notify.wait_for("WATCHDOG=1")
            d.kill(signal.SIGHUP)
            notify.wait_for("RELOADING=1")
            notify.wait_for("READY=1")
            for _ in range(2):
                notify.wait_for("WATCHDOG=1")
            assert "collected" not in d.log()  # the slow page is still on its way
            d.kill(signal.SIGTERM)
            # the answer would need eight times delay_ms more: limit(10) is far less
            assert d.wait(timeout=10) == 0, d.log()
            notify.wait_for("STOPPING=1")
            assert "ERROR: AddressSanitizer" not in d.log()
        finally:
            d.stop()
            notify.close()
