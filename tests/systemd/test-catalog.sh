#!/bin/bash
# Proves systemd/azs-usaged.catalog explains every key event: each MESSAGE_ID that lib/log.h
# defines has exactly one catalog entry and the catalog has no entry for an id lib/log.h does not
# define; each entry has a Subject and a body. Then journalctl itself parses the file
# (--update-catalog under a temporary --root, which leaves the system's catalog alone) and must
# list every id with its subject.
set -eu
src=$1
catalog=$src/systemd/azs-usaged.catalog
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail=0

sed -nE 's/^#define LOG_MESSAGE_ID_[A-Z_]+ +"([0-9a-f]{32})".*/\1/p' "$src/lib/log.h" | sort >"$tmp/defined"
sed -nE 's/^-- ([0-9a-fA-F]+)$/\1/p' "$catalog" | sort >"$tmp/catalog"
[ -s "$tmp/defined" ] || { echo "no LOG_MESSAGE_ID_ in lib/log.h"; exit 1; }
if [ "$(grep -c '^#define LOG_MESSAGE_ID_' "$src/lib/log.h")" -ne "$(wc -l <"$tmp/defined")" ]; then
	echo "a LOG_MESSAGE_ID_ in lib/log.h is not 32 lower-case hex digits:"
	grep '^#define LOG_MESSAGE_ID_' "$src/lib/log.h"
	fail=1
fi
dups=$(uniq -d "$tmp/catalog")
[ -z "$dups" ] || { echo "catalog entries given twice: $dups"; fail=1; }
missing=$(comm -23 "$tmp/defined" <(sort -u "$tmp/catalog"))
[ -z "$missing" ] || { echo "MESSAGE_IDs of lib/log.h without a catalog entry: $missing"; fail=1; }
extra=$(comm -13 "$tmp/defined" <(sort -u "$tmp/catalog"))
[ -z "$extra" ] || { echo "catalog entries for ids lib/log.h does not define: $extra"; fail=1; }

# The format (journal-catalog): "-- ID" opens an entry, header lines "Key: value" up to the first
# empty line, then the body. Ours also need a Subject and a body that says what to do.
awk '
	function done() {
		if (id != "" && !subject) { print "entry " id ": no Subject"; bad = 1 }
		if (id != "" && body == 0) { print "entry " id ": no body"; bad = 1 }
	}
	/^-- / { done(); id = $2; inhdr = 1; subject = 0; body = 0; next }
	id == "" { if ($0 != "" && $0 !~ /^#/) { print NR ": text before the first entry"; bad = 1 } next }
	inhdr && /^$/ { inhdr = 0; next }
	inhdr && /^Subject: ./ { subject = 1; next }
	inhdr && !/^[A-Za-z-]+: ./ { print NR ": not a header line: " $0; bad = 1; next }
	!inhdr && /[^ ]/ { body++ }
	END { done(); exit bad }
' "$catalog" || fail=1

if command -v journalctl >/dev/null; then
	mkdir -p "$tmp/root/usr/lib/systemd/catalog"
	cp "$catalog" "$tmp/root/usr/lib/systemd/catalog/"
	if ! journalctl --root="$tmp/root" --update-catalog >"$tmp/update.log" 2>&1 || [ -s "$tmp/update.log" ]; then
		echo "journalctl --update-catalog rejects the catalog:"
		cat "$tmp/update.log"
		fail=1
	fi
	journalctl --root="$tmp/root" --list-catalog >"$tmp/list" 2>&1 || true
	while read -r id; do
		grep -q "^$id azs-usaged: ." "$tmp/list" || { echo "journalctl does not list $id"; fail=1; }
	done <"$tmp/defined"
else
	echo "journalctl not found: the format was checked here only"
fi
exit $fail
