/*
 * Page-level memory-integrity proof for the migd guest workload.
 *
 * Pure code (no I/O, no allocation, no libc beyond <stdint.h>/<stddef.h>) so the same file is
 * built into the static guest /init and, natively, into the host unit test
 * (test/unit/guest/integrity.test.ts) that corrupts, drops and rolls back pages on purpose.
 *
 * Design
 * ------
 * Every 4 KiB page the workload writes is a pure function of
 *     (run seed, content kind, worker, page index, generation)
 * so the verifier never needs a stored copy or a per-page checksum table: it regenerates what the
 * page must hold and compares word by word (an early-exit loop, about the cost of a hash).
 *
 *   word 0  MIGD_MAGIC << 32 | content << 24 | worker      (worker < 2^24)
 *   word 1  page index
 *   word 2  generation
 *   word 3  header check = mix(seed, words 0..2)
 *   4..511  body: `random`: xorshift64 stream seeded from mix(seed, worker, index, generation),
 *                 i.e. fresh incompressible bytes for every generation;
 *           `compressible`: one constant word per page (derived from seed, worker, index) with
 *                 8 words (every 64th) drawn from the generation's stream: zstd shrinks the page
 *                 to a few dozen bytes and an XBZRLE delta against the previous generation is
 *                 ~100 bytes.
 *
 * The expected generation comes from the caller, never from the page: the workload derives it
 * from its pass counter (all pages written in one pass carry that pass's generation), so a page
 * that is missing a write (lost dirty bit), that was rolled back, or that came from another page
 * cannot pass. When the fast comparison fails the slow path classifies the finding:
 *
 *   ZERO       the page reads as all zeros (a page the migration never delivered);
 *   STALE      a self-consistent page of this worker/index but an older generation
 *              (lost update or partial rollback) — `found_gen` says which;
 *   FUTURE     self-consistent but newer than expected (the bookkeeping rolled back, not the data);
 *   MISPLACED  a self-consistent page of another worker or index (pages swapped / misaddressed);
 *   CORRUPT    anything else; `word`, `expected_word`, `found_word` name the first bad word.
 */
#ifndef MIGD_INTEGRITY_H
#define MIGD_INTEGRITY_H

#include <stddef.h>
#include <stdint.h>

#define MIGD_PAGE_SIZE 4096u
#define MIGD_PAGE_WORDS (MIGD_PAGE_SIZE / 8u)
#define MIGD_HEADER_WORDS 4u
#define MIGD_MAGIC 0x4d494744u /* "MIGD" */
#define MIGD_MAX_WORKER 0xffffffu

enum migd_content {
  MIGD_CONTENT_RANDOM = 1,
  MIGD_CONTENT_COMPRESSIBLE = 2,
};

enum migd_status {
  MIGD_OK = 0,
  MIGD_ZERO = 1,
  MIGD_STALE = 2,
  MIGD_FUTURE = 3,
  MIGD_MISPLACED = 4,
  MIGD_CORRUPT = 5,
};

/** What identifies one worker's pages; shared by writer and verifier. */
struct migd_ctx {
  uint64_t seed;
  uint32_t worker;
  enum migd_content content;
};

/** Details of a failed verification (valid when the status is not MIGD_OK). */
struct migd_finding {
  enum migd_status status;
  uint64_t found_gen;     /* STALE/FUTURE/MISPLACED: the generation the page carries */
  uint32_t found_worker;  /* MISPLACED: whose page it is */
  uint64_t found_index;   /* MISPLACED: which page it is */
  uint32_t word;          /* CORRUPT: first differing 8-byte word (0..511) */
  uint64_t expected_word; /* CORRUPT: what that word should hold */
  uint64_t found_word;    /* CORRUPT: what it holds */
};

/** Writes page `index` of generation `gen` (gen >= 1) into `page` (8-byte aligned, 4 KiB). */
void migd_page_write(void *page, const struct migd_ctx *ctx, uint64_t index, uint64_t gen);

/**
 * Checks that `page` holds exactly what migd_page_write(ctx, index, expected_gen) wrote.
 * Returns MIGD_OK or the classification; fills `out` (may be NULL) on failure.
 */
enum migd_status migd_page_verify(const void *page, const struct migd_ctx *ctx, uint64_t index,
                                  uint64_t expected_gen, struct migd_finding *out);

/** Lower-case name of a status ("ok", "zero", "stale", "future", "misplaced", "corrupt"). */
const char *migd_status_name(enum migd_status status);

/** splitmix64 finaliser; exported for the workload's own seeding. */
uint64_t migd_mix64(uint64_t z);

#endif
