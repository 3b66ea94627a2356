"""Stack credentials apply on SIGHUP: started with a client secret the stamp's identity refuses,
the daemon collects nothing (the refusal logged with Azure AD's code, never the secret); the
operator writes the right secret and sends SIGHUP, and the daemon asks for a token with it at
once and collects every expected record.
"""
import os
import signal

from collect_helpers import (Sim, assert_same_records, collect_scenario, daemon_conf, start,
                             stop, wait_collected)
from azsim import STACK_CLIENT_SECRET

WRONG = "not-the-stack-secret-8c1d"


def test_rotated_stack_secret_applies_on_sighup(tmp_path, daemon_bin, build_dir):
    sc = collect_scenario(2)
    with Sim(sc) as sim:
        conf = daemon_conf(sim, tmp_path / "d")
        secret = os.path.join(str(tmp_path / "d"), "stack-secret")
        with open(secret, "w") as f:
            f.write(WRONG + "\n")
        d = start(daemon_bin, tmp_path / "d", conf)
        try:
            d.wait_for_line(lambda f, line: "AADSTS7000215" in line, timeout=30)
            usage = [r for r in sim.requests()["requests"] if r["endpoint"] == "usage"]
            assert not usage
            with open(secret, "w") as f:
                f.write(STACK_CLIENT_SECRET + "\n")
            d.kill(signal.SIGHUP)
            d.wait_for_line(lambda f, line: "stack credentials changed" in f.get("msg", ""),
                            timeout=30)
            records, want = wait_collected(d, build_dir, tmp_path / "d" / "usage.db", sim, sc)
            assert_same_records(records, want)
            assert WRONG not in d.log() and STACK_CLIENT_SECRET not in d.log()
            stop(d)
        finally:
            d.stop()
