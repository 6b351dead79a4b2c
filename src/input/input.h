/*
 * input.h — the one reader of the files users give candex: vectors (.fvecs,
 * .npy, raw float32, text on stdin), ground truth (.ivecs), ids and keys.
 * The builder, `candex recall`, `candex query` and `candex demo` all read
 * through it, so every command accepts the same files, refuses the same
 * files, and says why in the same words.
 *
 * DESIGN
 * The rules, once:
 *  - The format comes from the extension (.fvecs, .npy, any case) unless
 *    the caller names one (`--format fvecs|npy|raw`). Any other extension
 *    is refused, and a file that looks like text is called so: raw float32
 *    is read only when named explicitly, with the dimension from --dim (or
 *    the index), so that a CSV given with --dim is not indexed as floats.
 *  - .npy: format 1, 2 or 3; C order; exactly 2-D (rows x dim); dtypes
 *    float32, float16 and float64 ('<f4', '<f2', '<f8', or '=' on this
 *    little-endian machine); float64 is converted, and a value out of
 *    float32 range is an error like NaN. Big-endian, integer and other
 *    dtypes are refused by name.
 *  - Every row has 1..65536 components; every component is finite.
 *  - A file is whole rows and nothing else: a size that does not divide
 *    into rows, or bytes after the rows an .npy header announces, is an
 *    error naming the row where the file ends; an empty file is EEMPTY.
 *  - Ids: one int64 per line (spaces around it ignored, no blank lines) or
 *    a 1-D .npy of int64/int32; unique. Keys: one non-empty key per line
 *    ("\r\n" accepted, a final newline optional), at most
 *    CDX_INPUT_MAX_KEY_BYTES, no NUL, unique.
 *  - Errors name the file and the 0-based row (text: the 1-based line).
 *
 * Vector files are mapped read-only and read in row ranges; a caller that
 * scans a file larger than memory drops the pages it has finished with
 * (cdx_input_release), so its RSS stays bounded.
 */
#ifndef CANDEX_INPUT_H
#define CANDEX_INPUT_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "common/common.h"

#define CDX_INPUT_MAX_DIM       65536
#define CDX_INPUT_MAX_KEY_BYTES 4096

/* What a vector file holds. The first four numbers are stored in build
 * plans (plan.json keeps the names), so they never change. */
enum cdx_input_format {
	CDX_INPUT_AUTO = 0,    /* asked for: by the extension */
	CDX_INPUT_FVECS = 1,   /* per row: int32 dim, dim x float32 */
	CDX_INPUT_NPY_F32 = 2, /* .npy with its dtype: */
	CDX_INPUT_NPY_F16 = 3,
	CDX_INPUT_RAW_F32 = 4, /* headerless rows x dim float32, named explicitly */
	CDX_INPUT_NPY_F64 = 5,
	CDX_INPUT_NPY = 6, /* asked for: .npy, the dtype from its header */
};
/* cdx_input_format_name: "fvecs" "npy-f32" "npy-f16" "npy-f64" "raw-f32"
 * (and "auto", "npy" for what can be asked for). */
const char *cdx_input_format_name(int format);
/* cdx_input_format_parse reads what a user may ask for: "fvecs", "npy",
 * "raw" (CDX_EINVAL with a message otherwise). */
int cdx_input_format_parse(const char *s, int *format);
/* cdx_input_format_family is what to ask cdx_input_open for to read a file
 * again whose format was found before (a build plan's): CDX_INPUT_FVECS,
 * CDX_INPUT_NPY (whatever the dtype: the caller compares it) or
 * CDX_INPUT_RAW_F32. */
int cdx_input_format_family(int format);
/* cdx_input_format_from_name is the inverse of cdx_input_format_name for
 * the stored formats; 0 if name is none of them. */
int cdx_input_format_from_name(const char *name);

/* ---- vector files --------------------------------------------------------- */

typedef struct cdx_input cdx_input;

/* cdx_input_open maps a vector file and checks its framing by the rules
 * above. format: CDX_INPUT_AUTO, CDX_INPUT_FVECS, CDX_INPUT_NPY or
 * CDX_INPUT_RAW_F32 (or a stored format, as a build plan reopens its
 * input). dim 0 means "from the file"; otherwise it must agree with the
 * file; raw needs it. On success *ip is set; close with cdx_input_close(). */
int cdx_input_open(cdx_input **ip, const char *path, uint32_t dim, int format);
void cdx_input_close(cdx_input *in); /* NULL is a no-op */
uint64_t cdx_input_rows(const cdx_input *in);
uint32_t cdx_input_dim(const cdx_input *in);
int cdx_input_format(const cdx_input *in); /* the format found, never AUTO or NPY */
uint64_t cdx_input_file_bytes(const cdx_input *in);
const char *cdx_input_path(const cdx_input *in);

/* cdx_input_read converts rows [row, row+n) to float32 into out (n x dim),
 * checking each row's dimension (fvecs) and that every value is finite.
 * CDX_EDIM / CDX_ENONFINITE errors name the file, row (0-based) and column. */
int cdx_input_read(cdx_input *in, uint64_t row, size_t n, float *out);
/* cdx_input_read_rows is cdx_input_read for n rows listed in ascending order. */
int cdx_input_read_rows(cdx_input *in, const uint64_t *rows, size_t n, float *out);
/* cdx_input_release drops this process's mapping of every page that lies
 * wholly before row end (MADV_DONTNEED): the page cache keeps the data, but
 * a scan no longer grows our RSS. Rows before end can still be read (they
 * fault back in). */
void cdx_input_release(cdx_input *in, uint64_t end);
/* cdx_input_prefetch asks the kernel to read rows [row, row+n) ahead. */
void cdx_input_prefetch(cdx_input *in, uint64_t row, size_t n);

/* An n x dim float32 matrix in memory. Owned; free with cdx_vecs_fini(). */
struct cdx_vecs {
	float *x;
	size_t n;
	uint32_t dim;
};

/* cdx_vecs_read reads rows [first, first + count) of a vector file
 * (cdx_input_open's rules; count 0 = to the end) into memory. Asking for
 * rows past the end is an error. */
int cdx_vecs_read(
    struct cdx_vecs *v, const char *path, uint32_t dim, int format, uint64_t first, size_t count);
/* cdx_vecs_read_text reads text vectors from f: one vector a line,
 * numbers separated by spaces, tabs or commas; blank lines and '#'
 * comments skipped; every line as long as the first; name (e.g. "stdin")
 * is used in errors. */
int cdx_vecs_read_text(struct cdx_vecs *v, FILE *f, const char *name);
void cdx_vecs_fini(struct cdx_vecs *v); /* NULL is a no-op */

/* cdx_ivecs_read reads an .ivecs file (ground truth: per row an int32 k
 * and k int32s; every row the same k). *rows is malloc'd (n x k); the
 * caller frees it. */
int cdx_ivecs_read(const char *path, int32_t **rows, size_t *n, uint32_t *k);

/* ---- ids and keys ------------------------------------------------------------ */

/* cdx_ids_load reads item ids (text or .npy, see DESIGN). expect is the
 * number of rows they must match (0: any number, at least one). On success
 * *ids (malloc'd, the caller frees it) holds *n ids. Duplicates are
 * CDX_EDUP naming both lines (rows). */
int cdx_ids_load(const char *path, uint64_t expect, int64_t **ids, uint64_t *n);

/* cdx_keys_check validates a keys file against rows (see DESIGN; keys are
 * compared by a 96-bit hash). *bytes (may be NULL) gets the file size. */
int cdx_keys_check(const char *path, uint64_t rows, uint64_t *bytes);

/* A sequential reader of a keys file, one key per call. */
typedef struct cdx_keys_reader cdx_keys_reader;
int cdx_keys_reader_open(cdx_keys_reader **rp, const char *path);
/* cdx_keys_reader_next sets *key and *len to the next key (valid until the
 * next call; not NUL-terminated). CDX_ECORRUPT at end of file. */
int cdx_keys_reader_next(cdx_keys_reader *r, const char **key, size_t *len);
void cdx_keys_reader_close(cdx_keys_reader *r); /* NULL is a no-op */

/* ---- item attributes (docs/recommenders.md, "Attributes") ------------------ */

struct cdx_attr_schema; /* shard/attrs.h */

/* cdx_attrs_scan checks an attributes file for rows items: a header line of
 * tab-separated name:type columns (int, bool, enum, set, group), then
 * exactly rows lines of tab-separated values, in the input's row order.
 * Errors name the file, line and attribute. On success *schema holds every
 * column with the enum and set values found (sorted) and the caller frees
 * it with cdx_attr_schema_free(); *bytes (may be NULL) gets the file size. */
int cdx_attrs_scan(const char *path, uint64_t rows, struct cdx_attr_schema **schema, uint64_t *bytes);
/* cdx_attrs_read_rows reads the attributes of the rows keep(row, ctx)
 * accepts, exactly nrows of them, into cols[c] (malloc'd, nrows x the
 * column's width; the caller frees each), in row order. schema is the one
 * cdx_attrs_scan returned for the same file. */
int cdx_attrs_read_rows(const char *path, const struct cdx_attr_schema *schema, uint64_t rows,
    int (*keep)(uint64_t row, const void *ctx), const void *ctx, uint64_t nrows, void **cols);

#endif
