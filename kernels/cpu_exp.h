/* exp(x) for x <= 0, in arithmetic the compiler vectorizes where libm's expf is a call per
 * element: 2^n * e^r with n = round(x / ln 2) and |r| <= ln 2 / 2, e^r by Cephes' expf
 * polynomial (relative error ~1e-7). Below -87 the result would leave fp32's normal range;
 * it is taken at -87 (~1.6e-38), which vanishes beside any term near 1. */
#ifndef KVBATCH_CPU_EXP_H
#define KVBATCH_CPU_EXP_H
#include <math.h>
#include <stdint.h>
#include <string.h>

static inline float exp_nonpositive(float x) {
    x = x < -87.0f ? -87.0f : x;
    const float n = floorf(x * 1.44269504088896341f + 0.5f);
    const float r = x - n * 0.693359375f + n * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    const float y = p * r * r + r + 1.0f;
    const int32_t bits = ((int32_t)n + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return y * scale;
}
#endif
