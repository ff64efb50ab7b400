#!/usr/bin/env bash
# check_isa_leaks.sh <program>...
#
# A program that carries kernels for several instruction sets (lightunet::cpu_targets) must not
# run an instruction its CPU lacks outside the target it chose. The risk is the linker's: an
# inline function (a library helper, a std:: template) compiled into the AVX-512 target's object
# and into baseline code is kept once, and if the AVX-512 copy is kept, baseline code calls it.
# This check disassembles each program and fails if any function that the linker may share
# (a global or weak symbol) outside the targets' namespaces holds an AVX, AVX2 or AVX-512
# instruction (a VEX/EVEX mnemonic, a ymm/zmm or mask register): then the program would need AVX
# where it promises SSE4.2.
set -euo pipefail
status=0
for program in "$@"; do
    [[ -x "$program" ]] || { echo "check_isa_leaks: $program: not an executable"; exit 2; }
    # Functions the linker merges across objects: global (T) and weak (W) text symbols.
    shared=$(mktemp)
    trap 'rm -f "$shared"' EXIT
    nm -C --defined-only "$program" | awk '$2 == "T" || $2 == "W" || $2 == "i" { $1 = ""; $2 = ""; sub(/^  /, ""); print }' |
        sort -u >"$shared"
    [[ -s "$shared" ]] || { echo "check_isa_leaks: $program: no symbols (stripped?)"; exit 2; }
    report=$(objdump -d -C --no-show-raw-insn "$program" | awk -v shared="$shared" '
        BEGIN { while ((getline line < shared) > 0) is_shared[line] = 1 }
        /^[0-9a-f]+ <.*>:$/ {
            name = $0; sub(/^[0-9a-f]+ </, "", name); sub(/>:$/, "", name)
            check = (name in is_shared) && name !~ /lightunet::cpu_kernels::(sse4_2|avx2|avx512)::/
            next
        }
        check && (/\t\{?v[a-z0-9]+/ || /%[yz]mm[0-9]/ || /%k[0-7]/) {
            if (!(name in seen)) { seen[name] = 1; print name "\n    " $0; ++found }
        }
        END { exit found > 0 }') || {
        echo "check_isa_leaks: $program: shared functions with AVX instructions (a target's copy kept by the linker):"
        echo "$report" | head -40
        status=1
        continue
    }
    echo "check_isa_leaks: $program: no AVX instruction outside the targets' namespaces ($(wc -l <"$shared") shared functions)"
done
exit $status
