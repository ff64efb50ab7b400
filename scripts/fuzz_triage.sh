#!/usr/bin/env bash
# Usage: fuzz_triage.sh SANITIZER_LOG
# Prints "libhdf5" when the report's faulting frame, and the frame that allocated (or freed) the
# memory it touched where the report names one, are inside libhdf5: that library's parser trusting
# its own corrupt metadata. Prints "ours" otherwise: a fault in our code, or inside libhdf5 on a
# buffer we allocated (a read into a too-small array of ours). Sanitizer runtime and libc
# memory-copy frames are skipped: they run on behalf of their caller. No report at all is "ours".
# The owner is the first frame of the allocation stack that is libhdf5, our code (lightunet::,
# the fuzz targets) or libFuzzer's own machinery (fuzzer::), C++ library frames skipped. A wild
# libhdf5 read that lands next to a chunk of libFuzzer's corpus bookkeeping (ASan names the
# nearest chunk) is libhdf5's: the targets hand libhdf5 a file, never a libFuzzer buffer.
# libFuzzer's out-of-memory report: "libhdf5" when the allocation context holding most of the
# live heap (the first one it lists) is owned by libhdf5 by the same rule (seen in 1.10.8: 5.6 GB
# of 2.8 MB blocks that libhdf5 mallocs for one corrupt file); our readers bound every allocation
# of theirs from the header first, so a context of ours is a finding.
set -euo pipefail
[[ $# -eq 1 && -r $1 ]] || { echo "usage: fuzz_triage.sh SANITIZER_LOG (a readable file)" >&2; exit 2; }
awk '
    /ERROR: AddressSanitizer/ { in_report = 1; section = "fault"; next }
    /ERROR: libFuzzer: out-of-memory/ { in_report = 1; section = "none"; oom = 1; next }
    oom && /byte\(s\) \([0-9]+%\) in [0-9]+ allocation/ { contexts++; section = (contexts == 1) ? "owner" : "none"; next }
    !in_report { next }
    /(allocated|freed) by thread/ { section = "owner"; next }
    /^    #[0-9]+ / {
        if ($0 ~ /__interceptor_|__asan|__sanitizer|\/sysdeps\/|libclang_rt| in (malloc|calloc|realloc|free|operator new|operator delete)/) next
        if (section == "fault" && fault == "") fault = ($0 ~ /libhdf5/) ? "hdf5" : "other"
        if (section == "owner" && owner == "") {
            if ($0 ~ /libhdf5/) owner = "hdf5"
            else if ($0 ~ / in fuzzer::/) owner = "libfuzzer"
            else if ($0 ~ / in std::/) library_frames = 1  # decided by the frames below it
            else owner = "other"
        }
    }
    END {
        if (owner == "" && library_frames) owner = "other"  # only C++ library frames: not provably libhdf5
        if (oom) print (owner == "hdf5") ? "libhdf5" : "ours"
        else print (fault == "hdf5" && owner != "other") ? "libhdf5" : "ours"
    }' "$1"
