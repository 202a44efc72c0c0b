#!/usr/bin/env bash
# README's test command (`npm test`): runs `bun test` with the suite's 60 s per-test timeout, passing
# any arguments on (files, --todo, -t), then prints again, at the very end, every failed test with the
# error lines above it and every "Unhandled error between tests" block, each under the file it came
# from. CI keeps only the tail of a run's output; without this a failure scrolled off it unseen.
# Exit status: bun's.
set -uo pipefail
cd "$(dirname "$0")/.."
log=$(mktemp "${TMPDIR:-/tmp}/clearbox-test.XXXXXX")
trap 'rm -f "$log"' EXIT
bun test --timeout 60000 "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
summary=$(awk '
  function reset() { n = 0 }
  # bun lists the failed tests again in its closing summary, after the last file: already printed.
  /^[0-9]+ tests? failed:$/ { summary = 1 }
  summary { next }
  /^test\/.*\.test\.(ts|tsx):$/ { file = $0; reset(); next }
  /^# Unhandled error between tests/ { inblock = 1; dashes = 0; print "\n== " file; print; next }
  inblock { print; if ($0 ~ /^-+$/ && ++dashes == 2) inblock = 0; next }
  /^\((pass|skip|todo)\) / { reset(); next }
  /^\(fail\) / {
    print "\n== " file
    start = n > 40 ? n - 40 : 0
    for (i = start; i < n; i++) print buf[i]
    print
    reset(); next
  }
  { buf[n++] = $0 }
' "$log")
if [[ -n $summary ]]; then
  printf '\n==================== failures and errors, again ====================%s\n' "$summary"
fi
exit "$status"
