"""The daemon's life cycle as systemd and an operator see it: it logs started and ready and
notifies READY=1; SIGHUP with a broken file is refused (errors logged, old configuration kept,
still running) and the secrets it read are redacted from those errors; SIGHUP with a good
file reloads it and names the keys that need a restart; SIGTERM and SIGINT stop it with status
0 after STOPPING=1, without waiting out the 30 s grace when nothing is in flight; the watchdog
pings on a timer, and not without WATCHDOG_USEC.

The tests wait for what the daemon says (log lines, notifications), never a fixed time; their
limits only say when to give up (tests/waiting.py scales them for slow builds).
"""
import signal
import time

import pytest
from conftest import STACK_SECRET, ConfigFile, Daemon
from waiting import limit

GRACE = 30  # seconds SIGTERM waits for batches in flight (ARCHITECTURE.md section 8)

STARTED = "4f0b7c1d2a6e4e1b9c3d8a5f6b2e7c01"
READY = "4f0b7c1d2a6e4e1b9c3d8a5f6b2e7c02"
STOPPING = "4f0b7c1d2a6e4e1b9c3d8a5f6b2e7c08"
RELOADED = "4f0b7c1d2a6e4e1b9c3d8a5f6b2e7c09"


def with_id(message_id):
    """A log-line predicate: the entry carries message_id."""
    return lambda fields, line: fields.get("message_id") == message_id


def start_ready(start_daemon, notify_socket):
    """Start the daemon and wait until it says it is ready, in the log and to systemd."""
    d = start_daemon()
    _, started = d.wait_for_line(with_id(STARTED))
    assert started["level"] == "info"
    assert started["module"] == "main"
    d.wait_for_line(with_id(READY))
    notify_socket.wait_for("READY=1")
    return d


def test_start_logs_started_and_ready_and_notifies(start_daemon, notify_socket, config):
    d = start_daemon()
    i, started = d.wait_for_line(with_id(STARTED))
    assert str(config.path) in started["msg"]
    j, _ = d.wait_for_line(with_id(READY))
    assert j > i
    message = notify_socket.wait_for("READY=1")
    assert any(line.startswith("STATUS=") for line in message.split("\n")), message
    assert d.alive()
    # every line on stderr is one logfmt entry
    for line in d.log().splitlines():
        assert line.startswith("ts=") and " level=" in line, line


def test_sighup_with_broken_file_keeps_running_config(start_daemon, notify_socket, config):
    d = start_ready(start_daemon, notify_socket)

    # The broken file also changes an endpoint: if any of it were applied, the good reload
    # below would report stack.arm_endpoint as changed.
    config.write(changes={("commerce", "batch_size"): "0",
                          ("stack", "arm_endpoint"): "https://elsewhere.example"})
    bad_line = config.line_of("commerce", "batch_size")
    mark = len(d.lines)
    d.kill(signal.SIGHUP)
    notify_socket.wait_for("RELOADING=1")
    _, error = d.wait_for_line(
        lambda f, line: f.get("level") == "error"
        and f.get("msg", "").startswith(f"{config.path}:{bad_line}: commerce.batch_size:"),
        after=mark)
    _, kept = d.wait_for_line(lambda f, line: "keeping the running configuration" in
                              f.get("msg", ""), after=mark)
    assert kept["level"] == "error"
    notify_socket.wait_for("READY=1")
    assert d.alive()

    # the original file with one live setting changed reloads cleanly (which also shows that
    # the loop survived the refused one)
    config.write(changes={("commerce", "batch_size"): "250"})
    mark = len(d.lines)
    d.kill(signal.SIGHUP)
    notify_socket.wait_for("RELOADING=1")
    _, reloaded = d.wait_for_line(with_id(RELOADED), after=mark)
    assert str(config.path) in reloaded["msg"]
    notify_socket.wait_for("READY=1")
    assert "restart" not in "\n".join(d.lines[mark:]), d.log()
    assert d.alive()


def test_sighup_with_broken_file_never_logs_the_rotated_secret(start_daemon, notify_socket,
                                                                 config):
    # The operator rotates the stack secret and, in the same edit, breaks the file: the new
    # secret also appears as a (misspelt, unknown) key, which is named in the error, and as the
    # value of another *_file key. The refused file's secret must be redacted all the same.
    d = start_ready(start_daemon, notify_socket)

    rotated = "rotated_secret_4c1d9e7f2b"
    secret = config.dir / "stack-secret"
    secret.write_text(rotated + "\n")
    secret.chmod(0o600)
    config.write(changes={("commerce", "batch_size"): "0",
                          ("azure", "client_secret_file"): rotated},
                 extra={"store": [f"{rotated} = 1"]})
    mark = len(d.lines)
    d.kill(signal.SIGHUP)
    notify_socket.wait_for("RELOADING=1")
    _, unknown = d.wait_for_line(lambda f, line: "unknown key" in f.get("msg", ""), after=mark)
    assert "[redacted]" in unknown["msg"], unknown
    d.wait_for_line(lambda f, line: "keeping the running configuration" in f.get("msg", ""),
                    after=mark)
    notify_socket.wait_for("READY=1")
    assert rotated not in d.log(), d.log()
    assert "rotated_secret" not in d.log(), d.log()
    assert d.alive()


def test_sighup_with_changed_restart_keys_names_them(start_daemon, notify_socket, config):
    d = start_ready(start_daemon, notify_socket)

    config.write(changes={("store", "path"): f"{config.dir}/other.db",
                          ("commerce", "max_inflight"): "2"})
    mark = len(d.lines)
    d.kill(signal.SIGHUP)
    _, warning = d.wait_for_line(lambda f, line: "restart" in f.get("msg", ""), after=mark)
    assert warning["level"] == "warning"
    assert "store.path" in warning["msg"]
    assert "commerce.max_inflight" not in warning["msg"]
    d.wait_for_line(with_id(RELOADED), after=mark)
    notify_socket.wait_for("RELOADING=1")
    notify_socket.wait_for("READY=1")
    assert d.alive()


def test_sighup_applies_the_log_level_at_once(start_daemon, notify_socket, config):
    d = start_ready(start_daemon, notify_socket)

    # at level warning the info line "reloaded" of this very reload is not written
    config.write(changes={("log", "level"): "warning"})
    mark = len(d.lines)
    d.kill(signal.SIGHUP)
    notify_socket.wait_for("RELOADING=1")
    notify_socket.wait_for("READY=1")

    # back at info, the next reload's line is written
    config.write(changes={("log", "level"): "info"})
    d.kill(signal.SIGHUP)
    d.wait_for_line(with_id(RELOADED), after=mark)
    notify_socket.wait_for("READY=1")
    assert d.alive()

    # every line is read once it has exited: one "reloaded" since the first reload, the second's
    d.kill(signal.SIGTERM)
    assert d.wait(timeout=10) == 0, d.log()
    assert len([line for line in d.lines[mark:] if RELOADED in line]) == 1, d.log()


@pytest.mark.parametrize("signo", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_stop_signal_exits_0_without_waiting_out_the_grace(start_daemon, notify_socket, signo):
    d = start_ready(start_daemon, notify_socket)

    d.kill(signo)
    # nothing is in flight, so it does not wait for the grace: the limit for giving up stays
    # below it in every build, however slow (a daemon that waited for nothing fails here)
    rc = d.proc.wait(timeout=min(limit(5), GRACE - 5))
    assert rc == 0, d.log()
    notify_socket.wait_for("STOPPING=1")
    _, stopping = d.wait_for_line(with_id(STOPPING))
    assert signo.name in stopping["msg"]


def test_start_with_invalid_config_logs_each_error_and_exits_1(start_daemon, notify_socket,
                                                                config):
    config.write(changes={("commerce", "compress"): "brotli", ("health", "listen"): "nowhere"})
    d = start_daemon()
    rc = d.wait(timeout=10)
    assert rc == 1
    for section, key in (("commerce", "compress"), ("health", "listen")):
        prefix = f"{config.path}:{config.line_of(section, key)}: {section}.{key}:"
        d.wait_for_line(lambda f, line, p=prefix: f.get("level") == "error"
                        and f.get("msg", "").startswith(p))
    assert not any("READY=1" in m.split("\n") for m in notify_socket.drain())


def test_watchdog_pings_at_half_the_interval(start_daemon, notify_socket):
    started = time.monotonic()
    d = start_daemon(env={"WATCHDOG_USEC": "400000"})
    notify_socket.wait_for("READY=1")
    # it repeats: five pings (each wait gives up only after the scaled limit)
    for _ in range(5):
        notify_socket.wait_for("WATCHDOG=1")
    notify_socket.drain()
    elapsed = time.monotonic() - started
    pings = [m for m in notify_socket.received if "WATCHDOG=1" in m.split("\n")]
    # a timer every 200 ms sends no more than one per 200 ms of the time it has run, however
    # slowly it runs (a slow machine only makes fewer); a busy loop sends thousands
    assert len(pings) <= elapsed / 0.2 + 2, (len(pings), elapsed)
    assert d.alive()


def test_no_watchdog_pings_without_watchdog_usec(start_daemon, notify_socket):
    d = start_daemon()
    notify_socket.wait_for("READY=1")
    # an absence needs a window: longer than the 200 ms between pings of the test above (scaled,
    # so a slow build gets a longer one), closed by a reload whose READY=1 shows the loop ran
    # through it; datagrams keep their order, so a ping sent in the window arrived before it
    time.sleep(limit(0.5))
    d.kill(signal.SIGHUP)
    notify_socket.wait_for("RELOADING=1")
    notify_socket.wait_for("READY=1")
    assert not any("WATCHDOG=1" in m.split("\n") for m in notify_socket.received)
    assert d.alive()


def test_secrets_from_the_config_are_redacted_in_the_log(daemon_bin, tmp_path, notify_socket):
    # The configuration sits in a directory named like the stack secret, so the started line
    # (which names the file) would print the secret if config_register_secrets were not wired.
    c = ConfigFile(tmp_path / STACK_SECRET)
    c.write()
    d = Daemon(daemon_bin, c.path, {"NOTIFY_SOCKET": notify_socket.address}).start()
    try:
        _, started = d.wait_for_line(with_id(STARTED))
        assert "[redacted]/azs-usaged.conf" in started["msg"], started
        notify_socket.wait_for("READY=1")
        d.kill(signal.SIGTERM)
        assert d.wait(timeout=5) == 0
        assert STACK_SECRET not in d.log()
    finally:
        d.stop()
