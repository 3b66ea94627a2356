"""A tenant registered in the middle of a run (issue 10, Deliver 5): tenant B is not registered
while the first reported hours are collected and forwarded, so its records go to the default
subscription (reason `default`, with the notice naming B); then the operator runs `azs-usagectl
tenant add CUSTOMER_B --tenant-id B` against the simulated registration and the daemon loads the
changed cache; the later hours (held back by the simulator's clock until then) charge B's records
to CUSTOMER_B (reason `registered`). Per record, in the store and in the simulator's ledger:
everything of B mapped before the registration keeps the default subscription, everything after
goes to its customer subscription, and tenant A stays on its own customer subscription throughout.
"""
from charge_helpers import (CUSTOMER_A, CUSTOMER_B, TENANT_A, TENANT_B, Run, in_phase,
                            phased_scenario, phased_sim, start_phase_2, two_tenants)


def test_tenant_registered_midrun(tmp_path, daemon_bin, build_dir):
    sc = phased_scenario(two_tenants(a_registered=True, b_registered=False))
    with phased_sim(sc) as sim:
        default = sim.world()["defaultSubscription"].lower()
        run = Run(sim, daemon_bin, build_dir, tmp_path / "d")
        try:
            first = {e["usageEventId"] for e in run.wait_forwarded()}
            assert run.daemon.wait_for_line(
                lambda f, line: f.get("AZS_TENANT") == TENANT_B or
                ("tenant %s has usage and no customer subscription" % TENANT_B) in line)

            mark = len(run.daemon.lines)
            run.ctl("tenant", "add", CUSTOMER_B, "--tenant-id", TENANT_B)
            run.wait_registration(2, mark)
            start_phase_2(sim, sc)
            run.wait_forwarded()

            records = run.records()
            assert {r["state"] for r in records} == {"forwarded"}
            b_before = {r["key"] for r in records
                        if r["tenantId"] == TENANT_B and in_phase(sc, r["reportedHour"], 1)}
            b_after = {r["key"] for r in records
                       if r["tenantId"] == TENANT_B and in_phase(sc, r["reportedHour"], 2)}
            assert b_before and b_after and b_before <= first and not (b_after & first)
            for r in records:
                if r["tenantId"] == TENANT_A:
                    want = (CUSTOMER_A, "registered")
                elif r["key"] in b_before:
                    want = (default, "default")
                else:
                    assert r["key"] in b_after, r
                    want = (CUSTOMER_B, "registered")
                assert (r["chargedSubscription"], r["chargeReason"]) == want, r

            # the ledger: the simulator expects the final registration (B → CUSTOMER_B), so
            # exactly B's records of the first phase differ, charged to the default subscription
            c = sim.summary()["comparison"]
            assert c["missingCount"] == 0 and c["extraCount"] == 0, c
            assert c["wrongQuantityCount"] == 0 and c["wrongTenantCount"] == 0, c
            assert c["wrongSourceCount"] == 0 and c["wrongFieldCount"] == 0, c
            wrong = {w["usageEventId"]: (w["expected"].lower(), w["actual"].lower())
                     for w in c["wrongSubscription"]}
            assert wrong == {k: (CUSTOMER_B, default) for k in b_before}, c
            assert c["wrongSubscriptionCount"] == len(b_before)
            assert c["wrongReasonCount"] == len(b_before)
            run.stop()
        finally:
            run.kill()
