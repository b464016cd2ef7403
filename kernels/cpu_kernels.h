/* The CPU kernels' entry points, for the one that calls the others (cpu_decoder.c). */
#ifndef KVBATCH_CPU_KERNELS_H
#define KVBATCH_CPU_KERNELS_H
#include <stdint.h>

int kvbatch_paged_attention(const float *query, const float *k_cache, const float *v_cache,
                            const int32_t *block_table, int64_t table_stride,
                            const int32_t *query_start_loc, const int32_t *seq_lens,
                            int64_t num_rows, float *out, int64_t num_heads,
                            int64_t num_kv_heads, int64_t head_size, int64_t block_size,
                            int64_t block_stride, int64_t position_stride, int64_t head_stride,
                            float scale, int64_t num_threads);
void kvbatch_linear(const float *x, int64_t M, int64_t K, int64_t ldx, const float *panels,
                    int64_t N, const float *bias, float *y, int64_t ldy, int64_t num_threads);
void kvbatch_rms_norm(const float *x, int64_t ldx, const float *residual, int64_t ld_residual,
                      const float *weight, float eps, float *out, float *residual_out,
                      int64_t rows, int64_t hidden, int64_t num_threads);
void kvbatch_rotary(const int64_t *positions, const float *query, int64_t ldq, const float *key,
                    int64_t ldk, const float *cos_sin, float *q_out, float *k_out, int64_t tokens,
                    int64_t heads, int64_t kv_heads, int64_t hs, int64_t num_threads);
int64_t kvbatch_store_kv(const float *key, int64_t ldk, const float *value, int64_t ldv,
                         float *k_cache, float *v_cache, const int64_t *slots, int64_t tokens,
                         int64_t kv_heads, int64_t head_size, int64_t block_size,
                         int64_t num_blocks, int64_t block_stride, int64_t position_stride,
                         int64_t head_stride);
void kvbatch_silu_and_mul(const float *x, int64_t ldx, float *out, int64_t rows, int64_t inter,
                          int64_t num_threads);
#endif
