/*
 * Per-group sums of many per-row terms in one pass over the rows (features.py).
 *
 * The featurizer adds sixteen per-connection quantities into the feature rows of the
 * connection's originator group and responder group. numpy does that as one bincount per
 * quantity (each a pass over the rows plus a temporary); this does all of them per row,
 * while the row's two feature rows are in cache. The sums are taken in row order, as
 * bincount takes them, so the results are the same doubles.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>
#include <string.h>

enum { TERM_COUNT = 0, TERM_WEIGHT = 1, TERM_TABLE = 2 };

typedef struct {
    int kind;
    int side;            /* 0: the row's out group, 1: its in group */
    Py_ssize_t column;   /* feature column */
    const double *weights;       /* TERM_WEIGHT: per row */
    const unsigned char *codes;  /* TERM_TABLE: per row, looked up in table */
    const double *table;         /* TERM_TABLE: 256 entries */
} Term;

/* Does a buffer hold items of this kind: 'i' int64, 'f' float64, 'u' uint8? */
static int format_is(const Py_buffer *view, char kind) {
    const char *f = view->format ? view->format : "B";
    if (*f == '<' || *f == '=' || *f == '@') f++;
    switch (kind) {
    case 'i': return view->itemsize == 8 && (!strcmp(f, "l") || !strcmp(f, "q"));
    case 'f': return view->itemsize == 8 && !strcmp(f, "d");
    default: return view->itemsize == 1 && !strcmp(f, "B");
    }
}

/* A contiguous buffer of ``count`` items of ``kind``, or -1 with an error naming it. */
static int get_buffer(PyObject *obj, Py_buffer *view, char kind, Py_ssize_t count,
                      const char *what) {
    if (PyObject_GetBuffer(obj, view, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0) return -1;
    if (!format_is(view, kind) || view->len != count * view->itemsize) {
        PyErr_Format(PyExc_ValueError, "%s: expected %zd %s", what, count,
                     kind == 'i' ? "int64" : kind == 'f' ? "float64" : "uint8");
        PyBuffer_Release(view);
        view->obj = NULL;
        return -1;
    }
    return 0;
}

PyDoc_STRVAR(group_sums_doc,
"group_sums(values, out_g, in_g, terms)\n"
"--\n\n"
"Add per-row terms into the rows of ``values`` (float64, groups x columns, C order).\n\n"
"``out_g`` and ``in_g`` are int64 group ids per row (each in [0, groups)). Each term is\n"
"``(column, side, source)``: side 0 adds into the row's ``out_g`` group, 1 into its\n"
"``in_g`` group; source None adds 1, a float64 array adds its value for the row, and a\n"
"pair ``(codes, table)`` adds ``table[codes[row]]`` (uint8 codes, 256 float64 entries).");

static PyObject *group_sums(PyObject *self, PyObject *args) {
    PyObject *values_obj, *out_obj, *in_obj, *terms_obj;
    (void)self;
    if (!PyArg_ParseTuple(args, "OOOO", &values_obj, &out_obj, &in_obj, &terms_obj)) {
        return NULL;
    }
    Py_buffer values = {0}, out_g = {0}, in_g = {0};
    Py_buffer *held = NULL; /* the term buffers */
    Py_ssize_t n_held = 0;
    Term *terms = NULL;
    PyObject *result = NULL, *seq = NULL;

    if (PyObject_GetBuffer(values_obj, &values, PyBUF_C_CONTIGUOUS | PyBUF_WRITABLE |
                                                    PyBUF_FORMAT | PyBUF_ND) < 0) {
        return NULL;
    }
    if (values.ndim != 2 || values.itemsize != 8 || strcmp(values.format, "d") != 0) {
        PyErr_SetString(PyExc_ValueError, "values: expected a 2-D float64 array");
        goto done;
    }
    Py_ssize_t groups = values.shape[0], width = values.shape[1];
    if (PyObject_GetBuffer(out_obj, &out_g, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0) goto done;
    if (!format_is(&out_g, 'i')) {
        PyErr_SetString(PyExc_ValueError, "out_g: expected int64");
        goto done;
    }
    Py_ssize_t n = out_g.len / 8;
    if (get_buffer(in_obj, &in_g, 'i', n, "in_g") < 0) goto done;

    seq = PySequence_Fast(terms_obj, "terms must be a sequence");
    if (seq == NULL) goto done;
    Py_ssize_t n_terms = PySequence_Fast_GET_SIZE(seq);
    terms = PyMem_Calloc((size_t)(n_terms ? n_terms : 1), sizeof(Term));
    held = PyMem_Calloc((size_t)(2 * n_terms + 1), sizeof(Py_buffer));
    if (terms == NULL || held == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t t = 0; t < n_terms; t++) {
        PyObject *source;
        Term *term = &terms[t];
        if (!PyArg_ParseTuple(PySequence_Fast_GET_ITEM(seq, t), "niO", &term->column,
                              &term->side, &source)) {
            goto done;
        }
        if (term->column < 0 || term->column >= width || term->side < 0 || term->side > 1) {
            PyErr_Format(PyExc_ValueError, "term %zd: bad column or side", t);
            goto done;
        }
        if (source == Py_None) {
            term->kind = TERM_COUNT;
        } else if (PyTuple_Check(source) && PyTuple_GET_SIZE(source) == 2) {
            term->kind = TERM_TABLE;
            if (get_buffer(PyTuple_GET_ITEM(source, 0), &held[n_held], 'u', n, "codes") < 0) {
                goto done;
            }
            term->codes = held[n_held++].buf;
            if (get_buffer(PyTuple_GET_ITEM(source, 1), &held[n_held], 'f', 256, "table") < 0) {
                goto done;
            }
            term->table = held[n_held++].buf;
        } else {
            term->kind = TERM_WEIGHT;
            if (get_buffer(source, &held[n_held], 'f', n, "weights") < 0) {
                goto done;
            }
            term->weights = held[n_held++].buf;
        }
    }

    const int64_t *out_ids = out_g.buf, *in_ids = in_g.buf;
    for (Py_ssize_t r = 0; r < n; r++) {
        if (out_ids[r] < 0 || out_ids[r] >= groups || in_ids[r] < 0 || in_ids[r] >= groups) {
            PyErr_Format(PyExc_IndexError, "row %zd: group id out of range", r);
            goto done;
        }
    }
    double *rows = values.buf;
    for (Py_ssize_t r = 0; r < n; r++) {
        double *target[2] = {rows + out_ids[r] * width, rows + in_ids[r] * width};
        for (Py_ssize_t t = 0; t < n_terms; t++) {
            const Term *term = &terms[t];
            double add = term->kind == TERM_COUNT    ? 1.0
                         : term->kind == TERM_WEIGHT ? term->weights[r]
                                                     : term->table[term->codes[r]];
            target[term->side][term->column] += add;
        }
    }
    result = Py_NewRef(Py_None);

done:
    for (Py_ssize_t i = 0; i < n_held; i++) PyBuffer_Release(&held[i]);
    PyMem_Free(held);
    PyMem_Free(terms);
    Py_XDECREF(seq);
    if (in_g.obj) PyBuffer_Release(&in_g);
    if (out_g.obj) PyBuffer_Release(&out_g);
    PyBuffer_Release(&values);
    return result;
}

static PyMethodDef methods[] = {
    {"group_sums", group_sums, METH_VARARGS, group_sums_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "_groupsums",
    .m_doc = "Per-group sums of per-row terms in one pass; see features.py.",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC PyInit__groupsums(void) { return PyModule_Create(&module); }
