/* Paged attention on the CPU, fp32: decodes, speculative verifies and prefill chunks.
 *
 * The PyTorch path gathers each request's cached K/V into a padded copy, then runs SDPA
 * over the copy: the context crosses memory three times (read, write, read again). Here
 * each (request, KV head) reads its keys and values once, in place, through the block
 * table. Semantics are those of kernels/attention.py (its module docstring): query token
 * i of request r sits at position seq_lens[r] - q_len + i and sees keys 0 ..= that.
 *
 * Layouts: query and out [tokens, heads, head_size], contiguous; caches [blocks, block_size,
 * kv_heads, head_size] at any strides with head_size's 1 (in floats: block_stride,
 * position_stride, head_stride; the engine lays the CPU's caches out head-major, each KV
 * head's rows of a block contiguous, model_runner.py says why); block_table [reqs,
 * table_stride] int32; query_start_loc [reqs + 1] and seq_lens [reqs] int32; num_rows:
 * reqs, every one attended.
 *
 * Work items are rows (or, when rows are fewer than twice the threads, (row, KV head)
 * pairs), taken from a shared counter by num_threads threads, so a long context does not
 * hold up a thread that was handed many short ones. A row of more than PIECE_TOKENS query
 * tokens (a prefill chunk) is cut into items of that many tokens, each attending only up to
 * its own last token: the threads share one long prompt, and a causal prefill computes the
 * visible half of its scores (512 tokens, 9 query and 3 KV heads, 2 threads, AMD EPYC:
 * 1.8 ms a layer against 3.2 ms in PyTorch's flash-attention SDPA). The threads are
 * OpenMP's: the library links libgomp.so.1, which resolves to the copy torch has already loaded, so the kernel
 * runs on torch's own thread team (just back from the step's last matmul) rather than
 * beside it on the same cores.
 *
 * Where the head size is a whole number of vector registers (64 and 128 on AVX-512 or
 * AVX2), a KV head's query vectors are held in registers, a few at a time (attend_chunk),
 * while its keys and then its values stream past once; the blocks ahead are prefetched
 * (blocks lie anywhere in the cache); the softmax's exponentials are vector arithmetic
 * (cpu_exp.h) rather than a libm call each, and so is its maximum (largest). At 32 decodes
 * over 330 tokens (SmolLM2's 9 query and 3 KV heads, 2 threads) that took a layer from 3.3
 * to 1.2 ms, the cache read at 13 GB/s. Many query vectors per KV head (prefill pieces) are
 * scored a tile of keys at a time (scores_tiled): with the vector maximum, 8 prompts of 500
 * tokens took 30 layers from ~940 to ~540 ms (Intel Xeon, AVX-512, 2 threads). Other head
 * sizes sweep() the blocks with plain loops.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "cpu_exp.h"

/* How far ahead, in key positions, a sweep over a row's context asks for the cache: each
 * position asks for the one PREFETCH_POSITIONS further on (one head's row, 4 lines for
 * SmolLM2), and past the sweep's end for the next sweep's first rows, so requests go out at
 * the rate the sweep reads. Asking for whole blocks four blocks ahead at each block's start
 * instead (64 lines at once) was slower on a Zen 5 VM: 33 decodes over 334 tokens, 30
 * layers, random block tables over 2 GB of position-major cache, 2 threads (a harness,
 * medians of 20-30 alternating rounds): 27.5-31.4 ms against 20.9-25.9 (64 decodes: 56.0
 * against 41.5-44.1); distances of 16, 32 and 64 positions, into L1 or L2, within 5 % of
 * each other. A CPU keeps only so many misses in flight, and a burst past that waits in the
 * pipeline while the multiplies behind it stall. In the 64-prompt workload
 * (benchmarks/cpu_roofline.py) the decode steps went from 15.2-16.0 to 12.1-12.7 s. */
#define PREFETCH_POSITIONS 32

typedef struct {
    const float *query, *k_cache, *v_cache;
    const int32_t *block_table, *query_start_loc, *seq_lens;
    float *out;
    int64_t table_stride, num_rows, num_heads, num_kv_heads, head_size, block_size;
    int64_t block_stride, position_stride, head_stride; /* the caches' */
    int64_t heads_split; /* head ranges per row: all KV heads at once, or one each */
    float scale;
    const int64_t *first_item; /* [num_rows + 1]: the work items of row i are
                                  [first_item[i], first_item[i + 1]) */
    int64_t next_item;         /* shared counter */
    int failed;                /* an allocation failed */
} Job;

static inline float dot(const float *restrict a, const float *restrict b, const int64_t n) {
    float s = 0.0f;
    for (int64_t d = 0; d < n; d++) s += a[d] * b[d];
    return s;
}

/* One row's work: its KV heads [h0, h1) and where its queries, context and scores are. */
typedef struct {
    int64_t q_start, q_len, seq, h0, h1;
    const int32_t *table; /* the row's block table */
    float *scores;        /* [h - h0][t * group + g][p] */
    float *queries;       /* scores_tiled's copy of one KV head's query vectors */
} Row;

enum Sweep { SCORES, VALUES };

/* Every (query, visible key position) pair of the row, a block of positions at a time, so
 * each block of the cache is read from memory once, in order, then from the CPU's cache for
 * every query that sees it. Key position p is visible to query token t iff
 * p < seq - q_len + t + 1. SCORES writes q . k * scale; VALUES adds weight * v to out.
 * sweep and hs are constants where attend_rows passes them, so each use compiles to its own
 * loop with the vector loops unrolled. */
static inline __attribute__((always_inline)) void sweep(
    const Job *j, const Row *x, const enum Sweep what, const int64_t hs) {
    const int64_t group = j->num_heads / j->num_kv_heads;
    const int64_t bs = j->block_size, step = j->position_stride;
    const int64_t num_q = x->q_len * group;      /* query vectors per KV head */
    const float *cache = what == SCORES ? j->k_cache : j->v_cache;
    for (int64_t b0 = 0; b0 < x->seq; b0 += bs) {
        const float *block = cache + (int64_t)x->table[b0 / bs] * j->block_stride;
        for (int64_t h = x->h0; h < x->h1; h++) {
            for (int64_t t = 0; t < x->q_len; t++) {
                const int64_t visible = x->seq - x->q_len + t + 1;
                const int64_t end = visible < b0 + bs ? visible : b0 + bs;
                for (int64_t g = 0; g < group; g++) {
                    const int64_t vec = ((x->q_start + t) * j->num_heads + h * group + g) * hs;
                    float *restrict w = x->scores + ((h - x->h0) * num_q + t * group + g) * x->seq;
                    if (what == SCORES) {
                        const float *restrict q = j->query + vec;
                        for (int64_t p = b0; p < end; p++)
                            w[p] = dot(q, block + (p - b0) * step + h * j->head_stride, hs) *
                                   j->scale;
                    } else {
                        float *restrict o = j->out + vec;
                        for (int64_t p = b0; p < end; p++) {
                            const float *restrict v = block + (p - b0) * step + h * j->head_stride;
                            for (int64_t d = 0; d < hs; d++) o[d] += w[p] * v[d];
                        }
                    }
                }
            }
        }
    }
}

#if defined(__AVX512F__)
#define VL 16 /* floats per vector register */
#define REGS 32
#else
#define VL 8
#define REGS 16
#endif
#define MAX_CHUNK 8 /* query vectors held at once */
typedef float vec __attribute__((vector_size(VL * 4), aligned(4)));

/* The sum of v's lanes, halving the vector each time rather than a chain of VL adds. */
static inline float lanes_sum(vec v) {
#if VL == 16
    typedef float half __attribute__((vector_size(32)));
    half h = __builtin_shufflevector(v, v, 0, 1, 2, 3, 4, 5, 6, 7) +
             __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15);
#else
    typedef float half __attribute__((vector_size(32)));
    half h = v;
#endif
    typedef float quarter __attribute__((vector_size(16)));
    quarter q = __builtin_shufflevector(h, h, 0, 1, 2, 3) + __builtin_shufflevector(h, h, 4, 5, 6, 7);
    q += __builtin_shufflevector(q, q, 2, 3, 0, 1);
    return q[0] + q[1];
}

/* The largest of w[0, n), n >= 1. Written with vectors: the compiler keeps a plain
 * `a > b ? a : b` loop scalar (without -ffast-math it must keep NaN's order), one compare
 * after another, which was most of the softmax's time in prefill chunks. */
static inline float largest(const float *restrict w, const int64_t n) {
    typedef int32_t ivec __attribute__((vector_size(VL * 4)));
    vec top;
    for (int l = 0; l < VL; l++) top[l] = w[0];
    int64_t p = 0;
    for (; p + VL <= n; p += VL) {
        const vec v = *(const vec *)(w + p); /* vec loads from any float's address */
        const ivec more = v > top;
        top = (vec)((more & (ivec)v) | (~more & (ivec)top));
    }
    float best = top[0];
    for (int l = 1; l < VL; l++) best = top[l] > best ? top[l] : best;
    for (; p < n; p++) best = w[p] > best ? w[p] : best;
    return best;
}

/* Scores [0, visible) of one query vector -> softmax weights; [visible, seq) -> 0, so the
 * value sweep may run every query over the whole context. */
static void softmax(float *restrict w, const int64_t visible, const int64_t seq) {
    const float top = largest(w, visible);
    float total = 0.0f;
    for (int64_t p = 0; p < visible; p++) {
        w[p] = exp_nonpositive(w[p] - top);
        total += w[p];
    }
    const float inv = 1.0f / total;
    for (int64_t p = 0; p < visible; p++) w[p] *= inv;
    for (int64_t p = visible; p < seq; p++) w[p] = 0.0f;
}

/* Where KV head h's row of key position p lies in cache. */
static inline const float *head_row(const Job *j, const float *cache, const Row *x,
                                    const int64_t p, const int64_t h) {
    const int64_t bs = j->block_size;
    return cache + (int64_t)x->table[p / bs] * j->block_stride + p % bs * j->position_stride +
           h * j->head_stride;
}

/* Ask for one head's row of a position into L2 (prefetcht2, locality 1), where a core keeps
 * more misses in flight than its L1 does. On a Zen 4 VM (33 decodes over ~330 tokens, 30
 * layers, random block tables over 2 GB of head-major cache, 2 threads, a harness) that
 * read the cache at 20-23 GB/s where prefetchnta or prefetcht0, into L1, read it at ~15
 * (33.5 -> 23.4 ms; 64 decodes 67.8 -> 42.9 ms; bit-identical); on a Zen 5 VM the three
 * were within 5 % of each other. */
static inline void prefetch_row(const float *row, const int64_t hs) {
    for (int64_t d = 0; d < hs; d += 16) __builtin_prefetch(row + d, 0, 1);
}

/* A sweep over the row's context in KV head h's rows of cache reaches position p: ask for
 * the row PREFETCH_POSITIONS further on; past the context's end, the next sweep's rows
 * (next, in next_h's rows; NULL if none follows), so the next sweep's first rows are on
 * their way before it starts. The row's first sweep asks at p = 0 for its rows up to there
 * too. Blocks lie anywhere in the cache, so the CPU's own prefetcher does not see the next
 * one coming. */
static inline __attribute__((always_inline)) void prefetch_ahead(
    const Job *j, const float *cache, const int64_t h, const float *next, const int64_t next_h,
    const int first_sweep, const Row *x, const int64_t p, const int64_t hs) {
    if (first_sweep && p == 0)
        for (int64_t a = 1; a < PREFETCH_POSITIONS && a < x->seq; a++)
            prefetch_row(head_row(j, cache, x, a, h), hs);
    const int64_t a = p + PREFETCH_POSITIONS;
    if (a < x->seq)
        prefetch_row(head_row(j, cache, x, a, h), hs);
    else if (next != NULL && a - x->seq < x->seq)
        prefetch_row(head_row(j, next, x, a - x->seq, next_h), hs);
}

/* Query vectors [i0, i0 + n) of KV head h (vector i: token i / group, head
 * h * group + i % group), of nv vectors each: held in registers while every key, then every
 * value, of the row's context streams past once; the softmax runs between the two sweeps.
 * n and nv are constants where attend_chunk is called (always inlined), so the loops unroll
 * and the arrays are registers. */
static inline __attribute__((always_inline)) void attend_chunk(
    const Job *j, const Row *x, const int64_t h, const int64_t i0, const int n, const int nv,
    const int with_scores) {
    const int64_t hs = nv * VL, group = j->num_heads / j->num_kv_heads;
    const int64_t bs = j->block_size, step = j->position_stride;
    const int64_t num_q = x->q_len * group; /* query vectors of this KV head */
    const int first = i0 == 0; /* later chunks find the head's context in L2 */
    float *w[MAX_CHUNK];
    vec qv[MAX_CHUNK][8];
    for (int c = 0; c < n; c++) {
        const int64_t i = i0 + c, t = i / group, g = i % group;
        const float *q = j->query + ((x->q_start + t) * j->num_heads + h * group + g) * hs;
        if (with_scores)
            for (int v = 0; v < nv; v++) qv[c][v] = *(const vec *)(q + v * VL) * j->scale;
        w[c] = x->scores + ((h - x->h0) * num_q + i) * x->seq;
    }
    for (int64_t b0 = 0; with_scores && b0 < x->seq; b0 += bs) {
        const float *block = head_row(j, j->k_cache, x, b0, h);
        const int64_t end = x->seq < b0 + bs ? x->seq : b0 + bs;
        for (int64_t p = b0; p < end; p++) {
            if (first)
                prefetch_ahead(j, j->k_cache, h, j->v_cache, h, h == x->h0, x, p, hs);
            const float *k = block + (p - b0) * step;
            vec kv[8];
            for (int v = 0; v < nv; v++) kv[v] = *(const vec *)(k + v * VL);
            for (int c = 0; c < n; c++) {
                vec acc = qv[c][0] * kv[0];
                for (int v = 1; v < nv; v++) acc += qv[c][v] * kv[v];
                w[c][p] = lanes_sum(acc);
            }
        }
    }
    for (int c = 0; with_scores && c < n; c++) {
        const int64_t t = (i0 + c) / group;
        softmax(w[c], x->seq - x->q_len + t + 1, x->seq);
    }
    vec out[MAX_CHUNK][8];
    for (int c = 0; c < n; c++)
        for (int v = 0; v < nv; v++) out[c][v] = (vec){0};
    for (int64_t b0 = 0; b0 < x->seq; b0 += bs) {
        const float *block = head_row(j, j->v_cache, x, b0, h);
        const int64_t end = x->seq < b0 + bs ? x->seq : b0 + bs;
        for (int64_t p = b0; p < end; p++) {
            if (first)
                prefetch_ahead(j, j->v_cache, h, h + 1 < x->h1 ? j->k_cache : NULL, h + 1,
                               !with_scores, x, p, hs);
            const float *val = block + (p - b0) * step;
            vec vv[8];
            for (int v = 0; v < nv; v++) vv[v] = *(const vec *)(val + v * VL);
            for (int c = 0; c < n; c++) {
                const float weight = w[c][p];
                for (int v = 0; v < nv; v++) out[c][v] += vv[v] * weight;
            }
        }
    }
    for (int c = 0; c < n; c++) {
        const int64_t i = i0 + c, t = i / group, g = i % group;
        float *o = j->out + ((x->q_start + t) * j->num_heads + h * group + g) * hs;
        for (int v = 0; v < nv; v++) *(vec *)(o + v * VL) = out[c][v];
    }
}

/* Query vectors scored together against a tile of keys: most of the register file holds
 * their sums, one register the tile's keys at one dimension. */
#define TILE_QUERIES (REGS * 3 / 4)
/* From this many query vectors per KV head, scores_tiled pays for its transposes: a
 * prefill piece of SmolLM2 (16 tokens x 3 query heads per KV head: 48) ran 1.3x faster
 * tiled, while a 2- or 5-token speculative verify (6 or 15) ran slower (Intel Xeon with
 * AVX-512, 2 threads). */
#ifndef TILED_MIN_QUERIES
#define TILED_MIN_QUERIES 24
#endif

/* Scores of every query vector of KV head h (as attend_chunk's), VL key positions at a time.
 * The tile's keys are transposed into kt[d][position] once; then each dimension d costs one
 * load of kt[d] and one multiply-add per query vector with q[d] broadcast, and a tile's
 * scores come out as whole vectors. attend_chunk instead ends every (query, key) dot product
 * with a sum across a vector's lanes, several shuffles each, which dominates once a key is
 * shared by many queries. The transposes read each key once per tile, element by element. */
static inline __attribute__((always_inline)) void scores_tiled(const Job *j, const Row *x,
                                                               const int64_t h, const int nv) {
    const int64_t hs = nv * VL, group = j->num_heads / j->num_kv_heads;
    const int64_t num_q = x->q_len * group;
    float kt[8 * VL * VL] __attribute__((aligned(64))); /* [d][position], d < hs */
    /* The head's query vectors side by side (then copies of the last, to a whole number of
     * TILE_QUERIES), so one pointer reaches them all. */
    float *qs = x->queries;
    const int64_t padded = (num_q + TILE_QUERIES - 1) / TILE_QUERIES * TILE_QUERIES;
    for (int64_t i = 0; i < padded; i++) {
        const int64_t k = i < num_q ? i : num_q - 1, t = k / group, g = k % group;
        memcpy(qs + i * hs, j->query + ((x->q_start + t) * j->num_heads + h * group + g) * hs,
               (size_t)hs * sizeof(float));
    }
    for (int64_t p0 = 0; p0 < x->seq; p0 += VL) {
        const int64_t np = x->seq - p0 < VL ? x->seq - p0 : VL;
        for (int64_t pp = 0; pp < VL; pp++) {
            const int64_t p = p0 + (pp < np ? pp : np - 1); /* a short tile repeats its last */
            const float *k = head_row(j, j->k_cache, x, p, h);
            for (int64_t d = 0; d < hs; d++) kt[d * VL + pp] = k[d];
        }
        for (int64_t c0 = 0; c0 < num_q; c0 += TILE_QUERIES) {
            const float *q = qs + c0 * hs;
            vec acc[TILE_QUERIES];
#pragma GCC unroll 32
            for (int c = 0; c < TILE_QUERIES; c++) acc[c] = (vec){0};
            for (int64_t d = 0; d < hs; d++) {
                const vec k = *(const vec *)(kt + d * VL);
#pragma GCC unroll 32
                for (int c = 0; c < TILE_QUERIES; c++) acc[c] += k * q[c * hs + d];
            }
            const int64_t n = num_q - c0 < TILE_QUERIES ? num_q - c0 : TILE_QUERIES;
            for (int64_t c = 0; c < n; c++) {
                float *w = x->scores + ((h - x->h0) * num_q + c0 + c) * x->seq + p0;
                const vec scaled = acc[c] * j->scale;
                if (np == VL)
                    memcpy(w, &scaled, sizeof scaled);
                else
                    for (int64_t pp = 0; pp < np; pp++) w[pp] = scaled[pp];
            }
        }
    }
}

/* Every query vector of KV head h, for a head size of nv vectors, in chunks of about half
 * the register file (the rest for the keys or values in flight). Many query vectors are
 * scored by scores_tiled first, and the chunks then only weigh the values. */
static inline __attribute__((always_inline)) void attend_head_vec(
    const Job *j, const Row *x, const int64_t h, const int nv) {
    const int chunk = (REGS / 2) / nv < 1 ? 1 : (REGS / 2) / nv < MAX_CHUNK ? (REGS / 2) / nv : MAX_CHUNK;
    const int64_t group = j->num_heads / j->num_kv_heads, num_q = x->q_len * group;
    const int tiled = num_q >= TILED_MIN_QUERIES;
    if (tiled) {
        scores_tiled(j, x, h, nv);
        for (int64_t i = 0; i < num_q; i++)
            softmax(x->scores + ((h - x->h0) * num_q + i) * x->seq,
                    x->seq - x->q_len + i / group + 1, x->seq);
    }
    for (int64_t i0 = 0; i0 < num_q; i0 += chunk) {
        switch (num_q - i0 < chunk ? (int)(num_q - i0) : chunk) {
            case 1: attend_chunk(j, x, h, i0, 1, nv, !tiled); break;
            case 2: if (chunk >= 2) attend_chunk(j, x, h, i0, 2, nv, !tiled); break;
            case 3: if (chunk >= 3) attend_chunk(j, x, h, i0, 3, nv, !tiled); break;
            case 4: if (chunk >= 4) attend_chunk(j, x, h, i0, 4, nv, !tiled); break;
            case 5: if (chunk >= 5) attend_chunk(j, x, h, i0, 5, nv, !tiled); break;
            case 6: if (chunk >= 6) attend_chunk(j, x, h, i0, 6, nv, !tiled); break;
            case 7: if (chunk >= 7) attend_chunk(j, x, h, i0, 7, nv, !tiled); break;
            default: if (chunk >= 8) attend_chunk(j, x, h, i0, 8, nv, !tiled); break;
        }
    }
}

/* One row's KV heads [h0, h1): scores, softmax over each query's visible keys, weighted
 * values. Head sizes of whole vectors take attend_head_vec; others sweep() twice. */
static inline __attribute__((always_inline)) int attend_rows(
    const Job *j, int64_t row, int64_t h0, int64_t h1, int64_t t0, int64_t t1, float **scores,
    int64_t *capacity, const int64_t hs) {
    const int64_t r = row;
    const int64_t group = j->num_heads / j->num_kv_heads;
    const int64_t q_len = j->query_start_loc[r + 1] - j->query_start_loc[r];
    /* Query tokens [t0, t1) of the row are a row of their own whose context ends at the
     * last one's position: token t sits at seq - q_len + t either way. */
    Row x = {
        .q_start = j->query_start_loc[r] + t0,
        .q_len = t1 - t0,
        .seq = j->seq_lens[r] - q_len + t1,
        .h0 = h0,
        .h1 = h1,
        .table = j->block_table + r * j->table_stride,
    };
    const int64_t num_scores = (h1 - h0) * x.q_len * group * x.seq;
    const int64_t need =
        num_scores + (x.q_len * group + TILE_QUERIES - 1) / TILE_QUERIES * TILE_QUERIES * hs;
    if (need > *capacity) {
        float *grown = realloc(*scores, (size_t)need * sizeof(float));
        if (grown == NULL) return -1;
        *scores = grown;
        *capacity = need;
    }
    x.scores = *scores;
    x.queries = *scores + num_scores;
    if (hs % VL == 0 && hs / VL <= 8) {
        for (int64_t h = h0; h < h1; h++) {
            switch (hs / VL) {
                case 1: attend_head_vec(j, &x, h, 1); break;
                case 2: attend_head_vec(j, &x, h, 2); break;
                case 4: attend_head_vec(j, &x, h, 4); break;
                case 8: attend_head_vec(j, &x, h, 8); break;
                default: goto sweeps; /* 3, 5, 6, 7 vectors */
            }
        }
        return 0;
    }
sweeps:
    sweep(j, &x, SCORES, hs);
    for (int64_t i = 0; i < (h1 - h0) * x.q_len * group; i++) {
        const int64_t t = (i / group) % x.q_len;
        softmax(x.scores + i * x.seq, x.seq - x.q_len + t + 1, x.seq);
    }
    for (int64_t t = 0; t < x.q_len; t++) {
        float *o = j->out + ((x.q_start + t) * j->num_heads + h0 * group) * hs;
        for (int64_t d = 0; d < (h1 - h0) * group * hs; d++) o[d] = 0.0f;
    }
    sweep(j, &x, VALUES, hs);
    return 0;
}

static int attend_item(const Job *j, int64_t row, int64_t h0, int64_t h1, int64_t t0,
                       int64_t t1, float **scores, int64_t *capacity) {
    switch (j->head_size) {
        case 64: return attend_rows(j, row, h0, h1, t0, t1, scores, capacity, 64);
        case 128: return attend_rows(j, row, h0, h1, t0, t1, scores, capacity, 128);
        default: return attend_rows(j, row, h0, h1, t0, t1, scores, capacity, j->head_size);
    }
}

/* Query tokens per work item of a long row (a prefill chunk): items of a few dozen tokens
 * keep the threads evenly loaded on one long prompt, and each item's context stops at its
 * own last token, so a causal prefill computes the visible half of its scores only. */
#define PIECE_TOKENS 16

static int64_t row_pieces(const Job *j, const int64_t row) {
    const int64_t q_len = j->query_start_loc[row + 1] - j->query_start_loc[row];
    return q_len <= PIECE_TOKENS ? 1 : (q_len + PIECE_TOKENS - 1) / PIECE_TOKENS;
}

static void *work(void *arg) {
    Job *j = arg;
    float *scores = NULL;
    int64_t capacity = 0;
    const int64_t num_items = j->first_item[j->num_rows];
    const int64_t per_item = j->num_kv_heads / j->heads_split;
    int64_t row = 0;
    for (;;) {
        const int64_t item = __atomic_fetch_add(&j->next_item, 1, __ATOMIC_RELAXED);
        if (item >= num_items) break;
        while (j->first_item[row + 1] <= item) row++; /* items are taken in order */
        const int64_t local = item - j->first_item[row];
        const int64_t h0 = (local % j->heads_split) * per_item;
        const int64_t piece = local / j->heads_split;
        const int64_t q_len = j->query_start_loc[row + 1] - j->query_start_loc[row];
        const int64_t t0 = piece * PIECE_TOKENS;
        const int64_t t1 = row_pieces(j, row) == 1 ? q_len
                         : t0 + PIECE_TOKENS < q_len ? t0 + PIECE_TOKENS : q_len;
        if (attend_item(j, row, h0, h0 + per_item, t0, t1, &scores, &capacity) != 0) {
            __atomic_store_n(&j->failed, 1, __ATOMIC_RELAXED);
            break;
        }
    }
    free(scores);
    return NULL;
}

/* Returns 0, or -1 if memory for the scores could not be had (out is then incomplete). */
int kvbatch_paged_attention(
    const float *query, const float *k_cache, const float *v_cache,
    const int32_t *block_table, int64_t table_stride,
    const int32_t *query_start_loc, const int32_t *seq_lens, int64_t num_rows,
    float *out,
    int64_t num_heads, int64_t num_kv_heads, int64_t head_size, int64_t block_size,
    int64_t block_stride, int64_t position_stride, int64_t head_stride,
    float scale, int64_t num_threads) {
    int64_t *first_item = malloc((size_t)(num_rows + 1) * sizeof(int64_t));
    if (first_item == NULL) return -1;
    Job job = {
        query, k_cache, v_cache, block_table, query_start_loc, seq_lens, out,
        table_stride, num_rows, num_heads, num_kv_heads, head_size, block_size,
        block_stride, position_stride, head_stride,
        /* Whole rows stream best; split a row by head only when rows are too few to
         * keep every thread busy. */
        num_rows >= 2 * num_threads ? 1 : num_kv_heads, scale, first_item, 0, 0,
    };
    first_item[0] = 0;
    for (int64_t row = 0; row < num_rows; row++)
        first_item[row + 1] = first_item[row] + row_pieces(&job, row) * job.heads_split;
    int64_t team = num_threads < first_item[num_rows] ? num_threads : first_item[num_rows];
    if (team < 1) team = 1;
#pragma omp parallel num_threads(team)
    work(&job);
    free(first_item);
    return job.failed ? -1 : 0;
}
