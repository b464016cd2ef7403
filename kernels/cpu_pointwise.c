/* The small per-token operations of a decoder layer on the CPU, fp32: RMSNorm with the
 * residual add, rotary embedding, the KV-cache store, SiLU-and-multiply.
 *
 * In PyTorch each is several tensor ops (RMSNorm: add, pow, mean, add, rsqrt, mul, mul;
 * rotary: an index, two cats, chunks, a neg and three arithmetic ops per tensor), each with
 * its dispatch cost and its own pass over memory. At a decode step's few rows that cost is
 * the whole cost: SmolLM2's 30 layers spent ~30 ms of a ~90 ms one-row step there. Here
 * each is one call and one pass. Semantics are the references' in kernels/norm.py,
 * rotary.py, kv_cache.py and activation.py; rows are split between OpenMP threads only
 * when there is enough work to pay for waking them.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "cpu_exp.h"

/* Rows per thread below which one thread does all the rows. */
#define ROWS_FLOATS_PER_THREAD 32768

static inline int64_t team_for(const int64_t rows, const int64_t width, const int64_t threads) {
    const int64_t by_work = rows * width / ROWS_FLOATS_PER_THREAD;
    const int64_t team = by_work < threads ? by_work : threads;
    return team < 1 ? 1 : team;
}

/* h = x + residual (residual may be NULL: h = x); residual_out = h (when residual given);
 * out = h / sqrt(mean(h^2) + eps) * weight. Row strides in floats. */
void kvbatch_rms_norm(const float *x, const int64_t ldx, const float *residual,
                      const int64_t ld_residual, const float *weight, const float eps,
                      float *out, float *residual_out, const int64_t rows, const int64_t hidden,
                      const int64_t num_threads) {
#pragma omp parallel for schedule(static) num_threads(team_for(rows, hidden, num_threads))
    for (int64_t r = 0; r < rows; r++) {
        const float *xr = x + r * ldx;
        float *o = out + r * hidden;
        const float *h = xr;
        if (residual) {
            float *ro = residual_out + r * hidden;
            const float *rr = residual + r * ld_residual;
            for (int64_t d = 0; d < hidden; d++) ro[d] = xr[d] + rr[d];
            h = ro;
        }
        float squares = 0.0f;
        for (int64_t d = 0; d < hidden; d++) squares += h[d] * h[d];
        const float inv = 1.0f / sqrtf(squares / (float)hidden + eps);
        for (int64_t d = 0; d < hidden; d++) o[d] = h[d] * inv * weight[d];
    }
}

/* One token's heads rotated (NeoX style, halves apart): with c, s = cos_sin[pos][i],
 * [pos][half + i], out[i] = x[i] c - x[half + i] s and out[half + i] = x[half + i] c + x[i] s. */
static inline void rotate(const float *x, float *out, const int64_t heads, const int64_t hs,
                          const float *cs) {
    const int64_t half = hs / 2;
    for (int64_t h = 0; h < heads; h++) {
        const float *a = x + h * hs;
        float *o = out + h * hs;
        for (int64_t i = 0; i < half; i++) {
            const float c = cs[i], s = cs[half + i];
            o[i] = a[i] * c - a[half + i] * s;
            o[half + i] = a[half + i] * c + a[i] * s;
        }
    }
}

/* query [tokens, heads * hs] (row stride ldq) and key [tokens, kv_heads * hs] (ldk) rotated
 * by their positions into the contiguous q_out and k_out; cos_sin [max_position, hs]. */
void kvbatch_rotary(const int64_t *positions, const float *query, const int64_t ldq,
                    const float *key, const int64_t ldk, const float *cos_sin, float *q_out,
                    float *k_out, const int64_t tokens, const int64_t heads,
                    const int64_t kv_heads, const int64_t hs, const int64_t num_threads) {
#pragma omp parallel for schedule(static) \
    num_threads(team_for(tokens, (heads + kv_heads) * hs, num_threads))
    for (int64_t t = 0; t < tokens; t++) {
        const float *cs = cos_sin + positions[t] * hs;
        rotate(query + t * ldq, q_out + t * heads * hs, heads, hs, cs);
        rotate(key + t * ldk, k_out + t * kv_heads * hs, kv_heads, hs, cs);
    }
}

/* Token t's key and value rows (kv_heads * head_size floats each, row strides ldk, ldv) into
 * slot slots[t] of the caches [num_blocks, block_size, kv_heads, head_size] (strides in
 * floats as cpu_paged_attention.c's, head_size's 1), a head at a time; a negative slot is
 * skipped. Returns how many slots were past the caches' end (those tokens are not stored). */
int64_t kvbatch_store_kv(const float *key, const int64_t ldk, const float *value,
                         const int64_t ldv, float *k_cache, float *v_cache, const int64_t *slots,
                         const int64_t tokens, const int64_t kv_heads, const int64_t head_size,
                         const int64_t block_size, const int64_t num_blocks,
                         const int64_t block_stride, const int64_t position_stride,
                         const int64_t head_stride) {
    int64_t beyond = 0;
    const size_t bytes = (size_t)head_size * sizeof(float);
    for (int64_t t = 0; t < tokens; t++) {
        if (slots[t] < 0) continue;
        if (slots[t] >= num_blocks * block_size) {
            beyond++;
            continue;
        }
        const int64_t at =
            slots[t] / block_size * block_stride + slots[t] % block_size * position_stride;
        for (int64_t h = 0; h < kv_heads; h++) {
            memcpy(k_cache + at + h * head_stride, key + t * ldk + h * head_size, bytes);
            memcpy(v_cache + at + h * head_stride, value + t * ldv + h * head_size, bytes);
        }
    }
    return beyond;
}

/* out [rows, inter] = silu(x[:, :inter]) * x[:, inter:], x's row stride ldx; silu(g) =
 * g * sigmoid(g), the sigmoid from e^-|g| so the exponential never overflows. */
void kvbatch_silu_and_mul(const float *x, const int64_t ldx, float *out, const int64_t rows,
                          const int64_t inter, const int64_t num_threads) {
#pragma omp parallel for schedule(static) num_threads(team_for(rows, 2 * inter, num_threads))
    for (int64_t r = 0; r < rows; r++) {
        const float *gate = x + r * ldx, *up = gate + inter;
        float *o = out + r * inter;
        for (int64_t i = 0; i < inter; i++) {
            const float g = gate[i];
            const float e = exp_nonpositive(g < 0.0f ? g : -g);
            const float sigmoid = g < 0.0f ? e / (1.0f + e) : 1.0f / (1.0f + e);
            o[i] = g * sigmoid * up[i];
        }
    }
}
