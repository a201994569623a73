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
 *           layout), so that Python looks at each distinct value once (proto, service,
 *           conn_state, labels);
 *   TEXT    text -> Arrow string layout (int32 offsets + data);
 *   INTERNED text -> int32 code into an Interner that outlives the call: a reader's
 *           addresses, so that Python looks at each address text once per run, not
 *           once per block.
 *
 * Text that is not UTF-8 is stored as "" and its row reported, as a bad number is.
 *
 * Results are bytearrays that Python views with numpy: the module needs no numpy headers.
 * All decisions about what a problem means (messages, which rows to drop) stay in Python
 * (zeeklog.py); this file only measures.
 *
 * Beside scan(): the Interner type; localize(), which turns a chunk's interned address
 * codes into its own small address table (arrowcols.AddressBook); count_newlines() and
 * nth_newline(), with which linebuffer.py cuts a byte stream into blocks of lines.
 * x86-64 gets SSE2 steps (its baseline); other machines take the scalar paths, which
 * the tests build and compare too.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>
#include <string.h>
#ifdef __SSE2__
#include <emmintrin.h>
#endif

enum { KIND_NUMBER = 0, KIND_DISTINCT = 1, KIND_TEXT = 2, KIND_INTERNED = 3 };

/* ---- unaligned loads ------------------------------------------------------------- */

static inline uint64_t load8(const char *s) {
    uint64_t w;
    memcpy(&w, s, 8);
    return w;
}

static inline uint32_t load4(const char *s) {
    uint32_t w;
    memcpy(&w, s, 4);
    return w;
}

/* The n < 8 bytes at s as the little-endian number they spell (equal bytes, equal
 * numbers, and the converse), without a loop where loads are little-endian: two
 * overlapping loads (n >= 4) or three single bytes (n < 4). */
static inline uint64_t load_partial(const char *s, Py_ssize_t n) {
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    if (n >= 4) return load4(s) | ((uint64_t)load4(s + n - 4) << (8 * (n - 4)));
    if (n == 0) return 0;
    const unsigned char *u = (const unsigned char *)s;
    return u[0] | ((uint64_t)u[n / 2] << (8 * (n / 2))) | ((uint64_t)u[n - 1] << (8 * (n - 1)));
#else
    uint64_t w = 0;
    for (Py_ssize_t i = 0; i < n; i++) w |= (uint64_t)(unsigned char)s[i] << (8 * i);
    return w;
#endif
}

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
/* Eight ASCII digits at a time (SWAR, little-endian loads): whether all eight are digits,
 * and their value, in a handful of operations instead of eight dependent steps. */
static inline int eight_digits(uint64_t w) {
    return (((w + UINT64_C(0x4646464646464646)) | (w - UINT64_C(0x3030303030303030))) &
            UINT64_C(0x8080808080808080)) == 0;
}

static inline uint64_t eight_digits_value(uint64_t w) {
    w -= UINT64_C(0x3030303030303030);
    w = (w * 10) + (w >> 8); /* adjacent digits into pairs */
    return (((w & UINT64_C(0x000000FF000000FF)) * (100 + (UINT64_C(1000000) << 32))) +
            (((w >> 16) & UINT64_C(0x000000FF000000FF)) * (1 + (UINT64_C(10000) << 32)))) >>
           32;
}

/* The digits from p on, appended to *mantissa (which wraps past 19 digits); their end. */
static inline const char *digits(const char *p, const char *end, uint64_t *mantissa) {
    uint64_t m = *mantissa;
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    while (end - p >= 8 && eight_digits(load8(p))) {
        m = m * 100000000 + eight_digits_value(load8(p));
        p += 8;
    }
#endif
    while (p < end && (unsigned char)(*p - '0') < 10) m = m * 10 + (uint64_t)(*p++ - '0');
    *mantissa = m;
    return p;
}

static int parse_number(const char *s, Py_ssize_t len, double *out) {
    const char *p = s, *end = s + len;
    int negative = 0;
    uint64_t mantissa = 0; /* wraps past 19 digits; then only the slow path is used */

    if (p < end && *p == '-') {
        negative = 1;
        p++;
    }
    const char *int_start = p;
    p = digits(p, end, &mantissa);
    Py_ssize_t int_len = p - int_start;
    Py_ssize_t frac_len = 0;
    if (p < end && *p == '.') {
        const char *frac_start = ++p;
        p = digits(p, end, &mantissa);
        frac_len = p - frac_start;
    }
    int exact = int_len + frac_len <= 19;
    int frac_digits = (int)frac_len;
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

static inline int ascii_only(const unsigned char *s, Py_ssize_t len) {
    const char *p = (const char *)s;
    uint64_t high = 0;
    for (; len >= 8; p += 8, len -= 8) high |= load8(p);
    high |= load_partial(p, len);
    return (high & UINT64_C(0x8080808080808080)) == 0;
}

/* ---- growable buffers ------------------------------------------------------------- */

/* Bytes written straight into a bytearray, handed to Python without a copy. */
typedef struct {
    PyObject *obj;
    char *data;
    Py_ssize_t len, cap;
} Buf;

static int buf_grow(Buf *b, Py_ssize_t need) {
    Py_ssize_t cap = b->cap ? b->cap : 256;
    while (cap < need) cap *= 2;
    if (b->obj == NULL) {
        b->obj = PyByteArray_FromStringAndSize(NULL, cap);
        if (b->obj == NULL) return -1;
    } else if (PyByteArray_Resize(b->obj, cap) < 0) {
        return -1;
    }
    b->data = PyByteArray_AS_STRING(b->obj);
    b->cap = cap;
    return 0;
}

static inline int buf_put(Buf *b, const void *src, Py_ssize_t n) {
    if (n == 0) return 0;
    if (b->len + n > b->cap && buf_grow(b, b->len + n) < 0) return -1;
    memcpy(b->data + b->len, src, (size_t)n);
    b->len += n;
    return 0;
}

/* The bytearray, cut to what was written (a new reference), or NULL on error. */
static PyObject *buf_finish(Buf *b) {
    if (b->obj == NULL) return PyByteArray_FromStringAndSize(NULL, 0);
    if (PyByteArray_Resize(b->obj, b->len) < 0) return NULL;
    PyObject *out = b->obj;
    b->obj = NULL;
    b->data = NULL;
    b->len = b->cap = 0;
    return out;
}

static void buf_free(Buf *b) {
    Py_CLEAR(b->obj);
    b->data = NULL;
    b->len = b->cap = 0;
}

/* ---- distinct values -------------------------------------------------------------- */

typedef struct {
    uint64_t hash;
    Py_ssize_t at; /* where the value's bytes are in the table's ``raw`` copy */
    Py_ssize_t len;
    int32_t code; /* -1: empty slot */
} Slot;

typedef struct {
    Slot *slots;
    Py_ssize_t mask;  /* capacity - 1, capacity a power of two */
    int32_t count;
    const char *last_text; /* the previous row's value: proto, state and service repeat */
    Py_ssize_t last_len;
    int32_t last_code;
    Buf raw;          /* every value's bytes, in code order (the table outlives blocks) */
    Buf offsets;      /* the distinct values in Arrow string layout, in code order */
    Buf text;
    Buf invalid;      /* uint8 per code: 1 if the value is not UTF-8 (stored as "") */
} Distinct;

/* Eight bytes per multiply: the distinct columns hash every row's field. */
static inline uint64_t hash_bytes(const char *s, Py_ssize_t len) {
    const uint64_t k = UINT64_C(0x9E3779B97F4A7C15);
    uint64_t h = (uint64_t)len * k;
    while (len >= 8) {
        h = (h ^ load8(s)) * k;
        h ^= h >> 31;
        s += 8;
        len -= 8;
    }
    if (len) h = (h ^ load_partial(s, len)) * k;
    h ^= h >> 29;
    h *= UINT64_C(0xbf58476d1ce4e5b9);
    h ^= h >> 32;
    return h;
}

static inline int same_bytes(const char *a, const char *b, Py_ssize_t len) {
    while (len >= 8) {
        if (load8(a) != load8(b)) return 0;
        a += 8;
        b += 8;
        len -= 8;
    }
    if (len >= 4) return load_partial(a, len) == load_partial(b, len);
    for (Py_ssize_t i = 0; i < len; i++) {
        if (a[i] != b[i]) return 0; /* short tails: proto, state, "-" */
    }
    return 1;
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
    buf_free(&d->raw);
    buf_free(&d->offsets);
    buf_free(&d->text);
    buf_free(&d->invalid);
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
static inline int32_t distinct_insert(Distinct *d, const char *text, Py_ssize_t len);

static inline int32_t distinct_code(Distinct *d, const char *text, Py_ssize_t len) {
    if (d->last_text != NULL && len == d->last_len && same_bytes(d->last_text, text, len)) {
        return d->last_code;
    }
    int32_t code = distinct_insert(d, text, len);
    d->last_text = text;
    d->last_len = len;
    d->last_code = code;
    return code;
}

static int32_t distinct_add(Distinct *d, const char *text, Py_ssize_t len, uint64_t h,
                            Py_ssize_t j);

/* Looking up is the common case, adding the rare one: only the first is inlined. */
static inline int32_t distinct_insert(Distinct *d, const char *text, Py_ssize_t len) {
    uint64_t h = hash_bytes(text, len);
    Py_ssize_t j = (Py_ssize_t)(h & (uint64_t)d->mask);
    for (;;) {
        Slot *s = &d->slots[j];
        if (s->code < 0) return distinct_add(d, text, len, h, j);
        if (s->hash == h && s->len == len && same_bytes(d->raw.data + s->at, text, len)) {
            return s->code;
        }
        j = (j + 1) & d->mask;
    }
}

static int32_t distinct_add(Distinct *d, const char *text, Py_ssize_t len, uint64_t h,
                            Py_ssize_t j) {
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
    Py_ssize_t at = d->raw.len;
    if (buf_put(&d->raw, text, len) < 0) return -1;
    if (buf_put(&d->text, text, stored) < 0) return -1;
    int32_t offset = (int32_t)d->text.len;
    if (buf_put(&d->offsets, &offset, sizeof(offset)) < 0) return -1;
    if (buf_put(&d->invalid, &invalid, 1) < 0) return -1;
    d->count++;
    Slot *s = &d->slots[j];
    s->hash = h;
    s->at = at;
    s->len = len;
    s->code = n;
    if (((Py_ssize_t)n + 1) * 2 > d->mask + 1 && distinct_grow(d) < 0) return -1;
    return n;
}

/* ---- the interner: distinct values kept across blocks ----------------------------- */

typedef struct {
    PyObject_HEAD
    Distinct table;
    int32_t reported; /* codes below this were handed out by take_new */
} Interner;

static PyObject *interner_new(PyTypeObject *type, PyObject *args, PyObject *kwargs) {
    if (!PyArg_ParseTuple(args, ":Interner") || (kwargs && PyDict_GET_SIZE(kwargs))) {
        PyErr_SetString(PyExc_TypeError, "Interner() takes no arguments");
        return NULL;
    }
    Interner *self = (Interner *)type->tp_alloc(type, 0);
    if (self == NULL) return NULL;
    if (distinct_init(&self->table) < 0) {
        Py_DECREF(self);
        return NULL;
    }
    return (PyObject *)self;
}

static void interner_dealloc(Interner *self) {
    distinct_free(&self->table);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static Py_ssize_t interner_len(Interner *self) { return self->table.count; }

static PyObject *interner_clear(Interner *self, PyObject *unused) {
    (void)unused;
    distinct_free(&self->table);
    self->reported = 0;
    if (distinct_init(&self->table) < 0) return NULL;
    Py_RETURN_NONE;
}

/* Is the text a dotted quad exactly as Python's ipaddress prints it (no leading zeros)? */
static int plain_ipv4(const char *s, Py_ssize_t len) {
    const char *p = s, *end = s + len;
    for (int octet = 0; octet < 4; octet++) {
        if (octet && (p == end || *p++ != '.')) return 0;
        const char *start = p;
        int value = 0;
        while (p < end && (unsigned char)(*p - '0') < 10 && p - start < 3) {
            value = value * 10 + (*p++ - '0');
        }
        Py_ssize_t digits = p - start;
        if (digits == 0 || value > 255 || (digits > 1 && *start == '0')) return 0;
    }
    return p == end;
}

static PyObject *interner_take_new(Interner *self, PyObject *unused) {
    (void)unused;
    Distinct *d = &self->table;
    const int32_t *offsets = (const int32_t *)d->offsets.data;
    Py_ssize_t n = d->count - self->reported;
    PyObject *texts = PyList_New(n);
    PyObject *plain = PyByteArray_FromStringAndSize(NULL, n);
    if (texts == NULL || plain == NULL) {
        Py_XDECREF(texts);
        Py_XDECREF(plain);
        return NULL;
    }
    char *flags = PyByteArray_AS_STRING(plain);
    for (int32_t code = self->reported; code < d->count; code++) {
        PyObject *text;
        Py_ssize_t i = code - self->reported;
        flags[i] = 0;
        if (d->invalid.data[code]) {
            text = Py_None;
            Py_INCREF(text);
        } else {
            const char *start = d->text.data + offsets[code];
            Py_ssize_t len = offsets[code + 1] - offsets[code];
            flags[i] = (char)plain_ipv4(start, len);
            text = PyUnicode_DecodeUTF8(start, len, "strict");
            if (text == NULL) {
                Py_DECREF(texts);
                Py_DECREF(plain);
                return NULL;
            }
        }
        PyList_SET_ITEM(texts, i, text);
    }
    self->reported = d->count;
    return Py_BuildValue("(NN)", texts, plain);
}

static PyObject *interner_intern(Interner *self, PyObject *texts) {
    PyObject *seq = PySequence_Fast(texts, "intern() wants a sequence of str");
    if (seq == NULL) return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    Buf codes = {0};
    self->table.last_text = NULL; /* the cache points into the caller's memory */
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_ssize_t len;
        const char *text = PyUnicode_AsUTF8AndSize(PySequence_Fast_GET_ITEM(seq, i), &len);
        if (text == NULL) goto fail;
        int32_t code = distinct_code(&self->table, text, len);
        if (code < 0 || buf_put(&codes, &code, sizeof(code)) < 0) goto fail;
    }
    self->table.last_text = NULL;
    Py_DECREF(seq);
    return buf_finish(&codes);
fail:
    self->table.last_text = NULL;
    buf_free(&codes);
    Py_DECREF(seq);
    return NULL;
}

static PyMethodDef interner_methods[] = {
    {"clear", (PyCFunction)interner_clear, METH_NOARGS, "Forget every value."},
    {"take_new", (PyCFunction)interner_take_new, METH_NOARGS,
     "``(texts, plain)``: the values added since the last call, in code order (str, or\n"
     "None where the bytes are not UTF-8), and a bytearray with 1 for each that is an\n"
     "IPv4 address written as ipaddress writes it (four decimal octets, no leading zeros)."},
    {"intern", (PyCFunction)interner_intern, METH_O,
     "int32 codes (a bytearray) of a sequence of str, adding the new ones."},
    {NULL, NULL, 0, NULL},
};

static PySequenceMethods interner_as_sequence = {
    .sq_length = (lenfunc)interner_len,
};

static PyTypeObject InternerType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "seqwatch.sidecar._tsvscan.Interner",
    .tp_basicsize = sizeof(Interner),
    .tp_dealloc = (destructor)interner_dealloc,
    .tp_as_sequence = &interner_as_sequence,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Distinct texts numbered in order of first sight, kept across scans.\n\n"
              "A reader's address columns are coded against one Interner, so that each\n"
              "address text is looked at in Python once, not once per block.",
    .tp_methods = interner_methods,
    .tp_new = interner_new,
};

/* ---- one requested column --------------------------------------------------------- */

typedef struct {
    int kind;
    Buf values;   /* NUMBER: double[rows]; DISTINCT, INTERNED: int32[rows]; TEXT: offsets */
    Buf text;     /* TEXT: the bytes */
    Buf bad;      /* int32 rows holding a value that is not a number / not UTF-8 */
    Distinct distinct;  /* DISTINCT: this block's values */
    Distinct *table;    /* DISTINCT: &distinct; INTERNED: the Interner's, kept across blocks */
} Column;

static inline Py_ssize_t column_width(const Column *c) {
    return c->kind == KIND_NUMBER ? (Py_ssize_t)sizeof(double) : (Py_ssize_t)sizeof(int32_t);
}

/* Room for ``rows`` rows (TEXT: one offset more). Values are stored by row index, so the
 * per-value work is one store; the scan grows every column at once when rows run out. */
static int column_reserve(Column *c, Py_ssize_t rows) {
    return buf_grow(&c->values, (rows + (c->kind == KIND_TEXT)) * column_width(c));
}

static int column_init(Column *c, int kind, Py_ssize_t rows, Distinct *interned) {
    memset(c, 0, sizeof(*c));
    c->kind = kind;
    if (kind == KIND_DISTINCT && distinct_init(&c->distinct) < 0) return -1;
    c->table = kind == KIND_DISTINCT ? &c->distinct : interned;
    if (column_reserve(c, rows) < 0) return -1;
    if (kind == KIND_TEXT) ((int32_t *)c->values.data)[0] = 0;
    return 0;
}

static void column_free(Column *c) {
    buf_free(&c->values);
    buf_free(&c->text);
    buf_free(&c->bad);
    if (c->kind == KIND_DISTINCT) distinct_free(&c->distinct);
}

static inline int column_add(Column *c, const char *s, Py_ssize_t len, int32_t row,
                             const char *unset, Py_ssize_t unset_len, const char *empty,
                             Py_ssize_t empty_len) {
    switch (c->kind) {
    case KIND_NUMBER: {
        double value = Py_NAN;
        int missing = len == 0 || (len == unset_len && same_bytes(s, unset, len)) ||
                      (len == empty_len && same_bytes(s, empty, len));
        if (!missing && parse_number(s, len, &value) < 0) {
            value = Py_NAN;
            if (buf_put(&c->bad, &row, sizeof(row)) < 0) return -1;
        }
        ((double *)c->values.data)[row] = value;
        return 0;
    }
    case KIND_DISTINCT:
    case KIND_INTERNED: {
        /* A row's proto, state or service is most often the previous row's; its
         * addresses seldom are, so they skip that check. */
        int32_t code = c->kind == KIND_DISTINCT ? distinct_code(c->table, s, len)
                                                : distinct_insert(c->table, s, len);
        if (code < 0) return -1;
        if (c->table->invalid.data[code] && buf_put(&c->bad, &row, sizeof(row)) < 0) {
            return -1;
        }
        ((int32_t *)c->values.data)[row] = code;
        return 0;
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
        ((int32_t *)c->values.data)[row + 1] = (int32_t)c->text.len;
        return 0;
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

/* Where the wanted fields of one line are; returns the line's field count. */
static inline Py_ssize_t split_line(const char *p, const char *stop, const char *block_end,
                                    char sep, const Py_ssize_t *slot_of, Py_ssize_t n_fields,
                                    const char **starts, Py_ssize_t *lens) {
    Py_ssize_t field = 0;
    const char *start = p, *q = p;
#define SEQWATCH_FIELD_END(at)                                     \
    do {                                                           \
        if (field < n_fields && slot_of[field] >= 0) {             \
            starts[slot_of[field]] = start;                        \
            lens[slot_of[field]] = (at) - start;                   \
        }                                                          \
        field++;                                                   \
        start = (at) + 1;                                          \
    } while (0)
#ifdef __SSE2__
    /* Sixteen bytes per compare; a load never passes the end of the block. */
    const __m128i wanted = _mm_set1_epi8(sep);
    for (; q < stop && block_end - q >= 16; q += 16) {
        __m128i chunk = _mm_loadu_si128((const __m128i *)q);
        unsigned mask = (unsigned)_mm_movemask_epi8(_mm_cmpeq_epi8(chunk, wanted));
        if (stop - q < 16) mask &= (1u << (stop - q)) - 1;
        while (mask) {
            const char *at = q + __builtin_ctz(mask);
            mask &= mask - 1;
            SEQWATCH_FIELD_END(at);
        }
    }
#endif
    for (; q < stop; q++) {
        if (*q == sep) SEQWATCH_FIELD_END(q);
    }
    SEQWATCH_FIELD_END(stop);
#undef SEQWATCH_FIELD_END
    return field;
}

PyDoc_STRVAR(scan_doc,
"scan(block, separator, n_fields, columns, unset, empty, rows_hint=1024, interner=None)\n"
"--\n\n"
"Split the lines of ``block`` on ``separator`` and convert the requested fields.\n\n"
"``columns`` is a sequence of ``(field_index, kind)``, kind one of NUMBER, DISTINCT,\n"
"TEXT and INTERNED (coded against ``interner``, across calls). ``unset`` and ``empty``\n"
"are the texts that mean \"no value\" in a number field (an empty field does too).\n"
"``rows_hint``, the expected number of rows, sizes the outputs.\n\n"
"Returns ``(rows, line_of_row, wrong_lines, wrong_first_count, empty_lines, results)``:\n"
"the number of rows read; int32 line index (0-based in the block) of each row; int32\n"
"indices of the lines whose field count is not ``n_fields`` and the count of the first\n"
"of them; int32 indices of empty lines; one ``(values, extra, bad_rows)`` per column.\n"
"values: float64 (NaN where unset or bad) / int32 codes / int32 offsets (TEXT).\n"
"extra: None (NUMBER, INTERNED) / ``(count, int32 offsets, bytes)`` of the distinct\n"
"values (DISTINCT) / the text bytes (TEXT). bad_rows: int32, the rows whose field is\n"
"not a number / not UTF-8.");

static PyObject *scan(PyObject *self, PyObject *args) {
    Py_buffer block;
    int separator;
    Py_ssize_t n_fields;
    PyObject *spec;
    const char *unset, *empty;
    Py_ssize_t unset_len, empty_len;
    (void)self;
    Py_ssize_t rows_hint = 1024;
    PyObject *interner = Py_None;
    if (!PyArg_ParseTuple(args, "y*inOy#y#|nO", &block, &separator, &n_fields, &spec, &unset,
                          &unset_len, &empty, &empty_len, &rows_hint, &interner)) {
        return NULL;
    }
    Distinct *interned = NULL;
    if (interner != Py_None) {
        if (!PyObject_TypeCheck(interner, &InternerType)) {
            PyBuffer_Release(&block);
            PyErr_SetString(PyExc_TypeError, "interner must be an Interner or None");
            return NULL;
        }
        interned = &((Interner *)interner)->table;
        interned->last_text = NULL; /* it pointed into an earlier block */
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
    if (rows_hint < 1 || rows_hint > block.len + 1) rows_hint = block.len + 1;
    if (buf_grow(&rows_at, rows_hint * (Py_ssize_t)sizeof(int32_t)) < 0) goto done;
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
        if (field < 0 || field >= n_fields || slot_of[field] >= 0 || kind < 0 || kind > 3 ||
            (kind == KIND_INTERNED && interned == NULL)) {
            PyErr_Format(PyExc_ValueError, "bad column spec at %zd", i);
            goto done;
        }
        slot_of[field] = i;
        if (column_init(&columns[i], kind, rows_hint, interned) < 0) goto done;
        initialized++;
    }

    const char *p = block.buf, *end = p + block.len;
    const char sep = (char)separator;
    int32_t line = 0, rows = 0;
    Py_ssize_t cap_rows = rows_hint;
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        const char *line_end = nl ? nl : end;
        const char *content_end = line_end;
        if (content_end > p && content_end[-1] == '\r') content_end--;
        if (content_end == p) {
            if (buf_put(&empties, &line, sizeof(line)) < 0) goto done;
        } else {
            /* Split; remember where the wanted fields are until the count is known. */
            Py_ssize_t field = split_line(p, content_end, end, sep, slot_of, n_fields, starts, lens);
            if (field != n_fields) {
                if (wrong_first_count < 0) wrong_first_count = (long)field;
                if (buf_put(&wrong, &line, sizeof(line)) < 0) goto done;
            } else {
                if (rows == cap_rows) {
                    cap_rows *= 2;
                    if (buf_grow(&rows_at, cap_rows * (Py_ssize_t)sizeof(int32_t)) < 0) goto done;
                    for (Py_ssize_t i = 0; i < n_columns; i++) {
                        if (column_reserve(&columns[i], cap_rows) < 0) goto done;
                    }
                }
                for (Py_ssize_t i = 0; i < n_columns; i++) {
                    if (column_add(&columns[i], starts[i], lens[i], rows, unset, unset_len,
                                   empty, empty_len) < 0) {
                        goto done;
                    }
                }
                ((int32_t *)rows_at.data)[rows] = line;
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

    rows_at.len = rows * (Py_ssize_t)sizeof(int32_t);
    for (Py_ssize_t i = 0; i < n_columns; i++) {
        columns[i].values.len = (rows + (columns[i].kind == KIND_TEXT)) * column_width(&columns[i]);
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
    if (interned != NULL) interned->last_text = NULL;
    for (Py_ssize_t i = 0; i < initialized; i++) column_free(&columns[i]);
    PyMem_Free(columns);
    PyMem_Free(slot_of);
    PyMem_Free(starts);
    PyMem_Free(lens);
    buf_free(&rows_at);
    buf_free(&wrong);
    buf_free(&empties);
    Py_XDECREF(seq);
    PyBuffer_Release(&block);
    return result;
}

PyDoc_STRVAR(count_newlines_doc,
"count_newlines(data, start=0, end=len(data))\n"
"--\n\n"
"Number of newline bytes in ``data[start:end]``, without copying the range.");

/* Clamp end to the buffer; 0, or -1 with ValueError (buffer released) for a bad start. */
static int byte_range(Py_buffer *data, Py_ssize_t start, Py_ssize_t *end) {
    if (*end > data->len) *end = data->len;
    if (start < 0 || start > *end) {
        PyBuffer_Release(data);
        PyErr_SetString(PyExc_ValueError, "bad range");
        return -1;
    }
    return 0;
}

static PyObject *count_newlines(PyObject *self, PyObject *args) {
    Py_buffer data;
    Py_ssize_t start = 0, end = PY_SSIZE_T_MAX;
    (void)self;
    if (!PyArg_ParseTuple(args, "y*|nn", &data, &start, &end)) return NULL;
    if (byte_range(&data, start, &end) < 0) return NULL;
    const unsigned char *p = (const unsigned char *)data.buf + start;
    const unsigned char *stop = (const unsigned char *)data.buf + end;
    Py_ssize_t count = 0;
#ifdef __SSE2__
    /* Byte lanes count matches (a match is -1, subtracted) for up to 255 steps, then
     * _mm_sad_epu8 adds the lanes up: no popcount, which baseline x86-64 lacks. */
    const __m128i newline = _mm_set1_epi8('\n'), zero = _mm_setzero_si128();
    while (stop - p >= 16) {
        __m128i lanes = zero;
        for (int step = 0; step < 255 && stop - p >= 16; step++, p += 16) {
            __m128i chunk = _mm_loadu_si128((const __m128i *)p);
            lanes = _mm_sub_epi8(lanes, _mm_cmpeq_epi8(chunk, newline));
        }
        __m128i sums = _mm_sad_epu8(lanes, zero);
        count += _mm_cvtsi128_si64(sums) + _mm_cvtsi128_si64(_mm_unpackhi_epi64(sums, sums));
    }
#endif
    for (; p < stop; p++) count += *p == '\n';
    PyBuffer_Release(&data);
    return PyLong_FromSsize_t(count);
}

PyDoc_STRVAR(localize_doc,
"localize(meaning, orig, resp, n_canonical)\n"
"--\n\n"
"Two columns of interned address codes as codes into one chunk-local table.\n\n"
"``meaning`` (int32 per interned code) is the code's canonical address index, or -1\n"
"(no value) or -2 (not an address); ``orig`` and ``resp`` are int32 codes, -1 for no\n"
"value. Returns ``(orig_idx, resp_idx, orig_state, resp_state, used)``: int32 indices\n"
"into the table (-1 where there is no address), uint8 states (0 an address, 1 no value,\n"
"2 not an address), and the int64 canonical indices the table holds, ascending.");

static PyObject *localize(PyObject *self, PyObject *args) {
    Py_buffer meaning = {0}, sides[2] = {{0}, {0}};
    Py_ssize_t n_canonical;
    PyObject *result = NULL;
    int32_t *local = NULL;
    (void)self;
    if (!PyArg_ParseTuple(args, "y*y*y*n", &meaning, &sides[0], &sides[1], &n_canonical)) {
        return NULL;
    }
    Py_ssize_t n_meaning = meaning.len / 4, rows[2] = {sides[0].len / 4, sides[1].len / 4};
    const int32_t *means = meaning.buf;
    Buf idx[2] = {{0}, {0}}, state[2] = {{0}, {0}}, used = {0};
    if (meaning.len % 4 || sides[0].len % 4 || sides[1].len % 4 || n_canonical < 0) {
        PyErr_SetString(PyExc_ValueError, "localize: int32 buffers expected");
        goto done;
    }
    /* Mark the canonical indices in use, then number them in ascending order. */
    local = PyMem_Calloc((size_t)(n_canonical ? n_canonical : 1), sizeof(int32_t));
    if (local == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (int side = 0; side < 2; side++) {
        const int32_t *codes = sides[side].buf;
        for (Py_ssize_t r = 0; r < rows[side]; r++) {
            int32_t code = codes[r];
            if (code >= n_meaning) {
                PyErr_Format(PyExc_IndexError, "localize: code %d past the meanings", code);
                goto done;
            }
            int32_t m = code < 0 ? -1 : means[code];
            if (m >= n_canonical) {
                PyErr_Format(PyExc_IndexError, "localize: canonical index %d too large", m);
                goto done;
            }
            if (m >= 0) local[m] = 1;
        }
    }
    int32_t next = 0;
    for (Py_ssize_t m = 0; m < n_canonical; m++) {
        if (!local[m]) continue;
        int64_t canonical = m;
        if (buf_put(&used, &canonical, sizeof(canonical)) < 0) goto done;
        local[m] = next++;
    }
    for (int side = 0; side < 2; side++) {
        const int32_t *codes = sides[side].buf;
        if (buf_grow(&idx[side], rows[side] * 4 + 1) < 0 ||
            buf_grow(&state[side], rows[side] + 1) < 0) {
            goto done;
        }
        int32_t *out = (int32_t *)idx[side].data;
        unsigned char *st = (unsigned char *)state[side].data;
        for (Py_ssize_t r = 0; r < rows[side]; r++) {
            int32_t m = codes[r] < 0 ? -1 : means[codes[r]];
            out[r] = m >= 0 ? local[m] : -1;
            st[r] = m >= 0 ? 0 : m == -1 ? 1 : 2;
        }
        idx[side].len = rows[side] * 4;
        state[side].len = rows[side];
    }
    PyObject *parts[5] = {buf_finish(&idx[0]), buf_finish(&idx[1]), buf_finish(&state[0]),
                          buf_finish(&state[1]), buf_finish(&used)};
    if (parts[0] && parts[1] && parts[2] && parts[3] && parts[4]) {
        result = PyTuple_Pack(5, parts[0], parts[1], parts[2], parts[3], parts[4]);
    }
    for (int i = 0; i < 5; i++) Py_XDECREF(parts[i]);

done:
    PyMem_Free(local);
    for (int side = 0; side < 2; side++) {
        buf_free(&idx[side]);
        buf_free(&state[side]);
        PyBuffer_Release(&sides[side]);
    }
    buf_free(&used);
    PyBuffer_Release(&meaning);
    return result;
}

PyDoc_STRVAR(nth_newline_doc,
"nth_newline(data, start, end, n)\n"
"--\n\n"
"Offset in ``data`` of the ``n``-th (1-based) newline of ``data[start:end]``, or -1.");

static PyObject *nth_newline(PyObject *self, PyObject *args) {
    Py_buffer data;
    Py_ssize_t start, end, n;
    (void)self;
    if (!PyArg_ParseTuple(args, "y*nnn", &data, &start, &end, &n)) return NULL;
    if (byte_range(&data, start, &end) < 0) return NULL;
    Py_ssize_t found = -1;
    const char *base = data.buf, *p = base + start, *stop = base + end;
    while (n > 0 && p < stop) {
        const char *nl = memchr(p, '\n', (size_t)(stop - p));
        if (nl == NULL) break;
        if (--n == 0) found = nl - base;
        p = nl + 1;
    }
    PyBuffer_Release(&data);
    return PyLong_FromSsize_t(found);
}

static PyMethodDef methods[] = {
    {"scan", scan, METH_VARARGS, scan_doc},
    {"nth_newline", nth_newline, METH_VARARGS, nth_newline_doc},
    {"localize", localize, METH_VARARGS, localize_doc},
    {"count_newlines", count_newlines, METH_VARARGS, count_newlines_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "_tsvscan",
    .m_doc = "Zeek ASCII (TSV) data lines into columns; see zeeklog.py.",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC PyInit__tsvscan(void) {
    if (PyType_Ready(&InternerType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) return NULL;
    Py_INCREF(&InternerType);
    if (PyModule_AddObject(m, "Interner", (PyObject *)&InternerType) < 0) {
        Py_DECREF(&InternerType);
        Py_DECREF(m);
        return NULL;
    }
    if (PyModule_AddIntConstant(m, "INTERNED", KIND_INTERNED) < 0 ||
        PyModule_AddIntConstant(m, "NUMBER", KIND_NUMBER) < 0 ||
        PyModule_AddIntConstant(m, "DISTINCT", KIND_DISTINCT) < 0 ||
        PyModule_AddIntConstant(m, "TEXT", KIND_TEXT) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
