/*
 * migd guest workload: the whole userland of the test guest. Runs as /init (PID 1) of an
 * initramfs, dirties memory in worker threads, proves every page it wrote is still intact, and
 * reports on the serial console in short versioned lines that services/shared/guest/telemetry.ts
 * parses. Build: musl-gcc -static -O2 -pthread -o init stress.c integrity.c devices.c disk.c
 *
 * Parameters come from the kernel command line (/proc/cmdline), or from argv when not PID 1
 * (handy for running it natively: ./init migd.workers=2 migd.bytes=8M):
 *   migd.workers=N       worker threads (1..32, default 1)
 *   migd.bytes=SIZE      region per worker (K/M/G suffix, multiple of 4 KiB, default 64M)
 *   migd.pattern=P       random | compressible | hotcold | idle (default random)
 *   migd.rate=SIZE       per-worker write limit in bytes/s, 0 = unlimited (default 0)
 *   migd.verify=0|1      verify every page before rewriting it (default 1)
 *   migd.hot=SIZE        hotcold: hot set per worker (default bytes/16)
 *   migd.report_ms=N     one `pass` line per worker per N ms of work (default 100, 10..60000)
 *   migd.hb_ms=N         heartbeat period (default 1000, 50..1000)
 *   migd.idle_ms=N       idle/hotcold: verifier sweep period for idle (default 2000)
 *   migd.seed=N          content seed (default: from the real-time clock)
 *   migd.phase_ms=N      phase change: after N ms (guest clock, from the start line) each worker's
 *                        write limit becomes migd.phase_rate (0 = no phase change, the default)
 *   migd.phase_rate=SIZE per-worker write limit in bytes/s after the phase change, 0 = unlimited
 *   migd.ip=A.B.C.D/LEN  bring up eth0 (migd.ifname) with this address and answer a UDP echo on
 *                        migd.echo_port (default 7); see devices.c
 *   migd.disk=DEV[,size=SIZE][,rate=SIZE][,verify_ms=N]  disk integrity workload, see disk.c
 * As PID 1 it first loads the kernel modules listed in /lib/modules/load.order (devices.c).
 *
 * Output: every line is `migd-stress v1 <mono_ms> <kind> key=value ... *<crc16>` (format in
 * stress/README.md and telemetry.ts). Lines are written with one write(2) under a lock, and the
 * timestamp is taken under that lock, so lines never interleave and mono_ms never decreases.
 *
 * Integrity and rollback (see integrity.h for the page format)
 * ------------------------------------------------------------
 * Page contents are a pure function of (seed, worker, index, generation), so no per-page table
 * exists. The expected generation is derived from the worker's pass counter `gen`, which lives in
 * the small `struct worker` (outside the dirtied region): a full-sweep pass g verifies that every
 * page still carries g-1 and rewrites it with g. Hence:
 *   - a lost update (dirty page never re-sent) leaves generation g-1 where g was written: STALE;
 *   - memory rolled back partially (some pages older than the counter): STALE with found < expected;
 *   - the counter rolled back but not the data: FUTURE;
 *   - a page that never arrived (zero-filled on the destination): ZERO; bit flips: CORRUPT;
 *   - pages delivered to the wrong address: MISPLACED.
 * A *consistent* rollback of all of guest memory and CPU state (counter and data together) is by
 * definition invisible from inside; it is caught from outside because the pass counter `n=` and
 * mono_ms in the serial stream go backwards, which the host parser flags (`regress` anomaly).
 * Cold pages (hotcold's cold part, idle) are written once with generation 1 and re-verified by a
 * sweep; a bad cold page is reported once and then rewritten so it is not reported forever.
 *
 * Fault injection: at start each worker prints `map w=W page=0 pa=0x...`, the guest-physical
 * address of its first page (from /proc/self/pagemap; regions are mlocked, THP is off for them
 * and compaction of unevictable pages is disabled so addresses stay put). A host test backs guest
 * RAM with a shared file and flips bytes at that offset. Serial input commands (one per line):
 *   pa W P            print the physical address of page P of worker W
 *   corrupt W P [K]   flip one bit in word K (default 100) of that page behind the workload's back
 *   summary           print a summary line now
 *   dverify           verify every block the disk workload wrote (a `dsweep` line reports it)
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include "guest.h"
#include "integrity.h"

#define MAX_WORKERS 32u
#define ERR_LINES_PER_SEC 8u
#define SUMMARY_EVERY_HB 5u
#define THROTTLE_EVERY_PAGES 16u
#define REPORT_CHECK_PAGES 256u /* a slow pass still reports every report_ms */

enum pattern { PAT_RANDOM, PAT_COMPRESSIBLE, PAT_HOTCOLD, PAT_IDLE };
static const char *const pattern_names[] = {"random", "compressible", "hotcold", "idle"};

struct params {
  unsigned workers;
  uint64_t bytes;
  enum pattern pattern;
  uint64_t rate;
  int verify;
  uint64_t hot;
  unsigned report_ms;
  unsigned hb_ms;
  unsigned idle_ms;
  uint64_t seed;
  uint64_t phase_ms;
  uint64_t phase_rate;
};

static struct params P = {
    .workers = 1,
    .bytes = 64ull << 20,
    .pattern = PAT_RANDOM,
    .rate = 0,
    .verify = 1,
    .hot = 0,
    .report_ms = 100,
    .hb_ms = 1000,
    .idle_ms = 2000,
    .seed = 0,
    .phase_ms = 0,
    .phase_rate = 0,
};
static uint64_t start_ns; /* the workload's start (the `start` line), for the phase change */

struct worker {
  unsigned id;
  uint8_t *mem;
  uint64_t npages;
  uint64_t hot_pages; /* hotcold: pages [0, hot_pages) are hot */
  struct migd_ctx ctx;
  uint64_t gen; /* generation of the last completed (hot) pass; the expected generation */
  uint64_t cold_cursor;
  /* cumulative counters, read by the heartbeat thread (relaxed atomics) */
  uint64_t bytes_total;
  uint64_t pages_verified;
  uint64_t errors;
  uint64_t dropped;
  uint64_t passes;
  /* report window */
  uint64_t win_start_ns;
  uint64_t win_bytes;
  uint64_t win_sleep_ns;
  uint64_t verify_line_ns;
  uint64_t errors_at_verify_line;
  /* error-line budget */
  uint64_t err_window_ns;
  unsigned err_lines;
  /* rate limiter */
  uint64_t rl_base_ns;
  uint64_t rl_bytes;
  uint64_t rate;  /* the limit in force: P.rate, then P.phase_rate after the phase change */
  int phased;
  pthread_t thread;
};

static struct worker *workers;
int is_pid1;
unsigned report_ms_param = 100;
static int out_fd = 1;
static pthread_mutex_t out_lock = PTHREAD_MUTEX_INITIALIZER;

/* ---------------------------------------------------------------------------------- output */

uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static uint32_t line_crc(const char *s, size_t n) {
  uint32_t h = 2166136261u; /* FNV-1a, folded to 16 bits */
  for (size_t i = 0; i < n; i++) {
    h ^= (uint8_t)s[i];
    h *= 16777619u;
  }
  return (h ^ (h >> 16)) & 0xffffu;
}

static void write_all(int fd, const char *buf, size_t n) {
  while (n > 0) {
    ssize_t r = write(fd, buf, n);
    if (r < 0) {
      if (errno == EINTR || errno == EAGAIN) continue;
      return;
    }
    buf += r;
    n -= (size_t)r;
  }
}

void emit(const char *kind, const char *fmt, ...) {
  char buf[640]; /* the longest line, hb with 32 workers, is ~420 bytes: never truncated */
  const size_t room = sizeof buf - 8; /* " *xxxx\n" */
  pthread_mutex_lock(&out_lock);
  int n = snprintf(buf, room, "migd-stress v1 %llu %s", (unsigned long long)(now_ns() / 1000000u),
                   kind);
  if (n < 0) n = 0;
  if ((size_t)n >= room) n = (int)room - 1;
  if (fmt && *fmt && (size_t)n + 1 < room) {
    buf[n++] = ' ';
    va_list ap;
    va_start(ap, fmt);
    int m = vsnprintf(buf + n, room - (size_t)n, fmt, ap);
    va_end(ap);
    if (m > 0) n += m;
    if ((size_t)n >= room) n = (int)room - 1;
  }
  n += snprintf(buf + n, sizeof buf - (size_t)n, " *%04x\n", (unsigned)line_crc(buf, (size_t)n));
  write_all(out_fd, buf, (size_t)n);
  pthread_mutex_unlock(&out_lock);
}

/* PID 1 must never exit (the kernel panics): report and park. Natively, just exit. */
static void fatal(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void fatal(const char *fmt, ...) {
  char msg[200];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  emit("fatal", "%s", msg);
  if (!is_pid1) exit(1);
  for (;;) pause();
}

void sleep_ns(uint64_t ns) {
  struct timespec ts = {(time_t)(ns / 1000000000ull), (long)(ns % 1000000000ull)};
  while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
  }
}

/* ------------------------------------------------------------------------------ parameters */

int parse_u64(const char *s, uint64_t *out) {
  if (*s < '0' || *s > '9') return -1;
  char *end;
  errno = 0;
  unsigned long long v = strtoull(s, &end, 0);
  if (errno || *end) return -1;
  *out = v;
  return 0;
}

/* "64M", "512K", "1G", "4096" (binary multiples). */
int parse_size(const char *s, uint64_t *out) {
  if (*s < '0' || *s > '9') return -1;
  char *end;
  errno = 0;
  unsigned long long v = strtoull(s, &end, 10);
  if (errno) return -1;
  unsigned shift = 0;
  switch (*end) {
    case '\0': break;
    case 'k': case 'K': shift = 10; end++; break;
    case 'm': case 'M': shift = 20; end++; break;
    case 'g': case 'G': shift = 30; end++; break;
    default: return -1;
  }
  if (*end) return -1;
  if (shift && v > (UINT64_MAX >> shift)) return -1;
  *out = (uint64_t)v << shift;
  return 0;
}

static void set_param(const char *key, const char *val) {
  uint64_t v = 0;
  if (!strcmp(key, "workers")) {
    if (parse_u64(val, &v) || v < 1 || v > MAX_WORKERS) fatal("reason=bad_param key=migd.workers");
    P.workers = (unsigned)v;
  } else if (!strcmp(key, "bytes")) {
    if (parse_size(val, &v) || v < MIGD_PAGE_SIZE || v % MIGD_PAGE_SIZE)
      fatal("reason=bad_param key=migd.bytes");
    P.bytes = v;
  } else if (!strcmp(key, "pattern")) {
    unsigned i;
    for (i = 0; i < 4; i++)
      if (!strcmp(val, pattern_names[i])) break;
    if (i == 4) fatal("reason=bad_param key=migd.pattern");
    P.pattern = (enum pattern)i;
  } else if (!strcmp(key, "rate")) {
    if (parse_size(val, &v)) fatal("reason=bad_param key=migd.rate");
    P.rate = v;
  } else if (!strcmp(key, "verify")) {
    if (parse_u64(val, &v) || v > 1) fatal("reason=bad_param key=migd.verify");
    P.verify = (int)v;
  } else if (!strcmp(key, "hot")) {
    if (parse_size(val, &v) || v < MIGD_PAGE_SIZE || v % MIGD_PAGE_SIZE)
      fatal("reason=bad_param key=migd.hot");
    P.hot = v;
  } else if (!strcmp(key, "report_ms")) {
    if (parse_u64(val, &v) || v < 10 || v > 60000) fatal("reason=bad_param key=migd.report_ms");
    P.report_ms = (unsigned)v;
    report_ms_param = P.report_ms;
  } else if (!strcmp(key, "hb_ms")) {
    if (parse_u64(val, &v) || v < 50 || v > 1000) fatal("reason=bad_param key=migd.hb_ms");
    P.hb_ms = (unsigned)v;
  } else if (!strcmp(key, "idle_ms")) {
    if (parse_u64(val, &v) || v < 100 || v > 600000) fatal("reason=bad_param key=migd.idle_ms");
    P.idle_ms = (unsigned)v;
  } else if (!strcmp(key, "phase_ms")) {
    if (parse_u64(val, &v) || v > 86400000ull) fatal("reason=bad_param key=migd.phase_ms");
    P.phase_ms = v;
  } else if (!strcmp(key, "phase_rate")) {
    if (parse_size(val, &v)) fatal("reason=bad_param key=migd.phase_rate");
    P.phase_rate = v;
  } else if (!strcmp(key, "seed")) {
    if (parse_u64(val, &v)) fatal("reason=bad_param key=migd.seed");
    P.seed = v;
  } else if (net_param(key, val) != 0 && disk_param(key, val) != 0) {
    emit("warn", "reason=unknown_param key=migd.%s", key);
  }
}

static void parse_token(char *tok) {
  if (strncmp(tok, "migd.", 5) != 0) return;
  char *eq = strchr(tok, '=');
  if (!eq) {
    emit("warn", "reason=param_without_value key=%.40s", tok);
    return;
  }
  *eq = '\0';
  set_param(tok + 5, eq + 1);
}

static void parse_params(int argc, char **argv) {
  if (!is_pid1 && argc > 1) {
    for (int i = 1; i < argc; i++) parse_token(argv[i]);
  } else {
    char buf[4096];
    int fd = open("/proc/cmdline", O_RDONLY);
    if (fd < 0) fatal("reason=open_cmdline errno=%d", errno);
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n < 0) fatal("reason=read_cmdline errno=%d", errno);
    buf[n] = '\0';
    char *save = NULL;
    for (char *tok = strtok_r(buf, " \t\n", &save); tok; tok = strtok_r(NULL, " \t\n", &save))
      parse_token(tok);
  }
  if (P.seed == 0) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    P.seed = migd_mix64((uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec) | 1u;
  }
  if (P.pattern == PAT_HOTCOLD) {
    if (P.hot == 0) P.hot = (P.bytes / 16) / MIGD_PAGE_SIZE * MIGD_PAGE_SIZE;
    if (P.hot < MIGD_PAGE_SIZE) P.hot = MIGD_PAGE_SIZE;
    if (P.hot > P.bytes) fatal("reason=bad_param key=migd.hot detail=hot_exceeds_bytes");
  } else {
    P.hot = 0;
  }
}

/* ---------------------------------------------------------------------------------- PID 1 */

static void write_file(const char *path, const char *text) {
  int fd = open(path, O_WRONLY);
  if (fd < 0) return;
  write_all(fd, text, strlen(text));
  close(fd);
}

static void setup_pid1(void) {
  mkdir("/proc", 0555);
  if (mount("proc", "/proc", "proc", 0, NULL) != 0 && errno != EBUSY) {
    /* reported below once the console works */
  }
  /* Block devices (/dev/vda) appear in devtmpfs; an open console fd stays valid under it. */
  mkdir("/dev", 0755);
  mount("devtmpfs", "/dev", "devtmpfs", 0, NULL);
  mkdir("/sys", 0555);
  mount("sysfs", "/sys", "sysfs", 0, NULL);
  if (fcntl(1, F_GETFD) < 0) {
    /* No /dev/console in the initramfs: get one from devtmpfs. */
    int fd = open("/dev/console", O_RDWR | O_NOCTTY);
    if (fd < 0) fd = open("/dev/ttyS0", O_RDWR | O_NOCTTY);
    if (fd >= 0) {
      dup2(fd, 0);
      dup2(fd, 1);
      dup2(fd, 2);
      if (fd > 2) close(fd);
    }
  }
  /* Serial input carries commands: no echo into the telemetry stream. */
  struct termios t;
  if (tcgetattr(0, &t) == 0) {
    t.c_lflag &= ~(tcflag_t)(ECHO | ECHOE | ECHOK | ECHONL);
    tcsetattr(0, TCSANOW, &t);
  }
  /* Keep mlocked pages where they are, so printed physical addresses stay valid. */
  write_file("/proc/sys/vm/compact_unevictable_allowed", "0\n");
}

/* ------------------------------------------------------------------------------- workers */

static uint8_t *page_at(struct worker *w, uint64_t idx) { return w->mem + idx * MIGD_PAGE_SIZE; }

static void emit_map(struct worker *w, uint64_t idx) {
  uint64_t vaddr = (uint64_t)(uintptr_t)page_at(w, idx);
  uint64_t entry = 0;
  int fd = open("/proc/self/pagemap", O_RDONLY);
  ssize_t r = fd < 0 ? -1 : pread(fd, &entry, sizeof entry, (off_t)(vaddr / MIGD_PAGE_SIZE * 8));
  int err = errno;
  if (fd >= 0) close(fd);
  uint64_t pfn = entry & ((1ull << 55) - 1);
  if (r != (ssize_t)sizeof entry || !(entry >> 63) || pfn == 0) {
    emit("map", "w=%u page=%llu pa=none errno=%d", w->id, (unsigned long long)idx,
         r < 0 ? err : 0);
    return;
  }
  emit("map", "w=%u page=%llu pa=0x%llx", w->id, (unsigned long long)idx,
       (unsigned long long)(pfn * MIGD_PAGE_SIZE));
}

static void emit_verify(struct worker *w, uint64_t now) {
  emit("verify", "w=%u pages=%llu errors=%llu dropped=%llu", w->id,
       (unsigned long long)__atomic_load_n(&w->pages_verified, __ATOMIC_RELAXED),
       (unsigned long long)__atomic_load_n(&w->errors, __ATOMIC_RELAXED),
       (unsigned long long)__atomic_load_n(&w->dropped, __ATOMIC_RELAXED));
  w->verify_line_ns = now;
  w->errors_at_verify_line = w->errors;
}

static void report_error(struct worker *w, uint64_t idx, uint64_t expected, enum migd_status st,
                         const struct migd_finding *f) {
  __atomic_fetch_add(&w->errors, 1, __ATOMIC_RELAXED);
  uint64_t now = now_ns();
  if (now - w->err_window_ns >= 1000000000ull) {
    w->err_window_ns = now;
    w->err_lines = 0;
  }
  if (w->err_lines >= ERR_LINES_PER_SEC) {
    __atomic_fetch_add(&w->dropped, 1, __ATOMIC_RELAXED);
    return;
  }
  w->err_lines++;
  const char *reason = migd_status_name(st);
  unsigned long long pg = (unsigned long long)idx, ex = (unsigned long long)expected,
                     fg = (unsigned long long)f->found_gen;
  if (st == MIGD_MISPLACED) {
    emit("err", "w=%u page=%llu reason=%s expected=%llu found=%llu src_w=%u src_page=%llu", w->id,
         pg, reason, ex, fg, f->found_worker, (unsigned long long)f->found_index);
  } else if (st == MIGD_CORRUPT) {
    emit("err", "w=%u page=%llu reason=%s expected=%llu found=%llu word=%u xor=0x%llx", w->id, pg,
         reason, ex, fg, f->word, (unsigned long long)(f->expected_word ^ f->found_word));
  } else {
    emit("err", "w=%u page=%llu reason=%s expected=%llu found=%llu", w->id, pg, reason, ex,
         st == MIGD_ZERO ? 0ull : fg);
  }
}

/* Returns 1 when the page is intact. */
static int check_page(struct worker *w, uint64_t idx, uint64_t expected) {
  struct migd_finding f;
  enum migd_status st = migd_page_verify(page_at(w, idx), &w->ctx, idx, expected, &f);
  __atomic_fetch_add(&w->pages_verified, 1, __ATOMIC_RELAXED);
  if (st == MIGD_OK) return 1;
  report_error(w, idx, expected, st, &f);
  return 0;
}

static void write_page(struct worker *w, uint64_t idx, uint64_t gen) {
  migd_page_write(page_at(w, idx), &w->ctx, idx, gen);
  w->win_bytes += MIGD_PAGE_SIZE;
  w->rl_bytes += MIGD_PAGE_SIZE;
  __atomic_fetch_add(&w->bytes_total, MIGD_PAGE_SIZE, __ATOMIC_RELAXED);
}

/* The phase change, once per worker: the new limit counts from now (no catch-up, no debt). */
static void maybe_change_phase(struct worker *w) {
  if (!P.phase_ms || w->phased) return;
  uint64_t now = now_ns();
  if (now - start_ns < P.phase_ms * 1000000ull) return;
  w->phased = 1;
  w->rate = P.phase_rate;
  w->rl_base_ns = now;
  w->rl_bytes = 0;
  emit("phase", "w=%u rate=%llu", w->id, (unsigned long long)w->rate);
}

/* Per-worker rate limit; time spent sleeping here is excluded from ms_per_gib. */
static void throttle(struct worker *w) {
  maybe_change_phase(w);
  if (!w->rate) return;
  uint64_t now = now_ns();
  double due = (double)w->rl_base_ns + (double)w->rl_bytes * 1e9 / (double)w->rate;
  if ((double)now < due) {
    sleep_ns((uint64_t)(due - (double)now));
    w->win_sleep_ns += now_ns() - now;
  } else if ((double)now - due > 100e6) {
    /* Far behind (guest paused or throttled): do not burst to catch up. */
    w->rl_base_ns = now;
    w->rl_bytes = 0;
  }
}

/*
 * One `pass` line per report window: the work since the previous line, which is several passes
 * when passes are short and part of one when a pass is slow (rate limit, throttled vCPU);
 * n = passes completed so far.
 */
static void maybe_report(struct worker *w, int force) {
  uint64_t now = now_ns();
  uint64_t wall = now - w->win_start_ns;
  if (!force && wall < (uint64_t)P.report_ms * 1000000ull) return;
  if (w->win_bytes) {
    uint64_t busy = wall > w->win_sleep_ns ? wall - w->win_sleep_ns : 0;
    double ms_per_gib = (double)busy / 1e6 * (double)(1ull << 30) / (double)w->win_bytes;
    emit("pass", "w=%u n=%llu bytes=%llu ms=%llu wall=%llu ms_per_gib=%llu", w->id,
         (unsigned long long)w->gen, (unsigned long long)w->win_bytes,
         (unsigned long long)(busy / 1000000u), (unsigned long long)(wall / 1000000u),
         (unsigned long long)(ms_per_gib + 0.5));
  }
  /* With every report: a migrated guest proves pages verified on its new host after two of them */
  if (P.verify) emit_verify(w, now);
  w->win_start_ns = now_ns();
  w->win_bytes = 0;
  w->win_sleep_ns = 0;
}

static void fill_all(struct worker *w) {
  for (uint64_t i = 0; i < w->npages; i++) {
    write_page(w, i, 1);
    if (i % THROTTLE_EVERY_PAGES == THROTTLE_EVERY_PAGES - 1) throttle(w);
    if (i % REPORT_CHECK_PAGES == REPORT_CHECK_PAGES - 1) maybe_report(w, 0);
  }
  __atomic_store_n(&w->gen, 1, __ATOMIC_RELAXED);
  __atomic_fetch_add(&w->passes, 1, __ATOMIC_RELAXED);
  maybe_report(w, 1);
}

/* A cold page found bad is reported once, then rewritten so the sweep does not repeat it. */
static void check_cold(struct worker *w, uint64_t idx) {
  if (!check_page(w, idx, 1)) migd_page_write(page_at(w, idx), &w->ctx, idx, 1);
}

static void run_sweep(struct worker *w, uint64_t first, uint64_t count) {
  for (;;) {
    uint64_t expected = w->gen, g = expected + 1;
    for (uint64_t i = first; i < first + count; i++) {
      if (P.verify) check_page(w, i, expected);
      write_page(w, i, g);
      if (i % THROTTLE_EVERY_PAGES == THROTTLE_EVERY_PAGES - 1) throttle(w);
      if (i % REPORT_CHECK_PAGES == REPORT_CHECK_PAGES - 1) maybe_report(w, 0);
    }
    __atomic_store_n(&w->gen, g, __ATOMIC_RELAXED);
    __atomic_fetch_add(&w->passes, 1, __ATOMIC_RELAXED);
    if (P.verify && w->hot_pages && w->hot_pages < w->npages) {
      /* hotcold: verify a slice of the cold part per hot pass (about a quarter of the hot work) */
      uint64_t cold = w->npages - w->hot_pages, slice = w->hot_pages / 4 ? w->hot_pages / 4 : 1;
      for (uint64_t k = 0; k < slice && k < cold; k++) {
        check_cold(w, w->hot_pages + w->cold_cursor);
        w->cold_cursor = (w->cold_cursor + 1) % cold;
      }
    }
    maybe_report(w, 0);
  }
}

static void *worker_main(void *arg) {
  struct worker *w = arg;
  w->win_start_ns = w->rl_base_ns = w->err_window_ns = w->verify_line_ns = now_ns();
  fill_all(w);
  switch (P.pattern) {
    case PAT_RANDOM:
    case PAT_COMPRESSIBLE:
      run_sweep(w, 0, w->npages);
      break;
    case PAT_HOTCOLD:
      run_sweep(w, 0, w->hot_pages);
      break;
    case PAT_IDLE:
      for (;;) {
        sleep_ns((uint64_t)P.idle_ms * 1000000ull);
        if (!P.verify) continue;
        for (uint64_t i = 0; i < w->npages; i++) check_cold(w, i);
        emit_verify(w, now_ns());
      }
  }
  return NULL;
}

static void alloc_worker(struct worker *w, unsigned id) {
  w->id = id;
  w->npages = P.bytes / MIGD_PAGE_SIZE;
  w->hot_pages = P.pattern == PAT_HOTCOLD ? P.hot / MIGD_PAGE_SIZE : 0;
  w->rate = P.rate;
  w->ctx.seed = P.seed;
  w->ctx.worker = id;
  w->ctx.content = P.pattern == PAT_COMPRESSIBLE ? MIGD_CONTENT_COMPRESSIBLE : MIGD_CONTENT_RANDOM;
  void *mem = mmap(NULL, P.bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (mem == MAP_FAILED) fatal("reason=mmap w=%u errno=%d bytes=%llu", id, errno, (unsigned long long)P.bytes);
  /* 4 KiB pages that never move: physical addresses printed for fault injection stay valid. */
  madvise(mem, P.bytes, MADV_NOHUGEPAGE);
  if (mlock(mem, P.bytes) != 0) {
    if (is_pid1) fatal("reason=mlock w=%u errno=%d bytes=%llu", id, errno, (unsigned long long)P.bytes);
    emit("warn", "reason=mlock w=%u errno=%d", id, errno);
  }
  w->mem = mem;
}

/* ----------------------------------------------------------------------------- heartbeat */

static void emit_summary(void) {
  unsigned long long verified = 0, errors = 0, dropped = 0, passes = 0;
  for (unsigned i = 0; i < P.workers; i++) {
    verified += __atomic_load_n(&workers[i].pages_verified, __ATOMIC_RELAXED);
    errors += __atomic_load_n(&workers[i].errors, __ATOMIC_RELAXED);
    dropped += __atomic_load_n(&workers[i].dropped, __ATOMIC_RELAXED);
    passes += __atomic_load_n(&workers[i].passes, __ATOMIC_RELAXED);
  }
  emit("summary", "verified=%llu errors=%llu dropped=%llu passes=%llu", verified, errors, dropped,
       passes);
}

static void *heartbeat_main(void *arg) {
  (void)arg;
  uint64_t period = (uint64_t)P.hb_ms * 1000000ull, next = now_ns();
  for (unsigned long long seq = 1;; seq++) {
    next += period;
    struct timespec ts = {(time_t)(next / 1000000000ull), (long)(next % 1000000000ull)};
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR) {
    }
    uint64_t now = now_ns(), lag = now > next ? now - next : 0;
    if (lag > period) next = now; /* paused or starved: do not fire a burst of late beats */
    char mib[MAX_WORKERS * 12];
    size_t n = 0;
    for (unsigned i = 0; i < P.workers && n < sizeof mib - 12; i++)
      n += (size_t)snprintf(mib + n, sizeof mib - n, "%s%llu", i ? "," : "",
                            (unsigned long long)(__atomic_load_n(&workers[i].bytes_total,
                                                                 __ATOMIC_RELAXED) >> 20));
    emit("hb", "seq=%llu lag=%llu mib=%s", seq, (unsigned long long)(lag / 1000000u), mib);
    if (seq % SUMMARY_EVERY_HB == 0) emit_summary();
  }
  return NULL;
}

/* ------------------------------------------------------------------------ serial commands */

static void handle_command(char *line) {
  char cmd[16] = "";
  unsigned long long a = 0, b = 0, c = 100;
  int n = sscanf(line, "%15s %llu %llu %llu", cmd, &a, &b, &c);
  if (n < 1) return;
  if (!strcmp(cmd, "summary")) {
    emit_summary();
  } else if (!strcmp(cmd, "dverify")) {
    if (disk_enabled()) {
      disk_request_verify();
      emit("ack", "cmd=dverify ok=1");
    } else {
      emit("ack", "cmd=dverify ok=0 reason=no_disk");
    }
  } else if ((!strcmp(cmd, "pa") || !strcmp(cmd, "corrupt")) && n >= 3) {
    if (a >= P.workers || b >= workers[a].npages || c >= MIGD_PAGE_WORDS) {
      emit("ack", "cmd=%s ok=0 reason=out_of_range", cmd);
      return;
    }
    struct worker *w = &workers[a];
    if (!strcmp(cmd, "pa")) {
      emit_map(w, b);
    } else {
      volatile uint64_t *word = (volatile uint64_t *)page_at(w, b) + c;
      *word ^= 1ull << 17;
      emit("ack", "cmd=corrupt ok=1 w=%llu page=%llu word=%llu", a, b, c);
    }
  } else {
    emit("ack", "cmd=%.15s ok=0 reason=unknown", cmd);
  }
}

static void command_loop(void) {
  char buf[256];
  size_t used = 0;
  for (;;) {
    ssize_t r = read(0, buf + used, sizeof buf - 1 - used);
    if (r <= 0) {
      if (r < 0 && errno == EINTR) continue;
      break; /* no console input: park */
    }
    used += (size_t)r;
    buf[used] = '\0';
    char *start = buf, *nl;
    while ((nl = strpbrk(start, "\r\n")) != NULL) {
      *nl = '\0';
      handle_command(start);
      start = nl + 1;
    }
    used = strlen(start);
    memmove(buf, start, used);
    if (used >= sizeof buf - 1) used = 0; /* overlong garbage */
  }
  for (;;) pause();
}

/* MemAvailable in bytes, or 0 when unknown. */
static uint64_t mem_available(void) {
  char buf[2048];
  int fd = open("/proc/meminfo", O_RDONLY);
  if (fd < 0) return 0;
  ssize_t n = read(fd, buf, sizeof buf - 1);
  close(fd);
  if (n <= 0) return 0;
  buf[n] = '\0';
  const char *p = strstr(buf, "MemAvailable:");
  unsigned long long kib = 0;
  if (!p || sscanf(p + 13, "%llu", &kib) != 1) return 0;
  return (uint64_t)kib * 1024u;
}

int main(int argc, char **argv) {
  is_pid1 = getpid() == 1;
  if (is_pid1) setup_pid1();
  parse_params(argc, argv);
  if (is_pid1) load_modules();
  net_start();

  long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
  start_ns = now_ns();
  emit("start",
       "workers=%u bytes=%llu pattern=%s rate=%llu verify=%d hot=%llu report_ms=%u hb_ms=%u "
       "seed=0x%llx pid=%d ncpu=%ld phase_ms=%llu phase_rate=%llu",
       P.workers, (unsigned long long)P.bytes, pattern_names[P.pattern],
       (unsigned long long)P.rate, P.verify, (unsigned long long)P.hot, P.report_ms, P.hb_ms,
       (unsigned long long)P.seed, (int)getpid(), ncpu, (unsigned long long)P.phase_ms,
       (unsigned long long)P.phase_rate);

  /* PID 1 cannot be OOM-killed: overcommitting would panic the kernel ("deadlocked on memory").
   * Refuse up front, keeping some room for page tables, stacks and the kernel. */
  uint64_t avail = mem_available(), need = (uint64_t)P.workers * P.bytes;
  if (is_pid1 && avail && need + (16ull << 20) > avail)
    fatal("reason=insufficient_memory need_mib=%llu avail_mib=%llu", (unsigned long long)(need >> 20),
          (unsigned long long)(avail >> 20));

  workers = calloc(P.workers, sizeof *workers);
  if (!workers) fatal("reason=calloc");
  for (unsigned i = 0; i < P.workers; i++) alloc_worker(&workers[i], i);
  for (unsigned i = 0; i < P.workers; i++) emit_map(&workers[i], 0);

  for (unsigned i = 0; i < P.workers; i++) {
    int e = pthread_create(&workers[i].thread, NULL, worker_main, &workers[i]);
    if (e) fatal("reason=pthread_create w=%u errno=%d", i, e);
  }
  disk_start(P.seed);
  pthread_t hb;
  int e = pthread_create(&hb, NULL, heartbeat_main, NULL);
  if (e) fatal("reason=pthread_create hb errno=%d", e);

  command_loop(); /* never returns */
}
