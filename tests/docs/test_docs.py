"""The operator's documents cannot drift from the code.

- Every MESSAGE_ID that lib/log.h defines has its section in docs/troubleshooting.md, headed by
  the id and the same Subject as its entry in the journal catalog (systemd/azs-usaged.catalog),
  with what happened, what to check and what to do; and neither document, nor the README, names
  an id that lib/log.h does not define.
- Every `azs-usagectl VERB` (or `$C VERB`, the troubleshooting page's shorthand) that README.md or
  docs/troubleshooting.md shows is a verb of `azs-usagectl --help`.
- The example configuration of the README's operator guide passes `azs-usaged --check-config`
  with dummy secrets in a credentials directory.
- The README links the troubleshooting page and keeps its first part: ./scripts/demo and
  ./scripts/test.
"""

import os
import re
import subprocess
from pathlib import Path

SRC = Path(os.environ.get("AZS_SOURCE_DIR", Path(__file__).resolve().parents[2]))
BUILD = Path(os.environ.get("AZS_BUILD_DIR", SRC / "build"))
README = SRC / "README.md"
TROUBLE = SRC / "docs" / "troubleshooting.md"
CATALOG = SRC / "systemd" / "azs-usaged.catalog"
ID = r"[0-9a-f]{32}"


def defined_ids():
    ids = re.findall(r'^#define LOG_MESSAGE_ID_[A-Z_]+ +"(' + ID + ')"',
                     (SRC / "lib" / "log.h").read_text(), re.M)
    assert ids, "no LOG_MESSAGE_ID_ in lib/log.h"
    return ids


def catalog_subjects():
    subjects, current = {}, None
    for line in CATALOG.read_text().splitlines():
        m = re.match(r"^-- (" + ID + ")$", line)
        if m:
            current = m.group(1)
            continue
        m = re.match(r"^Subject: (.+)$", line)
        if m and current:
            subjects[current] = m.group(1).strip()
            current = None
    return subjects


def trouble_sections():
    """{id: (heading text after the id, section text)} of the '### <id> <subject>' headings."""
    sections, current, lines = {}, None, []
    for line in TROUBLE.read_text().splitlines() + ["## end"]:
        if line.startswith("#"):
            if current:
                sections[current[0]] = (current[1], "\n".join(lines))
            m = re.match(r"^### (" + ID + ") (.+)$", line)
            current, lines = (m.group(1), m.group(2).strip()) if m else None, []
            continue
        lines.append(line)
    return sections


def test_every_message_id_is_in_the_catalog_and_the_troubleshooting_page():
    ids, subjects, sections = defined_ids(), catalog_subjects(), trouble_sections()
    for i in ids:
        assert i in subjects, f"MESSAGE_ID {i} of lib/log.h has no catalog entry"
        assert i in sections, f"MESSAGE_ID {i} of lib/log.h has no section in {TROUBLE.name}"
        heading, text = sections[i]
        assert heading == subjects[i], (
            f"{i}: the troubleshooting heading '{heading}' is not the catalog's Subject "
            f"'{subjects[i]}'")
        for part in ("**What happened.**", "**What to check.**", "**What to do.**"):
            assert part in text, f"{i}: the troubleshooting section lacks {part}"


def test_no_document_names_an_id_the_code_does_not_define():
    ids = set(defined_ids())
    for path in (TROUBLE, CATALOG, README):
        named = set(re.findall(r"(?<![0-9a-f])(" + ID + r")(?![0-9a-f])", path.read_text()))
        # only ids of our own series (the catalog's ids share a prefix); other 32-hex text is
        # not an id
        ours = {n for n in named if n[:24] == next(iter(ids))[:24]}
        assert ours <= ids, f"{path.name} names ids lib/log.h lacks: {sorted(ours - ids)}"


def help_verbs():
    out = subprocess.run([BUILD / "daemon" / "azs-usagectl", "--help"], capture_output=True,
                         text=True, check=True).stdout
    verbs, inside = set(), False
    lines = out.splitlines() + [""]
    for line, after in zip(lines, lines[1:]):
        if re.match(r"^[A-Z]", line):
            inside = line.strip() == "VERBS"
            continue
        # a verb line is indented four spaces and its description, on the next line, eight
        m = re.match(r"^    ([a-z]+)(?: \[?([a-z]+)\]?\b)?", line)
        if inside and m and after.startswith(" " * 8):
            verbs.add(m.group(1) if not m.group(2) else f"{m.group(1)} {m.group(2)}")
            if line[4 + len(m.group(1)):].startswith(" ["):
                verbs.add(m.group(1))  # "dead [list]": the word alone too
    return verbs


def code_of(text):
    """The fenced blocks and the inline code spans of a Markdown text, one per line."""
    blocks = re.findall(r"^```[a-z]*\n(.*?)^```", text, re.S | re.M)
    rest = re.sub(r"^```[a-z]*\n.*?^```", "", text, flags=re.S | re.M)
    return "\n".join(blocks + re.findall(r"`([^`\n]+)`", rest))


def shown_verbs(text):
    """(first word, second word or None) of every azs-usagectl command line (a line of code that
    starts with it, perhaps after NAME=value assignments) the text shows."""
    text = code_of(text)
    pattern = re.compile(r"^[ \t]*(?:[A-Z_]+=\S+[ \t]+)*(?:azs-usagectl|\$C)[ \t]+"
                         r"((?:(?:-c|--store)[ \t]+\S+[ \t]+|--json[ \t]+)*)"
                         r"([a-z]+)(?:[ \t]+([a-z]+)\b)?", re.M)
    return [(m.group(2), m.group(3)) for m in pattern.finditer(text)]


def test_every_verb_shown_exists():
    verbs = help_verbs()
    assert "status" in verbs and "tenant add" in verbs and "dead retry" in verbs, verbs
    for path in (README, TROUBLE):
        shown = shown_verbs(path.read_text())
        assert shown, f"{path.name} shows no azs-usagectl command"
        for first, second in shown:
            ok = (second and f"{first} {second}" in verbs) or first in verbs
            assert ok, f"{path.name} shows 'azs-usagectl {first} {second or ''}', which " \
                       f"azs-usagectl --help does not list"


def test_the_readme_example_configuration_is_valid(tmp_path):
    text = README.read_text()
    guide = text[text.index("## Operator's guide"):]
    m = re.search(r"```ini\n(.*?)```", guide, re.S)
    assert m, "the operator guide has no ini example"
    conf = tmp_path / "stamp1.conf"
    conf.write_text(m.group(1))
    creds = tmp_path / "credentials"
    creds.mkdir(mode=0o700)
    for name in re.findall(r"^client_secret_file = (\S+)$", m.group(1), re.M):
        p = creds / name
        p.write_text("Dummy-Secret-Value-0\n")
        p.chmod(0o600)
    env = dict(os.environ, CREDENTIALS_DIRECTORY=str(creds))
    r = subprocess.run([BUILD / "daemon" / "azs-usaged", "--check-config", "-c", str(conf)],
                       capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == "configuration OK", r.stdout + r.stderr


def test_the_readme_links_the_page_and_keeps_the_two_commands():
    text = README.read_text()
    assert "(docs/troubleshooting.md)" in text
    first = text[:text.index("## Operator's guide")]
    assert "./scripts/demo" in first and "./scripts/test" in first
