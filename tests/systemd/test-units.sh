#!/bin/bash
# Proves the shipped unit files are valid for this systemd (systemd-analyze verify) and hardened to
# an exposure of at most 2.0 (threshold 20: systemd counts in tenths) (systemd-analyze security --offline), the bar of ARCHITECTURE.md
# section 8. The units are checked as shipped, except that ExecStart points at the daemon just
# built (verify insists that the binary exists).
set -eu
src=$1
daemon=$2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

if ! command -v systemd-analyze >/dev/null; then
	echo "systemd-analyze not found" >&2
	exit 1
fi

sed "s|/usr/sbin/azs-usaged|$daemon|" "$src/systemd/azs-usaged.service" >"$tmp/azs-usaged.service"
sed "s|/usr/sbin/azs-usaged|$daemon|" "$src/systemd/azs-usaged@.service" >"$tmp/azs-usaged@.service"
cp "$tmp/azs-usaged@.service" "$tmp/azs-usaged@stamp1.service"

fail=0
for unit in azs-usaged.service azs-usaged@stamp1.service; do
	out=$(systemd-analyze verify "$tmp/$unit" 2>&1) || { echo "verify $unit failed:"; fail=1; }
	# verify warns without failing for some mistakes; any output about our unit is a finding
	if printf '%s\n' "$out" | grep -q "$unit"; then
		printf '%s\n' "$out"
		fail=1
	fi
	if ! systemd-analyze security --offline=yes --threshold=20 "$tmp/$unit" >"$tmp/security.txt" 2>&1; then
		echo "security exposure of $unit is above 2.0:"
		tail -n 3 "$tmp/security.txt"
		fail=1
	fi
	grep -o 'Overall exposure level.*' "$tmp/security.txt" || true
done

# The template must keep each stamp apart: its own config, credentials and state directory.
grep -q '^ExecStart=.* -c /etc/azs-usaged/%i.conf$' "$src/systemd/azs-usaged@.service" || { echo "template config is not per instance"; fail=1; }
grep -q '^StateDirectory=azs-usaged/%i$' "$src/systemd/azs-usaged@.service" || { echo "template state is not per instance"; fail=1; }
grep -q '^Type=notify$' "$src/systemd/azs-usaged.service" || { echo "unit is not Type=notify"; fail=1; }
exit $fail
