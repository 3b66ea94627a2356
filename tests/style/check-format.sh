#!/bin/bash
# Proves the C sources are formatted by the project's .clang-format (STYLE.md: tabs, 100
# columns, function names at column 0). Prints the first differences and fails when any file
# differs; `clang-format -i FILE` mends it.
set -eu
cd "$1"
if ! command -v clang-format >/dev/null; then
	echo "clang-format not found (scripts/install-deps installs it)" >&2
	exit 1
fi
if [ -d .git ] && command -v git >/dev/null; then
	mapfile -t files < <(git ls-files '*.c' '*.h')
else
	mapfile -t files < <(find lib daemon tests -name '*.c' -o -name '*.h' | sort)
fi
[ ${#files[@]} -gt 0 ] || { echo "no C sources found" >&2; exit 1; }
bad=0
for f in "${files[@]}"; do
	[ -f "$f" ] || continue
	if ! clang-format --dry-run --Werror "$f" >/dev/null 2>&1; then
		echo "not formatted: $f"
		clang-format --dry-run "$f" 2>&1 | head -6
		bad=$((bad + 1))
	fi
done
echo "${#files[@]} files checked, $bad not formatted"
[ $bad -eq 0 ]
