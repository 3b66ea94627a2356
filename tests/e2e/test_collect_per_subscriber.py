"""per_subscriber = true: every reported hour is asked for one user subscription at a time
(&subscriberId=), the subscriptions of a delegated provider's customer are refused with
SubscriberIdIsNotDirectTenant and skipped (logged once per subscription, every hour completes
without them), and with hours not ready and continuation tokens that expire on the way, every
expected record arrives once, with its key and quantity text. A subscription deleted from the
list while its usage is still reported keeps being asked for (the cache never forgets it): an
hour recollected (azs-usagectl recollect) after the deletion is split again with it.
"""
import os
import subprocess

from collect_helpers import (Sim, assert_same_records, collect_scenario, daemon_conf, start,
                             stop, wait_collected)
from waiting import limit, wait_until

HOURS = 4


def test_collect_per_subscriber(tmp_path, daemon_bin, build_dir):
    tenants = [{"name": "direct1", "subscriptions": 2, "registered": True},
               {"name": "direct2", "subscriptions": 1, "registered": False},
               {"name": "reseller", "subscriptions": 2, "delegatedProvider": True}]
    sc = collect_scenario(HOURS, tenants=tenants, records_per_hour=6)
    with Sim(sc) as sim:
        w = sim.world()
        deleted = w["tenants"][0]["subscriptions"][0]
        delegated = w["tenants"][2]["subscriptions"]
        sim.set_faults([
            {"endpoint": "subscriptions", "action": "deleteSubscriptions",
             "subscriptions": [deleted], "after": 1},
            {"endpoint": "usage", "action": "notReady", "times": 2},
            {"endpoint": "usage", "action": "expireToken", "after": 2, "times": 1},
            {"endpoint": "usage", "action": "lateRecords", "count": 1},
        ])
        conf = daemon_conf(sim, tmp_path / "d", stack={"per_subscriber": "true",
                                                      "refresh_interval": "1s"})
        d = start(daemon_bin, tmp_path / "d", conf)
        try:
            records, want = wait_collected(d, build_dir, tmp_path / "d" / "usage.db", sim, sc,
                                           lookback=False)
            assert_same_records(records, want)
            assert any(r["sourceSubscriptionId"] == deleted for r in records)
            faults = sim.faults()
            assert faults[0]["fired"] >= 1  # the subscription left the list on the way
            log = d.log()
            for sub in delegated:
                assert log.count("user subscription %s is not a direct tenant" % sub) == 1, log
            usage = [r for r in sim.requests()["requests"] if r["endpoint"] == "usage"]
            assert all("subscriberId=" in r["query"] for r in usage)
            refused = [r for r in usage if r["status"] == 400 and
                       any(s in r["query"] for s in delegated)]
            assert len(refused) >= 2 * HOURS

            # the deleted subscription has left the list by now; a recollection still asks it
            listed = len([s for t in w["tenants"] for s in t["subscriptions"]])
            wait_until(lambda: "cache refreshed: %d subscriptions listed" % (listed - 1)
                       in d.log(), "a listing without the deleted subscription", 30,
                       alive=d.proc)
            first = sc["hours"]["from"]
            n = len(sim.requests()["requests"])
            r = subprocess.run([os.path.join(str(build_dir), "daemon", "azs-usagectl"),
                                "--store", str(tmp_path / "d" / "usage.db"), "recollect",
                                "--from", first, "--to", first], capture_output=True,
                               text=True, timeout=limit(30))
            assert r.returncode == 0, r.stderr
            wait_until(lambda: any(deleted in (q["query"] or "")
                                   for q in sim.requests()["requests"][n:]),
                       "a usage request for the deleted subscription", 30, alive=d.proc)
            stop(d)
        finally:
            d.stop()
