"""azs-usagectl's write verbs where a careless tool would hurt: several conflicts of one record,
dead actions on several keys, recollect far back, and CSV cells a spreadsheet would run.

The store is `store-torture seed` plus `store-torture seed-extra`: a second open conflict of a
record that has one, and a forwarded record whose meter id looks like a spreadsheet formula.
"""
import csv
import io
import json
import os
import subprocess

import pytest
from waiting import limit

BUILD = os.environ.get("AZS_BUILD_DIR", "")
CTL = os.path.join(BUILD, "daemon", "azs-usagectl")
TORTURE = os.path.join(BUILD, "tests", "store", "store-torture")

pytestmark = pytest.mark.skipif(not (os.access(CTL, os.X_OK) and os.access(TORTURE, os.X_OK)),
                                reason="azs-usagectl or store-torture not built")


def ctl(db, *args):
    return subprocess.run([CTL, "--store", str(db)] + [str(a) for a in args],
                          capture_output=True, text=True, timeout=limit(60))


def ok(db, *args):
    r = ctl(db, *args)
    assert r.returncode == 0, f"{args}: {r.returncode}\n{r.stdout}\n{r.stderr}"
    return r.stdout


def as_json(db, *args):
    return json.loads(ok(db, "--json", *args))


@pytest.fixture
def store(tmp_path):
    db = tmp_path / "usage.db"
    for verb in ("seed", "seed-extra"):
        r = subprocess.run([TORTURE, verb, str(db)], capture_output=True, text=True,
                           timeout=limit(60))
        assert r.returncode == 0, r.stdout + r.stderr
    extra = json.loads(r.stdout.strip().splitlines()[-1])
    return db, extra


def test_two_conflicts_of_one_record_are_resolved_one_by_one(store):
    db, extra = store
    key = extra["conflictKey"]
    mine = [c for c in as_json(db, "conflicts") if c["key"] == key]
    assert sorted(c["quantity"] for c in mine) == ["0.35", "0.5"]
    assert len({c["id"] for c in mine}) == 2
    table = ok(db, "conflicts").splitlines()
    assert table[0].split()[0] == "ID"
    assert sum(str(c["id"]) == line.split()[0] for c in mine for line in table[1:]) == 2

    # the key names two open conflicts: refused, nothing changes
    r = ctl(db, "conflicts", "reject", key[:12])
    assert r.returncode == 1 and "ID" in r.stderr, r.stderr
    assert len([c for c in as_json(db, "conflicts") if c["key"] == key]) == 2

    first = next(c for c in mine if c["quantity"] == "0.35")
    second = next(c for c in mine if c["quantity"] == "0.5")
    out = json.loads(ok(db, "--json", "conflicts", "reject", first["id"]))
    assert out["action"] == "conflict-reject" and out["quantity"] == "0.35"
    left = [c for c in as_json(db, "conflicts") if c["key"] == key]
    assert [c["id"] for c in left] == [second["id"]]
    # now the key is unique again, and the id works as well as the key
    ok(db, "conflicts", "accept", second["id"])
    assert [c for c in as_json(db, "conflicts") if c["key"] == key] == []
    pending = [r for r in as_json(db, "records", "--state", "pending")
               if r["quantity"] == "0.4"]
    assert len(pending) == 1, "the accepted 0.5 over the forwarded 0.1 queues an adjustment of 0.4"


def test_dead_retry_of_several_keys_is_all_or_nothing(store):
    db, _ = store
    dead = as_json(db, "dead")
    assert len(dead) >= 2
    conflict = next(c for c in as_json(db, "conflicts") if c["quantity"] == "1.5")
    ok(db, "conflicts", "accept", conflict["id"])  # smaller than charged: credit-required
    credit = next(d for d in as_json(db, "dead") if d["errorCode"] == "credit-required")
    usage = next(d for d in dead if d["errorCode"] == "InvalidQuantity")

    r = ctl(db, "dead", "retry", usage["key"], credit["key"])
    assert r.returncode == 1 and "nothing changed" in r.stderr, r.stderr
    still = {d["key"] for d in as_json(db, "dead")}
    assert usage["key"] in still and credit["key"] in still

    r = ctl(db, "dead", "discard", usage["key"], "0123456789abcdef", "--reason", "typo test")
    assert r.returncode == 1
    assert usage["key"] in {d["key"] for d in as_json(db, "dead")}

    ok(db, "dead", "discard", usage["key"], credit["key"], "--reason", "billed by hand")
    assert not {usage["key"], credit["key"]} & {d["key"] for d in as_json(db, "dead")}


def test_recollect_before_the_first_hour_needs_force(store):
    db, _ = store
    # the seed's first hour is 2026-11-01T10:00Z; without a configuration the lookback is 6 h
    r = ctl(db, "recollect", "--from", "2026-10-31T00:00:00Z", "--to", "2026-11-01T10:00:00Z")
    assert r.returncode == 1 and "--force" in r.stderr, r.stderr
    out = json.loads(ok(db, "--json", "recollect", "--from", "2026-11-01T04:00:00Z", "--to",
                        "2026-11-01T10:00:00Z"))
    assert out["hours"] == 7
    out = json.loads(ok(db, "--json", "recollect", "--from", "2026-10-31T00:00:00Z", "--to",
                        "2026-10-31T01:00:00Z", "--force"))
    assert out["hours"] == 2


def test_report_csv_neutralises_formulas(store):
    db, extra = store
    text = ok(db, "report", "--from", "2026-10-01", "--to", "2026-12-01", "--by", "meter",
              "--csv")
    rows = list(csv.reader(io.StringIO(text)))
    cells = [cell for row in rows[1:] for cell in row]
    assert "'" + extra["formulaMeter"] in cells, rows
    assert not any(cell[:1] in ("=", "+", "-", "@") for cell in cells), rows
    # JSON and the table keep the value as it is
    meters = [r["meterId"] for r in as_json(db, "report", "--from", "2026-10-01", "--to",
                                            "2026-12-01", "--by", "meter")]
    assert extra["formulaMeter"] in meters
