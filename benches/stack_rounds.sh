#!/usr/bin/env bash
# Wall time of the production stacks against the peer, in alternating rounds of long runs: each
# round runs every stack once (STACK_CALLS calls, one process each, pinned to one core), and the
# ratios (ours - passthrough) / (peer - passthrough) are taken per round, then their median.
# Longer and steadier than criterion's 4-second samples on a noisy VM. Not run by CI.
#
#   ROUNDS=7 CALLS=300000 CORE=1 bash benches/stack_rounds.sh
#   EXTRA_FEATURES=count-allocations bash benches/stack_rounds.sh   # more bench features
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-7}
CALLS=${CALLS:-300000}
CORE=${CORE:-1}
B=$(cargo bench -p benches --features peer-metrics,stack-time${EXTRA_FEATURES:+,$EXTRA_FEATURES} --bench production_stack --no-run 2>&1 |
  grep -o 'target/release/deps/production_stack-[0-9a-f]*' | head -1)
STACKS="client/passthrough client/ours_prometheus client/peer server/passthrough server/ours_prometheus"
pin=()
command -v taskset >/dev/null && pin=(taskset -c "$CORE")
for round in $(seq "$ROUNDS"); do
  line="$round"
  for s in $STACKS; do
    line="$line $(STACK_CALLS=$CALLS "${pin[@]}" "$B" "$s")"
  done
  echo "$line"
done | awk -v stacks="$STACKS" '
  BEGIN { print "round " stacks " client_ratio server_ratio" }
  {
    c = ($3 - $2) / ($4 - $2); s = ($6 - $5) / ($4 - $2)
    cr[NR] = c; sr[NR] = s
    printf "%s %s %s %s %s %s %.3f %.3f\n", $1, $2, $3, $4, $5, $6, c, s
  }
  function median(a, n,   i, j, t) {
    for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] < a[i]) { t = a[i]; a[i] = a[j]; a[j] = t }
    return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
  }
  END { printf "median client %.3f server %.3f (ns per call; ratios of the time over each passthrough to the peer'"'"'s)\n", median(cr, NR), median(sr, NR) }'
