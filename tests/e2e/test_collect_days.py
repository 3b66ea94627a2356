"""Collection end to end: three days of reported hours at a simulated stamp over HTTPS (test CA),
each hour in several pages, with late records (usage hours before the reported hour), split
aggregates (one resource, meter and hour twice, other tags) and records added to hours already
served (lateRecords: only the look-back pass finds them), Commerce unused. The daemon collects
every hour, then every hour once more after the look-back; `azs-usagectl --json records` then
lists every record the simulator expects exactly once, with its key and its quantity text as
written, and the look-back pass stored nothing twice.
"""
from collect_helpers import (Sim, assert_same_records, collect_scenario, daemon_conf, start,
                             stop, wait_collected)

HOURS = 72


def test_three_days_with_late_and_split_records(tmp_path, daemon_bin, build_dir):
    sc = collect_scenario(HOURS, faults=[{"endpoint": "usage", "action": "lateRecords",
                                          "count": 1}])
    with Sim(sc) as sim:
        conf = daemon_conf(sim, tmp_path / "d")
        d = start(daemon_bin, tmp_path / "d", conf)
        try:
            records, want = wait_collected(d, build_dir, tmp_path / "d" / "usage.db", sim, sc)
            assert_same_records(records, want)
            # pages of two: every hour took several requests, and each hour was asked twice
            usage = [r for r in sim.requests()["requests"] if r["endpoint"] == "usage"]
            assert len(usage) >= 2 * 2 * HOURS
            assert all(r["status"] == 200 and r["bearer"] for r in usage)
            # the late records arrived with the look-back pass: the first pass missed them
            assert sum(1 for f in sim.faults() if f["action"] == "lateRecords") == 1
            assert sim.faults()[0]["fired"] >= HOURS
            assert any(w["usageStartTime"] < w["reportedStartTime"][:13] + ":00:00Z" and
                       w["usageEndTime"] < w["reportedStartTime"] for w in want.values())
            stop(d)
        finally:
            d.stop()
