/* W4A4 linear for x86 CPUs with AVX2, VNNI or not (why: quant/cpu_kernel.py).
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
 * On CPUs with AVX-512 VNNI the weights may be packed by k-quads instead, [n / 16 blocks]
 * [k / 4 quads][16 columns][4] bytes (pack_weights(quads=True)): one 64-byte zmm load holds
 * a k-quad of 16 columns and one vpdpbusd multiplies it by the row's four codes and adds
 * the four products into each column's int32 lane (tile_vnni): 64 products per
 * instruction instead of 32 per two, and no int16 stretch to widen. Same tile (4 rows x 3
 * blocks, 12 zmm accumulators), same sums, same outputs. CPUs with AVX-VNNI and no
 * AVX-512 take the same layout in 256-bit halves (tile_avxvnni).
 *
 * One call also rotates the input by the layer's 64-blocks (rotate_rows) and quantizes
 * it, so a layer is one call. OpenMP threads share a call by rows (by_rows: each takes
 * its rows through every step, 64 rows at a time) or, for a few tens of rows on large
 * weights, by columns (by_columns), in scratch of their own kept between calls (torch's
 * own OpenMP runtime when built by cpu_kernel.py, so torch.set_num_threads applies and
 * no second pool competes).
 */
#include <immintrin.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
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

/* o[r][0..16) = sum_j in[r][j] * rq[j][0..16) for RT rows of 64 inputs (in, stride 64)
   and 16 of a 64-block's output columns (rq row-major, stride 64): twelve named
   accumulators, two block vectors and a broadcast, so that twelve independent
   multiply-adds are in flight per input (two FMA units of latency 4 need eight).
   Not inlined, so that its registers are allocated on their own (see tile). */
#define RT 6
static __attribute__((noinline)) void rot_quarter(const float *in, const float *rq, float *o) {
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0,
           b0 = a0, b1 = a0, b2 = a0, b3 = a0, b4 = a0, b5 = a0;
    for (int j = 0; j < 64; j++) {
        const __m256 r0 = _mm256_loadu_ps(rq + j * 64), r1 = _mm256_loadu_ps(rq + j * 64 + 8);
        __m256 x;
#define ROW(R) x = _mm256_broadcast_ss(in + R * 64 + j); \
        a##R = _mm256_fmadd_ps(x, r0, a##R); b##R = _mm256_fmadd_ps(x, r1, b##R);
        ROW(0) ROW(1) ROW(2) ROW(3) ROW(4) ROW(5)
#undef ROW
    }
#define OUT(R) _mm256_storeu_ps(o + R * 64, a##R); _mm256_storeu_ps(o + R * 64 + 8, b##R);
    OUT(0) OUT(1) OUT(2) OUT(3) OUT(4) OUT(5)
#undef OUT
}

/* Rows [i0, i1) of x R into out (rows of k from out[0]), R = P · blockdiag(blocks,
   tail) (rotation.py's BlockRotation: x[perm], then each 64-block times its block,
   blocks row-major [in][out]). The permuted rows are gathered into out first (one row's
   random reads stay in cache), then blocks outer, RT rows at a time inner, their 64
   inputs copied aside so that out is rotated in place: a block stays in L1 while the
   rows pass, each row read in contiguous 256-byte pieces; k * 64 multiply-adds per row
   instead of a dense rotation's k * k. */
static void rotate_rows(const float *x, int64_t i0, int64_t i1, int64_t k, const int64_t *perm,
                        const float *blocks, int64_t nblk, const float *tail, float *out) {
    const int64_t r = k - nblk * 64, rows = i1 - i0;
    const float *src = x + i0 * k;
    float in[RT * 64], o[RT * 64], tin[64];
    if (perm) {
        for (int64_t i = 0; i < rows; i++)
            for (int64_t j = 0; j < k; j++) out[i * k + j] = src[i * k + perm[j]];
        src = out;
    }
    for (int64_t b = 0; b < nblk; b++)
        for (int64_t i = 0; i < rows; i += RT) {
            const int64_t n = rows - i < RT ? rows - i : RT;  /* a short last group repeats its first row */
            for (int64_t t = 0; t < RT; t++)
                memcpy(in + t * 64, src + (i + (t < n ? t : 0)) * k + b * 64, 64 * sizeof(float));
            for (int q = 0; q < 4; q++) rot_quarter(in, blocks + b * 64 * 64 + q * 16, o + q * 16);
            for (int64_t t = 0; t < n; t++) memcpy(out + (i + t) * k + b * 64, o + t * 64, 64 * sizeof(float));
        }
    for (int64_t i = 0; r > 0 && i < rows; i++) {  /* the tail (r < 64 features) */
        memcpy(tin, src + i * k + nblk * 64, r * sizeof(float));
        float *ot = out + i * k + nblk * 64;
        for (int64_t c = 0; c < r; c++) ot[c] = 0.0f;
        for (int64_t j = 0; j < r; j++)
            for (int64_t c = 0; c < r; c++) ot[c] += tin[j] * tail[j * r + c];
    }
}

/* Per-thread scratch, kept between calls and grown to the largest asked for: a chunk's
   activation codes, rotated rows and unpacked int4 weights (a few hundred KB per thread;
   a fresh buffer per call cost its page faults, more than the rotation itself at 800 x
   16384). */
static _Thread_local void *scratch_codes, *scratch_rot, *scratch_w;
static _Thread_local size_t scratch_codes_size, scratch_rot_size, scratch_w_size;
/* by_columns: the codes of all of a call's rows, in the calling thread's scratch */
static _Thread_local void *scratch_all;
static _Thread_local size_t scratch_all_size;

static void *scratch(void **p, size_t *size, size_t need) {
    if (need > *size) {
        free(*p);
        *p = aligned_alloc(64, (need + 63) / 64 * 64);
        *size = *p ? need : 0;
    }
    return *p;
}

/* out[r][c * 16 + j] = sum over the k-pairs of row u[r]'s codes times weight block w[c]
   (4 rows x 3 blocks of 16 columns; a tile at the matrix's edge repeats a row or a block
   and ignores that result). The twelve accumulators are named so that they stay in the
   16 ymm registers (12 accumulators, 3 weight vectors, 1 broadcast): the function is not
   inlined and the file is built at -O2 (cpu_kernel.FLAGS); gcc 12 at -O3, inlined into
   the caller, or with the accumulators in an array, spilled some of them to the stack, a
   store and a reload per multiply-add (1.7x slower). */
static __attribute__((noinline)) void tile(const uint8_t *const *u, const int8_t *const *w, int64_t pairs, int32_t *out) {
    const int8_t *w0 = w[0], *w1 = w[1], *w2 = w[2];
    const uint8_t *u0 = u[0], *u1 = u[1], *u2 = u[2], *u3 = u[3];
    __m256i wide[MR * NR * 2];
    for (int i = 0; i < MR * NR * 2; i++) wide[i] = _mm256_setzero_si256();
    for (int64_t p0 = 0; p0 < pairs; p0 += WIDEN_PAIRS) {
        const int64_t p1 = p0 + WIDEN_PAIRS < pairs ? p0 + WIDEN_PAIRS : pairs;
        __m256i c00 = _mm256_setzero_si256(), c01 = c00, c02 = c00, c10 = c00, c11 = c00, c12 = c00,
                c20 = c00, c21 = c00, c22 = c00, c30 = c00, c31 = c00, c32 = c00;
        for (int64_t p = p0; p < p1; p++) {
            const __m256i x0 = _mm256_loadu_si256((const __m256i *)(w0 + p * 32));
            const __m256i x1 = _mm256_loadu_si256((const __m256i *)(w1 + p * 32));
            const __m256i x2 = _mm256_loadu_si256((const __m256i *)(w2 + p * 32));
            int16_t pr;
            __m256i a;
#define ROW(R) memcpy(&pr, u##R + 2 * p, 2); a = _mm256_set1_epi16(pr);          \
            c##R##0 = _mm256_add_epi16(c##R##0, _mm256_maddubs_epi16(a, x0));   \
            c##R##1 = _mm256_add_epi16(c##R##1, _mm256_maddubs_epi16(a, x1));   \
            c##R##2 = _mm256_add_epi16(c##R##2, _mm256_maddubs_epi16(a, x2));
            ROW(0) ROW(1) ROW(2) ROW(3)
#undef ROW
        }
        const __m256i cs[MR * NR] = {c00, c01, c02, c10, c11, c12, c20, c21, c22, c30, c31, c32};
        for (int i = 0; i < MR * NR; i++) {  /* widen the int16 sums into int32 */
            wide[2 * i] = _mm256_add_epi32(wide[2 * i], _mm256_cvtepi16_epi32(_mm256_castsi256_si128(cs[i])));
            wide[2 * i + 1] = _mm256_add_epi32(wide[2 * i + 1],
                                               _mm256_cvtepi16_epi32(_mm256_extracti128_si256(cs[i], 1)));
        }
    }
    for (int i = 0; i < MR * NR * 2; i++) _mm256_storeu_si256((__m256i *)(out + 8 * i), wide[i]);
}

#if defined(__clang__) || (defined(__GNUC__) && __GNUC__ >= 9)
#define W4A4_VNNI512 1
/* tile() on weights packed by k-quads, with AVX-512 VNNI (compiled for it whatever the
   file's flags; called only where the CPU has it, cpu_kernel.vnni()): acc[r][c * 16 + j]
   += sum over the quads of row u[r]'s four codes times column j's four weights, in int32
   (|sum| <= 15 * 8 * k: no stretch to widen). */
static __attribute__((noinline, target("avx512f,avx512vnni"))) void tile_vnni(
        const uint8_t *const *u, const int8_t *const *w, int64_t quads, int32_t *out) {
    const int8_t *w0 = w[0], *w1 = w[1], *w2 = w[2];
    const uint8_t *u0 = u[0], *u1 = u[1], *u2 = u[2], *u3 = u[3];
    __m512i c00 = _mm512_setzero_si512(), c01 = c00, c02 = c00, c10 = c00, c11 = c00, c12 = c00,
            c20 = c00, c21 = c00, c22 = c00, c30 = c00, c31 = c00, c32 = c00;
    for (int64_t p = 0; p < quads; p++) {
        const __m512i x0 = _mm512_loadu_si512((const void *)(w0 + p * 64));
        const __m512i x1 = _mm512_loadu_si512((const void *)(w1 + p * 64));
        const __m512i x2 = _mm512_loadu_si512((const void *)(w2 + p * 64));
        int32_t q;
        __m512i a;
#define ROW(R) memcpy(&q, u##R + 4 * p, 4); a = _mm512_set1_epi32(q);      \
        c##R##0 = _mm512_dpbusd_epi32(c##R##0, a, x0);                     \
        c##R##1 = _mm512_dpbusd_epi32(c##R##1, a, x1);                     \
        c##R##2 = _mm512_dpbusd_epi32(c##R##2, a, x2);
        ROW(0) ROW(1) ROW(2) ROW(3)
#undef ROW
    }
#define OUT(R) _mm512_storeu_si512((void *)(out + (R * NR + 0) * NB), c##R##0); \
    _mm512_storeu_si512((void *)(out + (R * NR + 1) * NB), c##R##1);            \
    _mm512_storeu_si512((void *)(out + (R * NR + 2) * NB), c##R##2);
    OUT(0) OUT(1) OUT(2) OUT(3)
#undef OUT
}
#else
#define W4A4_VNNI512 0
#endif

#if (defined(__clang__) && __clang_major__ >= 12) || (!defined(__clang__) && defined(__GNUC__) && __GNUC__ >= 11)
#define W4A4_AVXVNNI 1
/* tile_vnni for CPUs with AVX-VNNI and no AVX-512 (Intel client cores since Alder Lake):
   the same sums with the VEX vpdpbusd on 256-bit halves of each k-quad (columns 0-7 and
   8-15 of a block), one block at a time — 8 accumulators, 2 weight vectors and a
   broadcast fit the 16 ymm registers that 12 accumulators per block pair would not. */
static __attribute__((noinline, target("avx2,avxvnni"))) void tile_avxvnni(
        const uint8_t *const *u, const int8_t *const *w, int64_t quads, int32_t *out) {
    const uint8_t *u0 = u[0], *u1 = u[1], *u2 = u[2], *u3 = u[3];
    for (int c = 0; c < NR; c++) {
        const int8_t *wc = w[c];
        __m256i l0 = _mm256_setzero_si256(), h0 = l0, l1 = l0, h1 = l0, l2 = l0, h2 = l0, l3 = l0, h3 = l0;
        for (int64_t p = 0; p < quads; p++) {
            const __m256i xl = _mm256_loadu_si256((const __m256i *)(wc + p * 64));
            const __m256i xh = _mm256_loadu_si256((const __m256i *)(wc + p * 64 + 32));
            int32_t q;
            __m256i a;
#define ROW(R) memcpy(&q, u##R + 4 * p, 4); a = _mm256_set1_epi32(q); \
            l##R = _mm256_dpbusd_avx_epi32(l##R, a, xl); h##R = _mm256_dpbusd_avx_epi32(h##R, a, xh);
            ROW(0) ROW(1) ROW(2) ROW(3)
#undef ROW
        }
#define OUT(R) _mm256_storeu_si256((__m256i *)(out + (R * NR + c) * NB), l##R); \
        _mm256_storeu_si256((__m256i *)(out + (R * NR + c) * NB + 8), h##R);
        OUT(0) OUT(1) OUT(2) OUT(3)
#undef OUT
    }
}
#else
#define W4A4_AVXVNNI 0
#endif

/* Which VNNI tiles this build has, as bits: 1 tile_vnni (AVX-512), 2 tile_avxvnni (a
   compiler without the instruction set leaves its tile out). */
int w4a4_vnni_built(void) { return W4A4_VNNI512 | (W4A4_AVXVNNI << 1); }

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

/* NR (nr real) weight blocks in the int8 layout the tile reads (block c at out + c *
   pairs * 32) from their int4 form (cpu_kernel.pack_weights(nibbles=True)): 32 bytes hold
   64 bytes of the int8 layout, the first 32 in the low nibbles, codes + 8 — two k-pairs
   of one 16-column block, or with quads one k-quad (the int4 codes held at the pack's
   size, unpacked once per chunk of rows and tile). */
static void unpack_blocks(const uint8_t *wn, int64_t pairs, int nr, int8_t *out) {
    const int64_t quads = (pairs + 1) / 2;
    const __m256i mask = _mm256_set1_epi8(0x0F), eight = _mm256_set1_epi8(8);
    for (int c = 0; c < nr; c++) {
        const uint8_t *src = wn + c * quads * 32;
        int8_t *dst = out + c * pairs * 32;
        for (int64_t i = 0; i < quads; i++) {
            const __m256i v = _mm256_loadu_si256((const __m256i *)(src + i * 32));
            _mm256_storeu_si256((__m256i *)(dst + 2 * i * 32), _mm256_sub_epi8(_mm256_and_si256(v, mask), eight));
            if (2 * i + 1 < pairs)
                _mm256_storeu_si256((__m256i *)(dst + (2 * i + 1) * 32),
                                    _mm256_sub_epi8(_mm256_and_si256(_mm256_srli_epi16(v, 4), mask), eight));
        }
    }
}

/* One call's arguments in one struct: a layer's constant ones are set once in Python
   (cpu_kernel.Plan, whose _Args mirrors this) and copied per call with its input and
   outputs, so that a call converts one pointer instead of fifteen arguments (ctypes:
   ~0.25 us each). */
typedef struct {
    const float *z;
    int64_t m, k;
    const int64_t *perm;
    const float *blocks;
    int64_t nblk;
    const float *tail;
    const int8_t *w;
    int64_t nibbles;
    int64_t quads;
    int64_t n;
    const int32_t *offset;
    const float *wscale;
    const float *rs;
    const int64_t *ends;
    float *const *ys;
    float s;
    int64_t share;
} w4a4_args;

#define MC 64
#define NIB_CODES (8 << 20)
#define ROT_ROWS (2 * RT)
/* Calls of at most this many tiles of rows per thread, on at least this many weights,
   split the columns instead (by_columns). Measured (2 threads, Zen 4, with a rotation):
   columns about 10% faster at 49-50 rows on the published expert/DiT weights as int4
   codes (median of bench/kernel_share.py's runs; 4% on int8), up to 35% at 17 rows,
   about even at 64-256;
   10-25% slower on weights under 1024 x 1024 (the barrier and few column groups weigh
   more than reading the weights twice). */
#define COLUMN_TILES_PER_THREAD 8
#define COLUMN_MIN_WEIGHTS (1 << 20)

/* One call's shape, derived once: codes per row padded to whole k-pairs (k-quads), the
   16-column blocks, and which tile multiplies (1 tile_vnni, 2 tile_avxvnni, 0 tile). */
typedef struct {
    int64_t kp, pairs, nblocks;
    int quads, nibbles;
} shape;

/* Rows [r0, r1) of z as activation codes, row r at codes + (r - r0) * kp: rotated first
   (ROT_ROWS rows at a time, into rot) where the layer has a rotation. */
static void make_codes(const w4a4_args *a, const shape *sh, int64_t r0, int64_t r1, float *rot, uint8_t *codes) {
    for (int64_t i = r0; i < r1; i += ROT_ROWS) {
        const int64_t i1 = i + ROT_ROWS < r1 ? i + ROT_ROWS : r1;
        const float *src = a->z + i * a->k;
        if (a->blocks) {
            rotate_rows(a->z, i, i1, a->k, a->perm, a->blocks, a->nblk, a->tail, rot);
            src = rot;
        }
        for (int64_t j = i; j < i1; j++)
            quantize_row(src + (j - i) * a->k, a->k, sh->kp, a->rs ? a->rs[j] : a->s, codes + (j - r0) * sh->kp);
    }
}

/* The outputs of rows [r0, r1) (their codes from codes, row r0 first) and of the
   16-column blocks [b0, b1), NR blocks at a time: int4 weights unpacked into wscr once
   per NR blocks, then every MR rows against them (the tile's weights stay in cache while
   the rows pass). */
static void multiply(const w4a4_args *a, const shape *sh, const uint8_t *codes, int64_t r0, int64_t r1,
                     int64_t b0, int64_t b1, int8_t *wscr) {
    const int64_t pairs = sh->pairs, kp = sh->kp, n = a->n;
    int32_t acc[MR][NR * NB];
    float sm[MR];
    for (int64_t b = b0; b < b1; b += NR) {
        const int nr = b1 - b < NR ? (int)(b1 - b) : NR;
        const int8_t *wb = a->w + b * pairs * 32;
        if (sh->nibbles) {
            unpack_blocks((const uint8_t *)a->w + b * ((pairs + 1) / 2) * 32, pairs, nr, wscr);
            wb = wscr;
        }
        const int64_t c0 = b * NB, c1 = c0 + nr * NB < n ? c0 + nr * NB : n;
        for (int64_t i0 = r0; i0 < r1; i0 += MR) {
            const int mr = r1 - i0 < MR ? (int)(r1 - i0) : MR;
            const uint8_t *u[MR];
            const int8_t *wt[NR];
            for (int r = 0; r < MR; r++) u[r] = codes + (i0 - r0 + (r < mr ? r : 0)) * kp;
            for (int c = 0; c < NR; c++) wt[c] = wb + (c < nr ? c : 0) * pairs * 32;
#if W4A4_VNNI512
            if (sh->quads == 1)
                tile_vnni(u, wt, kp / 4, &acc[0][0]);
            else
#endif
#if W4A4_AVXVNNI
            if (sh->quads == 2)
                tile_avxvnni(u, wt, kp / 4, &acc[0][0]);
            else
#endif
                tile(u, wt, pairs, &acc[0][0]);
            for (int r = 0; r < mr; r++) sm[r] = a->rs ? a->rs[i0 + r] : a->s;
            store(&acc[0][0], mr, i0, c0, c1, a->offset, a->wscale, sm, a->ends, a->ys);
        }
    }
}

/* Threads take rows: each its own rows through every step (one fork, no barrier), MC
   rows at a time (more with int4 weights). Each thread reads (and with int4 unpacks)
   every weight: right for many rows, where the weights' cost is shared by many tiles. */
static int by_rows(const w4a4_args *a, const shape *sh, int parallel) {
    const int64_t m = a->m, kp = sh->kp;
    int failed = 0;
#pragma omp parallel if (parallel) reduction(| : failed)
    {
        const int64_t threads = omp_get_num_threads(), me = omp_get_thread_num();
        /* this thread's rows, whole tiles of MR where possible */
        const int64_t tiles = (m + MR - 1) / MR;
        const int64_t first = tiles * me / threads * MR, last_tile = tiles * (me + 1) / threads * MR;
        const int64_t last = last_tile < m ? last_tile : m;
        /* int4 weights are unpacked once per chunk and tile: their chunks are as many rows
           as NIB_CODES bytes of codes hold (a 16384-deep layer unpacked per 64 rows ran 1.4x
           slower than on int8 weights) */
        int64_t mc = sh->nibbles ? NIB_CODES / kp / MR * MR : MC;
        mc = mc < MC ? MC : mc;
        const int64_t own = (last - first + MR - 1) / MR * MR;  /* no more scratch than the rows */
        mc = sh->nibbles && mc > own ? own : mc;
        uint8_t *codes = last > first ? scratch(&scratch_codes, &scratch_codes_size, mc * kp) : NULL;
        float *rot = a->blocks && last > first ? scratch(&scratch_rot, &scratch_rot_size, ROT_ROWS * a->k * sizeof(float)) : NULL;
        int8_t *wscr = sh->nibbles && last > first ? scratch(&scratch_w, &scratch_w_size, NR * sh->pairs * 32) : NULL;
        if (last > first && (!codes || (a->blocks && !rot) || (sh->nibbles && !wscr))) failed = 1;
        for (int64_t c0r = first; !failed && c0r < last; c0r += mc) {
            const int64_t c1r = c0r + mc < last ? c0r + mc : last;
            make_codes(a, sh, c0r, c1r, rot, codes);
            multiply(a, sh, codes, c0r, c1r, 0, sh->nblocks, wscr);
        }
    }
    return failed;
}

/* Threads take columns, for few rows (tens of tokens: a denoising step, an action
   head): the threads first make the codes of all rows together (each a share of the
   rows, into the calling thread's scratch), then each multiplies every row by its own
   share of the weight blocks. Splitting the rows instead would have each thread read and
   unpack every weight for a few tiles of rows, and leave a thread with one tile more
   than another (13 tiles on 2 threads: 7 and 6). */
static int by_columns(const w4a4_args *a, const shape *sh) {
    const int64_t m = a->m, kp = sh->kp, groups = (sh->nblocks + NR - 1) / NR;
    uint8_t *codes = scratch(&scratch_all, &scratch_all_size, m * kp);
    if (!codes) return 1;
    int failed = 0;
#pragma omp parallel reduction(| : failed)
    {
        const int64_t threads = omp_get_num_threads(), me = omp_get_thread_num();
        const int64_t r0 = m * me / threads, r1 = m * (me + 1) / threads;
        const int64_t b0 = groups * me / threads * NR, b1g = groups * (me + 1) / threads * NR;
        const int64_t b1 = b1g < sh->nblocks ? b1g : sh->nblocks;
        float *rot = a->blocks && r1 > r0 ? scratch(&scratch_rot, &scratch_rot_size, ROT_ROWS * a->k * sizeof(float)) : NULL;
        int8_t *wscr = sh->nibbles && b1 > b0 ? scratch(&scratch_w, &scratch_w_size, NR * sh->pairs * 32) : NULL;
        failed = (a->blocks && r1 > r0 && !rot) || (sh->nibbles && b1 > b0 && !wscr);
        if (!failed) make_codes(a, sh, r0, r1, rot, codes + r0 * kp);
#pragma omp barrier
        /* every thread's rows are codes now (a thread that could not make its share
           flags the call: the outputs are then undefined) */
        if (!failed) multiply(a, sh, codes, 0, m, b0, b1, wscr);
    }
    return failed;
}

/* z [m, k] float32, w packed (int8, or int4 with nibbles != 0; by k-quads for a VNNI
   tile with quads != 0, else by k-pairs), offset/wscale [n], s one
   scale or rs [m] one per row (rs != NULL); the outputs ys (see store: nseg of them,
   ends[nseg - 1] == n), float32. With blocks != NULL the codes are those of z R.
   share: how the threads share the work, 0 picked here (by_columns for at most
   COLUMN_TILES_PER_THREAD tiles of rows per thread, at least COLUMN_MIN_WEIGHTS weights
   and four groups of NR weight blocks per thread, else by_rows), 1 by_rows, 2 by_columns
   (benchmarks and tests compare them: the outputs are the same). Returns 0, -1 when a
   thread's scratch could not be allocated (outputs undefined), or -2 when the weights are
   by k-quads for a VNNI tile this build lacks (nothing computed). */
int w4a4_linear_args(const w4a4_args *a) {
    const int64_t m = a->m, k = a->k, n = a->n;
    if (m == 0) return 0;
    shape sh;
    /* quads: 1 tile_vnni, 2 tile_avxvnni (the weights by k-quads), 0 tile (by k-pairs) */
    sh.nibbles = a->nibbles != 0;
    sh.quads = (a->quads == 1 && W4A4_VNNI512) ? 1 : (a->quads == 2 && W4A4_AVXVNNI) ? 2 : 0;
    if (a->quads && !sh.quads) return -2; /* k-quad weights for a tile this build lacks */
    sh.kp = sh.quads ? (k + 3) & ~(int64_t)3 : (k + 1) & ~(int64_t)1;
    sh.pairs = sh.kp / 2;
    sh.nblocks = (n + NB - 1) / NB;
    const int64_t threads = omp_get_max_threads(), tiles = (m + MR - 1) / MR,
                  groups = (sh.nblocks + NR - 1) / NR;
    const int big = m * n * k >= 65536;
    const int columns = a->share == 2 ||
                  (a->share == 0 && threads > 1 && tiles <= COLUMN_TILES_PER_THREAD * threads &&
                   n * sh.kp >= COLUMN_MIN_WEIGHTS && groups >= 4 * threads);
    return (columns ? by_columns(a, &sh) : by_rows(a, &sh, big && m >= 2 * MR)) ? -1 : 0;
}
