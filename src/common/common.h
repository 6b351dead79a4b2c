/*
 * common.h — small pieces every candex module uses: error details, logging,
 * clocks, hashing, file I/O that reports disk-full, and a seeded RNG.
 *
 * Error details: functions return a code from <candex/err.h> and may leave a
 * human-readable message (naming the file, row, field...) in a thread-local
 * buffer with cdx_error(). The caller reads it with cdx_last_error() on the
 * same thread, before the next candex call, as with faiss_get_last_error().
 */
#ifndef CANDEX_COMMON_H
#define CANDEX_COMMON_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <candex/err.h>

#define CDX_PRINTF(f, a) __attribute__((format(printf, f, a)))
#define CDX_ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))
#define CDX_MIN(a, b)    ((a) < (b) ? (a) : (b))
#define CDX_MAX(a, b)    ((a) > (b) ? (a) : (b))

/* cdx_error records a message for code and returns code. */
int cdx_error(int code, const char *fmt, ...) CDX_PRINTF(2, 3);
/* cdx_error_errno is cdx_error with ": strerror(errno)" appended; it maps
 * ENOSPC/EDQUOT to CDX_ENOSPC and ENOMEM to CDX_ENOMEM, else uses code. */
int cdx_error_errno(int code, const char *fmt, ...) CDX_PRINTF(2, 3);
/* cdx_last_error returns the last message on this thread, or the code's
 * description if none was set since cdx_error_clear(). Never NULL. */
const char *cdx_last_error(void);
void cdx_error_clear(void);

/* UTF-8 for text that leaves the process (protobuf strings must be valid
 * UTF-8; strict decoders refuse the whole message otherwise).
 * cdx_utf8_cut returns the largest n <= max such that s[0, n) does not end
 * inside a character: use it for every byte limit, as "%.*s" with
 * (int) cdx_utf8_cut(s, 100), never "%.100s". It reads at most max bytes
 * of s and stops at a NUL, so s need not be NUL-terminated past max. */
size_t cdx_utf8_cut(const char *s, size_t max);
/* cdx_utf8_sanitize makes s valid UTF-8 in place: each byte that does not
 * belong to a valid character becomes '?', and a character cut short at the
 * end (by a snprintf buffer) is removed. */
void cdx_utf8_sanitize(char *s);
/* cdx_utf8_copy copies s into out[size], cut on a character boundary and
 * sanitized; out is always NUL-terminated. */
void cdx_utf8_copy(char *out, size_t size, const char *s);
/* cdx_utf8_valid: 1 if s[0, len) is valid UTF-8 (RFC 3629), else 0. */
int cdx_utf8_valid(const char *s, size_t len);
/* cdx_utf8_char_len: the length (1-4) of the valid UTF-8 character that
 * starts at s (left bytes available), or 0 if none does. */
size_t cdx_utf8_char_len(const char *s, size_t left);

/* Logging: one line per event to stderr, "time level msgid: message".
 * msgid is a stable identifier (e.g. "SRV-RELOAD") that operators grep for. */
enum cdx_log_level { CDX_LOG_DEBUG, CDX_LOG_INFO, CDX_LOG_WARN, CDX_LOG_ERROR };
void cdx_log(int level, const char *msgid, const char *fmt, ...) CDX_PRINTF(3, 4);
void cdx_log_set_level(int level);
int cdx_log_level_parse(const char *s, int *level);
#define cdx_debug(id, ...) cdx_log(CDX_LOG_DEBUG, id, __VA_ARGS__)
#define cdx_info(id, ...)  cdx_log(CDX_LOG_INFO, id, __VA_ARGS__)
#define cdx_warn(id, ...)  cdx_log(CDX_LOG_WARN, id, __VA_ARGS__)
#define cdx_err(id, ...)   cdx_log(CDX_LOG_ERROR, id, __VA_ARGS__)

/* Clocks. */
uint64_t cdx_now_us(void);  /* monotonic */
uint64_t cdx_wall_ms(void); /* Unix epoch */
void cdx_iso8601_utc(char out[32], uint64_t wall_ms);

/* Hashing. XXH64 (the lz4 family's checksum), one-shot and streaming, from
 * Debian's xxhash (src/common/hash.c). */
uint64_t cdx_xxh64(const void *data, size_t len, uint64_t seed);
/* Room for an XXH64_state_t (checked in hash.c), so callers can embed one
 * without including xxhash.h. */
typedef struct cdx_xxh64_state {
	uint64_t opaque[12];
} cdx_xxh64_state;
void cdx_xxh64_init(cdx_xxh64_state *st, uint64_t seed);
void cdx_xxh64_update(cdx_xxh64_state *st, const void *data, size_t len);
uint64_t cdx_xxh64_digest(const cdx_xxh64_state *st);

/* cdx_hexval is the value of a hexadecimal digit, or -1. */
static inline int
cdx_hexval(char c)
{
	return c >= '0' && c <= '9' ? c - '0'
	    : c >= 'a' && c <= 'f'  ? c - 'a' + 10
	    : c >= 'A' && c <= 'F'  ? c - 'A' + 10
	                            : -1;
}

/* splitmix64 mixer: a bijective 64-bit hash, used to spread ids over shards. */
static inline uint64_t
cdx_mix64(uint64_t x)
{
	x += 0x9e3779b97f4a7c15ULL;
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
	x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
	return x ^ (x >> 31);
}

/* Deterministic RNG (splitmix64 stream). */
typedef struct cdx_rng {
	uint64_t s;
} cdx_rng;
static inline void
cdx_rng_seed(cdx_rng *r, uint64_t seed)
{
	r->s = seed;
}
static inline uint64_t
cdx_rng_next(cdx_rng *r)
{
	uint64_t z = (r->s += 0x9e3779b97f4a7c15ULL);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
	return z ^ (z >> 31);
}
/* uniform in [0, 1) */
static inline double
cdx_rng_uniform(cdx_rng *r)
{
	return (double) (cdx_rng_next(r) >> 11) * (1.0 / 9007199254740992.0);
}
double cdx_rng_normal(cdx_rng *r);

/* File helpers. All return CDX_OK or a code with cdx_error() set, naming path. */
int cdx_write_all(int fd, const void *buf, size_t len, const char *path);
int cdx_pwrite_all(int fd, const void *buf, size_t len, uint64_t off, const char *path);
int cdx_read_all(int fd, void *buf, size_t len, uint64_t off, const char *path);
int cdx_fsync_path(const char *path); /* file or directory */
int cdx_mkdir_p(const char *path, int mode);
int cdx_rm_rf(const char *path);
/* cdx_pathf formats a path into out; CDX_EINVAL (with a message) if it does not fit. */
int cdx_pathf(char *out, size_t size, const char *fmt, ...) CDX_PRINTF(3, 4);
/* cdx_read_file reads a whole small file into a NUL-terminated malloc'd buffer. */
int cdx_read_file(const char *path, char **data, size_t *len);
/* cdx_write_file_atomic writes data to path.tmp, fsyncs, renames over path,
 * and fsyncs the directory: readers see the old or the new file, never half. */
int cdx_write_file_atomic(const char *path, const void *data, size_t len);

/* Vector helpers. */
/* cdx_find_nonfinite returns the index of the first non-finite value or -1. */
long cdx_find_nonfinite(const float *v, size_t n);
/* cdx_normalize_rows L2-normalises n rows of dim floats in place (zero rows stay zero). */
void cdx_normalize_rows(float *v, size_t n, size_t dim);
/* half precision conversion (IEEE 754 binary16), portable. */
uint16_t cdx_f32_to_f16(float f);
float cdx_f16_to_f32(uint16_t h);

/* Process set-up for every candex program, first thing in main():
 * Debian's OpenBLAS does not recognise some CPUs and falls back to its slowest
 * kernels unless OPENBLAS_CORETYPE is set before it is loaded (its constructor
 * reads it), and libgomp spins its idle workers unless OMP_WAIT_POLICY is
 * passive. Whichever is unset is set (the kernel for this CPU; passive) and
 * the program re-executes itself once. */
void cdx_process_init(int argc, char **argv);
/* cdx_blas_set_threads caps OpenBLAS's own thread pool (servers use 1: the
 * request workers already use every core). No-op without OpenBLAS. */
void cdx_blas_set_threads(int n);

/* cdx_cpu_count is the number of CPUs this process may run on (its affinity
 * mask, as set by taskset or a Kubernetes CPU-manager pinned pod), at least 1. */
int cdx_cpu_count(void);

/* cdx_conf_read reads a config file of "option = value" lines (# starts a
 * comment; leading dashes of a name are dropped) and calls set for each,
 * with where = "FILE:LINE" for its messages; stops at the first error,
 * which it returns. A line without '=' is CDX_EINVAL. */
int cdx_conf_read(const char *path,
    int (*set)(void *arg, const char *name, const char *value, const char *where), void *arg);

/* Growable byte buffer. */
typedef struct cdx_buf {
	char *data;
	size_t len, cap;
} cdx_buf;
int cdx_buf_reserve(cdx_buf *b, size_t extra);
int cdx_buf_append(cdx_buf *b, const void *p, size_t n);
int cdx_buf_printf(cdx_buf *b, const char *fmt, ...) CDX_PRINTF(2, 3);
void cdx_buf_fini(cdx_buf *b);

/* qsort/bsearch comparators: int64_t values, and char * strings (strcmp). */
int cdx_cmp_i64(const void *a, const void *b);
int cdx_cmp_str(const void *a, const void *b);

#endif
