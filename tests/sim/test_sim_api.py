"""azs-sim answers like Azure: shapes match ../shared/testdata, paging and nextLink encoding,
deterministic records per seed, exact quantity literals, record keys, identity (secret and JWT
assertion), tokens required per audience, the registration and its customer subscriptions."""
import json
import re
import urllib.parse

import pytest

from conftest import load_testdata, TESTDATA
from azsim import (Sim, scenario, shape, record_key, make_assertion, AAD_TENANT, AZURE_CLIENT_ID,
                   AZURE_CLIENT_SECRET, CERT_CLIENT_ID, STACK_CLIENT_ID, STACK_CLIENT_SECRET)

NOW = "2026-11-03T00:00:00Z"
HOUR = "2026-11-01T10:00:00Z"


@pytest.fixture(scope="module")
def sim():
    with Sim(scenario(), now=NOW) as s:
        s.world()
        yield s


def stack_token(sim):
    return sim.token(sim.audiences()["stack"])


def arm_token(sim):
    return sim.token(sim.audiences()["arm"], AZURE_CLIENT_ID, AZURE_CLIENT_SECRET)


def test_metadata_matches_testdata_aad(sim):
    r = sim.get("/metadata/endpoints?api-version=2015-01-01")
    assert r.status == 200
    doc = r.json()
    assert shape(doc) == shape(load_testdata("metadata-endpoints-aad.json"))
    assert doc["authentication"]["loginEndpoint"] == sim.url + "/"
    assert doc["authentication"]["audiences"] == [sim.audiences()["stack"]]


def test_metadata_api_version_checked_like_other_endpoints(sim):
    r = sim.get("/metadata/endpoints?api-version=2099-01-01")
    assert r.status == 400
    assert r.json() == {"error": {"code": "InvalidApiVersionParameter", "message":
                                  "The api-version '2099-01-01' is invalid. The supported "
                                  "versions are '2015-01-01'."}}
    r = sim.get("/metadata/endpoints")
    assert r.status == 400 and r.json()["error"]["code"] == "MissingApiVersionParameter"
    # the same shape as the usage API's answer to an unsupported version
    u = sim.get(sim.usage_path(HOUR, api_version="2099-01-01"), token=stack_token(sim))
    assert u.status == 400 and shape(u.json()) == shape(r.json())
    assert u.json()["error"]["message"] == ("The api-version '2099-01-01' is invalid. The "
                                            "supported versions are '2015-06-01-preview'.")


def test_metadata_adfs_variant():
    with Sim(scenario(identity="adfs"), now=NOW) as s:
        doc = s.get("/metadata/endpoints?api-version=2015-01-01").json()
        assert shape(doc) == shape(load_testdata("metadata-endpoints-adfs.json"))
        assert doc["authentication"]["loginEndpoint"] == s.url + "/adfs/"
        r = s.token_request(doc["authentication"]["audiences"][0], secret=STACK_CLIENT_SECRET,
                            adfs=True)
        assert r.status == 200


def test_token_secret_matches_testdata(sim):
    r = sim.token_request(sim.audiences()["arm"], AZURE_CLIENT_ID, secret=AZURE_CLIENT_SECRET)
    assert r.status == 200
    doc = r.json()
    assert shape(doc) == shape(load_testdata("token-v1.json"))
    assert int(doc["expires_on"]) - int(doc["not_before"]) == 3600
    assert doc["resource"] == sim.audiences()["arm"]


def test_token_wrong_secret_answered_like_azure(sim):
    r = sim.token_request(sim.audiences()["arm"], AZURE_CLIENT_ID, secret="wrong")
    assert r.status == 401
    doc = r.json()
    assert shape(doc) == shape(load_testdata("token-error.json"))
    assert doc["error"] == "invalid_client"
    assert doc["error_codes"] == [7000215]


def test_token_unknown_resource_rejected(sim):
    r = sim.token_request("https://nowhere.example/", AZURE_CLIENT_ID, secret=AZURE_CLIENT_SECRET)
    assert r.status == 400 and r.json()["error"] == "invalid_resource"


def test_token_jwt_assertion_accepted(sim):
    jwt = make_assertion(CERT_CLIENT_ID, sim.token_endpoint())
    r = sim.token_request(sim.audiences()["commerce"], CERT_CLIENT_ID, assertion=jwt)
    assert r.status == 200, r.body
    tok = r.json()["access_token"]
    # the token works for its audience
    res = sim.commerce_post(sim.expected_events(limit=1), token=tok)
    assert res.status == 200


def test_token_jwt_bad_signature_rejected(sim):
    jwt = make_assertion(CERT_CLIENT_ID, sim.token_endpoint())
    head, body, sig = jwt.split(".")
    bad = head + "." + body + "." + ("A" if sig[0] != "A" else "B") + sig[1:]
    r = sim.token_request(sim.audiences()["commerce"], CERT_CLIENT_ID, assertion=bad)
    assert r.status == 401
    assert r.json()["error"] == "invalid_client"
    assert "signature" in r.json()["error_description"]


def test_token_jwt_other_key_rejected(sim, tmp_path):
    import subprocess
    key = tmp_path / "other.key"
    subprocess.run(["openssl", "genrsa", "-out", str(key), "2048"], check=True,
                   capture_output=True)
    jwt = make_assertion(CERT_CLIENT_ID, sim.token_endpoint(), key_file=str(key))
    r = sim.token_request(sim.audiences()["commerce"], CERT_CLIENT_ID, assertion=jwt)
    assert r.status == 401 and "signature" in r.json()["error_description"]


def test_token_jwt_wrong_aud_rejected(sim):
    jwt = make_assertion(CERT_CLIENT_ID, "https://login.microsoftonline.com/x/oauth2/token")
    r = sim.token_request(sim.audiences()["commerce"], CERT_CLIENT_ID, assertion=jwt)
    assert r.status == 401
    assert "audience" in r.json()["error_description"]


def test_token_jwt_expired_rejected(sim):
    jwt = make_assertion(CERT_CLIENT_ID, sim.token_endpoint(), exp_in=-3600, nbf_in=-4000)
    r = sim.token_request(sim.audiences()["commerce"], CERT_CLIENT_ID, assertion=jwt)
    assert r.status == 401
    assert r.json()["error_codes"] == [700024]


def test_token_jwt_wrong_x5t_rejected(sim):
    jwt = make_assertion(CERT_CLIENT_ID, sim.token_endpoint(), thumbprint="AAAAAAAAAAAAAAAAAAAAAAAAAAA")
    r = sim.token_request(sim.audiences()["commerce"], CERT_CLIENT_ID, assertion=jwt)
    assert r.status == 401 and r.json()["error_codes"] == [700027]


def test_token_not_yet_valid_rejected(sim):
    jwt = make_assertion(CERT_CLIENT_ID, sim.token_endpoint(), nbf_in=3600, exp_in=4000)
    r = sim.token_request(sim.audiences()["commerce"], CERT_CLIENT_ID, assertion=jwt)
    assert r.status == 401 and r.json()["error_codes"] == [700024]


def aadsts(doc):
    """The AADSTS number an error description starts with."""
    return int(re.match(r"AADSTS(\d+):", doc["error_description"]).group(1))


def test_token_jwt_replayed_jti_rejected(sim):
    jwt = make_assertion(CERT_CLIENT_ID, sim.token_endpoint())
    aud = sim.audiences()["commerce"]
    assert sim.token_request(aud, CERT_CLIENT_ID, assertion=jwt).status == 200
    r = sim.token_request(aud, CERT_CLIENT_ID, assertion=jwt)
    assert r.status == 400 and r.json()["error"] in ("invalid_client", "invalid_request")
    assert r.json()["error_codes"] == [aadsts(r.json())] == [50013]
    assert "jti" in r.json()["error_description"]
    # the same claims with a new jti are fine
    again = make_assertion(CERT_CLIENT_ID, sim.token_endpoint())
    assert sim.token_request(aud, CERT_CLIENT_ID, assertion=again).status == 200


@pytest.mark.parametrize("claims,status", [
    ({"nbf": None}, 200),                        # nbf is optional
    ({"nbf_in": 30}, 200),                       # within the clock skew
    ({"nbf_in": 120}, 401),                      # beyond it
    ({"nbf_in": 0.5}, 200),                      # a NumericDate may have a fraction
    ({"nbf": "now"}, 401),                       # not a NumericDate
    ({"exp": None}, 401),                        # exp is required
    ({"jti": None}, 401),                        # jti is required
])
def test_token_jwt_time_and_id_claims(sim, claims, status):
    import time
    claims = dict(claims)
    if "nbf_in" in claims:
        claims["nbf"] = int(time.time()) + claims.pop("nbf_in")
    jwt = make_assertion(CERT_CLIENT_ID, sim.token_endpoint(), claims=claims)
    r = sim.token_request(sim.audiences()["commerce"], CERT_CLIENT_ID, assertion=jwt)
    assert r.status == status, r.body
    if status != 200:
        assert r.json()["error"] == "invalid_client"
        assert r.json()["error_codes"] == [aadsts(r.json())]


@pytest.mark.parametrize("claims", [
    {"exp": 1e300},                              # would pass the time check, then overflow
    {"exp": 1e300, "nbf": -1e300},
    {"nbf": -1e300},
    {"nbf": -1e300, "exp": 1000},                # expired: the refusal would print nbf
    {"exp": 2.0 ** 62},                          # beyond 2^53 seconds
    {"exp": -1},
])
def test_token_jwt_out_of_range_dates_malformed(sim, claims):
    """exp and nbf outside 0 to 2^53 seconds are a malformed assertion, not a time check."""
    jwt = make_assertion(CERT_CLIENT_ID, sim.token_endpoint(), claims=claims)
    r = sim.token_request(sim.audiences()["commerce"], CERT_CLIENT_ID, assertion=jwt)
    assert r.status == 401, r.body
    assert r.json()["error"] == "invalid_client"
    assert r.json()["error_codes"] == [aadsts(r.json())] == [50027]
    assert "NumericDate" in r.json()["error_description"]
    # the simulator is still serving, and a good assertion still works
    good = make_assertion(CERT_CLIENT_ID, sim.token_endpoint())
    assert sim.token_request(sim.audiences()["commerce"], CERT_CLIENT_ID,
                             assertion=good).status == 200


def test_token_jwt_iss_or_sub_other_than_client_rejected(sim):
    for claim in ("iss", "sub"):
        jwt = make_assertion(CERT_CLIENT_ID, sim.token_endpoint(),
                             claims={claim: AZURE_CLIENT_ID})
        r = sim.token_request(sim.audiences()["commerce"], CERT_CLIENT_ID, assertion=jwt)
        assert r.status == 401 and r.json()["error_codes"] == [700021], claim


@pytest.mark.parametrize("alg", ["HS256", "none", "RS512"])
def test_token_jwt_other_alg_rejected(sim, alg):
    jwt = make_assertion(CERT_CLIENT_ID, sim.token_endpoint(), alg=alg)
    r = sim.token_request(sim.audiences()["commerce"], CERT_CLIENT_ID, assertion=jwt)
    assert r.status == 401 and r.json()["error"] == "invalid_client"
    assert r.json()["error_codes"] == [aadsts(r.json())] == [5002730]


def test_token_error_codes_match_their_description(sim):
    import urllib.parse
    aud = sim.audiences()["commerce"]
    answers = [
        sim.token_request(aud, AZURE_CLIENT_ID, secret="wrong"),
        sim.token_request(aud, "00000000-0000-4000-8000-000000000000", secret="x"),
        sim.token_request("https://nowhere.example/", AZURE_CLIENT_ID, secret="x"),
        sim.token_request(aud, AZURE_CLIENT_ID, secret="x", tenant="other.example"),
        sim.token_request(aud, AZURE_CLIENT_ID),
        sim.token_request(aud, CERT_CLIENT_ID, assertion="not.a.jwt"),
        sim.token_request(aud, CERT_CLIENT_ID, assertion=make_assertion(
            CERT_CLIENT_ID, sim.token_endpoint(), thumbprint="AAAA")),
        sim.token_request(aud, CERT_CLIENT_ID, assertion=make_assertion(
            CERT_CLIENT_ID, "https://elsewhere.example/token")),
        sim.token_request(aud, CERT_CLIENT_ID, assertion=make_assertion(
            CERT_CLIENT_ID, sim.token_endpoint(), exp_in=-3600, nbf_in=-4000)),
        sim.post("/%s/oauth2/token" % AAD_TENANT, urllib.parse.urlencode(
            {"grant_type": "password", "client_id": AZURE_CLIENT_ID}),
            headers={"Content-Type": "application/x-www-form-urlencoded"}),
    ]
    for r in answers:
        assert r.status in (400, 401), r.body
        doc = r.json()
        assert shape(doc) == shape(load_testdata("token-error.json")), doc
        assert doc["error_codes"] == [aadsts(doc)], doc


def test_token_paths_follow_the_stamp_identity(sim):
    # an Azure AD stamp has no AD FS
    r = sim.token_request(sim.audiences()["stack"], secret=STACK_CLIENT_SECRET, adfs=True)
    assert r.status == 404
    with Sim(scenario(identity="adfs"), now=NOW) as s:
        aud = s.audiences()
        # AD FS issues the stamp's audience, and only that
        assert s.token_request(aud["stack"], secret=STACK_CLIENT_SECRET, adfs=True).status == 200
        r = s.token_request(aud["arm"], AZURE_CLIENT_ID, secret=AZURE_CLIENT_SECRET, adfs=True)
        assert r.status == 400 and r.json()["error"] == "invalid_resource"
        # Azure AD (the registration's and Commerce's identity) does not know the stamp
        r = s.token_request(aud["stack"], secret=STACK_CLIENT_SECRET)
        assert r.status == 400 and r.json()["error"] == "invalid_resource"
        assert s.token_request(aud["arm"], AZURE_CLIENT_ID,
                               secret=AZURE_CLIENT_SECRET).status == 200


def test_token_table_keeps_every_valid_token():
    import http.client
    import ssl
    import urllib.parse
    with Sim(scenario(), now=NOW) as s:
        aud = s.audiences()["stack"]
        issued = []
        form = urllib.parse.urlencode({"grant_type": "client_credentials",
                                       "client_id": STACK_CLIENT_ID, "resource": aud,
                                       "client_secret": STACK_CLIENT_SECRET})
        conn = http.client.HTTPSConnection("127.0.0.1", s.port, timeout=30,
                                           context=ssl.create_default_context(cafile=s.ca_file))
        try:
            for _ in range(4200):  # more than the table's compaction point
                conn.request("POST", "/%s/oauth2/token" % AAD_TENANT, body=form, headers={
                    "Content-Type": "application/x-www-form-urlencoded"})
                r = conn.getresponse()
                assert r.status == 200
                issued.append(json.loads(r.read())["access_token"])
        finally:
            conn.close()
        for i in (0, 2500, 4095, 4199):
            assert s.get(s.usage_path(HOUR), token=issued[i]).status == 200, i


def test_endpoints_require_token_for_their_audience(sim):
    path = sim.usage_path(HOUR)
    r = sim.get(path)
    assert r.status == 401
    assert r.json()["error"]["code"] == "AuthenticationFailed"
    assert "www-authenticate" in r.headers
    r = sim.get(path, token="azsim.not-issued")
    assert r.status == 401 and r.json()["error"]["code"] == "InvalidAuthenticationToken"
    r = sim.get(path, token=arm_token(sim))
    assert r.status == 401
    assert r.json()["error"]["code"] == "InvalidAuthenticationTokenAudience"


def test_token_expires():
    import time
    with Sim(scenario(tokenLifetime=2), now=NOW) as s:
        tok = s.token(s.audiences()["stack"])
        assert s.get(s.usage_path(HOUR), token=tok).status == 200
        time.sleep(2.2)
        r = s.get(s.usage_path(HOUR), token=tok)
        assert r.status == 401 and r.json()["error"]["code"] == "ExpiredAuthenticationToken"


def test_usage_page_matches_testdata(sim):
    r = sim.get(sim.usage_path(HOUR), token=stack_token(sim))
    assert r.status == 200
    doc = r.json()
    ref = load_testdata("usage-page-1.json")
    assert set(doc) == {"value"}  # one page only with 20 records
    for rec in doc["value"]:
        assert shape(rec) == shape(ref["value"][0])
        inst = json.loads(rec["properties"]["instanceData"])
        assert set(inst["Microsoft.Resources"]) == {"resourceUri", "location", "tags",
                                                   "additionalInfo"}
        assert rec["name"] == rec["properties"]["subscriptionId"] + "-" + \
            rec["properties"]["meterId"]
    assert len(doc["value"]) == 20


def test_usage_empty_hour_matches_testdata(sim):
    r = sim.get(sim.usage_path("2026-10-01T10:00:00Z"), token=stack_token(sim))
    assert r.status == 200
    assert r.json() == load_testdata("usage-page-empty.json")


def quantity_literals(body):
    return re.findall(rb'"quantity":([^,}]*)', body)


def test_usage_quantities_are_exact_number_literals():
    with Sim(scenario(recordsPerHour=200), now=NOW) as s:
        tok = stack_token(s)
        lits = []
        for h in range(0, 6):
            r = s.get(s.usage_path("2026-11-01T%02d:00:00Z" % h), token=tok)
            lits += quantity_literals(r.body)
        assert len(lits) == 1200
        for lit in lits:
            assert re.fullmatch(rb"[0-9]+(\.[0-9]{1,20})?", lit), lit  # never an exponent
        digits = [len(lit.replace(b".", b"").lstrip(b"0")) for lit in lits]
        assert max(digits) == 17                              # a few doubles printed exactly
        assert 0 < digits.count(17) < len(lits) // 4
        assert any(b"." not in lit for lit in lits)           # integer literals occur
        assert any(re.fullmatch(rb"[0-9]+\.[0-9]{10}", lit) for lit in lits)


def test_usage_paging_and_nextlink_encoding():
    with Sim(scenario(pageSize=7), now=NOW) as s:
        tok = stack_token(s)
        ref_link = load_testdata("usage-page-1.json")["nextLink"]
        r = s.get(s.usage_path(HOUR), token=tok)
        sizes, names, links = [], [], []
        while True:
            assert r.status == 200, r.body
            doc = r.json()
            sizes.append(len(doc["value"]))
            names += [record_key(HOUR, v) for v in doc["value"]]
            if "nextLink" not in doc:
                break
            link = doc["nextLink"]
            links.append(link)
            assert link.startswith(s.url + "/subscriptions/")
            assert link.endswith("%3d%3d")
            # same query parameters, in the same order, as the real API's nextLink
            keys = [kv.split("=")[0] for kv in urllib.parse.urlsplit(link).query.split("&")]
            ref_keys = [kv.split("=")[0] for kv in urllib.parse.urlsplit(ref_link).query.split("&")]
            assert keys == ref_keys
            assert "reportedStartTime=2026-11-01T10%3a00%3a00Z" in link
            r = s.get(link, token=tok)
        assert sizes == [7, 7, 6]
        assert len(set(names)) == 20
        assert len(set(links)) == 2


def test_usage_same_seed_same_records_other_seed_differs():
    bodies = []
    for seed in (7, 7, 8):
        with Sim(scenario(seed=seed), now=NOW) as s:
            r = s.get(s.usage_path(HOUR), token=stack_token(s))
            bodies.append(r.body)
    assert bodies[0] == bodies[1]
    assert bodies[0] != bodies[2]


def test_usage_record_keys_match_expected_events(sim):
    tok = stack_token(sim)
    # the Python key function reproduces ../shared/testdata/record-keys.tsv
    with open(TESTDATA + "/record-keys.tsv") as f:
        rows = [line.rstrip("\n").split("\t") for line in f][1:]
    for row in rows:
        page = load_testdata(row[0])
        keys = {record_key(row[1], rec) for rec in page["value"]}
        assert row[4] in keys
    doc = sim.get(sim.usage_path(HOUR), token=tok).json()
    keys = sorted(record_key(HOUR, rec) for rec in doc["value"])
    events = sim.expected_events(since=HOUR, until="2026-11-01T11:00:00Z")
    assert sorted(e["usageEventId"] for e in events) == keys
    assert len(set(keys)) == 20


def test_usage_late_records_present(sim):
    tok = stack_token(sim)
    late = 0
    for h in range(10, 16):
        hour = "2026-11-01T%02d:00:00Z" % h
        for rec in sim.get(sim.usage_path(hour), token=tok).json()["value"]:
            if rec["properties"]["usageEndTime"] != hour.replace("Z", "+00:00"):
                late += 1
    assert 0 < late < 60


def test_usage_subscriber_paging_keeps_the_filter():
    with Sim(scenario(pageSize=2, recordsPerHour=60), now=NOW) as s:
        tok = stack_token(s)
        sub = s.world()["tenants"][1]["subscriptions"][1]
        r = s.get(s.usage_path(HOUR, subscriber=sub), token=tok).json()
        got = list(r["value"])
        while "nextLink" in r:
            assert "&subscriberId=" + sub in r["nextLink"]
            r = s.get(r["nextLink"], token=tok).json()
            got += r["value"]
        assert len(got) == 10  # 60 records over 6 subscriptions
        assert {v["properties"]["subscriptionId"] for v in got} == {sub}
        # a token from one subscriber's query does not serve another's
        other = s.world()["tenants"][0]["subscriptions"][0]
        first = s.get(s.usage_path(HOUR, subscriber=sub), token=tok).json()["nextLink"]
        bad = first.replace("subscriberId=" + sub, "subscriberId=" + other)
        r = s.get(bad, token=tok)
        assert r.status == 400 and r.json()["error"]["code"] == "InvalidContinuationToken"


def test_usage_subscriber_filter(sim):
    tok = stack_token(sim)
    sub = sim.world()["tenants"][0]["subscriptions"][0]
    doc = sim.get(sim.usage_path(HOUR, subscriber=sub), token=tok).json()
    assert doc["value"]
    assert all(v["properties"]["subscriptionId"] == sub for v in doc["value"])


def test_usage_validates_query(sim):
    tok = stack_token(sim)
    w = sim.world()
    base = "/subscriptions/%s/providers/Microsoft.Commerce.Admin/subscriberUsageAggregates" % \
        w["providerSubscription"]
    two_hours = base + "?reportedStartTime=2026-11-01T10%3A00%3A00Z&reportedEndTime=" \
        "2026-11-01T12%3A00%3A00Z&aggregationGranularity=Hourly&api-version=2015-06-01-preview"
    r = sim.get(two_hours, token=tok)
    assert r.status == 400 and shape(r.json()) == shape(load_testdata("usage-error-future.json"))
    r = sim.get(sim.usage_path(HOUR, api_version="2099-01-01"), token=tok)
    assert r.status == 400 and r.json()["error"]["code"] == "InvalidApiVersionParameter"
    r = sim.get(sim.usage_path("2026-11-03T00:00:00Z"), token=tok)
    assert r.status == 400
    assert r.json() == load_testdata("usage-error-future.json")


OTHER_SUB = "0badc0de-0000-4000-8000-000000000000"


def test_usage_and_subscriptions_only_for_the_provider_subscription(sim):
    tok = stack_token(sim)
    provider = sim.world()["providerSubscription"]
    subs_path = ("/subscriptions/%s/providers/Microsoft.Subscriptions.Admin/subscriptions"
                 "?api-version=2015-11-01")
    for path in (sim.usage_path(HOUR).replace(provider, OTHER_SUB), subs_path % OTHER_SUB):
        r = sim.get(path, token=tok)
        assert r.status == 404, path
        assert r.json() == {"error": {"code": "SubscriptionNotFound", "message":
                                      "The subscription '%s' could not be found." % OTHER_SUB}}
    # ARM compares subscription ids without regard to case
    for path in (sim.usage_path(HOUR).replace(provider, provider.upper()),
                 subs_path % provider.upper()):
        assert sim.get(path, token=tok).status == 200, path


def test_registration_in_another_subscription_not_found(sim):
    reg = sim.registration_path()
    r = sim.get(reg.replace(sim.world()["defaultSubscription"], OTHER_SUB) +
                "?api-version=2017-06-01", token=arm_token(sim))
    assert r.status == 404
    assert r.json()["error"] == {"code": "SubscriptionNotFound", "message":
                                 "The subscription '%s' could not be found." % OTHER_SUB}


def test_clock_moves_future_boundary(sim):
    tok = stack_token(sim)
    assert sim.get(sim.usage_path("2026-11-03T00:00:00Z"), token=tok).status == 400
    sim.set_clock(advance=3600)
    try:
        assert sim.get(sim.usage_path("2026-11-03T00:00:00Z"), token=tok).status == 200
    finally:
        sim.set_clock(now=NOW)


def test_subscriptions_match_testdata(sim):
    r = sim.get("/subscriptions/%s/providers/Microsoft.Subscriptions.Admin/subscriptions"
                "?api-version=2015-11-01" % sim.world()["providerSubscription"],
                token=stack_token(sim))
    assert r.status == 200
    doc = r.json()
    assert shape(doc) == shape(load_testdata("subscriptions.json"))
    assert len(doc["value"]) == 6
    tenants = {t["tenantId"]: t["subscriptions"] for t in sim.world()["tenants"]}
    for v in doc["value"]:
        assert v["subscriptionId"] in tenants[v["tenantId"]]


def test_subscriptions_paged():
    with Sim(scenario(subscriptionPageSize=4), now=NOW) as s:
        tok = stack_token(s)
        doc = s.get("/subscriptions/%s/providers/Microsoft.Subscriptions.Admin/subscriptions"
                    "?api-version=2015-11-01" % s.world()["providerSubscription"], token=tok).json()
        assert len(doc["value"]) == 4
        doc2 = s.get(doc["nextLink"], token=tok).json()
        assert len(doc2["value"]) == 2 and "nextLink" not in doc2


def test_registration_and_customer_subscriptions(sim):
    tok = arm_token(sim)
    reg = sim.registration_path()
    r = sim.get(reg + "?api-version=2017-06-01", token=tok)
    assert r.status == 200
    assert shape(r.json()) == shape(load_testdata("registration.json"))
    assert r.json()["id"] == reg
    r = sim.get(reg + "/customerSubscriptions?api-version=2017-06-01", token=tok)
    doc = r.json()
    assert shape(doc) == shape(load_testdata("customer-subscriptions.json"))
    assert len(doc["value"]) == 2
    for v in doc["value"]:
        assert v["id"].split("/")[-1] == v["id"].split("/")[-1].upper()
    r = sim.get(reg.replace("azurestack-", "other-") + "?api-version=2017-06-01", token=tok)
    assert r.status == 404
    assert r.json() == load_testdata("arm-error-registration-not-found.json")


def test_customer_subscription_put_replaces_and_delete():
    with Sim(scenario(), now=NOW) as s:
        tok = arm_token(s)
        w = s.world()
        reg = w["registration"]["id"]
        t3 = w["tenants"][2]["tenantId"]
        new = "0f0e0d0c-0b0a-4909-8807-060504030201"
        r = s.request("PUT", reg + "/customerSubscriptions/%s?api-version=2017-06-01" % new.upper(),
                      body={"properties": {"tenantId": t3}}, token=tok)
        assert r.status == 201 and r.body == b"", r.body
        r = s.get(reg + "/customerSubscriptions/%s?api-version=2017-06-01" % new, token=tok)
        assert r.json()["properties"]["tenantId"] == t3
        newer = "1f0e0d0c-0b0a-4909-8807-060504030201"
        r = s.request("PUT", reg + "/customerSubscriptions/%s?api-version=2017-06-01" % newer,
                      body={"properties": {"tenantId": t3}}, token=tok)
        assert r.status == 201
        ids = [v["id"].split("/")[-1].lower() for v in
               s.get(reg + "/customerSubscriptions?api-version=2017-06-01", token=tok).json()["value"]]
        assert newer in ids and new not in ids and len(ids) == 3
        assert s.world()["tenants"][2]["customerSubscription"] == newer
        for _ in range(2):  # 204 whether it was there or not
            r = s.request("DELETE", reg + "/customerSubscriptions/%s?api-version=2017-06-01" %
                          newer, token=tok)
            assert r.status == 204 and r.body == b""
        assert s.world()["tenants"][2].get("customerSubscription") is None


def test_customer_subscriptions_paged():
    with Sim(scenario(tenants=5, registeredTenants=5, armPageSize=2), now=NOW) as s:
        tok = arm_token(s)
        doc = s.get(s.registration_path() + "/customerSubscriptions?api-version=2017-06-01",
                    token=tok).json()
        seen = [v["id"] for v in doc["value"]]
        while "nextLink" in doc:
            doc = s.get(doc["nextLink"], token=tok).json()
            seen += [v["id"] for v in doc["value"]]
        assert len(seen) == 5 == len(set(seen))


def test_unknown_path_is_arm_404(sim):
    r = sim.get("/no/such/thing")
    assert r.status == 404
    assert set(r.json()["error"]) == {"code", "message"}


def test_scenario_explicit_tenants():
    sc = scenario(tenants=[
        {"tenantId": "104edf09-7fc1-459f-8c4e-b062db480b90", "name": "fabrikam",
         "subscriptions": ["c79389af-4480-48cc-8fa2-ee8ced8e843d"],
         "registered": "e09a4e93-29a7-4eba-a6d4-76202383f07f"},
        {"tenantId": "d9b782d5-d098-4374-8f2c-3907cc34611c", "subscriptions": 1},
    ], registration={"subscriptionId": "dd8597b4-8739-4467-8b10-f8679f62bfbf"})
    with Sim(sc, now=NOW) as s:
        w = s.world()
        assert w["defaultSubscription"] == "dd8597b4-8739-4467-8b10-f8679f62bfbf"
        assert w["tenants"][0]["customerSubscription"] == "e09a4e93-29a7-4eba-a6d4-76202383f07f"
        assert w["tenants"][0]["subscriptions"] == ["c79389af-4480-48cc-8fa2-ee8ced8e843d"]
        assert w["tenants"][1].get("customerSubscription") is None


def test_bad_scenario_refused(tmp_path):
    with pytest.raises(RuntimeError, match="recordsPerHour"):
        Sim(scenario(recordsPerHour=-1))


def test_unlisted_and_disabled_tenants():
    sc = scenario(tenants=[{"registered": True}, {"state": "Disabled"}, {"listed": False}])
    with Sim(sc, now=NOW) as s:
        w = s.world()
        doc = s.get("/subscriptions/%s/providers/Microsoft.Subscriptions.Admin/subscriptions"
                    "?api-version=2015-11-01" % w["providerSubscription"],
                    token=stack_token(s)).json()
        listed = {v["subscriptionId"]: v["state"] for v in doc["value"]}
        assert set(listed) == set(w["tenants"][0]["subscriptions"] + w["tenants"][1]["subscriptions"])
        assert {listed[x] for x in w["tenants"][1]["subscriptions"]} == {"Disabled"}
        hidden = set(w["tenants"][2]["subscriptions"])
        ev = s.expected_events()
        mine = [e for e in ev if e["sourceSubscriptionId"] in hidden]
        assert mine and all(e["chargeReason"] == "unknown-subscription" and e["tenantId"] is None
                            and e["subscriptionId"] == w["defaultSubscription"] for e in mine)
        others = [e for e in ev if e["sourceSubscriptionId"] not in hidden]
        assert {e["chargeReason"] for e in others} == {"registered", "default"}


def test_command_line_overrides_the_scenario():
    hours = {"from": "2026-11-01T00:00:00Z", "count": 48}
    args = ["--seed", "7", "--records-per-hour", "5", "--hours", "3"]
    with Sim(scenario(seed=42, recordsPerHour=20, hours=hours), now=NOW,
             extra_args=args) as s, \
            Sim(scenario(seed=7, recordsPerHour=5, hours=dict(hours, count=3)), now=NOW) as ref:
        w = s.world()
        assert (w["seed"], w["recordsPerHour"], w["hours"]["count"]) == (7, 5, 3)
        for hour in ("2026-11-01T02:00:00Z", "2026-11-01T03:00:00Z"):
            got = s.get(s.usage_path(hour), token=stack_token(s))
            want = ref.get(ref.usage_path(hour), token=stack_token(ref))
            assert got.status == want.status == 200
            assert got.body == want.body
            assert len(got.json()["value"]) == (5 if hour.startswith("2026-11-01T02") else 0)


def local_address():
    """A non-loopback IPv4 address of this machine, or None."""
    import socket
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
        try:
            u.connect(("192.0.2.1", 9))  # no packet is sent: this only picks a source address
            addr = u.getsockname()[0]
        except OSError:
            return None
    return None if addr.startswith("127.") else addr


def test_control_api_is_loopback_only():
    import http.client
    import ssl
    addr = local_address()
    if not addr:
        pytest.skip("no non-loopback IPv4 address to reach the simulator from")
    with Sim(scenario(), now=NOW, extra_args=["--listen", "0.0.0.0:0"]) as s:
        assert s.world()["seed"] == 42  # from loopback
        ctx = ssl.create_default_context(cafile=s.ca_file)
        ctx.check_hostname = False  # the test certificate names localhost and 127.0.0.1
        for method, path in (("GET", "/_sim/world"), ("POST", "/_sim/reset"),
                             ("GET", "/_sim/ledger/summary")):
            conn = http.client.HTTPSConnection(addr, s.port, context=ctx, timeout=10)
            try:
                conn.request(method, path)
                r = conn.getresponse()
                body = json.loads(r.read())
            finally:
                conn.close()
            assert r.status == 403, path
            assert body == {"error": {"code": "Forbidden",
                                      "message": "The control API is loopback only."}}
        # the simulated Azure itself answers from anywhere
        conn = http.client.HTTPSConnection(addr, s.port, context=ctx, timeout=10)
        try:
            conn.request("GET", "/metadata/endpoints?api-version=2015-01-01")
            assert conn.getresponse().status == 200
        finally:
            conn.close()


def test_help_and_version():
    import subprocess
    from azsim import sim_binary
    out = subprocess.run([sim_binary(), "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.startswith("azs-sim ")
    out = subprocess.run([sim_binary(), "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "--scenario" in out.stdout
    out = subprocess.run([sim_binary(), "--bogus"], capture_output=True, text=True)
    assert out.returncode == 2


@pytest.mark.parametrize("name", ["default.json", "testdata-world.json", "bench.json"])
def test_example_scenarios_load(name):
    import os
    with open(os.path.join(os.path.dirname(__file__), "scenarios", name)) as f:
        sc = json.load(f)
    with open(os.path.join(os.path.dirname(__file__), "scenarios", "faults-flaky.json")) as f:
        plan = json.load(f)
    with Sim(sc, now=NOW) as s:
        w = s.world()
        assert s.set_faults(plan)[0]["times"] == 2
        if name == "testdata-world.json":
            assert w["registration"]["id"] == load_testdata("registration.json")["id"]
            assert w["defaultSubscription"] == "dd8597b4-8739-4467-8b10-f8679f62bfbf"
            assert s.get("/metadata/endpoints?api-version=2015-01-01").json()[
                "authentication"]["loginEndpoint"].endswith("/adfs/")
            ev = s.expected_events(since="2026-11-01T10:00:00Z", until="2026-11-01T11:00:00Z")
            by_sub = {e["sourceSubscriptionId"]: e["subscriptionId"] for e in ev}
            # the README of the test data: Fabrikam → e09a4e93-…, Woodgrove → default
            assert by_sub.get("5e3b1c44-7f0e-4d8a-b1a9-2c6f0d4e8a21") == \
                "dd8597b4-8739-4467-8b10-f8679f62bfbf"
            assert by_sub.get("c79389af-4480-48cc-8fa2-ee8ced8e843d") == \
                "e09a4e93-29a7-4eba-a6d4-76202383f07f"
            assert s.expected_events(since="2026-11-01T03:00:00Z",
                                     until="2026-11-01T04:00:00Z") == []


def test_daemon_config_helper_passes_check_config(tmp_path):
    import os
    import subprocess
    from azsim import write_config
    daemon = os.path.join(os.environ.get("AZS_BUILD_DIR", ""), "daemon", "azs-usaged")
    if not os.path.exists(daemon):
        pytest.skip("azs-usaged is not built in this build directory")
    with Sim(scenario(), now=NOW) as s:
        for cert in (False, True):
            path = write_config(str(tmp_path / ("d%d.conf" % cert)),
                                s.daemon_config(str(tmp_path), certificate=cert))
            out = subprocess.run([daemon, "--check-config", "-c", path], capture_output=True,
                                 text=True)
            assert out.returncode == 0, out.stdout + out.stderr
            assert "configuration OK" in out.stdout + out.stderr


# -- issue 9: record key, split aggregates, quantities like a stamp, AD FS --------------------

def usage_records(s, hour, tok, subscriber=None):
    """Every record of one reported hour, following nextLinks."""
    doc = s.get(s.usage_path(hour, subscriber=subscriber), token=tok).json()
    got = list(doc["value"])
    while "nextLink" in doc:
        doc = s.get(doc["nextLink"], token=tok).json()
        got += doc["value"]
    return got


def test_record_key_ends_with_the_canonical_instance_data(sim):
    """The key hashes the instanceData parsed and written again (members sorted, no spaces,
    UTF-8), not the resource URI: served with members in the API's order and with \\u00eb
    escapes, the canonical text is written here by hand and must give the simulator's key."""
    import hashlib
    tok = stack_token(sim)
    recs = []
    for h in range(8, 14):
        hour = "2026-11-01T%02d:00:00Z" % h
        recs += [(hour, r) for r in usage_records(sim, hour, tok)]
    expected = {e["usageEventId"]: e for e in sim.expected_events(
        since="2026-11-01T08:00:00Z", until="2026-11-01T14:00:00Z")}
    escaped = 0
    for hour, rec in recs:
        p = rec["properties"]
        text = p["instanceData"]
        assert text.startswith('{"Microsoft.Resources":{"resourceUri":')  # the API's order
        escaped += "\\u00eb" in text
        inst = json.loads(text)["Microsoft.Resources"]

        def obj(v):
            if v is None:
                return "null"
            return "{" + ",".join('"%s":"%s"' % (k, v[k].replace("\\", "\\\\").replace(
                '"', '\\"')) for k in sorted(v)) + "}"
        canonical = ('{"Microsoft.Resources":{"additionalInfo":%s,"location":"%s",'
                     '"resourceUri":"%s","tags":%s}}' % (obj(inst["additionalInfo"]),
                                                         inst["location"], inst["resourceUri"],
                                                         obj(inst["tags"])))
        fields = [hour, p["subscriptionId"], p["meterId"].lower().replace("-", ""),
                  p["usageStartTime"].replace("+00:00", "Z"),
                  p["usageEndTime"].replace("+00:00", "Z"), canonical]
        key = hashlib.sha256("\n".join(fields).encode()).hexdigest()
        assert key == record_key(hour, rec)
        assert key in expected, rec
        assert expected[key]["tags"] == inst["tags"]
        assert expected[key]["additionalInfo"] == inst["additionalInfo"]
    assert len(recs) == len(expected) == 6 * 20
    assert escaped > 0  # some instanceData writes its non-ASCII tag value as \u00eb


def aggregate(rec):
    p = rec["properties"]
    return (p["subscriptionId"], p["meterId"], p["usageStartTime"],
            json.loads(p["instanceData"])["Microsoft.Resources"]["resourceUri"])


def test_split_aggregates_are_two_records_with_two_keys():
    """splitPercent: one resource, meter and usage hour reported twice in one reported hour,
    with other tags or additionalInfo (a VM resized), the hour shared between the two."""
    from decimal import Decimal
    with Sim(scenario(splitPercent=50, recordsPerHour=40), now=NOW) as s:
        tok = stack_token(s)
        splits = resized = 0
        for h in range(0, 23):
            hour = "2026-11-01T%02d:00:00Z" % h
            recs = usage_records(s, hour, tok)
            keys = [record_key(hour, r) for r in recs]
            assert len(set(keys)) == len(recs) == 40
            assert sorted(keys) == sorted(e["usageEventId"] for e in s.expected_events(
                since=hour, until="2026-11-01T%02d:00:00Z" % (h + 1)))
            groups = {}
            for r in recs:
                groups.setdefault(aggregate(r), []).append(r)
            for parts in groups.values():
                if len(parts) == 1:
                    continue
                assert len(parts) == 2
                splits += 1
                a, b = (json.loads(p["properties"]["instanceData"])["Microsoft.Resources"]
                        for p in parts)
                assert (a["tags"], a["additionalInfo"]) != (b["tags"], b["additionalInfo"])
                if a["additionalInfo"] != b["additionalInfo"]:
                    resized += 1
                if parts[0]["properties"]["meterId"] == "6DAB500F-A4FD-49C4-956D-229BB9C8C793":
                    total = sum(Decimal(str(p["properties"]["quantity"])) for p in parts)
                    assert total <= 1  # VM hours of one VM and hour
        assert splits > 50 and resized > 0
    with Sim(scenario(splitPercent=0, recordsPerHour=40), now=NOW) as s:
        recs = usage_records(s, HOUR, stack_token(s))
        assert len({aggregate(r) for r in recs}) == len(recs)


def meter_units():
    with open(TESTDATA + "/meters.tsv") as f:
        rows = [line.rstrip("\n").split("\t") for line in f][1:]
    return {r[0].lower().replace("-", ""): r[2] for r in rows}


def test_usage_quantities_look_like_a_stamp():
    """Quantities per meter as a real stamp reports them (units of meters.tsv): VM hours at most
    1 per VM and hour, virtual core hours at most the VM's cores, IP and App Service hours 0..1,
    capacity in GB-hours with many decimals, disk months a 730th of a month an hour; and over
    two days at most 48 VM hours per VM."""
    import re as _re
    from decimal import Decimal
    units = meter_units()
    cores = {"Standard_D2_v2": 2, "Standard_D4_v2": 8}
    sc = scenario(recordsPerHour=64, resourcesPerSubscription=8, latePercent=0)
    with Sim(sc, now=NOW) as s:
        ev = s.expected_events()
        seen_units = set()
        per_hour = {}
        many_decimals = 0
        for e in ev:
            q = Decimal(e["quantity"])
            unit = units[e["meterId"].lower().replace("-", "")]
            seen_units.add(unit)
            assert q >= 0
            if unit in ("VM hours", "IP addresses", "1 hour", "Per SNI SSL Binding",
                        "Per IP Based SSL Binding", "(blank)"):
                assert q <= 1, e
            elif unit == "Virtual core hours":
                info = e["additionalInfo"] or {}
                assert q <= cores.get(info.get("ServiceType"), 1), e
            elif unit == "Count of Disks*month":
                assert q * 730 <= 1, e
            elif unit == "GB*hours":
                many_decimals += len(e["quantity"].partition(".")[2]) >= 10
            k = (e["resourceUri"], e["meterId"], e["usageStartTime"], e["reportedStartTime"])
            per_hour[k] = per_hour.get(k, 0) + q
            assert _re.fullmatch(r"[0-9]+(\.[0-9]+)?", e["quantity"])
        assert {"VM hours", "Virtual core hours", "IP addresses", "GB*hours",
                "Count of Disks*month"} <= seen_units
        assert many_decimals > 0
        for (uri, meter, _, _), q in per_hour.items():  # split parts share the hour
            if units[meter.lower().replace("-", "")] == "VM hours":
                assert q <= 1
        vm_hours = {}
        for e in ev:
            if units[e["meterId"].lower().replace("-", "")] == "VM hours":
                vm_hours[e["resourceUri"]] = vm_hours.get(e["resourceUri"], 0) + \
                    Decimal(e["quantity"])
        assert vm_hours and max(vm_hours.values()) <= 48


def test_adfs_token_answer_in_adfs_shape():
    """AD FS answers token_type bearer, expires_in a number, no expires_on; its errors carry
    an MSIS code in error_description and none of Azure AD's error_codes or trace ids."""
    with Sim(scenario(identity="adfs", tokenLifetime=1800), now=NOW) as s:
        aud = s.audiences()
        r = s.token_request(aud["stack"], secret=STACK_CLIENT_SECRET, adfs=True)
        assert r.status == 200
        doc = r.json()
        assert doc["token_type"] == "bearer"
        assert doc["expires_in"] == 1800 and isinstance(doc["expires_in"], int)
        assert "expires_on" not in doc and "not_before" not in doc
        assert s.get(s.usage_path(HOUR), token=doc["access_token"]).status == 200
        answers = [
            s.token_request(aud["stack"], secret="wrong", adfs=True),
            s.token_request(aud["stack"], client_id="00000000-0000-4000-8000-000000000000",
                            secret="x", adfs=True),
            s.token_request(aud["arm"], AZURE_CLIENT_ID, secret=AZURE_CLIENT_SECRET, adfs=True),
            s.token_request(aud["stack"], adfs=True),
            s.token_request(aud["stack"], CERT_CLIENT_ID, adfs=True, assertion=make_assertion(
                CERT_CLIENT_ID, s.token_endpoint(adfs=True), thumbprint="AAAA")),
        ]
        for r in answers:
            assert r.status == 400, r.body
            doc = r.json()
            assert set(doc) == {"error", "error_description"}, doc
            assert re.match(r"MSIS\d{4}: ", doc["error_description"]), doc
            assert "AADSTS" not in doc["error_description"]
        assert answers[0].json()["error"] == "invalid_client"
        assert answers[0].json()["error_description"].startswith("MSIS9622:")
        assert answers[2].json()["error"] == "invalid_resource"
        # a certificate assertion made for the AD FS endpoint works
        jwt = make_assertion(CERT_CLIENT_ID, s.token_endpoint(adfs=True))
        r = s.token_request(aud["stack"], CERT_CLIENT_ID, assertion=jwt, adfs=True)
        assert r.status == 200 and r.json()["token_type"] == "bearer"
        # a fault on the AD FS endpoint answers in AD FS's shape too
        s.set_faults([{"endpoint": "token", "status": 503, "times": 1}])
        r = s.token_request(aud["stack"], secret=STACK_CLIENT_SECRET, adfs=True)
        assert r.status == 503 and set(r.json()) == {"error", "error_description"}
        assert r.json()["error_description"].startswith("MSIS")
    # Azure AD keeps its own shape
    with Sim(scenario(), now=NOW) as s:
        doc = s.token_request(s.audiences()["arm"], AZURE_CLIENT_ID,
                              secret=AZURE_CLIENT_SECRET).json()
        assert doc["token_type"] == "Bearer" and isinstance(doc["expires_on"], str)


# -- issue 10: customerSubscriptions answers ----------------------------------------------------

def test_customer_subscription_answer_forms():
    """PUT answers 201 with an empty body and DELETE 204 by default (as documented); /_sim/arm
    and the scenario's armAnswers choose the other documented forms and an empty list without a
    body or as {}."""
    with Sim(scenario(), now=NOW) as s:
        tok = arm_token(s)
        w = s.world()
        reg = w["registration"]["id"]
        t3 = w["tenants"][2]["tenantId"]
        sub = "0f0e0d0c-0b0a-4909-8807-060504030201"
        one = reg + "/customerSubscriptions/%s?api-version=2017-06-01" % sub
        assert s.get("/_sim/arm").json() == {"put": "201-empty", "delete": "204",
                                             "emptyList": "value"}

        def put():
            return s.request("PUT", one, body={"properties": {"tenantId": t3}}, token=tok)

        def delete():
            return s.request("DELETE", one, token=tok)
        r = put()
        assert (r.status, r.body) == (201, b"")
        for form, status in (("201-body", 201), ("200-body", 200), ("200-empty", 200)):
            assert s.post("/_sim/arm", {"put": form}).json()["put"] == form
            r = put()
            assert r.status == status, form
            if form.endswith("body"):
                assert r.json()["properties"]["tenantId"] == t3
                assert shape(r.json()) == shape(load_testdata("customer-subscriptions.json")[
                    "value"][0])
            else:
                assert r.body == b""
        assert s.arm_answers(delete="200-204")["delete"] == "200-204"
        assert delete().status == 200
        assert delete().status == 204
        s.post("/_sim/arm", {"delete": "204"})
        put()
        assert delete().status == 204
        # an empty list: {"value":[]} by default, or no body, or {}
        for t in w["tenants"]:
            if t["customerSubscription"]:
                s.request("DELETE", reg + "/customerSubscriptions/%s?api-version=2017-06-01" %
                          t["customerSubscription"], token=tok)
        lst = reg + "/customerSubscriptions?api-version=2017-06-01"
        assert s.get(lst, token=tok).json() == {"value": []}
        s.post("/_sim/arm", {"emptyList": "none"})
        r = s.get(lst, token=tok)
        assert (r.status, r.body) == (200, b"")
        s.post("/_sim/arm", {"emptyList": "object"})
        assert s.get(lst, token=tok).json() == {}
        put()  # a list with entries keeps its value array
        assert len(s.get(lst, token=tok).json()["value"]) == 1
        assert s.post("/_sim/arm", {"put": "202"}).status == 400
        s.reset()
        assert s.get("/_sim/arm").json()["emptyList"] == "value"
    with Sim(scenario(armAnswers={"put": "200-body", "delete": "200-204"}), now=NOW) as s:
        tok = arm_token(s)
        reg = s.world()["registration"]["id"]
        one = reg + "/customerSubscriptions/%s?api-version=2017-06-01" % sub
        r = s.request("PUT", one, body={"properties": {"tenantId": t3}}, token=tok)
        assert r.status == 200 and r.json()["properties"]["tenantId"] == t3
        assert s.request("DELETE", one, token=tok).status == 200
        s.reset()
        assert s.get("/_sim/arm").json()["put"] == "200-body"  # the scenario's again
    with pytest.raises(RuntimeError, match="armAnswers"):
        Sim(scenario(armAnswers={"delete": "410"}))
