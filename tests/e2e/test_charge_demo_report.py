"""Issue 10's Done-when, on the demo scenario (conf/demo/scenario.json: adatum, contoso and
northwind registered, woodgrove not; split and late records; its transient usage and Commerce
faults), with a few recent reported hours: the daemon collects and forwards everything, the
ledger matches the simulator's expected charges exactly, every record of a registered tenant is
charged to that tenant's customer subscription (reason `registered`) and every other record to
the default subscription (reason `default`), and `azs-usagectl --json report --from … --to …
--by subscription` shows exactly the simulator's expected totals per charged subscription and
meter — record counts and totals compared with decimal.Decimal, against both the expected events
summed here and the simulator's own summary totals.
"""
import json
import os
from collections import defaultdict
from decimal import Decimal, getcontext

from collect_helpers import Sim, fmt, parse, recent_hours, scenario, start, stop
from forward_helpers import by_state, ctl_json, forward_conf, wait_charged

getcontext().prec = 200  # exact: no sum here has that many digits

HOURS = 3


def demo_scenario():
    """The demo scenario over the last few hours, with the test clients of azsim."""
    source = os.environ.get("AZS_SOURCE_DIR") or os.path.join(os.path.dirname(__file__), "..",
                                                              "..")
    with open(os.path.join(source, "conf", "demo", "scenario.json")) as f:
        sc = json.load(f)
    base = scenario()
    sc.update(hours=recent_hours(HOURS), clients=base["clients"], aadTenant=base["aadTenant"])
    return sc


def test_demo_scenario_charges_and_report(tmp_path, daemon_bin, build_dir):
    sc = demo_scenario()
    with Sim(sc) as sim:
        world = sim.world()
        default = world["defaultSubscription"].lower()
        customer = {t["tenantId"].lower(): (t.get("customerSubscription") or "").lower()
                    for t in world["tenants"]}
        assert sorted(bool(c) for c in customer.values()) == [False, True, True, True]
        events = sim.expected_events(limit=1000000)
        n = len(events)
        db = tmp_path / "d" / "usage.db"
        d = start(daemon_bin, tmp_path / "d", forward_conf(sim, tmp_path / "d"))
        try:
            s = wait_charged(sim, d, done_extra=lambda: by_state(build_dir, db) ==
                             {"forwarded": n})
            assert s["comparison"]["ok"] and s["accepted"] == n, s["comparison"]

            records = ctl_json(build_dir, db, "records")
            assert len(records) == n
            seen = set()
            for r in records:
                c = customer[r["tenantId"]]
                want = (c, "registered") if c else (default, "default")
                assert (r["chargedSubscription"], r["chargeReason"]) == want, r
                seen.add(r["tenantId"])
            assert seen == set(customer), seen  # every tenant had usage

            # exact totals: the expected events summed here, the summary's, the report's
            want = defaultdict(lambda: [0, Decimal(0)])
            for e in events:
                k = (e["subscriptionId"].lower(), e["meterId"].lower())
                want[k][0] += 1
                want[k][1] += Decimal(e["quantity"])
            want = {k: tuple(v) for k, v in want.items()}
            assert {k[0] for k in want} == {c for c in customer.values() if c} | {default}
            summary = {(t["subscriptionId"].lower(), t["meterId"].lower()):
                       (Decimal(t["expected"]), Decimal(t["actual"])) for t in s["totals"]}
            assert summary == {k: (v[1], v[1]) for k, v in want.items()}

            since = min(parse(e["usageStartTime"]) for e in events)
            until = parse(sc["hours"]["from"]) + HOURS * 3600
            rows = ctl_json(build_dir, db, "report", "--from", fmt(since), "--to", fmt(until),
                            "--by", "subscription")
            got = {}
            for row in rows:
                k = (row["chargedSubscription"], row["meterId"].lower())
                assert k not in got, rows
                assert isinstance(row["total"], str), row
                got[k] = (row["records"], Decimal(row["total"]))
            assert got == want
            # the window is of usage start times: an hour less leaves the earliest out
            fewer = ctl_json(build_dir, db, "report", "--from", fmt(since + 3600), "--to",
                             fmt(until), "--by", "subscription")
            assert sum(r["records"] for r in fewer) < n
            stop(d)
        finally:
            d.stop()
