/* Region decode of baseline JPEGs with libjpeg(-turbo): only the rows and columns a crop needs, at a DCT scale.
 *
 * decode(data, scale, left, top, right, bottom) -> (pixels, components)
 *   The rectangle is in the coordinates of the image decoded at 1/scale (scale 1, 2, 4 or 8), half-open.
 *   Returns exactly that rectangle, row-major, 3 components (RGB) or 1 (greyscale).
 *   Rows above it are skipped (entropy-decoded only: a JPEG without restart markers cannot be entered
 *   anywhere else), rows below it are never read, and columns outside it skip the IDCT, upsampling and
 *   colour conversion (jpeg_crop_scanline). The GIL is released while libjpeg works.
 * info(data) -> (width, height, components, colour_space, progressive)   header only
 * resize(...): PIL's bilinear resize of such a window, several times faster (_jpeg_resize.c)
 * encode(...): RGB pixels to the JPEG bytes PIL's save(quality=q) gives (_jpeg_encode.c)
 *
 * Anything unusual (progressive, CMYK/YCCK, 12-bit, a corrupt or truncated stream, any libjpeg warning)
 * raises ValueError; the caller then decodes the whole file with PIL, which reports errors its own way.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <setjmp.h>
#include <stdio.h>
#include <string.h>

#include <jpeglib.h>

#include "_jpeg_region.h"

#if !defined(LIBJPEG_TURBO_VERSION_NUMBER) && !defined(LIBJPEG_TURBO_VERSION)
#error "libjpeg-turbo is required (jpeg_crop_scanline / jpeg_skip_scanlines)"
#endif

#define EDGE 2

typedef struct {
    struct jpeg_error_mgr base;
    jmp_buf escape;
    int warnings;
    char message[JMSG_LENGTH_MAX];
} ErrorManager;

static void on_error(j_common_ptr cinfo) {
    ErrorManager *errors = (ErrorManager *)cinfo->err;
    (*cinfo->err->format_message)(cinfo, errors->message);
    longjmp(errors->escape, 1);
}

static void on_message(j_common_ptr cinfo, int level) {
    /* level -1 is a warning (corrupt data, premature end): treated as a failure, so that PIL decides. */
    if (level < 0) {
        ErrorManager *errors = (ErrorManager *)cinfo->err;
        if (!errors->warnings) (*cinfo->err->format_message)(cinfo, errors->message);
        errors->warnings++;
    }
}

static void start(struct jpeg_decompress_struct *cinfo, ErrorManager *errors) {
    cinfo->err = jpeg_std_error(&errors->base);
    errors->base.error_exit = on_error;
    errors->base.emit_message = on_message;
    errors->warnings = 0;
    errors->message[0] = '\0';
    jpeg_create_decompress(cinfo);
}

/* 0 on success, else a message in errors->message. Runs without the GIL. */
static int decode_rows(struct jpeg_decompress_struct *cinfo, ErrorManager *errors, const unsigned char *data,
                       size_t size, int scale, int left, int top, int right, int bottom, int *components,
                       unsigned char *out, const char **refusal) {
    JSAMPROW row_pointer[1];
    unsigned char *volatile row = NULL;
    JDIMENSION x_offset, crop_width, skipped;
    int y, width = right - left;

    if (setjmp(errors->escape)) {
        free(row);
        return -1;
    }
    jpeg_mem_src(cinfo, (unsigned char *)data, (unsigned long)size);
    jpeg_read_header(cinfo, TRUE);
    if (cinfo->progressive_mode) {
        *refusal = "progressive JPEG";
        return -1;
    }
    if (cinfo->jpeg_color_space == JCS_YCbCr || cinfo->jpeg_color_space == JCS_RGB) {
        cinfo->out_color_space = JCS_RGB;
        *components = 3;
    } else if (cinfo->jpeg_color_space == JCS_GRAYSCALE) {
        cinfo->out_color_space = JCS_GRAYSCALE;
        *components = 1;
    } else {
        *refusal = "colour space other than YCbCr, RGB or greyscale";
        return -1;
    }
    /* The same IDCT and upsampling PIL's decoder uses (it keeps libjpeg's defaults), so pixels match. */
    cinfo->scale_num = 1;
    cinfo->scale_denom = (unsigned int)scale;
    jpeg_start_decompress(cinfo);
    if (right > (int)cinfo->output_width || bottom > (int)cinfo->output_height) {
        *refusal = "region outside the image";
        jpeg_abort_decompress(cinfo);
        return -1;
    }
    /* Two columns more on each side: fancy upsampling replicates chroma at the edges of libjpeg's crop, where
     * a full decode would use the neighbouring samples. Widened to whole iMCUs (x_offset moves left). */
    x_offset = (JDIMENSION)(left > EDGE ? left - EDGE : 0);
    crop_width = (JDIMENSION)(right + EDGE < (int)cinfo->output_width ? right + EDGE : (int)cinfo->output_width) -
                 x_offset;
    jpeg_crop_scanline(cinfo, &x_offset, &crop_width);
    row = malloc((size_t)cinfo->output_width * (size_t)cinfo->output_components);
    if (row == NULL) {
        *refusal = "out of memory";
        jpeg_abort_decompress(cinfo);
        return -1;
    }
    row_pointer[0] = row;
    if (top > 0) {
        skipped = jpeg_skip_scanlines(cinfo, (JDIMENSION)top);
        if (skipped != (JDIMENSION)top) longjmp(errors->escape, 1);
    }
    for (y = top; y < bottom; y++) {
        if (jpeg_read_scanlines(cinfo, row_pointer, 1) != 1) longjmp(errors->escape, 1);
        memcpy(out + (size_t)(y - top) * width * *components, row + (size_t)(left - x_offset) * *components,
               (size_t)width * *components);
    }
    free(row);
    row = NULL;
    /* The rows below are not needed: stop here rather than decode them for jpeg_finish_decompress. */
    jpeg_abort_decompress(cinfo);
    if (errors->warnings) return -1;
    return 0;
}

static PyObject *decode(PyObject *self, PyObject *args) {
    Py_buffer data;
    int scale, left, top, right, bottom, components = 0, status;
    const char *refusal = NULL;
    struct jpeg_decompress_struct cinfo;
    ErrorManager errors;
    PyObject *pixels;

    if (!PyArg_ParseTuple(args, "y*iiiii", &data, &scale, &left, &top, &right, &bottom)) return NULL;
    if (!(scale == 1 || scale == 2 || scale == 4 || scale == 8) || left < 0 || top < 0 || right <= left ||
        bottom <= top) {
        PyBuffer_Release(&data);
        PyErr_SetString(PyExc_ValueError, "scale must be 1, 2, 4 or 8 and the region non-empty");
        return NULL;
    }
    /* Room for 3 components; shrunk to the real size after the header is read. */
    pixels = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(right - left) * (bottom - top) * 3);
    if (pixels == NULL) {
        PyBuffer_Release(&data);
        return NULL;
    }
    start(&cinfo, &errors);
    Py_BEGIN_ALLOW_THREADS;
    status = decode_rows(&cinfo, &errors, data.buf, (size_t)data.len, scale, left, top, right, bottom,
                         &components, (unsigned char *)PyBytes_AS_STRING(pixels), &refusal);
    Py_END_ALLOW_THREADS;
    jpeg_destroy_decompress(&cinfo);
    PyBuffer_Release(&data);
    if (status != 0) {
        Py_DECREF(pixels);
        PyErr_SetString(PyExc_ValueError, refusal ? refusal : (errors.message[0] ? errors.message : "decode failed"));
        return NULL;
    }
    if (components == 1 && _PyBytes_Resize(&pixels, (Py_ssize_t)(right - left) * (bottom - top)) != 0) return NULL;
    return Py_BuildValue("(Ni)", pixels, components);
}

static PyObject *info(PyObject *self, PyObject *args) {
    Py_buffer data;
    struct jpeg_decompress_struct cinfo;
    ErrorManager errors;
    PyObject *result = NULL;

    if (!PyArg_ParseTuple(args, "y*", &data)) return NULL;
    start(&cinfo, &errors);
    if (setjmp(errors.escape)) {
        jpeg_destroy_decompress(&cinfo);
        PyBuffer_Release(&data);
        PyErr_SetString(PyExc_ValueError, errors.message[0] ? errors.message : "cannot read JPEG header");
        return NULL;
    }
    jpeg_mem_src(&cinfo, (unsigned char *)data.buf, (unsigned long)data.len);
    jpeg_read_header(&cinfo, TRUE);
    result = Py_BuildValue("(iiiii)", (int)cinfo.image_width, (int)cinfo.image_height, cinfo.num_components,
                           (int)cinfo.jpeg_color_space, (int)cinfo.progressive_mode);
    jpeg_destroy_decompress(&cinfo);
    PyBuffer_Release(&data);
    return result;
}

static PyMethodDef methods[] = {
    {"decode", decode, METH_VARARGS, "decode(data, scale, left, top, right, bottom) -> (pixels, components)"},
    {"resize", jpeg_region_resize, METH_VARARGS,
     "resize(pixels, width, height, components, left, top, right, bottom, out_w, out_h) -> bytes"},
    {"encode", jpeg_region_encode, METH_VARARGS, "encode(pixels, width, height, quality) -> JPEG bytes"},
    {"info", info, METH_VARARGS, "info(data) -> (width, height, components, colour_space, progressive)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_jpeg_region",
                                    "Region decode of baseline JPEGs (libjpeg-turbo).", -1, methods};

PyMODINIT_FUNC PyInit__jpeg_region(void) { return PyModule_Create(&module); }
