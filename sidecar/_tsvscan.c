/*
 * Zeek ASCII (TSV) data lines into columns, in one pass over the bytes.
 *
 * conn.log rows have 20-odd fields, of which the featurizer reads a dozen. A general CSV
 * reader tokenizes and converts every field; this scanner only splits on the separator,
 * counts fields (a row with the wrong count is reported, not read), and converts the
 * fields it is asked for:
 *
 *   NUMBER  decimal text -> float64; the unset/empty markers -> NaN; anything else is a
 *           bad value, reported by row (its slot holds NaN);
 *   DISTINCT text -> int32 code into the distinct values of the block (Arrow string
 *           layout), so that Python looks at each distinct value once (addresses,
 *           states, labels);
 *   TEXT    text -> Arrow string layout (int32 offsets + data).
 *
 * Text that is not UTF-8 is stored as "" and its row reported, as a bad number is.
 *
 * Results are bytearrays that Python views with numpy: the module needs no numpy headers.
 * All decisions about what a problem means (messages, which rows to drop) stay in Python
 * (zeeklog.py); this file only measures.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>
#include <string.h>

enum { KIND_NUMBER = 0, KIND_DISTINCT = 1, KIND_TEXT = 2 };

/* ---- numbers ---------------------------------------------------------------------- */

static const double POW10[] = {1e0,  1e1,  1e2,  1e3,  1e4,  1e5,  1e6,  1e7,
                               1e8,  1e9,  1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
                               1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22};

/*
 * Parse a whole field as -?(digits[.digits*]|.digits)([eE][+-]?digits)?.
 * Returns 0 and sets *out on success, -1 if the text is not such a number.
 *
 * Zeek writes times and counts as plain decimals: when the digits fit in 2^53 and there
 * are at most 22 after the point, m / 10^k is one correctly rounded division of two exact
 * doubles (Clinger's fast path), the same double strtod gives. Anything else goes to
 * Python's own correctly rounded, locale-independent conversion.
 */
static int parse_number(const char *s, Py_ssize_t len, double *out) {
    const char *p = s, *end = s + len;
    int negative = 0;
    uint64_t mantissa = 0;
    int digits = 0, frac_digits = 0, exact = 1;

    if (p < end && *p == '-') {
        negative = 1;
        p++;
    }
    const char *int_start = p;
    while (p < end && (unsigned char)(*p - '0') < 10) {
        if (digits < 19) {
            mantissa = mantissa * 10 + (uint64_t)(*p - '0');
            if (mantissa || digits) digits++; /* leading zeros are not significant */
        } else {
            exact = 0;
        }
        p++;
    }
    Py_ssize_t int_len = p - int_start;
    Py_ssize_t frac_len = 0;
    if (p < end && *p == '.') {
        p++;
        const char *frac_start = p;
        while (p < end && (unsigned char)(*p - '0') < 10) {
            if (digits < 19) {
                mantissa = mantissa * 10 + (uint64_t)(*p - '0');
                if (mantissa || digits) digits++;
                frac_digits++;
            } else {
                exact = 0;
            }
            p++;
        }
        frac_len = p - frac_start;
    }
    if (int_len == 0 && frac_len == 0) return -1;
    if (p < end && (*p == 'e' || *p == 'E')) {
        p++;
        if (p < end && (*p == '+' || *p == '-')) p++;
        const char *exp_start = p;
        while (p < end && (unsigned char)(*p - '0') < 10) p++;
        if (p == exp_start) return -1;
        exact = 0;
    }
    if (p != end) return -1;

    if (exact && mantissa <= (UINT64_C(1) << 53) && frac_digits <= 22) {
        double value = (double)mantissa;
        if (frac_digits) value /= POW10[frac_digits];
        *out = negative ? -value : value;
        return 0;
    }
    /* Rare: long mantissas and exponents. The grammar was checked above. */
    char stack[64];
    char *buf = len < (Py_ssize_t)sizeof(stack) ? stack : PyMem_Malloc((size_t)len + 1);
    if (buf == NULL) return -1;
    memcpy(buf, s, (size_t)len);
    buf[len] = '\0';
    double value = PyOS_string_to_double(buf, NULL, NULL);
    if (buf != stack) PyMem_Free(buf);
    if (value == -1.0 && PyErr_Occurred()) {
        PyErr_Clear();
        return -1;
    }
    *out = value;
    return 0;
}

/* ---- UTF-8 ------------------------------------------------------------------------ */

/* Strict UTF-8 (no overlong forms, surrogates or code points past U+10FFFF), as Python's
 * decoder and Arrow's check want it. */
static int valid_utf8(const unsigned char *s, Py_ssize_t len) {
    Py_ssize_t i = 0;
    while (i < len) {
        unsigned char c = s[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        int need;
        unsigned char lo = 0x80, hi = 0xBF;
        if (c >= 0xC2 && c <= 0xDF) {
            need = 1;
        } else if (c >= 0xE0 && c <= 0xEF) {
            need = 2;
            if (c == 0xE0) lo = 0xA0;
            if (c == 0xED) hi = 0x9F;
        } else if (c >= 0xF0 && c <= 0xF4) {
            need = 3;
            if (c == 0xF0) lo = 0x90;
            if (c == 0xF4) hi = 0x8F;
        } else {
            return 0;
        }
        if (i + need >= len) return 0;
        if (s[i + 1] < lo || s[i + 1] > hi) return 0;
        for (int k = 2; k <= need; k++) {
            if (s[i + k] < 0x80 || s[i + k] > 0xBF) return 0;
        }
        i += need + 1;
    }
    return 1;
}

static int ascii_only(const unsigned char *s, Py_ssize_t len) {
    for (Py_ssize_t i = 0; i < len; i++) {
        if (s[i] & 0x80) return 0;
    }
    return 1;
}

/* ---- growable buffers ------------------------------------------------------------- */

typedef struct {
    char *data;
    Py_ssize_t len, cap;
} Buf;

static int buf_reserve(Buf *b, Py_ssize_t extra) {
    if (b->len + extra <= b->cap) return 0;
    Py_ssize_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + extra) cap *= 2;
    char *data = PyMem_Realloc(b->data, (size_t)cap);
    if (data == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    b->data = data;
    b->cap = cap;
    return 0;
}

static int buf_put(Buf *b, const void *src, Py_ssize_t n) {
    if (buf_reserve(b, n) < 0) return -1;
    memcpy(b->data + b->len, src, (size_t)n);
    b->len += n;
    return 0;
}

static PyObject *buf_finish(Buf *b) {
    PyObject *out = PyByteArray_FromStringAndSize(b->data ? b->data : "", b->len);
    PyMem_Free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
    return out;
}

/* ---- distinct values -------------------------------------------------------------- */

typedef struct {
    uint64_t hash;
    const char *text; /* points into the scanned block */
    Py_ssize_t len;
    int32_t code; /* -1: empty slot */
} Slot;

typedef struct {
    Slot *slots;
    Py_ssize_t mask;  /* capacity - 1, capacity a power of two */
    int32_t count;
    Buf offsets;      /* the distinct values in Arrow string layout, in code order */
    Buf text;
    Buf invalid;      /* uint8 per code: 1 if the value is not UTF-8 (stored as "") */
} Distinct;

static uint64_t hash_bytes(const char *s, Py_ssize_t len) {
    /* FNV-1a, then a final mix so that the low bits (the slot index) depend on all bytes. */
    uint64_t h = UINT64_C(1469598103934665603);
    for (Py_ssize_t i = 0; i < len; i++) {
        h ^= (unsigned char)s[i];
        h *= UINT64_C(1099511628211);
    }
    h ^= h >> 29;
    h *= UINT64_C(0xbf58476d1ce4e5b9);
    h ^= h >> 32;
    return h;
}

static int distinct_init(Distinct *d) {
    Py_ssize_t cap = 1024;
    int32_t zero = 0;
    memset(d, 0, sizeof(*d));
    d->slots = PyMem_Malloc(sizeof(Slot) * (size_t)cap);
    if (d->slots == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t i = 0; i < cap; i++) d->slots[i].code = -1;
    d->mask = cap - 1;
    return buf_put(&d->offsets, &zero, sizeof(zero));
}

static void distinct_free(Distinct *d) {
    PyMem_Free(d->slots);
    PyMem_Free(d->offsets.data);
    PyMem_Free(d->text.data);
    PyMem_Free(d->invalid.data);
    memset(d, 0, sizeof(*d));
}

static int distinct_grow(Distinct *d) {
    Py_ssize_t cap = (d->mask + 1) * 2;
    Slot *slots = PyMem_Malloc(sizeof(Slot) * (size_t)cap);
    if (slots == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t i = 0; i < cap; i++) slots[i].code = -1;
    for (Py_ssize_t i = 0; i <= d->mask; i++) {
        Slot *old = &d->slots[i];
        if (old->code < 0) continue;
        Py_ssize_t j = (Py_ssize_t)(old->hash & (uint64_t)(cap - 1));
        while (slots[j].code >= 0) j = (j + 1) & (cap - 1);
        slots[j] = *old;
    }
    PyMem_Free(d->slots);
    d->slots = slots;
    d->mask = cap - 1;
    return 0;
}

/* The code of a text, adding it if new; -1 with an exception set on failure. */
static int32_t distinct_code(Distinct *d, const char *text, Py_ssize_t len) {
    uint64_t h = hash_bytes(text, len);
    Py_ssize_t j = (Py_ssize_t)(h & (uint64_t)d->mask);
    for (;;) {
        Slot *s = &d->slots[j];
        if (s->code < 0) break;
        if (s->hash == h && s->len == len && memcmp(s->text, text, (size_t)len) == 0) {
            return s->code;
        }
        j = (j + 1) & d->mask;
    }
    int32_t n = d->count;
    if (n == INT32_MAX) {
        PyErr_SetString(PyExc_OverflowError, "too many distinct values in one block");
        return -1;
    }
    unsigned char invalid = !ascii_only((const unsigned char *)text, len) &&
                            !valid_utf8((const unsigned char *)text, len);
    Py_ssize_t stored = invalid ? 0 : len; /* keep the dictionary valid UTF-8 */
    if (d->text.len + stored > INT32_MAX) {
        PyErr_SetString(PyExc_OverflowError, "distinct values over 2 GiB in one block");
        return -1;
    }
    if (buf_put(&d->text, text, stored) < 0) return -1;
    int32_t offset = (int32_t)d->text.len;
    if (buf_put(&d->offsets, &offset, sizeof(offset)) < 0) return -1;
    if (buf_put(&d->invalid, &invalid, 1) < 0) return -1;
    d->count++;
    Slot *s = &d->slots[j];
    s->hash = h;
    s->text = text;
    s->len = len;
    s->code = n;
    if (((Py_ssize_t)n + 1) * 2 > d->mask + 1 && distinct_grow(d) < 0) return -1;
    return n;
}

/* ---- one requested column --------------------------------------------------------- */

typedef struct {
    int kind;
    Buf values;   /* NUMBER: double[rows]; DISTINCT: int32[rows]; TEXT: int32 offsets */
    Buf text;     /* TEXT: the bytes */
    Buf bad;      /* int32 rows holding a value that is not a number / not UTF-8 */
    Distinct distinct;
} Column;

static int column_init(Column *c, int kind) {
    memset(c, 0, sizeof(*c));
    c->kind = kind;
    if (kind == KIND_DISTINCT) return distinct_init(&c->distinct);
    if (kind == KIND_TEXT) {
        int32_t zero = 0;
        return buf_put(&c->values, &zero, sizeof(zero));
    }
    return 0;
}

static void column_free(Column *c) {
    PyMem_Free(c->values.data);
    PyMem_Free(c->text.data);
    PyMem_Free(c->bad.data);
    if (c->kind == KIND_DISTINCT) distinct_free(&c->distinct);
}

static int column_add(Column *c, const char *s, Py_ssize_t len, int32_t row, const char *unset,
                      Py_ssize_t unset_len, const char *empty, Py_ssize_t empty_len) {
    switch (c->kind) {
    case KIND_NUMBER: {
        double value = Py_NAN;
        int missing = len == 0 || (len == unset_len && memcmp(s, unset, (size_t)len) == 0) ||
                      (len == empty_len && memcmp(s, empty, (size_t)len) == 0);
        if (!missing && parse_number(s, len, &value) < 0) {
            value = Py_NAN;
            if (buf_put(&c->bad, &row, sizeof(row)) < 0) return -1;
        }
        return buf_put(&c->values, &value, sizeof(value));
    }
    case KIND_DISTINCT: {
        int32_t code = distinct_code(&c->distinct, s, len);
        if (code < 0) return -1;
        if (c->distinct.invalid.data[code] && buf_put(&c->bad, &row, sizeof(row)) < 0) return -1;
        return buf_put(&c->values, &code, sizeof(code));
    }
    default: {
        if (!ascii_only((const unsigned char *)s, len) &&
            !valid_utf8((const unsigned char *)s, len)) {
            if (buf_put(&c->bad, &row, sizeof(row)) < 0) return -1;
            len = 0; /* the row is dropped; keep the column valid UTF-8 */
        }
        if (c->text.len + len > INT32_MAX) {
            PyErr_SetString(PyExc_OverflowError, "text column over 2 GiB in one block");
            return -1;
        }
        if (buf_put(&c->text, s, len) < 0) return -1;
        int32_t offset = (int32_t)c->text.len;
        return buf_put(&c->values, &offset, sizeof(offset));
    }
    }
}

static PyObject *column_result(Column *c) {
    PyObject *values = buf_finish(&c->values);
    PyObject *bad = buf_finish(&c->bad);
    PyObject *extra = NULL;
    if (c->kind == KIND_DISTINCT) {
        PyObject *offsets = buf_finish(&c->distinct.offsets);
        PyObject *text = buf_finish(&c->distinct.text);
        if (offsets != NULL && text != NULL) {
            extra = Py_BuildValue("(iOO)", c->distinct.count, offsets, text);
        }
        Py_XDECREF(offsets);
        Py_XDECREF(text);
    } else if (c->kind == KIND_TEXT) {
        extra = buf_finish(&c->text);
    } else {
        extra = Py_None;
        Py_INCREF(extra);
    }
    PyObject *out = NULL;
    if (values != NULL && bad != NULL && extra != NULL) {
        out = PyTuple_Pack(3, values, extra, bad);
    }
    Py_XDECREF(values);
    Py_XDECREF(bad);
    Py_XDECREF(extra);
    return out;
}

/* ---- the scan ---------------------------------------------------------------------- */

PyDoc_STRVAR(scan_doc,
"scan(block, separator, n_fields, columns, unset, empty)\n"
"--\n\n"
"Split the lines of ``block`` on ``separator`` and convert the requested fields.\n\n"
"``columns`` is a sequence of ``(field_index, kind)`` with kind 0 (number), 1 (distinct\n"
"text) or 2 (text). ``unset`` and ``empty`` are the texts that mean \"no value\" in a\n"
"number field (an empty field does too).\n\n"
"Returns ``(rows, line_of_row, wrong_lines, wrong_first_count, empty_lines, results)``:\n"
"the number of rows read; int32 line index (0-based in the block) of each row; int32\n"
"indices of the lines whose field count is not ``n_fields`` and the count of the first\n"
"of them; int32 indices of empty lines; one ``(values, extra, bad_rows)`` per column:\n"
"values float64 (NaN where unset or bad) / int32 codes / int32 offsets; extra None /\n"
"``(count, int32 offsets, bytes)`` of the distinct values / the text bytes; bad_rows\n"
"int32, the rows whose field is not a number / not UTF-8.");

static PyObject *scan(PyObject *self, PyObject *args) {
    Py_buffer block;
    int separator;
    Py_ssize_t n_fields;
    PyObject *spec;
    const char *unset, *empty;
    Py_ssize_t unset_len, empty_len;
    (void)self;
    if (!PyArg_ParseTuple(args, "y*inOy#y#", &block, &separator, &n_fields, &spec, &unset,
                          &unset_len, &empty, &empty_len)) {
        return NULL;
    }
    PyObject *result = NULL;
    Column *columns = NULL;
    Py_ssize_t *slot_of = NULL; /* field index -> column, or -1 */
    Py_ssize_t n_columns = 0, initialized = 0;
    const char **starts = NULL;
    Py_ssize_t *lens = NULL;
    Buf rows_at = {0}, wrong = {0}, empties = {0};
    long wrong_first_count = -1;

    PyObject *seq = PySequence_Fast(spec, "columns must be a sequence");
    if (seq == NULL) goto done;
    n_columns = PySequence_Fast_GET_SIZE(seq);
    if (separator < 0 || separator > 255 || separator == '\n' || n_fields < 1) {
        PyErr_SetString(PyExc_ValueError, "bad separator or field count");
        goto done;
    }
    columns = PyMem_Calloc((size_t)(n_columns ? n_columns : 1), sizeof(Column));
    slot_of = PyMem_Malloc(sizeof(Py_ssize_t) * (size_t)n_fields);
    starts = PyMem_Malloc(sizeof(char *) * (size_t)(n_columns ? n_columns : 1));
    lens = PyMem_Malloc(sizeof(Py_ssize_t) * (size_t)(n_columns ? n_columns : 1));
    if (columns == NULL || slot_of == NULL || starts == NULL || lens == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t f = 0; f < n_fields; f++) slot_of[f] = -1;
    for (Py_ssize_t i = 0; i < n_columns; i++) {
        Py_ssize_t field;
        int kind;
        if (!PyArg_ParseTuple(PySequence_Fast_GET_ITEM(seq, i), "ni", &field, &kind)) goto done;
        if (field < 0 || field >= n_fields || slot_of[field] >= 0 || kind < 0 || kind > 2) {
            PyErr_Format(PyExc_ValueError, "bad column spec at %zd", i);
            goto done;
        }
        slot_of[field] = i;
        if (column_init(&columns[i], kind) < 0) goto done;
        initialized++;
    }

    const char *p = block.buf, *end = p + block.len;
    const char sep = (char)separator;
    int32_t line = 0, rows = 0;
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        const char *line_end = nl ? nl : end;
        const char *content_end = line_end;
        if (content_end > p && content_end[-1] == '\r') content_end--;
        if (content_end == p) {
            if (buf_put(&empties, &line, sizeof(line)) < 0) goto done;
        } else {
            /* Split; remember where the wanted fields are until the count is known. */
            Py_ssize_t field = 0;
            const char *start = p;
            for (const char *q = p;; q++) {
                if (q == content_end || *q == sep) {
                    if (field < n_fields && slot_of[field] >= 0) {
                        starts[slot_of[field]] = start;
                        lens[slot_of[field]] = q - start;
                    }
                    field++;
                    if (q == content_end) break;
                    start = q + 1;
                }
            }
            if (field != n_fields) {
                if (wrong_first_count < 0) wrong_first_count = (long)field;
                if (buf_put(&wrong, &line, sizeof(line)) < 0) goto done;
            } else {
                for (Py_ssize_t i = 0; i < n_columns; i++) {
                    if (column_add(&columns[i], starts[i], lens[i], rows, unset, unset_len,
                                   empty, empty_len) < 0) {
                        goto done;
                    }
                }
                if (buf_put(&rows_at, &line, sizeof(line)) < 0) goto done;
                rows++;
            }
        }
        if (line == INT32_MAX) {
            PyErr_SetString(PyExc_OverflowError, "too many lines in one block");
            goto done;
        }
        line++;
        p = nl ? nl + 1 : end;
    }

    PyObject *per_column = PyList_New(n_columns);
    if (per_column == NULL) goto done;
    for (Py_ssize_t i = 0; i < n_columns; i++) {
        PyObject *item = column_result(&columns[i]);
        if (item == NULL) {
            Py_DECREF(per_column);
            goto done;
        }
        PyList_SET_ITEM(per_column, i, item);
    }
    PyObject *rows_buf = buf_finish(&rows_at);
    PyObject *wrong_buf = buf_finish(&wrong);
    PyObject *empty_buf = buf_finish(&empties);
    if (rows_buf && wrong_buf && empty_buf) {
        result = Py_BuildValue("(iOOlOO)", rows, rows_buf, wrong_buf, wrong_first_count,
                               empty_buf, per_column);
    }
    Py_XDECREF(rows_buf);
    Py_XDECREF(wrong_buf);
    Py_XDECREF(empty_buf);
    Py_DECREF(per_column);

done:
    for (Py_ssize_t i = 0; i < initialized; i++) column_free(&columns[i]);
    PyMem_Free(columns);
    PyMem_Free(slot_of);
    PyMem_Free(starts);
    PyMem_Free(lens);
    PyMem_Free(rows_at.data);
    PyMem_Free(wrong.data);
    PyMem_Free(empties.data);
    Py_XDECREF(seq);
    PyBuffer_Release(&block);
    return result;
}

static PyMethodDef methods[] = {
    {"scan", scan, METH_VARARGS, scan_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    "_tsvscan",
    "Zeek ASCII (TSV) data lines into columns; see zeeklog.py.",
    -1,
    methods,
};

PyMODINIT_FUNC PyInit__tsvscan(void) {
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) return NULL;
    if (PyModule_AddIntConstant(m, "NUMBER", KIND_NUMBER) < 0 ||
        PyModule_AddIntConstant(m, "DISTINCT", KIND_DISTINCT) < 0 ||
        PyModule_AddIntConstant(m, "TEXT", KIND_TEXT) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
