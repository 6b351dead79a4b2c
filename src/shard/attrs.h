/*
 * attrs.h — item attributes: their schema (in manifest.json) and the ATTRS
 * part of a shard file (one column per attribute, rows in the shard's row
 * order). docs/recommenders.md describes the input file they come from.
 *
 * DESIGN
 * Attributes are small typed columns that a filter reads inside the IVF
 * scan, once per code scanned, so they are stored as plain arrays: int as
 * int32, bool as one byte, enum as a uint16 code into the sorted list of
 * its values, set as a uint64 bitmask over the sorted list of its values
 * (at most 64), group as the xxh64 of its text (crowding only compares
 * groups). The schema travels in every ATTRS part (a shard stays
 * self-contained) and in the manifest (for inspect and for loading checks).
 *
 * The ATTRS part (not flagged required: a server without filters skips it):
 *
 *   "CDXATTR1"  u32 ncols  u32 0  u64 rows
 *   per column: u8 type, u8 width, u16 0, u32 name length, name bytes,
 *               u32 nvalues, per value: u32 length, bytes
 *   zero padding to a multiple of 8
 *   per column: rows x width bytes (little-endian; candex runs on
 *               little-endian hosts), zero-padded to a multiple of 8
 */
#ifndef CANDEX_ATTRS_H
#define CANDEX_ATTRS_H

#include <stddef.h>
#include <stdint.h>

#include "common/common.h"

#define CDX_ATTR_MAX_COLUMNS 32
#define CDX_ATTR_NAME_MAX    32     /* names: [A-Za-z_][A-Za-z0-9_]{0,30} */
#define CDX_ATTR_VALUE_MAX   128    /* bytes of an enum, set or group value */
#define CDX_ATTR_SET_MAX     64     /* values of one set attribute (bits of its mask) */
#define CDX_ATTR_ENUM_MAX    65535u /* values of one enum attribute */

enum cdx_attr_type {
	CDX_ATTR_INT = 1,   /* int32: release year */
	CDX_ATTR_BOOL = 2,  /* explicit */
	CDX_ATTR_ENUM = 3,  /* one value of a few: type = track | episode */
	CDX_ATTR_SET = 4,   /* any of up to 64 values: markets */
	CDX_ATTR_GROUP = 5, /* an id crowding counts: artist, show */
};
const char *cdx_attr_type_name(int type); /* "int" "bool" "enum" "set" "group" */
int cdx_attr_type_parse(const char *name, size_t len, int *type);
size_t cdx_attr_type_width(int type); /* bytes per row: 4 1 2 8 8 */

struct cdx_attr_column {
	char name[CDX_ATTR_NAME_MAX];
	int type;
	uint32_t nvalues; /* enum, set: the values, sorted by strcmp; codes index them */
	char **values;    /* malloc'd, each malloc'd */
};

struct cdx_attr_schema {
	uint32_t ncols;
	struct cdx_attr_column cols[CDX_ATTR_MAX_COLUMNS];
};

void cdx_attr_schema_free(struct cdx_attr_schema *s); /* NULL is a no-op */
/* cdx_attr_schema_copy: *out is a deep copy the caller frees. */
int cdx_attr_schema_copy(const struct cdx_attr_schema *s, struct cdx_attr_schema **out);
/* cdx_attr_schema_equal: same columns, types and values. */
int cdx_attr_schema_equal(const struct cdx_attr_schema *a, const struct cdx_attr_schema *b);
/* cdx_attr_find returns the column named name (len bytes), or -1. */
int cdx_attr_find(const struct cdx_attr_schema *s, const char *name, size_t len);
/* cdx_attr_value_code returns the code of value (len bytes) in an enum or
 * set column (its index in values), or -1. */
int cdx_attr_value_code(const struct cdx_attr_column *col, const char *value, size_t len);
/* cdx_attr_name_valid: [A-Za-z_][A-Za-z0-9_]*, shorter than CDX_ATTR_NAME_MAX. */
int cdx_attr_name_valid(const char *name, size_t len);
/* cdx_attr_group_hash is what a group column stores for a value. */
static inline uint64_t
cdx_attr_group_hash(const char *value, size_t len)
{
	return cdx_xxh64(value, len, 0);
}

/* The schema as manifest.json holds it: [{"name", "type", "values"?}...].
 * _to_json returns a new json_t*; _from_json validates (what names the
 * field in errors) and on success sets *out (caller frees). */
void *cdx_attr_schema_to_json(const struct cdx_attr_schema *s);
int cdx_attr_schema_from_json(const void *json, const char *what, struct cdx_attr_schema **out);

/* One shard's attribute columns, as loaded. */
struct cdx_attr_table {
	struct cdx_attr_schema *schema; /* owned */
	uint64_t rows;
	void *data;                            /* the decompressed part; columns point into it */
	const void *col[CDX_ATTR_MAX_COLUMNS]; /* rows x width each */
};

/* cdx_attr_part_encode writes an ATTRS part for rows rows whose columns are
 * cols[i] (rows x the column's width each) into out. */
int cdx_attr_part_encode(
    const struct cdx_attr_schema *s, uint64_t rows, const void *const *cols, cdx_buf *out);
/* cdx_attr_part_decode parses a decompressed ATTRS part (taking ownership
 * of data, even on failure) for a shard of rows rows: every code is checked
 * against its schema. On success t is filled; free with cdx_attr_table_fini. */
int cdx_attr_part_decode(void *data, size_t len, uint64_t rows, struct cdx_attr_table *t);
void cdx_attr_table_fini(struct cdx_attr_table *t);

/* cdx_attr_get reads row's value of column c as an int64 (int: the value;
 * bool: 0/1; enum: the code; set: the mask; group: the hash). */
static inline int64_t
cdx_attr_get(const struct cdx_attr_table *t, uint32_t c, uint64_t row)
{
	const void *p = t->col[c];
	switch (t->schema->cols[c].type) {
	case CDX_ATTR_INT:
		return ((const int32_t *) p)[row];
	case CDX_ATTR_BOOL:
		return ((const uint8_t *) p)[row];
	case CDX_ATTR_ENUM:
		return ((const uint16_t *) p)[row];
	default:
		return (int64_t) ((const uint64_t *) p)[row];
	}
}

#endif
