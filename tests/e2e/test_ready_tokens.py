"""Readiness, tokens (ARCHITECTURE.md section 8): while the token endpoint refuses, /readyz names
each identity that cannot get a token (the stamp's and the [azure] one), with the HTTP status and
Azure AD's codes but never a secret; once tokens come again both reasons go and the daemon is
ready.
"""
from azsim import AZURE_CLIENT_SECRET, STACK_CLIENT_SECRET
from collect_helpers import (Sim, collect_scenario, daemon_conf, start, stop, wait_not_ready,
                             wait_ready)


def test_no_token_is_a_reason_per_identity_until_tokens_come(tmp_path, daemon_bin):
    sc = collect_scenario(2)
    # every token request fails until the plan is emptied (both identities ask the same
    # simulated Azure AD)
    with Sim(sc, faults=[{"endpoint": "token", "status": 503}]) as sim:
        conf = daemon_conf(sim, tmp_path / "d")
        d = start(daemon_bin, tmp_path / "d", conf)
        try:
            stack = wait_not_ready(d, conf, ["no token for the stack identity"])
            azure = wait_not_ready(d, conf, ["no token for the azure identity"])
            for reason in (stack, azure):
                assert "HTTP 503 temporarily_unavailable AADSTS90033" in reason, reason
            for secret in (STACK_CLIENT_SECRET, AZURE_CLIENT_SECRET):
                assert secret not in stack + azure
            sim.set_faults([])
            wait_ready(d, conf)
            stop(d)
        finally:
            d.stop()
