#!/bin/bash
# Proves packaging/rpm/azs-usaged.spec parses (rpmspec --parse, where the rpm tools are installed:
# Debian's package "rpm"; skipped otherwise) and packages the version meson builds.
set -eu
src=$1
version=$2
spec=$src/packaging/rpm/azs-usaged.spec
if ! command -v rpmspec >/dev/null; then
	echo "rpmspec not found (Debian package rpm): skipped"
	exit 77
fi
out=$(rpmspec --parse "$spec" 2>&1) || { echo "$out"; echo "rpmspec --parse failed"; exit 1; }
if printf '%s\n' "$out" | grep -qiE '^(error|warning):'; then
	printf '%s\n' "$out" | grep -iE '^(error|warning):'
	exit 1
fi
got=$(rpmspec -q --qf '%{VERSION}\n' --srpm "$spec" 2>/dev/null)
[ "$got" = "$version" ] || { echo "the spec packages $got, meson builds $version"; exit 1; }
echo "rpmspec --parse: OK, version $got"
