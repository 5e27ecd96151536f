/* Part of the _jpeg_region extension: the resize passes on SSSE3 and AVX2, chosen at run time by
 * _jpeg_resize.c. Each computes the same integer sums as the SSE2 / plain C passes, so the same bytes. */
#include <string.h>

#include "_jpeg_resize.h"

#ifdef HAVE_SIMD_ROWS
#include <immintrin.h>

/* horizontal_row for RGB, 4 taps an iteration: one 16-byte load, two byte shuffles into (pixel t, pixel t+1)
 * int16 pairs per channel, two multiply-adds. The same integer sums as horizontal_row (the taps past `count`
 * are zero), so the same bytes, about twice as fast. Reads up to 13 bytes past the last tap's pixel. */
__attribute__((target("ssse3"))) void horizontal_row_rgb_ssse3(const uint8_t *in, uint8_t *out, int out_width,
                                                                const Weights *w) {
    const __m128i pair01 = _mm_setr_epi8(0, -1, 3, -1, 1, -1, 4, -1, 2, -1, 5, -1, -1, -1, -1, -1);
    const __m128i pair23 = _mm_setr_epi8(6, -1, 9, -1, 7, -1, 10, -1, 8, -1, 11, -1, -1, -1, -1, -1);
    int xx, t;
    for (xx = 0; xx < out_width; xx++) {
        const int16_t *k = w->taps + (size_t)xx * w->stride;
        const uint8_t *p = in + (size_t)w->first[xx] * 3;
        int n = w->count[xx];
        __m128i acc = _mm_set1_epi32(1 << (WEIGHT_BITS - 1));
        for (t = 0; t < n; t += 4) {
            __m128i x = _mm_loadu_si128((const __m128i *)(p + t * 3));
            __m128i kv = _mm_loadl_epi64((const __m128i *)(k + t));
            acc = _mm_add_epi32(acc, _mm_madd_epi16(_mm_shuffle_epi8(x, pair01), _mm_shuffle_epi32(kv, 0x00)));
            acc = _mm_add_epi32(acc, _mm_madd_epi16(_mm_shuffle_epi8(x, pair23), _mm_shuffle_epi32(kv, 0x55)));
        }
        acc = _mm_srai_epi32(acc, WEIGHT_BITS);
        acc = _mm_packs_epi32(acc, acc);
        acc = _mm_packus_epi16(acc, acc);
        uint32_t rgbx = (uint32_t)_mm_cvtsi128_si32(acc);
        memcpy(out + xx * 3, &rgbx, 4); /* the 4th byte: the next pixel's, or the padding after the row */
    }
}

/* The same for two output pixels at once, one in each 128-bit lane (AVX2 shuffles and multiply-adds work
 * lane by lane): the same sums again, about a third faster. The pair runs to the longer of its two tap
 * counts; the other pixel's taps past its count are zero, and its pixels lie inside the row (first[] grows). */
__attribute__((target("avx2"))) void horizontal_row_rgb_avx2(const uint8_t *in, uint8_t *out, int out_width,
                                                              const Weights *w) {
    const __m256i pair01 =
        _mm256_broadcastsi128_si256(_mm_setr_epi8(0, -1, 3, -1, 1, -1, 4, -1, 2, -1, 5, -1, -1, -1, -1, -1));
    const __m256i pair23 =
        _mm256_broadcastsi128_si256(_mm_setr_epi8(6, -1, 9, -1, 7, -1, 10, -1, 8, -1, 11, -1, -1, -1, -1, -1));
    int xx, t;
    for (xx = 0; xx + 1 < out_width; xx += 2) {
        const int16_t *ka = w->taps + (size_t)xx * w->stride, *kb = ka + w->stride;
        const uint8_t *pa = in + (size_t)w->first[xx] * 3, *pb = in + (size_t)w->first[xx + 1] * 3;
        int n = w->count[xx] > w->count[xx + 1] ? w->count[xx] : w->count[xx + 1];
        __m256i acc = _mm256_set1_epi32(1 << (WEIGHT_BITS - 1));
        for (t = 0; t < n; t += 4) {
            __m256i x = _mm256_inserti128_si256(_mm256_castsi128_si256(_mm_loadu_si128((const __m128i *)(pa + t * 3))),
                                                _mm_loadu_si128((const __m128i *)(pb + t * 3)), 1);
            __m256i kv = _mm256_inserti128_si256(_mm256_castsi128_si256(_mm_loadl_epi64((const __m128i *)(ka + t))),
                                                 _mm_loadl_epi64((const __m128i *)(kb + t)), 1);
            __m256i k01 = _mm256_shuffle_epi32(kv, 0x00), k23 = _mm256_shuffle_epi32(kv, 0x55);
            acc = _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_shuffle_epi8(x, pair01), k01));
            acc = _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_shuffle_epi8(x, pair23), k23));
        }
        acc = _mm256_srai_epi32(acc, WEIGHT_BITS);
        acc = _mm256_packs_epi32(acc, acc);
        acc = _mm256_packus_epi16(acc, acc);
        uint32_t a = (uint32_t)_mm256_extract_epi32(acc, 0), b = (uint32_t)_mm256_extract_epi32(acc, 4);
        memcpy(out + xx * 3, &a, 4);
        memcpy(out + xx * 3 + 3, &b, 4); /* its 4th byte: the next pixel's, or the padding after the row */
    }
    if (xx < out_width) { /* an odd width: the last pixel alone */
        Weights one = *w;
        one.first += xx;
        one.count += xx;
        one.taps += (size_t)xx * w->stride;
        horizontal_row_rgb_ssse3(in, out + xx * 3, 1, &one);
    }
}

int has_ssse3(void) {
    static int known = -1;
    if (known < 0) known = __builtin_cpu_supports("ssse3") ? 1 : 0;
    return known;
}

int has_avx2(void) {
    static int known = -1;
    if (known < 0) known = __builtin_cpu_supports("avx2") ? 1 : 0;
    return known;
}

#define MAX_PAIRS 8

/* vertical_row 32 bytes a step (AVX2 unpacks and multiply-adds work lane by lane, and the lanes come back
 * in order), with the weights broadcast once a row; the rest of the row by vertical_row. The same sums. */
__attribute__((target("avx2"))) void vertical_row_avx2(const uint8_t *in, size_t stride, int n, const int16_t *k,
                                                       uint8_t *out, int length) {
    __m256i weights[MAX_PAIRS];
    const __m256i zero = _mm256_setzero_si256();
    int i = 0, p, pairs = (n + 1) / 2;
    if (pairs > MAX_PAIRS) {
        vertical_row(in, stride, n, k, out, length);
        return;
    }
    for (p = 0; p < pairs; p++) {
        int16_t k1 = 2 * p + 1 < n ? k[2 * p + 1] : 0;
        weights[p] = _mm256_set1_epi32((int)(((uint32_t)(uint16_t)k1 << 16) | (uint16_t)k[2 * p]));
    }
    for (; i + 32 <= length; i += 32) {
        __m256i acc0 = _mm256_set1_epi32(1 << (WEIGHT_BITS - 1)), acc1 = acc0, acc2 = acc0, acc3 = acc0;
        for (p = 0; p < pairs; p++) {
            const uint8_t *row = in + (size_t)2 * p * stride + i;
            __m256i a = _mm256_loadu_si256((const __m256i *)row);
            __m256i b = 2 * p + 1 < n ? _mm256_loadu_si256((const __m256i *)(row + stride)) : zero;
            __m256i lo = _mm256_unpacklo_epi8(a, b), hi = _mm256_unpackhi_epi8(a, b);
            acc0 = _mm256_add_epi32(acc0, _mm256_madd_epi16(_mm256_unpacklo_epi8(lo, zero), weights[p]));
            acc1 = _mm256_add_epi32(acc1, _mm256_madd_epi16(_mm256_unpackhi_epi8(lo, zero), weights[p]));
            acc2 = _mm256_add_epi32(acc2, _mm256_madd_epi16(_mm256_unpacklo_epi8(hi, zero), weights[p]));
            acc3 = _mm256_add_epi32(acc3, _mm256_madd_epi16(_mm256_unpackhi_epi8(hi, zero), weights[p]));
        }
        acc0 = _mm256_packs_epi32(_mm256_srai_epi32(acc0, WEIGHT_BITS), _mm256_srai_epi32(acc1, WEIGHT_BITS));
        acc2 = _mm256_packs_epi32(_mm256_srai_epi32(acc2, WEIGHT_BITS), _mm256_srai_epi32(acc3, WEIGHT_BITS));
        _mm256_storeu_si256((__m256i *)(out + i), _mm256_packus_epi16(acc0, acc2));
    }
    if (i < length) vertical_row(in + i, stride, n, k, out + i, length - i);
}
#endif
