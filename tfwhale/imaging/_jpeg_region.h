/* The _jpeg_region extension's functions defined outside _jpeg_region.c. */
#ifndef TFWHALE_JPEG_REGION_H
#define TFWHALE_JPEG_REGION_H

#include <Python.h>

/* resize(pixels, width, height, components, left, top, right, bottom, out_w, out_h) -> bytes */
PyObject *jpeg_region_resize(PyObject *self, PyObject *args);

/* encode(pixels, width, height, quality) -> bytes: RGB pixels as PIL's save(quality=q) writes them */
PyObject *jpeg_region_encode(PyObject *self, PyObject *args);

#endif
