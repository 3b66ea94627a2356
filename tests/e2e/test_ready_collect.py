"""Readiness, collection (ARCHITECTURE.md section 8): when the stamp's usage API refuses three
polls in a row, /readyz says so; the first page stored again clears it.
"""
from collect_helpers import (Sim, collect_scenario, daemon_conf, start, stop, wait_not_ready,
                             wait_ready)


def test_three_failed_polls_are_a_reason_until_a_page_is_stored(tmp_path, daemon_bin):
    sc = collect_scenario(2)
    # a 400 is not retried within the poll: each poll of the hour fails once
    with Sim(sc, faults=[{"endpoint": "usage", "status": 400, "code": "BadRequest"}]) as sim:
        conf = daemon_conf(sim, tmp_path / "d")
        d = start(daemon_bin, tmp_path / "d", conf)
        try:
            reason = wait_not_ready(d, conf, ["collection failed", "polls in a row"])
            failed = int(reason.split("collection failed ")[1].split()[0])
            assert failed >= 3, reason
            sim.set_faults([])
            wait_ready(d, conf)
            stop(d)
        finally:
            d.stop()
