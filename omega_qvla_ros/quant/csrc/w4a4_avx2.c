/* W4A4 linear for x86 CPUs with AVX2 and no VNNI (why: quant/cpu_kernel.py).
 *
 * y[m, n] = (sum_k u[m,k] w[n,k] - offset[n]) * wscale[n] * s_m, where
 * u = clamp(round_half_even(z / s_m), -8, 7) + 8 are the activation codes of z as
 * unsigned bytes (0..15), w the int4 weight codes as signed bytes (-8..7) and
 * offset[n] = 8 sum_k w[n,k] (what the unsigned codes' +8 adds; built with the weights).
 * _mm256_maddubs_epi16 multiplies 32 unsigned by 32 signed bytes and adds pairs into
 * 16 int16 lanes: |pair| <= 2 * 15 * 8 = 240, so 128 pairs sum in int16 (30720 <
 * 32767) before they are widened to int32; every sum is exact.
 *
 * Weights are packed as [n / 16 blocks][k / 2 pairs][16 columns][2] bytes (pack_weights
 * in cpu_kernel.py): one 32-byte load holds a k-pair of 16 output columns, and one
 * broadcast of the row's two codes multiplies all of them. A tile is 4 rows x 48
 * columns: 12 accumulators, 3 weight vectors, 1 broadcast (16 ymm registers).
 *
 * One call also rotates the input by the layer's 64-blocks (rotate_rows) and quantizes
 * it, so a layer is one call. Rows are split over OpenMP threads, each taking its rows
 * through every step (torch's own OpenMP runtime when built by cpu_kernel.py, so
 * torch.set_num_threads applies and no second pool competes).
 */
#include <immintrin.h>
#include <omp.h>
#include <stdint.h>
#include <string.h>

#define NB 16
#define MR 4
#define NR 3
#define WIDEN_PAIRS 128

static void quantize_row(const float *zr, int64_t k, int64_t kp, float s, uint8_t *ur) {
    const __m256i lo = _mm256_set1_epi32(-8), hi = _mm256_set1_epi32(7), off = _mm256_set1_epi32(8);
    const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    const __m256 sv = _mm256_set1_ps(s);
    int64_t j = 0;
    for (; j + 16 <= k; j += 16) {  /* round (MXCSR: half to even), clamp, offset, narrow */
        __m256i a = _mm256_cvtps_epi32(_mm256_div_ps(_mm256_loadu_ps(zr + j), sv));
        __m256i b = _mm256_cvtps_epi32(_mm256_div_ps(_mm256_loadu_ps(zr + j + 8), sv));
        a = _mm256_add_epi32(_mm256_min_epi32(_mm256_max_epi32(a, lo), hi), off);
        b = _mm256_add_epi32(_mm256_min_epi32(_mm256_max_epi32(b, lo), hi), off);
        __m256i w16 = _mm256_packs_epi32(a, b);            /* per 128-bit lane: a0..3 b0..3 a4..7 b4..7 */
        __m256i w8 = _mm256_packus_epi16(w16, w16);        /* bytes, same interleave, twice */
        w8 = _mm256_permutevar8x32_epi32(w8, order);       /* a0..3 a4..7 b0..3 b4..7 in the low 128 */
        _mm_storeu_si128((__m128i *)(ur + j), _mm256_castsi256_si128(w8));
    }
    for (; j < k; j++) {
        __m128 v = _mm_div_ss(_mm_set_ss(zr[j]), _mm_set_ss(s));
        int32_t q = _mm_cvtss_si32(v);
        ur[j] = (uint8_t)((q < -8 ? -8 : (q > 7 ? 7 : q)) + 8);
    }
    for (; j < kp; j++) ur[j] = 8;  /* padding (its weights are 0) */
}

/* rows x R for up to RR rows and 32 of a 64-block's output columns: out[r][0..32) =
   sum_j x[r][perm(b*64 + j)] * rb[j][0..32), rb row-major with stride 64. */
#define RR 3
static inline __attribute__((always_inline)) void rot_tile(
        const float *x, int64_t k, const int64_t *perm, int64_t j0, const float *rb, int rows,
        float *out) {
    __m256 acc[RR][4];
    for (int r = 0; r < rows; r++)
        for (int v = 0; v < 4; v++) acc[r][v] = _mm256_setzero_ps();
    for (int j = 0; j < 64; j++) {
        const int64_t col = perm ? perm[j0 + j] : j0 + j;
        __m256 rv[4];
        for (int v = 0; v < 4; v++) rv[v] = _mm256_loadu_ps(rb + j * 64 + v * 8);
        for (int r = 0; r < rows; r++) {
            const __m256 a = _mm256_set1_ps(x[r * k + col]);
            for (int v = 0; v < 4; v++) acc[r][v] = _mm256_fmadd_ps(a, rv[v], acc[r][v]);
        }
    }
    for (int r = 0; r < rows; r++)
        for (int v = 0; v < 4; v++) _mm256_storeu_ps(out + r * k + v * 8, acc[r][v]);
}

/* Rows [i0, i1) of x R into out (same layout as x), R = P · blockdiag(blocks, tail)
   (rotation.py's BlockRotation: x[perm], then each 64-block times its block, blocks
   row-major [in][out]). Blocks outer, rows inner: a block's half stays in L1 while every
   row passes, k * 64 multiply-adds per row instead of a dense rotation's k * k. */
static void rotate_rows(const float *x, int64_t i0, int64_t i1, int64_t k, const int64_t *perm,
                        const float *blocks, int64_t nblk, const float *tail, float *out) {
    for (int64_t b = 0; b < nblk; b++)
        for (int h = 0; h < 2; h++) {
            const float *rb = blocks + b * 64 * 64 + h * 32;
            int64_t i = i0;
            for (; i + RR <= i1; i += RR)
                rot_tile(x + i * k, k, perm, b * 64, rb, RR, out + i * k + b * 64 + h * 32);
            for (; i < i1; i++)
                rot_tile(x + i * k, k, perm, b * 64, rb, 1, out + i * k + b * 64 + h * 32);
        }
    const int64_t r = k - nblk * 64;
    for (int64_t i = i0; r > 0 && i < i1; i++) {
        const float *xr = x + i * k;
        float *ot = out + i * k + nblk * 64;
        for (int64_t c = 0; c < r; c++) ot[c] = 0.0f;
        for (int64_t j = 0; j < r; j++) {
            const float xj = xr[perm ? perm[nblk * 64 + j] : nblk * 64 + j];
            for (int64_t c = 0; c < r; c++) ot[c] += xj * tail[j * r + c];
        }
    }
}

static inline __attribute__((always_inline)) void tile(
        const uint8_t *u, int64_t kp, const int8_t *w, int64_t pairs, int mr, int nr, int32_t *out) {
    __m256i acc[MR][NR];
    int32_t wide[MR][NR * NB];
    memset(wide, 0, sizeof wide);
    for (int64_t p0 = 0; p0 < pairs; p0 += WIDEN_PAIRS) {
        int64_t p1 = p0 + WIDEN_PAIRS < pairs ? p0 + WIDEN_PAIRS : pairs;
        for (int r = 0; r < mr; r++)
            for (int c = 0; c < nr; c++) acc[r][c] = _mm256_setzero_si256();
        for (int64_t p = p0; p < p1; p++) {
            __m256i wv[NR];
            for (int c = 0; c < nr; c++)
                wv[c] = _mm256_loadu_si256((const __m256i *)(w + ((int64_t)c * pairs + p) * 32));
            for (int r = 0; r < mr; r++) {
                int16_t pr;
                memcpy(&pr, u + r * kp + 2 * p, 2);
                const __m256i a = _mm256_set1_epi16(pr);
                for (int c = 0; c < nr; c++)
                    acc[r][c] = _mm256_add_epi16(acc[r][c], _mm256_maddubs_epi16(a, wv[c]));
            }
        }
        for (int r = 0; r < mr; r++)
            for (int c = 0; c < nr; c++) {
                __m256i lo = _mm256_cvtepi16_epi32(_mm256_castsi256_si128(acc[r][c]));
                __m256i hi = _mm256_cvtepi16_epi32(_mm256_extracti128_si256(acc[r][c], 1));
                __m256i *d = (__m256i *)&wide[r][c * NB];
                _mm256_storeu_si256(d, _mm256_add_epi32(_mm256_loadu_si256(d), lo));
                _mm256_storeu_si256(d + 1, _mm256_add_epi32(_mm256_loadu_si256(d + 1), hi));
            }
    }
    memcpy(out, wide, sizeof wide);
}

/* One tile's outputs: y[row][c] = (acc - offset) * wscale * s_row for the tile's
   columns [c0, c1), written to the output that holds column c: outputs ys[0..) hold the
   columns [0, ends[0]), [ends[0], ends[1]), ... as rows of their own width (a group of
   layers that read one input gets one contiguous tensor per layer). */
static void store(const int32_t *acc, int mr, int64_t row0, int64_t c0, int64_t c1, const int32_t *offset,
                  const float *wscale, const float *sm, const int64_t *ends, float *const *ys) {
    for (int r = 0; r < mr; r++) {
        const int32_t *ar = acc + r * NR * NB - c0;
        const __m256 smv = _mm256_set1_ps(sm[r]);
        int sg = 0;
        int64_t c = c0;
        while (c < c1) {
            while (c >= ends[sg]) sg++;
            const int64_t start = sg ? ends[sg - 1] : 0, stop = ends[sg] < c1 ? ends[sg] : c1;
            float *yr = ys[sg] + (row0 + r) * (ends[sg] - start) - start;
            for (; c + 8 <= stop; c += 8) {
                __m256i a = _mm256_sub_epi32(_mm256_loadu_si256((const __m256i *)(ar + c)),
                                             _mm256_loadu_si256((const __m256i *)(offset + c)));
                _mm256_storeu_ps(yr + c, _mm256_mul_ps(_mm256_cvtepi32_ps(a),
                                                       _mm256_mul_ps(_mm256_loadu_ps(wscale + c), smv)));
            }
            for (; c < stop; c++) yr[c] = (float)(ar[c] - offset[c]) * (wscale[c] * sm[r]);
        }
    }
}

/* z [m, k] float32, w packed, offset/wscale [n], s one scale or rs [m] one per row
   (rs != NULL); the outputs ys (see store: nseg of them, ends[nseg - 1] == n), float32;
   work: m * (k rounded up to even) bytes.
   With blocks != NULL the codes are those of z R (rotate_rows into rot_work, m * k
   floats). Each thread takes its own rows through every step (one fork, no barrier):
   rotation, quantization, then the GEMM in chunks of MC rows against one tile of NR
   weight blocks at a time (the tile's weights stay in cache while the chunk passes). */
void w4a4_linear(const float *z, int64_t m, int64_t k, const int64_t *perm, const float *blocks,
                 int64_t nblk, const float *tail, float *rot_work, const int8_t *w, int64_t n,
                 const int32_t *offset, const float *wscale, float s, const float *rs,
                 uint8_t *work, const int64_t *ends, float *const *ys) {
    const int64_t kp = (k + 1) & ~(int64_t)1, pairs = kp / 2, nblocks = (n + NB - 1) / NB;
    const int64_t mc = 64;
#pragma omp parallel if (m * n * k >= 65536 && m >= 2 * MR)
    {
        const int64_t threads = omp_get_num_threads(), me = omp_get_thread_num();
        /* this thread's rows, whole tiles of MR where possible */
        const int64_t tiles = (m + MR - 1) / MR;
        const int64_t first = tiles * me / threads * MR, last_tile = tiles * (me + 1) / threads * MR;
        const int64_t last = last_tile < m ? last_tile : m;
        const float *src = z;
        if (blocks) {
            rotate_rows(z, first, last, k, perm, blocks, nblk, tail, rot_work);
            src = rot_work;
        }
        for (int64_t i = first; i < last; i++) quantize_row(src + i * k, k, kp, rs ? rs[i] : s, work + i * kp);
        int32_t acc[MR][NR * NB];
        float sm[MR];
        for (int64_t c0r = first; c0r < last; c0r += mc)
            for (int64_t b = 0; b < nblocks; b += NR) {
                const int nr = nblocks - b < NR ? (int)(nblocks - b) : NR;
                const int8_t *wb = w + b * pairs * 32;
                const int64_t c0 = b * NB, c1 = c0 + nr * NB < n ? c0 + nr * NB : n;
                for (int64_t i0 = c0r; i0 < last && i0 < c0r + mc; i0 += MR) {
                    const int mr = last - i0 < MR ? (int)(last - i0) : MR;
                    const uint8_t *u = work + i0 * kp;
#define T(A, B) case A * 4 + B: tile(u, kp, wb, pairs, A, B, &acc[0][0]); break
                    switch (mr * 4 + nr) {
                        T(4, 3); T(4, 2); T(4, 1); T(3, 3); T(3, 2); T(3, 1);
                        T(2, 3); T(2, 2); T(2, 1); T(1, 3); T(1, 2); default: T(1, 1);
                    }
#undef T
                    for (int r = 0; r < mr; r++) sm[r] = rs ? rs[i0 + r] : s;
                    store(&acc[0][0], mr, i0, c0, c1, offset, wscale, sm, ends, ys);
                }
            }
    }
}
