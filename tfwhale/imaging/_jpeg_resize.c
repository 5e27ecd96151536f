/* Part of the _jpeg_region extension: a fast version of PIL's antialiased bilinear resize. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdlib.h>
#include <string.h>

#include "_jpeg_region.h"

/* resize(pixels, width, height, components, left, top, right, bottom, out_width, out_height) -> bytes
 *
 * PIL's antialiased bilinear resize (Image.resize(..., BILINEAR, box=...)): a triangle filter widened by the
 * shrink factor, weights computed and normalised the same way, horizontal pass then vertical pass with an
 * 8-bit intermediate. Weights are 14-bit integers (PIL keeps 22 bits), so a pixel can come out one level
 * apart; in exchange both passes run on SSE2 (every x86-64 CPU), several times faster than PIL's, and on
 * SSSE3 / AVX2 where the CPU has them (checked at run time; the same integer sums, so the same bytes).
 */
#if defined(__SSE2__)
#include <emmintrin.h>
#endif
#include <math.h>
#include <stdint.h>

#include "_jpeg_resize.h"

static void free_weights(Weights *w) {
    free(w->first);
    free(w->count);
    free(w->taps);
}

static int triangle_weights(Weights *w, int in_size, double in0, double in1, int out_size) {
    double scale = (in1 - in0) / out_size, filterscale = scale < 1.0 ? 1.0 : scale;
    double support = filterscale, *exact;
    int xx, x;
    w->width = (int)ceil(support) * 2 + 1;
    w->stride = (w->width + 3) & ~3;
    w->first = malloc(sizeof(int) * out_size);
    w->count = malloc(sizeof(int) * out_size);
    w->taps = calloc((size_t)out_size * w->stride, sizeof(int16_t));
    exact = malloc(sizeof(double) * w->width);
    if (!w->first || !w->count || !w->taps || !exact) {
        free(exact);
        free_weights(w);
        return -1;
    }
    for (xx = 0; xx < out_size; xx++) {
        double center = in0 + (xx + 0.5) * scale, total = 0.0;
        int xmin = (int)(center - support + 0.5), xmax = (int)(center + support + 0.5);
        if (xmin < 0) xmin = 0;
        if (xmax > in_size) xmax = in_size;
        xmax -= xmin;
        for (x = 0; x < xmax; x++) {
            double d = fabs((x + xmin - center + 0.5) / filterscale);
            exact[x] = d < 1.0 ? 1.0 - d : 0.0;
            total += exact[x];
        }
        for (x = 0; x < xmax; x++) {
            double value = total != 0.0 ? exact[x] / total : 0.0;
            w->taps[xx * w->stride + x] = (int16_t)floor(value * (1 << WEIGHT_BITS) + 0.5);
        }
        w->first[xx] = xmin;
        w->count[xx] = xmax;
    }
    free(exact);
    return 0;
}

static inline uint8_t clip8(int32_t v) {
    v >>= WEIGHT_BITS;
    return (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v);
}

/* One row: out[xx] = sum of taps over in[first..]; reads 1 byte past the row's last pixel. */
static void horizontal_row(const uint8_t *in, uint8_t *out, int out_width, int components, const Weights *w) {
    int xx, t;
    for (xx = 0; xx < out_width; xx++) {
        const int16_t *k = w->taps + (size_t)xx * w->stride;
        const uint8_t *p = in + (size_t)w->first[xx] * components;
        int n = w->count[xx];
        if (components == 3) {
#if defined(__SSE2__)
            const __m128i zero = _mm_setzero_si128();
            __m128i acc = _mm_set1_epi32(1 << (WEIGHT_BITS - 1));
            uint32_t a32, b32;
            for (t = 0; t + 1 < n; t += 2) {
                memcpy(&a32, p + t * 3, 4);
                memcpy(&b32, p + t * 3 + 3, 4);
                __m128i ab = _mm_unpacklo_epi8(_mm_cvtsi32_si128((int)a32), _mm_cvtsi32_si128((int)b32));
                ab = _mm_unpacklo_epi8(ab, zero); /* R0 R1 G0 G1 B0 B1 x x as int16 */
                int32_t pair; /* k[t] and k[t + 1], adjacent: the low and high halves of one 32-bit load */
                memcpy(&pair, k + t, 4);
                __m128i kk = _mm_set1_epi32(pair);
                acc = _mm_add_epi32(acc, _mm_madd_epi16(ab, kk));
            }
            if (t < n) {
                memcpy(&a32, p + t * 3, 4);
                __m128i a = _mm_unpacklo_epi8(_mm_cvtsi32_si128((int)a32), zero);
                a = _mm_unpacklo_epi16(a, zero); /* R 0 G 0 B 0 x 0 */
                acc = _mm_add_epi32(acc, _mm_madd_epi16(a, _mm_set1_epi32((uint16_t)k[t])));
            }
            acc = _mm_srai_epi32(acc, WEIGHT_BITS);
            acc = _mm_packs_epi32(acc, acc);
            acc = _mm_packus_epi16(acc, acc);
            uint32_t rgbx = (uint32_t)_mm_cvtsi128_si32(acc);
            /* 4 bytes: the 4th lands on the next pixel (written next) or the padding after the last row */
            memcpy(out + xx * 3, &rgbx, 4);
#else
            int32_t r = 1 << (WEIGHT_BITS - 1), g = r, b = r;
            for (t = 0; t < n; t++) {
                r += p[t * 3] * k[t];
                g += p[t * 3 + 1] * k[t];
                b += p[t * 3 + 2] * k[t];
            }
            out[xx * 3] = clip8(r);
            out[xx * 3 + 1] = clip8(g);
            out[xx * 3 + 2] = clip8(b);
#endif
        } else {
            int32_t v = 1 << (WEIGHT_BITS - 1);
            for (t = 0; t < n; t++) v += p[t] * k[t];
            out[xx] = clip8(v);
        }
    }
}

/* One output row from `n` input rows of `length` bytes, `stride` bytes apart. */
void vertical_row(const uint8_t *in, size_t stride, int n, const int16_t *k, uint8_t *out, int length) {
    int i = 0, t;
#if defined(__SSE2__)
    const __m128i zero = _mm_setzero_si128();
    for (; i + 16 <= length; i += 16) {
        __m128i acc0 = _mm_set1_epi32(1 << (WEIGHT_BITS - 1)), acc1 = acc0, acc2 = acc0, acc3 = acc0;
        for (t = 0; t < n; t += 2) {
            __m128i a = _mm_loadu_si128((const __m128i *)(in + t * stride + i));
            __m128i b = t + 1 < n ? _mm_loadu_si128((const __m128i *)(in + (t + 1) * stride + i)) : zero;
            int16_t k1 = t + 1 < n ? k[t + 1] : 0;
            __m128i kk = _mm_set1_epi32((int)(((uint32_t)(uint16_t)k1 << 16) | (uint16_t)k[t]));
            __m128i lo = _mm_unpacklo_epi8(a, b), hi = _mm_unpackhi_epi8(a, b); /* a0 b0 a1 b1 ... */
            acc0 = _mm_add_epi32(acc0, _mm_madd_epi16(_mm_unpacklo_epi8(lo, zero), kk));
            acc1 = _mm_add_epi32(acc1, _mm_madd_epi16(_mm_unpackhi_epi8(lo, zero), kk));
            acc2 = _mm_add_epi32(acc2, _mm_madd_epi16(_mm_unpacklo_epi8(hi, zero), kk));
            acc3 = _mm_add_epi32(acc3, _mm_madd_epi16(_mm_unpackhi_epi8(hi, zero), kk));
        }
        acc0 = _mm_packs_epi32(_mm_srai_epi32(acc0, WEIGHT_BITS), _mm_srai_epi32(acc1, WEIGHT_BITS));
        acc2 = _mm_packs_epi32(_mm_srai_epi32(acc2, WEIGHT_BITS), _mm_srai_epi32(acc3, WEIGHT_BITS));
        _mm_storeu_si128((__m128i *)(out + i), _mm_packus_epi16(acc0, acc2));
    }
#endif
    for (; i < length; i++) {
        int32_t v = 1 << (WEIGHT_BITS - 1);
        for (t = 0; t < n; t++) v += in[t * stride + i] * k[t];
        out[i] = clip8(v);
    }
}

static int resample(const uint8_t *in, int width, int height, int components, const float box[4], int out_w,
                    int out_h, uint8_t *out) {
    Weights h = {0}, v = {0};
    uint8_t *middle = NULL, *last = NULL;
    int first_row, last_row, y, yy, status = -1;
    size_t row_bytes, middle_stride = (size_t)out_w * components;

    if (triangle_weights(&v, height, box[1], box[3], out_h) != 0) return -1;
    if (triangle_weights(&h, width, box[0], box[2], out_w) != 0) goto done;
    first_row = v.first[0];
    last_row = v.first[out_h - 1] + v.count[out_h - 1];
    middle = malloc(middle_stride * (size_t)(last_row - first_row) + 16);
    if (middle == NULL) goto done;
    row_bytes = (size_t)width * components;
    /* the last row, padded: the passes read past a row's last pixel, the AVX2 one by up to a pixel
       pair's larger tap count (3 bytes a tap) beyond the shorter pixel's taps */
    last = calloc(row_bytes + 3 * (size_t)h.stride + 16, 1);
    if (last == NULL) goto done;
    memcpy(last, in + (size_t)(height - 1) * row_bytes, row_bytes);
    for (y = first_row; y < last_row; y++) {
        const uint8_t *row = y == height - 1 ? last : in + (size_t)y * row_bytes;
        uint8_t *into = middle + (size_t)(y - first_row) * middle_stride;
#ifdef HAVE_SIMD_ROWS
        /* what the passes read past any row but the last lies in the rows below once a row holds it */
        if (components == 3 && row_bytes >= 3 * (size_t)h.stride + 16 && has_avx2()) {
            horizontal_row_rgb_avx2(row, into, out_w, &h);
            continue;
        }
        if (components == 3 && row_bytes >= 16 && has_ssse3()) {
            horizontal_row_rgb_ssse3(row, into, out_w, &h);
            continue;
        }
#endif
        horizontal_row(row, into, out_w, components, &h);
    }
    for (yy = 0; yy < out_h; yy++) {
        const uint8_t *rows = middle + (size_t)(v.first[yy] - first_row) * middle_stride;
        const int16_t *k = v.taps + (size_t)yy * v.stride;
        uint8_t *into = out + (size_t)yy * middle_stride;
#ifdef HAVE_SIMD_ROWS
        if (has_avx2()) {
            vertical_row_avx2(rows, middle_stride, v.count[yy], k, into, (int)middle_stride);
            continue;
        }
#endif
        vertical_row(rows, middle_stride, v.count[yy], k, into, (int)middle_stride);
    }
    status = 0;
done:
    free(middle);
    free(last);
    free_weights(&h);
    free_weights(&v);
    return status;
}

PyObject *jpeg_region_resize(PyObject *self, PyObject *args) {
    Py_buffer data;
    int width, height, components, out_w, out_h, status;
    float box[4];
    PyObject *result;

    if (!PyArg_ParseTuple(args, "y*iiiffffii", &data, &width, &height, &components, &box[0], &box[1], &box[2],
                          &box[3], &out_w, &out_h))
        return NULL;
    if (!(components == 1 || components == 3) || width < 1 || height < 1 || out_w < 1 || out_h < 1 ||
        data.len < (Py_ssize_t)width * height * components || !(box[0] >= 0 && box[1] >= 0) ||
        !(box[2] <= width && box[3] <= height && box[2] > box[0] && box[3] > box[1])) {
        PyBuffer_Release(&data);
        PyErr_SetString(PyExc_ValueError,
                        "resize: bad arguments (components 1 or 3, width x height pixels, box inside the image)");
        return NULL;
    }
    result = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)out_w * out_h * components);
    if (result == NULL) {
        PyBuffer_Release(&data);
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS;
    status = resample(data.buf, width, height, components, box, out_w, out_h, (uint8_t *)PyBytes_AS_STRING(result));
    Py_END_ALLOW_THREADS;
    PyBuffer_Release(&data);
    if (status != 0) {
        Py_DECREF(result);
        return PyErr_NoMemory();
    }
    return result;
}
