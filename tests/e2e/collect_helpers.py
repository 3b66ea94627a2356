"""What the collection scenarios (test_collect_*.py) share: a simulated stamp whose reported hours
are the last whole hours of the real clock (the daemon schedules hours by its own clock), the
daemon's configuration pointing at it, the daemon started on it, and the comparison of
`azs-usagectl --json records` with the simulator's expected records.

Scenarios are kept small (a few records an hour, pages of two) so that the whole suite stays
within minutes in the sanitizer build; the waits end at the event and give up after scaled
limits (tests/waiting.py).
"""
import calendar
import json
import os
import subprocess
import time
import urllib.error
import urllib.request
from collections import Counter

from azsim import CERT_CLIENT_ID, Sim, scenario, write_config
from conftest import Daemon, free_port
from waiting import limit, wait_until


def fmt(t):
    """RFC 3339 UTC of seconds since the epoch."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def parse(s):
    """Seconds since the epoch of an RFC 3339 UTC time."""
    return calendar.timegm(time.strptime(s, "%Y-%m-%dT%H:%M:%SZ"))


def recent_hours(count):
    """The scenario's hours: the count whole hours that ended last by the real clock."""
    now = int(time.time())
    return {"from": fmt(now - now % 3600 - count * 3600), "count": count}


def collect_scenario(hours, records_per_hour=5, page_size=2, **overrides):
    """A scenario of recent hours with multi-page hours, late and split records."""
    sc = scenario(hours=recent_hours(hours), recordsPerHour=records_per_hour, pageSize=page_size,
                  latePercent=20, splitPercent=20)
    sc.update(overrides)
    return sc


def daemon_conf(sim, directory, stack=None, certificate=False, **sections):
    """The daemon's configuration for the simulator: collection every second, settle 0, a
    look-back of two seconds (so every hour's second pass comes at once); Commerce is the
    simulator's, so records are forwarded as they are collected. The health server listens on a
    loopback port of its own (a daemon that cannot bind [health] listen does not start, and
    tests run side by side)."""
    os.makedirs(directory, exist_ok=True)
    conf = sim.daemon_config(str(directory), **sections)
    conf["stack"].update({"poll_interval": "1s", "settle": "0s", "lookback": "2s",
                          "refresh_interval": "15m"})
    if certificate:
        del conf["stack"]["client_secret_file"]
        conf["stack"].update({"client_id": CERT_CLIENT_ID,
                              "client_certificate_file": sim.client_bundle})
    conf["stack"].update(stack or {})
    conf["log"] = {"level": "info"}
    conf.setdefault("health", {}).setdefault("listen", "127.0.0.1:%d" % free_port())
    return conf


def health_url(conf, path):
    """The URL of path on the health server of the daemon configured by conf."""
    return "http://%s%s" % (conf["health"]["listen"], path)


def readyz(conf):
    """Ask the daemon's /readyz: (HTTP status, its JSON body), or (None, None) while nothing
    answers."""
    try:
        with urllib.request.urlopen(health_url(conf, "/readyz"), timeout=limit(10)) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())
    except (urllib.error.URLError, ConnectionError):
        return None, None


def wait_not_ready(daemon, conf, words, seconds=60):
    """Wait until /readyz answers 503 with a reason that holds every one of words; return it."""
    state = {}

    def found():
        status, body = readyz(conf)
        state["last"] = (status, body)
        if status != 503:
            return None
        assert body["ready"] is False, body
        return next((r for r in body["reasons"] if all(w in r for w in words)), None)

    try:
        return wait_until(found, "/readyz naming %s" % (words,), seconds, interval=0.2,
                          alive=daemon.proc)
    except AssertionError as e:
        raise AssertionError("%s; the last answer was %s" % (e, state.get("last"))) from None


def wait_reason_gone(daemon, conf, words, seconds=60):
    """Wait until /readyz answers and names no reason holding every one of words (other
    reasons may remain); return the answer's reasons."""
    state = {}

    def gone():
        status, body = readyz(conf)
        state["last"] = (status, body)
        if status is None:
            return None
        if any(all(w in r for w in words) for r in body["reasons"]):
            return None
        return body["reasons"] or ["(ready)"]

    try:
        return wait_until(gone, "/readyz without %s" % (words,), seconds, interval=0.2,
                          alive=daemon.proc)
    except AssertionError as e:
        raise AssertionError("%s; the last answer was %s" % (e, state.get("last"))) from None


def wait_ready(daemon, conf, seconds=90):
    """Wait until /readyz answers 200 {"ready": true, "reasons": []}."""
    state = {}

    def ready():
        status, body = readyz(conf)
        state["last"] = (status, body)
        if status == 200:
            assert body == {"ready": True, "reasons": []}, body
            return True
        return False

    try:
        wait_until(ready, "/readyz answering 200", seconds, interval=0.2, alive=daemon.proc)
    except AssertionError as e:
        raise AssertionError("%s; the last answer was %s" % (e, state.get("last"))) from None


def start(daemon_bin, directory, conf, env=None):
    """Write conf and start the daemon on it (stderr logfmt lines collected)."""
    path = write_config(os.path.join(str(directory), "azs-usaged.conf"), conf)
    return Daemon(daemon_bin, path, env).start()


def usagectl_records(build_dir, db):
    """Every record of the store (azs-usagectl --json records), or None when the store cannot
    be read yet."""
    r = subprocess.run([os.path.join(str(build_dir), "daemon", "azs-usagectl"), "--store",
                        str(db), "--json", "records"], capture_output=True, text=True,
                       timeout=limit(60))
    if r.returncode != 0:
        return None
    return json.loads(r.stdout)


def expected_records(sim):
    """The simulator's expected events: {key: event}."""
    events = sim.expected_events(limit=1000000)
    keys = Counter(e["usageEventId"] for e in events)
    assert all(n == 1 for n in keys.values()), "the simulator expects a key twice"
    return {e["usageEventId"]: e for e in events}


def lookback_lines(daemon, hours):
    """The reported hours whose look-back pass the daemon has logged as collected."""
    done = set()
    for line in daemon.lines:
        if "(look-back pass)" in line:
            for h in hours:
                if "reported hour %s collected" % h in line:
                    done.add(h)
    return done


def scenario_hours(sc):
    """The scenario's reported hours as RFC 3339 texts."""
    start = parse(sc["hours"]["from"])
    return [fmt(start + 3600 * i) for i in range(sc["hours"]["count"])]


def wait_collected(daemon, build_dir, db, sim, sc, seconds=120, lookback=True):
    """Wait until the store holds every expected record and (with lookback) every hour of the
    scenario has had its look-back pass; return the store's records."""
    want = expected_records(sim)
    hours = scenario_hours(sc)
    state = {}

    def done():
        if lookback and len(lookback_lines(daemon, hours)) < len(hours):
            return False
        recs = usagectl_records(build_dir, db)
        if recs is None:
            return False
        state["records"] = recs
        return set(want) <= {r["key"] for r in recs}

    wait_until(done, "every expected record in the store", seconds, interval=0.2,
               alive=daemon.proc)
    return state["records"], want


def assert_same_records(records, want):
    """Every expected record once, with its key, quantity text and fields; nothing else."""
    keys = Counter(r["key"] for r in records)
    dup = [k for k, n in keys.items() if n > 1]
    assert not dup, "records stored twice: %s" % dup[:5]
    extra = set(keys) - set(want)
    assert not extra, "records the simulator does not expect: %s" % sorted(extra)[:5]
    missing = set(want) - set(keys)
    assert not missing, "expected records missing: %s" % sorted(missing)[:5]
    for r in records:
        e = want[r["key"]]
        # the daemon forwards what it collects: a record is on its way or charged, never lost
        assert r["state"] in ("pending", "inflight", "forwarded"), r
        assert r["quantity"] == e["quantity"], (r["key"], r["quantity"], e["quantity"])
        assert r["reportedHour"] == e["reportedStartTime"], r
        assert r["sourceSubscriptionId"] == e["sourceSubscriptionId"], r
        assert r["meterId"] == e["meterId"], r
        assert r["usageStartTime"] == e["usageStartTime"], r
        assert r["usageEndTime"] == e["usageEndTime"], r
        assert r["resourceUri"] == e["resourceUri"], r


def stop(daemon):
    """SIGTERM; the daemon exits 0 (a sanitizer report would make it fail)."""
    daemon.kill(15)
    rc = daemon.wait(timeout=30)
    assert rc == 0, daemon.log()[-4000:]
    assert "ERROR: AddressSanitizer" not in daemon.log()
    assert "runtime error" not in daemon.log()


__all__ = ["Sim", "collect_scenario", "daemon_conf", "start", "usagectl_records", "health_url",
           "expected_records", "wait_collected", "assert_same_records", "stop",
           "scenario_hours", "recent_hours", "fmt", "parse", "lookback_lines", "readyz",
           "wait_not_ready", "wait_reason_gone", "wait_ready"]
