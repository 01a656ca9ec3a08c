/* The safety check's per-thread work inside the window, in C: one ctypes call each instead of a Python
 * loop over the threads (loader/window_native.py loads it; loader/thread_scan.py falls back to Python
 * when it is not built). Built from source by `make` (gcc -O2 -shared -fPIC), never shipped prebuilt.
 *
 * It reads and searches, nothing else: no thread is stopped, resumed or written here, so every guarantee
 * about the target's state stays with the Python code that holds the threads.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdint.h>
#include <sys/ptrace.h>
#include <sys/types.h>
#include <sys/user.h>

/* PTRACE_GETREGS of every held thread into consecutive slots of struct user_regs_struct.
 * Returns how many were read: fewer than `count` when thread tids[returned] failed (errno is set). */
long hpkg_read_registers(const int32_t *tids, long count, struct user_regs_struct *slots)
{
    for (long i = 0; i < count; i++) {
        if (ptrace(PTRACE_GETREGS, tids[i], 0, &slots[i]) == -1)
            return i;
    }
    return count;
}

/* Where each thread's stack is read: [rsp & ~7, min(end of rsp's mapping, that + limit)), found by a
 * binary search of the sorted mapping starts. `rsps` is read with a stride of `stride` words (the
 * register slots themselves). For thread i: place_start[i] and place_end[i] are the offsets of its
 * words in the stack buffer, both -1 when rsp lies in no readable mapping; remote[2k], remote[2k+1] the
 * address and length of the k-th located stack (the iovecs of process_vm_readv, in buffer order).
 * Returns the bytes the located stacks need in all. */
long hpkg_stack_places(const uint64_t *rsps, long count, long stride, const uint64_t *starts,
                       const uint64_t *ends, const uint8_t *readable, long maps, uint64_t limit,
                       int64_t *place_start, int64_t *place_end, uint64_t *remote)
{
    long total = 0, located = 0;
    for (long i = 0; i < count; i++) {
        uint64_t rsp = rsps[i * stride];
        long lo = 0, hi = maps; /* the first mapping whose start is above rsp */
        while (lo < hi) {
            long mid = lo + (hi - lo) / 2;
            if (starts[mid] <= rsp)
                lo = mid + 1;
            else
                hi = mid;
        }
        long index = lo - 1;
        if (index < 0 || rsp >= ends[index] || !readable[index]) {
            place_start[i] = place_end[i] = -1;
            continue;
        }
        uint64_t start = rsp & ~(uint64_t)7;
        uint64_t end = ends[index] - start < limit ? ends[index] : start + limit;
        remote[2 * located] = start;
        remote[2 * located + 1] = end - start;
        place_start[i] = total;
        place_end[i] = total + (int64_t)(end - start);
        total += (long)(end - start);
        located++;
    }
    return total;
}

/* The byte offsets of every 8-aligned word of buffer[:size] in [low, high), in buffer order, at most
 * `room` of them. Returns how many there are in all (more than `room`: call again with more room). */
long hpkg_find_words(const uint64_t *buffer, long size, uint64_t low, uint64_t high, int64_t *offsets,
                     long room)
{
    uint64_t span = high - low;
    long words = size / 8, found = 0;
    if (high <= low)
        return 0;
    long i = 0;
    /* Four words a step, one branch for all four (a word in range is rare): unsigned subtraction makes
     * low <= word < high one compare. */
    for (; i + 4 <= words; i += 4) {
        int any = (buffer[i] - low < span) | (buffer[i + 1] - low < span) | (buffer[i + 2] - low < span) |
                  (buffer[i + 3] - low < span);
        if (__builtin_expect(any, 0)) {
            for (long j = i; j < i + 4; j++) {
                if (buffer[j] - low < span) {
                    if (found < room)
                        offsets[found] = j * 8;
                    found++;
                }
            }
        }
    }
    for (; i < words; i++) {
        if (buffer[i] - low < span) {
            if (found < room)
                offsets[found] = i * 8;
            found++;
        }
    }
    return found;
}
