"""A tenant removed goes back to default (issue 10, Deliver 5): tenant A is registered to
CUSTOMER_A while the first reported hours are collected and forwarded, so its records go there
(reason `registered`); then the operator runs `azs-usagectl tenant remove CUSTOMER_A` against the
simulated registration and the daemon loads the emptied cache; the later hours (held back by the
simulator's clock until then) charge A's records to the default subscription (reason `default`,
and the notice naming A is logged again). Per record, in the store and in the simulator's ledger:
A's records mapped before the removal keep CUSTOMER_A, A's records mapped after go to the default
subscription, and tenant B (never registered) stays on the default subscription.
"""
from charge_helpers import (CUSTOMER_A, TENANT_A, TENANT_B, Run, in_phase, phased_scenario,
                            phased_sim, start_phase_2, two_tenants)

NOTICE = "tenant %s has usage and no customer subscription" % TENANT_A


def test_tenant_removed_goes_back_to_default(tmp_path, daemon_bin, build_dir):
    sc = phased_scenario(two_tenants(a_registered=True, b_registered=False))
    with phased_sim(sc) as sim:
        default = sim.world()["defaultSubscription"].lower()
        run = Run(sim, daemon_bin, build_dir, tmp_path / "d")
        try:
            first = {e["usageEventId"] for e in run.wait_forwarded()}
            assert NOTICE not in run.daemon.log()

            mark = len(run.daemon.lines)
            run.ctl("tenant", "remove", CUSTOMER_A)
            run.wait_registration(0, mark)
            start_phase_2(sim, sc)
            run.wait_forwarded()
            # A's first default charge is noticed, after the removal
            run.daemon.wait_for_line(lambda f, line: NOTICE in line, timeout=10, after=mark)

            records = run.records()
            assert {r["state"] for r in records} == {"forwarded"}
            a_before = {r["key"] for r in records
                        if r["tenantId"] == TENANT_A and in_phase(sc, r["reportedHour"], 1)}
            a_after = {r["key"] for r in records
                       if r["tenantId"] == TENANT_A and in_phase(sc, r["reportedHour"], 2)}
            assert a_before and a_after and a_before <= first and not (a_after & first)
            for r in records:
                if r["key"] in a_before:
                    want = (CUSTOMER_A, "registered")
                else:
                    assert r["tenantId"] == TENANT_B or r["key"] in a_after, r
                    want = (default, "default")
                assert (r["chargedSubscription"], r["chargeReason"]) == want, r

            # the ledger: the simulator expects the final registration (none), so exactly A's
            # records of the first phase differ, charged to CUSTOMER_A
            c = sim.summary()["comparison"]
            assert c["missingCount"] == 0 and c["extraCount"] == 0, c
            assert c["wrongQuantityCount"] == 0 and c["wrongTenantCount"] == 0, c
            assert c["wrongSourceCount"] == 0 and c["wrongFieldCount"] == 0, c
            wrong = {w["usageEventId"]: (w["expected"].lower(), w["actual"].lower())
                     for w in c["wrongSubscription"]}
            assert wrong == {k: (default, CUSTOMER_A) for k in a_before}, c
            assert c["wrongSubscriptionCount"] == len(a_before)
            assert c["wrongReasonCount"] == len(a_before)
            run.stop()
        finally:
            run.kill()
