/* ekt: matrix product with a GGUF model's own quantised weights, in float32.
 *
 * out[r][n] = sum_b ( S[n][b] * sum_{j in b} q[n][j] * x[r][j]  +  M[n][b] * sum_{j in b} x[r][j] )
 *
 * for weights w[n][j] = S[n][b] * q[n][j] + M[n][b] (q an 8-bit integer, b the block of
 * 16 inputs j belongs to): every GGUF block format ekt packs (Q8_0, Q4_0, Q4_1, Q5_0,
 * Q5_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, IQ4_NL, IQ4_XS) is exactly that, so this is the same product as
 * with the dequantised float32 weights, summed in another order. It reads 1 byte (plus
 * 4 or 8 bytes per 16 weights) where a float32 product reads 4.
 *
 * Layout (written by ekt.generation.qkernel.pack): weights in panels of 16 outputs,
 *   q: int8  [N/16][K][16]      (panel p, input j, output lane)
 *   S: float [N/16][K/16][16]
 *   M: float [N/16][K/16][16]   or NULL when every M is 0
 * x: float [R][K] (row stride K), out: float [R][ldo].
 *
 * Each output is computed by one thread in a fixed order that does not depend on the
 * thread count or on the other rows of x: the result is the same for any batch.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* A vector of 16 float32 lanes (one panel's outputs), in the widest registers there are. */
#if defined(__AVX512F__)
#include <immintrin.h>
#define RT 8 /* rows of x per pass: 2 x 8 accumulators stay in the 32 registers */
typedef struct { __m512 a; } V;
static inline V vzero(void) { return (V){_mm512_setzero_ps()}; }
static inline V vload(const float *p) { return (V){_mm512_loadu_ps(p)}; }
static inline void vstore(float *p, V v) { _mm512_storeu_ps(p, v.a); }
static inline V vwiden(const int8_t *p) {
    return (V){_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)p)))};
}
static inline V vfma(V a, V b, V c) { return (V){_mm512_fmadd_ps(a.a, b.a, c.a)}; }
static inline V vfmas(V a, float b, V c) { return (V){_mm512_fmadd_ps(a.a, _mm512_set1_ps(b), c.a)}; }
#elif defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define RT 4 /* 16 registers: 4 rows x 2 halves x 2 accumulators */
typedef struct { __m256 lo, hi; } V;
static inline V vzero(void) { return (V){_mm256_setzero_ps(), _mm256_setzero_ps()}; }
static inline V vload(const float *p) { return (V){_mm256_loadu_ps(p), _mm256_loadu_ps(p + 8)}; }
static inline void vstore(float *p, V v) { _mm256_storeu_ps(p, v.lo); _mm256_storeu_ps(p + 8, v.hi); }
static inline V vwiden(const int8_t *p) {
    __m128i b = _mm_loadu_si128((const __m128i *)p);
    return (V){_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(b)),
               _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(b, 8)))};
}
static inline V vfma(V a, V b, V c) {
    return (V){_mm256_fmadd_ps(a.lo, b.lo, c.lo), _mm256_fmadd_ps(a.hi, b.hi, c.hi)};
}
static inline V vfmas(V a, float b, V c) {
    __m256 s = _mm256_set1_ps(b);
    return (V){_mm256_fmadd_ps(a.lo, s, c.lo), _mm256_fmadd_ps(a.hi, s, c.hi)};
}
#else /* portable: the compiler vectorises what it can */
#define RT 4
typedef struct { float v[16]; } V;
static inline V vzero(void) { V r; memset(&r, 0, sizeof r); return r; }
static inline V vload(const float *p) { V r; memcpy(r.v, p, sizeof r.v); return r; }
static inline void vstore(float *p, V v) { memcpy(p, v.v, sizeof v.v); }
static inline V vwiden(const int8_t *p) { V r; for (int i = 0; i < 16; i++) r.v[i] = p[i]; return r; }
static inline V vfma(V a, V b, V c) { for (int i = 0; i < 16; i++) c.v[i] += a.v[i] * b.v[i]; return c; }
static inline V vfmas(V a, float b, V c) { for (int i = 0; i < 16; i++) c.v[i] += a.v[i] * b; return c; }
#endif

/* One panel (16 outputs) for rows r0 .. r0+NR-1: NR a compile-time constant, so that the
 * accumulators are registers. */
#define PANEL(NR)                                                                          \
    static void panel_##NR(const float *x, int K, const int8_t *q, const float *S,        \
                           const float *M, const float *xs, int r0, float *out, long ldo,  \
                           long col) {                                                     \
        V acc[NR];                                                                         \
        for (int r = 0; r < NR; r++) acc[r] = vzero();                                     \
        const int nb = K / 16;                                                             \
        const float *x0 = x + (long)r0 * K;                                                \
        for (int b = 0; b < nb; b++) {                                                     \
            V part[NR];                                                                    \
            for (int r = 0; r < NR; r++) part[r] = vzero();                                \
            const int8_t *qb = q + (long)b * 256;                                          \
            for (int j = 0; j < 16; j++) {                                                 \
                V w = vwiden(qb + j * 16);                                                 \
                for (int r = 0; r < NR; r++)                                               \
                    part[r] = vfmas(w, x0[(long)r * K + b * 16 + j], part[r]);             \
            }                                                                              \
            V s = vload(S + (long)b * 16);                                                 \
            for (int r = 0; r < NR; r++) acc[r] = vfma(s, part[r], acc[r]);                \
            if (M) {                                                                       \
                V m = vload(M + (long)b * 16);                                             \
                for (int r = 0; r < NR; r++)                                               \
                    acc[r] = vfmas(m, xs[(long)(r0 + r) * nb + b], acc[r]);                \
            }                                                                              \
        }                                                                                  \
        for (int r = 0; r < NR; r++) vstore(out + (long)(r0 + r) * ldo + col, acc[r]);     \
    }

PANEL(1)
PANEL(2)
PANEL(4)
#if RT == 8
PANEL(8)
#endif

static void panel(const float *x, int K, const int8_t *q, const float *S, const float *M,
                  const float *xs, int r0, int nr, float *out, long ldo, long col) {
    while (nr > 0) { /* the widest pass that fits, then the rest */
        int w = nr >= RT ? RT : nr >= 4 ? 4 : nr >= 2 ? 2 : 1;
        switch (w) {
#if RT == 8
        case 8: panel_8(x, K, q, S, M, xs, r0, out, ldo, col); break;
#endif
        case 4: panel_4(x, K, q, S, M, xs, r0, out, ldo, col); break;
        case 2: panel_2(x, K, q, S, M, xs, r0, out, ldo, col); break;
        default: panel_1(x, K, q, S, M, xs, r0, out, ldo, col); break;
        }
        r0 += w;
        nr -= w;
    }
}

int ekt_qmm_rows_per_pass(void) { return RT; }

/* out[R][ldo] (the first N columns) = x[R][K] @ W^T.  Returns 0, or -1 on bad shapes. */
int ekt_qmm(const float *x, int R, int K, int N, const int8_t *q, const float *S,
            const float *M, float *out, long ldo, int nthreads) {
    if (R < 1 || K < 16 || K % 16 || N < 16 || N % 16 || ldo < N) return -1;
    const int nb = K / 16;
    float *xs = NULL;
    if (M) { /* block sums of x, for the M terms */
        xs = malloc(sizeof(float) * (size_t)R * nb);
        if (!xs) return -1;
        for (int r = 0; r < R; r++)
            for (int b = 0; b < nb; b++) {
                float t = 0;
                for (int j = 0; j < 16; j++) t += x[(long)r * K + b * 16 + j];
                xs[(long)r * nb + b] = t;
            }
    }
    const long panels = N / 16;
    if (nthreads < 1) nthreads = 1;
#pragma omp parallel for schedule(static) num_threads(nthreads)
    for (long p = 0; p < panels; p++) {
        const int8_t *qp = q + p * (long)K * 16;
        const float *Sp = S + p * (long)nb * 16;
        const float *Mp = M ? M + p * (long)nb * 16 : NULL;
        for (int r0 = 0; r0 < R; r0 += RT) {
            int nr = R - r0 < RT ? R - r0 : RT;
            panel(x, K, qp, Sp, Mp, xs, r0, nr, out, ldo, p * 16);
        }
    }
    free(xs);
    return 0;
}
