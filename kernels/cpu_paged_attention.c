/* Paged attention on the CPU for short queries (decodes, speculative verifies): fp32.
 *
 * The PyTorch path gathers each request's cached K/V into a padded copy, then runs SDPA
 * over the copy: the context crosses memory three times (read, write, read again). Here
 * each (request, KV head) reads its keys and values once, in place, through the block
 * table. Semantics are those of kernels/attention.py (its module docstring): query token
 * i of request r sits at position seq_lens[r] - q_len + i and sees keys 0 ..= that.
 *
 * Layouts (all contiguous): query and out [tokens, heads, head_size]; caches
 * [blocks, block_size, kv_heads, head_size]; block_table [reqs, table_stride] int32;
 * query_start_loc [reqs + 1] and seq_lens [reqs] int32; rows: the requests to attend.
 *
 * Work items are rows (or, when rows are fewer than twice the threads, (row, KV head)
 * pairs), taken from a shared counter by num_threads threads, so a long context does not
 * hold up a thread that was handed many short ones. The threads are OpenMP's: the library
 * links libgomp.so.1, which resolves to the copy torch has already loaded, so the kernel
 * runs on torch's own thread team (just back from the step's last matmul) rather than
 * beside it on the same cores.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

typedef struct {
    const float *query, *k_cache, *v_cache;
    const int32_t *block_table, *query_start_loc, *seq_lens, *rows;
    float *out;
    int64_t table_stride, num_rows, num_heads, num_kv_heads, head_size, block_size;
    int64_t heads_split; /* work items per row: all KV heads at once, or one each */
    float scale;
    int64_t next_item; /* shared counter */
    int failed;        /* an allocation failed */
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
    const int64_t bs = j->block_size;
    const int64_t kv_row = j->num_kv_heads * hs; /* floats between positions */
    const int64_t num_q = x->q_len * group;      /* query vectors per KV head */
    const float *cache = what == SCORES ? j->k_cache : j->v_cache;
    for (int64_t b0 = 0; b0 < x->seq; b0 += bs) {
        const float *block = cache + (int64_t)x->table[b0 / bs] * bs * kv_row;
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
                            w[p] = dot(q, block + (p - b0) * kv_row + h * hs, hs) * j->scale;
                    } else {
                        float *restrict o = j->out + vec;
                        for (int64_t p = b0; p < end; p++) {
                            const float *restrict v = block + (p - b0) * kv_row + h * hs;
                            for (int64_t d = 0; d < hs; d++) o[d] += w[p] * v[d];
                        }
                    }
                }
            }
        }
    }
}

/* One row's KV heads [h0, h1): scores, softmax over each query's visible keys, weighted
 * values. */
static inline __attribute__((always_inline)) int attend_rows(
    const Job *j, int64_t row, int64_t h0, int64_t h1, float **scores, int64_t *capacity,
    const int64_t hs) {
    const int64_t r = j->rows[row];
    const int64_t group = j->num_heads / j->num_kv_heads;
    Row x = {
        .q_start = j->query_start_loc[r],
        .q_len = j->query_start_loc[r + 1] - j->query_start_loc[r],
        .seq = j->seq_lens[r],
        .h0 = h0,
        .h1 = h1,
        .table = j->block_table + r * j->table_stride,
    };
    const int64_t need = (h1 - h0) * x.q_len * group * x.seq;
    if (need > *capacity) {
        float *grown = realloc(*scores, (size_t)need * sizeof(float));
        if (grown == NULL) return -1;
        *scores = grown;
        *capacity = need;
    }
    x.scores = *scores;
    sweep(j, &x, SCORES, hs);
    for (int64_t i = 0; i < (h1 - h0) * x.q_len * group; i++) {
        const int64_t t = (i / group) % x.q_len;
        const int64_t visible = x.seq - x.q_len + t + 1;
        float *w = x.scores + i * x.seq;
        float top = w[0];
        for (int64_t p = 1; p < visible; p++) top = w[p] > top ? w[p] : top;
        float total = 0.0f;
        for (int64_t p = 0; p < visible; p++) {
            w[p] = expf(w[p] - top);
            total += w[p];
        }
        const float inv = 1.0f / total;
        for (int64_t p = 0; p < visible; p++) w[p] *= inv;
    }
    for (int64_t t = 0; t < x.q_len; t++) {
        float *o = j->out + ((x.q_start + t) * j->num_heads + h0 * group) * hs;
        for (int64_t d = 0; d < (h1 - h0) * group * hs; d++) o[d] = 0.0f;
    }
    sweep(j, &x, VALUES, hs);
    return 0;
}

static int attend_item(const Job *j, int64_t row, int64_t h0, int64_t h1, float **scores,
                       int64_t *capacity) {
    switch (j->head_size) {
        case 64: return attend_rows(j, row, h0, h1, scores, capacity, 64);
        case 128: return attend_rows(j, row, h0, h1, scores, capacity, 128);
        default: return attend_rows(j, row, h0, h1, scores, capacity, j->head_size);
    }
}

static void *work(void *arg) {
    Job *j = arg;
    float *scores = NULL;
    int64_t capacity = 0;
    const int64_t num_items = j->num_rows * j->heads_split;
    const int64_t per_item = j->num_kv_heads / j->heads_split;
    for (;;) {
        const int64_t item = __atomic_fetch_add(&j->next_item, 1, __ATOMIC_RELAXED);
        if (item >= num_items) break;
        const int64_t h0 = (item % j->heads_split) * per_item;
        if (attend_item(j, item / j->heads_split, h0, h0 + per_item, &scores, &capacity) != 0) {
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
    const int32_t *query_start_loc, const int32_t *seq_lens,
    const int32_t *rows, int64_t num_rows,
    float *out,
    int64_t num_heads, int64_t num_kv_heads, int64_t head_size, int64_t block_size,
    float scale, int64_t num_threads) {
    Job job = {
        query, k_cache, v_cache, block_table, query_start_loc, seq_lens, rows, out,
        table_stride, num_rows, num_heads, num_kv_heads, head_size, block_size,
        /* Whole rows stream best; split a row by head only when rows are too few to
         * keep every thread busy. */
        num_rows >= 2 * num_threads ? 1 : num_kv_heads, scale, 0, 0,
    };
    int64_t team = num_threads < num_rows * job.heads_split ? num_threads : num_rows * job.heads_split;
    if (team < 1) team = 1;
#pragma omp parallel num_threads(team)
    work(&job);
    return job.failed ? -1 : 0;
}
