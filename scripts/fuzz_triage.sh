#!/usr/bin/env bash
# Usage: fuzz_triage.sh REPORT [STOPPED_LIST]
# Classes one sanitizer or libFuzzer report (the first one in the file) and prints one line,
# "libhdf5: <reason>", "ours: <reason>" or "stopped: <reason>". scripts/fuzz.sh fails on "ours";
# tests/fuzz/check_triage.sh checks the rule on the saved reports of tests/fuzz/reports.
#
# "stopped" is a report cut off by the end of the fuzzing time, not judged: it has no SUMMARY line
# and its process (the pid of its error line) is one that scripts/fuzz_run_for.sh listed in
# STOPPED_LIST as still running when it stopped the fuzzer (that script first waits for every
# process with a report begun, so this takes a report begun in the instant before the signal). A
# report cut off without that evidence is judged by the rules below on what it has (a fault
# without a stack or an allocation stack is ours).
#
# "libhdf5" is only what is provably libhdf5's own fault: its parser trusting the metadata of a
# corrupt file. Everything else is "ours", including a report that cannot be parsed or is missing.
# libhdf5 is not instrumented: ASan sees its accesses only through the interceptors (memcpy,
# memset, str*) or as a signal, and only memory of instrumented code (ours, libFuzzer's) has stack
# and global redzones. So:
#   * heap faults (heap-buffer-overflow, heap-use-after-free, double-free, memcpy-param-overlap,
#     ...): libhdf5 when the faulting frame is in libhdf5 AND every allocation and free stack the
#     report names is owned by libhdf5 (its first frame that is not the allocator, libc, zlib/szip
#     or a C++ library frame), and no free happened under a call with which we hand libhdf5
#     pointers to free (H5Dvlen_reclaim, H5Treclaim, H5free_memory). A fault in libhdf5 on a buffer
#     we allocated (a read into a too-small array of ours) is ours; so is a report without an
#     allocation stack. One exception: a heap-use-after-free READ in libhdf5 of a block that we
#     (or libFuzzer, whose buffers no target hands libhdf5) allocated and freed with no libhdf5
#     frame on either stack, under a public call that takes no
#     buffer of ours (open*, exists*, is_*, iterate, close), is libhdf5's stale pointer into memory
#     the allocator gave us since: our code hands libhdf5 no pointer it keeps after a call
#     (tests/fuzz/check_triage.sh checks the sources' H5 calls). Seen in 1.10.8: the memcpy under
#     H5O__msg_iterate_real under H5Aexists, on its own freed cache entry and, in another run, on an
#     error message of ours built and freed in an earlier input's throw_hdf5.
#   * stack-buffer-overflow, global-buffer-overflow, stack-use-after-return/scope, container and
#     intra-object overflows, use-after-poison: always ours, wherever they are touched: the memory
#     is a stack frame or global of instrumented code, i.e. ours (libhdf5 copying into a too-small
#     stack array of ours is caught in its memcpy). Stack overflow (recursion): ours; the bottom of
#     such a stack is cut, so no caller can be checked.
#   * a wild read: SEGV/BUS on an unknown address, an unknown-crash or a heap-buffer-overflow that
#     ASan calls a wild pointer (an address in no allocation, stack or global, so no allocation
#     stack: seen in 1.10.8, a memcpy of 4e18 bytes from 0xbcff... in H5HG_read under H5Aread of a
#     variable-length string, and an 8-byte memcpy onto heap redzone of no chunk under
#     H5O__msg_iterate_real under H5Aexists), or a heap-buffer-overflow
#     whose nearest chunk is one of libFuzzer's own (the targets write the input to a file and
#     never hand libhdf5 a libFuzzer buffer), is libhdf5's only when the access is a READ, the faulting frame is in
#     libhdf5 and every frame from it down to the call our code made is libhdf5's, and that call
#     is a public one that reads from the file and hands libhdf5 no buffer of ours to read: H5*read
#     (our buffer is only written; no compound types, so no background read of it), open*,
#     exists*, get_*, is_*, iterate, close. Seen in 1.10.8 (saved reports): H5HG_read under H5Aread
#     of a variable-length string, a memcpy under H5O__msg_iterate_real under H5Aexists. A WRITE,
#     a frame of ours in between, or a call that takes a buffer or array of ours (write, create,
#     set_*, select_*, reclaim) is ours. FPE/ILL/ABRT and other signals: ours.
#   * hangs (libFuzzer timeout; the stack is where the alarm interrupted the run): libhdf5 when
#     the innermost frame below the signal handler (allocator and libc frames skipped) is in
#     libhdf5 and the libhdf5 frames reach down to a public call of ours; innermost frame ours or
#     a C++ library frame: ours. Limit: one sample; a loop of ours around many cheap libhdf5 calls
#     would mostly be sampled inside libhdf5, so our readers bound every count before looping.
#   * out of memory: libFuzzer's rss report: libhdf5 when the allocation context holding most of
#     the live heap (the first one listed) is owned by libhdf5 (seen in 1.10.8: 5.6 GB of 2.8 MB
#     blocks libhdf5 mallocs for one corrupt file); its malloc-limit report: when the frame that
#     asked is libhdf5's. Our readers bound every allocation of theirs from the header first. An
#     RSS report whose live heap is libFuzzer's own (the peak freed before libFuzzer looked) is
#     ours here; scripts/fuzz.sh re-runs such an input with a malloc limit to name the asker (seen
#     in 1.10.8: libhdf5 mallocs 4 GB for one corrupt file).
#   * UndefinedBehaviorSanitizer, LeakSanitizer, deadly signals, a target that exits: ours (UBSan
#     instruments only our code).
set -euo pipefail
if [[ ! ($# -eq 1 || $# -eq 2) || ! -r $1 || ($# -eq 2 && ! -r $2) ]]; then
    echo "usage: fuzz_triage.sh REPORT [STOPPED_LIST] (readable files)" >&2
    exit 2
fi
awk -v stopped_list="${2:-}" '
    # The function of a frame, qualified, without return type or arguments: a C++ function is the
    # last word (at template depth 0) before its argument list, a C function the first word.
    function frame_name(line,   rest, i, n, ch, depth, start) {
        if (!match(line, / in /)) return "?"
        rest = substr(line, RSTART + 4)
        gsub(/\(anonymous namespace\)/, "anonymous-namespace", rest)
        sub(/^decltype\(auto\) /, "", rest)
        n = length(rest); depth = 0; start = 1
        for (i = 1; i <= n; i++) {
            ch = substr(rest, i, 1)
            if (ch == "<") depth++
            else if (ch == ">") { if (depth > 0) depth-- }
            else if (depth == 0 && ch == " ") start = i + 1
            else if (depth == 0 && ch == "(") break
        }
        if (i <= n && start != i) return substr(rest, start, i - start)
        sub(/ .*/, "", rest)
        return rest
    }
    # Where a stack frame runs: runtime (sanitizer, allocator), libc, helper (zlib, szip: they act
    # for their caller), hdf5, fuzzer (libFuzzer), library (C++ standard library), ours.
    function frame_class(line,   name) {
        if (line ~ /__interceptor_|__interception|__asan|__sanitizer|__lsan|__ubsan|libclang_rt/) return "runtime"
        if (line ~ / in (malloc|calloc|realloc|reallocarray|free|cfree|posix_memalign|memalign|aligned_alloc|valloc|pvalloc|strdup|strndup|operator new|operator delete)[ (\[]/) return "runtime"
        if (line ~ /\/sysdeps\/|\/csu\/|\/nptl\/|\/libc\.so|\/libm\.so/) return "libc"
        if (line ~ /\/lib(z|sz|aec)\.so/) return "helper"
        if (line ~ /\/libhdf5[^ \/]*\.so/) return "hdf5"
        name = frame_name(line)
        if (name ~ /^H5[A-Za-z0-9_]+$/) return "hdf5"  # a C function of a libhdf5 linked in statically
        if (name ~ /^fuzzer::/) return "fuzzer"
        if (name ~ /^(std::|__gnu_cxx::|__cxxabiv1::|__cxa_)/ || line ~ /\/libstdc\+\+|\/libc\+\+/) return "library"
        return "ours"
    }
    function skipped(c) { return c == "runtime" || c == "libc" || c == "helper" }
    # A frame for the reason text: its function, or its module and offset when it has no name.
    function describe(line,   name, where) {
        name = frame_name(line)
        if (name != "?") return name
        if (match(line, /\([^ ()]*\+0x[0-9a-f]+\)/)) {
            where = substr(line, RSTART + 1, RLENGTH - 2)
            sub(/.*\//, "", where)
            return where
        }
        return "an unnamed frame"
    }
    function is_api(name) { return name ~ /^H5[A-Z]?[a-z][A-Za-z0-9_]*$/ && name !~ /__/ }
    function is_read_api(name) {
        return is_api(name) && name ~ /^H5[A-Z]?(read|open[A-Za-z0-9_]*|exists[A-Za-z0-9_]*|get_[A-Za-z0-9_]*|is_[A-Za-z0-9_]*|iterate[0-9]*|close)$/
    }
    function frees_ours(name) { return name ~ /reclaim|free_memory/ }
    function new_stack(role) { cur = ++stacks; roles[cur] = role; count[cur] = 0; if (role == "fault") fault = cur }
    # Index of the first frame of stack s that acts for itself (0: none); with skip_fuzzer also
    # past libFuzzer frames (its handler of an alarm or a signal, its malloc hook).
    function first_frame(s, skip_fuzzer,   i, c) {
        for (i = 1; i <= count[s]; i++) {
            c = frame_class(frame[s, i])
            if (skipped(c) || (skip_fuzzer && c == "fuzzer")) continue
            return i
        }
        return 0
    }
    # Owner of an allocation or free stack: hdf5, fuzzer, ours, or none (no frame); C++ library
    # frames are decided by the frames below them (only library frames: ours); with skip_fuzzer past
    # libFuzzer frames (its malloc hook). Sets owner_frame.
    function owner(s, skip_fuzzer,   i, c, library) {
        owner_frame = ""
        for (i = 1; i <= count[s]; i++) {
            c = frame_class(frame[s, i])
            if (skipped(c) || (skip_fuzzer && c == "fuzzer")) continue
            if (c == "library") { library = 1; if (owner_frame == "") owner_frame = frame[s, i]; continue }
            owner_frame = frame[s, i]
            return c
        }
        return library ? "ours" : "none"
    }
    # From libhdf5 frame i of stack s down: the name of the last libhdf5 frame before the first
    # frame that is not libhdf5 (the call our code made); "" when the stack ends inside libhdf5.
    function api_entry(s, i,   c, last) {
        last = ""
        for (; i <= count[s]; i++) {
            c = frame_class(frame[s, i])
            if (skipped(c)) continue
            if (c != "hdf5") return last
            last = frame_name(frame[s, i])
        }
        return ""
    }
    function wild_read(what, api) {
        if (access != "READ") return "ours: " what " is a " (access == "" ? "access of unknown kind" : access) ", only a READ can be libhdf5'"'"'s own wild access"
        if (!is_api(api)) return "ours: " what " under no public libhdf5 call of ours (libhdf5 frames run into " (api == "" ? "the end of the stack" : "a caller that is not ours") ")"
        if (!is_read_api(api)) return "ours: " what " under " api ", which hands libhdf5 memory of ours to read"
        return "libhdf5: " what " under " api ", which hands libhdf5 no buffer of ours to read"
    }
    # A heap block of ours or of libFuzzer (the targets hand libhdf5 none of its buffers),
    # allocated and freed with no libhdf5 frame on either stack: libhdf5 was inside none of its
    # life, so it never had the block as a buffer or a callback of ours.
    function freed_by_us_alone(   s, i, blocks, o) {
        blocks = 0
        for (s = 1; s <= stacks; s++) {
            if (roles[s] != "alloc" && roles[s] != "free") continue
            blocks++
            o = owner(s, 0)
            if (o != "ours" && o != "fuzzer") return 0
            for (i = 1; i <= count[s]; i++) if (frame_class(frame[s, i]) == "hdf5") return 0
        }
        return blocks > 0
    }
    # libhdf5 reading a block we freed in an earlier call: the block is reachable for libhdf5 only
    # through a pointer it keeps after a call returns, and our code gives it none to keep
    # (tests/fuzz/check_triage.sh checks which H5 calls the sources make), so it reached the block
    # through a stale pointer of its own into memory the allocator gave us since (seen in 1.10.8:
    # the memcpy under H5O__msg_iterate_real under H5Aexists of the saved report on its own freed
    # metadata-cache entry, libhdf5-use-after-free-own-buffer.txt). Only under a call that takes no
    # buffer of ours at all (H5*read writes into one of ours: there a dangling buffer is ours).
    function stale_read(what, api) {
        if (access != "READ") return "ours: " what " is a " (access == "" ? "access of unknown kind" : access) ", libhdf5 only reads through a stale pointer"
        if (!is_api(api)) return "ours: " what " under no public libhdf5 call of ours"
        if (!(api ~ /^H5[A-Z]?(open[A-Za-z0-9_]*|exists[A-Za-z0-9_]*|is_[A-Za-z0-9_]*|iterate[0-9]*|close)$/))
            return "ours: " what " under " api ", which takes a buffer of ours"
        return "libhdf5: " what " under " api ", which takes no buffer of ours (a stale pointer of libhdf5 into memory reused since)"
    }
    function decide(   f, fault_class, where, api, s, o, free_api, library_chunk, owners, frees, first_owner) {
        if (kind == "") return "ours: no sanitizer or libFuzzer report in the file"
        if (!summary && reporter != "" && (reporter in stopped))
            return "stopped: the " kind " report of process " reporter " ends before its SUMMARY line, and that process was running when the fuzzing time ran out: the stop cut it off (not judged)"
        f = fault ? first_frame(fault, kind == "timeout" || kind == "oom-malloc" || kind == "deadly signal") : 0
        fault_class = f ? frame_class(frame[fault, f]) : "none"
        where = f ? describe(frame[fault, f]) : "no frame"
        api = (fault_class == "hdf5") ? api_entry(fault, f) : ""
        if (fault_class == "hdf5") where = "libhdf5 (" where ")"
        if (kind == "timeout") {
            if (fault_class != "hdf5") return "ours: hang, the innermost running code is " (f ? "ours (" where ")" : "unknown (no stack)")
            if (!is_api(api)) return "ours: hang inside " where " under no public libhdf5 call of ours"
            return "libhdf5: hang inside " where " under " api
        }
        if (kind == "oom") {
            if (!contexts) return "ours: out of memory, no allocation context listed"
            o = owner(context_stack, 0)
            if (o == "hdf5") return "libhdf5: out of memory, the largest live allocation context is libhdf5'"'"'s (" describe(owner_frame) ")"
            return "ours: out of memory, the largest live allocation context is " (o == "none" ? "not named" : "owned by " (o == "fuzzer" ? "libFuzzer" : "us") " (" describe(owner_frame) ")")
        }
        if (kind == "oom-malloc") {
            o = owner(fault, 1)
            if (o == "hdf5") return "libhdf5: malloc over the limit asked for by libhdf5 (" describe(owner_frame) ")"
            return "ours: malloc over the limit asked for by " (o == "none" ? "an unnamed frame" : (o == "fuzzer" ? "libFuzzer" : "us") " (" describe(owner_frame) ")")
        }
        if (kind == "undefined-behaviour") return "ours: undefined behaviour (UBSan instruments only our code):" ub_text
        if (kind == "leak" || kind == "deadly signal" || kind ~ /^libFuzzer/) return "ours: " kind " in " where
        if (kind ~ /^(stack-buffer-overflow|stack-buffer-underflow|dynamic-stack-buffer-overflow|stack-use-after-return|stack-use-after-scope|global-buffer-overflow|container-overflow|initialization-order-fiasco|intra-object-overflow|use-after-poison)$/)
            return "ours: " kind " touched in " where ", on a stack frame or global of instrumented code (ours; libhdf5 has no redzones)" (frame_owner != "" ? ": frame " describe(frame_owner) : "") (global_name != "" ? ": global " global_name : "")
        if (kind == "stack-overflow") return "ours: stack-overflow (recursion) in " where ", its bottom frames are cut"
        if (kind == "SEGV" || kind == "BUS") {
            if (fault_class != "hdf5") return "ours: " kind " in " where
            return wild_read(kind " on an unknown address in " where, api)
        }
        if ((kind == "unknown-crash" || kind == "heap-buffer-overflow") && wild_pointer && fault_class == "hdf5" && stacks == 1)
            return wild_read(kind " on a wild pointer (in no allocation, stack or global) in " where, api)
        if (kind == "heap-use-after-free" && fault_class == "hdf5" && freed_by_us_alone())
            return stale_read("an access to a block allocated and freed outside libhdf5 (by us or libFuzzer), inside " where, api)
        owners = 0
        for (s = 1; s <= stacks; s++) {
            if (roles[s] != "alloc" && roles[s] != "free") continue
            owners++
            if (roles[s] == "free") frees++
            o = owner(s, 0)
            if (owners == 1) first_owner = owner_frame
            if (o == "none" || o == "ours") {
                if (fault_class != "hdf5") break
                return "ours: " kind " inside " where " on memory " (roles[s] == "free" ? "freed" : "allocated") " by " (o == "none" ? "an unnamed frame" : "us (" describe(owner_frame) ")")
            }
            if (o == "fuzzer") library_chunk = 1
            if (o == "hdf5" && roles[s] == "free") {
                free_api = api_entry(s, first_frame(s, 0))
                if (frees_ours(free_api)) return "ours: " kind " inside " where " on memory libhdf5 freed on our request (" free_api ")"
            }
        }
        if (fault_class != "hdf5") return "ours: " kind " in " (f ? where : "an unknown frame (the report names none" (summary ? "" : "; it ends before its SUMMARY line, cut off") ")")
        if (owners == 0) return "ours: " kind " inside " where " with no allocation stack to prove the memory libhdf5'"'"'s"
        if (frees_ours(api)) return "ours: " kind " inside " where " under " api ", freeing pointers we handed over"
        if (library_chunk) {
            if (kind != "heap-buffer-overflow") return "ours: " kind " inside " where " on memory of libFuzzer"
            return wild_read("wild read inside " where " next to a libFuzzer chunk (no target hands one to libhdf5)", api)
        }
        return "libhdf5: " kind " inside " where " on memory libhdf5 allocated" (frees ? " and freed" : "") " (" describe(first_owner) ")"
    }
    BEGIN {
        stacks = 0; cur = 0; fault = 0; contexts = 0; kind = ""; summary = 0; reporter = ""
        if (stopped_list != "") while ((getline pid < stopped_list) > 0) if (pid ~ /^[0-9]+$/) stopped[pid] = 1
    }
    done { next }
    # The process of the report: the pid its sanitizer writes before the error line ("==6016==ERROR").
    kind == "" && match($0, /^==[0-9]+==(ERROR|WARNING): /) { reporter = substr($0, 3); sub(/==.*/, "", reporter) }
    kind == "" && /ERROR: AddressSanitizer: / {
        rest = $0; sub(/.*AddressSanitizer: /, "", rest)
        split(rest, word, /[ :]/)
        kind = word[1]
        if (kind == "attempting") kind = (rest ~ /^attempting double-free/) ? "double-free" : "bad-free"
        if (kind == "requested") kind = "allocation-size-too-big"
        new_stack("fault"); next
    }
    kind == "" && /ERROR: libFuzzer: timeout/ { kind = "timeout"; new_stack("fault"); next }
    kind == "" && /ERROR: libFuzzer: out-of-memory \(malloc/ { kind = "oom-malloc"; new_stack("fault"); next }
    kind == "" && /ERROR: libFuzzer: out-of-memory/ { kind = "oom"; cur = 0; next }
    kind == "" && /ERROR: libFuzzer: deadly signal/ { kind = "deadly signal"; new_stack("fault"); next }
    kind == "" && /ERROR: libFuzzer: / { kind = $0; sub(/.*ERROR: /, "", kind); new_stack("fault"); next }
    kind == "" && /ERROR: LeakSanitizer/ { kind = "leak"; new_stack("fault"); next }
    kind == "" && /runtime error: / { kind = "undefined-behaviour"; ub_text = $0; sub(/.*runtime error:/, "", ub_text); new_stack("fault"); next }
    kind == "" { next }
    /^SUMMARY: / { done = 1; summary = 1; next }
    /The signal is caused by a READ memory access/ { access = "READ" }
    /The signal is caused by a WRITE memory access/ { access = "WRITE" }
    /^(READ|WRITE) of size / && access == "" { access = $1 }
    /^Address 0x[0-9a-f]+ is a wild pointer/ { wild_pointer = 1 }
    /(allocated|freed) by thread / { new_stack(/freed by/ ? "free" : "alloc"); next }
    /is located in stack of thread / { new_stack("frame"); next }
    /of global variable '"'"'/ && global_name == "" { global_name = $0; sub(/.*of global variable '"'"'/, "", global_name); sub(/'"'"'.*/, "", global_name) }
    kind == "oom" && /byte\(s\) \([0-9]+%\) in [0-9]+ allocation/ {
        if (++contexts == 1) { new_stack("context"); context_stack = cur } else cur = 0
        next
    }
    /^ *#[0-9]+ / {
        if (!cur) next
        frame[cur, ++count[cur]] = $0
        if (roles[cur] == "frame" && frame_owner == "") frame_owner = $0
        next
    }
    END { print decide() }
' "$1"
