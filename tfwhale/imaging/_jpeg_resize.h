/* Internal to the _jpeg_region extension: what _jpeg_resize.c shares with its SIMD passes. */
#ifndef TFWHALE_JPEG_RESIZE_H
#define TFWHALE_JPEG_RESIZE_H

#include <stddef.h>
#include <stdint.h>

#define WEIGHT_BITS 14

typedef struct {
    int *first;     /* first input pixel of each output pixel */
    int *count;     /* number of taps of each output pixel */
    int16_t *taps;  /* weights, `stride` per output pixel (zero past `count`) */
    int width;      /* taps an output pixel can have */
    int stride;     /* width rounded up to 4: the SSSE3 pass reads taps 4 at a time */
} Weights;

/* One output row from `n` input rows of `length` bytes, `stride` bytes apart (SSE2, or plain C). */
void vertical_row(const uint8_t *in, size_t stride, int n, const int16_t *k, uint8_t *out, int length);

#if defined(__SSE2__) && (defined(__GNUC__) || defined(__clang__))
#define HAVE_SIMD_ROWS 1
int has_ssse3(void);
int has_avx2(void);
void horizontal_row_rgb_ssse3(const uint8_t *in, uint8_t *out, int out_width, const Weights *w);
void horizontal_row_rgb_avx2(const uint8_t *in, uint8_t *out, int out_width, const Weights *w);
void vertical_row_avx2(const uint8_t *in, size_t stride, int n, const int16_t *k, uint8_t *out, int length);
#endif

#endif
