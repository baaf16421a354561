#!/usr/bin/env bash
# End to end: an axum hello-world's requests per second bare and behind the full server stack
# (RedLayer, ProblemLayer, inbound deadline, bulkhead, breaker) with the Prometheus recorder and
# its upkeep, under wrk on loopback. The server (`loadcheck --serve`, both apps in one process)
# is pinned to core 0 and wrk to core 1; rounds alternate bare and stacked; each round reports
# requests/s and the server's resident memory (VmRSS) after it; the result is the median of the
# per-pair ratios. Installs wrk from Debian if it is missing. Bounded: PAIRS x 2 x SECS seconds
# plus a warm-up; the server exits by itself after that even if this script is killed.
#
#   bash benches/e2e.sh                       # 5 pairs of 10 s rounds, 32 connections
#   PAIRS=3 SECS=6 CONNS=64 bash benches/e2e.sh
#   PAIRS=0 VARIANTS=3 SECS=5 bash benches/e2e.sh   # 3 rounds over each variant of the stack
#   STACK=one_layer bash benches/e2e.sh              # pair bare with a variant instead of full
#
# Variants (see loadcheck's `variants`): red (RedLayer alone), inner (the inner layers alone),
# one_layer (the full stack in one Router::layer call), timed_inner (the inner layers also
# recording durations, not built in counts_only), no_recorder (the full stack built under the
# no-op recorder).
set -euo pipefail

PAIRS=${PAIRS:-5}
SECS=${SECS:-10}
CONNS=${CONNS:-32}
SERVER_CORE=${SERVER_CORE:-0}
WRK_CORE=${WRK_CORE:-1}

cd "$(dirname "$0")/.."

if ! command -v wrk >/dev/null; then
    as_root=()
    if [ "$(id -u)" != 0 ]; then
        command -v sudo >/dev/null || { echo "wrk is missing and this user cannot install it" >&2; exit 1; }
        as_root=(sudo)
    fi
    "${as_root[@]}" apt-get install -y wrk >/dev/null 2>&1 \
        || { "${as_root[@]}" apt-get update >/dev/null && "${as_root[@]}" apt-get install -y wrk >/dev/null; }
fi

cargo build --release -q -p examples --bin loadcheck
bin=target/release/loadcheck

out=$(mktemp)
VARIANTS=${VARIANTS:-0}
budget=$(((PAIRS * 2 + VARIANTS * 6) * (SECS + 2) + 60))
taskset -c "$SERVER_CORE" "$bin" --serve --for "$budget" >"$out" &
server=$!
trap 'kill "$server" 2>/dev/null || true; rm -f "$out" "$out.wrk"' EXIT
for _ in $(seq 100); do
    grep -q '^variants ' "$out" && break
    sleep 0.1
done
read -r _ bare _ full _ metrics <"$out"
STACK=${STACK:-full}
if [ "$STACK" != full ]; then
    full=$(sed -n 2p "$out" | tr ' ' '\n' | awk -F= -v n="$STACK" '$1 == n {print $2}')
    [ -n "$full" ] || { echo "no variant named $STACK" >&2; exit 1; }
fi

rss() { awk '/^VmRSS/ {printf "%.1f", $2 / 1024}' "/proc/$server/status"; }
# CPU time the server's threads have used, in ns (the scheduler's own accounting).
cpu_ns() { cat /proc/"$server"/task/*/schedstat | awk '{s += $1} END {printf "%.0f", s}'; }
round() { # URL SECONDS -> "requests/s  server-CPU-µs-per-request"
    local before after
    before=$(cpu_ns)
    taskset -c "$WRK_CORE" wrk -t1 -c"$CONNS" -d"$2"s "$1" >"$out.wrk"
    after=$(cpu_ns)
    awk -v cpu=$((after - before)) '
        / requests in / {n = $1}
        /^Non-2xx/ {bad = $NF}
        /^Requests\/sec/ {rps = $2}
        END {if (bad) {print "non-2xx responses: " bad > "/dev/stderr"; exit 1}
             printf "%s %.2f\n", rps, cpu / n / 1000}' "$out.wrk"
}

median() { printf '%s\n' "$@" | sort -n | awk '{a[NR] = $1} END {print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }

echo "load before: $(uptime)"
echo "bare: $bare; stack ($STACK): $full"
echo "server pinned to core $SERVER_CORE (pid $server), wrk -t1 -c$CONNS -d${SECS}s pinned to core $WRK_CORE"
echo "server RSS at start: $(rss) MB; warm-up: 2 s each"
round "$bare" 2 >/dev/null
round "$full" 2 >/dev/null
echo "rates in requests/s; CPU: the server's CPU time per request, in µs; RSS: the server's after the round"
printf '%-4s %11s %9s %8s %11s %9s %8s %7s %9s\n' pair "bare req/s" "CPU µs" "RSS MB" "stack req/s" "CPU µs" "RSS MB" kept "CPU ratio"
ratios=()
cpu_ratios=()
for pair in $(seq 1 "$PAIRS"); do
    read -r b bc < <(round "$bare" "$SECS"); rb=$(rss)
    read -r f fc < <(round "$full" "$SECS"); rf=$(rss)
    r=$(awk -v b="$b" -v f="$f" 'BEGIN {printf "%.1f", 100 * f / b}')
    c=$(awk -v b="$bc" -v f="$fc" 'BEGIN {printf "%.1f", 100 * f / b}')
    ratios+=("$r")
    cpu_ratios+=("$c")
    printf '%-4s %11.0f %9s %8s %11.0f %9s %8s %6s%% %8s%%\n' "$pair" "$b" "$bc" "$rb" "$f" "$fc" "$rf" "$r" "$c"
done
if [ "$PAIRS" -gt 0 ]; then
    echo "median: the stack kept $(median "${ratios[@]}")% of the bare rate, using $(median "${cpu_ratios[@]}")% of its CPU per request"
fi
if [ "$VARIANTS" -gt 0 ]; then
    read -r _ more < <(sed -n 2p "$out")
    declare -A cpu=()
    echo "variants: requests/s and server CPU µs per request, $VARIANTS rounds of ${SECS} s each"
    for r in $(seq "$VARIANTS"); do
        line="round $r:"
        for kv in "bare=$bare" "full=$full" $more; do
            read -r rps c < <(round "${kv#*=}" "$SECS")
            cpu[${kv%%=*}]+="$c "
            line+=$(printf ' %s %.0f/s %sµs;' "${kv%%=*}" "$rps" "$c")
        done
        echo "$line"
    done
    for name in bare red inner full one_layer timed_inner no_recorder; do
        if [ -n "${cpu[$name]:-}" ]; then
            # shellcheck disable=SC2086
            printf '  %-12s median %s µs of server CPU per request\n' "$name" "$(median ${cpu[$name]})"
        fi
    done
fi
echo "series exported: $(curl -s --max-time 5 "$metrics" 2>/dev/null | grep -vc '^#' || echo '?') sample lines at $metrics"
echo "load after: $(uptime)"
