/*
 * Disk integrity workload: proves that every block the guest wrote to its virtio disk is still
 * there, intact, after a migration with shared storage or a storage copy (NBD mirror).
 *
 *   migd.disk=DEV[,size=SIZE][,rate=SIZE][,verify_ms=N]
 *     DEV        block device (e.g. /dev/vda) or, natively, a file
 *     size       bytes to use from the start of DEV (default: all of it), a multiple of 4 KiB
 *     rate       write limit in bytes/s (default 4M; 0 = unlimited)
 *     verify_ms  also verify every written block this often (default 0: on `dverify` only)
 *
 * Blocks are 4 KiB and use the memory workload's page format (integrity.h): block b of
 * generation g holds migd_page_write(seed, worker = MIGD_DISK_WORKER, index = b, g), a pure
 * function, so nothing but the expected generation is stored. That generation table lives in
 * guest RAM (one uint32 per block), so it migrates with the memory, and the disk must match it on
 * arrival. The writer sweeps the disk in chunks: read the chunk (O_DIRECT, no page cache to hide
 * a lost write), verify each block already written against the table, write the next generation,
 * and update the table only after the write returned. A full verification (`dverify` on the
 * serial console, or every verify_ms) runs on the writer thread between chunks, so it never races
 * a write. Findings use the memory classes: zero (a block never delivered — an incomplete copy),
 * stale (an older generation: a lost write), future, misplaced (another block's content: a
 * misaddressed copy), corrupt (anything else).
 *
 * Telemetry (services/shared/guest/telemetry.ts):
 *   dstart dev=… bytes=… blocks=… rate=… direct=0|1
 *   dpass n=<pass> bytes=<written in window> wall=<ms> (one per max(report_ms, 1 s))
 *   dverify blocks=<verified, cumulative> errors=<cumulative> dropped=<err lines not printed>
 *   dsweep n=<full sweeps done> blocks=<checked in it> errors=<found in it> ms=<duration>
 *   derr block=B reason=R expected=G found=G [word=K xor=0x…] [src_block=S]
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "guest.h"
#include "integrity.h"

#define MIGD_DISK_WORKER 0xd15cu
#define CHUNK_BLOCKS 16u /* 64 KiB per request */
#define ERR_LINES_PER_SEC 8u
#define MAX_BLOCKS (1u << 24) /* 64 GiB of 4 KiB blocks: the table stays <= 64 MiB */

static struct {
  int enabled;
  char dev[128];
  uint64_t size;
  uint64_t rate;
  uint64_t verify_ms;
  int fd;
  int direct;
  uint64_t blocks;
  struct migd_ctx ctx;
  uint32_t *gen; /* expected generation per block; 0 = never written */
  uint8_t *buf;
  uint64_t pass;
  /* cumulative */
  uint64_t verified, errors, dropped, sweeps;
  /* report window and error-line budget */
  uint64_t win_start_ns, win_bytes, verify_line_ns, errors_at_line;
  uint64_t err_window_ns;
  unsigned err_lines;
  uint64_t rl_base_ns, rl_bytes;
  uint64_t next_sweep_ns;
  int verify_req;
} D = {.rate = 4ull << 20, .fd = -1};

int disk_enabled(void) { return D.enabled; }

void disk_request_verify(void) { __atomic_store_n(&D.verify_req, 1, __ATOMIC_RELEASE); }

int disk_param(const char *key, const char *val) {
  if (strcmp(key, "disk") != 0) return -1;
  char copy[256];
  if (strlen(val) >= sizeof copy) goto bad;
  strcpy(copy, val);
  char *save = NULL;
  char *dev = strtok_r(copy, ",", &save);
  if (!dev || strlen(dev) >= sizeof D.dev) goto bad;
  strcpy(D.dev, dev);
  for (char *opt = strtok_r(NULL, ",", &save); opt; opt = strtok_r(NULL, ",", &save)) {
    char *eq = strchr(opt, '=');
    if (!eq) goto bad;
    *eq = '\0';
    const char *v = eq + 1;
    if (!strcmp(opt, "size")) {
      if (parse_size(v, &D.size) || D.size % MIGD_PAGE_SIZE) goto bad;
    } else if (!strcmp(opt, "rate")) {
      if (parse_size(v, &D.rate)) goto bad;
    } else if (!strcmp(opt, "verify_ms")) {
      if (parse_u64(v, &D.verify_ms)) goto bad;
    } else {
      goto bad;
    }
  }
  D.enabled = 1;
  return 0;
bad:
  emit("warn", "reason=bad_param key=migd.disk");
  return 0;
}

/* ------------------------------------------------------------------------------------ I/O */

static int io_all(int write, uint8_t *buf, size_t len, uint64_t off) {
  while (len > 0) {
    ssize_t r = write ? pwrite(D.fd, buf, len, (off_t)off) : pread(D.fd, buf, len, (off_t)off);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return r < 0 ? -errno : -EIO;
    buf += r;
    len -= (size_t)r;
    off += (uint64_t)r;
  }
  return 0;
}

/* ---------------------------------------------------------------------------- reporting */

static void emit_verify_line(uint64_t now) {
  emit("dverify", "blocks=%llu errors=%llu dropped=%llu", (unsigned long long)D.verified,
       (unsigned long long)D.errors, (unsigned long long)D.dropped);
  D.verify_line_ns = now;
  D.errors_at_line = D.errors;
}

static void report(uint64_t block, uint64_t expected, enum migd_status st, const struct migd_finding *f) {
  D.errors++;
  uint64_t now = now_ns();
  if (now - D.err_window_ns >= 1000000000ull) {
    D.err_window_ns = now;
    D.err_lines = 0;
  }
  if (D.err_lines >= ERR_LINES_PER_SEC) {
    D.dropped++;
    return;
  }
  D.err_lines++;
  unsigned long long b = (unsigned long long)block, ex = (unsigned long long)expected,
                     fg = st == MIGD_ZERO ? 0ull : (unsigned long long)f->found_gen;
  const char *reason = migd_status_name(st);
  if (st == MIGD_MISPLACED)
    emit("derr", "block=%llu reason=%s expected=%llu found=%llu src_block=%llu", b, reason, ex, fg,
         (unsigned long long)f->found_index);
  else if (st == MIGD_CORRUPT)
    emit("derr", "block=%llu reason=%s expected=%llu found=%llu word=%u xor=0x%llx", b, reason, ex,
         fg, f->word, (unsigned long long)(f->expected_word ^ f->found_word));
  else
    emit("derr", "block=%llu reason=%s expected=%llu found=%llu", b, reason, ex, fg);
}

/* Verifies blocks [first, first+n) held in D.buf; returns the number of bad ones. */
static unsigned check_chunk(uint64_t first, unsigned n) {
  unsigned bad = 0;
  for (unsigned j = 0; j < n; j++) {
    uint32_t want = D.gen[first + j];
    if (want == 0) continue;
    struct migd_finding f;
    enum migd_status st = migd_page_verify(D.buf + (size_t)j * MIGD_PAGE_SIZE, &D.ctx, first + j, want, &f);
    D.verified++;
    if (st != MIGD_OK) {
      report(first + j, want, st, &f);
      bad++;
    }
  }
  return bad;
}

/* Reads and checks every written block; a bad block is rewritten with its expected generation so
 * it is reported once, not again by the next pass. */
static void full_sweep(void) {
  uint64_t t0 = now_ns(), checked = 0, bad_total = 0;
  for (uint64_t b = 0; b < D.blocks; b += CHUNK_BLOCKS) {
    unsigned n = (unsigned)(D.blocks - b < CHUNK_BLOCKS ? D.blocks - b : CHUNK_BLOCKS);
    int e = io_all(0, D.buf, (size_t)n * MIGD_PAGE_SIZE, b * MIGD_PAGE_SIZE);
    if (e) {
      emit("warn", "reason=disk_io op=read block=%llu errno=%d", (unsigned long long)b, -e);
      return;
    }
    for (unsigned j = 0; j < n; j++) checked += D.gen[b + j] != 0;
    unsigned bad = check_chunk(b, n);
    if (bad) {
      bad_total += bad;
      for (unsigned j = 0; j < n; j++)
        if (D.gen[b + j]) migd_page_write(D.buf + (size_t)j * MIGD_PAGE_SIZE, &D.ctx, b + j, D.gen[b + j]);
      io_all(1, D.buf, (size_t)n * MIGD_PAGE_SIZE, b * MIGD_PAGE_SIZE);
    }
  }
  D.sweeps++;
  emit("dsweep", "n=%llu blocks=%llu errors=%llu ms=%llu", (unsigned long long)D.sweeps,
       (unsigned long long)checked, (unsigned long long)bad_total,
       (unsigned long long)((now_ns() - t0) / 1000000u));
  emit_verify_line(now_ns());
}

static void maybe_sweep(void) {
  uint64_t now = now_ns();
  int due = D.verify_ms && now >= D.next_sweep_ns;
  if (!__atomic_exchange_n(&D.verify_req, 0, __ATOMIC_ACQ_REL) && !due) return;
  full_sweep();
  if (D.verify_ms) D.next_sweep_ns = now_ns() + D.verify_ms * 1000000ull;
}

static void throttle(void) {
  if (!D.rate) return;
  uint64_t now = now_ns();
  double due = (double)D.rl_base_ns + (double)D.rl_bytes * 1e9 / (double)D.rate;
  if ((double)now < due) {
    /* Sleep in slices so a `dverify` is served within ~100 ms even at a low rate. */
    uint64_t left = (uint64_t)(due - (double)now);
    while (left > 0 && !__atomic_load_n(&D.verify_req, __ATOMIC_ACQUIRE)) {
      uint64_t step = left < 100000000ull ? left : 100000000ull;
      sleep_ns(step);
      left -= step;
    }
  } else if ((double)now - due > 100e6) {
    D.rl_base_ns = now; /* far behind (paused): no catch-up burst */
    D.rl_bytes = 0;
  }
}

static void maybe_report(int force) {
  uint64_t now = now_ns();
  uint64_t wall = now - D.win_start_ns;
  /* At most one line a second: serial output is costly under TCG, and disk passes are slow. */
  uint64_t period_ms = report_ms_param < 1000 ? 1000 : report_ms_param;
  if (!force && wall < period_ms * 1000000ull) return;
  if (D.win_bytes)
    emit("dpass", "n=%llu bytes=%llu wall=%llu", (unsigned long long)D.pass,
         (unsigned long long)D.win_bytes, (unsigned long long)(wall / 1000000u));
  if (now - D.verify_line_ns >= 1000000000ull || D.errors != D.errors_at_line) emit_verify_line(now);
  D.win_start_ns = now;
  D.win_bytes = 0;
}

/* --------------------------------------------------------------------------------- writer */

static void *disk_main(void *arg) {
  (void)arg;
  D.win_start_ns = D.rl_base_ns = D.err_window_ns = D.verify_line_ns = now_ns();
  D.next_sweep_ns = now_ns() + D.verify_ms * 1000000ull;
  for (D.pass = 1;; D.pass++) {
    if (D.pass > UINT32_MAX) D.pass = 1; /* never in practice: 2^32 sweeps */
    for (uint64_t b = 0; b < D.blocks; b += CHUNK_BLOCKS) {
      maybe_sweep();
      unsigned n = (unsigned)(D.blocks - b < CHUNK_BLOCKS ? D.blocks - b : CHUNK_BLOCKS);
      size_t len = (size_t)n * MIGD_PAGE_SIZE;
      int e = io_all(0, D.buf, len, b * MIGD_PAGE_SIZE);
      if (e) {
        emit("warn", "reason=disk_io op=read block=%llu errno=%d", (unsigned long long)b, -e);
        sleep_ns(1000000000ull);
        continue;
      }
      check_chunk(b, n);
      for (unsigned j = 0; j < n; j++) migd_page_write(D.buf + (size_t)j * MIGD_PAGE_SIZE, &D.ctx, b + j, D.pass);
      e = io_all(1, D.buf, len, b * MIGD_PAGE_SIZE);
      if (e) {
        /* The blocks may hold either generation now: stop checking them rather than guess. */
        for (unsigned j = 0; j < n; j++) D.gen[b + j] = 0;
        emit("warn", "reason=disk_io op=write block=%llu errno=%d", (unsigned long long)b, -e);
        sleep_ns(1000000000ull);
        continue;
      }
      for (unsigned j = 0; j < n; j++) D.gen[b + j] = (uint32_t)D.pass;
      D.win_bytes += len;
      D.rl_bytes += len;
      throttle();
      maybe_report(0);
    }
  }
  return NULL;
}

void disk_start(uint64_t seed) {
  if (!D.enabled) return;
  D.fd = open(D.dev, O_RDWR | O_DIRECT | O_CLOEXEC);
  D.direct = 1;
  if (D.fd < 0 && errno == EINVAL) {
    /* A file system without O_DIRECT (native runs on tmpfs): fall back, with fsync-free I/O. */
    D.fd = open(D.dev, O_RDWR | O_CLOEXEC);
    D.direct = 0;
  }
  if (D.fd < 0) {
    emit("warn", "reason=disk_open dev=%s errno=%d", D.dev, errno);
    D.enabled = 0;
    return;
  }
  off_t end = lseek(D.fd, 0, SEEK_END);
  uint64_t avail = end > 0 ? (uint64_t)end / MIGD_PAGE_SIZE * MIGD_PAGE_SIZE : 0;
  uint64_t size = D.size ? D.size : avail;
  if (size == 0 || size > avail || size / MIGD_PAGE_SIZE > MAX_BLOCKS) {
    emit("warn", "reason=disk_size dev=%s want=%llu have=%llu", D.dev, (unsigned long long)size,
         (unsigned long long)avail);
    close(D.fd);
    D.enabled = 0;
    return;
  }
  D.blocks = size / MIGD_PAGE_SIZE;
  D.ctx.seed = seed;
  D.ctx.worker = MIGD_DISK_WORKER;
  D.ctx.content = MIGD_CONTENT_RANDOM;
  D.gen = calloc(D.blocks, sizeof *D.gen);
  if (!D.gen || posix_memalign((void **)&D.buf, MIGD_PAGE_SIZE, CHUNK_BLOCKS * MIGD_PAGE_SIZE)) {
    emit("warn", "reason=disk_alloc blocks=%llu", (unsigned long long)D.blocks);
    close(D.fd);
    D.enabled = 0;
    return;
  }
  emit("dstart", "dev=%s bytes=%llu blocks=%llu rate=%llu direct=%d verify_ms=%llu", D.dev,
       (unsigned long long)size, (unsigned long long)D.blocks, (unsigned long long)D.rate, D.direct,
       (unsigned long long)D.verify_ms);
  pthread_t t;
  int e = pthread_create(&t, NULL, disk_main, NULL);
  if (e) {
    emit("warn", "reason=pthread_create disk errno=%d", e);
    D.enabled = 0;
  }
}
