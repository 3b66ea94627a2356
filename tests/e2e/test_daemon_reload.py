"""SIGHUP and STATUS= as an operator meets them (ARCHITECTURE.md section 8), with the real daemon
and the simulator:

* a file with an error is refused whole: the running configuration, batch size included, stays;
* a good file applies the batch size and the log level at once, and names the changed endpoint
  as needing a restart (the daemon goes on with the old one);
* STATUS= is the one-line summary, "no forward yet" before the first batch and "last forward
  ...s ago" after it;
* a rotated [azure] client secret is used at once, without a restart: the registration is
  fetched and the records forwarded with it, and the readiness reason for the identity goes.

The batch size is seen in what Commerce received (the simulator's request log): the first
reported hour is collected and forwarded with the old size while the second is held back by the
stamp ("processing not complete"); after the reload the second comes in one batch.
"""
import os
import signal

from azsim import AZURE_CLIENT_SECRET
from collect_helpers import (Sim, collect_scenario, scenario_hours, start, stop,
                             wait_not_ready, wait_ready)
from conftest import NotifySocket
from forward_helpers import by_state, forward_conf, wait_charged
from waiting import wait_until

RELOADED = "4f0b7c1d2a6e4e1b9c3d8a5f6b2e7c09"
WRONG = "not-the-azure-secret-5e2a"


def commerce_batches(sim):
    """The number of events of every Commerce request, in order."""
    return [r["events"] for r in sim.requests()["requests"] if r["endpoint"] == "commerce"]


def not_ready(hour):
    return {"endpoint": "usage", "action": "notReady", "hour": hour}


def statuses(notify):
    """Every STATUS= line the daemon sent so far."""
    notify.drain()
    return [line[len("STATUS="):] for m in notify.received for line in m.split("\n")
            if line.startswith("STATUS=")]


def reload(d, conf_path, conf):
    """Write conf, send SIGHUP; return the index of the first line logged after it."""
    from azsim import write_config
    write_config(conf_path, conf)
    mark = len(d.lines)
    d.kill(signal.SIGHUP)
    return mark


def test_sighup_applies_batch_size_and_log_level_names_restart_keys_refuses_bad_files(
        tmp_path, daemon_bin, build_dir):
    # one page per hour, so an hour's records reach the store together
    sc = collect_scenario(2, records_per_hour=12, page_size=12)
    first, second = scenario_hours(sc)
    notify = NotifySocket()
    with Sim(sc, faults=[not_ready(first), not_ready(second)]) as sim:
        directory = tmp_path / "d"
        conf = forward_conf(sim, directory, commerce={"batch_size": "3"})
        conf_path = os.path.join(str(directory), "azs-usaged.conf")
        d = start(daemon_bin, directory, conf, env={"NOTIFY_SOCKET": notify.address})
        db = directory / "usage.db"
        try:
            notify.wait_for("READY=1")
            assert statuses(notify)[0] == "pending 0, dead 0, held 0, no forward yet"

            # refused whole: a new batch size beside an invalid value
            bad = {s: dict(v) for s, v in conf.items()}
            bad["commerce"].update({"batch_size": "50", "compress": "brotli"})
            mark = reload(d, conf_path, bad)
            d.wait_for_line(lambda f, line: "keeping the running configuration"
                            in f.get("msg", ""), after=mark)
            notify.wait_for("READY=1")

            # the first hour goes in batches of the running size, 3
            sim.set_faults([not_ready(second)])
            wait_until(lambda: sum(commerce_batches(sim)) >= 12, "the first hour forwarded",
                       60, interval=0.2, alive=d.proc)
            wait_until(lambda: by_state(build_dir, db) == {"forwarded": 12},
                       "the first hour's 12 records forwarded", 60, interval=0.2,
                       alive=d.proc)
            before = commerce_batches(sim)
            assert max(before) <= 3, before
            wait_until(lambda: any("last forward" in s and s.startswith("pending 0, dead 0")
                                   for s in statuses(notify)),
                       "STATUS= with the last forward", 60, interval=0.2, alive=d.proc)

            # a good file: batch size and log level at once, the endpoint needs a restart
            good = {s: dict(v) for s, v in conf.items()}
            good["commerce"].update({"batch_size": "50",
                                     "url": conf["commerce"]["url"] + "/elsewhere"})
            good["log"] = {"level": "debug"}
            assert not any(" level=debug " in line for line in d.lines)
            mark = reload(d, conf_path, good)
            _, warning = d.wait_for_line(lambda f, line: "need a restart" in f.get("msg", ""),
                                         after=mark)
            assert warning["level"] == "warning"
            assert "commerce.url" in warning["msg"], warning
            assert "commerce.batch_size" not in warning["msg"], warning
            assert "log.level" not in warning["msg"], warning
            d.wait_for_line(lambda f, line: f.get("message_id") == RELOADED, after=mark)
            notify.wait_for("READY=1")
            _, debug = d.wait_for_line(lambda f, line: f.get("level") == "debug", after=mark)
            assert "commerce.batch_size 50" in debug["msg"], debug

            # the second hour comes in one batch of the new size, to the old endpoint
            sim.set_faults([])
            summary = wait_charged(sim, d)
            after = commerce_batches(sim)[len(before):]
            assert max(after) > 3, after
            assert summary["comparison"]["ok"]
            stop(d)
        finally:
            d.stop()
            notify.close()


def test_rotated_azure_secret_applies_on_sighup(tmp_path, daemon_bin):
    sc = collect_scenario(2)
    with Sim(sc) as sim:
        directory = tmp_path / "d"
        conf = forward_conf(sim, directory)
        secret = os.path.join(str(directory), "azure-secret")
        with open(secret, "w") as f:
            f.write(WRONG + "\n")
        d = start(daemon_bin, directory, conf)
        try:
            # the [azure] identity is refused: no registration, nothing forwarded, not ready
            d.wait_for_line(lambda f, line: "AADSTS7000215" in line, timeout=30)
            reason = wait_not_ready(d, conf, ["no token for the azure identity"])
            assert "invalid_client AADSTS7000215" in reason, reason
            assert not commerce_batches(sim)

            with open(secret, "w") as f:
                f.write(AZURE_CLIENT_SECRET + "\n")
            mark = len(d.lines)
            d.kill(signal.SIGHUP)
            d.wait_for_line(lambda f, line: "azure credentials changed" in f.get("msg", ""),
                            after=mark)
            wait_charged(sim, d)
            wait_ready(d, conf)
            assert WRONG not in d.log() and AZURE_CLIENT_SECRET not in d.log()
            stop(d)
        finally:
            d.stop()
