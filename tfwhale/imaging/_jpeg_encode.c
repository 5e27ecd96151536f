/* Part of the _jpeg_region extension: JPEG-encode raw RGB pixels exactly as PIL's Image.save(..., quality=q).
 *
 * encode(pixels, width, height, quality) -> bytes
 *   `pixels` row-major RGB. The settings PIL uses for an RGB image saved with only `quality`: libjpeg's
 *   defaults (baseline, 4:2:0, JFIF 1.01 header with a 1:1 aspect and no unit, slow integer DCT, standard
 *   Huffman tables) and jpeg_set_quality(quality, force_baseline). PIL would first unpack the pixels into its
 *   4-bytes-a-pixel image and pack them back a row at a time; this encodes straight from the buffer.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>

#include <jpeglib.h>

#include "_jpeg_region.h"

typedef struct {
    struct jpeg_error_mgr base;
    jmp_buf escape;
} EncodeErrors;

static void on_encode_error(j_common_ptr cinfo) { longjmp(((EncodeErrors *)cinfo->err)->escape, 1); }

/* 0 on success, with *out holding *size bytes (the caller's buffer of *size bytes unless libjpeg had to
   grow it). Runs without the GIL. */
static int compress(const unsigned char *pixels, int width, int height, int quality, unsigned char **out,
                    unsigned long *size) {
    struct jpeg_compress_struct cinfo;
    EncodeErrors errors;
    JSAMPROW row[1];

    cinfo.err = jpeg_std_error(&errors.base);
    errors.base.error_exit = on_encode_error;
    if (setjmp(errors.escape)) {
        jpeg_destroy_compress(&cinfo);
        return -1;
    }
    jpeg_create_compress(&cinfo);
    jpeg_mem_dest(&cinfo, out, size);
    cinfo.image_width = (JDIMENSION)width;
    cinfo.image_height = (JDIMENSION)height;
    cinfo.input_components = 3;
    cinfo.in_color_space = JCS_RGB;
    jpeg_set_defaults(&cinfo);
    jpeg_set_quality(&cinfo, quality, TRUE);
    jpeg_start_compress(&cinfo, TRUE);
    while (cinfo.next_scanline < cinfo.image_height) {
        row[0] = (JSAMPROW)(pixels + (size_t)cinfo.next_scanline * width * 3);
        jpeg_write_scanlines(&cinfo, row, 1);
    }
    jpeg_finish_compress(&cinfo);
    jpeg_destroy_compress(&cinfo);
    return 0;
}

PyObject *jpeg_region_encode(PyObject *self, PyObject *args) {
    Py_buffer data;
    int width, height, quality, status;
    unsigned char *out = NULL, *owned = NULL;
    unsigned long size = 0;
    PyObject *result;

    if (!PyArg_ParseTuple(args, "y*iii", &data, &width, &height, &quality)) return NULL;
    if (width < 1 || height < 1 || quality < 0 || quality > 100 || data.len < (Py_ssize_t)width * height * 3) {
        PyBuffer_Release(&data);
        PyErr_SetString(PyExc_ValueError, "encode: bad arguments (width x height RGB pixels, quality 0-100)");
        return NULL;
    }
    /* Our own buffer, twice the raw pixels: libjpeg never has to grow it. A buffer libjpeg allocates
       itself is freed by libjpeg when it grows while *out still points to it, so an error after a
       growth would free it twice. */
    size = 2 * (unsigned long)width * height * 3 + 65536;
    owned = malloc(size);
    if (owned == NULL) {
        PyBuffer_Release(&data);
        return PyErr_NoMemory();
    }
    out = owned;
    Py_BEGIN_ALLOW_THREADS;
    status = compress(data.buf, width, height, quality, &out, &size);
    Py_END_ALLOW_THREADS;
    PyBuffer_Release(&data);
    if (status != 0) {
        free(owned);
        PyErr_SetString(PyExc_ValueError, "encode: libjpeg failed");
        return NULL;
    }
    result = PyBytes_FromStringAndSize((const char *)out, (Py_ssize_t)size);
    if (out != owned) free(out); /* grown after all: libjpeg's buffer, ours untouched */
    free(owned);
    return result;
}
