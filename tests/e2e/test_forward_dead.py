"""Dead letters end to end: Commerce answers three events InvalidQuantity, Expired and
ResourceNotFound, and refuses with 400 every batch that holds a fourth (a poison event). The
daemon bisects the poisoned batches until the poison is alone, and all four end `dead` with the
code and message Commerce gave, while every other record is charged. `azs-usagectl dead` lists
them; once Commerce is well again, `dead retry` sends three of them again (charged), and `dead
discard --reason` closes the last one with an audit entry; the ledger then lacks exactly that one.
"""
from collect_helpers import Sim, collect_scenario, start, stop
from forward_helpers import by_state, ctl, ctl_json, forward_conf
from waiting import wait_until


def missing_keys(summary):
    return sorted(m["usageEventId"] if isinstance(m, dict) else m
                  for m in summary["comparison"]["missing"])


def test_dead_letters_listed_retried_and_discarded(tmp_path, daemon_bin, build_dir):
    sc = collect_scenario(2, records_per_hour=20, page_size=20)
    with Sim(sc) as sim:
        keys = sorted(e["usageEventId"] for e in sim.expected_events(limit=1000000))
        invalid, expired, notfound, poison = keys[:4]
        sim.set_faults([
            {"endpoint": "commerce", "action": "events", "events": [invalid],
             "code": "InvalidQuantity", "message": "quantity out of range"},
            {"endpoint": "commerce", "action": "events", "events": [expired],
             "code": "Expired", "message": "too old"},
            {"endpoint": "commerce", "action": "events", "events": [notfound],
             "code": "ResourceNotFound", "message": "no such subscription"},
            {"endpoint": "commerce", "status": 400, "action": "poison", "events": [poison],
             "code": "BadArgument", "message": "event is malformed"},
        ])
        conf = forward_conf(sim, tmp_path / "d", commerce={"batch_size": "16"})
        db = tmp_path / "d" / "usage.db"
        d = start(daemon_bin, tmp_path / "d", conf)
        try:
            n = len(keys)
            wait_until(lambda: by_state(build_dir, db) == {"forwarded": n - 4, "dead": 4},
                       "every record forwarded or dead", 120, interval=0.3, alive=d.proc)
            dead = {r["key"]: r for r in ctl_json(build_dir, db, "dead")}
            assert set(dead) == {invalid, expired, notfound, poison}
            assert dead[invalid]["errorCode"] == "InvalidQuantity"
            assert "quantity out of range" in dead[invalid]["errorMessage"]
            assert dead[expired]["errorCode"] == "Expired"
            assert dead[notfound]["errorCode"] == "ResourceNotFound"
            assert dead[poison]["errorCode"] == "BadArgument"
            assert dead[poison]["errorMessage"]  # the 400 answer's message
            assert "dead-lettered" in d.log()
            # the poison was found by halving, not by sending records one at a time
            posts = [r for r in sim.requests()["requests"] if r["endpoint"] == "commerce"]
            assert len(posts) < n
            assert missing_keys(sim.summary()) == sorted(dead)
            table = ctl(build_dir, db, "dead").stdout
            assert all(k[:8] in table for k in dead)

            sim.set_faults([])
            ctl(build_dir, db, "dead", "retry", invalid, notfound, poison)
            ctl(build_dir, db, "dead", "discard", expired, "--reason", "usage too old to bill")
            wait_until(lambda: missing_keys(sim.summary()) == [expired],
                       "the retried dead letters charged", 120, interval=0.3, alive=d.proc)
            s = sim.summary()
            assert not s["comparison"]["extra"] and not s["comparison"]["wrongQuantity"]
            assert ctl_json(build_dir, db, "dead") == []
            states = by_state(build_dir, db)
            assert states.get("forwarded") == n - 1, states
            stop(d)
        finally:
            d.stop()
