/*
 * attrs.c — the attributes file of `candex build --attrs` (docs/recommenders.md,
 * "Attributes"): a header of tab-separated name:type columns, then one line
 * per input row. cdx_attrs_scan checks it and collects the schema; then
 * cdx_attrs_read_rows reads the rows one shard keeps, as columns.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "input/input_int.h"
#include "shard/attrs.h"

/* A tab-separated attributes file (docs/recommenders.md, "Attributes"): a
 * header of name:type columns, then one line per input row. scan collects
 * each enum and set column's values (a growing hash table per column), read
 * turns a line into the stored column values. */

struct valset {
	char **values;
	uint32_t n, cap;
	uint32_t *slots; /* value index + 1, open addressing; 0 = empty */
	uint32_t mask;
};

static void
valset_fini(struct valset *v)
{
	for (uint32_t i = 0; i < v->n; i++)
		free(v->values[i]);
	free(v->values);
	free(v->slots);
	memset(v, 0, sizeof(*v));
}

static int
valset_add(struct valset *v, const char *s, size_t len)
{
	if (v->slots == NULL || (uint64_t) (v->n + 1) * 2 > (uint64_t) v->mask + 1) {
		uint32_t cap = v->slots ? (v->mask + 1) * 2 : 64;
		uint32_t *slots = calloc(cap, sizeof(uint32_t));
		if (slots == NULL)
			return CDX_ENOMEM;
		for (uint32_t i = 0; i < v->n; i++) {
			uint64_t h = cdx_xxh64(v->values[i], strlen(v->values[i]), 0) & (cap - 1);
			while (slots[h] != 0)
				h = (h + 1) & (cap - 1);
			slots[h] = i + 1;
		}
		free(v->slots);
		v->slots = slots;
		v->mask = cap - 1;
	}
	uint64_t h = cdx_xxh64(s, len, 0) & v->mask;
	for (; v->slots[h] != 0; h = (h + 1) & v->mask) {
		const char *have = v->values[v->slots[h] - 1];
		if (strncmp(have, s, len) == 0 && have[len] == '\0')
			return CDX_OK;
	}
	if (v->n == v->cap) {
		uint32_t cap = v->cap ? v->cap * 2 : 16;
		char **grown = realloc(v->values, cap * sizeof(char *));
		if (grown == NULL)
			return CDX_ENOMEM;
		v->values = grown;
		v->cap = cap;
	}
	if ((v->values[v->n] = strndup(s, len)) == NULL)
		return CDX_ENOMEM;
	v->slots[h] = ++v->n;
	return CDX_OK;
}

/* attrs_header parses the header line into s (no values yet). */
static int
attrs_header(const char *path, const char *line, size_t len, struct cdx_attr_schema *s)
{
	const char *p = line, *end = line + len;
	while (p <= end) {
		const char *tab = memchr(p, '\t', (size_t) (end - p));
		const char *fe = tab ? tab : end, *colon = memchr(p, ':', (size_t) (fe - p));
		if (s->ncols == CDX_ATTR_MAX_COLUMNS)
			return cdx_error(CDX_EINVAL, "%s: line 1: more than %d attribute columns", path,
			    CDX_ATTR_MAX_COLUMNS);
		struct cdx_attr_column *c = &s->cols[s->ncols];
		size_t nl = colon ? (size_t) (colon - p) : 0;
		if (colon == NULL || !cdx_attr_name_valid(p, nl)
		    || cdx_attr_type_parse(colon + 1, (size_t) (fe - colon - 1), &c->type) != CDX_OK)
			return cdx_error(CDX_EINVAL,
			    "%s: line 1, column %u: '%.*s' is not name:type (a name of letters, digits and "
			    "_; "
			    "a type of int, bool, enum, set or group)",
			    path, s->ncols + 1, (int) CDX_MIN((size_t) (fe - p), (size_t) 80), p);
		memcpy(c->name, p, nl);
		c->name[nl] = '\0';
		if (cdx_attr_find(s, c->name, nl) >= 0)
			return cdx_error(CDX_EINVAL, "%s: line 1: attribute %s appears twice", path, c->name);
		s->ncols++;
		if (tab == NULL)
			break;
		p = tab + 1;
	}
	return CDX_OK;
}

/* value_ok: enum, set and group values are 1..128 printable bytes without
 * tabs or commas (a set's separator). */
static int
value_ok(const char *s, size_t len)
{
	if (len == 0 || len > CDX_ATTR_VALUE_MAX)
		return 0;
	for (size_t i = 0; i < len; i++)
		if ((unsigned char) s[i] < 0x20 || s[i] == ',' || s[i] == 0x7f)
			return 0;
	return 1;
}

/* attrs_line splits one data line and checks each field. With sets (scan)
 * it collects enum and set values; with out (read) it stores each column's
 * value as cdx_attr_get returns it. */
static int
attrs_line(const char *path, uint64_t lineno, const char *line, size_t len, const struct cdx_attr_schema *s,
    struct valset *sets, int64_t *out)
{
	const char *p = line, *end = line + len;
	for (uint32_t c = 0; c < s->ncols; c++) {
		const struct cdx_attr_column *col = &s->cols[c];
		const char *tab = memchr(p, '\t', (size_t) (end - p)), *fe = tab ? tab : end;
		size_t fl = (size_t) (fe - p);
		if ((tab == NULL) != (c + 1 == s->ncols))
			return cdx_error(CDX_EINVAL, "%s: line %llu: %s fields, the header has %u", path,
			    (unsigned long long) lineno, tab == NULL ? "fewer" : "more", s->ncols);
		int64_t v = 0;
		char tmp[24];
		switch (col->type) {
		case CDX_ATTR_INT: {
			char *e;
			if (fl == 0 || fl >= sizeof(tmp))
				goto bad;
			memcpy(tmp, p, fl);
			tmp[fl] = '\0';
			errno = 0;
			long long x = strtoll(tmp, &e, 10);
			if (errno != 0 || *e != '\0' || x < INT32_MIN || x > INT32_MAX)
				goto bad;
			v = x;
			break;
		}
		case CDX_ATTR_BOOL:
			if ((fl == 4 && memcmp(p, "true", 4) == 0) || (fl == 1 && *p == '1'))
				v = 1;
			else if (!((fl == 5 && memcmp(p, "false", 5) == 0) || (fl == 1 && *p == '0')))
				goto bad;
			break;
		case CDX_ATTR_ENUM:
		case CDX_ATTR_GROUP:
			if (!value_ok(p, fl))
				goto bad;
			if (col->type == CDX_ATTR_GROUP)
				v = (int64_t) cdx_attr_group_hash(p, fl);
			else if (sets != NULL && valset_add(&sets[c], p, fl) != CDX_OK)
				return cdx_error(CDX_ENOMEM, "%s: values of %s", path, col->name);
			else if (out != NULL && (v = cdx_attr_value_code(col, p, fl)) < 0)
				goto changed;
			break;
		case CDX_ATTR_SET:
			for (const char *q = p; q < fe;) {
				const char *comma = memchr(q, ',', (size_t) (fe - q)),
				           *ve = comma ? comma : fe;
				if (!value_ok(q, (size_t) (ve - q)))
					goto bad;
				if (sets != NULL && valset_add(&sets[c], q, (size_t) (ve - q)) != CDX_OK)
					return cdx_error(CDX_ENOMEM, "%s: values of %s", path, col->name);
				if (out != NULL) {
					int code = cdx_attr_value_code(col, q, (size_t) (ve - q));
					if (code < 0)
						goto changed;
					v |= (int64_t) ((uint64_t) 1 << code);
				}
				q = comma ? comma + 1 : fe;
			}
			if (sets != NULL && sets[c].n > CDX_ATTR_SET_MAX)
				return cdx_error(CDX_EINVAL,
				    "%s: line %llu: set attribute %s has more than %d distinct values", path,
				    (unsigned long long) lineno, col->name, CDX_ATTR_SET_MAX);
			break;
		}
		if (sets != NULL && col->type == CDX_ATTR_ENUM && sets[c].n > CDX_ATTR_ENUM_MAX)
			return cdx_error(CDX_EINVAL,
			    "%s: line %llu: enum attribute %s has more than %u values", path,
			    (unsigned long long) lineno, col->name, CDX_ATTR_ENUM_MAX);
		if (out != NULL)
			out[c] = v;
		p = fe + 1;
		continue;
	bad:
		return cdx_error(CDX_EINVAL, "%s: line %llu: %s '%.*s' is not a valid %s value%s", path,
		    (unsigned long long) lineno, col->name, (int) CDX_MIN(fl, (size_t) 80), p,
		    cdx_attr_type_name(col->type),
		    col->type == CDX_ATTR_BOOL      ? " (true, false, 1 or 0)"
		        : col->type == CDX_ATTR_INT ? " (a 32-bit integer)"
		        : col->type == CDX_ATTR_SET
		        ? " (comma-separated values, or empty for none)"
		        : " (1 to 128 bytes, no tab, comma or control character)");
	changed:
		return cdx_error(CDX_ECORRUPT,
		    "%s: line %llu: %s value '%.*s' was not there when the build scanned the file (the "
		    "file changed during the build?)",
		    path, (unsigned long long) lineno, col->name, (int) CDX_MIN(fl, (size_t) 80), p);
	}
	return CDX_OK;
}

int
cdx_attrs_scan(const char *path, uint64_t rows, struct cdx_attr_schema **schemap, uint64_t *bytes)
{
	*schemap = NULL;
	struct cdx__lines l;
	struct valset sets[CDX_ATTR_MAX_COLUMNS];
	memset(sets, 0, sizeof(sets));
	struct cdx_attr_schema *s = calloc(1, sizeof(*s));
	if (s == NULL)
		return cdx_error(CDX_ENOMEM, "attributes of %s", path);
	int rc = cdx__lines_open(&l, path, "attributes");
	if (rc != CDX_OK) {
		free(s);
		return rc;
	}
	struct stat st;
	if (bytes != NULL && fstat(l.fd, &st) == 0)
		*bytes = (uint64_t) st.st_size;
	const char *line;
	size_t len;
	int r = cdx__lines_next(&l, &line, &len);
	if (r <= 0) {
		rc = r < 0 ? -r
		           : cdx_error(CDX_EEMPTY, "%s: empty attributes file (want a header line)", path);
		goto done;
	}
	if ((rc = attrs_header(path, line, len, s)) != CDX_OK)
		goto done;
	uint64_t n = 0;
	while ((r = cdx__lines_next(&l, &line, &len)) == 1) {
		if (++n > rows)
			continue; /* counted for the message below */
		if ((rc = attrs_line(path, l.line, line, len, s, sets, NULL)) != CDX_OK)
			goto done;
	}
	if (r < 0) {
		rc = -r;
		goto done;
	}
	if (n != rows) {
		rc = cdx_error(CDX_EDIM, "%s: %llu attribute lines, but the input has %llu rows", path,
		    (unsigned long long) n, (unsigned long long) rows);
		goto done;
	}
	for (uint32_t c = 0; c < s->ncols; c++) {
		struct cdx_attr_column *col = &s->cols[c];
		if (sets[c].n == 0)
			continue;
		qsort(sets[c].values, sets[c].n, sizeof(char *), cdx_cmp_str);
		col->values = sets[c].values;
		col->nvalues = sets[c].n;
		sets[c].values = NULL;
		sets[c].n = 0;
	}
done:
	for (uint32_t c = 0; c < CDX_ATTR_MAX_COLUMNS; c++)
		valset_fini(&sets[c]);
	cdx__lines_close(&l);
	if (rc != CDX_OK) {
		cdx_attr_schema_free(s);
		return rc;
	}
	*schemap = s;
	return CDX_OK;
}

int
cdx_attrs_read_rows(const char *path, const struct cdx_attr_schema *s, uint64_t rows,
    int (*keep)(uint64_t row, const void *ctx), const void *ctx, uint64_t nrows, void **cols)
{
	struct cdx__lines l;
	for (uint32_t c = 0; c < s->ncols; c++)
		cols[c] = NULL;
	int rc = cdx__lines_open(&l, path, "attributes");
	if (rc != CDX_OK)
		return rc;
	for (uint32_t c = 0; c < s->ncols; c++) {
		if ((cols[c] = calloc(nrows ? nrows : 1, cdx_attr_type_width(s->cols[c].type))) == NULL) {
			rc = cdx_error(CDX_ENOMEM, "%s: attribute columns", path);
			goto done;
		}
	}
	const char *line;
	size_t len;
	int r = cdx__lines_next(&l, &line, &len); /* the header, checked by scan */
	uint64_t have = 0;
	for (uint64_t row = 0; r >= 0 && row < rows; row++) {
		if ((r = cdx__lines_next(&l, &line, &len)) != 1)
			break;
		if (!keep(row, ctx))
			continue;
		int64_t v[CDX_ATTR_MAX_COLUMNS];
		if ((rc = attrs_line(path, l.line, line, len, s, NULL, v)) != CDX_OK)
			goto done;
		if (have == nrows) {
			rc = cdx_error(CDX_ECORRUPT, "%s: more attribute rows kept than the %llu expected",
			    path, (unsigned long long) nrows);
			goto done;
		}
		for (uint32_t c = 0; c < s->ncols; c++) {
			switch (s->cols[c].type) {
			case CDX_ATTR_INT:
				((int32_t *) cols[c])[have] = (int32_t) v[c];
				break;
			case CDX_ATTR_BOOL:
				((uint8_t *) cols[c])[have] = (uint8_t) v[c];
				break;
			case CDX_ATTR_ENUM:
				((uint16_t *) cols[c])[have] = (uint16_t) v[c];
				break;
			default:
				((uint64_t *) cols[c])[have] = (uint64_t) v[c];
				break;
			}
		}
		have++;
	}
	if (r < 0)
		rc = -r;
	else if (have != nrows)
		rc = cdx_error(CDX_ECORRUPT,
		    "%s: %llu attribute rows kept, expected %llu (the file "
		    "changed during the build?)",
		    path, (unsigned long long) have, (unsigned long long) nrows);
done:
	cdx__lines_close(&l);
	if (rc != CDX_OK) {
		for (uint32_t c = 0; c < s->ncols; c++) {
			free(cols[c]);
			cols[c] = NULL;
		}
	}
	return rc;
}
