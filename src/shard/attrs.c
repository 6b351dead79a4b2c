/*
 * attrs.c — attribute schemas and the ATTRS shard part (attrs.h).
 * Decoders treat their input as hostile: every length is checked against
 * the bytes left and every stored code against the schema.
 */
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "shard/attrs.h"
#include "shard/shard.h"

#define ATTRS_MAGIC "CDXATTR1"

static const char *const type_names[] = { NULL, "int", "bool", "enum", "set", "group" };

const char *
cdx_attr_type_name(int type)
{
	return type >= CDX_ATTR_INT && type <= CDX_ATTR_GROUP ? type_names[type] : "unknown";
}

int
cdx_attr_type_parse(const char *name, size_t len, int *type)
{
	for (int t = CDX_ATTR_INT; t <= CDX_ATTR_GROUP; t++) {
		if (strlen(type_names[t]) == len && memcmp(type_names[t], name, len) == 0) {
			*type = t;
			return CDX_OK;
		}
	}
	return CDX_EINVAL;
}

size_t
cdx_attr_type_width(int type)
{
	switch (type) {
	case CDX_ATTR_INT:
		return 4;
	case CDX_ATTR_BOOL:
		return 1;
	case CDX_ATTR_ENUM:
		return 2;
	default:
		return 8;
	}
}

int
cdx_attr_name_valid(const char *name, size_t len)
{
	if (len == 0 || len >= CDX_ATTR_NAME_MAX)
		return 0;
	for (size_t i = 0; i < len; i++) {
		char ch = name[i];
		int alpha = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || ch == '_';
		if (!alpha && !(i > 0 && ch >= '0' && ch <= '9'))
			return 0;
	}
	return 1;
}

static void
column_fini(struct cdx_attr_column *c)
{
	for (uint32_t v = 0; c->values != NULL && v < c->nvalues; v++)
		free(c->values[v]);
	free(c->values);
	c->values = NULL;
	c->nvalues = 0;
}

void
cdx_attr_schema_free(struct cdx_attr_schema *s)
{
	if (s == NULL)
		return;
	for (uint32_t i = 0; i < s->ncols; i++)
		column_fini(&s->cols[i]);
	free(s);
}

int
cdx_attr_schema_copy(const struct cdx_attr_schema *s, struct cdx_attr_schema **out)
{
	*out = NULL;
	struct cdx_attr_schema *c = calloc(1, sizeof(*c));
	if (c == NULL)
		return cdx_error(CDX_ENOMEM, "attribute schema");
	for (uint32_t i = 0; i < s->ncols; i++) {
		const struct cdx_attr_column *from = &s->cols[i];
		struct cdx_attr_column *to = &c->cols[i];
		c->ncols = i + 1;
		memcpy(to->name, from->name, sizeof(to->name));
		to->type = from->type;
		if (from->nvalues == 0)
			continue;
		if ((to->values = calloc(from->nvalues, sizeof(char *))) == NULL)
			goto nomem;
		for (uint32_t v = 0; v < from->nvalues; v++) {
			to->nvalues = v + 1;
			if ((to->values[v] = strdup(from->values[v])) == NULL)
				goto nomem;
		}
	}
	*out = c;
	return CDX_OK;
nomem:
	cdx_attr_schema_free(c);
	return cdx_error(CDX_ENOMEM, "attribute schema");
}

int
cdx_attr_schema_equal(const struct cdx_attr_schema *a, const struct cdx_attr_schema *b)
{
	if (a == NULL || b == NULL)
		return a == b;
	if (a->ncols != b->ncols)
		return 0;
	for (uint32_t i = 0; i < a->ncols; i++) {
		const struct cdx_attr_column *x = &a->cols[i], *y = &b->cols[i];
		if (strcmp(x->name, y->name) != 0 || x->type != y->type || x->nvalues != y->nvalues)
			return 0;
		for (uint32_t v = 0; v < x->nvalues; v++)
			if (strcmp(x->values[v], y->values[v]) != 0)
				return 0;
	}
	return 1;
}

int
cdx_attr_find(const struct cdx_attr_schema *s, const char *name, size_t len)
{
	for (uint32_t i = 0; s != NULL && i < s->ncols; i++)
		if (strlen(s->cols[i].name) == len && memcmp(s->cols[i].name, name, len) == 0)
			return (int) i;
	return -1;
}

int
cdx_attr_value_code(const struct cdx_attr_column *col, const char *value, size_t len)
{
	size_t lo = 0, hi = col->nvalues;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		const char *v = col->values[mid];
		int c = strncmp(v, value, len);
		if (c == 0)
			c = v[len] != '\0'; /* v is longer: it sorts after */
		if (c == 0)
			return (int) mid;
		if (c < 0)
			lo = mid + 1;
		else
			hi = mid;
	}
	return -1;
}

/* check_values: values are sorted, unique, non-empty, short, and as many as
 * the type allows. */
static int
check_column(const struct cdx_attr_column *c, const char *what)
{
	int coded = c->type == CDX_ATTR_ENUM || c->type == CDX_ATTR_SET;
	if (!coded && c->nvalues > 0)
		return cdx_error(CDX_ECORRUPT, "%s: attribute %s of type %s has values", what, c->name,
		    cdx_attr_type_name(c->type));
	if (c->type == CDX_ATTR_SET && c->nvalues > CDX_ATTR_SET_MAX)
		return cdx_error(CDX_ECORRUPT, "%s: set attribute %s has %u values (at most %d)", what,
		    c->name, c->nvalues, CDX_ATTR_SET_MAX);
	if (c->type == CDX_ATTR_ENUM && c->nvalues > CDX_ATTR_ENUM_MAX)
		return cdx_error(CDX_ECORRUPT, "%s: enum attribute %s has %u values (at most %u)", what,
		    c->name, c->nvalues, CDX_ATTR_ENUM_MAX);
	for (uint32_t v = 0; v < c->nvalues; v++) {
		size_t len = strlen(c->values[v]);
		if (len == 0 || len > CDX_ATTR_VALUE_MAX)
			return cdx_error(CDX_ECORRUPT, "%s: attribute %s: value %u is empty or too long",
			    what, c->name, v);
		if (v > 0 && strcmp(c->values[v - 1], c->values[v]) >= 0)
			return cdx_error(CDX_ECORRUPT, "%s: attribute %s: values are not sorted and unique",
			    what, c->name);
	}
	return CDX_OK;
}

static int
check_schema(const struct cdx_attr_schema *s, const char *what)
{
	for (uint32_t i = 0; i < s->ncols; i++) {
		const struct cdx_attr_column *c = &s->cols[i];
		if (!cdx_attr_name_valid(c->name, strlen(c->name)))
			return cdx_error(CDX_ECORRUPT, "%s: attribute %u has an invalid name", what, i);
		if (cdx_attr_find(s, c->name, strlen(c->name)) != (int) i)
			return cdx_error(CDX_ECORRUPT, "%s: attribute %s appears twice", what, c->name);
		int rc = check_column(c, what);
		if (rc != CDX_OK)
			return rc;
	}
	return CDX_OK;
}

void *
cdx_attr_schema_to_json(const struct cdx_attr_schema *s)
{
	json_t *arr = json_array();
	for (uint32_t i = 0; arr != NULL && i < s->ncols; i++) {
		const struct cdx_attr_column *c = &s->cols[i];
		json_t *o = json_object();
		json_object_set_new(o, "name", json_string(c->name));
		json_object_set_new(o, "type", json_string(cdx_attr_type_name(c->type)));
		if (c->type == CDX_ATTR_ENUM || c->type == CDX_ATTR_SET) {
			json_t *v = json_array();
			for (uint32_t j = 0; j < c->nvalues; j++)
				json_array_append_new(v, json_string(c->values[j]));
			json_object_set_new(o, "values", v);
		}
		json_array_append_new(arr, o);
	}
	return arr;
}

int
cdx_attr_schema_from_json(const void *json, const char *what, struct cdx_attr_schema **out)
{
	const json_t *arr = json;
	*out = NULL;
	if (!json_is_array(arr) || json_array_size(arr) > CDX_ATTR_MAX_COLUMNS)
		return cdx_error(CDX_ECORRUPT, "%s: attributes must be an array of at most %d columns", what,
		    CDX_ATTR_MAX_COLUMNS);
	struct cdx_attr_schema *s = calloc(1, sizeof(*s));
	if (s == NULL)
		return cdx_error(CDX_ENOMEM, "%s", what);
	int rc = CDX_OK;
	for (size_t i = 0; rc == CDX_OK && i < json_array_size(arr); i++) {
		json_t *o = json_array_get(arr, i), *values;
		const char *name = json_string_value(json_object_get(o, "name"));
		const char *type = json_string_value(json_object_get(o, "type"));
		struct cdx_attr_column *c = &s->cols[i];
		s->ncols = (uint32_t) i + 1;
		if (name == NULL || type == NULL || !cdx_attr_name_valid(name, strlen(name))
		    || cdx_attr_type_parse(type, strlen(type), &c->type) != CDX_OK) {
			rc = cdx_error(
			    CDX_ECORRUPT, "%s: attribute %zu needs a valid name and type", what, i);
			break;
		}
		snprintf(c->name, sizeof(c->name), "%s", name);
		values = json_object_get(o, "values");
		if (values == NULL)
			continue;
		if (!json_is_array(values) || json_array_size(values) > CDX_ATTR_ENUM_MAX) {
			rc = cdx_error(CDX_ECORRUPT, "%s: attribute %s: values must be an array", what, name);
			break;
		}
		size_t nv = json_array_size(values);
		if (nv > 0 && (c->values = calloc(nv, sizeof(char *))) == NULL) {
			rc = cdx_error(CDX_ENOMEM, "%s", what);
			break;
		}
		for (size_t v = 0; v < nv; v++) {
			const char *text = json_string_value(json_array_get(values, v));
			c->nvalues = (uint32_t) v + 1;
			if (text == NULL) {
				rc = cdx_error(CDX_ECORRUPT, "%s: attribute %s: value %zu is not a string",
				    what, name, v);
				break;
			}
			if ((c->values[v] = strdup(text)) == NULL) {
				rc = cdx_error(CDX_ENOMEM, "%s", what);
				break;
			}
		}
	}
	if (rc == CDX_OK)
		rc = check_schema(s, what);
	if (rc != CDX_OK) {
		cdx_attr_schema_free(s);
		return rc;
	}
	*out = s;
	return CDX_OK;
}

static size_t
pad8(size_t n)
{
	return (n + 7) & ~(size_t) 7;
}

int
cdx_attr_part_encode(const struct cdx_attr_schema *s, uint64_t rows, const void *const *cols, cdx_buf *out)
{
	uint8_t word[8];
	int rc = cdx_buf_append(out, ATTRS_MAGIC, 8);
	cdx_put_le32(word, s->ncols);
	cdx_put_le32(word + 4, 0);
	if (rc == CDX_OK)
		rc = cdx_buf_append(out, word, 8);
	cdx_put_le64(word, rows);
	if (rc == CDX_OK)
		rc = cdx_buf_append(out, word, 8);
	for (uint32_t i = 0; rc == CDX_OK && i < s->ncols; i++) {
		const struct cdx_attr_column *c = &s->cols[i];
		size_t nl = strlen(c->name);
		word[0] = (uint8_t) c->type;
		word[1] = (uint8_t) cdx_attr_type_width(c->type);
		word[2] = word[3] = 0;
		cdx_put_le32(word + 4, (uint32_t) nl);
		rc = cdx_buf_append(out, word, 8);
		if (rc == CDX_OK)
			rc = cdx_buf_append(out, c->name, nl);
		cdx_put_le32(word, c->nvalues);
		if (rc == CDX_OK)
			rc = cdx_buf_append(out, word, 4);
		for (uint32_t v = 0; rc == CDX_OK && v < c->nvalues; v++) {
			size_t vl = strlen(c->values[v]);
			cdx_put_le32(word, (uint32_t) vl);
			rc = cdx_buf_append(out, word, 4);
			if (rc == CDX_OK)
				rc = cdx_buf_append(out, c->values[v], vl);
		}
	}
	static const uint8_t zeros[8] = { 0 };
	if (rc == CDX_OK && out->len % 8 != 0)
		rc = cdx_buf_append(out, zeros, 8 - out->len % 8);
	for (uint32_t i = 0; rc == CDX_OK && i < s->ncols; i++) {
		size_t bytes = (size_t) rows * cdx_attr_type_width(s->cols[i].type);
		rc = cdx_buf_append(out, cols[i], bytes);
		if (rc == CDX_OK && bytes % 8 != 0)
			rc = cdx_buf_append(out, zeros, 8 - bytes % 8);
	}
	return rc;
}

struct rd {
	const uint8_t *p, *end;
};

static int
take(struct rd *r, size_t n, const uint8_t **out)
{
	if ((size_t) (r->end - r->p) < n)
		return -1;
	*out = r->p;
	r->p += n;
	return 0;
}

/* check_codes: every stored value of a coded or boolean column is one the
 * schema knows, so that a filter can index value lists without checks. */
static int
check_codes(const struct cdx_attr_column *c, const void *col, uint64_t rows)
{
	uint64_t allowed = c->nvalues >= 64 ? ~(uint64_t) 0 : (((uint64_t) 1 << c->nvalues) - 1);
	for (uint64_t r = 0; r < rows; r++) {
		int bad = 0;
		if (c->type == CDX_ATTR_BOOL)
			bad = ((const uint8_t *) col)[r] > 1;
		else if (c->type == CDX_ATTR_ENUM)
			bad = ((const uint16_t *) col)[r] >= c->nvalues;
		else if (c->type == CDX_ATTR_SET)
			bad = (((const uint64_t *) col)[r] & ~allowed) != 0;
		if (bad)
			return cdx_error(CDX_ECORRUPT, "attributes: row %llu of %s holds an unknown value",
			    (unsigned long long) r, c->name);
	}
	return CDX_OK;
}

int
cdx_attr_part_decode(void *data, size_t len, uint64_t rows, struct cdx_attr_table *t)
{
	memset(t, 0, sizeof(*t));
	t->data = data;
	struct rd r = { data, (const uint8_t *) data + len };
	const uint8_t *p;
	int rc = CDX_ECORRUPT;
	if ((t->schema = calloc(1, sizeof(*t->schema))) == NULL) {
		rc = cdx_error(CDX_ENOMEM, "attributes");
		goto fail;
	}
	if (take(&r, 24, &p) != 0 || memcmp(p, ATTRS_MAGIC, 8) != 0)
		goto corrupt;
	uint32_t ncols = cdx_get_le32(p + 8);
	if (ncols > CDX_ATTR_MAX_COLUMNS || cdx_get_le64(p + 16) != rows)
		goto corrupt;
	struct cdx_attr_schema *s = t->schema;
	for (uint32_t i = 0; i < ncols; i++) {
		struct cdx_attr_column *c = &s->cols[i];
		s->ncols = i + 1;
		if (take(&r, 8, &p) != 0)
			goto corrupt;
		c->type = p[0];
		uint32_t nl = cdx_get_le32(p + 4);
		if (c->type < CDX_ATTR_INT || c->type > CDX_ATTR_GROUP || p[1] != cdx_attr_type_width(c->type)
		    || nl >= CDX_ATTR_NAME_MAX || take(&r, nl, &p) != 0)
			goto corrupt;
		memcpy(c->name, p, nl);
		if (take(&r, 4, &p) != 0)
			goto corrupt;
		uint32_t nv = cdx_get_le32(p);
		if (nv > CDX_ATTR_ENUM_MAX || nv > (size_t) (r.end - r.p) / 4)
			goto corrupt;
		if (nv > 0 && (c->values = calloc(nv, sizeof(char *))) == NULL) {
			rc = cdx_error(CDX_ENOMEM, "attributes");
			goto fail;
		}
		for (uint32_t v = 0; v < nv; v++) {
			c->nvalues = v + 1;
			if (take(&r, 4, &p) != 0)
				goto corrupt;
			uint32_t vl = cdx_get_le32(p);
			if (vl > CDX_ATTR_VALUE_MAX || take(&r, vl, &p) != 0 || memchr(p, 0, vl) != NULL)
				goto corrupt;
			if ((c->values[v] = strndup((const char *) p, vl)) == NULL) {
				rc = cdx_error(CDX_ENOMEM, "attributes");
				goto fail;
			}
		}
	}
	if ((rc = check_schema(s, "attributes part")) != CDX_OK)
		goto fail;
	size_t header = (size_t) (r.p - (const uint8_t *) data);
	if (take(&r, pad8(header) - header, &p) != 0)
		goto corrupt;
	for (uint32_t i = 0; i < ncols; i++) {
		size_t w = cdx_attr_type_width(s->cols[i].type);
		if (rows > (uint64_t) (r.end - r.p) / w || take(&r, pad8((size_t) rows * w), &p) != 0)
			goto corrupt;
		t->col[i] = p;
		if ((rc = check_codes(&s->cols[i], p, rows)) != CDX_OK)
			goto fail;
	}
	if (r.p != r.end)
		goto corrupt;
	t->rows = rows;
	return CDX_OK;
corrupt:
	rc = cdx_error(CDX_ECORRUPT, "attributes part of %zu bytes is malformed or truncated", len);
fail:
	cdx_attr_table_fini(t);
	return rc;
}

void
cdx_attr_table_fini(struct cdx_attr_table *t)
{
	if (t == NULL)
		return;
	cdx_attr_schema_free(t->schema);
	free(t->data);
	memset(t, 0, sizeof(*t));
}
