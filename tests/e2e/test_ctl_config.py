"""azs-usagectl prints the problems of a broken configuration through the daemon's redaction.

A secret pasted where a key name belongs is echoed by the "unknown key" problem. The daemon's
--check-config redacts it because it read the secret file; azs-usagectl needs no credentials and
keeps none, but it still reads a secret file it may read only to redact its messages. A secret
file it cannot read, or that is not there, is no problem for it.
"""
import os
import subprocess

from conftest import ConfigFile
from waiting import limit


def ctl_bin(build_dir):
    return os.path.join(build_dir, "daemon", "azs-usagectl")


def run(cmd):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=limit(60))


# secrets shaped like key names, so that the "unknown key" problem echoes them
STACK_SECRET = "stacksecretvalue_4e1b9c"
AZURE_SECRET = "azuresecretvalue_7a20d3"


def test_ctl_redacts_a_secret_echoed_by_a_config_problem(tmp_path, build_dir, daemon_bin):
    config = ConfigFile(tmp_path / "etc")
    for name, value in (("stack-secret", STACK_SECRET), ("azure-secret", AZURE_SECRET)):
        (config.dir / name).write_text(value + "\n")
    path = config.write(extra={"stack": [f"{STACK_SECRET} = pasted by mistake"],
                               "azure": [f"{AZURE_SECRET} = 1"]})
    for cmd in ([ctl_bin(build_dir), "-c", str(path), "status"],
                [daemon_bin, "--check-config", "-c", str(path)]):
        r = run(cmd)
        assert r.returncode == 1, (cmd, r.stdout, r.stderr)
        out = r.stdout + r.stderr
        assert "unknown key" in out, out
        assert STACK_SECRET not in out and AZURE_SECRET not in out, out
        assert "[redacted]" in out, out


def test_ctl_needs_no_secret_file(tmp_path, build_dir):
    config = ConfigFile(tmp_path / "etc")
    path = config.write(extra={"stack": ["no_such_key = 1"]})
    # systemd hands the credentials to the unit only: here they are not there at all
    for name in ("stack-secret", "azure-secret"):
        (config.dir / name).unlink()
    r = run([ctl_bin(build_dir), "-c", str(path), "status"])
    assert r.returncode == 1
    # the configuration problem is what fails it, not the secret files it cannot read
    assert "stack.no_such_key: unknown key" in r.stderr, r.stderr
    assert "stack.client_secret_file" not in r.stderr, r.stderr
    assert "azure.client_secret_file" not in r.stderr, r.stderr
