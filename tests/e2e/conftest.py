"""Fixtures for the end-to-end tests: a valid configuration with its secret files, the daemon
binary, a running daemon whose logfmt lines are collected, and a NOTIFY_SOCKET that records what
the daemon tells systemd.

The build to test is named by $AZS_BUILD_DIR (meson sets it, with $AZS_SOURCE_DIR); run by hand:
    AZS_BUILD_DIR=$PWD/build AZS_SOURCE_DIR=$PWD PYTHONPATH=$PWD/tests \
        /usr/bin/python3 -m pytest -q tests/e2e

Every timeout here is a limit for giving up, in seconds before tests/waiting.py scales it for the
build and machine ($AZS_TEST_TIME_SCALE); the waits themselves end at the event.
"""
import os
import re
import signal
import socket
import subprocess
import threading
import time
import uuid
from pathlib import Path

import pytest
from waiting import limit

STACK_SECRET = "stack-Secret-Value-1f3a9c0e"
AZURE_SECRET = "azure-Secret-Value-7d2b4e55"

# Every key of ARCHITECTURE.md section 3 that a realistic file sets, in file order.
# Placeholders {dir} and {port} are filled in per test.
VALID_CONFIG = [
    ("stack", [
        ("arm_endpoint", "https://adminmanagement.local.azurestack.external"),
        ("provider_subscription", "6e26b5b6-7a9e-4b0e-a4a1-2c3b2d6c1f10"),
        ("identity", "aad"),
        ("tenant", "contoso.onmicrosoft.com"),
        ("client_id", "2b8f3e55-4a4e-4c55-9d3b-7a1f0f3e9c21"),
        ("client_secret_file", "stack-secret"),
        ("collect_from", "2026-11-01T00:00:00Z"),
        ("poll_interval", "5m"),
        ("settle", "30m"),
        ("lookback", "6h"),
        ("per_subscriber", "false"),
        ("refresh_interval", "15m"),
    ]),
    ("registration", [
        ("arm_endpoint", "https://management.azure.com"),
        ("subscription_id", "9a1c6f7e-3b2d-4e8f-a1b2-c3d4e5f60718"),
        ("resource_group", "azurestack"),
        ("name", "azurestack-0b6a9e1c-5d3f-4a2e-9c8b-7f6e5d4c3b2a"),
        ("api_version", "2017-06-01"),
        ("audience", "https://management.azure.com/"),
        ("refresh_interval", "15m"),
        ("max_staleness", "24h"),
    ]),
    ("azure", [
        ("tenant", "fabrikam-csp.onmicrosoft.com"),
        ("client_id", "5c4d3e2f-1a0b-4c9d-8e7f-6a5b4c3d2e1f"),
        ("client_secret_file", "azure-secret"),
        ("login_endpoint", "https://login.microsoftonline.com"),
    ]),
    ("commerce", [
        ("url", "https://commerce.example/api/usageEvents/batch"),
        ("audience", "https://commerce.example/"),
        ("batch_size", "500"),
        ("batch_bytes", "4M"),
        ("max_inflight", "4"),
        ("compress", "gzip"),
        ("timeout", "30s"),
        ("retry_initial", "1s"),
        ("retry_max", "5m"),
    ]),
    ("store", [
        ("path", "{dir}/usage.db"),
        ("retention", "35d"),
        ("max_pending", "50000000"),
    ]),
    ("http", [
        ("user_agent", "azs-usaged-e2e"),
        ("max_response", "64M"),
    ]),
    ("health", [
        ("listen", "127.0.0.1:{port}"),
    ]),
    ("log", [
        ("level", "info"),
    ]),
]


def free_port():
    """A TCP port on the loopback that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def parse_logfmt(line):
    """Split one logfmt line into a dict, undoing the quoting and escapes of lib/log.c."""
    fields = {}
    i, n = 0, len(line)
    while i < n:
        while i < n and line[i] == " ":
            i += 1
        m = re.compile(r"[^= ]+").match(line, i)
        if not m:
            break
        key = m.group(0)
        i = m.end()
        if i >= n or line[i] != "=":
            fields[key] = ""
            continue
        i += 1
        if i < n and line[i] == '"':
            i += 1
            out = []
            while i < n and line[i] != '"':
                if line[i] == "\\" and i + 1 < n:
                    i += 1
                    out.append({"n": "\n", "r": "\r", "t": "\t"}.get(line[i], line[i]))
                else:
                    out.append(line[i])
                i += 1
            i += 1
            fields[key] = "".join(out)
        else:
            j = line.find(" ", i)
            j = n if j < 0 else j
            fields[key] = line[i:j]
            i = j
    return fields


class ConfigFile:
    """A configuration file in its own directory, with the two secret files beside it."""

    def __init__(self, directory):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / "azs-usaged.conf"
        self.port = free_port()
        for name, value in (("stack-secret", STACK_SECRET), ("azure-secret", AZURE_SECRET)):
            p = self.dir / name
            p.write_text(value + "\n")
            p.chmod(0o600)

    def render(self, changes=None, extra=None):
        """The text of the valid file with changes applied.

        changes maps (section, key) to a new value, or to None to drop the key; a key that is
        not in the file is added at the end of its section. extra maps a section to raw lines
        added at its end.
        """
        changes = dict(changes or {})
        extra = extra or {}
        out = []
        for section, keys in VALID_CONFIG:
            out.append(f"[{section}]")
            for key, value in keys:
                value = value.format(dir=self.dir, port=self.port)
                if (section, key) in changes:
                    value = changes.pop((section, key))
                    if value is None:
                        continue
                out.append(f"{key} = {value}")
            for (s, key), value in list(changes.items()):
                if s == section:
                    out.append(f"{key} = {value}")
                    del changes[(s, key)]
            out.extend(extra.get(section, []))
            out.append("")
        assert not changes, f"changes for unknown sections: {changes}"
        return "\n".join(out)

    def write(self, changes=None, extra=None):
        """Write the valid file with changes (see render) and return its path."""
        return self.write_text(self.render(changes, extra))

    def write_text(self, text):
        """Write text as the file (atomically, as an editor would) and return its path."""
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(self.path)
        return self.path

    def line_of(self, section, key):
        """The 1-based line of section.key in the file as written now."""
        current = None
        for number, line in enumerate(self.path.read_text().splitlines(), 1):
            stripped = line.strip()
            if stripped.startswith("["):
                current = stripped.strip("[]")
            elif current == section and re.match(rf"{re.escape(key)}\s*=", stripped):
                return number
        raise AssertionError(f"{section}.{key} not in {self.path}")


class NotifySocket:
    """A unix datagram socket standing in for systemd's NOTIFY_SOCKET."""

    def __init__(self):
        self.name = f"azs-usaged-test-{uuid.uuid4().hex}"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + self.name)  # abstract namespace: no path length or clean-up
        self.messages = []
        self.received = []  # every datagram ever read, consumed or not

    @property
    def address(self):
        """The value for $NOTIFY_SOCKET."""
        return "@" + self.name

    def wait_for(self, assignment, timeout=10.0):
        """Wait for a datagram holding the line assignment (e.g. READY=1); return the datagram.

        Datagrams already seen are consumed in order, so waiting twice for READY=1 needs two.
        Gives up after limit(timeout) seconds.
        """
        timeout = limit(timeout)
        deadline = time.monotonic() + timeout
        while True:
            for i, message in enumerate(self.messages):
                if assignment in message.split("\n"):
                    del self.messages[: i + 1]
                    return message
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no {assignment} within {timeout}s; got {self.messages}")
            self.sock.settimeout(remaining)
            try:
                data = self.sock.recv(4096)
            except socket.timeout:
                continue
            self.messages.append(data.decode())
            self.received.append(self.messages[-1])

    def drain(self):
        """Read every datagram already sent; return all not yet consumed."""
        self.sock.setblocking(False)
        try:
            while True:
                self.messages.append(self.sock.recv(4096).decode())
                self.received.append(self.messages[-1])
        except BlockingIOError:
            pass
        finally:
            self.sock.setblocking(True)
        return list(self.messages)

    def close(self):
        """Close the socket."""
        self.sock.close()


class Daemon:
    """One azs-usaged process in --foreground mode; stderr lines are collected as they come."""

    def __init__(self, binary, config_path, env=None):
        self.binary = binary
        self.config_path = config_path
        self.env = dict(os.environ)
        for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "JOURNAL_STREAM",
                     "CREDENTIALS_DIRECTORY"):
            self.env.pop(name, None)
        self.env.update(env or {})
        self.proc = None
        self.lines = []
        self.cond = threading.Condition()
        self.reader = None

    def start(self, *args):
        """Start the daemon with -c CONFIG --foreground and args."""
        self.proc = subprocess.Popen(
            [str(self.binary), "-c", str(self.config_path), "--foreground", *args],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env=self.env, text=True)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        return self

    def _read(self):
        for line in self.proc.stderr:
            with self.cond:
                self.lines.append(line.rstrip("\n"))
                self.cond.notify_all()
        with self.cond:
            self.cond.notify_all()

    def wait_for_line(self, predicate, timeout=10.0, after=0):
        """Wait for a log line (from index after) matching predicate(fields, line); return
        (index, fields). Gives up after limit(timeout) seconds, or when the daemon has exited
        and all its lines are read."""
        deadline = time.monotonic() + limit(timeout)
        with self.cond:
            while True:
                for i in range(after, len(self.lines)):
                    fields = parse_logfmt(self.lines[i])
                    if predicate(fields, self.lines[i]):
                        return i, fields
                remaining = deadline - time.monotonic()
                if remaining <= 0 or (self.proc.poll() is not None and not self.reader.is_alive()):
                    raise AssertionError("no matching log line; log was:\n" + self.log())
                self.cond.wait(min(remaining, 0.1))

    def log(self):
        """Everything logged so far."""
        with self.cond:
            return "\n".join(self.lines)

    def alive(self):
        """True while the process runs."""
        return self.proc.poll() is None

    def kill(self, signo):
        """Send signo to the daemon."""
        self.proc.send_signal(signo)

    def wait(self, timeout):
        """Wait for the exit, giving up after limit(timeout) seconds; return the exit status."""
        rc = self.proc.wait(timeout=limit(timeout))
        self.reader.join(timeout=limit(5))
        return rc

    def stop(self):
        """Make sure the process is gone (SIGTERM, then SIGKILL)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=limit(10))
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _required_dir(name):
    value = os.environ.get(name)
    if not value:
        pytest.fail(f"${name} is not set (meson test sets it; see tests/e2e/conftest.py)")
    return Path(value)


@pytest.fixture(scope="session")
def build_dir():
    """The meson build root under test."""
    return _required_dir("AZS_BUILD_DIR")


@pytest.fixture(scope="session")
def source_dir():
    """The source root."""
    return _required_dir("AZS_SOURCE_DIR")


@pytest.fixture(scope="session")
def daemon_bin(build_dir):
    """Path of the azs-usaged executable."""
    path = build_dir / "daemon" / "azs-usaged"
    if not os.access(path, os.X_OK):
        pytest.fail(f"{path} is not built")
    return path


@pytest.fixture
def config(tmp_path):
    """A valid configuration written to a fresh directory with mode-0600 secret files."""
    c = ConfigFile(tmp_path / "etc")
    c.write()
    return c


@pytest.fixture
def notify_socket():
    """A NOTIFY_SOCKET receiver."""
    s = NotifySocket()
    yield s
    s.close()


@pytest.fixture
def start_daemon(daemon_bin, config, notify_socket):
    """A function starting the daemon on the config fixture with NOTIFY_SOCKET set; every
    daemon started is stopped at the end of the test."""
    started = []

    def start(*args, env=None):
        environment = {"NOTIFY_SOCKET": notify_socket.address}
        environment.update(env or {})
        d = Daemon(daemon_bin, config.path, environment).start(*args)
        started.append(d)
        return d

    yield start
    for d in started:
        d.stop()


@pytest.fixture
def run_daemon(daemon_bin):
    """A function running azs-usaged to completion with args (env: extra environment variables);
    returns CompletedProcess. timeout is scaled by limit()."""
    def run(*args, timeout=30, env=None):
        environment = {k: v for k, v in os.environ.items()
                       if k not in ("NOTIFY_SOCKET", "JOURNAL_STREAM", "CREDENTIALS_DIRECTORY")}
        environment.update(env or {})
        return subprocess.run([str(daemon_bin), *map(str, args)], stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=limit(timeout),
                              env=environment)
    return run
