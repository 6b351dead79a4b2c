/*
 * cmd_inspect.c — `candex inspect PATH`: verify a version and describe it.
 *
 * Verification is complete: each shard file's size and whole-file xxh64
 * against the manifest, its header against the manifest, every part's
 * stored-bytes checksum, and each part decoded (lz4 content checksums,
 * ids/keys/refine structure, the Faiss index itself). Any mismatch is
 * reported and makes the exit status 1; inspection goes on so that one run
 * lists every problem.
 */
#define _GNU_SOURCE
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <faiss/c_api/IndexIVF_c.h>
#include <faiss/c_api/index_io_c.h>
#include <jansson.h>

#include "builder/build.h"
#include "cli.h"
#include "shard/refine.h"
#include "faissx/error.h"

struct inspect_opts {
	int json, no_lists;
};

static const struct cdx_opt inspect_options[] = {
	CDX_OPT_FLAG_(
	    "json", offsetof(struct inspect_opts, json), "one JSON document on stdout instead of text"),
	CDX_OPT_FLAG_("no-lists", offsetof(struct inspect_opts, no_lists),
	    "skip loading the Faiss indexes (no list histogram; faster)"),
};

static const struct cdx_opt_command inspect_command = {
	.prog = "candex inspect",
	.head = "usage: candex inspect PATH [--json] [--no-lists]\n"
	        "\n"
	        "PATH is DIR/NAME (the collection: its CURRENT version), DIR/NAME/CURRENT or a\n"
	        "version directory. Verifies every shard against the manifest (size, whole-file\n"
	        "xxh64, header) and every part (checksums, decoding), then prints the manifest,\n"
	        "per-shard stats with the lz4 ratio of each part, and a histogram of inverted-list\n"
	        "sizes summed over shards (the imbalance of the coarse quantizer).\n",
	.tail = "Exit status: 0 all verified, 1 any mismatch or error, 2 usage.\n",
	.opts = inspect_options,
	.nopts = CDX_ARRAY_LEN(inspect_options),
};

struct report {
	json_t *errors; /* array of strings */
};

static void add_error(struct report *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void
add_error(struct report *r, const char *fmt, ...)
{
	char msg[1200];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	json_array_append_new(r->errors, json_string(msg));
}

/* check_parts decodes the ids, keys and refine parts (content checks
 * beyond the stored-bytes checksum). */
static void
check_parts(struct report *r, cdx_shard *s, const char *path, uint32_t dim)
{
	const struct cdx_shard_info *info = cdx_shard_info(s);
	void *data = NULL;
	size_t len = 0;
	if (cdx_shard_read_part(s, CDX_PART_IDS, &data, &len) != CDX_OK) {
		add_error(r, "%s: ids: %s", path, cdx_last_error());
	} else {
		int64_t *ids = malloc((info->rows ? info->rows : 1) * sizeof(int64_t));
		if (ids == NULL || cdx_ids_decode(data, len, ids, info->rows) != CDX_OK)
			add_error(r, "%s: ids: %s", path, cdx_last_error());
		free(ids);
	}
	free(data);
	data = NULL;
	if (cdx_shard_find_part(s, CDX_PART_KEYS) != NULL) {
		if (cdx_shard_read_part(s, CDX_PART_KEYS, &data, &len) != CDX_OK) {
			add_error(r, "%s: keys: %s", path, cdx_last_error());
		} else {
			char *strings = NULL;
			uint64_t *offsets = NULL;
			if (cdx_keys_decode(data, len, info->rows, &strings, &offsets) != CDX_OK)
				add_error(r, "%s: keys: %s", path, cdx_last_error());
			free(strings);
			free(offsets);
		}
		free(data);
		data = NULL;
	}
	if (cdx_shard_find_part(s, CDX_PART_REFINE) != NULL) {
		if (cdx_shard_read_part(s, CDX_PART_REFINE, &data, &len) != CDX_OK) {
			add_error(r, "%s: refine: %s", path, cdx_last_error());
		} else {
			struct cdx_refine_store st;
			if (cdx_refine_store_parse(&st, data, len, info->rows, dim) != CDX_OK)
				add_error(r, "%s: refine: %s", path, cdx_last_error());
		}
		free(data);
	}
}

/* load_lists reads the shard's Faiss index and adds its list sizes to
 * sizes (allocated on the first IVF shard). Returns the index type note. */
static void
load_lists(struct report *r, cdx_shard *s, const char *path, uint64_t rows, uint64_t **sizes, size_t *nlist,
    json_t *js)
{
	FILE *f = NULL;
	FaissIndex *index = NULL;
	if (cdx_shard_open_part_stream(s, CDX_PART_FAISS, &f) != CDX_OK) {
		add_error(r, "%s: faiss: %s", path, cdx_last_error());
		return;
	}
	if (faiss_read_index(f, FAISS_IO_FLAG_READ_ONLY, &index) != 0) {
		cdx_error_faiss("read");
		add_error(r, "%s: faiss: %s", path, cdx_last_error());
		fclose(f);
		return;
	}
	fclose(f);
	if ((uint64_t) faiss_Index_ntotal(index) != rows)
		add_error(r, "%s: faiss index holds %lld vectors, the header says %llu", path,
		    (long long) faiss_Index_ntotal(index), (unsigned long long) rows);
	FaissIndexIVF *ivf = faiss_IndexIVF_cast(index);
	if (ivf != NULL) {
		size_t n = faiss_IndexIVF_nlist(ivf);
		if (*sizes == NULL) {
			*sizes = calloc(n, sizeof(uint64_t));
			*nlist = n;
		}
		if (n != *nlist) {
			add_error(r, "%s: nlist %zu differs from the first shard's %zu", path, n, *nlist);
		} else if (*sizes != NULL) {
			for (size_t i = 0; i < n; i++)
				(*sizes)[i] += faiss_IndexIVF_get_list_size(ivf, i);
		}
		json_object_set_new(js, "nlist", json_integer((json_int_t) n));
		json_object_set_new(js, "imbalance", json_real(faiss_IndexIVF_imbalance_factor(ivf)));
	}
	faiss_Index_free(index);
}

static int
cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *) a, y = *(const uint64_t *) b;
	return x < y ? -1 : x > y;
}

static json_t *
list_stats(const uint64_t *sizes, size_t n)
{
	json_t *o = json_object();
	uint64_t *s = malloc(n * sizeof(uint64_t));
	if (s == NULL)
		return o;
	memcpy(s, sizes, n * sizeof(uint64_t));
	qsort(s, n, sizeof(uint64_t), cmp_u64);
	double sum = 0, sum2 = 0;
	uint64_t empty = 0;
	for (size_t i = 0; i < n; i++) {
		sum += (double) s[i];
		sum2 += (double) s[i] * (double) s[i];
		empty += s[i] == 0;
	}
	json_object_set_new(o, "nlist", json_integer((json_int_t) n));
	json_object_set_new(o, "vectors", json_integer((json_int_t) sum));
	json_object_set_new(o, "min", json_integer((json_int_t) s[0]));
	json_object_set_new(o, "p50", json_integer((json_int_t) s[n / 2]));
	json_object_set_new(o, "p90", json_integer((json_int_t) s[(n * 9) / 10]));
	json_object_set_new(o, "p99", json_integer((json_int_t) s[(n * 99) / 100]));
	json_object_set_new(o, "max", json_integer((json_int_t) s[n - 1]));
	json_object_set_new(o, "mean", json_real(sum / (double) n));
	json_object_set_new(o, "empty", json_integer((json_int_t) empty));
	/* Faiss's imbalance factor: n * sum(size^2) / sum(size)^2; 1 = perfectly even */
	json_object_set_new(o, "imbalance", json_real(sum > 0 ? (double) n * sum2 / (sum * sum) : 0));
	/* 12 equal-width buckets over [0, max] */
	const int nb = 12;
	uint64_t width = s[n - 1] / (uint64_t) nb + 1;
	json_t *h = json_array();
	for (int b = 0; b < nb; b++) {
		uint64_t lo = (uint64_t) b * width, hi = lo + width, cnt = 0;
		for (size_t i = 0; i < n; i++)
			cnt += s[i] >= lo && s[i] < hi;
		json_t *e = json_object();
		json_object_set_new(e, "from", json_integer((json_int_t) lo));
		json_object_set_new(e, "to", json_integer((json_int_t) hi));
		json_object_set_new(e, "lists", json_integer((json_int_t) cnt));
		json_array_append_new(h, e);
	}
	json_object_set_new(o, "histogram", h);
	free(s);
	return o;
}

/* print_tuning shows the self-tuning build's report: what it measured of
 * every candidate and what it chose, then the operating points served. */
static void
print_tuning(json_t *m)
{
	json_t *t = json_object_get(m, "tuning");
	if (!json_is_object(t))
		return;
	json_t *q = json_object_get(t, "queries");
	printf("\nself-tuning: target %.3g at k", json_number_value(json_object_get(t, "target")));
	size_t i;
	json_t *v;
	json_array_foreach(json_object_get(t, "k"), i, v)
	    printf("%s%lld", i ? "," : " ", (long long) json_integer_value(v));
	printf("; %lld selection + %lld check queries (%s); %.1f s of a %.0f s budget%s\n",
	    (long long) json_integer_value(json_object_get(q, "selection")),
	    (long long) json_integer_value(json_object_get(q, "check")),
	    json_string_value(json_object_get(q, "source")), json_number_value(json_object_get(t, "seconds")),
	    json_number_value(json_object_get(t, "budget_s")),
	    json_is_true(json_object_get(t, "budget_reached")) ? " (reached: some candidates skipped)" : "");
	printf("  chosen: %s\n", json_string_value(json_object_get(t, "chosen")));
	printf("  %-48s %7s %10s %8s  %s\n", "candidate", "reached", "QPS model", "B/item",
	    "per k: nprobe x refine -> recall");
	json_t *c;
	json_array_foreach(json_object_get(t, "candidates"), i, c)
	{
		printf("%s %-48.48s %7s %10.0f %8.0f ",
		    json_is_true(json_object_get(c, "chosen")) ? "*" : " ",
		    json_string_value(json_object_get(c, "structure")),
		    json_is_true(json_object_get(c, "reached")) ? "yes" : "no",
		    json_number_value(json_object_get(c, "qps_model")),
		    json_number_value(json_object_get(c, "bytes_per_item")));
		size_t j;
		json_t *k;
		json_array_foreach(json_object_get(c, "per_k"), j, k)
		{
			if (json_is_true(json_object_get(k, "reached")))
				printf(" k%lld %lldx%g %.3f",
				    (long long) json_integer_value(json_object_get(k, "k")),
				    (long long) json_integer_value(json_object_get(k, "nprobe")),
				    json_number_value(json_object_get(k, "refine_factor")),
				    json_number_value(json_object_get(k, "recall")));
			else
				printf(" k%lld -", (long long) json_integer_value(json_object_get(k, "k")));
		}
		printf("\n");
	}
	json_t *pts = json_object_get(m, "operating_points");
	if (json_array_size(pts) == 0)
		return;
	printf("  operating points (default target %.3g):\n    %6s %7s %7s %8s %8s %8s %10s\n",
	    json_number_value(json_object_get(m, "default_recall_target")), "k", "target", "nprobe", "refine",
	    "recall", "check", "QPS model");
	json_array_foreach(pts, i, v)
	{
		json_t *chk = json_object_get(v, "check_recall");
		char cs[16] = "-";
		if (chk != NULL)
			snprintf(cs, sizeof(cs), "%.4f", json_number_value(chk));
		printf("    %6lld %7.3g %7lld %8g %8.4f %8s %10.0f\n",
		    (long long) json_integer_value(json_object_get(v, "k")),
		    json_number_value(json_object_get(v, "recall_target")),
		    (long long) json_integer_value(json_object_get(v, "nprobe")),
		    json_number_value(json_object_get(v, "refine_factor")),
		    json_number_value(json_object_get(v, "recall")), cs,
		    json_number_value(json_object_get(v, "qps")));
	}
}

static void
print_text(json_t *doc)
{
	json_t *m = json_object_get(doc, "manifest");
	printf("version  %s\n", json_string_value(json_object_get(doc, "version_dir")));
	if (m != NULL) {
		char *ms = json_dumps(m, JSON_INDENT(2) | JSON_SORT_KEYS);
		printf("manifest:\n%s\n", ms ? ms : "");
		free(ms);
		print_tuning(m);
	}
	json_t *shards = json_object_get(doc, "shards");
	size_t i;
	json_t *sh;
	printf("\nshards:\n");
	json_array_foreach(shards, i, sh)
	{
		printf("  %s  rows %lld  bytes %lld  file xxh64 %s",
		    json_string_value(json_object_get(sh, "file")),
		    (long long) json_integer_value(json_object_get(sh, "rows")),
		    (long long) json_integer_value(json_object_get(sh, "bytes")),
		    json_is_true(json_object_get(sh, "xxh64_ok")) ? "ok" : "MISMATCH");
		json_t *imb = json_object_get(sh, "imbalance");
		if (imb != NULL)
			printf("  list imbalance %.3f", json_real_value(imb));
		printf("\n    %-8s %14s %14s %8s\n", "part", "raw bytes", "stored bytes", "ratio");
		size_t j;
		json_t *pt;
		json_array_foreach(json_object_get(sh, "parts"), j, pt)
		{
			printf("    %-8s %14lld %14lld %8.2f\n",
			    json_string_value(json_object_get(pt, "kind")),
			    (long long) json_integer_value(json_object_get(pt, "raw_bytes")),
			    (long long) json_integer_value(json_object_get(pt, "stored_bytes")),
			    json_real_value(json_object_get(pt, "ratio")));
		}
	}
	json_t *tot = json_object_get(doc, "parts_total");
	if (json_object_size(tot) > 0) {
		printf(
		    "\nall shards:\n    %-8s %14s %14s %8s\n", "part", "raw bytes", "stored bytes", "ratio");
		const char *k;
		json_t *pt;
		json_object_foreach(tot, k, pt)
		{
			printf("    %-8s %14lld %14lld %8.2f\n", k,
			    (long long) json_integer_value(json_object_get(pt, "raw_bytes")),
			    (long long) json_integer_value(json_object_get(pt, "stored_bytes")),
			    json_real_value(json_object_get(pt, "ratio")));
		}
	}
	json_t *lists = json_object_get(doc, "lists");
	if (lists != NULL) {
		printf("\ninverted lists (summed over shards): nlist %lld, sizes min %lld p50 %lld p90 %lld "
		       "p99 %lld max "
		       "%lld, mean %.1f, empty %lld, imbalance %.3f\n",
		    (long long) json_integer_value(json_object_get(lists, "nlist")),
		    (long long) json_integer_value(json_object_get(lists, "min")),
		    (long long) json_integer_value(json_object_get(lists, "p50")),
		    (long long) json_integer_value(json_object_get(lists, "p90")),
		    (long long) json_integer_value(json_object_get(lists, "p99")),
		    (long long) json_integer_value(json_object_get(lists, "max")),
		    json_real_value(json_object_get(lists, "mean")),
		    (long long) json_integer_value(json_object_get(lists, "empty")),
		    json_real_value(json_object_get(lists, "imbalance")));
		json_t *h = json_object_get(lists, "histogram");
		json_int_t peak = 1;
		json_t *e;
		json_array_foreach(h, i, e)
		{
			json_int_t c = json_integer_value(json_object_get(e, "lists"));
			if (c > peak)
				peak = c;
		}
		json_array_foreach(h, i, e)
		{
			json_int_t c = json_integer_value(json_object_get(e, "lists"));
			int w = (int) (c * 50 / peak);
			char bar[51];
			memset(bar, '#', (size_t) w);
			bar[w] = 0;
			printf("  [%8lld, %8lld) %7lld %s\n",
			    (long long) json_integer_value(json_object_get(e, "from")),
			    (long long) json_integer_value(json_object_get(e, "to")), (long long) c, bar);
		}
	} else if (json_object_get(doc, "index") != NULL) {
		printf("\nindex: %s (no inverted lists)\n", json_string_value(json_object_get(doc, "index")));
	}
	json_t *errs = json_object_get(doc, "errors");
	if (json_array_size(errs) == 0) {
		printf("\nverify: OK (%zu shard(s), every checksum matches)\n", json_array_size(shards));
	} else {
		printf("\nverify: FAILED, %zu problem(s):\n", json_array_size(errs));
		json_t *e;
		json_array_foreach(errs, i, e) printf("  %s\n", json_string_value(e));
	}
}

static void
add_part_total(json_t *tot, const char *kind, uint64_t raw, uint64_t stored)
{
	json_t *t = json_object_get(tot, kind);
	if (t == NULL) {
		t = json_object();
		json_object_set_new(t, "raw_bytes", json_integer(0));
		json_object_set_new(t, "stored_bytes", json_integer(0));
		json_object_set_new(tot, kind, t);
	}
	json_int_t r = json_integer_value(json_object_get(t, "raw_bytes")) + (json_int_t) raw;
	json_int_t s = json_integer_value(json_object_get(t, "stored_bytes")) + (json_int_t) stored;
	json_object_set_new(t, "raw_bytes", json_integer(r));
	json_object_set_new(t, "stored_bytes", json_integer(s));
	json_object_set_new(t, "ratio", json_real(s > 0 ? (double) r / (double) s : 0));
}

int
cmd_inspect(int argc, char **argv)
{
	struct inspect_opts o = { 0 };
	const char *pos[1];
	size_t npos = 0;
	int prc = cdx_opt_command_parse(&inspect_command, &o, argc, argv, pos, 1, &npos);
	if (prc >= 0)
		return prc;
	if (npos != 1)
		return cdx_opt_command_fail(&inspect_command, "give one PATH");
	int as_json = o.json, lists = !o.no_lists;
	const char *arg = pos[0];
	char vdir[PATH_MAX];
	int rc = cdx_version_path_resolve(arg, vdir);
	if (rc != CDX_OK) {
		fprintf(stderr, "candex inspect: %s (%s)\n", cdx_last_error(), cdx_errname(rc));
		return CLI_EXIT_FAIL;
	}
	struct cdx_manifest *m = NULL;
	if ((rc = cdx_manifest_load(&m, vdir)) != CDX_OK) {
		fprintf(stderr, "candex inspect: %s (%s)\n", cdx_last_error(), cdx_errname(rc));
		return CLI_EXIT_FAIL;
	}
	struct report r = { json_array() };
	json_t *doc = json_object();
	json_object_set_new(doc, "version_dir", json_string(vdir));
	char *mtext = cdx_manifest_to_json(m);
	json_t *mj = mtext ? json_loads(mtext, 0, NULL) : NULL;
	free(mtext);
	json_object_set_new(doc, "manifest", mj ? mj : json_null());
	json_t *shards = json_array(), *tot = json_object();
	uint64_t *sizes = NULL;
	size_t nlist = 0;
	int ivf_seen = 0;
	for (uint32_t i = 0; i < m->nshards; i++) {
		const struct cdx_manifest_shard *ms = &m->shards[i];
		char path[PATH_MAX + CDX_NAME_MAX];
		snprintf(path, sizeof(path), "%s/%s", vdir, ms->file);
		json_t *js = json_object();
		json_array_append_new(shards, js);
		json_object_set_new(js, "file", json_string(ms->file));
		json_object_set_new(js, "rows", json_integer((json_int_t) ms->rows));
		json_object_set_new(js, "bytes", json_integer((json_int_t) ms->bytes));
		uint64_t bytes = 0, hash = 0;
		int ok = 0;
		if (cdx_file_xxh64(path, &bytes, &hash) != CDX_OK) {
			add_error(&r, "%s", cdx_last_error());
		} else if (bytes != ms->bytes) {
			add_error(&r, "%s: %llu bytes, the manifest says %llu", path,
			    (unsigned long long) bytes, (unsigned long long) ms->bytes);
		} else if (hash != ms->xxh64) {
			add_error(&r, "%s: file xxh64 %016llx, the manifest says %016llx", path,
			    (unsigned long long) hash, (unsigned long long) ms->xxh64);
		} else {
			ok = 1;
		}
		json_object_set_new(js, "xxh64_ok", json_boolean(ok));
		cdx_shard *s = NULL;
		if (cdx_shard_open(&s, path) != CDX_OK) {
			add_error(&r, "%s", cdx_last_error());
			continue;
		}
		const struct cdx_shard_info *info = cdx_shard_info(s);
		if (strcmp(info->collection, m->collection) != 0 || info->dim != m->dim
		    || (int) info->metric != m->metric || info->rows != ms->rows || info->shard_index != i
		    || info->shard_count != m->nshards)
			add_error(&r,
			    "%s: header (collection %s, dim %u, metric %s, rows %llu, shard %u/%u) disagrees "
			    "with the "
			    "manifest",
			    path, info->collection, info->dim, cdx_metric_name((int) info->metric),
			    (unsigned long long) info->rows, info->shard_index, info->shard_count);
		int parts_ok = cdx_shard_verify(s, NULL) == CDX_OK;
		if (!parts_ok)
			add_error(&r, "%s", cdx_last_error());
		json_t *parts = json_array();
		for (uint32_t p = 0; p < info->nparts; p++) {
			const struct cdx_part_desc *pd = &info->parts[p];
			json_t *jp = json_object();
			const char *kind = cdx_part_name((int) pd->kind);
			json_object_set_new(jp, "kind", json_string(kind));
			json_object_set_new(jp, "raw_bytes", json_integer((json_int_t) pd->raw_size));
			json_object_set_new(jp, "stored_bytes", json_integer((json_int_t) pd->stored_size));
			json_object_set_new(jp, "ratio",
			    json_real(
			        pd->stored_size ? (double) pd->raw_size / (double) pd->stored_size : 0));
			json_array_append_new(parts, jp);
			add_part_total(tot, kind, pd->raw_size, pd->stored_size);
		}
		json_object_set_new(js, "parts", parts);
		if (parts_ok) {
			check_parts(&r, s, path, m->dim);
			if (lists) {
				load_lists(&r, s, path, info->rows, &sizes, &nlist, js);
				ivf_seen |= sizes != NULL;
			}
		}
		cdx_shard_close(s);
	}
	json_object_set_new(doc, "shards", shards);
	json_object_set_new(doc, "parts_total", tot);
	if (ivf_seen && nlist > 0)
		json_object_set_new(doc, "lists", list_stats(sizes, nlist));
	else if (lists)
		json_object_set_new(doc, "index", json_string(m->factory));
	free(sizes);
	json_object_set_new(doc, "ok", json_boolean(json_array_size(r.errors) == 0));
	json_object_set(doc, "errors", r.errors);
	if (as_json) {
		char *s = json_dumps(doc, JSON_INDENT(2));
		printf("%s\n", s ? s : "{}");
		free(s);
	} else {
		print_text(doc);
	}
	int failed = json_array_size(r.errors) > 0;
	if (failed)
		fprintf(
		    stderr, "candex inspect: %s: %zu problem(s) found\n", vdir, json_array_size(r.errors));
	json_decref(r.errors);
	json_decref(doc);
	cdx_manifest_free(m);
	return failed ? CLI_EXIT_FAIL : CLI_EXIT_OK;
}
