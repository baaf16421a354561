#!/usr/bin/env bash
# End to end, load-independent: user-space instructions per request of `loadcheck --serve` under
# callgrind, for the bare hello-world, the full stack and each variant (see benches/e2e.sh).
# wrk drives each app for a few seconds; callgrind's counters are zeroed before and dumped after
# each app's round, and the dump's instruction count is divided by wrk's request count. The
# kernel's share (the socket calls, the same for every app) is not counted. Installs wrk and
# valgrind from Debian if missing. Takes about a minute.
#
#   bash benches/e2e_instructions.sh
#   SECS=10 bash benches/e2e_instructions.sh
set -euo pipefail

SECS=${SECS:-5}
cd "$(dirname "$0")/.."

for tool in wrk:wrk valgrind:valgrind; do
    if ! command -v "${tool%%:*}" >/dev/null; then
        as_root=()
        if [ "$(id -u)" != 0 ]; then
            command -v sudo >/dev/null || { echo "${tool%%:*} is missing and this user cannot install it" >&2; exit 1; }
            as_root=(sudo)
        fi
        "${as_root[@]}" apt-get install -y "${tool#*:}" >/dev/null 2>&1 \
            || { "${as_root[@]}" apt-get update >/dev/null && "${as_root[@]}" apt-get install -y "${tool#*:}" >/dev/null; }
    fi
done

cargo build --release -q -p examples --bin loadcheck
dir=$(mktemp -d)
trap 'kill "$vg" 2>/dev/null || true; rm -rf "$dir"' EXIT
valgrind --tool=callgrind --callgrind-out-file="$dir/cg.out" \
    target/release/loadcheck --serve --for 600 >"$dir/urls" 2>"$dir/valgrind.log" &
vg=$!
for _ in $(seq 600); do
    grep -q '^variants' "$dir/urls" 2>/dev/null && break
    sleep 0.2
done
read -r _ bare _ full _ <"$dir/urls"
read -r _ more < <(sed -n 2p "$dir/urls")

echo "user-space instructions per request (callgrind), wrk -t1 -c8 -d${SECS}s per app"
printf '%-12s %9s %12s %10s\n' app requests instructions "per request"
base=
for kv in "bare=$bare" "full=$full" $more; do
    name=${kv%%=*}
    url=${kv#*=}
    wrk -t1 -c8 -d2s "$url" >/dev/null # warm up: connections, series registration
    callgrind_control -z "$vg" >/dev/null 2>&1
    n=$(wrk -t1 -c8 -d"${SECS}"s "$url" | awk '/ requests in / {print $1}')
    callgrind_control -d "$name" "$vg" >/dev/null 2>&1
    dump=$(ls -t "$dir"/cg.out.* | head -1)
    ir=$(awk '/^(summary|totals):/ {print $2; exit}' "$dump")
    per=$((ir / n))
    [ -z "$base" ] && base=$per
    printf '%-12s %9d %12d %10d  (%+d vs bare)\n' "$name" "$n" "$ir" "$per" $((per - base))
done
