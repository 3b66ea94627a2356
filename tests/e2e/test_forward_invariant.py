"""The invariant of issue 11: whatever fails, every record is charged exactly once, on the right
subscription, with the exact quantity. The daemon collects many reported hours from azs-sim and
forwards them while it is killed with SIGKILL again and again, each kill timed from its progress
(records collected plus records forwarded, read from the store with `azs-usagectl status`), never
from a clock; Commerce faults (503 and 429 with Retry-After, resets, time-outs, answers lost
after the batch was stored, per-event Error) are switched on and off at every restart. In the
end the simulator's ledger matches the expected charges to the last digit, and the test prints
records, kills, duplicates answered, lost, double-charged and wrong subscription (all three 0).

The simulator's clock releases one reported hour per round, so that every round has work the
daemon cannot have finished before its kill: the number of kills is exactly KILLS on a fast
machine as on a slow one (a round's target lies inside the hour it released).

Size: $AZS_INVARIANT=full runs 200,000 records and 50 kills; the default is the CI size, 20,000
records and 20 kills (a few minutes in the sanitizer build).
"""
import json
import os
import random
import signal
import subprocess

from collect_helpers import Sim, collect_scenario, fmt, parse, start, stop
from forward_helpers import forward_conf
from waiting import limit, wait_until

FULL = os.environ.get("AZS_INVARIANT") == "full"
HOURS, PER_HOUR, KILLS = (50, 4000, 50) if FULL else (20, 1000, 20)
assert KILLS <= HOURS  # one hour released per kill


def hour_end(sc, k):
    """The simulator's clock that lets the first k reported hours be collected."""
    return fmt(parse(sc["hours"]["from"]) + k * 3600)


def status(build_dir, db):
    """The store's counts by state (azs-usagectl status), or None while it cannot be read."""
    r = subprocess.run([os.path.join(str(build_dir), "daemon", "azs-usagectl"), "--store",
                        str(db), "--json", "status"], capture_output=True, text=True,
                       timeout=limit(60))
    if r.returncode != 0:
        return None
    return json.loads(r.stdout)["records"]


def progress(build_dir, db):
    """Records collected plus records settled (forwarded or dead): grows as the daemon works."""
    s = status(build_dir, db)
    if s is None:
        return None
    return sum(s.values()) + s["forwarded"] + s["dead"]


def fault_plan(rng, keys):
    """A random mix of Commerce faults, or none."""
    choices = [
        {"endpoint": "commerce", "status": 503, "retryAfter": "1", "rate": 0.3},
        {"endpoint": "commerce", "status": 429, "retryAfter": "1", "rate": 0.3},
        {"endpoint": "commerce", "action": "reset", "rate": 0.2},
        {"endpoint": "commerce", "action": "reset", "afterProcessing": True, "rate": 0.2},
        {"endpoint": "commerce", "action": "timeout", "afterProcessing": True, "rate": 0.15},
        {"endpoint": "commerce", "action": "timeout", "rate": 0.1},
        {"endpoint": "commerce", "action": "events", "events": rng.sample(keys, 50),
         "code": "Error", "times": 3},
        {"endpoint": "commerce", "status": 500, "rate": 0.2},
    ]
    if rng.random() < 0.25:
        return []
    return rng.sample(choices, rng.randint(1, 3))


def test_exactly_once_through_kills_and_faults(tmp_path, daemon_bin, build_dir):
    rng = random.Random(int(os.environ.get("AZS_INVARIANT_SEED", "11")))
    sc = collect_scenario(HOURS, records_per_hour=PER_HOUR, page_size=1000)
    with Sim(sc, now=hour_end(sc, HOURS)) as sim:
        keys = [e["usageEventId"] for e in sim.expected_events(limit=10000000)]
        n = len(keys)
        sim.set_clock(now=hour_end(sc, 0))  # then released hour by hour
        conf = forward_conf(sim, tmp_path / "d", stack={"lookback": "1h"},
                           commerce={"batch_size": "200", "max_inflight": "4",
                                     "timeout": "2s"})
        conf["log"] = {"level": "notice"}
        db = tmp_path / "d" / "usage.db"
        total = 2 * n  # collected, then forwarded
        kills = 0
        d = None
        try:
            while kills < KILLS:
                # one more hour can be collected: its records, to be collected and forwarded,
                # lie ahead of whatever was done before, so the target below is reachable
                sim.set_clock(now=hour_end(sc, kills + 1))
                sim.set_faults(fault_plan(rng, keys))
                d = start(daemon_bin, tmp_path / "d", conf)
                before = progress(build_dir, db) or 0
                target = before + max(1, int(rng.uniform(0.05, 0.5) * 2 * PER_HOUR))
                wait_until(lambda: (progress(build_dir, db) or 0) >= target,
                           "the daemon's progress to %d of %d" % (target, total), 300,
                           interval=0.05, alive=d.proc)
                d.kill(signal.SIGKILL)
                d.wait(timeout=limit(10))
                d.stop()
                d = None
                kills += 1

            sim.set_faults([])
            sim.set_clock(now=hour_end(sc, HOURS))
            d = start(daemon_bin, tmp_path / "d", conf)
            wait_until(lambda: (status(build_dir, db) or {}).get("forwarded") == n,
                       "every record forwarded", 600, interval=0.5, alive=d.proc)
            s = sim.summary()
            c = s["comparison"]
            lost = len(c["missing"])
            double = len(c["extra"]) + max(0, s["accepted"] - n)
            wrong_sub = len(c["wrongSubscription"])
            print("\ninvariant: records %d, kills %d, duplicates answered %d, lost %d, "
                  "double-charged %d, wrong subscription %d"
                  % (n, kills, s["duplicates"], lost, double, wrong_sub))
            assert (lost, double, wrong_sub) == (0, 0, 0), c
            assert c["ok"], c
            assert s["accepted"] == n
            assert kills == KILLS
            stop(d)
            d = None
        finally:
            if d:
                d.stop()
