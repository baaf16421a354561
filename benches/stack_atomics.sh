#!/usr/bin/env bash
# Atomic read-modify-writes per call of each `production_stack` stack: the instructions with a
# `lock` prefix (and `xchg`, locked by definition) that a call executes, counted exactly by
# callgrind (`--dump-instr=yes`) and found in the bench binary by objdump. Wall time is bound
# by them once the instruction count is small: each one drains the core's store buffer. Only
# the counted calls are measured (`STACK_CALLS` calls minus a run with none), and only the
# bench binary's own code (the allocator's atomics, in libc, are not counted).
#
#   bash benches/stack_atomics.sh                      # the five stacks below
#   CALLS=5000 bash benches/stack_atomics.sh client/peer
#
# Needs valgrind, binutils (objdump) and bc; any awk.
set -euo pipefail
cd "$(dirname "$0")/.."

CALLS=${CALLS:-20000}
stacks=("$@")
[ ${#stacks[@]} -gt 0 ] || stacks=(server/passthrough server/ours_prometheus client/passthrough
    client/ours_prometheus client/peer)

bin=$(cargo bench -p benches --features peer-metrics --bench production_stack --no-run 2>&1 |
    grep -o 'target/release/deps/production_stack-[0-9a-f]*' | head -1)
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
# Every locked instruction of the binary: "address function".
objdump -d --no-show-raw-insn "$bin" |
    awk '/^[0-9a-f]+ <.*>:$/ { fn = $2 } /\tlock |\txchg / { a = $1; sub(":", "", a); print a, fn }' \
        >"$dir/locked"

# Executions of the locked instructions in a callgrind dump of the bench binary, by function.
locked_in() {
    awk -v bin="$(basename "$bin")" '
        function hex(s,    i, v) {
            sub(/^0x/, "", s); v = 0
            for (i = 1; i <= length(s); i++) v = v * 16 + index("0123456789abcdef", substr(tolower(s), i, 1)) - 1
            return v
        }
        function num(s) { return s ~ /^0x/ ? hex(s) : s + 0 }
        NR == FNR { locked[hex($1)] = $2; next }
        function def(line, tag,    id, name) {
            id = line; sub(/^[a-z]+=\(/, "", id); sub(/\).*/, "", id)
            name = line; if (sub(/^[a-z]+=\([0-9]+\) /, "", name)) names[tag id] = name
            return names[tag id]
        }
        /^ob=/ { ours = index(def($0, "ob"), bin) > 0; next }
        /^cob=/ { def($0, "ob"); next }
        /^fn=/ { fn = def($0, "fn"); next }
        /^cfn=/ { def($0, "fn"); next }
        /^calls=/ { skip = 1; next }
        /^(0x|[+-]|\*)/ {
            p = $1
            if (p ~ /^0x/) addr = hex(p)
            else if (p ~ /^\+/) addr += num(substr(p, 2))
            else if (p ~ /^-/) addr -= num(substr(p, 2))
            if (skip) { skip = 0; next }
            if (ours && (addr in locked)) { total += $NF; by[locked[addr]] += $NF }
        }
        END { printf "total %d\n", total; for (f in by) printf "%d %s\n", by[f], f }
    ' "$dir/locked" "$1"
}

printf '%-40s %s\n' stack "locked instructions per call"
for stack in "${stacks[@]}"; do
    for n in 0 "$CALLS"; do
        STACK_CALLS=$n valgrind --tool=callgrind --dump-instr=yes \
            --toggle-collect='*instructions::run*' --callgrind-out-file="$dir/cg.$n" \
            "$bin" "$stack" >/dev/null 2>&1
        locked_in "$dir/cg.$n" >"$dir/locks.$n"
    done
    before=$(awk '/^total/ { print $2 }' "$dir/locks.0")
    after=$(awk '/^total/ { print $2 }' "$dir/locks.$CALLS")
    printf '%-40s %.2f\n' "$stack" "$(echo "($after - $before) / $CALLS" | bc -l)"
    # The functions they run in (as compiled: a layer's code is often inlined into another's).
    grep -v "^total" "$dir/locks.$CALLS" | sort -rn | awk "NR <= 8" |
        awk -v n="$CALLS" '$1 / n >= 0.5 { printf "    %5.2f  %s\n", $1 / n, substr($2, 1, 110) }'
done
