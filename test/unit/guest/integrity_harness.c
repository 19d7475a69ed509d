/*
 * Native harness for stress/guest/integrity.c, driven by integrity.test.ts: every case injects a
 * known fault into pages written by the workload's own code and counts what the verifier sees.
 * Output: one JSON object per case:
 *   {"case":"...","injected":N,"detected":N,"false_positives":N,"wrong":N,"reasons":{...}}
 * where `wrong` counts detections with an unexpected classification or detail.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "integrity.h"

#define NPAGES 256u

struct result {
  const char *name;
  unsigned injected, detected, false_positives, wrong;
  unsigned reasons[6];
};

static uint64_t *region(unsigned npages) {
  void *p = NULL;
  if (posix_memalign(&p, MIGD_PAGE_SIZE, (size_t)npages * MIGD_PAGE_SIZE) != 0) abort();
  return p;
}

static uint64_t *page(uint64_t *mem, unsigned i) { return mem + (size_t)i * MIGD_PAGE_WORDS; }

static void print(const struct result *r) {
  printf("{\"case\":\"%s\",\"injected\":%u,\"detected\":%u,\"false_positives\":%u,\"wrong\":%u,\"reasons\":{",
         r->name, r->injected, r->detected, r->false_positives, r->wrong);
  int first = 1;
  for (int s = 1; s < 6; s++) {
    if (!r->reasons[s]) continue;
    printf("%s\"%s\":%u", first ? "" : ",", migd_status_name((enum migd_status)s), r->reasons[s]);
    first = 0;
  }
  printf("}}\n");
}

/* Verifies page i against expected_gen; `bad` says whether a fault was injected there. */
static void check(struct result *r, uint64_t *mem, const struct migd_ctx *c, unsigned i,
                  uint64_t expected_gen, int bad, enum migd_status want, uint64_t want_found) {
  struct migd_finding f;
  enum migd_status st = migd_page_verify(page(mem, i), c, i, expected_gen, &f);
  if (st != MIGD_OK) r->reasons[st]++;
  if (!bad) {
    if (st != MIGD_OK) r->false_positives++;
    return;
  }
  if (st == MIGD_OK) return;
  r->detected++;
  if (st != want) r->wrong++;
  else if ((st == MIGD_STALE || st == MIGD_FUTURE) && f.found_gen != want_found) r->wrong++;
}

/* Six full passes, each verifying the previous generation: zero findings expected. */
static void case_clean(enum migd_content content, const char *name) {
  struct result r = {name, 0, 0, 0, 0, {0}};
  struct migd_ctx c = {0x1234567887654321ull, 3, content};
  uint64_t *mem = region(NPAGES);
  for (uint64_t g = 1; g <= 6; g++) {
    for (unsigned i = 0; i < NPAGES; i++) {
      if (g > 1) check(&r, mem, &c, i, g - 1, 0, MIGD_OK, 0);
      migd_page_write(page(mem, i), &c, i, g);
    }
  }
  print(&r);
  free(mem);
}

/* Every single-bit flip anywhere in a page is caught, and the reported word is the flipped one. */
static void case_every_bit(enum migd_content content, const char *name) {
  struct result r = {name, 0, 0, 0, 0, {0}};
  struct migd_ctx c = {42, 1, content};
  uint64_t *mem = region(1);
  migd_page_write(mem, &c, 0, 7);
  for (unsigned bit = 0; bit < MIGD_PAGE_SIZE * 8; bit++) {
    mem[bit / 64] ^= 1ull << (bit % 64);
    struct migd_finding f;
    enum migd_status st = migd_page_verify(mem, &c, 0, 7, &f);
    r.injected++;
    if (st != MIGD_OK) {
      r.detected++;
      r.reasons[st]++;
      if (st != MIGD_CORRUPT || f.word != bit / 64 || (f.expected_word ^ f.found_word) != 1ull << (bit % 64)) r.wrong++;
    }
    mem[bit / 64] ^= 1ull << (bit % 64);
  }
  if (migd_page_verify(mem, &c, 0, 7, NULL) != MIGD_OK) r.false_positives++;
  print(&r);
  free(mem);
}

/* A pass that misses some writes (lost dirty pages): the next pass finds the previous generation. */
static void case_lost_writes(void) {
  struct result r = {"lost-writes", 0, 0, 0, 0, {0}};
  struct migd_ctx c = {99, 0, MIGD_CONTENT_RANDOM};
  uint64_t *mem = region(NPAGES);
  for (uint64_t g = 1; g <= 5; g++) {
    for (unsigned i = 0; i < NPAGES; i++) {
      int lost_before = g == 4 && i % 25 == 3; /* pass 3 skipped these */
      if (g > 1) check(&r, mem, &c, i, g - 1, lost_before, MIGD_STALE, 2);
      if (g == 3 && i % 25 == 3) {
        r.injected++;
        continue; /* the write that "got lost" */
      }
      migd_page_write(page(mem, i), &c, i, g);
    }
  }
  print(&r);
  free(mem);
}

/* Pages rolled back to an older snapshot while the pass counter was not. */
static void case_partial_rollback(void) {
  struct result r = {"partial-rollback", 0, 0, 0, 0, {0}};
  struct migd_ctx c = {7, 2, MIGD_CONTENT_COMPRESSIBLE};
  uint64_t *mem = region(NPAGES), *snap = region(NPAGES);
  for (uint64_t g = 1; g <= 5; g++) {
    for (unsigned i = 0; i < NPAGES; i++) migd_page_write(page(mem, i), &c, i, g);
    if (g == 2) memcpy(snap, mem, (size_t)NPAGES * MIGD_PAGE_SIZE);
  }
  for (unsigned i = 5; i < NPAGES; i += 17) {
    memcpy(page(mem, i), page(snap, i), MIGD_PAGE_SIZE);
    r.injected++;
  }
  for (unsigned i = 0; i < NPAGES; i++) check(&r, mem, &c, i, 5, i >= 5 && (i - 5) % 17 == 0, MIGD_STALE, 2);
  print(&r);
  free(mem);
  free(snap);
}

/* Data and counter rolled back together: invisible from inside by design (the host sees n regress). */
static void case_consistent_rollback(void) {
  struct result r = {"consistent-rollback", 0, 0, 0, 0, {0}};
  struct migd_ctx c = {7, 2, MIGD_CONTENT_RANDOM};
  uint64_t *mem = region(NPAGES), *snap = region(NPAGES);
  uint64_t gen = 0, snap_gen = 0;
  for (uint64_t g = 1; g <= 5; g++) {
    for (unsigned i = 0; i < NPAGES; i++) migd_page_write(page(mem, i), &c, i, g);
    gen = g;
    if (g == 2) {
      memcpy(snap, mem, (size_t)NPAGES * MIGD_PAGE_SIZE);
      snap_gen = gen;
    }
  }
  memcpy(mem, snap, (size_t)NPAGES * MIGD_PAGE_SIZE);
  gen = snap_gen;
  for (unsigned i = 0; i < NPAGES; i++) check(&r, mem, &c, i, gen, 0, MIGD_OK, 0);
  print(&r);
  free(mem);
  free(snap);
}

/* The counter rolled back but not the data: pages are newer than expected. */
static void case_future(void) {
  struct result r = {"counter-rollback", 0, 0, 0, 0, {0}};
  struct migd_ctx c = {5, 0, MIGD_CONTENT_RANDOM};
  uint64_t *mem = region(16);
  for (unsigned i = 0; i < 16; i++) migd_page_write(page(mem, i), &c, i, 5);
  for (unsigned i = 0; i < 16; i++) {
    r.injected++;
    check(&r, mem, &c, i, 3, 1, MIGD_FUTURE, 5);
  }
  print(&r);
  free(mem);
}

/* Zeroed pages (never delivered), swapped pages, other workers' pages, torn pages. */
static void case_misc(void) {
  struct result zero = {"zero-page", 0, 0, 0, 0, {0}};
  struct result mis = {"misplaced", 0, 0, 0, 0, {0}};
  struct result torn = {"torn-page", 0, 0, 0, 0, {0}};
  struct migd_ctx c0 = {11, 0, MIGD_CONTENT_RANDOM}, c1 = {11, 1, MIGD_CONTENT_RANDOM};
  uint64_t *a = region(32), *b = region(32), *old = region(1);
  for (unsigned i = 0; i < 32; i++) {
    migd_page_write(page(a, i), &c0, i, 4);
    migd_page_write(page(b, i), &c1, i, 4);
  }
  memset(page(a, 1), 0, MIGD_PAGE_SIZE);
  zero.injected++;
  check(&zero, a, &c0, 1, 4, 1, MIGD_ZERO, 0);
  for (unsigned i = 2; i < 32; i++) check(&zero, a, &c0, i, 4, 0, MIGD_OK, 0);

  memcpy(page(a, 9), page(a, 7), MIGD_PAGE_SIZE); /* page 7's data at page 9 */
  memcpy(page(a, 10), page(b, 10), MIGD_PAGE_SIZE); /* worker 1's page at worker 0's */
  mis.injected += 2;
  struct migd_finding f;
  enum migd_status st = migd_page_verify(page(a, 9), &c0, 9, 4, &f);
  if (st != MIGD_OK) { mis.detected++; mis.reasons[st]++; if (st != MIGD_MISPLACED || f.found_index != 7 || f.found_worker != 0) mis.wrong++; }
  st = migd_page_verify(page(a, 10), &c0, 10, 4, &f);
  if (st != MIGD_OK) { mis.detected++; mis.reasons[st]++; if (st != MIGD_MISPLACED || f.found_index != 10 || f.found_worker != 1) mis.wrong++; }

  /* torn: new header + old body, and old header + new body */
  migd_page_write(old, &c0, 12, 3);
  memcpy(page(a, 12) + MIGD_PAGE_WORDS / 2, old + MIGD_PAGE_WORDS / 2, MIGD_PAGE_SIZE / 2);
  memcpy(page(a, 13), old, MIGD_PAGE_SIZE / 2); /* page 13 gets page 12's old header: also torn */
  torn.injected += 2;
  check(&torn, a, &c0, 12, 4, 1, MIGD_CORRUPT, 0);
  check(&torn, a, &c0, 13, 4, 1, MIGD_CORRUPT, 0);
  print(&zero);
  print(&mis);
  print(&torn);
  free(a);
  free(b);
  free(old);
}

/* Content properties: random pages are all-distinct words; compressible ones barely change. */
static void case_content(void) {
  struct result r = {"content", 0, 0, 0, 0, {0}};
  struct migd_ctx rnd = {3, 0, MIGD_CONTENT_RANDOM}, cmp = {3, 0, MIGD_CONTENT_COMPRESSIBLE};
  uint64_t *p = region(2);
  unsigned distinct_random = 0, changed_random = 0, distinct_cmp = 0, changed_cmp = 0;
  migd_page_write(p, &rnd, 0, 1);
  migd_page_write(p + MIGD_PAGE_WORDS, &rnd, 0, 2);
  for (unsigned k = 0; k < MIGD_PAGE_WORDS; k++) {
    int seen = 0;
    for (unsigned j = 0; j < k && !seen; j++) seen = p[j] == p[k];
    distinct_random += !seen;
    changed_random += p[k] != p[MIGD_PAGE_WORDS + k];
  }
  migd_page_write(p, &cmp, 0, 1);
  migd_page_write(p + MIGD_PAGE_WORDS, &cmp, 0, 2);
  for (unsigned k = 0; k < MIGD_PAGE_WORDS; k++) {
    int seen = 0;
    for (unsigned j = 0; j < k && !seen; j++) seen = p[j] == p[k];
    distinct_cmp += !seen;
    changed_cmp += p[k] != p[MIGD_PAGE_WORDS + k];
  }
  printf("{\"case\":\"content\",\"distinct_random\":%u,\"changed_random\":%u,\"distinct_compressible\":%u,\"changed_compressible\":%u}\n",
         distinct_random, changed_random, distinct_cmp, changed_cmp);
  (void)r;
  free(p);
}

int main(void) {
  case_clean(MIGD_CONTENT_RANDOM, "clean-random");
  case_clean(MIGD_CONTENT_COMPRESSIBLE, "clean-compressible");
  case_every_bit(MIGD_CONTENT_RANDOM, "every-bit-random");
  case_every_bit(MIGD_CONTENT_COMPRESSIBLE, "every-bit-compressible");
  case_lost_writes();
  case_partial_rollback();
  case_consistent_rollback();
  case_future();
  case_misc();
  case_content();
  return 0;
}
