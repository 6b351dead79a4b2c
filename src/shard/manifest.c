/*
 * manifest.c — manifest.json of a version directory (jansson).
 *
 * Loading is strict: every field this version writes must be present with
 * the right type, and the error names the field, because a manifest that
 * half-parses would load a collection with wrong parameters. Fields this
 * version does not know are kept in m->extra and written back on save, so
 * an older tool rewriting a manifest does not drop a newer tool's sections.
 */
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "shard/manifest.h"

/* The top-level keys this version reads; everything else goes to extra. */
static const char *const known_keys[] = { "format_version", "collection", "version", "model_version",
	"factory", "metric", "dim", "items", "nlist", "pq_m", "pq_nbits", "default_nprobe", "refine",
	"default_refine_factor", "shards", "operating_points", "build", "structure", "default_recall_target",
	"tuned_k", "tuning", "attributes" };

static int
is_known_key(const char *k)
{
	for (size_t i = 0; i < CDX_ARRAY_LEN(known_keys); i++)
		if (strcmp(k, known_keys[i]) == 0)
			return 1;
	return 0;
}

static json_t *
hex64(uint64_t v)
{
	char s[17];
	snprintf(s, sizeof(s), "%016" PRIx64, v);
	return json_string(s);
}

/* u64 values above INT64_MAX (seeds can be anything) do not fit a JSON
 * integer in jansson; they are written as decimal strings. */
static json_t *
u64_json(uint64_t v)
{
	if (v <= (uint64_t) INT64_MAX)
		return json_integer((json_int_t) v);
	char s[24];
	snprintf(s, sizeof(s), "%" PRIu64, v);
	return json_string(s);
}

/* float fields are written with the fewest digits that read back as the
 * same float: 0.1f as 0.1, not 0.100000001. */
static json_t *
float_json(float f)
{
	char s[32];
	for (int prec = 6; prec < 9; prec++) {
		snprintf(s, sizeof(s), "%.*g", prec, (double) f);
		if (strtof(s, NULL) == f)
			return json_real(strtod(s, NULL));
	}
	return json_real((double) f);
}

void *
cdx_points_to_json(const struct cdx_operating_point *points, uint32_t n)
{
	json_t *pts = json_array();
	for (uint32_t i = 0; i < n; i++) {
		const struct cdx_operating_point *p = &points[i];
		json_t *j = json_object();
		json_object_set_new(j, "recall_target", json_real(p->recall_target));
		json_object_set_new(j, "recall", json_real(p->recall));
		json_object_set_new(j, "k", json_integer(p->k));
		json_object_set_new(j, "nprobe", json_integer(p->nprobe));
		json_object_set_new(j, "refine_factor", float_json(p->refine_factor));
		json_object_set_new(j, "p99_ms", json_real(p->p99_ms));
		if (p->recall_se > 0)
			json_object_set_new(j, "recall_se", json_real(p->recall_se));
		if (p->check_recall > 0)
			json_object_set_new(j, "check_recall", json_real(p->check_recall));
		if (p->qps > 0)
			json_object_set_new(j, "qps", json_real(p->qps));
		json_array_append_new(pts, j);
	}
	return pts;
}

static json_t *
manifest_json(const struct cdx_manifest *m)
{
	json_t *o = json_object();
	if (o == NULL)
		return NULL;
	/* unknown fields first, so known ones win on a clash */
	if (m->extra != NULL)
		json_object_update(o, (json_t *) m->extra);
	json_object_set_new(o, "format_version", json_integer(m->format_version));
	json_object_set_new(o, "collection", json_string(m->collection));
	json_object_set_new(o, "version", json_string(m->version));
	json_object_set_new(o, "model_version", json_string(m->model_version));
	json_object_set_new(o, "factory", json_string(m->factory));
	json_object_set_new(o, "metric", json_string(cdx_metric_name(m->metric)));
	json_object_set_new(o, "dim", json_integer(m->dim));
	json_object_set_new(o, "items", u64_json(m->items));
	json_object_set_new(o, "nlist", json_integer(m->nlist));
	json_object_set_new(o, "pq_m", json_integer(m->pq_m));
	json_object_set_new(o, "pq_nbits", json_integer(m->pq_nbits));
	json_object_set_new(o, "default_nprobe", json_integer(m->default_nprobe));
	json_object_set_new(o, "refine", json_string(cdx_refine_name(m->refine)));
	json_object_set_new(o, "default_refine_factor", float_json(m->default_refine_factor));
	json_t *shards = json_array();
	for (uint32_t i = 0; i < m->nshards; i++) {
		const struct cdx_manifest_shard *sh = &m->shards[i];
		json_t *s = json_object();
		json_object_set_new(s, "file", json_string(sh->file));
		json_object_set_new(s, "bytes", u64_json(sh->bytes));
		json_object_set_new(s, "rows", u64_json(sh->rows));
		json_object_set_new(s, "xxh64", hex64(sh->xxh64));
		json_array_append_new(shards, s);
	}
	json_object_set_new(o, "shards", shards);
	json_t *pts = cdx_points_to_json(m->points, m->npoints);
	json_object_set_new(o, "operating_points", pts);
	json_t *st = json_object();
	json_object_set_new(st, "transform", json_string(cdx_transform_name(m->transform)));
	json_object_set_new(st, "index_dim", json_integer(m->index_dim ? m->index_dim : m->dim));
	if (m->transform == CDX_TRANSFORM_MIPS_L2)
		json_object_set_new(st, "max_norm2", json_real(m->max_norm2));
	json_object_set_new(o, "structure", st);
	json_object_set_new(o, "default_recall_target", json_real(m->default_recall_target));
	json_t *tk = json_array();
	for (uint32_t i = 0; i < m->ntuned_k; i++)
		json_array_append_new(tk, json_integer(m->tuned_k[i]));
	json_object_set_new(o, "tuned_k", tk);
	if (m->tuning != NULL)
		json_object_set(o, "tuning", (json_t *) m->tuning);
	if (m->attrs != NULL)
		json_object_set_new(o, "attributes", cdx_attr_schema_to_json(m->attrs));
	json_t *b = json_object();
	json_object_set_new(b, "seed", u64_json(m->seed));
	json_object_set_new(b, "train_sample", u64_json(m->train_sample));
	json_t *in = json_object();
	json_object_set_new(in, "path", json_string(m->input_path));
	json_object_set_new(in, "bytes", u64_json(m->input_bytes));
	json_object_set_new(in, "fingerprint", hex64(m->input_fingerprint));
	json_object_set_new(b, "input", in);
	json_object_set_new(b, "created", json_string(m->created));
	json_object_set_new(b, "candex_version", json_string(m->candex_version));
	json_object_set_new(o, "build", b);
	return o;
}

char *
cdx_manifest_to_json(const struct cdx_manifest *m)
{
	json_t *o = manifest_json(m);
	if (o == NULL)
		return NULL;
	char *s = json_dumps(o, JSON_SORT_KEYS | JSON_INDENT(2) | JSON_REAL_PRECISION(9));
	json_decref(o);
	return s;
}

int
cdx_manifest_save(const struct cdx_manifest *m, const char *version_dir)
{
	char path[PATH_MAX];
	if (snprintf(path, sizeof(path), "%s/%s", version_dir, CDX_MANIFEST_FILE) >= (int) sizeof(path))
		return cdx_error(CDX_EINVAL, "path too long: %s", version_dir);
	char *s = cdx_manifest_to_json(m);
	if (s == NULL)
		return cdx_error(CDX_ENOMEM, "%s: encoding JSON", path);
	size_t n = strlen(s);
	char *t = realloc(s, n + 2);
	if (t == NULL) {
		free(s);
		return cdx_error(CDX_ENOMEM, "%s: encoding JSON", path);
	}
	t[n] = '\n';
	t[n + 1] = 0;
	int rc = cdx_write_file_atomic(path, t, n + 1);
	free(t);
	return rc;
}

/* --- loading --------------------------------------------------------------- */

struct ld {
	const char *path;
	int rc;
};

/* get fetches obj[key] with the wanted type; on failure records an error
 * naming prefix.key and returns NULL. Later getters are no-ops once failed. */
static json_t *
get(struct ld *l, json_t *obj, const char *prefix, const char *key, json_type type, const char *tname)
{
	if (l->rc != CDX_OK)
		return NULL;
	json_t *v = json_object_get(obj, key);
	int ok
	    = v != NULL && (json_typeof(v) == type || (type == JSON_REAL && json_typeof(v) == JSON_INTEGER));
	if (!ok) {
		l->rc = cdx_error(CDX_ECORRUPT, "%s: field %s%s %s (expected %s)", l->path, prefix, key,
		    v == NULL ? "is missing" : "has the wrong type", tname);
		return NULL;
	}
	return v;
}

static void
get_str(struct ld *l, json_t *obj, const char *prefix, const char *key, char *out, size_t cap)
{
	json_t *v = get(l, obj, prefix, key, JSON_STRING, "string");
	if (v == NULL)
		return;
	if (json_string_length(v) >= cap || strlen(json_string_value(v)) != json_string_length(v)) {
		l->rc = cdx_error(CDX_ECORRUPT, "%s: field %s%s is too long or holds a NUL (max %zu bytes)",
		    l->path, prefix, key, cap - 1);
		return;
	}
	memcpy(out, json_string_value(v), json_string_length(v) + 1);
}

static uint64_t
get_uint(struct ld *l, json_t *obj, const char *prefix, const char *key, uint64_t max)
{
	if (l->rc != CDX_OK)
		return 0;
	json_t *v = json_object_get(obj, key);
	uint64_t x = 0;
	int ok = 0;
	if (json_is_integer(v) && json_integer_value(v) >= 0) {
		x = (uint64_t) json_integer_value(v);
		ok = 1;
	} else if (json_is_string(v)) { /* only as u64_json writes it: above INT64_MAX */
		const char *s = json_string_value(v);
		char *end;
		errno = 0;
		x = strtoull(s, &end, 10);
		ok = *s >= '1' && *s <= '9' && *end == 0 && errno == 0 && x > (uint64_t) INT64_MAX;
	}
	if (!ok) {
		l->rc = cdx_error(CDX_ECORRUPT, "%s: field %s%s %s (expected a non-negative integer)",
		    l->path, prefix, key, v == NULL ? "is missing" : "has the wrong type");
		return 0;
	}
	if (x > max) {
		l->rc = cdx_error(CDX_ECORRUPT,
		    "%s: field %s%s = %" PRIu64 " is out of range (max %" PRIu64 ")", l->path, prefix, key, x,
		    max);
		return 0;
	}
	return x;
}

static double
get_num(struct ld *l, json_t *obj, const char *prefix, const char *key)
{
	json_t *v = get(l, obj, prefix, key, JSON_REAL, "number");
	return v ? json_number_value(v) : 0;
}

static uint64_t
get_hex(struct ld *l, json_t *obj, const char *prefix, const char *key)
{
	json_t *v = get(l, obj, prefix, key, JSON_STRING, "16 hex digits");
	if (v == NULL)
		return 0;
	const char *s = json_string_value(v);
	uint64_t x = 0;
	size_t i = 0;
	for (; s[i] != 0 && i < 16; i++) {
		int d = cdx_hexval(s[i]);
		if (d < 0)
			break;
		x = x << 4 | (uint64_t) d;
	}
	if (i != 16 || s[i] != 0) {
		l->rc = cdx_error(
		    CDX_ECORRUPT, "%s: field %s%s = \"%s\" is not 16 hex digits", l->path, prefix, key, s);
		return 0;
	}
	return x;
}

/* get_factor reads a refine factor: a float in [0, CDX_MANIFEST_MAX_REFINE].
 * JSON numbers go far beyond a float (7.8e78 became inf, which the manifest
 * writer cannot write back: the fuzzer found it). */
static float
get_factor(struct ld *l, json_t *obj, const char *prefix, const char *key)
{
	double f = get_num(l, obj, prefix, key);
	if (l->rc == CDX_OK && !(f >= 0 && f <= CDX_MANIFEST_MAX_REFINE)) {
		l->rc = cdx_error(CDX_ECORRUPT, "%s: field %s%s = %g is not a refine factor in [0, %d]",
		    l->path, prefix, key, f, CDX_MANIFEST_MAX_REFINE);
		return 0;
	}
	return (float) f;
}

/* opt_num is get_num for an optional field: 0 when absent. */
static double
opt_num(struct ld *l, json_t *obj, const char *prefix, const char *key)
{
	return json_object_get(obj, key) == NULL ? 0 : get_num(l, obj, prefix, key);
}

static void
load_points(struct ld *l, json_t *pts, struct cdx_operating_point **pointsp, uint32_t *np)
{
	if (!json_is_array(pts)) {
		l->rc = cdx_error(
		    CDX_ECORRUPT, "%s: field operating_points has the wrong type (expected array)", l->path);
		return;
	}
	size_t n = json_array_size(pts);
	struct cdx_operating_point *points = NULL;
	if (n > 0 && (points = calloc(n, sizeof(*points))) == NULL) {
		l->rc = cdx_error(CDX_ENOMEM, "%s: %zu operating points", l->path, n);
		return;
	}
	*pointsp = points;
	*np = (uint32_t) n;
	for (size_t i = 0; i < n && l->rc == CDX_OK; i++) {
		char pre[40];
		snprintf(pre, sizeof(pre), "operating_points[%zu].", i);
		json_t *j = json_array_get(pts, i);
		if (!json_is_object(j)) {
			l->rc = cdx_error(
			    CDX_ECORRUPT, "%s: field operating_points[%zu] is not an object", l->path, i);
			break;
		}
		struct cdx_operating_point *p = &points[i];
		p->recall_target = get_num(l, j, pre, "recall_target");
		p->recall = get_num(l, j, pre, "recall");
		p->k = (uint32_t) get_uint(l, j, pre, "k", UINT32_MAX);
		p->nprobe = (uint32_t) get_uint(l, j, pre, "nprobe", UINT32_MAX);
		p->refine_factor = get_factor(l, j, pre, "refine_factor");
		p->p99_ms = get_num(l, j, pre, "p99_ms");
		p->recall_se = opt_num(l, j, pre, "recall_se");
		p->check_recall = opt_num(l, j, pre, "check_recall");
		p->qps = opt_num(l, j, pre, "qps");
	}
}

int
cdx_points_from_json(const void *json, const char *what, struct cdx_operating_point **points, uint32_t *n)
{
	struct ld l = { .path = what, .rc = CDX_OK };
	*points = NULL;
	*n = 0;
	load_points(&l, (json_t *) json, points, n);
	if (l.rc != CDX_OK) {
		free(*points);
		*points = NULL;
		*n = 0;
	}
	return l.rc;
}

/* load_structure reads the fields a self-tuning build added (2026-12): all
 * optional, so that older manifests load as "no transform, no default
 * target, no tuning report". */
static void
load_structure(struct ld *l, json_t *root, struct cdx_manifest *m)
{
	char tmp[32];
	m->index_dim = m->dim;
	json_t *st = json_object_get(root, "structure");
	if (l->rc == CDX_OK && st != NULL) {
		if (!json_is_object(st)) {
			l->rc = cdx_error(CDX_ECORRUPT,
			    "%s: field structure has the wrong type (expected object)", l->path);
			return;
		}
		get_str(l, st, "structure.", "transform", tmp, sizeof(tmp));
		if (l->rc == CDX_OK && cdx_transform_parse(tmp, &m->transform) != CDX_OK)
			l->rc = cdx_error(CDX_ECORRUPT,
			    "%s: field structure.transform \"%s\" is not none or mips-l2", l->path, tmp);
		m->index_dim = (uint32_t) get_uint(l, st, "structure.", "index_dim", UINT32_MAX);
		uint32_t least = m->dim + (m->transform == CDX_TRANSFORM_MIPS_L2);
		if (l->rc == CDX_OK && (m->index_dim < least || m->index_dim > least + 64))
			l->rc = cdx_error(CDX_ECORRUPT,
			    "%s: field structure.index_dim %u does not fit dim %u and transform %s", l->path,
			    m->index_dim, m->dim, cdx_transform_name(m->transform));
		if (m->transform == CDX_TRANSFORM_MIPS_L2) {
			m->max_norm2 = get_num(l, st, "structure.", "max_norm2");
			if (l->rc == CDX_OK && !(m->max_norm2 >= 0 && m->max_norm2 < 1e38))
				l->rc = cdx_error(CDX_ECORRUPT,
				    "%s: field structure.max_norm2 is not a finite non-negative number",
				    l->path);
		}
	}
	m->default_recall_target = opt_num(l, root, "", "default_recall_target");
	if (l->rc == CDX_OK && !(m->default_recall_target >= 0 && m->default_recall_target <= 1))
		l->rc = cdx_error(CDX_ECORRUPT, "%s: field default_recall_target is not in [0, 1]", l->path);
	json_t *tk = json_object_get(root, "tuned_k");
	if (l->rc == CDX_OK && tk != NULL) {
		if (!json_is_array(tk) || json_array_size(tk) > CDX_MANIFEST_MAX_TUNED_K) {
			l->rc = cdx_error(CDX_ECORRUPT,
			    "%s: field tuned_k is not an array of at most %d integers", l->path,
			    CDX_MANIFEST_MAX_TUNED_K);
			return;
		}
		for (size_t i = 0; i < json_array_size(tk) && l->rc == CDX_OK; i++) {
			json_t *v = json_array_get(tk, i);
			json_int_t k = json_is_integer(v) ? json_integer_value(v) : 0;
			if (k < 1 || k > UINT32_MAX || (i > 0 && (uint32_t) k <= m->tuned_k[i - 1]))
				l->rc = cdx_error(CDX_ECORRUPT,
				    "%s: field tuned_k[%zu] is not a k above the previous one", l->path, i);
			else
				m->tuned_k[m->ntuned_k++] = (uint32_t) k;
		}
	}
	json_t *tuning = json_object_get(root, "tuning");
	if (l->rc == CDX_OK && tuning != NULL) {
		if (!json_is_object(tuning))
			l->rc = cdx_error(
			    CDX_ECORRUPT, "%s: field tuning has the wrong type (expected object)", l->path);
		else
			m->tuning = json_incref(tuning);
	}
	json_t *attrs = json_object_get(root, "attributes");
	if (l->rc == CDX_OK && attrs != NULL) {
		char what[PATH_MAX + 16];
		snprintf(what, sizeof(what), "%s: attributes", l->path);
		l->rc = cdx_attr_schema_from_json(attrs, what, &m->attrs);
	}
}

static void
load_fields(struct ld *l, json_t *root, struct cdx_manifest *m)
{
	char tmp[64];
	m->format_version = (uint32_t) get_uint(l, root, "", "format_version", UINT32_MAX);
	if (l->rc == CDX_OK && m->format_version > CDX_MANIFEST_FORMAT_VERSION) {
		l->rc = cdx_error(CDX_EVERSION, "%s: manifest format_version %u is newer than supported (%d)",
		    l->path, m->format_version, CDX_MANIFEST_FORMAT_VERSION);
		return;
	}
	if (l->rc == CDX_OK && m->format_version == 0) {
		l->rc = cdx_error(CDX_ECORRUPT, "%s: field format_version is 0", l->path);
		return;
	}
	get_str(l, root, "", "collection", m->collection, sizeof(m->collection));
	if (l->rc == CDX_OK && !cdx_name_valid(m->collection))
		l->rc = cdx_error(
		    CDX_ECORRUPT, "%s: field collection \"%s\" is not a valid name", l->path, m->collection);
	get_str(l, root, "", "version", m->version, sizeof(m->version));
	if (l->rc == CDX_OK && !cdx_name_valid(m->version))
		l->rc = cdx_error(
		    CDX_ECORRUPT, "%s: field version \"%s\" is not a valid name", l->path, m->version);
	get_str(l, root, "", "model_version", m->model_version, sizeof(m->model_version));
	get_str(l, root, "", "factory", m->factory, sizeof(m->factory));
	get_str(l, root, "", "metric", tmp, sizeof(tmp));
	if (l->rc == CDX_OK && cdx_metric_parse(tmp, &m->metric) != CDX_OK)
		l->rc = cdx_error(CDX_ECORRUPT, "%s: field metric \"%s\" is not l2, ip or cos", l->path, tmp);
	m->dim = (uint32_t) get_uint(l, root, "", "dim", UINT32_MAX);
	if (l->rc == CDX_OK && m->dim == 0)
		l->rc = cdx_error(CDX_ECORRUPT, "%s: field dim is 0", l->path);
	m->items = get_uint(l, root, "", "items", INT64_MAX);
	m->nlist = (uint32_t) get_uint(l, root, "", "nlist", UINT32_MAX);
	m->pq_m = (uint32_t) get_uint(l, root, "", "pq_m", UINT32_MAX);
	m->pq_nbits = (uint32_t) get_uint(l, root, "", "pq_nbits", 64);
	m->default_nprobe = (uint32_t) get_uint(l, root, "", "default_nprobe", UINT32_MAX);
	get_str(l, root, "", "refine", tmp, sizeof(tmp));
	if (l->rc == CDX_OK && cdx_refine_parse(tmp, &m->refine) != CDX_OK)
		l->rc = cdx_error(
		    CDX_ECORRUPT, "%s: field refine \"%s\" is not none, fp32, fp16 or sq8", l->path, tmp);
	m->default_refine_factor = get_factor(l, root, "", "default_refine_factor");

	json_t *shards = get(l, root, "", "shards", JSON_ARRAY, "array");
	if (shards != NULL) {
		size_t n = json_array_size(shards);
		if (n == 0 || n > UINT32_MAX) {
			l->rc = cdx_error(CDX_ECORRUPT, "%s: field shards has %zu entries", l->path, n);
			return;
		}
		m->shards = calloc(n, sizeof(*m->shards));
		if (m->shards == NULL) {
			l->rc = cdx_error(CDX_ENOMEM, "%s: %zu shards", l->path, n);
			return;
		}
		m->nshards = (uint32_t) n;
		uint64_t rows = 0;
		for (size_t i = 0; i < n && l->rc == CDX_OK; i++) {
			char pre[32];
			snprintf(pre, sizeof(pre), "shards[%zu].", i);
			json_t *s = json_array_get(shards, i);
			if (!json_is_object(s)) {
				l->rc = cdx_error(
				    CDX_ECORRUPT, "%s: field shards[%zu] is not an object", l->path, i);
				break;
			}
			struct cdx_manifest_shard *sh = &m->shards[i];
			get_str(l, s, pre, "file", sh->file, sizeof(sh->file));
			if (l->rc == CDX_OK && !cdx_name_valid(sh->file))
				l->rc = cdx_error(CDX_ECORRUPT,
				    "%s: field %sfile \"%s\" is not a plain file name", l->path, pre,
				    sh->file);
			sh->bytes = get_uint(l, s, pre, "bytes", INT64_MAX);
			sh->rows = get_uint(l, s, pre, "rows", INT64_MAX);
			sh->xxh64 = get_hex(l, s, pre, "xxh64");
			rows += sh->rows;
		}
		if (l->rc == CDX_OK && rows != m->items)
			l->rc = cdx_error(CDX_ECORRUPT,
			    "%s: shards hold %" PRIu64 " rows but items is %" PRIu64, l->path, rows,
			    m->items);
	}

	/* operating_points and build are optional (a build may skip recall
	 * measurement; hand-made manifests may lack provenance), but when
	 * present they must be well-formed. */
	json_t *pts = json_object_get(root, "operating_points");
	if (l->rc == CDX_OK && pts != NULL)
		load_points(l, pts, &m->points, &m->npoints);
	load_structure(l, root, m);
	json_t *b = json_object_get(root, "build");
	if (l->rc == CDX_OK && b != NULL) {
		if (!json_is_object(b)) {
			l->rc = cdx_error(
			    CDX_ECORRUPT, "%s: field build has the wrong type (expected object)", l->path);
			return;
		}
		m->seed = get_uint(l, b, "build.", "seed", UINT64_MAX);
		m->train_sample = get_uint(l, b, "build.", "train_sample", UINT64_MAX);
		json_t *in = get(l, b, "build.", "input", JSON_OBJECT, "object");
		if (in != NULL) {
			get_str(l, in, "build.input.", "path", m->input_path, sizeof(m->input_path));
			m->input_bytes = get_uint(l, in, "build.input.", "bytes", UINT64_MAX);
			m->input_fingerprint = get_hex(l, in, "build.input.", "fingerprint");
		}
		get_str(l, b, "build.", "created", m->created, sizeof(m->created));
		get_str(l, b, "build.", "candex_version", m->candex_version, sizeof(m->candex_version));
	}
}

int
cdx_manifest_load(struct cdx_manifest **mp, const char *version_dir)
{
	*mp = NULL;
	char path[PATH_MAX];
	if (snprintf(path, sizeof(path), "%s/%s", version_dir, CDX_MANIFEST_FILE) >= (int) sizeof(path))
		return cdx_error(CDX_EINVAL, "path too long: %s", version_dir);
	char *text;
	size_t len;
	int rc = cdx_read_file(path, &text, &len);
	if (rc != CDX_OK)
		return rc;
	rc = cdx_manifest_parse(mp, text, len, path);
	free(text);
	return rc;
}

int
cdx_manifest_parse(struct cdx_manifest **mp, const char *text, size_t len, const char *path)
{
	*mp = NULL;
	json_error_t jerr;
	json_t *root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &jerr);
	if (root == NULL)
		return cdx_error(
		    CDX_ECORRUPT, "%s:%d:%d: invalid JSON: %s", path, jerr.line, jerr.column, jerr.text);
	if (!json_is_object(root)) {
		json_decref(root);
		return cdx_error(CDX_ECORRUPT, "%s: top level is not an object", path);
	}
	struct cdx_manifest *m = calloc(1, sizeof(*m));
	if (m == NULL) {
		json_decref(root);
		return cdx_error(CDX_ENOMEM, "%s", path);
	}
	struct ld l = { .path = path, .rc = CDX_OK };
	load_fields(&l, root, m);
	if (l.rc == CDX_OK) {
		json_t *extra = json_object();
		const char *k;
		json_t *v;
		json_object_foreach(root, k, v) if (!is_known_key(k)) json_object_set(extra, k, v);
		m->extra = extra;
	}
	json_decref(root);
	if (l.rc != CDX_OK) {
		cdx_manifest_free(m);
		return l.rc;
	}
	*mp = m;
	return CDX_OK;
}

void
cdx_manifest_free(struct cdx_manifest *m)
{
	if (m == NULL)
		return;
	free(m->shards);
	free(m->points);
	if (m->tuning != NULL)
		json_decref((json_t *) m->tuning);
	if (m->extra != NULL)
		json_decref((json_t *) m->extra);
	cdx_attr_schema_free(m->attrs);
	free(m);
}
