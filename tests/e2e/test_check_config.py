"""azs-usaged --check-config and the informational options: a valid file is reported OK; every
mistake of a broken file is reported with its file and line (not just the first), a secret never
shows in the output even beside a mistake, nor when it was pasted as the value of a *_file key
(the messages name the directories searched instead), nor when the file has errors and the
secret it read also appears elsewhere in it; --help and --version succeed; usage errors
exit 2.
"""
import os
import re

import pytest

from conftest import AZURE_SECRET, STACK_SECRET


def test_check_config_valid_file_prints_ok(run_daemon, config):
    r = run_daemon("--check-config", "-c", config.path)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "configuration OK\n"
    assert r.stderr == ""


def test_check_config_short_option_n_is_the_same(run_daemon, config):
    r = run_daemon("-n", "-c", config.path)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "configuration OK\n"


def test_check_config_reports_all_three_mistakes_with_file_and_line(run_daemon, config):
    config.write(changes={
        ("stack", "poll_interval"): "soon",
        ("commerce", "batch_size"): "5000",
        ("store", "colour"): "blue",
    })
    r = run_daemon("--check-config", "-c", config.path)
    assert r.returncode == 1
    assert "configuration OK" not in r.stdout
    lines = r.stderr.splitlines()
    for section, key in (("stack", "poll_interval"), ("commerce", "batch_size"),
                         ("store", "colour")):
        prefix = f"{config.path}:{config.line_of(section, key)}: {section}.{key}:"
        assert any(line.startswith(prefix) for line in lines), (prefix, r.stderr)


def test_check_config_missing_required_key_names_file_and_key(run_daemon, config):
    config.write(changes={("commerce", "url"): None})
    r = run_daemon("--check-config", "-c", config.path)
    assert r.returncode == 1
    assert f"{config.path}: commerce.url: required" in r.stderr.splitlines(), r.stderr


def test_check_config_never_prints_a_secret_beside_a_mistake(run_daemon, config):
    # The mistakes sit right next to the secrets: an invalid identity on the line after
    # client_secret_file (whose file holds STACK_SECRET), and a secret written inline in the
    # file, which is not allowed, on the line before the azure client_secret_file.
    text = config.render(changes={("stack", "identity"): None})
    text = text.replace("client_secret_file = stack-secret\n",
                        "client_secret_file = stack-secret\nidentity = kerberos\n", 1)
    text = text.replace("client_secret_file = azure-secret\n",
                        f"client_secret = {AZURE_SECRET}\nclient_secret_file = azure-secret\n", 1)
    config.write_text(text)
    assert AZURE_SECRET in config.path.read_text()
    r = run_daemon("--check-config", "-c", config.path)
    assert r.returncode == 1
    lines = r.stderr.splitlines()
    assert any(line.startswith(f"{config.path}:{config.line_of('stack', 'identity')}: ")
               for line in lines), r.stderr
    assert any(line.startswith(f"{config.path}:{config.line_of('azure', 'client_secret')}: ")
               for line in lines), r.stderr
    for secret in (STACK_SECRET, AZURE_SECRET):
        assert secret not in r.stdout
        assert secret not in r.stderr
        # not even a recognisable part of it
        assert secret[-12:] not in r.stderr


PASTED = "s3cr3tValue-Pasted-9c1e5b7a"


def _pasted_config(config, key=("azure", "client_secret_file")):
    """The valid file with the secret itself written as the value of a *_file key."""
    return config.write(changes={key: PASTED})


def _assert_pasted_not_shown(r):
    for stream in (r.stdout, r.stderr):
        assert PASTED not in stream, stream
        assert "s3cr3t" not in stream, stream


@pytest.mark.parametrize("key", [("azure", "client_secret_file"),
                                 ("stack", "client_certificate_file"),
                                 ("http", "ca_file")])
def test_check_config_pasted_secret_missing_file_names_directories(run_daemon, config, key,
                                                                    tmp_path):
    changes = {key: PASTED}
    if key == ("stack", "client_certificate_file"):
        changes[("stack", "client_secret_file")] = None
    config.write(changes=changes)
    r = run_daemon("--check-config", "-c", config.path)
    assert r.returncode == 1
    _assert_pasted_not_shown(r)
    want = (f"{config.path}:{config.line_of(*key)}: {key[0]}.{key[1]}: no such file in "
            f"{config.dir} ($CREDENTIALS_DIRECTORY is not set)")
    assert want in r.stderr.splitlines(), r.stderr

    creds = tmp_path / "creds"
    creds.mkdir()
    r = run_daemon("--check-config", "-c", config.path, env={"CREDENTIALS_DIRECTORY": str(creds)})
    assert r.returncode == 1
    _assert_pasted_not_shown(r)
    want = (f"{config.path}:{config.line_of(*key)}: {key[0]}.{key[1]}: no such file in "
            f"$CREDENTIALS_DIRECTORY ({creds}) or {config.dir}")
    assert want in r.stderr.splitlines(), r.stderr


def test_check_config_pasted_secret_unreadable_directory_empty_multiline(run_daemon, config):
    _pasted_config(config)
    line = config.line_of("azure", "client_secret_file")
    target = config.dir / PASTED
    prefix = f"{config.path}:{line}: azure.client_secret_file: file in {config.dir}: "

    cases = []
    if os.geteuid() != 0:  # root reads a mode-0 file; a symlink loop stops everyone
        cases.append(("unreadable", lambda: (target.write_text("x-value\n"), target.chmod(0)),
                      "Permission denied"))
    else:
        cases.append(("unreadable", lambda: target.symlink_to(target),
                      "Too many levels of symbolic links"))
    cases += [
        ("directory", lambda: target.mkdir(), "Is a directory"),
        ("empty", lambda: (target.write_text(""), target.chmod(0o600)), "is empty"),
        ("multi-line", lambda: (target.write_text("line-one\nline-two\n"), target.chmod(0o600)),
         "holds more than one line"),
    ]
    for name, make, reason in cases:
        make()
        try:
            r = run_daemon("--check-config", "-c", config.path)
            assert r.returncode == 1, name
            _assert_pasted_not_shown(r)
            assert "line-one" not in r.stderr
            assert prefix + reason in r.stderr.splitlines(), (name, r.stderr)
        finally:
            if target.is_dir() and not target.is_symlink():
                target.rmdir()
            elif target.exists() or target.is_symlink():
                target.unlink()


def test_check_config_pasted_secret_not_in_daemon_log(run_daemon, config):
    # the daemon itself (not --check-config) logs the same problems before refusing to start
    _pasted_config(config)
    r = run_daemon("-c", config.path, "--foreground")
    assert r.returncode == 1
    _assert_pasted_not_shown(r)
    assert "azure.client_secret_file: no such file in" in r.stderr


SHARED = "shared_secret_value_3e8a1f60"  # a valid key name: an unknown key is named as written


def _broken_with_read_secret(config):
    """A file with errors whose stack secret, read fine, also appears as an unknown key and as
    the value of another *_file key."""
    secret = config.dir / "stack-secret"
    secret.write_text(SHARED + "\n")
    secret.chmod(0o600)
    return config.write(changes={("stack", "poll_interval"): "soon",
                                 ("azure", "client_secret_file"): SHARED},
                        extra={"commerce": [f"{SHARED} = 1"]})


def test_check_config_failed_load_still_redacts_the_secret_it_read(run_daemon, config):
    _broken_with_read_secret(config)
    r = run_daemon("--check-config", "-c", config.path)
    assert r.returncode == 1
    lines = r.stderr.splitlines()
    assert any(line.startswith(f"{config.path}:{config.line_of('stack', 'poll_interval')}: ")
               for line in lines), r.stderr
    unknown = (f"{config.path}:{config.line_of('commerce', SHARED)}: "
               "commerce.[redacted]: unknown key")
    assert any(line.startswith(unknown) for line in lines), r.stderr
    for stream in (r.stdout, r.stderr):
        assert SHARED not in stream
        assert "shared_secret" not in stream


def test_daemon_start_with_broken_file_still_redacts_the_secret_it_read(run_daemon, config):
    _broken_with_read_secret(config)
    r = run_daemon("-c", config.path, "--foreground")
    assert r.returncode == 1
    assert "unknown key" in r.stderr
    assert "not starting" in r.stderr
    assert "shared_secret" not in r.stderr
    assert "shared_secret" not in r.stdout


def test_check_config_prints_warnings_apart_from_errors(run_daemon, config):
    # a group-readable secret and a tenant that adfs ignores are warnings: the file is valid
    (config.dir / "stack-secret").chmod(0o640)
    config.write(changes={("stack", "identity"): "adfs"})
    r = run_daemon("--check-config", "-c", config.path)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "configuration OK\n"
    assert r.stderr.splitlines() == [
        f"warning: {config.path}:{config.line_of('stack', 'tenant')}: stack.tenant: "
        "ignored with identity = adfs",
        f"warning: {config.path}:{config.line_of('stack', 'client_secret_file')}: "
        f"stack.client_secret_file: file in {config.dir}: readable by group or others "
        "(chmod 0600 it)",
    ], r.stderr

    # beside an error, the error keeps the contract form and comes first
    config.write(changes={("stack", "identity"): "adfs", ("commerce", "batch_size"): "0"})
    r = run_daemon("--check-config", "-c", config.path)
    assert r.returncode == 1
    lines = r.stderr.splitlines()
    assert lines[0].startswith(f"{config.path}:{config.line_of('commerce', 'batch_size')}: "
                               "commerce.batch_size: "), r.stderr
    assert all(line.startswith("warning: ") for line in lines[1:]), r.stderr
    assert len(lines) == 3, r.stderr


def test_check_config_unreadable_file_exits_1_naming_it(run_daemon, tmp_path):
    missing = tmp_path / "nowhere.conf"
    r = run_daemon("--check-config", "-c", missing)
    assert r.returncode == 1
    assert str(missing) in r.stderr
    assert "configuration OK" not in r.stdout


def test_check_config_finds_secrets_in_credentials_directory_as_readme_says(run_daemon,
                                                                           config, tmp_path):
    # README: the secrets live in /etc/azs-usaged/credentials/, not beside the file, and
    # --check-config is run with CREDENTIALS_DIRECTORY pointing there
    creds = tmp_path / "credentials"
    creds.mkdir(mode=0o700)
    for name in ("stack-secret", "azure-secret"):
        (config.dir / name).rename(creds / name)
    r = run_daemon("--check-config", "-c", config.path)
    assert r.returncode == 1
    assert "($CREDENTIALS_DIRECTORY is not set)" in r.stderr
    r = run_daemon("--check-config", "-c", config.path, env={"CREDENTIALS_DIRECTORY": str(creds)})
    assert r.returncode == 0, r.stderr
    assert r.stdout == "configuration OK\n"


def test_readme_and_help_check_config_with_the_units_credentials(run_daemon, source_dir):
    # the directories the commands name are those the units' LoadCredential= lines read from
    units = source_dir / "systemd"
    assert "LoadCredential=stack-secret:/etc/azs-usaged/credentials/stack-secret" in \
        (units / "azs-usaged.service").read_text()
    assert "LoadCredential=stack-secret:/etc/azs-usaged/credentials/%i/stack-secret" in \
        (units / "azs-usaged@.service").read_text()
    readme = (source_dir / "README.md").read_text()
    assert "CREDENTIALS_DIRECTORY=/etc/azs-usaged/credentials azs-usaged --check-config\n" in readme
    assert ("CREDENTIALS_DIRECTORY=/etc/azs-usaged/credentials/STAMP azs-usaged --check-config "
            "-c /etc/azs-usaged/STAMP.conf") in readme
    r = run_daemon("--help")
    assert "CREDENTIALS_DIRECTORY=/etc/azs-usaged/credentials" in r.stdout


def test_help_describes_every_option_and_exits_0(run_daemon):
    r = run_daemon("--help")
    assert r.returncode == 0
    for heading in ("SYNOPSIS", "DESCRIPTION", "OPTIONS", "SIGNALS", "FILES", "EXIT STATUS"):
        assert re.search(rf"^{heading}$", r.stdout, re.M), heading
    for option in ("-c, --config FILE", "--check-config", "--foreground", "--help", "--version",
                   "SIGHUP", "SIGTERM", "/etc/azs-usaged/azs-usaged.conf"):
        assert option in r.stdout, option
    assert re.search(r"^ +2 +usage error", r.stdout, re.M)


def test_version_prints_the_project_version_and_exits_0(run_daemon, source_dir):
    version = re.search(r"version: '([^']+)'", (source_dir / "meson.build").read_text()).group(1)
    r = run_daemon("--version")
    assert r.returncode == 0
    assert r.stdout == f"azs-usaged {version}\n"


def test_unknown_option_is_a_usage_error(run_daemon, config):
    r = run_daemon("--no-such-option", "-c", config.path)
    assert r.returncode == 2
    assert "--no-such-option" in r.stderr
    assert "--help" in r.stderr
    assert r.stdout == ""


def test_unexpected_argument_is_a_usage_error(run_daemon, config):
    r = run_daemon("-c", config.path, "surplus")
    assert r.returncode == 2
    assert "surplus" in r.stderr
