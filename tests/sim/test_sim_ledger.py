"""The Commerce endpoint of azs-sim and its ledger: answers shaped like
../shared/testdata/commerce-batch-response.json, dedupe by usageEventId (Duplicate), gzip
bodies, batch limits (413), event validation, and the summary's comparison with the expected
charges (charged once → ok; a missing event, a wrong subscription, a wrong quantity and an
extra event are each flagged), with totals checked exactly against Python's decimal."""
import copy
import decimal
import json
import os
import sqlite3

import pytest

from conftest import load_testdata
from azsim import Sim, scenario, shape, AZURE_CLIENT_ID, AZURE_CLIENT_SECRET

NOW = "2026-11-03T00:00:00Z"


@pytest.fixture()
def sim():
    with Sim(scenario(hours={"from": "2026-11-01T00:00:00Z", "count": 6}), now=NOW) as s:
        s.world()
        yield s


def post_all(sim, events, size=500):
    for i in range(0, len(events), size):
        r = sim.commerce_post(events[i:i + size])
        assert r.status == 200, r.body


def test_batch_answer_matches_testdata(sim):
    ev = sim.expected_events(limit=3)
    bad = dict(ev[2], quantity="-1")
    r = sim.commerce_post([ev[0], ev[1], ev[0], bad])
    assert r.status == 200
    doc = r.json()
    ref = load_testdata("commerce-batch-response.json")
    assert set(doc) == set(ref) and doc["count"] == 4
    by_status = {x["status"]: x for x in doc["result"]}
    ref_by_status = {x["status"]: x for x in ref["result"]}
    for status in ("Accepted", "Duplicate", "InvalidQuantity"):
        assert shape(by_status[status]) == shape(ref_by_status[status]), status
    assert by_status["InvalidQuantity"]["error"]["message"] == \
        ref_by_status["InvalidQuantity"]["error"]["message"]


def test_dedupe_answers_duplicate(sim):
    ev = sim.expected_events(limit=10)
    r1 = sim.commerce_post(ev).json()
    r2 = sim.commerce_post(ev).json()
    assert [x["status"] for x in r1["result"]] == ["Accepted"] * 10
    assert [x["status"] for x in r2["result"]] == ["Duplicate"] * 10
    assert r2["result"][0]["messageTime"] == "0001-01-01T00:00:00"
    s = sim.summary()
    assert s["accepted"] == 10 and s["duplicates"] == 10


def post_compact(sim, events):
    """POST events written as the simulator writes them (and the daemon does): compact JSON,
    UTF-8 without escapes, so the simulator can take each as its expected record on arrival."""
    w = sim.world()
    tok = sim.token(w["audiences"]["commerce"], AZURE_CLIENT_ID, AZURE_CLIENT_SECRET)
    body = json.dumps({"request": events}, separators=(",", ":"), ensure_ascii=False)
    r = sim.post(w["commercePath"], body.encode(), token=tok,
                 headers={"Content-Type": "application/json"})
    assert r.status == 200, r.body
    return [x["status"] for x in r.json()["result"]]


# -- dedupe: an id is accepted once, whatever else the event says ------------------------------
# A fresh ledger dedupes the expected records of their own reported hour without an index; the
# first other event makes the unique index. Each case below crosses that line.

def test_dedupe_of_events_that_are_no_expected_record(sim):
    ev = sim.expected_events(limit=2)
    odd = dict(ev[0], usageEventId="not-a-record-key")
    assert post_compact(sim, [odd]) == ["Accepted"]
    assert post_compact(sim, [odd, ev[1], ev[1]]) == ["Duplicate", "Accepted", "Duplicate"]
    assert post_compact(sim, [ev[1], odd]) == ["Duplicate", "Duplicate"]
    s = sim.summary()
    assert s["accepted"] == 2 and s["duplicates"] == 4


@pytest.mark.parametrize("record_first", [True, False])
def test_dedupe_across_reported_hours(sim, record_first):
    """The same usageEventId under another reportedStartTime is a duplicate, in either order
    (a record of one hour is no record of the other)."""
    ev = sim.expected_events(limit=1)[0]
    moved = dict(ev, reportedStartTime="2026-11-01T05:00:00Z")
    assert moved["reportedStartTime"] != ev["reportedStartTime"]
    first, second = (ev, moved) if record_first else (moved, ev)
    assert post_compact(sim, [first]) == ["Accepted"]
    assert post_compact(sim, [second, first]) == ["Duplicate", "Duplicate"]
    assert sim.summary()["duplicates"] == 2


def test_dedupe_after_reset_and_restart(tmp_path):
    sc = scenario(hours={"from": "2026-11-01T00:00:00Z", "count": 6})
    with Sim(sc, now=NOW, workdir=str(tmp_path)) as s:
        ev = s.expected_events(limit=20)
        assert post_compact(s, ev[:10]) == ["Accepted"] * 10
        s.reset()
        assert post_compact(s, ev[:10]) == ["Accepted"] * 10
        assert post_compact(s, ev[:10]) == ["Duplicate"] * 10
    os.remove(str(tmp_path / "port"))  # not the first run's port
    with Sim(sc, now=NOW, workdir=str(tmp_path)) as s:  # the same ledger
        assert post_compact(s, ev) == ["Duplicate"] * 10 + ["Accepted"] * 10
        assert post_compact(s, ev[10:]) == ["Duplicate"] * 10
        summary = s.summary()
        assert summary["accepted"] == 20
        assert summary["comparison"]["missingCount"] == summary["expected"]["events"] - 20


def test_records_taken_on_arrival_still_compared_when_anything_differs():
    """Events byte for byte as expected are taken as their records when they arrive (the hour
    needs no comparison); one event otherwise right but written differently, or wrong, makes
    the summary compare its hour row by row, and a registration change every hour."""
    sc = scenario(hours={"from": "2026-11-01T00:00:00Z", "count": 3}, recordsPerHour=50)
    with Sim(sc, now=NOW) as s:
        ev = s.expected_events()
        hours = sorted({e["reportedStartTime"] for e in ev})
        assert len(hours) == 3 and len(ev) == 150
        h0 = [e for e in ev if e["reportedStartTime"] == hours[0]]
        h1 = [e for e in ev if e["reportedStartTime"] == hours[1]]
        h2 = [e for e in ev if e["reportedStartTime"] == hours[2]]
        post_compact(s, h0)
        first = s.summary()
        assert first["sim"]["hoursCompared"] == 2  # the two hours without rows
        assert first["comparison"]["missingCount"] == 100
        # hour 1: one quantity written otherwise (same value), hour 2: one wrong quantity
        h1[7] = dict(h1[7], quantity=h1[7]["quantity"] + ("0" if "." in h1[7]["quantity"]
                                                            else ".0"))
        h2[3] = dict(h2[3], quantity=str(decimal.Decimal(h2[3]["quantity"]) + 1))
        post_compact(s, h1 + h2)
        second = s.summary()
        c = second["comparison"]
        assert second["sim"]["hoursCompared"] == 2
        assert c["quantityLiteralCount"] == 1 and c["wrongQuantityCount"] == 1
        assert c["wrongQuantity"][0]["usageEventId"] == h2[3]["usageEventId"]
        assert not c["ok"] and c["missingCount"] == 0
        assert s.summary()["sim"]["hoursCompared"] == 2  # both still hold a finding
        w = s.world()
        t = next(t for t in w["tenants"] if t.get("customerSubscription"))
        reg = w["registration"]["id"] + "/customerSubscriptions/%s?api-version=2017-06-01" % \
            t["customerSubscription"]
        r = s.request("PUT", reg, body={"properties": {"tenantId": t["tenantId"]}},
                      token=s.token(w["audiences"]["arm"]))
        assert r.status == 201
        assert s.summary()["sim"]["hoursCompared"] == 3


COLUMNS = {"usageEventId": "usage_event_id", "subscriptionId": "subscription_id",
           "chargeReason": "charge_reason", "tenantId": "tenant_id",
           "sourceSubscriptionId": "source_subscription_id", "registration": "registration",
           "meterId": "meter_id", "quantity": "quantity", "usageStartTime": "usage_start",
           "usageEndTime": "usage_end", "reportedStartTime": "reported_start",
           "resourceUri": "resource_uri", "location": "location", "tags": "tags",
           "additionalInfo": "additional_info"}


def test_ledger_is_sqlite_in_state_dir_and_keeps_every_member(sim):
    import json
    ev = sim.expected_events(limit=7)
    assert {e["tags"] is None for e in ev} == {True, False}  # both kinds are in there
    sim.commerce_post(ev)
    db = sqlite3.connect(os.path.join(sim.state_dir, "ledger.db"))
    try:
        assert db.execute("SELECT count(*) FROM events").fetchone()[0] == 7
        for e in ev:
            row = db.execute("SELECT %s FROM events WHERE usage_event_id = ?" %
                             ", ".join(COLUMNS.values()), (e["usageEventId"],)).fetchone()
            got = dict(zip(COLUMNS, row))
            for k in ("tags", "additionalInfo"):  # the JSON text as received
                got[k] = json.loads(got[k])
            assert got == e
    finally:
        db.close()


def test_expected_events_name_the_registration_in_lower_case(sim):
    reg = sim.world()["registration"]["id"]
    assert reg != reg.lower()
    assert {e["registration"] for e in sim.expected_events()} == {reg.lower()}


def test_ledger_of_an_older_simulator_gets_the_new_columns(tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    db = sqlite3.connect(str(state / "ledger.db"))
    db.execute("CREATE TABLE events (usage_event_id TEXT NOT NULL UNIQUE, subscription_id TEXT "
               "NOT NULL, charge_reason TEXT NOT NULL, tenant_id TEXT, source_subscription_id "
               "TEXT NOT NULL, meter_id TEXT NOT NULL, quantity TEXT NOT NULL, usage_start TEXT "
               "NOT NULL, usage_end TEXT NOT NULL, reported_start TEXT NOT NULL, resource_uri "
               "TEXT NOT NULL, correlation_id TEXT, accepted_at INTEGER NOT NULL)")
    db.commit()
    db.close()
    with Sim(scenario(hours={"from": "2026-11-01T00:00:00Z", "count": 6}), now=NOW,
             workdir=str(tmp_path)) as s:
        ev = s.expected_events(limit=3)
        r = s.commerce_post(ev)
        assert [x["status"] for x in r.json()["result"]] == ["Accepted"] * 3
        db = sqlite3.connect(str(state / "ledger.db"))
        try:
            assert db.execute("SELECT registration, location FROM events").fetchall() == \
                [(e["registration"], e["location"]) for e in ev]
        finally:
            db.close()


def test_gzip_body_accepted(sim):
    ev = sim.expected_events(limit=25)
    r = sim.commerce_post(ev, gzip_body=True)
    assert r.status == 200
    assert [x["status"] for x in r.json()["result"]] == ["Accepted"] * 25
    r = sim.commerce_post(ev, headers={"Content-Encoding": "gzip"})  # claims gzip, is not
    assert r.status == 400


def test_limits_answer_413():
    sc = scenario(commerce={"path": "/batch", "maxEvents": 5, "maxBytes": 4000})
    with Sim(sc, now=NOW) as s:
        ev = s.expected_events(limit=6)
        r = s.commerce_post(ev)
        assert r.status == 413 and r.json()["error"]["code"] == "RequestEntityTooLarge"
        assert s.commerce_post(ev[:5] + [], gzip_body=True).status == 200  # small when gzipped
        r = s.commerce_post(ev[:5])  # more than 4000 bytes uncompressed
        assert r.status == 413
        assert s.summary()["accepted"] == 5


def test_unknown_content_encoding_is_415(sim):
    r = sim.commerce_post(sim.expected_events(limit=1), headers={"Content-Encoding": "br"})
    assert r.status == 415
    assert r.json()["error"]["code"] == "UnsupportedMediaType"
    assert sim.summary()["accepted"] == 0


def test_inflated_body_too_large_is_413():
    sc = scenario(commerce={"path": "/batch", "maxEvents": 5, "maxBytes": 4000})
    with Sim(sc, now=NOW) as s:
        e = dict(s.expected_events(limit=1)[0], tags={"pad": "a" * 70000})  # > 16 × 4000
        r = s.commerce_post([e], gzip_body=True)  # a few hundred bytes on the wire
        assert r.status == 413
        assert r.json()["error"] == {"code": "RequestEntityTooLarge",
                                     "message": "The decompressed request body is too large."}
        assert s.summary()["accepted"] == 0


def test_body_beyond_the_http_limit_gets_libevents_own_413():
    """Above 4 × maxBytes + 1 MiB libevent answers before the simulator sees the request: 413
    with its own HTML page and Connection: close (README.md); a forwarder must not expect JSON."""
    import socket
    import ssl
    sc = scenario(commerce={"path": "/batch", "maxEvents": 5, "maxBytes": 4000})
    with Sim(sc, now=NOW) as s:
        ctx = ssl.create_default_context(cafile=s.ca_file)
        with socket.create_connection(("127.0.0.1", s.port), timeout=10) as raw, \
                ctx.wrap_socket(raw, server_hostname="127.0.0.1") as t:
            t.sendall(b"POST /batch HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                      b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n"
                      % (4 * 4000 + (1 << 20) + 1))
            data = b""
            while True:
                d = t.recv(65536)
                if not d:
                    break
                data += d
        head, _, body = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 413 ")
        assert b"Connection: close" in head and b"413" in body
        assert s.requests()["counts"]["commerce"] == {}  # never reached the simulator


@pytest.mark.parametrize("change,status", [
    ({"quantity": "-1"}, "InvalidQuantity"),
    ({"quantity": "abc"}, "InvalidQuantity"),
    ({"quantity": 2.5}, "InvalidQuantity"),
    ({"subscriptionId": "ABCDEF00-0000-4000-8000-000000000000"}, "BadArgument"),
    ({"subscriptionId": "abcdef00-0000-4000-8000-000000000000"}, "ResourceNotFound"),
    ({"chargeReason": "whatever"}, "BadArgument"),
    ({"tenantId": None}, "Accepted"),
    ({"tenantId": "not-a-guid"}, "BadArgument"),
    ({"registration": "/subscriptions/x/other"}, "BadArgument"),
    ({"usageStartTime": "2026-11-01T09:00:00+00:00"}, "BadArgument"),
    ({"usageEndTime": "2026-10-01T09:00:00Z"}, "BadArgument"),
    ({"tags": "x"}, "BadArgument"),
    ({"location": ""}, "BadArgument"),
    ({"usageEventId": None}, "BadArgument"),
])
def test_event_validation(sim, change, status):
    e = copy.deepcopy(sim.expected_events(limit=1)[0])
    e.update(change)
    r = sim.commerce_post([e])
    assert r.status == 200
    assert r.json()["result"][0]["status"] == status


def test_event_missing_member_is_bad_argument(sim):
    e = sim.expected_events(limit=1)[0]
    for k in list(e):
        if k == "usageEventId":
            continue
        f = dict(e)
        del f[k]
        assert sim.commerce_post([f]).json()["result"][0]["status"] != "Accepted", k


def test_not_json_is_400(sim):
    w = sim.world()
    tok = sim.token(w["audiences"]["commerce"])
    r = sim.post(w["commercePath"], b"{not json", token=tok)
    assert r.status == 400
    r = sim.post(w["commercePath"], {"request": []}, token=tok)
    assert r.status == 400


def test_summary_everything_charged_once(sim):
    ev = sim.expected_events()
    assert len(ev) == 6 * 20
    post_all(sim, ev, size=37)
    s = sim.summary()
    assert s["comparison"]["ok"] is True
    assert s["accepted"] == 120 and s["expected"]["events"] == 120
    # totals are exact: compare with Python's decimal
    want = {}
    for e in ev:
        k = (e["subscriptionId"], e["meterId"].lower())
        want[k] = want.get(k, decimal.Decimal(0)) + decimal.Decimal(e["quantity"])
    got = {(t["subscriptionId"], t["meterId"]): decimal.Decimal(t["actual"]) for t in s["totals"]}
    assert got == want
    assert all(t["expected"] == t["actual"] for t in s["totals"])
    subs = {t["subscriptionId"] for t in s["totals"]}
    w = sim.world()
    registered = {t["customerSubscription"] for t in w["tenants"] if t.get("customerSubscription")}
    assert subs == registered | {w["defaultSubscription"]}


def test_summary_flags_missing_wrong_subscription_quantity_and_extra(sim):
    ev = sim.expected_events()
    missing = ev[0]
    wrong_sub = dict(ev[1], subscriptionId=sim.world()["defaultSubscription"]
                     if ev[1]["chargeReason"] == "registered"
                     else sim.world()["tenants"][0]["customerSubscription"])
    wrong_qty = dict(ev[2], quantity="1" + ev[2]["quantity"])
    extra = dict(ev[3], usageEventId="f" * 64)
    post_all(sim, [wrong_sub, wrong_qty, extra] + ev[3:])
    c = sim.summary()["comparison"]
    assert c["ok"] is False
    assert c["missing"] == [missing["usageEventId"]] and c["missingCount"] == 1
    assert c["wrongSubscription"] == [{"usageEventId": ev[1]["usageEventId"],
                                       "expected": ev[1]["subscriptionId"],
                                       "actual": wrong_sub["subscriptionId"]}]
    assert [x["usageEventId"] for x in c["wrongQuantity"]] == [ev[2]["usageEventId"]]
    assert decimal.Decimal(c["wrongQuantity"][0]["expected"]) == decimal.Decimal(ev[2]["quantity"])
    assert c["extra"] == ["f" * 64]
    assert c["totalMismatches"] > 0


def shifted(t, hours):
    """An RFC 3339 time moved by some hours."""
    import calendar
    import time
    u = calendar.timegm(time.strptime(t, "%Y-%m-%dT%H:%M:%SZ")) + 3600 * hours
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(u))


def test_summary_checks_every_member(sim):
    ev = sim.expected_events()
    w = sim.world()
    reg = w["registration"]["id"].lower()
    pick = iter(range(len(ev)))

    def take(cond=lambda e: True):
        return next(i for i in pick if cond(ev[i]))
    tenants = [t["tenantId"] for t in w["tenants"]]
    subs = [x for t in w["tenants"] for x in t["subscriptions"]]
    wrong = {}   # index -> (changes, kind, fields)
    i = take(lambda e: e["chargeReason"] == "registered")
    wrong[i] = ({"chargeReason": "default"}, "wrongReason", [])
    i = take(lambda e: e["tenantId"] is not None)
    wrong[i] = ({"tenantId": next(t for t in tenants if t != ev[i]["tenantId"])},
                "wrongTenant", [])
    i = take()
    wrong[i] = ({"sourceSubscriptionId": next(x for x in subs
                                              if x != ev[i]["sourceSubscriptionId"])},
                "wrongSource", [])
    i = take()
    wrong[i] = ({"registration": reg.upper()}, "wrongField", ["registration"])
    i = take(lambda e: e["meterId"] != e["meterId"].lower())
    wrong[i] = ({"meterId": ev[i]["meterId"].lower()}, "wrongField", ["meterId"])
    i = take()
    wrong[i] = ({"usageStartTime": shifted(ev[i]["usageStartTime"], -1),
                 "usageEndTime": shifted(ev[i]["usageEndTime"], -1)}, "wrongField",
                ["usageStartTime", "usageEndTime"])
    i = take()
    wrong[i] = ({"resourceUri": ev[i]["resourceUri"].upper()}, "wrongField", ["resourceUri"])
    i = take()
    wrong[i] = ({"location": "elsewhere"}, "wrongField", ["location"])
    i = take()
    wrong[i] = ({"tags": {"costcenter": "0815"}}, "wrongField", ["tags"])
    i = take(lambda e: e["additionalInfo"] is not None)
    wrong[i] = ({"additionalInfo": None}, "wrongField", ["additionalInfo"])
    sent = [dict(e, **wrong[i][0]) if i in wrong else e for i, e in enumerate(ev)]
    post_all(sim, sent)
    c = sim.summary()["comparison"]
    assert c["ok"] is False
    assert c["missingCount"] == c["extraCount"] == c["wrongSubscriptionCount"] == 0
    assert c["wrongQuantityCount"] == 0
    for kind in ("wrongReason", "wrongTenant", "wrongSource"):
        (i,) = [i for i in wrong if wrong[i][1] == kind]
        member = next(iter(wrong[i][0]))
        assert c[kind + "Count"] == 1
        assert c[kind] == [{"usageEventId": ev[i]["usageEventId"], "expected": ev[i][member],
                            "actual": sent[i][member]}]
    fielded = {ev[i]["usageEventId"]: f for i, (_, k, f) in wrong.items() if k == "wrongField"}
    assert c["wrongFieldCount"] == len(fielded)
    assert {x["usageEventId"]: x["fields"] for x in c["wrongField"]} == fielded
    counts = {f: sum(f in v for v in fielded.values()) for f in c["wrongFields"]}
    assert c["wrongFields"] == counts


def test_summary_compares_json_members_as_json(sim):
    ev = sim.expected_events()
    info = next(e for e in ev if e["additionalInfo"] and len(e["additionalInfo"]) > 1)
    tagged = next(e for e in ev if e["tags"] and '"' in e["tags"].get("owner", ""))
    assert '"' in tagged["tags"]["owner"]
    body = json.dumps({"request": [dict(info, additionalInfo=dict(reversed(list(
        info["additionalInfo"].items()))))]})
    w = sim.world()
    tok = sim.token(w["audiences"]["commerce"])
    assert sim.post(w["commercePath"], body, token=tok).status == 200
    # the same tags with an escape the expected text does not use
    text = json.dumps({"request": [tagged]}, indent=2).replace("&", "\\u0026")
    assert "\\u0026" in text
    assert sim.post(w["commercePath"], text, token=tok).status == 200
    post_all(sim, [e for e in ev if e not in (info, tagged)])
    c = sim.summary()["comparison"]
    assert c["ok"] is True and c["wrongFieldCount"] == 0, c


def test_summary_reports_other_quantity_literals_without_failing(sim):
    ev = sim.expected_events()
    i = next(i for i, e in enumerate(ev) if "." in e["quantity"])
    sent = list(ev)
    sent[i] = dict(ev[i], quantity=ev[i]["quantity"] + "00")
    post_all(sim, sent)
    c = sim.summary()["comparison"]
    assert c["ok"] is True and c["wrongQuantityCount"] == 0
    assert c["quantityLiteralCount"] == 1
    assert c["quantityLiteral"] == [{"usageEventId": ev[i]["usageEventId"],
                                     "expected": ev[i]["quantity"],
                                     "actual": sent[i]["quantity"]}]


def test_summary_row_under_another_reported_hour_is_extra_and_missing(sim):
    ev = sim.expected_events()
    sent = list(ev)
    sent[5] = dict(ev[5], reportedStartTime=shifted(ev[5]["reportedStartTime"], 1))
    post_all(sim, sent)
    c = sim.summary()["comparison"]
    assert c["ok"] is False
    assert c["extra"] == c["missing"] == [ev[5]["usageEventId"]]


def test_summary_sees_rows_added_after_a_clean_summary(sim):
    ev = sim.expected_events()
    hour = [e for e in ev if e["reportedStartTime"] == "2026-11-01T02:00:00Z"]
    post_all(sim, hour[:7])
    s = sim.summary(since="2026-11-01T02:00:00Z", until="2026-11-01T03:00:00Z")
    assert s["comparison"]["missingCount"] == 13 and s["accepted"] == 7
    post_all(sim, ev)
    first = sim.summary()
    assert first["comparison"]["ok"] is True
    again = sim.summary()
    assert again["comparison"] == first["comparison"] and again["totals"] == first["totals"]
    # one row more in an hour found clean before: compared again
    post_all(sim, [dict(hour[0], usageEventId="e" * 64)])
    c = sim.summary()["comparison"]
    assert c["ok"] is False and c["extra"] == ["e" * 64]


def test_summary_follows_registration_changes(sim):
    ev = sim.expected_events()
    post_all(sim, ev)
    assert sim.summary()["comparison"]["ok"]
    # unregister a tenant: what was charged to its customer subscription is now "wrong"
    w = sim.world()
    t = w["tenants"][0]
    tok = sim.token(w["audiences"]["arm"])
    r = sim.request("DELETE", w["registration"]["id"] + "/customerSubscriptions/%s"
                    "?api-version=2017-06-01" % t["customerSubscription"], token=tok)
    assert r.status == 204
    c = sim.summary()["comparison"]
    n = sum(1 for e in ev if e["subscriptionId"] == t["customerSubscription"])
    assert n > 0 and c["wrongSubscriptionCount"] == n


def test_summary_window_and_cpu_report(sim):
    post_all(sim, sim.expected_events(since="2026-11-01T02:00:00Z", until="2026-11-01T03:00:00Z"))
    s = sim.summary(since="2026-11-01T02:00:00Z", until="2026-11-01T03:00:00Z")
    assert s["comparison"]["ok"] and s["accepted"] == 20
    assert sim.summary()["comparison"]["missingCount"] == 100
    assert s["sim"]["eventsReceived"] == 20
    assert s["sim"]["cpuUs"] > 0 and s["sim"]["commerceCpuUsPerEvent"] > 0


def test_requests_log_correlation_ids(sim):
    r = sim.commerce_post(sim.expected_events(limit=2),
                          headers={"x-ms-correlationid": "batch-1", "x-ms-requestid": "req-1"})
    assert r.status == 200
    log = sim.requests()
    assert log["counts"]["commerce"]["200"] == 1
    last = [x for x in log["requests"] if x["endpoint"] == "commerce"][-1]
    assert last["correlationId"] == "batch-1" and last["requestId"] == "req-1"
    assert last["events"] == 2


def test_commerce_requires_commerce_token(sim):
    tok = sim.token(sim.audiences()["stack"])
    r = sim.commerce_post(sim.expected_events(limit=1), token=tok)
    assert r.status == 401


def test_reset_empties_ledger(sim):
    sim.commerce_post(sim.expected_events(limit=3))
    sim.reset()
    s = sim.summary()
    assert s["accepted"] == 0 and s["duplicates"] == 0


def test_batch_parser_handles_escapes_nesting_and_whitespace(sim):
    import json
    e = dict(sim.expected_events(limit=1)[0])
    e["tags"] = {"a": [1, 2.5e3, {"b": None}], "q\"uote": "x\\y", "u": "\u00e9\u4e2d"}
    e["additionalInfo"] = {}
    e["extra"] = [True, False, None, -1]
    body = json.dumps({"first": {"x": [1]}, "request": [e, 42, "s"]}, indent=3,
                      ensure_ascii=True).replace('"resourceUri": "/', '"resourceUri": "\\/')
    w = sim.world()
    tok = sim.token(w["audiences"]["commerce"])
    r = sim.post(w["commercePath"], body, token=tok,
                 headers={"Content-Type": "application/json"})
    assert r.status == 200, r.body
    res = r.json()["result"]
    assert [x["status"] for x in res] == ["Accepted", "BadArgument", "BadArgument"]
    assert res[1]["usageEventId"] is None


@pytest.mark.parametrize("body", [b'{"request":[{"a":1}]} x', b'{"request":[{"a":"\x01"}]}',
                                  b'{"request":[{"a":tru}]}', b'{"request":[{"a":"\\q"}]}',
                                  b'{"request":{}}', b'[{"request":[]}]', b'{"request":[{"a":1}'])
def test_batch_parser_rejects_malformed(sim, body):
    w = sim.world()
    r = sim.post(w["commercePath"], body, token=sim.token(w["audiences"]["commerce"]))
    assert r.status == 400


def per_record_excludes_control(doc):
    """cpuUsPerRecord is the process CPU without the control API (summaries included) per
    record and event, checked from one answer's own figures (1 us of rounding in each)."""
    m = doc["sim"]
    n = m["eventsReceived"] + m["recordsServed"]
    assert n > 0 and m["controlCpuUs"] >= 0 and m["summaryCpuUs"] > 0
    work = max(m["cpuUs"] - m["controlCpuUs"], 0)
    assert abs(m["cpuUsPerRecord"] * n - work) <= 1 + 0.0005 * n, m


def test_summary_cost_is_its_own_and_repeats_cheaply():
    """Speed is measured by bench_summary.py; this checks what makes it cheap: rows that were
    their records when they arrived and an unchanged ledger are not compared (again), a
    registration change compares every hour again, and the summary's CPU time is reported
    apart from the figure per record and event."""
    sc = scenario(hours={"from": "2026-11-01T00:00:00Z", "count": 6}, recordsPerHour=2000,
                  tenants=10, registeredTenants=8, resourcesPerSubscription=100)
    with Sim(sc, now=NOW) as s:
        w = s.world()
        ev = s.expected_events()
        for i in range(0, len(ev), 1000):
            assert post_compact(s, ev[i:i + 1000]) == ["Accepted"] * len(ev[i:i + 1000])
        t = w["tenants"][0]
        reg = w["registration"]["id"] + "/customerSubscriptions/%s?api-version=2017-06-01" % \
            t["customerSubscription"]
        tok = s.token(w["audiences"]["arm"])
        first = s.summary()
        second = s.summary()
        assert first["comparison"]["ok"] and second["comparison"] == first["comparison"]
        assert second["totals"] == first["totals"]
        assert first["accepted"] == second["accepted"] == 12000
        # every row was its record on arrival, and nothing changed since
        assert first["sim"]["hoursCompared"] == 0
        assert second["sim"]["hoursCompared"] == 0
        assert second["sim"]["summaries"] == first["sim"]["summaries"] + 1 == 2
        assert second["sim"]["summaryCpuUs"] > first["sim"]["summaryCpuUs"] > 0
        per_record_excludes_control(first)
        per_record_excludes_control(second)
        # registration changes make every summary compare again; its CPU time stays out of
        # the figure per record and event
        prev = second
        for i in range(4):
            if i % 2 == 0:
                r = s.request("DELETE", reg, token=tok)
            else:
                r = s.request("PUT", reg, body={"properties": {"tenantId": t["tenantId"]}},
                              token=tok)
            assert r.status == (204 if i % 2 == 0 else 201)
            last = s.summary()
            assert last["comparison"]["ok"] is (i % 2 == 1)
            assert last["sim"]["hoursCompared"] == 6
            assert last["sim"]["summaryCpuUs"] > prev["sim"]["summaryCpuUs"]
            per_record_excludes_control(last)
            prev = last
        assert last["comparison"] == first["comparison"] and last["totals"] == first["totals"]
        assert last["sim"]["summaries"] == 6
        # and once clean again, the next one is not compared
        assert s.summary()["sim"]["hoursCompared"] == 0
        # rows written otherwise (escaped, spaced: the same JSON values) are compared once
        s.reset()
        post_all(s, ev, size=1000)
        assert s.summary()["sim"]["hoursCompared"] == 6
        again = s.summary()
        assert again["sim"]["hoursCompared"] == 0
        assert again["comparison"] == first["comparison"] and again["totals"] == first["totals"]


# -- issue 11: quantities as section 6 allows them ---------------------------------------------

D38 = "1234567890123456789012345678.9012345678"  # 38 significant digits


@pytest.mark.parametrize("quantity,status", [
    ("1.0000000000000000001", "Accepted"),          # more than 18 decimals
    ("123456789012345678901234", "Accepted"),       # more than 20 integer digits
    (D38, "Accepted"),
    ("0.00000000000000000000000000000000000000000000000012", "Accepted"),  # 2 significant
    ("000000000000000000000000000000000000000000001.5", "Accepted"),  # leading zeros are not
    ("1." + "0" * 37, "Accepted"),                  # trailing zeros are written digits: 38
    ("1." + "0" * 38, "InvalidQuantity"),           # 39
    (D38 + "9", "InvalidQuantity"),                 # 39 significant digits
    ("12345678901234567890123456789012345678901", "InvalidQuantity"),
    ("1e3", "InvalidQuantity"),                     # never exponent notation
    ("1.5E-3", "InvalidQuantity"),
    ("+1", "InvalidQuantity"),
    (".5", "InvalidQuantity"),
    ("5.", "InvalidQuantity"),
    ("0", "Accepted"),
    ("-0.5", "InvalidQuantity"),
    (1.5, "InvalidQuantity"),                       # a number, not a string
])
def test_quantity_contract_of_section_6(sim, quantity, status):
    e = dict(sim.expected_events(limit=1)[0], quantity=quantity)
    res = sim.commerce_post([e]).json()["result"][0]
    assert res["status"] == status, res
    if status == "InvalidQuantity":
        assert res["error"]["code"] == "InvalidQuantity"
        if quantity == "-0.5":
            assert res["error"]["message"] == "The quantity passed is lower than 0."
        elif isinstance(quantity, float):
            assert res["error"]["message"] == "The quantity must be a decimal string."
        else:
            assert "38 significant digits" in res["error"]["message"]


def test_summary_totals_exact_for_every_valid_quantity(sim):
    """Quantities Commerce accepts (up to 38 significant digits, any scale) are summed exactly:
    a total off by 10^-50, or by 10^27, is a mismatch, and the totals equal Python's decimal."""
    ev = sim.expected_events()
    tiny = "0." + "0" * 49 + "1"
    huge = "9" * 28 + ".5"
    sent = list(ev)
    sent[0] = dict(ev[0], quantity=ev[0]["quantity"] + "0" * 20 + "1")  # + 10^-(n+21)
    sent[1] = dict(ev[1], quantity=huge)
    sent[2] = dict(ev[2], quantity=tiny)
    extra = dict(ev[3], usageEventId="a" * 64, quantity=D38)
    post_all(sim, sent + [extra])
    s = sim.summary()
    c = s["comparison"]
    assert c["ok"] is False and c["wrongQuantityCount"] == 3
    assert {x["usageEventId"] for x in c["wrongQuantity"]} == \
        {e["usageEventId"] for e in ev[:3]}
    assert s["unparsableQuantities"] == 0 and c["extra"] == ["a" * 64]
    want = {}
    with decimal.localcontext() as ctx:
        ctx.prec = 200  # exact for these sums (the default 28 digits would round)
        for e in sent + [extra]:
            k = (e["subscriptionId"], e["meterId"].lower())
            want[k] = want.get(k, decimal.Decimal(0)) + decimal.Decimal(e["quantity"])
    got = {(t["subscriptionId"], t["meterId"]): t["actual"] for t in s["totals"]}
    assert {k: decimal.Decimal(v) for k, v in got.items()} == want
    for k, v in got.items():  # plain decimals without exponent or trailing zeros
        assert "e" not in v.lower() and (("." not in v) or not v.endswith("0"))
    mismatched = {(t["subscriptionId"], t["meterId"]) for t in s["totals"]
                  if t["expected"] != t["actual"]}
    with decimal.localcontext() as ctx:
        ctx.prec = 200
        exp = {}
        for e in ev:
            k = (e["subscriptionId"], e["meterId"].lower())
            exp[k] = exp.get(k, decimal.Decimal(0)) + decimal.Decimal(e["quantity"])
    assert mismatched == {k for k in want if want[k] != exp.get(k)}
    assert s["comparison"]["totalMismatches"] == len(mismatched) >= 2
    # the row off by 10^-50 alone makes its total differ
    k0 = (ev[0]["subscriptionId"], ev[0]["meterId"].lower())
    assert k0 in mismatched
