#!/bin/bash
# Check the Prometheus side with promtool (Debian package prometheus, see scripts/install-deps):
#   promtool.sh metrics TEST-HEALTH   /metrics as served by lib/health passes `promtool check metrics`
#   promtool.sh rules RULES TESTS     the alerting rules pass `promtool check rules` and `test rules`
# Without promtool it exits 77, which meson counts as skipped (never as passed).
set -euo pipefail

if ! command -v promtool >/dev/null; then
	echo "promtool not found (apt-get install prometheus): skipped"
	exit 77
fi

case "$1" in
metrics)
	out=$(mktemp)
	trap 'rm -f "$out"' EXIT
	"$2" --dump-metrics >"$out"
	# an empty exposition would pass: make sure there is one
	grep -q '^# TYPE azs_usaged_ready gauge$' "$out"
	grep -q '^azs_usaged_http_request_duration_seconds_bucket{api="commerce",le="+Inf"} 1$' "$out"
	promtool check metrics <"$out"
	;;
rules)
	promtool check rules "$2"
	# promtool test rules resolves rule_files against the test file's directory
	promtool test rules "$3"
	;;
*)
	echo "usage: $0 metrics TEST-HEALTH | rules RULES TESTS" >&2
	exit 2
	;;
esac
