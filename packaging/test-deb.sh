#!/bin/bash
# Proves the Debian package works as an operator meets it: builds the .deb from a copy of this tree
# with dpkg-buildpackage -b -us -uc (tests off: DEB_BUILD_OPTIONS=nocheck), checks that it holds the
# binaries, both units, the example config as a conffile, the man pages, the journal catalog and
# whatever monitoring/ has, installs it (dpkg -i), runs the installed azs-usaged --version and
# --check-config on a config made from the installed example (dummy secrets, the store in a
# temporary directory), and purges it again, also when a step fails.
#
#   packaging/test-deb.sh      exit 0 passed, 1 failed, 77 skipped (not root, or the package is
#                              installed already: this test does not touch an installation it
#                              did not make)
# scripts/test runs it and counts it as one test.
set -uo pipefail
cd "$(dirname "$0")/.."
src=$PWD

if [ "$(id -u)" -ne 0 ]; then
	echo "skipped: installing a package needs root"
	exit 77
fi
if [ "$(dpkg-query -W -f='${Status}' azs-usaged 2>/dev/null)" = "install ok installed" ]; then
	echo "skipped: azs-usaged is installed on this machine already; not touching it"
	exit 77
fi
for tool in dpkg-buildpackage dh; do
	command -v "$tool" >/dev/null || { echo "$tool not found (scripts/install-deps installs it)"; exit 1; }
done

tmp=$(mktemp -d)
installed=0
cleanup() {
	if [ $installed -eq 1 ]; then
		dpkg --purge azs-usaged >"$tmp/purge.log" 2>&1 || { echo "dpkg --purge failed:"; cat "$tmp/purge.log"; }
	fi
	rm -rf "$tmp"
}
trap cleanup EXIT
fail() { echo "FAILED: $*"; exit 1; }

# a copy of the tree as a clone would have it (plus files not committed yet), without builds
mkdir "$tmp/src"
if [ -d .git ] && command -v git >/dev/null; then
	git ls-files -z --cached --others --exclude-standard |
		while IFS= read -r -d '' f; do [ -f "$f" ] && printf '%s\0' "$f"; done |
		tar -c --null -T - | tar -x -C "$tmp/src"
else
	tar -c --exclude='./build*' --exclude=./.git . | tar -x -C "$tmp/src"
fi
ln -s packaging/debian "$tmp/src/debian"

echo "building the .deb"
(cd "$tmp/src" && DEB_BUILD_OPTIONS=nocheck DEB_BUILD_PROFILES=nocheck \
	dpkg-buildpackage -b -us -uc) >"$tmp/build.log" 2>&1 ||
	{ tail -n 40 "$tmp/build.log"; fail "dpkg-buildpackage"; }
version=$(dpkg-parsechangelog -l packaging/debian/changelog -S Version)
deb=$tmp/azs-usaged_${version}_$(dpkg --print-architecture).deb
[ -f "$deb" ] || fail "no $deb"

dpkg-deb -c "$deb" | awk '{ print $6 }' | sed 's|^\./|/|' >"$tmp/contents"
want=(/usr/sbin/azs-usaged /usr/bin/azs-usagectl /etc/azs-usaged/azs-usaged.conf
	/usr/lib/systemd/catalog/azs-usaged.catalog /usr/share/man/man8/azs-usaged.8.gz
	/usr/share/man/man8/azs-usagectl.8.gz /usr/share/man/man5/azs-usaged.conf.5.gz)
for f in monitoring/*.json monitoring/*.yml; do
	[ -f "$f" ] && want+=("/usr/share/azs-usaged/$(basename "$f")")
done
for f in "${want[@]}"; do
	grep -qx "$f" "$tmp/contents" || fail "the package lacks $f"
done
for unit in azs-usaged.service azs-usaged@.service; do
	grep -qE "^(/usr)?/lib/systemd/system/$unit\$" "$tmp/contents" || fail "the package lacks $unit"
done
dpkg-deb --ctrl-tarfile "$deb" | tar -x -O ./conffiles | grep -qx /etc/azs-usaged/azs-usaged.conf ||
	fail "the example config is not a conffile"

echo "installing $(basename "$deb")"
installed=1
dpkg -i "$deb" >"$tmp/install.log" 2>&1 || { cat "$tmp/install.log"; fail "dpkg -i"; }

out=$(/usr/sbin/azs-usaged --version) || fail "azs-usaged --version"
[ "$out" = "azs-usaged ${version%-*}" ] || fail "azs-usaged --version says '$out', not azs-usaged ${version%-*}"
/usr/bin/azs-usagectl --version >/dev/null || fail "azs-usagectl --version"

# the installed example, with its two secrets beside it and the store in the temporary directory
mkdir -m 0700 "$tmp/etc"
sed "s|^path = .*|path = $tmp/etc/usage.db|" /etc/azs-usaged/azs-usaged.conf >"$tmp/etc/azs-usaged.conf"
grep -q "^path = $tmp/etc/usage.db\$" "$tmp/etc/azs-usaged.conf" || fail "no [store] path in the example"
(umask 077; echo dummy-stack-secret >"$tmp/etc/stack-secret"; echo dummy-azure-secret >"$tmp/etc/azure-secret")
out=$(/usr/sbin/azs-usaged --check-config -c "$tmp/etc/azs-usaged.conf" 2>&1) ||
	{ echo "$out"; fail "azs-usaged --check-config on the installed example"; }
[ "$out" = "configuration OK" ] || { echo "$out"; fail "--check-config did not say configuration OK"; }
# and without the secrets it must not pass
rm "$tmp/etc/stack-secret"
/usr/sbin/azs-usaged --check-config -c "$tmp/etc/azs-usaged.conf" >/dev/null 2>&1 &&
	fail "--check-config passed without the stack secret"

installed=0
dpkg --purge azs-usaged >"$tmp/purge.log" 2>&1 || { cat "$tmp/purge.log"; fail "dpkg --purge"; }
[ "$(dpkg-query -W -f='${Status}' azs-usaged 2>/dev/null)" != "install ok installed" ] ||
	fail "still installed after the purge"
[ ! -e /usr/sbin/azs-usaged ] && [ ! -e /etc/azs-usaged/azs-usaged.conf ] ||
	fail "files left after the purge"
echo "the .deb builds, installs, runs and purges"
