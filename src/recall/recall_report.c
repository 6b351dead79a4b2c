/*
 * recall_report.c — the sweep's results as a terminal table, CSV, JSON and a
 * gnuplot PNG (recall against QPS).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <spawn.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "recall/recall.h"
#include "shard/shard.h"

extern char **environ;

static void
fmt_recall(char *out, size_t len, double v)
{
	if (isnan(v))
		snprintf(out, len, "-");
	else
		snprintf(out, len, "%.4f", v);
}

static void
fmt_refine(char *out, size_t len, float f)
{
	if (f < 1)
		snprintf(out, len, "none");
	else
		snprintf(out, len, "x%g", (double) f);
}

/* The table shows k-recall@k and 1-recall@k at the primary k, then the
 * standard 10-recall@10 and 100-recall@100 unless k already is 10 or 100. */
void
cdx_recall_table_header(FILE *out, uint32_t k)
{
	char rk[16], r1[16];
	snprintf(rk, sizeof(rk), "R%u@%u", k, k);
	snprintf(r1, sizeof(r1), "R1@%u", k);
	fprintf(out, "%7s %6s %9s %9s", "nprobe", "refine", rk, r1);
	if (k != 10)
		fprintf(out, " %9s", "R10@10");
	if (k != 100)
		fprintf(out, " %9s", "R100@100");
	fprintf(out, " %8s %8s %8s %10s %7s\n", "p50 ms", "p95 ms", "p99 ms", "QPS", "B/vec");
}

void
cdx_recall_table_row(FILE *out, const struct cdx_recall_row *r)
{
	char a[16], b[16], c[16], d[16], rf[16];
	fmt_recall(a, sizeof(a), r->recall);
	fmt_recall(b, sizeof(b), r->recall_1);
	fmt_recall(c, sizeof(c), r->recall_10);
	fmt_recall(d, sizeof(d), r->recall_100);
	fmt_refine(rf, sizeof(rf), r->refine_factor);
	fprintf(out, "%7u %6s %9s %9s", r->nprobe, rf, a, b);
	if (r->k != 10)
		fprintf(out, " %9s", c);
	if (r->k != 100)
		fprintf(out, " %9s", d);
	fprintf(out, " %8.3f %8.3f %8.3f %10.0f %7.1f\n", r->p50_ms, r->p95_ms, r->p99_ms, r->qps,
	    r->bytes_per_vector);
}

/* csv_num prints v with prec decimals; nothing for "not measured". */
static void
csv_num(FILE *f, double v, int prec)
{
	if (!isnan(v) && !isinf(v))
		fprintf(f, "%.*f", prec, v);
}

int
cdx_recall_write_csv(const char *path, const struct cdx_recall_row *rows, size_t n)
{
	FILE *f = fopen(path, "w");
	if (f == NULL)
		return cdx_error_errno(CDX_EIO, "%s", path);
	fprintf(f,
	    "nprobe,refine_factor,k,recall_at_k,recall_1_at_k,recall_10_at_10,recall_100_at_100,"
	    "p50_ms,p95_ms,p99_ms,mean_ms,qps,bytes_per_vector,queries\n");
	for (size_t i = 0; i < n; i++) {
		const struct cdx_recall_row *r = &rows[i];
		fprintf(
		    f, "%u,%g,%u,", r->nprobe, r->refine_factor < 1 ? 0.0 : (double) r->refine_factor, r->k);
		csv_num(f, r->recall, 6);
		fputc(',', f);
		csv_num(f, r->recall_1, 6);
		fputc(',', f);
		csv_num(f, r->recall_10, 6);
		fputc(',', f);
		csv_num(f, r->recall_100, 6);
		fputc(',', f);
		csv_num(f, r->p50_ms, 4);
		fputc(',', f);
		csv_num(f, r->p95_ms, 4);
		fputc(',', f);
		csv_num(f, r->p99_ms, 4);
		fputc(',', f);
		csv_num(f, r->mean_ms, 4);
		fputc(',', f);
		csv_num(f, r->qps, 1);
		fputc(',', f);
		csv_num(f, r->bytes_per_vector, 2);
		fprintf(f, ",%zu\n", r->nq);
	}
	if (ferror(f)) {
		fclose(f);
		return cdx_error_errno(CDX_EIO, "%s: write", path);
	}
	if (fclose(f) != 0)
		return cdx_error_errno(CDX_EIO, "%s: close", path);
	return CDX_OK;
}

/* jnum: jansson refuses NaN and infinities; they mean "not measured". */
static json_t *
jnum(double v)
{
	return isnan(v) || isinf(v) ? json_null() : json_real(v);
}

static json_t *
row_json(const struct cdx_recall_row *r)
{
	json_t *o = json_object();
	json_object_set_new(o, "nprobe", json_integer(r->nprobe));
	json_object_set_new(o, "refine_factor", json_real(r->refine_factor < 1 ? 0.0 : r->refine_factor));
	json_object_set_new(o, "k", json_integer(r->k));
	json_object_set_new(o, "recall_at_k", jnum(r->recall));
	json_object_set_new(o, "recall_at_k_stderr", jnum(r->recall_se));
	json_object_set_new(o, "recall_1_at_k", jnum(r->recall_1));
	json_object_set_new(o, "recall_10_at_10", jnum(r->recall_10));
	json_object_set_new(o, "recall_100_at_100", jnum(r->recall_100));
	json_object_set_new(o, "p50_ms", jnum(r->p50_ms));
	json_object_set_new(o, "p95_ms", jnum(r->p95_ms));
	json_object_set_new(o, "p99_ms", jnum(r->p99_ms));
	json_object_set_new(o, "mean_ms", jnum(r->mean_ms));
	json_object_set_new(o, "qps", jnum(r->qps));
	json_object_set_new(o, "bytes_per_vector", jnum(r->bytes_per_vector));
	json_object_set_new(o, "queries", json_integer((json_int_t) r->nq));
	json_object_set_new(o, "single_vs_batch_mismatches", json_integer((json_int_t) r->mismatched));
	return o;
}

int
cdx_recall_write_json(const char *path, const struct cdx_recall_meta *m, const struct cdx_recall_row *rows,
    size_t n, const struct cdx_recall_point *points, size_t npoints)
{
	json_t *root = json_object();
	json_object_set_new(root, "tool", json_string("candex recall"));
	json_object_set_new(root, "candex_version", json_string(CANDEX_VERSION));
	if (m->collection)
		json_object_set_new(root, "collection", json_string(m->collection));
	if (m->version)
		json_object_set_new(root, "index_version", json_string(m->version));
	if (m->source)
		json_object_set_new(root, "source", json_string(m->source));
	json_object_set_new(root, "metric", json_string(cdx_metric_name(m->metric)));
	json_object_set_new(root, "dim", json_integer(m->dim));
	json_object_set_new(root, "base_vectors", json_integer((json_int_t) m->nb));
	json_object_set_new(root, "items", json_integer((json_int_t) m->items));
	json_object_set_new(root, "nlist", json_integer(m->nlist));
	json_object_set_new(root, "queries", json_integer((json_int_t) m->nq));
	json_object_set_new(root, "k", json_integer(m->k));
	json_object_set_new(root, "epsilon", json_real(m->eps));
	if (m->truth_source)
		json_object_set_new(root, "truth", json_string(m->truth_source));
	json_object_set_new(root, "tie_rule",
	    json_string(m->ids_only ? "none (ids only, no base vectors)"
	                            : "distance <= k-th true distance + epsilon"));
	if (m->exact_qps > 0)
		json_object_set_new(root, "exact_search_qps", json_real(m->exact_qps));
	json_t *arr = json_array();
	for (size_t i = 0; i < n; i++) {
		json_t *o = row_json(&rows[i]);
		if (m->exact_qps > 0)
			json_object_set_new(o, "speedup_vs_exact", jnum(rows[i].qps / m->exact_qps));
		json_array_append_new(arr, o);
	}
	json_object_set_new(root, "results", arr);
	json_t *pts = json_array();
	for (size_t i = 0; i < npoints; i++) {
		json_t *o = json_object();
		json_object_set_new(o, "recall_target", json_real(points[i].target));
		if (points[i].row < 0) {
			json_object_set_new(o, "reached", json_false());
		} else {
			const struct cdx_recall_row *r = &rows[points[i].row];
			json_object_set_new(o, "reached", json_true());
			json_object_set_new(o, "nprobe", json_integer(r->nprobe));
			json_object_set_new(
			    o, "refine_factor", json_real(r->refine_factor < 1 ? 0.0 : r->refine_factor));
			json_object_set_new(o, "recall", jnum(r->recall));
			json_object_set_new(o, "k", json_integer(r->k));
			json_object_set_new(o, "p99_ms", jnum(r->p99_ms));
			json_object_set_new(o, "qps", jnum(r->qps));
		}
		json_array_append_new(pts, o);
	}
	json_object_set_new(root, "operating_points", pts);
	char *text = json_dumps(root, JSON_INDENT(2) | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(6));
	json_decref(root);
	if (text == NULL)
		return cdx_error(CDX_ENOMEM, "%s: encoding JSON", path);
	cdx_buf b = { 0 };
	int rc = cdx_buf_append(&b, text, strlen(text));
	rc = rc ? rc : cdx_buf_append(&b, "\n", 1);
	free(text);
	rc = rc ? cdx_error(CDX_ENOMEM, "%s", path) : cdx_write_file_atomic(path, b.data, b.len);
	cdx_buf_fini(&b);
	return rc;
}

/* gp_quote writes s as a gnuplot single-quoted string ('' escapes '). */
static void
gp_quote(FILE *f, const char *s)
{
	fputc('\'', f);
	for (; *s; s++) {
		if (*s == '\'')
			fputc('\'', f);
		if (*s != '\n')
			fputc(*s, f);
	}
	fputc('\'', f);
}

static int
cmp_float(const void *a, const void *b)
{
	float x = *(const float *) a, y = *(const float *) b;
	return x < y ? -1 : x > y;
}

int
cdx_recall_plot(
    const char *png_path, const char *title, const struct cdx_recall_row *rows, size_t n, double exact_qps)
{
	if (n == 0)
		return cdx_error(CDX_EEMPTY, "%s: nothing to plot", png_path);
	size_t plen = strlen(png_path);
	size_t stem = plen >= 4 && strcasecmp(png_path + plen - 4, ".png") == 0 ? plen - 4 : plen;
	char *gp = NULL, *dat = NULL;
	if (asprintf(&gp, "%.*s.gp", (int) stem, png_path) < 0
	    || asprintf(&dat, "%.*s.dat", (int) stem, png_path) < 0) {
		free(gp);
		return cdx_error(CDX_ENOMEM, "plot paths");
	}
	int rc = CDX_OK;
	float *refs = malloc(n * sizeof(float));
	size_t nref = 0;
	FILE *f = NULL;
	if (refs == NULL) {
		rc = cdx_error(CDX_ENOMEM, "plot");
		goto out;
	}
	for (size_t i = 0; i < n; i++) {
		float r = rows[i].refine_factor < 1 ? 0 : rows[i].refine_factor;
		int seen = 0;
		for (size_t j = 0; j < nref; j++)
			seen |= refs[j] == r;
		if (!seen)
			refs[nref++] = r;
	}
	qsort(refs, nref, sizeof(float), cmp_float);

	/* data: one block per refine factor, points in nprobe order */
	if ((f = fopen(dat, "w")) == NULL) {
		rc = cdx_error_errno(CDX_EIO, "%s", dat);
		goto out;
	}
	uint32_t k = rows[0].k;
	for (size_t b = 0; b < nref; b++) {
		fprintf(f, "# refine %g: recall_at_%u qps nprobe p99_ms\n", (double) refs[b], k);
		uint32_t lastp = 0;
		for (;;) { /* ascending nprobe without assuming the rows' order */
			long pick = -1;
			for (size_t i = 0; i < n; i++) {
				float r = rows[i].refine_factor < 1 ? 0 : rows[i].refine_factor;
				if (r != refs[b] || rows[i].nprobe <= lastp || isnan(rows[i].recall))
					continue;
				if (pick < 0 || rows[i].nprobe < rows[pick].nprobe)
					pick = (long) i;
			}
			if (pick < 0)
				break;
			fprintf(f, "%.6f %.3f %u %.4f\n", rows[pick].recall, rows[pick].qps,
			    rows[pick].nprobe, rows[pick].p99_ms);
			lastp = rows[pick].nprobe;
		}
		fprintf(f, "\n\n");
	}
	if (fclose(f) != 0) {
		f = NULL;
		rc = cdx_error_errno(CDX_EIO, "%s", dat);
		goto out;
	}

	if ((f = fopen(gp, "w")) == NULL) {
		rc = cdx_error_errno(CDX_EIO, "%s", gp);
		goto out;
	}
	fprintf(f, "# written by candex recall; run: gnuplot ");
	gp_quote(f, gp);
	fprintf(f,
	    "\nif (strstrt(GPVAL_TERMINALS, 'pngcairo') > 0) {\n"
	    "  set terminal pngcairo size 960,640 noenhanced font 'sans,10'\n"
	    "} else {\n"
	    "  set terminal png size 960,640 noenhanced\n"
	    "}\nset output ");
	gp_quote(f, png_path);
	fprintf(f, "\nset title ");
	gp_quote(f, title ? title : "candex recall");
	fprintf(f,
	    "\nset xlabel '%u-recall@%u'\n"
	    "set ylabel 'queries per second (log scale)'\n"
	    "set logscale y\nset grid\nset key top right box opaque\n"
	    "set xrange [*:1.0]\nset offsets 0.02, 0, 0, 0\n",
	    k, k);
	/* distinct colours and point shapes: gnuplot's default cycle repeats
	 * after a few lines */
	static const char *const colours[]
	    = { "#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02", "#a6761d", "#666666" };
	static const int shapes[] = { 7, 5, 9, 11, 13, 15, 4, 6 };
	if (exact_qps > 0)
		fprintf(f,
		    "set arrow from graph 0, first %.3f to graph 1, first %.3f nohead dt 2 lw 1.5 lc "
		    "rgb '#444444'\nset label 'exact search (Faiss flat): %.0f QPS' at graph 0.02, first "
		    "%.3f offset 0,0.7 font ',9' tc rgb '#444444'\n",
		    exact_qps, exact_qps, exact_qps, exact_qps);
	fprintf(f, "plot ");
	for (size_t b = 0; b < nref; b++) {
		char label[32];
		if (refs[b] == 0)
			snprintf(label, sizeof(label), "no refine");
		else
			snprintf(label, sizeof(label), "refine x%g", (double) refs[b]);
		fprintf(f, "%s", b ? ", \\\n     " : "");
		gp_quote(f, dat);
		fprintf(f,
		    " index %zu using 1:2 with linespoints lw 2 pt %d ps 0.9 lc rgb '%s' title '%s', \\\n    "
		    " ",
		    b, shapes[b % CDX_ARRAY_LEN(shapes)], colours[b % CDX_ARRAY_LEN(colours)], label);
		gp_quote(f, dat);
		fprintf(f,
		    " index %zu using 1:2:3 with labels offset char 0.8,0.6 font ',7' tc rgb '%s' notitle", b,
		    colours[b % CDX_ARRAY_LEN(colours)]);
	}
	fprintf(f, "\n");
	if (fclose(f) != 0) {
		f = NULL;
		rc = cdx_error_errno(CDX_EIO, "%s", gp);
		goto out;
	}
	f = NULL;

	pid_t pid;
	char *argv[] = { "gnuplot", gp, NULL };
	int err = posix_spawnp(&pid, "gnuplot", NULL, NULL, argv, environ);
	if (err != 0) {
		errno = err;
		rc = cdx_error_errno(
		    CDX_EIO, "cannot run gnuplot (install gnuplot-nox: tools/setup-deps.sh)");
		goto out;
	}
	int status;
	while (waitpid(pid, &status, 0) < 0)
		if (errno != EINTR) {
			rc = cdx_error_errno(CDX_EIO, "waiting for gnuplot");
			goto out;
		}
	if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
		rc = cdx_error(CDX_EIO, "gnuplot %s failed (status %d)", gp, status);
out:
	if (f != NULL)
		fclose(f);
	free(refs);
	free(gp);
	free(dat);
	return rc;
}
