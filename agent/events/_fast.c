/* moray.agent._fast: the compiled hot path for the most frequent kernel record, open.
 *
 * open_line(rec, offset_ns, mid) -> the event's JSON line, byte for byte what the Python
 * path writes (agent/events/decode.py decode_open -> agent/output/schema.py Formatter ->
 * orjson.dumps(..., OPT_APPEND_NEWLINE)):
 *
 *   {"type":"open","time":"<iso>" + mid + <the file object> + "}\n"
 *
 * `mid` is the part the Python side caches per process view: `","node":...,"process":
 * {...},"parent":...,"container":...,"file":` (agent/pipeline/fastopen.py). The flags
 * and error fragments come from Python callbacks (set_tables), cached here per value, so
 * the names are Python's own (os.O_*, errno.errorcode).
 *
 * Memory safety: the record is attacker-influenced (paths are chosen by any process on the
 * host). Every read is checked against the record's size as decode.py does: a record
 * shorter than mr_open, or whose path_len runs past its end, raises ValueError (the
 * pipeline counts it in decode_errors). The output buffer is sized for the worst case
 * before writing (6 bytes per path byte: a control character as \u00XX).
 *
 * Hostile bytes: the path is decoded as Python's bytes.decode("utf-8", "backslashreplace")
 * (a byte that is not part of a well-formed UTF-8 sequence, Unicode table 3-7, becomes
 * \xNN) and escaped as orjson escapes strings (\" \\ \b \t \n \f \r, other C0 controls as
 * \u00xx, everything else as is). tests/unit/agent/test_fast_open.py compares the bytes of
 * both paths over recorded, generated and random records.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

/* agent/bpf/abi.py: mr_hdr (16) + mr_proc (72) + flags, ret, pflags, path_len, 4x */
#define HDR_TS 8
#define O_FLAGS 88
#define O_RET 92
#define O_PFLAGS 96
#define O_PATHLEN 98
#define OPEN_SIZE 104
#define F_PATH_TRUNC (1u << 3)
#define F_PATH_RAW (1u << 4)
#define F_ROOT_PRIVATE (1u << 5)
#define TABLE_MAX 1024

static PyObject *flags_fn, *error_fn;   /* Python callbacks: int -> bytes fragment */
static PyObject *flags_cache, *error_cache;  /* int -> bytes, cleared when full */
static long long last_s;
static int have_last;  /* last_s and last_prefix hold a second */
static char last_prefix[64];
static size_t last_prefix_len;

static inline uint16_t rd16(const unsigned char *p) { uint16_t v; memcpy(&v, p, 2); return v; }
static inline uint32_t rd32(const unsigned char *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static inline uint64_t rd64(const unsigned char *p) { uint64_t v; memcpy(&v, p, 8); return v; }

/* The fragment for `key` from `cache`, or from `fn` (cached). A borrowed reference. */
static PyObject *fragment(PyObject *cache, PyObject *fn, long key)
{
    PyObject *k = PyLong_FromLong(key);
    if (k == NULL)
        return NULL;
    PyObject *v = PyDict_GetItemWithError(cache, k);
    if (v == NULL && !PyErr_Occurred()) {
        if (fn == NULL) {
            PyErr_SetString(PyExc_RuntimeError, "moray.agent._fast: set_tables() not called");
            Py_DECREF(k);
            return NULL;
        }
        PyObject *got = PyObject_CallOneArg(fn, k);
        if (got != NULL && !PyBytes_Check(got)) {
            PyErr_SetString(PyExc_TypeError, "a table callback must return bytes");
            Py_CLEAR(got);
        }
        if (got != NULL) {
            if (PyDict_GET_SIZE(cache) >= TABLE_MAX)
                PyDict_Clear(cache);
            if (PyDict_SetItem(cache, k, got) < 0) {
                Py_DECREF(got);
                Py_DECREF(k);
                return NULL;
            }
            Py_DECREF(got);  /* the cache holds it */
            v = got;
        }
    }
    Py_DECREF(k);
    return v;
}

/* The length of the well-formed UTF-8 sequence at p (Unicode table 3-7), 0 if none. */
static inline Py_ssize_t utf8_seq(const unsigned char *p, Py_ssize_t left)
{
    unsigned char c = p[0];
    if (c < 0x80)
        return 1;
    if (c >= 0xC2 && c <= 0xDF)
        return (left >= 2 && (p[1] & 0xC0) == 0x80) ? 2 : 0;
    if (c >= 0xE0 && c <= 0xEF) {
        if (left < 3)
            return 0;
        unsigned char lo = 0x80, hi = 0xBF;
        if (c == 0xE0)
            lo = 0xA0;
        else if (c == 0xED)
            hi = 0x9F;
        return (p[1] >= lo && p[1] <= hi && (p[2] & 0xC0) == 0x80) ? 3 : 0;
    }
    if (c >= 0xF0 && c <= 0xF4) {
        if (left < 4)
            return 0;
        unsigned char lo = 0x80, hi = 0xBF;
        if (c == 0xF0)
            lo = 0x90;
        else if (c == 0xF4)
            hi = 0x8F;
        return (p[1] >= lo && p[1] <= hi && (p[2] & 0xC0) == 0x80 &&
                (p[3] & 0xC0) == 0x80) ? 4 : 0;
    }
    return 0;
}

static const char HEX[] = "0123456789abcdef";

/* JSON string body of bytes(s).decode("utf-8", "backslashreplace") as orjson writes it.
 * `out` has room for 6 * n bytes. Returns the end. */
static char *escape_path(char *out, const unsigned char *s, Py_ssize_t n)
{
    Py_ssize_t i = 0;
    while (i < n) {
        unsigned char c = s[i];
        if (c >= 0x20 && c < 0x80 && c != '"' && c != '\\') {
            *out++ = (char)c;
            i++;
            continue;
        }
        if (c < 0x80) {
            *out++ = '\\';
            switch (c) {
            case '"': *out++ = '"'; break;
            case '\\': *out++ = '\\'; break;
            case '\b': *out++ = 'b'; break;
            case '\t': *out++ = 't'; break;
            case '\n': *out++ = 'n'; break;
            case '\f': *out++ = 'f'; break;
            case '\r': *out++ = 'r'; break;
            default:
                memcpy(out, "u00", 3);
                out[3] = HEX[c >> 4];
                out[4] = HEX[c & 15];
                out += 5;
            }
            i++;
            continue;
        }
        Py_ssize_t k = utf8_seq(s + i, n - i);
        if (k == 0) {  /* backslashreplace: \xNN, whose backslash orjson escapes */
            memcpy(out, "\\\\x", 3);
            out[3] = HEX[c >> 4];
            out[4] = HEX[c & 15];
            out += 5;
            i++;
        } else {
            memcpy(out, s + i, (size_t)k);
            out += k;
            i += k;
        }
    }
    return out;
}

/* Schema's Clock.iso: "%Y-%m-%dT%H:%M:%S." of the second, then 9 digits and Z */
static int iso_time(char *out, uint64_t ts, long long offset)
{
    /* floor division of ts + offset by 1e9, without overflow: ts < 2^64 ns is < 2^35 s */
    long long off_s = offset / 1000000000, off_f = offset % 1000000000;
    if (off_f < 0) {
        off_f += 1000000000;
        off_s -= 1;
    }
    long long s = (long long)(ts / 1000000000) + off_s;
    long long frac = (long long)(ts % 1000000000) + off_f;
    if (frac >= 1000000000) {
        frac -= 1000000000;
        s += 1;
    }
    if (!have_last || s != last_s) {
        struct tm tm;
        time_t tt = (time_t)s;
        if (gmtime_r(&tt, &tm) == NULL) {
            PyErr_SetString(PyExc_OverflowError, "timestamp out of range");
            return -1;
        }
        size_t n = strftime(last_prefix, sizeof(last_prefix), "%Y-%m-%dT%H:%M:%S.", &tm);
        if (n == 0) {
            PyErr_SetString(PyExc_OverflowError, "timestamp out of range");
            return -1;
        }
        last_prefix_len = n;
        last_s = s;
        have_last = 1;
    }
    memcpy(out, last_prefix, last_prefix_len);
    int m = snprintf(out + last_prefix_len, 16, "%09lldZ", frac);
    return (int)last_prefix_len + m;
}

#define PUT(lit) do { memcpy(w, lit, sizeof(lit) - 1); w += sizeof(lit) - 1; } while (0)

static PyObject *open_line(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    if (nargs != 3 || !PyBytes_Check(args[0]) || !PyBytes_Check(args[2])) {
        PyErr_SetString(PyExc_TypeError, "open_line(rec: bytes, offset_ns: int, mid: bytes)");
        return NULL;
    }
    const unsigned char *rec = (const unsigned char *)PyBytes_AS_STRING(args[0]);
    Py_ssize_t size = PyBytes_GET_SIZE(args[0]);
    long long offset = PyLong_AsLongLong(args[1]);
    if (offset == -1 && PyErr_Occurred())
        return NULL;
    if (size < OPEN_SIZE)
        return PyErr_Format(PyExc_ValueError, "record op=4: %zd bytes, need %d", size,
                            OPEN_SIZE);
    uint32_t flags = rd32(rec + O_FLAGS);
    int32_t ret = (int32_t)rd32(rec + O_RET);
    uint16_t pflags = rd16(rec + O_PFLAGS);
    Py_ssize_t n = rd16(rec + O_PATHLEN);
    if (OPEN_SIZE + n > size)
        return PyErr_Format(PyExc_ValueError, "record op=4: path of %zd bytes past the "
                            "record end", n);
    /* strong references: the second callback may run any Python code */
    PyObject *fl = fragment(flags_cache, flags_fn, (long)flags);
    if (fl == NULL)
        return NULL;
    Py_INCREF(fl);
    PyObject *er = NULL;
    if (ret < 0) {
        er = fragment(error_cache, error_fn, (long)ret);
        if (er == NULL) {
            Py_DECREF(fl);
            return NULL;
        }
        Py_INCREF(er);
    }
    Py_ssize_t mid_n = PyBytes_GET_SIZE(args[2]);
    Py_ssize_t cap = 64 + 48 + mid_n + PyBytes_GET_SIZE(fl) + (er ? PyBytes_GET_SIZE(er) : 48)
                     + 6 * n + 160;
    PyObject *out = PyBytes_FromStringAndSize(NULL, cap);
    if (out == NULL)
        goto fail;
    char *start = PyBytes_AS_STRING(out), *w = start;
    PUT("{\"type\":\"open\",\"time\":\"");
    int tn = iso_time(w, rd64(rec + HDR_TS), offset);
    if (tn < 0) {
        Py_DECREF(out);
        goto fail;
    }
    w += tn;
    memcpy(w, PyBytes_AS_STRING(args[2]), (size_t)mid_n);
    w += mid_n;
    PUT("{\"path\":\"");
    w = escape_path(w, rec + OPEN_SIZE, n);
    PUT("\",");
    memcpy(w, PyBytes_AS_STRING(fl), (size_t)PyBytes_GET_SIZE(fl));
    w += PyBytes_GET_SIZE(fl);
    PUT(",");
    if (er != NULL) {
        memcpy(w, PyBytes_AS_STRING(er), (size_t)PyBytes_GET_SIZE(er));
        w += PyBytes_GET_SIZE(er);
    } else {
        w += sprintf(w, "\"result\":0,\"error\":null,\"fd\":%d", (int)ret);
    }
    int as_written = (pflags & F_PATH_RAW) != 0;
    if (as_written)
        PUT(",\"path_as_written\":true");
    else
        PUT(",\"path_as_written\":false");
    if (pflags & F_PATH_TRUNC)
        PUT(",\"truncated\":true");
    else
        PUT(",\"truncated\":false");
    if (as_written)
        PUT(",\"root\":null}}\n");
    else if (pflags & F_ROOT_PRIVATE)
        PUT(",\"root\":\"private\"}}\n");
    else
        PUT(",\"root\":\"host\"}}\n");
    Py_DECREF(fl);
    Py_XDECREF(er);
    if (_PyBytes_Resize(&out, w - start) < 0)
        return NULL;
    return out;
fail:
    Py_DECREF(fl);
    Py_XDECREF(er);
    return NULL;
}

static PyObject *set_tables(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *f, *e;
    if (!PyArg_ParseTuple(args, "OO:set_tables", &f, &e))
        return NULL;
    if (!PyCallable_Check(f) || !PyCallable_Check(e)) {
        PyErr_SetString(PyExc_TypeError, "set_tables(flags_json, error_json): callables");
        return NULL;
    }
    Py_INCREF(f);
    Py_INCREF(e);
    Py_XSETREF(flags_fn, f);
    Py_XSETREF(error_fn, e);
    PyDict_Clear(flags_cache);
    PyDict_Clear(error_cache);
    return Py_NewRef(Py_None);
}

static PyMethodDef methods[] = {
    {"open_line", (PyCFunction)(void (*)(void))open_line, METH_FASTCALL,
     "open_line(rec, offset_ns, mid) -> bytes: an open record's JSON line"},
    {"set_tables", set_tables, METH_VARARGS,
     "set_tables(flags_json, error_json): the callbacks naming flags and errors"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "moray.agent._fast",
    "The compiled hot path for open records (agent/pipeline/fastopen.py)", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__fast(void)
{
    flags_cache = PyDict_New();
    error_cache = PyDict_New();
    if (flags_cache == NULL || error_cache == NULL)
        return NULL;
    return PyModule_Create(&module);
}
