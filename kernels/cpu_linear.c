/* fp32 projections on the CPU, y = x W^T + b, for the few to few hundred rows of a step.
 *
 * A library GEMM is built for large square products. A decode step multiplies 1 to ~64 rows
 * by each weight, and there oneDNN (with the weight reordered once) reached about half of
 * this machine's GEMM rate (benchmarks/cpu_linear_libraries.py). This kernel keeps the weight
 * in panels of NR output columns, each panel's K x NR floats contiguous, and runs every row
 * of a block against a panel while the panel sits in the CPU's cache: a tile of MR rows x NR
 * columns accumulates in vector registers, one broadcast of x and NR / VL fused multiply-adds
 * per row and k.
 *
 *     weight [N, K]  ->  panels [ceil(N / NR)][K][NR]   (the last panel zero-padded)
 *
 * Each output element is one in-order sum over k, whatever the row count, the block or the
 * thread that computes it, so a request's products do not depend on what else is in its
 * step. Threads split the (panel, tile) pairs (OpenMP; the library links the libgomp torch
 * has loaded, so this runs on torch's own thread team, as cpu_paged_attention.c explains).
 */
#include <omp.h>
#include <stdint.h>
#include <string.h>

/* Tile shapes (override with -DMR=.. -DNVEC=.. to measure others): MR rows x NVEC
 * vectors of accumulators, plus NVEC weight vectors and a broadcast, within the register
 * file. With AVX-512 (32 registers) 8 x 3 was the fastest of 6 x 4, 7 x 3, 4 x 4 and 9 x 2
 * over SmolLM2's projections at 8 to 256 rows (Intel Xeon, 2 threads); with AVX2 (16
 * registers) 6 x 2. On a Zen 4 VM, 6 x 4 was 5-15 % faster from 33 rows up but 10-40 %
 * slower at 8-16 (a C harness over the layer weights, 2 threads); in
 * benchmarks/cpu_linear_libraries.py the gain shrank to 0-8 %, so 8 x 3 stays. */
#if defined(__AVX512F__)
#define VL 16 /* floats per vector register */
#ifndef NVEC
#define NVEC 3 /* vectors per tile row: NR = 48 columns */
#endif
#ifndef MR
#define MR 8
#endif
#else
#define VL 8
#ifndef NVEC
#define NVEC 2
#endif
#ifndef MR
#define MR 6
#endif
#endif
#define NR (VL * NVEC)
/* Bytes of x per row block: a block's rows and one panel stay in L2 together. */
#define ROW_BLOCK_BYTES (384 * 1024)

typedef float vec __attribute__((vector_size(VL * 4)));
/* The same vector at any float's address: loads and stores of rows and panels. */
typedef float uvec __attribute__((vector_size(VL * 4), aligned(4)));

int64_t kvbatch_linear_panel_width(void) { return NR; }

/* panels [ceil(N / NR)][K][NR] <- weight [N, K] (row-major). */
void kvbatch_pack_linear(const float *weight, const int64_t N, const int64_t K, float *panels) {
    const int64_t count = (N + NR - 1) / NR;
    for (int64_t p = 0; p < count; p++)
        for (int64_t k = 0; k < K; k++)
            for (int64_t j = 0; j < NR; j++) {
                const int64_t n = p * NR + j;
                panels[(p * K + k) * NR + j] = n < N ? weight[n * K + k] : 0.0f;
            }
}

/* Cache lines of the next panel to ask for: [first, first + count) of those at ahead. */
typedef struct {
    const char *ahead;
    int64_t first, count;
} Prefetch;

/* y[0:m, 0:NR] = x[0:m, :] . panel (+ bias[0:NR]); m is a constant where tile_rows calls
 * it, so the accumulators are registers. Along the way, the lines of pf are requested, so
 * the next panel arrives from memory while this one is multiplied: into L2 (prefetcht2),
 * not L1, where a panel does not fit beside the rows; and per_k = ceil(count / K) a k,
 * spread evenly over the k loop, rather than all at once or as fast as the loop goes until
 * they run out. A CPU holds only so many misses in flight (an Intel core ~16 lines), and a
 * request past that waits in the pipeline, holding up the multiplies behind it: asked for
 * in a burst, the next panel's lines came in while this tile stalled, and the memory time
 * added to the multiplies rather than hiding behind them. benchmarks/cpu_linear_libraries.py
 * (every projection of SmolLM2, 538 MB, 2 threads, Intel Xeon VM with AVX-512, two
 * alternating rounds, cpu_linear_libraries_intel_spread.json and _before.json), panels ms a
 * pass: 8 rows 39.2-39.9 -> 35.4-35.9, 16 rows 53.4-56.4 -> 48.0-49.3, 33 rows 64.8-70.0 ->
 * 58.6-59.5, 64 rows 93.7-101.7 -> 84.7-90.7 (one line a k; a tile with more lines to ask
 * for than K, one or two tiles a panel, then asked four a k until they ran out). On a Zen 4
 * VM that made no difference at 1-64 rows (five alternating rounds, benchmarks/README.md).
 * On a Zen 5 VM, spreading those too (two or three a k) took a C harness over the layer
 * weights (2 threads, medians of 6-8 alternating runs) at 6 rows from 10.7 to 9.9 ms, 8
 * rows 11.7 -> 10.5, 12 rows 14.1 -> 12.3, 16 rows 14.4 -> 11.5; 1, 4, 33 and 64 rows
 * unchanged. Not measured on Intel, where four a k was the faster at 16 rows against a
 * spread of one a k that skipped lines. */
static inline __attribute__((always_inline)) void tile(
    const int m, const int64_t K, const float *restrict x, const int64_t ldx,
    const float *restrict panel, const float *restrict bias, float *restrict y, const int64_t ldy,
    const Prefetch pf, const int per_k) {
    vec acc[MR][NVEC];
    for (int i = 0; i < m; i++)
        for (int j = 0; j < NVEC; j++) acc[i][j] = bias ? *(const uvec *)(bias + j * VL) : (vec){0};
    const char *ahead = pf.ahead + pf.first * 64;
    const int64_t last = pf.count - 1; /* past it, the last line is asked for again: no branch */
    /* lines between two requests, in 1/65536ths of a line */
    const int64_t step = per_k ? ((pf.count << 16) + K * per_k - 1) / (K * per_k) : 0;
    for (int64_t k = 0; k < K; k++) {
        for (int q = 0; q < per_k; q++) {
            const int64_t line = ((k * per_k + q) * step) >> 16;
            __builtin_prefetch(ahead + (line < last ? line : last) * 64, 0, 1);
        }
        vec w[NVEC];
        for (int j = 0; j < NVEC; j++) w[j] = *(const uvec *)(panel + k * NR + j * VL);
        for (int i = 0; i < m; i++) {
            const float xv = x[i * ldx + k];
            for (int j = 0; j < NVEC; j++) acc[i][j] += w[j] * xv;
        }
    }
    for (int i = 0; i < m; i++)
        for (int j = 0; j < NVEC; j++) *(uvec *)(y + i * ldy + j * VL) = acc[i][j];
}

/* per_k: prefetches per k, a constant in each variant: none to four (a panel is NVEC
 * lines a k with AVX-512, so one tile asks for at most three a k with 8 x 3 tiles; tiles
 * that share a panel's lines between three or more of them ask for at most one). */
#define TILE_ROWS(per_k)                                                          \
    switch (m) {                                                                  \
    case 1: tile(1, K, x, ldx, panel, bias, y, ldy, pf, per_k); break;            \
    case 2: tile(2, K, x, ldx, panel, bias, y, ldy, pf, per_k); break;            \
    case 3: tile(3, K, x, ldx, panel, bias, y, ldy, pf, per_k); break;            \
    case 4: tile(4, K, x, ldx, panel, bias, y, ldy, pf, per_k); break;            \
    case 5: tile(5, K, x, ldx, panel, bias, y, ldy, pf, per_k); break;            \
    MORE_ROWS(per_k)                                                              \
    default: tile(MR, K, x, ldx, panel, bias, y, ldy, pf, per_k); break;          \
    }

#if MR > 8
#define MORE_ROWS(per_k)                                                  \
    case 6: tile(6, K, x, ldx, panel, bias, y, ldy, pf, per_k); break;    \
    case 7: tile(7, K, x, ldx, panel, bias, y, ldy, pf, per_k); break;    \
    case 8: tile(8, K, x, ldx, panel, bias, y, ldy, pf, per_k); break;
#elif MR > 6
#define MORE_ROWS(per_k)                                                  \
    case 6: tile(6, K, x, ldx, panel, bias, y, ldy, pf, per_k); break;    \
    case 7: tile(7, K, x, ldx, panel, bias, y, ldy, pf, per_k); break;
#else
#define MORE_ROWS(per_k)
#endif
_Static_assert(MR <= 9, "tile_rows names every row count below MR");

static void tile_rows(const int m, const int64_t K, const float *x, const int64_t ldx,
                      const float *panel, const float *bias, float *y, const int64_t ldy,
                      const Prefetch pf) {
    if (pf.count == 0) {
        TILE_ROWS(0)
    } else if (pf.count <= K) {
        TILE_ROWS(1)
    } else if (pf.count <= 2 * K) {
        TILE_ROWS(2)
    } else if (pf.count <= 3 * K) {
        TILE_ROWS(3)
    } else { /* past 4 K (tiles wider than 8 x 3), the requests skip lines evenly */
        TILE_ROWS(4)
    }
}

/* One panel against the tiles [t0, t1) of the block of rows [b0, b1): the block's rows cut
 * into as few tiles of at most MR rows as hold them, of near-equal rows: 33 rows as 7, 7,
 * 7, 6, 6, not 8, 8, 8, 8 and a tile whose weight loads serve one row. On a Zen 4 VM (a
 * harness over SmolLM2's layer weights, 2 threads, medians of three rounds): 17 rows 29.4
 * -> 22.4 ms, 25 rows 36.1 -> 29.9, 33 rows 43.3 -> 37.5, 1.09x summed over 17-63 rows
 * (cpu_linear_libraries_zen4_tiles.json has the noisier whole benchmark). The last panel
 * may be narrower than NR: its bias is padded and its tiles land in a scratch tile first,
 * so nothing past column N is written. The block's tiles share out the next panel's
 * prefetches (each asks for its own share, by its place in the block): the weights stream
 * from memory while the rows are multiplied, rather than each panel's first tile waiting
 * on memory and its other tiles on the multipliers. */
static void panel_tiles(const float *x, const int64_t ldx, const int64_t b0, const int64_t b1,
                        const int64_t t0, const int64_t t1, const int64_t K, const float *panels,
                        const int64_t p, const int64_t N, const float *bias, float *y,
                        const int64_t ldy) {
    const float *panel = panels + p * K * NR;
    const int64_t width = N - p * NR < NR ? N - p * NR : NR;
    float bias_pad[NR] __attribute__((aligned(64)));
    const float *b = NULL;
    if (bias) {
        memset(bias_pad, 0, sizeof bias_pad);
        memcpy(bias_pad, bias + p * NR, (size_t)width * sizeof(float));
        b = bias_pad;
    }
    float scratch[MR * NR] __attribute__((aligned(64)));
    const int64_t tiles = (b1 - b0 + MR - 1) / MR;
    const int64_t lines = p + 1 < (N + NR - 1) / NR ? K * NR * 4 / 64 : 0;
    const int64_t per_tile = (lines + tiles - 1) / tiles;
    const int64_t base = (b1 - b0) / tiles, extra = (b1 - b0) % tiles;
    for (int64_t t = t0; t < t1; t++) {
        const int64_t r = b0 + t * base + (t < extra ? t : extra);
        const int m = (int)(base + (t < extra));
        float *out = y + r * ldy + p * NR;
        const int64_t first = t * per_tile;
        const Prefetch pf = {(const char *)(panel + K * NR), first,
                             first >= lines ? 0 : (lines - first < per_tile ? lines - first : per_tile)};
        if (width == NR) {
            tile_rows(m, K, x + r * ldx, ldx, panel, b, out, ldy, pf);
        } else {
            tile_rows(m, K, x + r * ldx, ldx, panel, b, scratch, NR, pf);
            for (int i = 0; i < m; i++)
                memcpy(out + i * ldy, scratch + i * NR, (size_t)width * sizeof(float));
        }
    }
}

/* y [M, N] (row stride ldy) = x [M, K] (row stride ldx) . W^T + bias (NULL for none), W as
 * packed by kvbatch_pack_linear.
 *
 * Rows go in blocks (ROW_BLOCK_BYTES of x), and each block's (panel, tile) pairs, panel by
 * panel, are cut into one contiguous share per thread: a thread reads its own panels, and
 * at most one panel, at the cut, is shared between two threads tile by tile. Handing out
 * whole panels instead leaves a thread idle whenever the panel count is not a multiple of
 * the thread count (Qwen2-0.5B's 896 columns are 19 panels of 48). The threads do
 * not wait for each other between blocks. */
void kvbatch_linear(const float *x, const int64_t M, const int64_t K, const int64_t ldx,
                    const float *panels, const int64_t N, const float *bias, float *y,
                    const int64_t ldy, const int64_t num_threads) {
    const int64_t count = (N + NR - 1) / NR;
    int64_t block = ROW_BLOCK_BYTES / (K * (int64_t)sizeof(float)) / MR * MR;
    if (block < MR) block = MR;
#pragma omp parallel num_threads(num_threads)
    {
        const int64_t team = omp_get_num_threads(), me = omp_get_thread_num();
        for (int64_t b0 = 0; b0 < M; b0 += block) {
            const int64_t b1 = b0 + block < M ? b0 + block : M;
            const int64_t tiles = (b1 - b0 + MR - 1) / MR, pairs = count * tiles;
            const int64_t end = pairs * (me + 1) / team;
            for (int64_t i = pairs * me / team; i < end;) {
                const int64_t p = i / tiles, t0 = i % tiles;
                const int64_t t1 = end - i < tiles - t0 ? t0 + (end - i) : tiles;
                panel_tiles(x, ldx, b0, b1, t0, t1, K, panels, p, N, bias, y, ldy);
                i += t1 - t0;
            }
        }
    }
}
