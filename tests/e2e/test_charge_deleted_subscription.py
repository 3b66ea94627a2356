"""A deleted user subscription's late usage stays with its tenant (issue 10, Deliver 5;
ARCHITECTURE.md section 4, "the cache never forgets"): the daemon learns the user subscriptions of
tenant A (registered to CUSTOMER_A) and tenant B (not registered) while the first reported hours
are collected and forwarded; then A1 and B1 are deleted on the stamp (a `deleteSubscriptions`
fault: they leave the subscriptions list for good, the usage API still reports their usage), the
daemon refreshes its tenant cache and keeps both as gone with their last known tenant
(`azs-usagectl lookup` says so); the later hours (held back by the simulator's clock until then)
carry usage of A1 and B1, which is charged to CUSTOMER_A (reason `registered`) and to the default
subscription (reason `default`, not `unknown-subscription`) — the ledger matches the expected
charges exactly.
"""
from charge_helpers import (CUSTOMER_A, SUB_A1, SUB_B1, TENANT_A, TENANT_B, Run, in_phase,
                            phased_scenario, phased_sim, start_phase_2, two_tenants)
from forward_helpers import ctl_json
from waiting import wait_until


def test_deleted_subscription_late_usage_stays_with_its_tenant(tmp_path, daemon_bin, build_dir):
    sc = phased_scenario(two_tenants(a_registered=True, b_registered=False))
    with phased_sim(sc) as sim:
        default = sim.world()["defaultSubscription"].lower()
        run = Run(sim, daemon_bin, build_dir, tmp_path / "d", stack={"refresh_interval": "1s"})
        try:
            run.wait_forwarded()
            assert ctl_json(build_dir, run.db, "lookup", SUB_A1)["gone"] is False

            sim.set_faults([{"endpoint": "subscriptions", "action": "deleteSubscriptions",
                             "subscriptions": [SUB_A1, SUB_B1]}])

            def gone():
                return all(ctl_json(build_dir, run.db, "lookup", s)["gone"]
                           for s in (SUB_A1, SUB_B1))
            wait_until(gone, "A1 and B1 marked gone in the tenant cache", 60, interval=0.3,
                       alive=run.daemon.proc)
            deleted = {t["tenantId"]: t.get("deletedSubscriptions")
                       for t in sim.world()["tenants"]}
            assert deleted == {TENANT_A: [SUB_A1], TENANT_B: [SUB_B1]}, deleted
            a1 = ctl_json(build_dir, run.db, "lookup", SUB_A1)
            assert (a1["tenantId"], a1["chargedSubscription"], a1["chargeReason"]) == \
                (TENANT_A, CUSTOMER_A, "registered"), a1

            start_phase_2(sim, sc)
            run.wait_forwarded()
            s = sim.summary()
            assert s["comparison"]["ok"], s["comparison"]

            late = [r for r in run.records() if in_phase(sc, r["reportedHour"], 2) and
                    r["sourceSubscriptionId"] in (SUB_A1, SUB_B1)]
            assert {r["sourceSubscriptionId"] for r in late} == {SUB_A1, SUB_B1}, late
            for r in late:
                want = ((TENANT_A, CUSTOMER_A, "registered") if r["sourceSubscriptionId"] ==
                        SUB_A1 else (TENANT_B, default, "default"))
                assert (r["tenantId"], r["chargedSubscription"], r["chargeReason"]) == want, r
                assert r["state"] == "forwarded", r
            run.stop()
        finally:
            run.kill()
