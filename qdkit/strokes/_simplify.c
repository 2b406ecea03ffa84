/* The compiled kernel of qdkit.strokes.simplify: Google's simplification of raw Quick, Draw! strokes.
 *
 * Optional: setup.py builds it where a C compiler is present, and simplify.py falls back to an
 * identical numpy implementation where it is not. "Identical" holds to the last bit because every
 * float operation here is the one the numpy code (and the reference in the tests) performs, in the
 * same order, in IEEE double: setup.py compiles with -ffp-contract=off (no fused multiply-add but the
 * explicit fma() of the norm, which numpy emulates exactly), never with -ffast-math. See docs/strokes.md for the procedure and the
 * evidence for each step.
 *
 * kernel(xy, lengths, epsilon, max_samples, max_work) -> (status, value, out, out_lengths)
 *   xy: a C-contiguous float64 buffer of 2*P values (all xs, then all ys); lengths: points per stroke.
 *   status 0: out is a bytearray of 2*K float64 (kept xs, then ys, integers 0..255), out_lengths a
 *   tuple; status 1: a coordinate is NaN or infinite; 2: the extent is too large (value: extent);
 *   3: the drawing would resample to more than max_samples points (value: how many);
 *   4: RDP would evaluate more than max_work distances; 5: bad lengths.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <string.h>

#if defined(__clang__) /* gcc has no such pragma: -ffp-contract=off (setup.py) does it */
#pragma STDC FP_CONTRACT OFF
#endif

static PyObject *status_only(int status, double value) {
    return Py_BuildValue("(idOO)", status, value, Py_None, Py_None);
}

/* Ramer-Douglas-Peucker of px/py[0..n-1] (rdp_rec semantics): keep[] marks the kept points.
   Returns 0, or -1 when the work budget is exceeded. */
static int rdp(const double *px, const double *py, Py_ssize_t n, double epsilon, char *keep, Py_ssize_t *stack,
               long long *work, long long max_work) {
    Py_ssize_t top = 0;
    keep[0] = keep[n - 1] = 1;
    if (n < 3) return 0;
    stack[top++] = 0;
    stack[top++] = n - 1;
    while (top > 0) {
        Py_ssize_t b = stack[--top];
        Py_ssize_t a = stack[--top];
        if (b - a < 2) continue;
        *work += b - a - 1;
        if (*work > max_work) return -1;
        double sx = px[a], sy = py[a], ex = px[b], ey = py[b];
        double dmax = 0.0;
        Py_ssize_t index = -1;
        double dx = ex - sx, dy = ey - sy;
        /* |e - s| as np.linalg.norm computed it for Google: sqrt of a dot product whose last step is
           fused, dx * dx + (dy * dy) rounded once (see docs/strokes.md) */
        double length = sqrt(fma(dx, dx, dy * dy));
        if (length == 0) { /* e = s (or too close to tell): the distance to the point s */
            for (Py_ssize_t i = a + 1; i < b; i++) {
                double qx = px[i] - sx, qy = py[i] - sy;
                double d = sqrt(fma(qx, qx, qy * qy)); /* numpy's norm again */
                if (d > dmax) {
                    dmax = d;
                    index = i;
                }
            }
        } else {
            for (Py_ssize_t i = a + 1; i < b; i++) {
                double c1 = dx * (sy - py[i]);
                double c2 = dy * (sx - px[i]);
                double d = fabs(c1 - c2) / length;
                if (d > dmax) {
                    dmax = d;
                    index = i;
                }
            }
        }
        if (dmax > epsilon) {
            keep[index] = 1;
            stack[top++] = a;
            stack[top++] = index;
            stack[top++] = index;
            stack[top++] = b;
        }
    }
    return 0;
}

static double round_coord(double v) {
    double r = nearbyint(v); /* the default rounding mode: half to even, as numpy's round */
    if (r < 0.0) r = 0.0;
    if (r > 255.0) r = 255.0;
    return r + 0.0; /* no -0.0 */
}

static PyObject *kernel(PyObject *self, PyObject *args) {
    PyObject *xy_obj, *lengths_obj;
    double epsilon;
    Py_ssize_t max_samples;
    long long max_work;
    if (!PyArg_ParseTuple(args, "OOdnL", &xy_obj, &lengths_obj, &epsilon, &max_samples, &max_work)) return NULL;
    Py_buffer view;
    if (PyObject_GetBuffer(xy_obj, &view, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0) return NULL;
    PyObject *result = NULL;
    PyObject *lengths_seq = NULL;
    Py_ssize_t *lengths = NULL;
    double *scaled = NULL, *samples = NULL, *out = NULL;
    char *keep = NULL;
    Py_ssize_t *stack = NULL;
    if (view.itemsize != 8 || (view.format && strcmp(view.format, "d") != 0) || (view.len / 8) % 2 != 0) {
        PyErr_SetString(PyExc_TypeError, "xy must be a contiguous float64 buffer of 2*P values");
        goto done;
    }
    const double *xs = (const double *)view.buf;
    Py_ssize_t total_points = view.len / 16;
    const double *ys = xs + total_points;
    lengths_seq = PySequence_Fast(lengths_obj, "lengths must be a sequence");
    if (!lengths_seq) goto done;
    Py_ssize_t n_strokes = PySequence_Fast_GET_SIZE(lengths_seq);
    lengths = PyMem_Malloc(sizeof(Py_ssize_t) * (n_strokes + 1));
    if (!lengths) {
        PyErr_NoMemory();
        goto done;
    }
    Py_ssize_t sum = 0;
    for (Py_ssize_t s = 0; s < n_strokes; s++) {
        Py_ssize_t n = PyNumber_AsSsize_t(PySequence_Fast_GET_ITEM(lengths_seq, s), PyExc_OverflowError);
        if (n == -1 && PyErr_Occurred()) goto done;
        if (n < 1 || n > total_points - sum) {
            result = status_only(5, (double)s);
            goto done;
        }
        lengths[s] = n;
        sum += n;
    }
    if (n_strokes == 0 || sum != total_points) {
        result = status_only(5, -1.0);
        goto done;
    }
    double mx = xs[0], my = ys[0], hx = xs[0], hy = ys[0];
    for (Py_ssize_t i = 0; i < total_points; i++) {
        double x = xs[i], y = ys[i];
        if (!isfinite(x) || !isfinite(y)) {
            result = status_only(1, 0.0);
            goto done;
        }
        if (x < mx) mx = x;
        if (x > hx) hx = x;
        if (y < my) my = y;
        if (y > hy) hy = y;
    }
    double rx = hx - mx, ry = hy - my;
    double extent = rx > ry ? rx : ry;
    if (!isfinite(extent * 255.0)) {
        result = status_only(2, extent);
        goto done;
    }
    /* 1. align and scale */
    scaled = PyMem_Malloc(sizeof(double) * 2 * total_points);
    if (!scaled) {
        PyErr_NoMemory();
        goto done;
    }
    double *sxs = scaled, *sys_ = scaled + total_points;
    for (Py_ssize_t i = 0; i < total_points; i++) {
        sxs[i] = extent > 0 ? (xs[i] - mx) * 255.0 / extent : 0.0;
        sys_[i] = extent > 0 ? (ys[i] - my) * 255.0 / extent : 0.0;
    }
    /* the bound on the resampled points, from the arc lengths, before resampling */
    double bound = 0.0;
    Py_ssize_t start = 0;
    for (Py_ssize_t s = 0; s < n_strokes; s++) {
        double arc = 0.0;
        for (Py_ssize_t i = start; i < start + lengths[s] - 1; i++) {
            double dx = sxs[i + 1] - sxs[i], dy = sys_[i + 1] - sys_[i];
            arc = arc + sqrt(dx * dx + dy * dy);
        }
        bound += ceil(arc) + 1.0;
        start += lengths[s];
    }
    if (bound > (double)max_samples) {
        result = status_only(3, bound);
        goto done;
    }
    Py_ssize_t cap = (Py_ssize_t)bound;
    samples = PyMem_Malloc(sizeof(double) * 2 * (cap + 1));
    double *arcs = PyMem_Malloc(sizeof(double) * 2 * (total_points + 1));
    keep = PyMem_Malloc(cap + 1);
    stack = PyMem_Malloc(sizeof(Py_ssize_t) * 2 * (cap + 2));
    out = PyMem_Malloc(sizeof(double) * 2 * (cap + n_strokes));
    Py_ssize_t *out_lengths = PyMem_Malloc(sizeof(Py_ssize_t) * n_strokes);
    if (!samples || !arcs || !keep || !stack || !out || !out_lengths) {
        PyMem_Free(arcs);
        PyMem_Free(out_lengths);
        PyErr_NoMemory();
        goto done;
    }
    double *qx = samples, *qy = samples + cap + 1;
    Py_ssize_t n_out = 0;
    long long work = 0;
    int failed = 0;
    start = 0;
    for (Py_ssize_t s = 0; s < n_strokes && !failed; s++) {
        const double *x = sxs + start, *y = sys_ + start;
        Py_ssize_t n = lengths[s], m = 0;
        start += n;
        /* 2. resample at arc length 0, 1, 2, ... below the stroke's length */
        if (n < 2) {
            qx[m] = x[0];
            qy[m] = y[0];
            m++;
        } else {
            double *segs = arcs + n;
            arcs[0] = 0.0;
            for (Py_ssize_t i = 0; i < n - 1; i++) {
                double dx = x[i + 1] - x[i], dy = y[i + 1] - y[i];
                segs[i] = sqrt(dx * dx + dy * dy);
                arcs[i + 1] = arcs[i] + segs[i];
            }
            double length = arcs[n - 1];
            Py_ssize_t j = 0;
            for (Py_ssize_t k = 0; (double)k < length; k++) {
                double at = (double)k;
                while (arcs[j + 1] <= at) j++;
                double t = (at - arcs[j]) / segs[j];
                double u = 1.0 - t;
                double ax = x[j] * u, bx = x[j + 1] * t, ay = y[j] * u, by = y[j + 1] * t;
                qx[m] = ax + bx;
                qy[m] = ay + by;
                m++;
            }
            if (m == 0 || qx[m - 1] != x[n - 1] || qy[m - 1] != y[n - 1]) {
                qx[m] = x[n - 1];
                qy[m] = y[n - 1];
                m++;
            }
        }
        /* 3. Ramer-Douglas-Peucker, epsilon */
        memset(keep, 0, m);
        if (rdp(qx, qy, m, epsilon, keep, stack, &work, max_work) < 0) {
            failed = 1;
            break;
        }
        /* 4. round; one point is kept twice */
        Py_ssize_t first = n_out;
        for (Py_ssize_t i = 0; i < m; i++) {
            if (keep[i]) {
                out[n_out] = round_coord(qx[i]);
                out[cap + n_strokes + n_out] = round_coord(qy[i]);
                n_out++;
            }
        }
        if (n_out - first == 1) {
            out[n_out] = out[first];
            out[cap + n_strokes + n_out] = out[cap + n_strokes + first];
            n_out++;
        }
        out_lengths[s] = n_out - first;
    }
    PyMem_Free(arcs);
    if (failed) {
        PyMem_Free(out_lengths);
        result = status_only(4, (double)work);
        goto done;
    }
    PyObject *bytes = PyByteArray_FromStringAndSize(NULL, (Py_ssize_t)(sizeof(double) * 2 * n_out));
    PyObject *tuple = PyTuple_New(n_strokes);
    if (!bytes || !tuple) {
        Py_XDECREF(bytes);
        Py_XDECREF(tuple);
        PyMem_Free(out_lengths);
        goto done;
    }
    double *dst = (double *)PyByteArray_AS_STRING(bytes);
    memcpy(dst, out, sizeof(double) * n_out);
    memcpy(dst + n_out, out + cap + n_strokes, sizeof(double) * n_out);
    for (Py_ssize_t s = 0; s < n_strokes; s++) PyTuple_SET_ITEM(tuple, s, PyLong_FromSsize_t(out_lengths[s]));
    PyMem_Free(out_lengths);
    result = Py_BuildValue("(idNN)", 0, 0.0, bytes, tuple);
done:
    PyBuffer_Release(&view);
    Py_XDECREF(lengths_seq);
    PyMem_Free(lengths);
    PyMem_Free(scaled);
    PyMem_Free(samples);
    PyMem_Free(keep);
    PyMem_Free(stack);
    PyMem_Free(out);
    return result;
}

static PyMethodDef methods[] = {
    {"kernel", kernel, METH_VARARGS, "Google's simplification of raw strokes (see qdkit/strokes/simplify.py)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_simplify", NULL, -1, methods};

PyMODINIT_FUNC PyInit__simplify(void) { return PyModule_Create(&module); }
