/* See integrity.h for the page layout and why the expected generation is the caller's. */
#include "integrity.h"

#define BODY_MARK_MASK 63u /* compressible: words 4, 68, ..., 452 change per generation */

uint64_t migd_mix64(uint64_t z) {
  z += 0x9e3779b97f4a7c15ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

static uint64_t header_word0(const struct migd_ctx *ctx) {
  return ((uint64_t)MIGD_MAGIC << 32) | ((uint64_t)(ctx->content & 0xff) << 24) |
         (uint64_t)(ctx->worker & MIGD_MAX_WORKER);
}

static uint64_t header_check(uint64_t seed, uint64_t w0, uint64_t w1, uint64_t w2) {
  return migd_mix64(seed ^ migd_mix64(w0 ^ migd_mix64(w1 ^ migd_mix64(w2 + 0x5bd1e995ull))));
}

/* Per-(worker, index, generation) stream state; never 0 (xorshift's fixed point). */
static uint64_t stream_seed(const struct migd_ctx *ctx, uint64_t index, uint64_t gen) {
  uint64_t s = migd_mix64(ctx->seed ^ migd_mix64(((uint64_t)ctx->worker << 40) ^ index) ^
                          migd_mix64(gen * 0x2545f4914f6cdd1dull));
  return s ? s : 0x853c49e6748fea9bull;
}

/* Per-(worker, index) constant of compressible pages: stable across generations. */
static uint64_t fill_word(const struct migd_ctx *ctx, uint64_t index) {
  return migd_mix64(ctx->seed ^ 0xc0ffee0000000000ull ^ ((uint64_t)ctx->worker << 40) ^ index);
}

static inline uint64_t xorshift64(uint64_t s) {
  s ^= s << 13;
  s ^= s >> 7;
  s ^= s << 17;
  return s;
}

void migd_page_write(void *page, const struct migd_ctx *ctx, uint64_t index, uint64_t gen) {
  uint64_t *p = (uint64_t *)page;
  uint64_t w0 = header_word0(ctx);
  p[0] = w0;
  p[1] = index;
  p[2] = gen;
  p[3] = header_check(ctx->seed, w0, index, gen);
  uint64_t s = stream_seed(ctx, index, gen);
  if (ctx->content == MIGD_CONTENT_COMPRESSIBLE) {
    /* Segments of 64 words: one generation word, then the page's constant (no per-word branch). */
    uint64_t c = fill_word(ctx, index);
    for (unsigned seg = MIGD_HEADER_WORDS; seg < MIGD_PAGE_WORDS; seg += BODY_MARK_MASK + 1) {
      s = xorshift64(s);
      p[seg] = s;
      unsigned end = seg + BODY_MARK_MASK + 1 < MIGD_PAGE_WORDS ? seg + BODY_MARK_MASK + 1 : MIGD_PAGE_WORDS;
      for (unsigned k = seg + 1; k < end; k++) p[k] = c;
    }
  } else {
    for (unsigned k = MIGD_HEADER_WORDS; k < MIGD_PAGE_WORDS; k++) {
      s = xorshift64(s);
      p[k] = s;
    }
  }
}

/*
 * Index of the first word that differs from what migd_page_write(ctx, index, gen) produces, or
 * -1 when the page matches; `*expected` receives the word that was expected there.
 */
static int first_mismatch(const uint64_t *p, const struct migd_ctx *ctx, uint64_t index,
                          uint64_t gen, uint64_t *expected) {
  uint64_t w0 = header_word0(ctx);
  uint64_t head[MIGD_HEADER_WORDS] = {w0, index, gen, header_check(ctx->seed, w0, index, gen)};
  for (unsigned k = 0; k < MIGD_HEADER_WORDS; k++) {
    if (p[k] != head[k]) {
      *expected = head[k];
      return (int)k;
    }
  }
  uint64_t s = stream_seed(ctx, index, gen);
  if (ctx->content == MIGD_CONTENT_COMPRESSIBLE) {
    uint64_t c = fill_word(ctx, index);
    for (unsigned seg = MIGD_HEADER_WORDS; seg < MIGD_PAGE_WORDS; seg += BODY_MARK_MASK + 1) {
      s = xorshift64(s);
      if (p[seg] != s) {
        *expected = s;
        return (int)seg;
      }
      unsigned end = seg + BODY_MARK_MASK + 1 < MIGD_PAGE_WORDS ? seg + BODY_MARK_MASK + 1 : MIGD_PAGE_WORDS;
      for (unsigned k = seg + 1; k < end; k++) {
        if (p[k] != c) {
          *expected = c;
          return (int)k;
        }
      }
    }
  } else {
    for (unsigned k = MIGD_HEADER_WORDS; k < MIGD_PAGE_WORDS; k++) {
      s = xorshift64(s);
      if (p[k] != s) {
        *expected = s;
        return (int)k;
      }
    }
  }
  return -1;
}

enum migd_status migd_page_verify(const void *page, const struct migd_ctx *ctx, uint64_t index,
                                  uint64_t expected_gen, struct migd_finding *out) {
  const uint64_t *p = (const uint64_t *)page;
  uint64_t want = 0;
  int bad = first_mismatch(p, ctx, index, expected_gen, &want);
  if (bad < 0) return MIGD_OK;

  struct migd_finding f = {0};
  f.status = MIGD_CORRUPT;
  f.word = (uint32_t)bad;
  f.expected_word = want;
  f.found_word = p[bad];
  f.found_gen = p[2]; /* raw header value; only meaningful when the header is intact */

  int all_zero = 1;
  for (unsigned k = 0; k < MIGD_PAGE_WORDS; k++) {
    if (p[k] != 0) {
      all_zero = 0;
      break;
    }
  }
  if (all_zero) {
    f.status = MIGD_ZERO;
  } else if ((p[0] >> 32) == MIGD_MAGIC && p[3] == header_check(ctx->seed, p[0], p[1], p[2]) &&
             (enum migd_content)((p[0] >> 24) & 0xff) == ctx->content) {
    /* A self-consistent header: is the whole page an intact copy of the page it names? */
    struct migd_ctx other = *ctx;
    other.worker = (uint32_t)(p[0] & MIGD_MAX_WORKER);
    uint64_t ignored = 0;
    if (first_mismatch(p, &other, p[1], p[2], &ignored) < 0) {
      f.found_gen = p[2];
      f.found_worker = other.worker;
      f.found_index = p[1];
      if (other.worker != ctx->worker || p[1] != index) {
        f.status = MIGD_MISPLACED;
      } else if (p[2] < expected_gen) {
        f.status = MIGD_STALE;
      } else if (p[2] > expected_gen) {
        f.status = MIGD_FUTURE;
      }
    }
  }
  if (out) *out = f;
  return f.status;
}

const char *migd_status_name(enum migd_status status) {
  switch (status) {
    case MIGD_OK: return "ok";
    case MIGD_ZERO: return "zero";
    case MIGD_STALE: return "stale";
    case MIGD_FUTURE: return "future";
    case MIGD_MISPLACED: return "misplaced";
    case MIGD_CORRUPT: return "corrupt";
  }
  return "unknown";
}
