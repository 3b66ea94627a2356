"""The demo-like scenario, charged end to end: the daemon collects a few recent reported hours
from azs-sim (three tenants, two registered; late and split records) and forwards them to the
simulated Commerce over HTTPS in small batches, several in flight, while Commerce answers 503
with Retry-After, 429, resets, a time-out after the batch was stored (its re-send is answered
Duplicate), per-event Error, results left out and results reordered. In the end the ledger
matches the expected charges exactly (every record once, on the right subscription, with the
exact quantity), the store holds every record forwarded, re-sent batches kept their
x-ms-correlationid, and SIGTERM ends the daemon with status 0.
"""
from collections import defaultdict

from collect_helpers import Sim, collect_scenario, start, stop
from forward_helpers import by_state, forward_conf, wait_charged

FAULTS = [
    {"endpoint": "commerce", "status": 503, "retryAfter": "1", "after": 1, "times": 1},
    {"endpoint": "commerce", "status": 429, "retryAfter": "1", "after": 3, "times": 1},
    {"endpoint": "commerce", "action": "reset", "after": 4, "times": 1},
    {"endpoint": "commerce", "action": "timeout", "afterProcessing": True, "after": 5,
     "times": 1},
    {"endpoint": "commerce", "action": "omitResults", "count": 2, "after": 6, "times": 1},
    {"endpoint": "commerce", "action": "reorderResults", "after": 7, "times": 2},
    {"endpoint": "commerce", "status": 500, "after": 9, "times": 1},
]


def test_demo_like_scenario_is_charged_exactly(tmp_path, daemon_bin, build_dir):
    sc = collect_scenario(4, records_per_hour=30, page_size=10)
    with Sim(sc) as sim:
        keys = [e["usageEventId"] for e in sim.expected_events(limit=1000000)]
        rules = FAULTS + [{"endpoint": "commerce", "action": "events", "events": keys[3:5],
                           "code": "Error", "times": 2}]
        sim.set_faults(rules)
        conf = forward_conf(sim, tmp_path / "d")
        db = tmp_path / "d" / "usage.db"
        d = start(daemon_bin, tmp_path / "d", conf)
        try:
            s = wait_charged(sim, d, done_extra=lambda: by_state(build_dir, db) ==
                             {"forwarded": len(keys)})
            assert s["comparison"]["ok"], s["comparison"]
            assert s["accepted"] == len(keys)
            # the answer lost after processing made a re-send that Commerce knew
            assert s["duplicates"] >= 1
            fired = {r.get("action", r.get("status")): r["fired"] for r in sim.faults()}
            assert all(n >= 1 for n in fired.values()), sim.faults()
            # every attempt of a batch carried its batch id: the ledger rows of one
            # correlation id are one batch's records
            reqs = [r for r in sim.requests()["requests"] if r["endpoint"] == "commerce"]
            per_batch = defaultdict(int)
            for r in reqs:
                per_batch[r["correlationId"]] += 1
            assert max(per_batch.values()) >= 2  # some batch was sent again under its id
            assert "dead-lettered" not in d.log()
            stop(d)
        finally:
            d.stop()
