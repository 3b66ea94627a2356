"""A SIGKILL in the middle of a multi-page hour loses and duplicates nothing: the daemon is
killed while a continuation page of an hour is in flight (the simulator holds that answer), its
first pages and their cursor already committed together; started again, the daemon's first usage
request is that hour's saved nextLink (the continuation that was in flight, not the hour's first
page), and in the end
`azs-usagectl --json records` lists every expected record exactly once.
"""
import signal

from collect_helpers import (Sim, assert_same_records, collect_scenario, daemon_conf, start,
                             stop, usagectl_records, wait_collected)
from waiting import wait_until

HOURS = 4
PAGES = 4  # records_per_hour / page_size


def usage_log(sim):
    return [r for r in sim.requests()["requests"] if r["endpoint"] == "usage"]


def test_sigkill_mid_hour_then_restart(tmp_path, daemon_bin, build_dir):
    # the sixth usage request is page 2 of the second hour: held until the daemon is killed
    hold = {"endpoint": "usage", "action": "delay", "delayMs": 600000, "after": PAGES + 1,
            "times": 1}
    sc = collect_scenario(HOURS, records_per_hour=2 * PAGES, page_size=2, latePercent=0,
                          faults=[hold])
    with Sim(sc) as sim:
        # no look-back pass comes between the pages of the first run
        conf = daemon_conf(sim, tmp_path / "d", stack={"lookback": "1h"})
        d = start(daemon_bin, tmp_path / "d", conf)
        try:
            wait_until(lambda: any(r["action"] == "delay" for r in usage_log(sim)),
                       "the held continuation request", 60, alive=d.proc)
            d.kill(signal.SIGKILL)
            d.wait(timeout=10)
        finally:
            d.stop()
        before = usagectl_records(build_dir, tmp_path / "d" / "usage.db")
        # the first hour and the first page of the second are in the store, nothing more
        assert len(before) == 2 * PAGES + 2, before
        n_before = len(usage_log(sim))

        conf["stack"]["lookback"] = "2s"
        d = start(daemon_bin, tmp_path / "d", conf)
        try:
            wait_until(lambda: len(usage_log(sim)) > n_before, "a usage request after the restart",
                       60, alive=d.proc)
            first, held = usage_log(sim)[n_before], usage_log(sim)[n_before - 1]
            # the saved nextLink of the second hour: the very continuation that was in flight
            assert "continuationToken=" in first["query"], first
            assert first["query"] == held["query"]
            # (the first hour's look-back was scheduled an hour ahead by the first run)
            records, want = wait_collected(d, build_dir, tmp_path / "d" / "usage.db", sim, sc,
                                           lookback=False)
            assert_same_records(records, want)
            stop(d)
        finally:
            d.stop()
