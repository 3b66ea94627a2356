"""Collection with each kind of stack identity: a client secret and a client certificate (an
RS256 assertion signed with it) against Azure AD, and a certificate against AD FS, whose token
answers have their own shape. Neither login endpoint nor audience is configured: both come from
the stamp's metadata endpoint. Every expected record arrives once, with its key and quantity
text, and every usage request carried a bearer token the stamp accepted.
"""
import pytest
from collect_helpers import (Sim, assert_same_records, collect_scenario, daemon_conf, start,
                             stop, wait_collected)

HOURS = 6


@pytest.mark.parametrize("identity,certificate", [("aad", False), ("aad", True),
                                                  ("adfs", True)],
                         ids=["aad-secret", "aad-certificate", "adfs-certificate"])
def test_collect_with_identity(tmp_path, daemon_bin, build_dir, identity, certificate):
    sc = collect_scenario(HOURS, identity=identity)
    with Sim(sc) as sim:
        conf = daemon_conf(sim, tmp_path / "d", certificate=certificate)
        assert "login_endpoint" not in conf["stack"] and "audience" not in conf["stack"]
        d = start(daemon_bin, tmp_path / "d", conf)
        try:
            records, want = wait_collected(d, build_dir, tmp_path / "d" / "usage.db", sim, sc)
            assert_same_records(records, want)
            reqs = sim.requests()["requests"]
            tokens = [r for r in reqs if r["endpoint"] == "token"]
            assert tokens and all(r["status"] == 200 for r in tokens), tokens
            if identity == "adfs":
                # the stamp's tokens come from AD FS; the [azure] identity (registration,
                # Commerce) always asks Azure AD under its tenant
                azure = "/%s/oauth2/token" % conf["azure"]["tenant"]
                assert any(r["path"] == "/adfs/oauth2/token" for r in tokens), tokens
                assert all(r["path"] in ("/adfs/oauth2/token", azure) for r in tokens), tokens
            usage = [r for r in reqs if r["endpoint"] == "usage"]
            assert usage and all(r["status"] == 200 and r["bearer"] for r in usage)
            stop(d)
        finally:
            d.stop()
