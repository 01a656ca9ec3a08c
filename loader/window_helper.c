/* The safety check's per-thread work inside the window, in C: one ctypes call each instead of a Python
 * loop over the threads (loader/window_native.py loads it; loader/thread_scan.py falls back to Python
 * when it is not built). Built from source by `make` (gcc -O2 -shared -fPIC), never shipped prebuilt.
 *
 * No thread is stopped or resumed here, and the only writes to the target are the switch's
 * (hpkg_switch_span; hpkg_window_check only once every held thread has passed the check), made while the
 * Python code holds the threads: holding, releasing and undoing (its journal of what was written) stay
 * there, so every guarantee about the target's state does too.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stddef.h>
#include <pthread.h>
#include <stdint.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/ptrace.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <time.h>
#include <sys/user.h>
#include <unistd.h>

#define IOV_MAX_PER_CALL 1024 /* the kernel's limit of iovecs per process_vm_readv side */

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

/* /proc/PID/maps read again from offset 0 into buf (a seq_file hands out about a page per call: read on
 * until it returns nothing). */
struct maps_job {
    int fd;
    char *buf;
    long size;
    long length; /* the text's length; -1 on an error or when it does not fit */
};

static void *read_maps(void *arg)
{
    struct maps_job *job = arg;
    long length = 0;
    for (;;) {
        if (length == job->size) {
            job->length = -1;
            return NULL;
        }
        ssize_t got = pread(job->fd, job->buf + length, job->size - length, length);
        if (got < 0) {
            job->length = -1;
            return NULL;
        }
        if (got == 0)
            break;
        length += got;
    }
    job->length = length;
    return NULL;
}

/* hpkg_read_registers, while a second thread reads /proc/PID/maps (opened before the stop) into buf: the
 * machine's other CPU is idle while the target is stopped. ptrace requests must come from the tracing
 * thread, so the registers are read here; the maps can be read by any thread. *maps_length is the text's
 * length, -1 when it was not read (an error, or more than `size` bytes: the caller reads it itself). */
long hpkg_read_registers_and_maps(const int32_t *tids, long count, struct user_regs_struct *slots,
                                  int maps_fd, char *buf, long size, long *maps_length)
{
    struct maps_job job = {maps_fd, buf, size, -1};
    pthread_t worker;
    int started = pthread_create(&worker, NULL, read_maps, &job) == 0;
    long done = hpkg_read_registers(tids, count, slots);
    int saved = errno;
    if (started)
        pthread_join(worker, NULL);
    *maps_length = started ? job.length : -1;
    errno = saved;
    return done;
}

/* process_vm_readv of `count` (local, remote) pairs, IOV_MAX at a time; whether every byte came in. */
struct stacks_job {
    pid_t pid;
    const struct iovec *local;
    const struct iovec *remote;
    long count;
    int complete;
};

static void *read_stacks(void *arg)
{
    struct stacks_job *job = arg;
    job->complete = 1;
    for (long done = 0; done < job->count; done += IOV_MAX_PER_CALL) {
        long n = job->count - done < IOV_MAX_PER_CALL ? job->count - done : IOV_MAX_PER_CALL;
        ssize_t want = 0;
        for (long i = done; i < done + n; i++)
            want += (ssize_t)job->remote[i].iov_len;
        if (process_vm_readv(job->pid, job->local + done, n, job->remote + done, n, 0) != want) {
            job->complete = 0;
            return NULL;
        }
    }
    return NULL;
}

/* Every located stack read; with `parallel`, in two halves (by bytes) at once, one by a second thread:
 * the copy from the stopped target is most of the stacks' cost, and the other CPU is idle. Returns 1 when
 * every byte came in; 0 otherwise (the caller then reads them its own way, which finds the stack that
 * failed). */
long hpkg_read_stacks(int pid, const struct iovec *local, const struct iovec *remote, long count, long total,
                      int parallel)
{
    long split = 0, bytes = 0;
    if (!parallel) {
        struct stacks_job whole = {pid, local, remote, count, 0};
        read_stacks(&whole);
        return whole.complete;
    }
    while (split < count && bytes < total / 2)
        bytes += (long)remote[split++].iov_len;
    struct stacks_job upper = {pid, local + split, remote + split, count - split, 0};
    struct stacks_job lower = {pid, local, remote, split, 0};
    pthread_t worker;
    int started = upper.count > 0 && pthread_create(&worker, NULL, read_stacks, &upper) == 0;
    if (!started)
        read_stacks(&upper);
    read_stacks(&lower);
    if (started)
        pthread_join(worker, NULL);
    return lower.complete && upper.complete;
}

/* Thread i's stack span: from rsp (8-aligned) up to its mapping's end or `limit` bytes, whichever is
 * nearer, as the `located`th span of the one vectored read, at `total` in the buffer. Returns the new total. */
static long place_stack(long i, uint64_t rsp, uint64_t mapping_end, uint64_t limit, long total, long located,
                        int64_t *place_start, int64_t *place_end, uint64_t *remote)
{
    uint64_t start = rsp & ~(uint64_t)7;
    uint64_t end = mapping_end - start < limit ? mapping_end : start + limit;
    remote[2 * located] = start;
    remote[2 * located + 1] = end - start;
    place_start[i] = total;
    place_end[i] = total + (int64_t)(end - start);
    return total + (long)(end - start);
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
        total = place_stack(i, rsp, ends[index], limit, total, located++, place_start, place_end, remote);
    }
    return total;
}

/* PROCMAP_QUERY (Linux 6.11, include/uapi/linux/fs.h): the mapping that covers one address, asked of an
 * open /proc/PID/maps. Declared here: the build machine's headers may predate it. */
struct procmap_query {
    uint64_t size;
    uint64_t query_flags;
    uint64_t query_addr;
    uint64_t vma_start;
    uint64_t vma_end;
    uint64_t vma_flags;
    uint64_t vma_page_size;
    uint64_t vma_offset;
    uint64_t inode;
    uint32_t dev_major;
    uint32_t dev_minor;
    uint32_t vma_name_size;
    uint32_t build_id_size;
    uint64_t vma_name_addr;
    uint64_t build_id_addr;
};
#define PROCMAP_QUERY _IOWR('f', 17, struct procmap_query)
#define PROCMAP_QUERY_VMA_READABLE 0x01

/* hpkg_stack_places, with each thread's mapping asked of the kernel (one PROCMAP_QUERY ioctl on the open
 * /proc/PID/maps per thread, for the mapping covering its rsp) instead of found in a maps text read in the
 * window: the same mapping (a line of the text is one mapping), its end and its readability, without the
 * kernel writing the text of every mapping. Returns the bytes needed in all, or -1 (errno set) when the
 * kernel cannot answer (ENOTTY before Linux 6.11): the caller then reads the text. ENOENT (rsp in no
 * mapping) places the thread at -1, as the text lookup does. */
long hpkg_stack_places_query(int maps_fd, const uint64_t *rsps, long count, long stride, uint64_t limit,
                             int64_t *place_start, int64_t *place_end, uint64_t *remote)
{
    long total = 0, located = 0;
    for (long i = 0; i < count; i++) {
        uint64_t rsp = rsps[i * stride];
        struct procmap_query query = {.size = sizeof query, .query_addr = rsp};
        if (ioctl(maps_fd, PROCMAP_QUERY, &query) == -1) {
            if (errno != ENOENT)
                return -1;
            place_start[i] = place_end[i] = -1;
            continue;
        }
        if (!(query.vma_flags & PROCMAP_QUERY_VMA_READABLE) || rsp < query.vma_start || rsp >= query.vma_end) {
            place_start[i] = place_end[i] = -1;
            continue;
        }
        total = place_stack(i, rsp, query.vma_end, limit, total, located++, place_start, place_end, remote);
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

/* The one-page switch inside the window, in one call (loader/switch.py): the span read through
 * /proc/PID/mem (`mem_fd`, opened before the stop) and compared with `before`; written with `after` (one
 * pwrite within one page: all or nothing, see switch.py); read back and compared; then, when
 * `state_length` > 0, the record's state word written (one pwrite). The order and the checks are those of
 * the Python path. `scratch` holds `length` bytes. Returns one of: */
enum {
    SWITCH_DONE = 0,
    SWITCH_CHANGED = 1,      /* the span no longer holds `before`: nothing written */
    SWITCH_UNREAD = 2,       /* the span could not be read (errno): nothing written */
    SWITCH_WRITE_FAILED = 3, /* the span's write failed or fell short (errno; EIO when short) */
    SWITCH_NOT_STUCK = 4,    /* the span reads back otherwise, or cannot be read back (errno 0 or set) */
    SWITCH_STATE_FAILED = 5, /* the span is switched; the state word's write failed (errno) */
};

static int write_all(int fd, const uint8_t *data, long length, uint64_t address)
{
    ssize_t written = pwrite(fd, data, (size_t)length, (off_t)address);
    if (written == length)
        return 1;
    if (written >= 0)
        errno = EIO;
    return 0;
}

long hpkg_switch_span(int mem_fd, uint64_t address, const uint8_t *before, const uint8_t *after, long length,
                      uint64_t state_address, const uint8_t *state, long state_length, uint8_t *scratch)
{
    if (pread(mem_fd, scratch, (size_t)length, (off_t)address) != length)
        return SWITCH_UNREAD;
    if (memcmp(scratch, before, (size_t)length) != 0)
        return SWITCH_CHANGED;
    if (!write_all(mem_fd, after, length, address))
        return SWITCH_WRITE_FAILED;
    errno = 0;
    if (pread(mem_fd, scratch, (size_t)length, (off_t)address) != length ||
        memcmp(scratch, after, (size_t)length) != 0)
        return SWITCH_NOT_STUCK;
    if (state_length > 0 && !write_all(mem_fd, state, state_length, state_address))
        return SWITCH_STATE_FAILED;
    return SWITCH_DONE;
}

/* The whole check inside the window, and the one-page switch when it passes, as one call
 * (loader/window_check.py prepares the block before the stop and decodes it). Per held thread: its
 * registers (PTRACE_GETREGS into its slot), its stack placed by PROCMAP_QUERY, every stack read by one
 * process_vm_readv, then the tests the Python check makes, in the same terms: the instruction pointer
 * against every patch-site window and replaced function (`ip_ranges`), the general registers rax..r15
 * against the memory about to be freed (`register_ranges`), every stack word against the union of the
 * replaced functions and that memory (`word_ranges`, sorted and disjoint), and a stack that cannot be
 * read is never safe. Only when every thread passes is the switch made (hpkg_switch_span, same order and
 * checks). No Python runs between these system calls, and nothing is written unless all threads pass.
 *
 * Anything off the usual path (a register read failing, a kernel without PROCMAP_QUERY, a buffer too
 * small, a stack read falling short) returns at once without writing, and the caller does the check
 * its own way, which knows how to report or recover from each of them. The fields are 64-bit words so
 * that the ctypes mirror needs no padding rules. */
struct hpkg_window {
    /* set before the stop */
    int64_t pid;
    int64_t maps_fd; /* /proc/PID/maps, for PROCMAP_QUERY */
    int64_t mem_fd;  /* /proc/PID/mem, for the switch */
    uint64_t stack_limit;
    int64_t parallel_bytes; /* stacks of at least this many bytes in all are read in two halves at once */
    struct user_regs_struct *slots;
    int64_t *place_start, *place_end;
    uint64_t *remote; /* (address, length) pairs: the located stacks */
    uint64_t *local;  /* (address, length) pairs: where each lands in `buffer` */
    uint8_t *buffer;
    int64_t buffer_size;
    const uint64_t *ip_ranges; /* [start, end) pairs */
    int64_t ip_count;
    const uint64_t *register_ranges;
    int64_t register_count;
    const uint64_t *word_ranges; /* sorted, disjoint */
    int64_t word_count;
    /* the switch: span_length 0 for none */
    uint64_t span_address;
    const uint8_t *before, *after;
    int64_t span_length;
    uint64_t state_address;
    const uint8_t *state;
    int64_t state_length;
    uint8_t *scratch;
    /* the held threads: set before the stop (the threads seized), again in the window if they differ */
    const int32_t *tids;
    int64_t count;
    uint8_t *have; /* have[i]: thread i's registers are in its slot already (read as it stopped, or by an earlier call) */
    /* out */
    uint8_t *verdict;       /* per thread: the VERDICT_* bits found (0: safe) */
    int64_t used;           /* stack bytes placed (read, unless WINDOW_ROOM) */
    int64_t failed;         /* WINDOW_REGISTERS: the thread whose registers could not be read */
    int64_t switch_outcome; /* SWITCH_*, when the switch was made */
    int64_t switch_errno;
    int64_t ended[5]; /* CLOCK_MONOTONIC ns at the end of each step: the call entered, registers, places, stacks, tests */
};

enum {
    WINDOW_SAFE = 0,      /* every thread passed; the switch was made when asked (its outcome set) */
    WINDOW_UNSAFE = 1,    /* some thread did not pass (its verdict bits); nothing written */
    WINDOW_REGISTERS = 2, /* PTRACE_GETREGS of tids[failed] failed (errno) */
    WINDOW_NO_QUERY = 3,  /* PROCMAP_QUERY unanswered (before Linux 6.11) */
    WINDOW_ROOM = 4,      /* the stacks need `used` bytes, more than the buffer holds */
    WINDOW_STACKS = 5,    /* a stack read fell short */
};

enum {
    VERDICT_INSTRUCTION = 1, /* rip in a patch-site window or a replaced function */
    VERDICT_REGISTER = 2,    /* a general register into memory about to be freed */
    VERDICT_UNREADABLE = 4,  /* rsp in no readable mapping */
    VERDICT_STACK_WORD = 8,  /* a stack word into a replaced function or that memory */
};

static int64_t now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t); /* the vDSO: no system call */
    return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

static int in_any(uint64_t value, const uint64_t *ranges, int64_t count)
{
    for (int64_t i = 0; i < count; i++) {
        if (value - ranges[2 * i] < ranges[2 * i + 1] - ranges[2 * i])
            return 1;
    }
    return 0;
}

/* Whether `word` lies in one of the `count` sorted, disjoint [start, end) ranges (a binary search). */
static int in_sorted(uint64_t word, const uint64_t *ranges, int64_t count)
{
    int64_t lo = 0, hi = count; /* the first range starting above the word */
    while (lo < hi) {
        int64_t mid = lo + (hi - lo) / 2;
        if (ranges[2 * mid] <= word)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo > 0 && word < ranges[2 * (lo - 1) + 1];
}

/* Whether some word of words[0:n] lies in one of the sorted, disjoint ranges: one compare per word
 * against their hull, four words a step with one branch for the four (as hpkg_find_words), a binary
 * search only for a word inside the hull (rare: stacks hold small numbers and stack and library
 * addresses, the ranges are a few functions). */
static int any_word_in(const uint64_t *words, long n, const uint64_t *ranges, int64_t count)
{
    uint64_t low = ranges[0], span = ranges[2 * count - 1] - low;
    long i = 0;
    for (; i + 4 <= n; i += 4) {
        int any = (words[i] - low < span) | (words[i + 1] - low < span) | (words[i + 2] - low < span) |
                  (words[i + 3] - low < span);
        if (__builtin_expect(any, 0)) {
            for (long j = i; j < i + 4; j++) {
                if (words[j] - low < span && in_sorted(words[j], ranges, count))
                    return 1;
            }
        }
    }
    for (; i < n; i++) {
        if (words[i] - low < span && in_sorted(words[i], ranges, count))
            return 1;
    }
    return 0;
}

long hpkg_window_check(struct hpkg_window *w)
{
    long count = (long)w->count;
    const long rip = offsetof(struct user_regs_struct, rip) / 8, rsp = offsetof(struct user_regs_struct, rsp) / 8;
    const long general = offsetof(struct user_regs_struct, orig_rax) / 8; /* r15 .. rdi: words 0 to 14 */
    w->ended[0] = now_ns();
    for (long i = 0; i < count; i++) {
        if (w->have[i])
            continue;
        if (ptrace(PTRACE_GETREGS, w->tids[i], 0, &w->slots[i]) == -1) {
            w->failed = i;
            return WINDOW_REGISTERS;
        }
        w->have[i] = 1; /* a held thread's registers do not change: a call again (WINDOW_ROOM) skips it */
    }
    w->ended[1] = now_ns();
    long total = 0, located = 0;
    for (long i = 0; i < count; i++) {
        uint64_t sp = ((const uint64_t *)&w->slots[i])[rsp];
        struct procmap_query query = {.size = sizeof query, .query_addr = sp};
        if (ioctl((int)w->maps_fd, PROCMAP_QUERY, &query) == -1) {
            if (errno != ENOENT)
                return WINDOW_NO_QUERY;
            w->place_start[i] = w->place_end[i] = -1;
            continue;
        }
        if (!(query.vma_flags & PROCMAP_QUERY_VMA_READABLE) || sp < query.vma_start || sp >= query.vma_end) {
            w->place_start[i] = w->place_end[i] = -1;
            continue;
        }
        total = place_stack(i, sp, query.vma_end, w->stack_limit, total, located++, w->place_start,
                            w->place_end, w->remote);
    }
    w->used = total;
    w->ended[2] = now_ns();
    if (total > w->buffer_size)
        return WINDOW_ROOM;
    for (long k = 0, at = 0; k < located; k++) {
        w->local[2 * k] = (uint64_t)(uintptr_t)(w->buffer + at);
        w->local[2 * k + 1] = w->remote[2 * k + 1];
        at += (long)w->remote[2 * k + 1];
    }
    if (located > 0 &&
        !hpkg_read_stacks((int)w->pid, (const struct iovec *)w->local, (const struct iovec *)w->remote,
                          located, total, total >= w->parallel_bytes))
        return WINDOW_STACKS;
    w->ended[3] = now_ns();
    long unsafe = 0;
    for (long i = 0; i < count; i++) {
        const uint64_t *regs = (const uint64_t *)&w->slots[i];
        uint8_t found = 0;
        if (in_any(regs[rip], w->ip_ranges, w->ip_count))
            found |= VERDICT_INSTRUCTION;
        for (long r = 0; r < general && w->register_count > 0; r++) {
            if (in_any(regs[r], w->register_ranges, w->register_count)) {
                found |= VERDICT_REGISTER;
                break;
            }
        }
        if (w->place_start[i] < 0)
            found |= VERDICT_UNREADABLE;
        else if (w->word_count > 0 &&
                 any_word_in((const uint64_t *)(w->buffer + w->place_start[i]),
                             (long)(w->place_end[i] - w->place_start[i]) / 8, w->word_ranges, w->word_count))
            found |= VERDICT_STACK_WORD;
        w->verdict[i] = found;
        unsafe += found != 0;
    }
    w->ended[4] = now_ns();
    if (unsafe)
        return WINDOW_UNSAFE;
    if (w->span_length > 0) {
        errno = 0;
        w->switch_outcome = hpkg_switch_span((int)w->mem_fd, w->span_address, w->before, w->after,
                                             (long)w->span_length, w->state_address, w->state,
                                             (long)w->state_length, w->scratch);
        w->switch_errno = errno;
    }
    return WINDOW_SAFE;
}

/* Before the stop: the block's memory and each stack the check is about to read brought into this CPU's
 * caches, while the process runs. `sps` are stack pointers known before the stop (a thread blocked in a
 * system call shows its own in /proc/PID/task/TID/syscall); their stacks are placed and read into the
 * buffer as the check will (a stack that moves meanwhile only costs the check its warmth). Nothing is
 * written to the target; the result is the bytes these stacks need (read only when the buffer holds them:
 * the caller grows it otherwise), or -2 when the kernel does not answer PROCMAP_QUERY (before Linux 6.11:
 * the check inside the window could not place a stack). */
long hpkg_window_warm(struct hpkg_window *w, const uint64_t *sps, long count)
{
    volatile uint8_t sink = 0;
    for (int64_t i = 0; i < 2 * w->ip_count; i += 8)
        sink ^= (uint8_t)w->ip_ranges[i];
    for (int64_t i = 0; i < 2 * w->word_count; i += 8)
        sink ^= (uint8_t)w->word_ranges[i];
    for (int64_t i = 0; i < 2 * w->register_count; i += 8)
        sink ^= (uint8_t)w->register_ranges[i];
    struct procmap_query probe = {.size = sizeof probe, .query_addr = 0}; /* page 0: never mapped */
    if (ioctl((int)w->maps_fd, PROCMAP_QUERY, &probe) == -1 && errno != ENOENT)
        return -2;
    long total = 0, located = 0;
    for (long i = 0; i < count; i++) {
        struct procmap_query query = {.size = sizeof query, .query_addr = sps[i]};
        if (ioctl((int)w->maps_fd, PROCMAP_QUERY, &query) == -1 || !(query.vma_flags & PROCMAP_QUERY_VMA_READABLE))
            continue;
        total = place_stack(i, sps[i], query.vma_end, w->stack_limit, total, located++, w->place_start,
                            w->place_end, w->remote);
    }
    if (total > w->buffer_size)
        return total;
    for (long k = 0, at = 0; k < located; k++) {
        w->local[2 * k] = (uint64_t)(uintptr_t)(w->buffer + at);
        w->local[2 * k + 1] = w->remote[2 * k + 1];
        at += (long)w->remote[2 * k + 1];
    }
    if (located > 0)
        hpkg_read_stacks((int)w->pid, (const struct iovec *)w->local, (const struct iovec *)w->remote, located,
                         total, 0);
    (void)sink;
    return total;
}
