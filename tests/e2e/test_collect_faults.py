"""Collection through every fault the stamp can throw, with the same result as without them:
hours not ready yet (202 with an ARM error, with a flat error, 200 with {}), records added to
hours already served (lateRecords, found by the look-back pass), continuation tokens that expire
(400 and 404 on a followed nextLink: the hour starts again from its first page), nextLinks that
write the stamp's authority otherwise (LOCALHOST:port for arm_endpoint https://localhost:port:
the same authority, followed with the token), 503s and 429s with Retry-After (no request to the
stamp before it passed, read off the simulator's request log), other 5xx, a 401 for a token that
should still be valid, RequestEndTimeIsInFuture, connection resets, a malformed page and a
nextLink loop. `azs-usagectl --json records` lists every expected record once, with its key and
quantity text, and nothing else.
"""
from collect_helpers import (Sim, assert_same_records, collect_scenario, daemon_conf, start,
                             stop, wait_collected)

HOURS = 24

FAULTS = [
    {"endpoint": "usage", "action": "notReady", "times": 2},
    {"endpoint": "usage", "action": "notReady", "body": "flat", "after": 10, "times": 1},
    {"endpoint": "usage", "action": "notReady", "status": 200, "body": "empty", "after": 20,
     "times": 1},
    {"endpoint": "usage", "action": "lateRecords", "count": 1},
    {"endpoint": "usage", "action": "expireToken", "after": 3, "times": 1},
    {"endpoint": "usage", "action": "expireToken", "status": 404, "after": 30, "times": 1},
    {"endpoint": "usage", "action": "nextLinkAuthority"},
    {"endpoint": "subscriptions", "action": "nextLinkAuthority"},
    {"endpoint": "usage", "status": 503, "retryAfter": "1", "after": 5, "times": 1},
    {"endpoint": "usage", "status": 429, "retryAfter": "1", "after": 25, "times": 2},
    {"endpoint": "usage", "status": 503, "after": 40, "times": 3},
    {"endpoint": "usage", "status": 500, "after": 50, "times": 1},
    {"endpoint": "usage", "status": 504, "after": 60, "times": 1},
    {"endpoint": "usage", "status": 401, "after": 70, "times": 1},
    {"endpoint": "usage", "status": 400, "code": "RequestEndTimeIsInFuture", "after": 80,
     "times": 1},
    {"endpoint": "usage", "action": "reset", "after": 90, "times": 2},
    {"endpoint": "usage", "action": "malformed", "after": 100, "times": 1},
    {"endpoint": "usage", "action": "nextLinkLoop", "after": 110, "times": 1},
]


def test_collect_through_every_fault(tmp_path, daemon_bin, build_dir):
    sc = collect_scenario(HOURS, faults=FAULTS, subscriptionPageSize=2)
    with Sim(sc) as sim:
        conf = daemon_conf(sim, tmp_path / "d",
                           stack={"arm_endpoint": "https://localhost:%d" % sim.port})
        d = start(daemon_bin, tmp_path / "d", conf)
        try:
            records, want = wait_collected(d, build_dir, tmp_path / "d" / "usage.db", sim, sc,
                                           seconds=180)
            assert_same_records(records, want)

            fired = {(f["action"], f.get("status"), f.get("after")): f["fired"]
                     for f in sim.faults()}
            assert all(n > 0 for n in fired.values()), fired
            reqs = sim.requests()["requests"]
            stamp = [r for r in reqs if r["endpoint"] in ("usage", "subscriptions")]
            # the token went to the stamp's authority as the links wrote it, never elsewhere
            assert all(r["bearer"] for r in stamp)
            assert any(r["host"].startswith("LOCALHOST:") for r in stamp)
            # Retry-After: no request to the stamp before it passed, by the simulator's clock
            throttles = [r for r in stamp if r["status"] in (429, 503) and
                         r["action"] == "status"]
            assert len(throttles) >= 3
            for t in throttles:
                later = [r for r in stamp if r["atMs"] > t["atMs"]]
                if t["status"] == 429 or t is throttles[0]:
                    assert later and later[0]["atMs"] - t["atMs"] >= 1000, (t, later[:1])
            # one line per state change: the 503s in a row were logged once
            assert d.log().count("(503 ServiceUnavailable)") <= 2, d.log()
            assert "per_subscriber = true" in d.log()  # the 504 says what to do
            stop(d)
        finally:
            d.stop()
