"""Every fault kind of azs-sim fires as configured and stops after `times`: status codes with
Retry-After (seconds and HTTP date), after/times/rate counters, time-outs, connection resets,
slow and delayed bodies, malformed JSON, 401 for a valid token, usage-API errors, a nextLink
loop, changed quantities on a second query, ARM error codes on demand, and the Commerce
per-event and poison-batch faults."""
import decimal
import email.utils
import json
import re
import socket
import ssl
import time

import pytest

from conftest import load_testdata
from azsim import Sim, scenario, shape, record_key, AZURE_CLIENT_ID, AZURE_CLIENT_SECRET

NOW = "2026-11-03T00:00:00Z"
HOUR = "2026-11-01T10:00:00Z"


@pytest.fixture()
def sim():
    with Sim(scenario(), now=NOW) as s:
        s.world()
        s.tok = s.token(s.audiences()["stack"])
        yield s


def usage(sim, hour=HOUR, **kw):
    return sim.get(sim.usage_path(hour), token=sim.tok, **kw)


def test_status_with_retry_after_seconds_stops_after_times(sim):
    sim.set_faults([{"endpoint": "usage", "status": 503, "retryAfter": "2", "times": 2}])
    r1, r2, r3 = usage(sim), usage(sim), usage(sim)
    assert (r1.status, r2.status, r3.status) == (503, 503, 200)
    assert r1.headers["retry-after"] == "2"
    assert r1.json() == load_testdata("usage-error-503.json")
    assert "retry-after" not in r3.headers
    rule = sim.faults()[0]
    assert rule["fired"] == 2 and rule["seen"] == 3


def test_request_log_times_each_request(sim):
    # atMs: the real time each request was logged, so a client's pauses can be read off the log;
    # query: what the client asked for (a first page or a continuation, which subscriber)
    before = int(time.time() * 1000)
    usage(sim)
    time.sleep(0.05)
    usage(sim)
    after = int(time.time() * 1000)
    a, b = [r for r in sim.requests()["requests"] if r["endpoint"] == "usage"][-2:]
    assert before <= a["atMs"] <= b["atMs"] <= after
    assert b["atMs"] - a["atMs"] >= 50
    assert "reportedStartTime=" in a["query"] and "?" not in a["path"]
    sim.get("/metadata/endpoints")
    assert sim.requests()["requests"][-1]["query"] is None


def test_status_429_with_http_date(sim):
    sim.set_faults([{"endpoint": "usage", "status": 429, "retryAfter": "http-date:+5", "times": 1}])
    before = time.time()
    r = usage(sim)
    after = time.time()
    assert r.status == 429
    when = email.utils.parsedate_to_datetime(r.headers["retry-after"]).timestamp()
    # five seconds after the simulator answered (an HTTP date has whole seconds), however long
    # the request took
    assert before + 4 <= when <= after + 6
    assert r.json()["error"]["code"] == "TooManyRequests"


def test_after_skips_first_requests(sim):
    sim.set_faults([{"endpoint": "usage", "status": 500, "after": 2, "times": 1}])
    assert [usage(sim).status for _ in range(4)] == [200, 200, 500, 200]


def test_later_rule_counts_only_requests_earlier_rules_left(sim):
    sim.set_faults([{"endpoint": "usage", "status": 503, "times": 2},
                    {"endpoint": "usage", "status": 500, "after": 1, "times": 1}])
    assert [usage(sim).status for _ in range(5)] == [503, 503, 200, 500, 200]
    first, second = sim.faults()
    assert (first["seen"], first["fired"]) == (5, 2)
    assert (second["seen"], second["fired"]) == (3, 1)


def test_path_filter(sim):
    tok = sim.token(sim.audiences()["arm"], AZURE_CLIENT_ID, AZURE_CLIENT_SECRET)
    reg = sim.registration_path()
    sim.set_faults([{"endpoint": "any", "path": "/customerSubscriptions", "status": 503,
                     "times": 1}])
    assert sim.get(reg + "?api-version=2017-06-01", token=tok).status == 200
    assert usage(sim).status == 200
    assert sim.faults()[0]["seen"] == 0
    r = sim.get(reg + "/customerSubscriptions?api-version=2017-06-01", token=tok)
    assert r.status == 503 and r.json()["error"]["code"] == "ServiceUnavailable"
    assert sim.get(reg + "/customerSubscriptions?api-version=2017-06-01", token=tok).status == 200


def test_rate_fires_a_fraction(sim):
    sim.set_faults([{"endpoint": "metadata", "status": 503, "rate": 0.5}])
    codes = [sim.get("/metadata/endpoints?api-version=2015-01-01").status for _ in range(40)]
    assert 8 <= codes.count(503) <= 32
    assert set(codes) == {200, 503}


def test_rule_only_for_its_endpoint_and_method(sim):
    sim.set_faults([{"endpoint": "arm", "method": "PUT", "status": 403,
                     "code": "UnauthorizedCspRegistration"}])
    assert usage(sim).status == 200
    tok = sim.token(sim.audiences()["arm"], AZURE_CLIENT_ID, AZURE_CLIENT_SECRET)
    reg = sim.registration_path()
    assert sim.get(reg + "?api-version=2017-06-01", token=tok).status == 200
    r = sim.request("PUT", reg + "/customerSubscriptions/0f0e0d0c-0b0a-4909-8807-060504030201"
                    "?api-version=2017-06-01",
                    body={"properties": {"tenantId": sim.world()["tenants"][2]["tenantId"]}},
                    token=tok)
    assert r.status == 403
    assert r.json() == load_testdata("arm-error-unauthorized-csp.json")


@pytest.mark.parametrize("code", ["RegistrationNotFound", "CustomerSubscriptionsNotAllowed",
                                  "BadCustomerSubscriptionId", "InvalidCSPSubscription",
                                  "MetadataResolverBadGatewayError"])
def test_arm_error_codes_on_demand(sim, code):
    sim.set_faults([{"endpoint": "arm", "status": 400, "code": code, "times": 1}])
    tok = sim.token(sim.audiences()["arm"], AZURE_CLIENT_ID, AZURE_CLIENT_SECRET)
    r = sim.get(sim.registration_path() + "?api-version=2017-06-01", token=tok)
    assert r.status == 400
    assert r.json()["error"]["code"] == code
    assert r.json()["error"]["message"]
    assert sim.get(sim.registration_path() + "?api-version=2017-06-01", token=tok).status == 200


def test_timeout_never_answers(sim):
    sim.set_faults([{"endpoint": "usage", "action": "timeout", "times": 1}])
    with pytest.raises((socket.timeout, TimeoutError)):
        usage(sim, timeout=1.0)
    assert usage(sim).status == 200
    assert sim.requests()["requests"][-2]["action"] == "timeout"


def test_reset_closes_the_connection(sim):
    sim.set_faults([{"endpoint": "usage", "action": "reset", "times": 1}])
    with pytest.raises((ConnectionError, ssl.SSLError, OSError)) as e:
        usage(sim)
    assert not isinstance(e.value, socket.timeout)
    assert usage(sim).status == 200


def test_slow_body_trickles(sim):
    sim.set_faults([{"endpoint": "usage", "action": "slow", "delayMs": 100, "times": 1}])
    t0 = time.monotonic()
    r = usage(sim)
    slow = time.monotonic() - t0
    assert r.status == 200 and len(r.json()["value"]) == 20
    assert slow >= 0.7
    usage(sim)
    # only once: the rule saw the next request and left it alone (no race with the clock)
    rule = sim.faults()[0]
    assert rule["fired"] == 1 and rule["seen"] == 2


def test_delay_answers_late(sim):
    sim.set_faults([{"endpoint": "metadata", "action": "delay", "delayMs": 600, "times": 1}])
    t0 = time.monotonic()
    r = sim.get("/metadata/endpoints?api-version=2015-01-01")
    assert r.status == 200 and time.monotonic() - t0 >= 0.55


def test_malformed_json(sim):
    sim.set_faults([{"endpoint": "usage", "action": "malformed", "times": 1}])
    r = usage(sim)
    assert r.status == 200
    with pytest.raises(ValueError):
        json.loads(r.body)
    assert usage(sim).json()["value"]


def test_401_for_a_valid_token(sim):
    sim.set_faults([{"endpoint": "usage", "status": 401, "times": 1}])
    r = usage(sim)
    assert r.status == 401 and "www-authenticate" in r.headers
    assert r.json()["error"]["code"] == "ExpiredAuthenticationToken"
    assert usage(sim).status == 200


def test_usage_future_and_unavailable_codes(sim):
    sim.set_faults([{"endpoint": "usage", "status": 400, "code": "RequestEndTimeIsInFuture",
                     "times": 1},
                    {"endpoint": "usage", "status": 503, "code": "ServiceUnavailable", "times": 1}])
    r = usage(sim)
    assert r.status == 400 and r.json() == load_testdata("usage-error-future.json")
    r = usage(sim)
    assert r.status == 503 and r.json() == load_testdata("usage-error-503.json")
    assert usage(sim).status == 200


def test_token_endpoint_fault(sim):
    sim.set_faults([{"endpoint": "token", "status": 503, "times": 1}])
    r = sim.token_request(sim.audiences()["stack"], secret="x")
    assert r.status == 503 and r.json()["error"] == "temporarily_unavailable"


def test_nextlink_loop(sim):
    sim.set_faults([{"endpoint": "usage", "action": "nextLinkLoop", "times": 1}])
    first = usage(sim).json()
    link = first["nextLink"]
    second = sim.get(link, token=sim.tok).json()
    assert second["nextLink"] == link  # a nextLink seen before in this hour: a loop
    assert second["value"] == first["value"]
    assert sim.get(link, token=sim.tok).json()["nextLink"] == link  # it stays a loop
    assert sim.faults()[0]["fired"] == 1
    assert "nextLink" not in usage(sim).json()  # the next query of the hour is clean


def test_nextlink_loop_mid_hour():
    with Sim(scenario(pageSize=7), now=NOW) as s:
        tok = s.token(s.audiences()["stack"])
        s.set_faults([{"endpoint": "usage", "action": "nextLinkLoop", "after": 1, "times": 1}])
        seen = []
        doc = s.get(s.usage_path(HOUR), token=tok).json()
        while "nextLink" in doc and doc["nextLink"] not in seen:
            seen.append(doc["nextLink"])
            doc = s.get(seen[-1], token=tok).json()
        # the second page answers with the nextLink that led to it: the client saw it before
        assert len(seen) == 1 and doc["nextLink"] == seen[0]
        assert len(doc["value"]) == 7


def test_changed_quantity_on_second_query(sim):
    sim.set_faults([{"endpoint": "usage", "action": "changeQuantity", "hour": HOUR, "count": 2}])
    a = usage(sim).json()["value"]
    b = usage(sim).json()["value"]
    other = usage(sim, hour="2026-11-01T11:00:00Z").json()["value"]
    other2 = usage(sim, hour="2026-11-01T11:00:00Z").json()["value"]
    qa = [v["properties"]["quantity"] for v in a]
    qb = [v["properties"]["quantity"] for v in b]
    assert qa[2:] == qb[2:]
    assert qa[0] != qb[0] and qa[1] != qb[1]
    assert [v["name"] for v in a] == [v["name"] for v in b]
    assert other == other2


def quantities(doc):
    """The quantity literals of a usage page, exactly as written (no float on the way)."""
    return [decimal.Decimal(q.decode()) for q in re.findall(rb'"quantity":([^,}]*)', doc.body)]


@pytest.mark.parametrize("delta", ["2.5", "-0.0000000001", "-1000000", "7"])
def test_changed_quantity_by_a_delta(sim, delta):
    sim.set_faults([{"endpoint": "usage", "action": "changeQuantity", "count": 3,
                     "delta": delta, "times": 1}])
    a, b, c = quantities(usage(sim)), quantities(usage(sim)), quantities(usage(sim))
    want = [max(q + decimal.Decimal(delta), decimal.Decimal(0)) for q in a[:3]]
    assert b[:3] == want and b[3:] == a[3:]
    if delta == "-1000000":
        assert b[:3] == [0, 0, 0]  # clamped at zero, never negative
    assert c == a  # times: 1 changes one query


def test_changed_quantity_applies_to_the_served_subscriber_and_pages():
    with Sim(scenario(pageSize=2, recordsPerHour=60), now=NOW) as s:
        tok = s.token(s.audiences()["stack"])
        sub = s.world()["tenants"][1]["subscriptions"][1]

        def query():
            r = s.get(s.usage_path(HOUR, subscriber=sub), token=tok)
            got = quantities(r)
            while "nextLink" in r.json():
                r = s.get(r.json()["nextLink"], token=tok)
                got += quantities(r)
            return got
        first = query()
        s.set_faults([{"endpoint": "usage", "action": "changeQuantity", "count": 3,
                       "delta": "-0.25"}])
        second = query()
        assert len(first) == len(second) == 10
        # the first three records of this subscriber's answer, across the page boundary
        assert second[:3] == [max(q - decimal.Decimal("0.25"), 0) for q in first[:3]]
        assert second[3:] == first[3:]


def test_changed_quantity_delta_must_be_decimal(sim):
    for bad in ("abc", "1e3", "0.000000000000000000001", 2.5, "1."):
        r = sim.post("/_sim/faults", [{"endpoint": "usage", "action": "changeQuantity",
                                       "delta": bad}])
        assert r.status == 400, bad


def events(sim, n):
    return sim.expected_events(limit=n)


def test_commerce_per_event_codes(sim):
    ev = events(sim, 5)
    ids = [e["usageEventId"] for e in ev]
    sim.set_faults([{"endpoint": "commerce", "events": [ids[0]]},
                    {"endpoint": "commerce", "events": [ids[1]], "code": "InvalidQuantity"},
                    {"endpoint": "commerce", "events": [ids[2]], "code": "Expired", "times": 1}])
    r = sim.commerce_post(ev)
    assert r.status == 200
    res = {x["usageEventId"]: x for x in r.json()["result"]}
    # shaped like the Error entry of commerce-batch-response.json
    ref = [x for x in load_testdata("commerce-batch-response.json")["result"]
           if x["status"] == "Error"][0]
    assert res[ids[0]]["status"] == "Error" and res[ids[0]]["error"] == ref["error"]
    assert shape(res[ids[0]]) == shape(ref)
    assert res[ids[1]]["status"] == "InvalidQuantity"
    assert res[ids[2]]["status"] == "Expired"
    assert res[ids[3]]["status"] == "Accepted" and res[ids[4]]["status"] == "Accepted"
    r = sim.commerce_post(ev)
    res = {x["usageEventId"]: x["status"] for x in r.json()["result"]}
    assert res == {ids[0]: "Error", ids[1]: "InvalidQuantity", ids[2]: "Accepted",
                   ids[3]: "Duplicate", ids[4]: "Duplicate"}
    assert sim.summary()["accepted"] == 3


def test_commerce_poison_event_fails_whole_batch(sim):
    ev = events(sim, 4)
    sim.set_faults([{"endpoint": "commerce", "events": [ev[2]["usageEventId"]], "status": 400}])
    r = sim.commerce_post(ev)
    assert r.status == 400
    assert sim.summary()["accepted"] == 0
    r = sim.commerce_post(ev[:2])  # the halves without the poison pass
    assert r.status == 200
    assert sim.commerce_post(ev[2:3]).status == 400
    assert sim.summary()["accepted"] == 2


def test_commerce_status_fault_with_times(sim):
    ev = events(sim, 2)
    sim.set_faults([{"endpoint": "commerce", "status": 503, "retryAfter": "1", "times": 1}])
    r = sim.commerce_post(ev)
    assert r.status == 503 and r.headers["retry-after"] == "1"
    assert sim.commerce_post(ev).status == 200


def test_faults_from_scenario_and_reset():
    sc = scenario(faults=[{"endpoint": "metadata", "status": 500, "times": 1}])
    with Sim(sc, now=NOW) as s:
        assert s.get("/metadata/endpoints?api-version=2015-01-01").status == 500
        assert s.get("/metadata/endpoints?api-version=2015-01-01").status == 200
        s.reset()  # the scenario's plan comes back with fresh counters
        assert s.get("/metadata/endpoints?api-version=2015-01-01").status == 500


def test_bad_fault_plan_refused(sim):
    r = sim.post("/_sim/faults", [{"endpoint": "nowhere", "status": 500}])
    assert r.status == 400
    r = sim.post("/_sim/faults", [{"endpoint": "usage", "status": 42}])
    assert r.status == 400


# -- issue 9: collection faults ----------------------------------------------------------------

def all_pages(sim, path, tok):
    """The records of a query and the nextLinks it followed."""
    r = sim.get(path, token=tok)
    assert r.status == 200, r.body
    doc = r.json()
    got, links = list(doc["value"]), []
    while "nextLink" in doc:
        links.append(doc["nextLink"])
        doc = sim.get(doc["nextLink"], token=sim.tok).json()
        got += doc["value"]
    return got, links


@pytest.mark.parametrize("body,want", [
    (None, {"error": {"code": "ProcessingNotComplete"}}),
    ("flat", {"code": "ProcessingNotComplete"}),
    ("empty", {}),
])
def test_not_ready_answers_202_for_an_hour(sim, body, want):
    rule = {"endpoint": "usage", "action": "notReady", "hour": HOUR, "times": 2,
            "retryAfter": "5"}
    if body:
        rule["body"] = body
    sim.set_faults([rule])
    assert usage(sim, hour="2026-11-01T11:00:00Z").status == 200  # another hour is ready
    for _ in range(2):
        r = usage(sim)
        assert r.status == 202 and r.headers["retry-after"] == "5"
        doc = r.json()
        assert "value" not in doc
        if "error" in want:
            assert doc["error"]["code"] == "ProcessingNotComplete" and doc["error"]["message"]
        elif want:
            assert set(doc) == {"code", "message"}
        else:
            assert doc == {}
    assert len(usage(sim).json()["value"]) == 20  # processed now
    sim.set_faults([{"endpoint": "usage", "action": "notReady", "status": 200, "body": "empty",
                     "times": 1}])
    r = usage(sim)
    assert r.status == 200 and r.json() == {}  # a 2xx without a value array


def test_late_records_appear_when_the_hour_is_asked_again():
    """lateRecords: the first query of an hour misses its last records; a later query (the
    look-back pass) has them. The expected charges always count them."""
    with Sim(scenario(pageSize=7), now=NOW) as s:
        s.tok = s.token(s.audiences()["stack"])
        s.set_faults([{"endpoint": "usage", "action": "lateRecords", "hour": HOUR, "count": 3}])
        first, links = all_pages(s, s.usage_path(HOUR), s.tok)
        assert len(first) == 17 and len(links) == 2  # pages of 7, 7 and 3
        again, _ = all_pages(s, s.usage_path(HOUR), s.tok)
        assert len(again) == 20 and again[:17] == first
        late = {record_key(HOUR, r) for r in again[17:]}
        expected = {e["usageEventId"] for e in s.expected_events(
            since=HOUR, until="2026-11-01T11:00:00Z")}
        assert late <= expected and len(expected) == 20
        other, _ = all_pages(s, s.usage_path("2026-11-01T11:00:00Z"), s.tok)
        assert len(other) == 20  # only the rule's hour
        # per subscriber: the last records of that subscriber's own answer
        sub = s.world()["tenants"][0]["subscriptions"][0]
        s.set_faults([{"endpoint": "usage", "action": "lateRecords", "count": 1}])
        h = "2026-11-01T12:00:00Z"
        mine, _ = all_pages(s, s.usage_path(h, subscriber=sub), s.tok)
        mine2, _ = all_pages(s, s.usage_path(h, subscriber=sub), s.tok)
        assert len(mine) + 1 == len(mine2) and mine2[:-1] == mine


@pytest.mark.parametrize("status", [400, 404])
def test_expired_continuation_token(status):
    """expireToken: a saved nextLink is refused (and stays refused); a new query of the hour
    gets new tokens that work."""
    with Sim(scenario(pageSize=7), now=NOW) as s:
        s.tok = s.token(s.audiences()["stack"])
        link = s.get(s.usage_path(HOUR), token=s.tok).json()["nextLink"]
        rule = {"endpoint": "usage", "action": "expireToken", "times": 1}
        if status == 404:
            rule["status"] = 404
        s.set_faults([rule])
        assert usage(s).status == 200  # first pages are not continuations: not counted
        assert s.faults()[0]["seen"] == 0
        for _ in range(2):
            r = s.get(link, token=s.tok)
            assert r.status == status
            assert r.json()["error"]["code"] == "ExpiredContinuationToken"
        got, links = all_pages(s, s.usage_path(HOUR), s.tok)
        assert len(got) == 20 and len(links) == 2


def test_nextlink_with_an_explicit_default_port():
    """nextLinkAuthority: the nextLink names the same authority written otherwise: the host in
    upper case and :443 when the client named no port; or any authority text."""
    import http.client
    sc = scenario(pageSize=7)
    with Sim(sc, now=NOW) as s:
        s.tok = s.token(s.audiences()["stack"])
        s.set_faults([{"endpoint": "usage", "action": "nextLinkAuthority"}])
        conn = http.client.HTTPSConnection("127.0.0.1", s.port, context=s.ssl, timeout=10)
        try:
            # a client on the default port sends Host without a port
            conn.request("GET", s.usage_path(HOUR), headers={
                "Host": "localhost", "Authorization": "Bearer " + s.tok})
            link = json.loads(conn.getresponse().read())["nextLink"]
        finally:
            conn.close()
        assert link.startswith("https://LOCALHOST:443/subscriptions/"), link
        link = usage(s).json()["nextLink"]
        assert link.startswith("https://%s/subscriptions/" % s.host)  # an IP has no case
        s.set_faults([{"endpoint": "usage", "action": "nextLinkAuthority",
                       "authority": "localhost:{port}"}])
        link = usage(s).json()["nextLink"]
        assert link.startswith("https://localhost:%d/subscriptions/" % s.port)
        # the request log says which host a request named and whether it carried a token
        s.get(link.replace("https://localhost:%d" % s.port, ""), headers={"Host": "localhost"})
        last = s.requests()["requests"][-1]
        assert last["host"] == "localhost" and last["bearer"] is False
        assert s.requests()["requests"][-2]["bearer"] is True


def test_subscriptions_of_a_delegated_provider():
    """A delegated provider's customer: listed with that provider's subscription as
    delegatedProviderSubscriptionId, no usage in the provider's pages, and a per-subscriber
    query for it answers 400 SubscriberIdIsNotDirectTenant (so does an unknown subscription)."""
    reseller = "7e5e11e2-0000-4000-8000-0000000000aa"
    sc = scenario(tenants=[{"registered": True}, {}, {"delegatedProvider": reseller},
                           {"delegatedProvider": True}])
    with Sim(sc, now=NOW) as s:
        s.tok = s.token(s.audiences()["stack"])
        w = s.world()
        delegated = w["tenants"][2]["subscriptions"] + w["tenants"][3]["subscriptions"]
        assert w["tenants"][2]["delegatedProvider"] == reseller
        assert w["tenants"][3]["delegatedProvider"] not in (None, w["providerSubscription"])
        assert w["tenants"][0]["delegatedProvider"] is None
        listed = s.get("/subscriptions/%s/providers/Microsoft.Subscriptions.Admin/subscriptions"
                       "?api-version=2015-11-01" % w["providerSubscription"],
                       token=s.tok).json()["value"]
        by_id = {v["subscriptionId"]: v["delegatedProviderSubscriptionId"] for v in listed}
        assert len(by_id) == 8
        assert {by_id[x] for x in w["tenants"][2]["subscriptions"]} == {reseller}
        assert {by_id[x] for x in w["tenants"][0]["subscriptions"]} == \
            {w["providerSubscription"]}
        for sub in delegated + ["0badc0de-0000-4000-8000-000000000000"]:
            r = s.get(s.usage_path(HOUR, subscriber=sub), token=s.tok)
            assert r.status == 400, sub
            assert r.json()["error"]["code"] == "SubscriberIdIsNotDirectTenant"
            assert sub in r.json()["error"]["message"]
        direct = w["tenants"][1]["subscriptions"][0]
        assert s.get(s.usage_path(HOUR, subscriber=direct), token=s.tok).json()["value"]
        recs = usage(s).json()["value"]
        assert len(recs) == 20
        assert not {r["properties"]["subscriptionId"] for r in recs} & set(delegated)
        assert not {e["sourceSubscriptionId"] for e in s.expected_events()} & set(delegated)


def test_deleted_subscription_late_usage_still_reported():
    """deleteSubscriptions: after `after` listings the subscriptions are gone from the list,
    while the usage API still reports their usage, charged to their tenant as before."""
    with Sim(scenario(), now=NOW) as s:
        s.tok = s.token(s.audiences()["stack"])
        w = s.world()
        t = w["tenants"][0]
        gone = t["subscriptions"][0]
        lst = ("/subscriptions/%s/providers/Microsoft.Subscriptions.Admin/subscriptions"
               "?api-version=2015-11-01" % w["providerSubscription"])
        s.set_faults([{"endpoint": "subscriptions", "action": "deleteSubscriptions",
                       "subscriptions": [gone], "after": 1}])

        def listed():
            return {v["subscriptionId"] for v in s.get(lst, token=s.tok).json()["value"]}
        assert gone in listed()
        assert gone not in listed() and len(listed()) == 5
        assert s.world()["tenants"][0]["deletedSubscriptions"] == [gone]
        for h in range(20, 24):
            r = s.get(s.usage_path("2026-11-02T%02d:00:00Z" % h, subscriber=gone), token=s.tok)
            assert r.status == 200 and r.json()["value"]
        mine = [e for e in s.expected_events() if e["sourceSubscriptionId"] == gone]
        assert mine and {e["subscriptionId"] for e in mine} == {t["customerSubscription"]}
        assert {e["chargeReason"] for e in mine} == {"registered"}
        assert {e["tenantId"] for e in mine} == {t["tenantId"]}
        s.reset()
        assert gone in listed()


def test_lost_answer_after_the_batch_was_stored(sim):
    """afterProcessing: the batch is written to the ledger, then the answer is lost (the
    connection reset, or no answer at all); the re-sent batch is answered Duplicate."""
    ev = events(sim, 3)
    sim.set_faults([{"endpoint": "commerce", "action": "reset", "afterProcessing": True,
                     "times": 1},
                    {"endpoint": "commerce", "action": "timeout", "afterProcessing": True,
                     "times": 1}])
    with pytest.raises((ConnectionError, ssl.SSLError, OSError)):
        sim.commerce_post(ev[:2])
    assert sim.summary()["accepted"] == 2
    with pytest.raises((socket.timeout, TimeoutError)):
        sim.commerce_post(ev[2:], timeout=1.0)
    assert sim.summary()["accepted"] == 3
    r = sim.commerce_post(ev)
    assert [x["status"] for x in r.json()["result"]] == ["Duplicate"] * 3
    actions = [x["action"] for x in sim.requests()["requests"] if x["endpoint"] == "commerce"]
    assert actions[:2] == ["reset-after", "timeout-after"]


# -- issue 11: Commerce answers with results missing or reordered ------------------------------

def test_commerce_results_missing(sim):
    """omitResults: the answer leaves out the results of the listed events, or the last
    `count` of the batch; the events themselves are processed (stored)."""
    ev = events(sim, 6)
    ids = [e["usageEventId"] for e in ev]
    sim.set_faults([{"endpoint": "commerce", "action": "omitResults", "events": [ids[1]],
                     "times": 1},
                    {"endpoint": "commerce", "action": "omitResults", "count": 2, "times": 1}])
    doc = sim.commerce_post(ev).json()
    got = [x["usageEventId"] for x in doc["result"]]
    assert got == [ids[0], ids[2], ids[3]] and doc["count"] == 3
    assert sim.summary()["accepted"] == 6
    doc = sim.commerce_post(ev).json()  # both rules used up
    assert [x["usageEventId"] for x in doc["result"]] == ids
    assert {x["status"] for x in doc["result"]} == {"Duplicate"}


def test_commerce_results_reordered(sim):
    ev = events(sim, 5)
    ids = [e["usageEventId"] for e in ev]
    sim.set_faults([{"endpoint": "commerce", "action": "reorderResults", "times": 1}])
    bad = dict(ev[4], quantity="1e3")
    doc = sim.commerce_post(ev[:4] + [bad]).json()
    assert [x["usageEventId"] for x in doc["result"]] == ids[::-1]
    assert [x["status"] for x in doc["result"]] == ["InvalidQuantity"] + ["Accepted"] * 4
    assert doc["count"] == 5
    doc = sim.commerce_post(ev).json()
    assert [x["usageEventId"] for x in doc["result"]] == ids
