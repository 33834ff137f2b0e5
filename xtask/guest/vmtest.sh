# Sourced by every vm-test (xtask/guest/vm-tests/, run in the lab guest by test.sh with
# DETRACE_BIN and DETRACE_VM=1): how a test says what it checked, and the helpers they share.
set -u
# FAILED: checks a test lets go on (platform-names, wild-attribution), said with the fatal one.
FAILED=
fail() { echo "FAIL: ${FAILED:+$FAILED; and }$*"; exit 1; }
ok() { echo "ok: $*"; }
[ "${DETRACE_VM:-}" = 1 ] || fail "not in the lab guest (DETRACE_VM unset)"
D=$DETRACE_BIN
T=$(mktemp -d)

# wait_ready OUT WHAT: until the live command writing OUT says `ready` (its stderr in OUT's
# .err beside it), at most 15 s.
wait_ready() {
  for i in $(seq 150); do grep -q '^ready' "$1" 2>/dev/null && return 0; sleep 0.1; done
  fail "$2 did not get ready: $(tail -5 "$1" "${1%.out}.err" 2>/dev/null)"
}

# group_drops OUT ID: the drops of the group whose culprit is ID in the latest report of
# `drops --format json` writing OUT (its groups are cumulative); 0 before it has one.
group_drops() {
  python3 - "$1" "$2" <<'PY'
import json, sys
n = 0
for l in open(sys.argv[1]):
    try:
        g = json.loads(l)
        if g["culprit"]["id"] == sys.argv[2]:
            n = g["drops"]
    except (ValueError, KeyError, TypeError):
        pass  # not a group, or one being written
print(n)
PY
}
