"""azs-usagectl's registry verbs against azs-sim over HTTPS with the test CA (ARCHITECTURE.md
sections 5 and 9).

Proves: `registration refresh` fetches the registration and its customer subscriptions with the
[azure] identity and writes the cache, which `registration show` prints, also when the list is
empty (no body, {}, an empty value); a failed refresh keeps the cache. `tenant add` and `tenant
remove` do the documented PUT and DELETE (ids lower-cased) and take every documented success
form (201 empty, 201 or 200 with the entry, 200 empty; 204, 200, 204 when already absent), then
refresh the cache; replacing a tenant's customer subscription or moving another tenant's needs
--replace and sends nothing without it; every ARM error code of section 9 is shown with its code,
message and the operator's action and exits 1; MetadataResolverBadGatewayError and 5xx answers
are retried. `lookup` and `tenants` answer from a store seeded by `store-torture seed-registry`
(a registered tenant with a gone subscription, an unregistered one, a delegated provider's, a
subscription the tenant cache does not know), with exact totals. `status`, `registration` and
`lookup` say when the cache has gone stale (older than max_staleness).
"""
import json
import os
import subprocess
from collections import defaultdict
from decimal import Decimal, getcontext

import pytest
from azsim import Sim, scenario, write_config
from waiting import limit

getcontext().prec = 200  # exact: no sum here has that many digits

BUILD = os.environ.get("AZS_BUILD_DIR", "")
CTL = os.path.join(BUILD, "daemon", "azs-usagectl")
TORTURE = os.path.join(BUILD, "tests", "store", "store-torture")

# the ids of store-torture seed-registry
PROVIDER = "eeeeeeee-0000-4000-8000-000000000001"
DELEGATED = "dddddddd-0000-4000-8000-0000000000dd"
TENANT_A = "a0000000-0000-4000-8000-00000000000a"
TENANT_B = "b0000000-0000-4000-8000-00000000000b"
TENANT_D = "d0000000-0000-4000-8000-00000000000d"
SUB_A1 = "5a000000-0000-4000-8000-0000000000a1"
SUB_A2 = "5a000000-0000-4000-8000-0000000000a2"
SUB_B1 = "5b000000-0000-4000-8000-0000000000b1"
SUB_D1 = "5d000000-0000-4000-8000-0000000000d1"
SUB_X = "5f000000-0000-4000-8000-0000000000ff"
CUSTOMER_A = "c0000000-0000-4000-8000-00000000000a"
CUSTOMER_B = "c0000000-0000-4000-8000-00000000000b"
CUSTOMER_NEW = "c0000000-0000-4000-8000-0000000000ee"

# section 9's codes: what the operator must read for each (the simulator sends its messages)
ARM_ERRORS = {
    "UnauthorizedCspRegistration": (403, "multi-tenancy is not approved"),
    "CustomerSubscriptionsNotAllowed": (400, "Capacity registrations cannot add tenants"),
    "RegistrationNotFound": (404, "[registration] subscription_id, resource_group and name"),
    "BadCustomerSubscriptionId": (400, "customer's Azure subscription id"),
    "InvalidCustomerSubscriptionId": (400, "customer's Azure subscription id"),
    "CustomerSubscriptionNotFound": (404, "check the id with the customer"),
    "InvalidCSPSubscription": (400, "not a CSP subscription of this partner"),
}
ARM_MESSAGES = {
    "RegistrationNotFound": "The provided registration was not found.",
    "UnauthorizedCspRegistration":
        "The provided registration name is not approved to use multi-tenancy.",
    "CustomerSubscriptionsNotAllowed": "Customer subscriptions are not allowed for "
                                       "registrations with the Capacity billing model.",
    "BadCustomerSubscriptionId": "The provided customer subscription id is not valid.",
    "InvalidCustomerSubscriptionId": "The provided customer subscription id is invalid.",
    "CustomerSubscriptionNotFound": "The customer subscription was not found.",
    "InvalidCSPSubscription": "The provided subscription is not a CSP subscription.",
    "MetadataResolverBadGatewayError": "The metadata resolver returned a bad gateway error.",
}

pytestmark = pytest.mark.skipif(not (os.access(CTL, os.X_OK) and os.access(TORTURE, os.X_OK)),
                                reason="azs-usagectl or store-torture not built")


def world_scenario():
    return scenario(providerSubscription=PROVIDER, tenants=[
        {"tenantId": TENANT_A, "name": "alpha", "subscriptions": [SUB_A1],
         "registered": CUSTOMER_A},
        {"tenantId": TENANT_B, "name": "beta", "subscriptions": [SUB_B1], "registered": False},
        {"tenantId": TENANT_D, "name": "delta", "subscriptions": [SUB_D1],
         "delegatedProvider": DELEGATED},
    ])


@pytest.fixture(scope="module")
def sim():
    with Sim(world_scenario(), now="2026-11-03T00:00:00Z") as s:
        yield s


class Env:
    """A seeded store, a configuration pointing at the simulator, and the ctl runner."""

    def __init__(self, sim, directory):
        self.sim = sim
        self.dir = directory
        self.db = os.path.join(directory, "usage.db")
        r = subprocess.run([TORTURE, "seed-registry", self.db], capture_output=True, text=True,
                           timeout=limit(60))
        assert r.returncode == 0, r.stdout + r.stderr
        self.manifest = json.loads(r.stdout)
        self.conf = os.path.join(directory, "azs-usaged.conf")
        self.write()

    def write(self, **sections):
        write_config(self.conf, self.sim.daemon_config(self.dir, **sections))

    def ctl(self, *args):
        env = {k: v for k, v in os.environ.items() if k != "CREDENTIALS_DIRECTORY"}
        return subprocess.run([CTL, "-c", self.conf, *map(str, args)], capture_output=True,
                              text=True, timeout=limit(120), env=env)

    def ok(self, *args):
        r = self.ctl(*args)
        assert r.returncode == 0, f"{args}: {r.returncode}\n{r.stdout}\n{r.stderr}"
        return r.stdout

    def json(self, *args):
        return json.loads(self.ok("--json", *args))

    def arm_requests(self, method=None):
        return [q for q in self.sim.requests()["requests"]
                if q["endpoint"] == "arm" and (method is None or q["method"] == method)]

    def customer_of(self, tenant):
        for t in self.sim.world()["tenants"]:
            if t["tenantId"] == tenant:
                return t.get("customerSubscription")
        raise AssertionError(f"no tenant {tenant} in the simulator")


@pytest.fixture
def env(sim, tmp_path):
    sim.reset()  # registrations, ARM answers and faults back to the scenario
    return Env(sim, str(tmp_path))


# --- registration -------------------------------------------------------------------------

def test_registration_refresh_writes_the_cache_and_show_prints_it(env):
    r = env.ctl("registration")
    assert r.returncode == 1
    assert "registration refresh" in r.stderr  # what to do about it

    out = env.ok("registration", "refresh")
    assert "refreshed:" in out and CUSTOMER_A in out
    w = env.sim.world()
    shown = env.json("registration", "show")
    assert shown["id"] == w["registration"]["id"].lower()
    assert shown["defaultSubscription"] == w["defaultSubscription"]
    assert shown["customerSubscriptions"] == [
        {"subscriptionId": CUSTOMER_A, "tenantId": TENANT_A, "ambiguous": False}]
    assert shown["stale"] is False
    assert shown["billingModel"] == "PayAsYouUse"
    # the verb alone is "show" (compared as JSON: the table's "N s ago" moves with the clock)
    alone = env.json("registration")
    for member in ("id", "defaultSubscription", "customerSubscriptions", "refreshedAt"):
        assert alone[member] == shown[member], member
    # the [azure] identity asked ARM, with a bearer token every time
    assert all(q["bearer"] for q in env.arm_requests())


@pytest.mark.parametrize("form", ["none", "object", "value"])
def test_registration_refresh_takes_an_empty_list(env, form):
    env.ok("tenant", "remove", CUSTOMER_A)
    env.sim.arm_answers(empty_list=form)
    env.ok("registration", "refresh")
    assert env.json("registration")["customerSubscriptions"] == []


def test_failed_refresh_keeps_the_cache(env):
    before = env.json("registration", "refresh")
    env.sim.set_faults([{"endpoint": "arm", "code": "RegistrationNotFound", "status": 404}])
    r = env.ctl("registration", "refresh")
    assert r.returncode == 1
    assert "RegistrationNotFound" in r.stderr
    after = env.json("registration")
    assert after["refreshedAt"] == before["refreshedAt"]
    assert after["customerSubscriptions"] == before["customerSubscriptions"]


def test_wrong_registration_name_shows_the_advice(env):
    env.write(registration={"name": "azurestack-not-this-one"})
    r = env.ctl("tenant", "add", CUSTOMER_B, "--tenant-id", TENANT_B)
    assert r.returncode == 1
    assert "RegistrationNotFound" in r.stderr
    assert ARM_MESSAGES["RegistrationNotFound"] in r.stderr
    assert "what to do:" in r.stderr and "resource_group and name" in r.stderr
    assert env.arm_requests("PUT") == []


# --- tenant add / remove ------------------------------------------------------------------

@pytest.mark.parametrize("form,status,body", [("201-empty", 201, False), ("201-body", 201, True),
                                              ("200-body", 200, True), ("200-empty", 200, False)])
def test_tenant_add_every_success_form(env, form, status, body):
    env.sim.arm_answers(put=form)
    out = env.json("tenant", "add", CUSTOMER_B.upper(), "--tenant-id", TENANT_B.upper())
    assert out["httpStatus"] == status
    assert out["answerBody"] is body
    assert out["customerSubscription"] == CUSTOMER_B
    assert out["tenantId"] == TENANT_B
    assert out["cacheRefreshed"] is True
    assert env.customer_of(TENANT_B) == CUSTOMER_B
    (put,) = env.arm_requests("PUT")
    assert put["path"].endswith("/customerSubscriptions/" + CUSTOMER_B)  # lower-cased
    assert "api-version=2017-06-01" in put["query"]
    # the cache follows at once
    assert {"subscriptionId": CUSTOMER_B, "tenantId": TENANT_B, "ambiguous": False} in \
        env.json("registration")["customerSubscriptions"]
    assert env.json("lookup", SUB_B1)["chargeReason"] == "registered"


def test_tenant_add_same_again_changes_nothing(env):
    r = env.ok("tenant", "add", CUSTOMER_A, "--tenant-id", TENANT_A)
    assert "nothing to do" in r
    assert env.arm_requests("PUT") == []


@pytest.mark.parametrize("form,status", [("204", 204), ("200-204", 200)])
def test_tenant_remove_forms(env, form, status):
    env.sim.arm_answers(delete=form)
    out = env.json("tenant", "remove", CUSTOMER_A)
    assert out["httpStatus"] == status
    assert out["wasRegistered"] is True
    assert out["tenantId"] == TENANT_A
    assert env.customer_of(TENANT_A) is None
    assert env.json("registration")["customerSubscriptions"] == []
    assert env.json("lookup", SUB_A1)["chargeReason"] == "default"
    # already absent: 204, still a success
    out = env.json("tenant", "remove", CUSTOMER_A)
    assert out["httpStatus"] == 204 and out["wasRegistered"] is False
    assert "was not registered" in env.ok("tenant", "remove", CUSTOMER_A)


def test_replacing_needs_replace(env):
    # A has CUSTOMER_A: another customer subscription for A replaces it
    r = env.ctl("tenant", "add", CUSTOMER_NEW, "--tenant-id", TENANT_A)
    assert r.returncode == 1
    assert "--replace" in r.stderr and CUSTOMER_A in r.stderr
    # CUSTOMER_A registered for A: adding it for B moves it away from A
    r = env.ctl("tenant", "add", CUSTOMER_A, "--tenant-id", TENANT_B)
    assert r.returncode == 1
    assert "--replace" in r.stderr and TENANT_A in r.stderr
    assert env.arm_requests("PUT") == []
    assert env.customer_of(TENANT_A) == CUSTOMER_A

    out = env.json("tenant", "add", CUSTOMER_NEW, "--tenant-id", TENANT_A, "--replace")
    assert out["replacedCustomerSubscription"] == CUSTOMER_A
    assert env.customer_of(TENANT_A) == CUSTOMER_NEW
    out = env.json("tenant", "add", CUSTOMER_NEW, "--tenant-id", TENANT_B, "--replace")
    assert out["movedFromTenant"] == TENANT_A
    assert env.customer_of(TENANT_B) == CUSTOMER_NEW
    assert env.customer_of(TENANT_A) is None


@pytest.mark.parametrize("code", sorted(ARM_ERRORS))
def test_tenant_add_arm_error_shows_code_message_and_action(env, code):
    status, advice = ARM_ERRORS[code]
    env.sim.set_faults([{"endpoint": "arm", "method": "PUT", "status": status, "code": code}])
    r = env.ctl("tenant", "add", CUSTOMER_B, "--tenant-id", TENANT_B)
    assert r.returncode == 1, r.stdout
    assert r.stdout == ""
    assert code in r.stderr
    assert ARM_MESSAGES[code] in r.stderr
    assert f"HTTP {status}" in r.stderr
    assert "what to do: " in r.stderr and advice in r.stderr, r.stderr
    assert len(env.arm_requests("PUT")) == 1  # not retried
    assert env.customer_of(TENANT_B) is None


def test_capacity_registration_refuses_tenants(tmp_path):
    with Sim(dict(world_scenario(), registration={"billingModel": "Capacity"}),
             now="2026-11-03T00:00:00Z") as capacity:
        e = Env(capacity, str(tmp_path))
        r = e.ctl("tenant", "add", CUSTOMER_B, "--tenant-id", TENANT_B)
        assert r.returncode == 1
        assert "CustomerSubscriptionsNotAllowed" in r.stderr
        assert "Capacity registrations cannot add tenants" in r.stderr


def test_tenant_remove_arm_error(env):
    env.sim.set_faults([{"endpoint": "arm", "method": "DELETE", "status": 403,
                         "code": "UnauthorizedCspRegistration"}])
    r = env.ctl("tenant", "remove", CUSTOMER_A)
    assert r.returncode == 1
    assert "UnauthorizedCspRegistration" in r.stderr and "what to do: " in r.stderr
    assert env.customer_of(TENANT_A) == CUSTOMER_A


@pytest.mark.parametrize("status,code", [(502, "MetadataResolverBadGatewayError"),
                                         (503, "ServiceUnavailable"), (500, None)])
def test_tenant_add_retries_transient_answers(env, status, code):
    rule = {"endpoint": "arm", "method": "PUT", "status": status, "times": 2}
    if code:
        rule["code"] = code
    env.sim.set_faults([rule])
    out = env.json("tenant", "add", CUSTOMER_B, "--tenant-id", TENANT_B)
    assert out["attempts"] == 3
    assert [q["status"] for q in env.arm_requests("PUT")] == [status, status, 201]
    assert env.customer_of(TENANT_B) == CUSTOMER_B


def test_tenant_add_gives_up_on_a_lasting_metadata_resolver_error(env):
    env.sim.set_faults([{"endpoint": "arm", "method": "PUT", "status": 502,
                         "code": "MetadataResolverBadGatewayError"}])
    r = env.ctl("tenant", "add", CUSTOMER_B, "--tenant-id", TENANT_B)
    assert r.returncode == 1
    assert "MetadataResolverBadGatewayError" in r.stderr
    assert ARM_MESSAGES["MetadataResolverBadGatewayError"] in r.stderr
    assert "after 4 attempts" in r.stderr and "what to do: " in r.stderr
    assert len(env.arm_requests("PUT")) == 4


@pytest.mark.parametrize("args", [
    ["tenant", "add", "not-a-guid", "--tenant-id", TENANT_B],
    ["tenant", "add", CUSTOMER_B, "--tenant-id", "contoso.onmicrosoft.com"],
    ["tenant", "add", CUSTOMER_B + "/../x", "--tenant-id", TENANT_B],
    ["tenant", "remove", CUSTOMER_B, "--replace"],
    ["tenant", "remove", "x"],
    ["lookup", "nope"],
    ["registration", "refresh", "now"],
])
def test_usage_errors_send_nothing(env, args):
    r = env.ctl(*args)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert env.arm_requests() == []


def test_tenant_verbs_need_the_azure_credentials(env):
    os.remove(os.path.join(env.dir, "azure-secret"))
    r = env.ctl("tenant", "add", CUSTOMER_B, "--tenant-id", TENANT_B)
    assert r.returncode == 1
    assert "azure.client_secret_file" in r.stderr
    assert env.arm_requests() == []
    # the read verbs still work without them
    assert env.ctl("registration").returncode == 1  # nothing cached, but it got that far
    assert "no registration" in env.ctl("registration").stderr


# --- lookup and tenants on the seeded store -----------------------------------------------

LOOKUP_MEMBERS = ["subscriptionId", "known", "gone", "tenantId",
                  "delegatedProviderSubscriptionId", "collectedHere", "chargedSubscription",
                  "chargeReason", "held", "customerSubscription", "registration",
                  "registrationRefreshedAt", "registrationStale", "tenantCacheRefreshedAt"]


def test_lookup_every_row(env):
    assert env.ctl("lookup", SUB_A1).returncode == 1  # no registration cached yet
    env.ok("registration", "refresh")
    default = env.sim.world()["defaultSubscription"]

    a1 = env.json("lookup", SUB_A1.upper())
    assert list(a1) == LOOKUP_MEMBERS
    assert (a1["subscriptionId"], a1["tenantId"], a1["chargedSubscription"],
            a1["chargeReason"]) == (SUB_A1, TENANT_A, CUSTOMER_A, "registered")
    assert a1["known"] and not a1["gone"] and not a1["held"] and a1["collectedHere"]

    a2 = env.json("lookup", SUB_A2)  # gone from the list: its last known tenant
    assert a2["gone"] and a2["tenantId"] == TENANT_A
    assert a2["chargedSubscription"] == CUSTOMER_A and a2["chargeReason"] == "registered"
    assert "no longer listed" in env.ok("lookup", SUB_A2)

    b1 = env.json("lookup", SUB_B1)
    assert (b1["chargedSubscription"], b1["chargeReason"]) == (default, "default")

    x = env.json("lookup", SUB_X)
    assert not x["known"] and x["tenantId"] is None
    assert (x["chargedSubscription"], x["chargeReason"]) == (default, "unknown-subscription")

    d1 = env.json("lookup", SUB_D1)
    assert d1["collectedHere"] is False
    assert d1["delegatedProviderSubscriptionId"] == DELEGATED
    assert "not collected here" in env.ok("lookup", SUB_D1)
    assert a1["registrationStale"] is False


def expected_totals(manifest):
    tenant_of = {SUB_A1: TENANT_A, SUB_A2: TENANT_A, SUB_B1: TENANT_B}
    totals = defaultdict(lambda: [0, Decimal(0)])
    for rec in manifest["records"]:
        key = (tenant_of.get(rec["subscription"]), rec["meterId"])
        totals[key][0] += 1
        totals[key][1] += Decimal(rec["quantity"])
    return totals


def test_tenants_exact_totals_and_charges(env):
    env.ok("registration", "refresh")
    default = env.sim.world()["defaultSubscription"]
    rows = env.json("tenants")
    by_tenant = {t["tenantId"]: t for t in rows}
    assert set(by_tenant) == {None, TENANT_A, TENANT_B, TENANT_D}

    assert (by_tenant[TENANT_A]["chargedSubscription"], by_tenant[TENANT_A]["chargeReason"]) \
        == (CUSTOMER_A, "registered")
    assert by_tenant[TENANT_A]["subscriptions"] == 2  # the gone one too
    assert (by_tenant[TENANT_B]["chargedSubscription"], by_tenant[TENANT_B]["chargeReason"]) \
        == (default, "default")
    assert by_tenant[None]["chargeReason"] == "unknown-subscription"
    d = by_tenant[TENANT_D]
    assert d["collectedHere"] is False and d["delegatedProviderSubscriptionId"] == DELEGATED
    assert d["records"] == 0 and d["meters"] == []

    expected = expected_totals(env.manifest)
    got = {}
    for t in rows:
        for m in t["meters"]:
            got[(t["tenantId"], m["meterId"])] = (m["records"], m["total"])
        assert t["records"] == sum(m["records"] for m in t["meters"])
    assert set(got) == set(expected)
    for key, (n, total) in expected.items():
        assert got[key][0] == n
        assert isinstance(got[key][1], str)
        assert Decimal(got[key][1]) == total, key  # exact, as text

    table = env.ok("tenants")
    assert "not collected here" in table and DELEGATED in table
    assert "12345678901234567890.123456789" in table

    unregistered = env.json("tenants", "--unregistered")
    assert [t["tenantId"] for t in unregistered] == [TENANT_B]
    assert TENANT_A not in env.ok("tenants", "--unregistered")

    # registered now: no longer listed as unregistered
    env.ok("tenant", "add", CUSTOMER_B, "--tenant-id", TENANT_B)
    assert env.json("tenants", "--unregistered") == []


def test_status_says_when_the_cache_is_stale(env):
    from waiting import wait_until

    env.write(registration={"refresh_interval": "1s", "max_staleness": "5s"})
    assert env.json("registration", "refresh")["stale"] is False
    # nothing refreshes it here: it goes stale by itself
    wait_until(lambda: env.json("status")["registration"]["stale"], "a stale registration", 60)
    assert "STALE" in env.ok("status")
    assert env.json("registration")["stale"] is True
    assert env.json("lookup", SUB_A1)["registrationStale"] is True
    assert "STALE" in env.ok("lookup", SUB_A1)
    assert env.json("registration", "refresh")["stale"] is False
