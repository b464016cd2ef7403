/* A whole Llama-family decoder stack for a step (decodes, speculative verifies, prefill
 * chunks), fp32 on the CPU, in one call.
 *
 * The same kernels, in the same order, as the model's PyTorch modules call one by one
 * (engine/models/llama.py through kernels/dispatch.py), so the hidden states are
 * bit-identical to that path. What the call saves is the Python between them: at a decode
 * step of 32 rows of SmolLM2 that was ~50 of ~220 ms (30 layers x ~8 kernel calls, each
 * with its module call, checks, views and ctypes marshalling), while the other thread of
 * the team spun waiting.
 *
 * Per layer (h: hidden, r: residual; the first layer's input norm has no residual):
 *   h, r = norm(h + r); qkv = h Wqkv^T + b; q, k = rope(q, k); cache[slot] = k, v;
 *   a = attention(q); h = a Wo^T + b; h, r = norm(h + r); h = silu(gate) * up; h = h Wd^T + b
 * and after the last layer h = norm(h + r).
 *
 * The projections take the panels (cpu_linear.c), or from gemm->min_rows tokens the BLAS
 * GEMM that torch's F.linear calls (on Intel CPUs, MKL's sgemm beats the panels on long
 * prefill chunks: packed_weights.PANEL_MAX_ROWS), called as F.linear calls it, on the plain
 * weights, so its products are the modules' to the bit there too.
 */
#include <stddef.h>
#include <stdint.h>

#include "cpu_kernels.h"

typedef struct { /* one layer's weights: packed panels (cpu_linear.c), biases may be NULL */
    const float *input_norm, *post_norm;
    const float *qkv, *qkv_bias, *o, *o_bias, *gate_up, *gate_up_bias, *down, *down_bias;
    float *k_cache, *v_cache; /* [blocks, block_size, kv_heads, head_size], Dims' strides */
    const float *qkv_plain, *o_plain, *gate_up_plain, *down_plain; /* [N, K], for the GEMM */
} Layer;

/* The Fortran BLAS sgemm (column-major, arguments by reference, LP64 ints). */
typedef void (*Sgemm)(const char *transa, const char *transb, const int32_t *m,
                      const int32_t *n, const int32_t *k, const float *alpha, const float *a,
                      const int32_t *lda, const float *b, const int32_t *ldb,
                      const float *beta, float *c, const int32_t *ldc);

typedef struct { /* from min_rows tokens (0: never) the projections call sgemm */
    int64_t min_rows;
    Sgemm sgemm;
} Gemm;

typedef struct {
    int64_t hidden, heads, kv_heads, head_size, intermediate, block_size, num_blocks;
    int64_t block_stride, position_stride, head_stride; /* the caches', in floats */
    float eps, scale;
} Dims;

typedef struct { /* the step */
    int64_t tokens;
    const int64_t *positions, *slots;
    const float *cos_sin;
    const int32_t *block_table, *query_start_loc, *seq_lens;
    int64_t table_stride, num_rows; /* num_rows: requests */
} Step;

typedef struct { /* scratch, row-major, tokens rows each */
    float *residual, *normed, *qkv, *q, *k, *attn, *gate_up, *act;
} Scratch;

/* y [T, N] (row stride ldy) = x [T, K] (row stride ldx) . W^T + bias: the panels, or the
 * GEMM as torch's addmm calls it (bias rows first, then y = x W^T + 1 * y; without a bias,
 * beta 0), which is what makes the two paths' products equal. */
static void project(const Gemm *g, const float *x, const int64_t T, const int64_t K,
                    const int64_t ldx, const float *panels, const float *plain, const int64_t N,
                    const float *bias, float *y, const int64_t ldy, const int64_t num_threads) {
    if (g->min_rows == 0 || T < g->min_rows || g->sgemm == NULL) {
        kvbatch_linear(x, T, K, ldx, panels, N, bias, y, ldy, num_threads);
        return;
    }
    if (bias)
        for (int64_t t = 0; t < T; t++)
            for (int64_t n = 0; n < N; n++) y[t * ldy + n] = bias[n];
    const int32_t m = (int32_t)N, n = (int32_t)T, k = (int32_t)K;
    const int32_t lda = (int32_t)K, ldb = (int32_t)ldx, ldc = (int32_t)ldy;
    const float one = 1.0f, beta = bias ? 1.0f : 0.0f;
    g->sgemm("T", "N", &m, &n, &k, &one, plain, &lda, x, &ldb, &beta, y, &ldc);
}

/* hidden [tokens, hidden]: in, the embeddings; out, the final norm's output. Returns 0, -1
 * if the attention could not allocate, -2 if a slot was past the cache. */
int kvbatch_decoder(const Layer *layers, const int64_t num_layers, const float *final_norm,
                    const Dims *d, const Step *s, const Scratch *w, const Gemm *g,
                    float *hidden, const int64_t num_threads) {
    const int64_t T = s->tokens, H = d->hidden, hs = d->head_size;
    const int64_t q_width = d->heads * hs, kv_width = d->kv_heads * hs;
    const int64_t qkv_width = q_width + 2 * kv_width, I = d->intermediate;
    for (int64_t l = 0; l < num_layers; l++) {
        const Layer *L = &layers[l];
        if (l == 0) {
            kvbatch_rms_norm(hidden, H, NULL, 0, L->input_norm, d->eps, w->normed, NULL, T, H,
                             num_threads);
            for (int64_t i = 0; i < T * H; i++) w->residual[i] = hidden[i];
        } else {
            kvbatch_rms_norm(hidden, H, w->residual, H, L->input_norm, d->eps, w->normed,
                             w->residual, T, H, num_threads);
        }
        project(g, w->normed, T, H, H, L->qkv, L->qkv_plain, qkv_width, L->qkv_bias, w->qkv,
                qkv_width, num_threads);
        kvbatch_rotary(s->positions, w->qkv, qkv_width, w->qkv + q_width, qkv_width,
                       s->cos_sin, w->q, w->k, T, d->heads, d->kv_heads, hs, num_threads);
        if (kvbatch_store_kv(w->k, kv_width, w->qkv + q_width + kv_width, qkv_width,
                             L->k_cache, L->v_cache, s->slots, T, d->kv_heads, hs,
                             d->block_size, d->num_blocks, d->block_stride,
                             d->position_stride, d->head_stride) != 0)
            return -2;
        if (kvbatch_paged_attention(w->q, L->k_cache, L->v_cache, s->block_table,
                                    s->table_stride, s->query_start_loc, s->seq_lens,
                                    s->num_rows, w->attn, d->heads, d->kv_heads, hs,
                                    d->block_size, d->block_stride, d->position_stride,
                                    d->head_stride, d->scale, num_threads) != 0)
            return -1;
        project(g, w->attn, T, q_width, q_width, L->o, L->o_plain, H, L->o_bias, hidden, H,
                num_threads);
        kvbatch_rms_norm(hidden, H, w->residual, H, L->post_norm, d->eps, w->normed,
                         w->residual, T, H, num_threads);
        project(g, w->normed, T, H, H, L->gate_up, L->gate_up_plain, 2 * I, L->gate_up_bias,
                w->gate_up, 2 * I, num_threads);
        kvbatch_silu_and_mul(w->gate_up, 2 * I, w->act, T, I, num_threads);
        project(g, w->act, T, I, I, L->down, L->down_plain, H, L->down_bias, hidden, H,
                num_threads);
    }
    kvbatch_rms_norm(hidden, H, w->residual, H, final_norm, d->eps, w->normed, w->residual, T,
                     H, num_threads);
    for (int64_t i = 0; i < T * H; i++) hidden[i] = w->normed[i];
    return 0;
}
