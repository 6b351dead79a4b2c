/*
 * recommend_test.c — the pieces of the recommender features that need no
 * index: the compact id list, the exclusion set (bitmap and hash), the ATTRS part, the filter language
 * against a reference evaluator, the takedown file, and the exploration sampler's propensities checked
 * empirically over many seeded draws.
 */
#define _GNU_SOURCE
#include "testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/idlist.h"
#include "recommend/recommend.h"
#include "search/filter.h"
#include "search/select.h"
#include "shard/attrs.h"
#include "shard/takedown.h"

static void
test_idlist_roundtrip(void **state)
{
	(void) state;
	int64_t ids[] = { 5, -3, INT64_MAX, INT64_MIN, 0, 5, 1000000, -1, 42 };
	size_t n = CDX_ARRAY_LEN(ids);
	cdx_buf b = { 0 };
	assert_int_equal(cdx_idlist_encode(ids, n, &b), CDX_OK);
	int64_t *out = NULL;
	size_t got = 0;
	assert_int_equal(cdx_idlist_decode(b.data, b.len, 100, &out, &got), CDX_OK);
	assert_int_equal(got, n);
	for (size_t i = 1; i < got; i++)
		assert_true(out[i - 1] <= out[i]);
	assert_true(out[0] == INT64_MIN && out[n - 1] == INT64_MAX);
	free(out);
	/* the limit, a truncated varint, an overflow past INT64_MAX */
	assert_int_equal(cdx_idlist_decode(b.data, b.len, n - 1, &out, &got), CDX_ELIMIT);
	uint8_t trunc[] = { 0x02, 0x80 };
	assert_int_equal(cdx_idlist_decode(trunc, sizeof(trunc), 10, &out, &got), CDX_EPROTO);
	int64_t big[] = { INT64_MAX - 1 };
	cdx_buf o = { 0 };
	assert_int_equal(cdx_idlist_encode(big, 1, &o), CDX_OK);
	uint8_t step = 0x05; /* INT64_MAX - 1 + 5 overflows */
	cdx_buf_append(&o, &step, 1);
	assert_int_equal(cdx_idlist_decode(o.data, o.len, 10, &out, &got), CDX_EPROTO);
	/* 50,000 ids out of ten million: about two bytes an id */
	int64_t *many = malloc(50000 * sizeof(int64_t));
	for (size_t i = 0; i < 50000; i++)
		many[i] = (int64_t) (i * 200 + (i * 7919) % 150);
	cdx_buf m = { 0 };
	assert_int_equal(cdx_idlist_encode(many, 50000, &m), CDX_OK);
	assert_true(m.len < 50000 * 2 + 10);
	assert_int_equal(cdx_idlist_decode(m.data, m.len, 50000, &out, &got), CDX_OK);
	assert_int_equal(got, 50000);
	assert_memory_equal(out, many, 50000 * sizeof(int64_t));
	free(out);
	free(many);
	cdx_buf_fini(&b);
	cdx_buf_fini(&o);
	cdx_buf_fini(&m);
}

/* A small table: market set over {DK, NO, SE}, explicit bool, year int,
 * type enum {episode, track}, artist group. */
#define ROWS 300
struct ref_row {
	uint64_t market;
	int expl;
	int year;
	int type;
	int artist;
};
static struct ref_row ref[ROWS];

static struct cdx_attr_schema *
make_schema(void)
{
	static const char *markets[] = { "DK", "NO", "SE" }, *types[] = { "episode", "track" };
	struct cdx_attr_schema *s = calloc(1, sizeof(*s));
	const char *names[] = { "market", "explicit", "year", "type", "artist" };
	int typ[] = { CDX_ATTR_SET, CDX_ATTR_BOOL, CDX_ATTR_INT, CDX_ATTR_ENUM, CDX_ATTR_GROUP };
	s->ncols = 5;
	for (int c = 0; c < 5; c++) {
		snprintf(s->cols[c].name, sizeof(s->cols[c].name), "%s", names[c]);
		s->cols[c].type = typ[c];
	}
	s->cols[0].nvalues = 3;
	s->cols[0].values = calloc(3, sizeof(char *));
	for (int v = 0; v < 3; v++)
		s->cols[0].values[v] = strdup(markets[v]);
	s->cols[3].nvalues = 2;
	s->cols[3].values = calloc(2, sizeof(char *));
	for (int v = 0; v < 2; v++)
		s->cols[3].values[v] = strdup(types[v]);
	return s;
}

/* build_table encodes ref into an ATTRS part and decodes it. */
static void
build_table(struct cdx_attr_table *t)
{
	struct cdx_attr_schema *s = make_schema();
	cdx_rng rng;
	cdx_rng_seed(&rng, 7);
	uint64_t *market = malloc(ROWS * 8), *artist = malloc(ROWS * 8);
	uint8_t *expl = malloc(ROWS);
	int32_t *year = malloc(ROWS * 4);
	uint16_t *type = malloc(ROWS * 2);
	for (int r = 0; r < ROWS; r++) {
		ref[r] = (struct ref_row) { cdx_rng_next(&rng) & 7, (int) (cdx_rng_next(&rng) & 1),
			1990 + (int) (cdx_rng_next(&rng) % 35), (int) (cdx_rng_next(&rng) % 2),
			(int) (cdx_rng_next(&rng) % 20) };
		market[r] = ref[r].market;
		expl[r] = (uint8_t) ref[r].expl;
		year[r] = ref[r].year;
		type[r] = (uint16_t) ref[r].type;
		char g[32];
		snprintf(g, sizeof(g), "artist-%d", ref[r].artist);
		artist[r] = cdx_attr_group_hash(g, strlen(g));
	}
	const void *cols[] = { market, expl, year, type, artist };
	cdx_buf b = { 0 };
	assert_int_equal(cdx_attr_part_encode(s, ROWS, cols, &b), CDX_OK);
	assert_int_equal(cdx_attr_part_decode(b.data, b.len, ROWS, t), CDX_OK); /* takes b.data */
	assert_true(cdx_attr_schema_equal(t->schema, s));
	for (int r = 0; r < ROWS; r++) {
		assert_int_equal(cdx_attr_get(t, 0, r), (int64_t) ref[r].market);
		assert_int_equal(cdx_attr_get(t, 2, r), ref[r].year);
	}
	cdx_attr_schema_free(s);
	free(market);
	free(artist);
	free(expl);
	free(year);
	free(type);
}

/* check_idset: the set holds exactly ids[0..n) among probes, whichever
 * representation cdx_idset_init chose for their range. */
static void
check_idset(const int64_t *ids, size_t n, const int64_t *probes, size_t np, int want_bitmap)
{
	int64_t lo = INT64_MAX, hi = INT64_MIN;
	for (size_t i = 0; i < n; i++) {
		lo = CDX_MIN(lo, ids[i]);
		hi = CDX_MAX(hi, ids[i]);
	}
	struct cdx_idset s;
	assert_int_equal(cdx_idset_init(&s, n, lo, hi), CDX_OK);
	for (size_t i = 0; i < n; i++)
		cdx_idset_add(&s, ids[i]);
	assert_int_equal(s.bits != NULL, want_bitmap);
	for (size_t i = 0; i < np; i++) {
		int in = 0;
		for (size_t j = 0; j < n; j++)
			in |= ids[j] == probes[i];
		assert_int_equal(cdx_idset_has(&s, probes[i]), in);
	}
	cdx_idset_fini(&s);
}

static void
test_idset_bitmap_and_hash(void **state)
{
	(void) state;
	int64_t probes[] = { INT64_MIN, INT64_MIN + 1, -1000, -65, -64, -1, 0, 1, 63, 64, 65, 127, 128, 999,
		1000, 1001, 5000000, INT64_MAX - 1, INT64_MAX };
	/* dense ids (a listening history from one catalogue): a bitmap */
	int64_t dense[200];
	for (size_t i = 0; i < 200; i++)
		dense[i] = (int64_t) (i * 5) - 65;
	check_idset(dense, 200, probes, CDX_ARRAY_LEN(probes), 1);
	int64_t edge[] = { 63, 64, 127, 128, 0, 1 };
	check_idset(edge, CDX_ARRAY_LEN(edge), probes, CDX_ARRAY_LEN(probes), 1);
	/* sparse ids, the extremes and the hash table's free-slot marker */
	int64_t sparse[] = { INT64_MIN, INT64_MAX, -1, 1000, 5000000 };
	check_idset(sparse, CDX_ARRAY_LEN(sparse), probes, CDX_ARRAY_LEN(probes), 0);
	int64_t top[] = { INT64_MAX - 1, INT64_MAX };
	check_idset(top, 2, probes, CDX_ARRAY_LEN(probes), 1);
}

static void
test_attrs_part_rejects_corruption(void **state)
{
	(void) state;
	struct cdx_attr_schema *s = make_schema();
	uint64_t market[2] = { 1, 8 }, artist[2] = { 1, 2 }; /* bit 3: no fourth market */
	uint8_t expl[2] = { 0, 1 };
	int32_t year[2] = { 2000, 2001 };
	uint16_t type[2] = { 0, 1 };
	const void *cols[] = { market, expl, year, type, artist };
	cdx_buf b = { 0 };
	assert_int_equal(cdx_attr_part_encode(s, 2, cols, &b), CDX_OK);
	struct cdx_attr_table t;
	void *copy = malloc(b.len);
	memcpy(copy, b.data, b.len);
	assert_int_equal(cdx_attr_part_decode(copy, b.len, 2, &t), CDX_ECORRUPT);
	market[1] = 4;
	b.len = 0;
	assert_int_equal(cdx_attr_part_encode(s, 2, cols, &b), CDX_OK);
	copy = malloc(b.len);
	memcpy(copy, b.data, b.len - 3);
	assert_int_equal(cdx_attr_part_decode(copy, b.len - 3, 2, &t), CDX_ECORRUPT); /* truncated */
	copy = malloc(b.len);
	memcpy(copy, b.data, b.len);
	assert_int_equal(cdx_attr_part_decode(copy, b.len, 3, &t), CDX_ECORRUPT); /* wrong rows */
	copy = malloc(b.len);
	memcpy(copy, b.data, b.len);
	assert_int_equal(cdx_attr_part_decode(copy, b.len, 2, &t), CDX_OK);
	cdx_attr_table_fini(&t);
	cdx_buf_fini(&b);
	cdx_attr_schema_free(s);
}

static int
has(uint64_t set, int bit)
{
	return (int) ((set >> bit) & 1);
}

/* The reference: each expression and the same test written in C. */
static int
ref_match(int e, const struct ref_row *r)
{
	switch (e) {
	case 0: /* market has SE and explicit = false */
		return has(r->market, 2) && !r->expl;
	case 1: /* year >= 2010 or not type = track */
		return r->year >= 2010 || r->type != 1;
	case 2: /* market has any (DK, NO) and year in (1995, 2000, 2005) */
		return (has(r->market, 0) || has(r->market, 1))
		    && (r->year == 1995 || r->year == 2000 || r->year == 2005);
	case 3: /* market has all (DK, SE) */
		return has(r->market, 0) && has(r->market, 2);
	case 4: /* artist = "artist-3" OR artist in (artist-4, artist-5) */
		return r->artist >= 3 && r->artist <= 5;
	case 5: /* NOT (year < 2000 AND explicit = TRUE) and type != episode */
		return !(r->year < 2000 && r->expl) && r->type != 0;
	case 6: /* type = podcast: no item has it */
		return 0;
	case 7: /* type != podcast */
		return 1;
	case 8: /* market has ZZ or year > 2020 */
		return r->year > 2020;
	case 9: /* market has all (SE, ZZ) */
		return 0;
	default:
		return -1;
	}
}

static const char *const exprs[] = {
	"market has SE and explicit = false",
	"year >= 2010 or not type = track",
	"market has any (DK, NO) and year in (1995, 2000, 2005)",
	"market has all (DK, SE)",
	"artist = \"artist-3\" OR artist in (artist-4, artist-5)",
	"NOT (year < 2000 AND explicit = TRUE) and type != episode",
	"type = podcast",
	"type != podcast",
	"market has ZZ or year > 2020",
	"market has all (SE, ZZ)",
};

static void
test_filter_matches_reference(void **state)
{
	(void) state;
	struct cdx_attr_table t;
	build_table(&t);
	for (size_t e = 0; e < CDX_ARRAY_LEN(exprs); e++) {
		cdx_filter *f = NULL;
		int rc = cdx_filter_compile(&f, exprs[e], t.schema);
		if (rc != CDX_OK)
			fprintf(stderr, "%s: %s\n", exprs[e], cdx_last_error());
		assert_int_equal(rc, CDX_OK);
		int passed = 0;
		for (int r = 0; r < ROWS; r++) {
			int want = ref_match((int) e, &ref[r]);
			if (cdx_filter_match(f, &t, r) != want)
				fail_msg("expression %zu (%s), row %d: got %d, want %d", e, exprs[e], r,
				    !want, want);
			passed += want;
		}
		/* the table is not degenerate for the real tests */
		if (e < 6)
			assert_true(passed > 0 && passed < ROWS);
		cdx_filter_free(f);
	}
	cdx_attr_table_fini(&t);
}

static void
test_filter_errors(void **state)
{
	(void) state;
	struct cdx_attr_table t;
	build_table(&t);
	const struct {
		const char *expr, *says;
	} bad[] = {
		{ "", "empty filter" },
		{ "markt has SE", "unknown attribute 'markt'" },
		{ "year = abc", "year is an int" },
		{ "explicit = maybe", "compare it with true or false" },
		{ "market = SE", "test it with HAS" },
		{ "type > track", "only = and != compare it" },
		{ "explicit in (true)", "IN applies to int, enum and group" },
		{ "year has 5", "HAS applies to set attributes" },
		{ "year >= 2000 and", "expected an attribute name" },
		{ "(year >= 2000", "expected ')'" },
		{ "year ! 5", "'!' must be '!='" },
		{ "artist = \"x", "unterminated" },
		{ "year >= 2000 year", "unexpected 'year'" },
		{ "type in (track, episode", "expected ',' or ')'" },
	};
	for (size_t i = 0; i < CDX_ARRAY_LEN(bad); i++) {
		cdx_filter *f = NULL;
		assert_int_equal(cdx_filter_compile(&f, bad[i].expr, t.schema), CDX_EINVAL);
		assert_null(f);
		if (strstr(cdx_last_error(), bad[i].says) == NULL)
			fail_msg("'%s': message '%s' does not say '%s'", bad[i].expr, cdx_last_error(),
			    bad[i].says);
	}
	cdx_filter *f = NULL;
	assert_int_equal(cdx_filter_compile(&f, "year > 1", NULL), CDX_EINVAL);
	assert_non_null(strstr(cdx_last_error(), "without --attrs"));
	char *deep = malloc(300);
	memset(deep, '(', 200);
	strcpy(deep + 200, "year > 1");
	assert_int_equal(cdx_filter_compile(&f, deep, t.schema), CDX_EINVAL);
	free(deep);
	cdx_attr_table_fini(&t);
}

/* Over many seeded draws every pool item must land in every exploration
 * slot with the stated propensity: a binomial bound per cell (5 standard
 * deviations, so 60 cells fail together by chance less than once in 10^5
 * runs) and a chi-square test per slot. */
static void
check_propensities(size_t n, uint32_t x, uint32_t e, uint32_t pool, size_t draws)
{
	size_t avail = CDX_MIN(n - x, (size_t) pool);
	size_t *count = calloc(e * avail, sizeof(size_t));
	int64_t slot_of[16];
	double prop = 0;
	for (size_t d = 0; d < draws; d++) {
		prop = cdx_rec_explore(n, x, e, pool, cdx_rec_query_seed(1000 + d, 0), slot_of);
		for (uint32_t j = 0; j < e; j++) {
			if (j >= avail) {
				assert_int_equal(slot_of[j], -1);
				continue;
			}
			assert_true(slot_of[j] >= (int64_t) x && slot_of[j] < (int64_t) (x + avail));
			for (uint32_t i = 0; i < j; i++)
				assert_true(slot_of[i] != slot_of[j]); /* without replacement */
			count[j * avail + (size_t) (slot_of[j] - x)]++;
		}
	}
	assert_true(fabs(prop - 1.0 / (double) avail) < 1e-12);
	double p = prop, sd = sqrt(p * (1 - p) / (double) draws);
	for (uint32_t j = 0; j < e && j < avail; j++) {
		double chi2 = 0;
		for (size_t a = 0; a < avail; a++) {
			double f = (double) count[j * avail + a] / (double) draws;
			if (fabs(f - p) > 5 * sd)
				fail_msg(
				    "slot %u, pool item %zu: frequency %.5f, propensity %.5f (5 sd = %.5f)",
				    j, a, f, p, 5 * sd);
			double expct = p * (double) draws, dlt = (double) count[j * avail + a] - expct;
			chi2 += dlt * dlt / expct;
		}
		/* dof = avail - 1; mean dof, sd sqrt(2 dof): 6 sd above is p < 1e-6 */
		double dof = (double) avail - 1;
		if (chi2 > dof + 6 * sqrt(2 * dof))
			fail_msg("slot %u: chi-square %.1f with %.0f degrees of freedom", j, chi2, dof);
	}
	free(count);
}

static void
test_explore_propensities(void **state)
{
	(void) state;
	check_propensities(50, 7, 3, 20, 200000); /* a full pool of 20 */
	check_propensities(12, 7, 3, 20, 100000); /* only 5 ranks beyond the exploit slots */
	check_propensities(10, 7, 5, 20, 50000);  /* fewer pool items than slots */
	/* the same seed draws the same slots; another seed other slots */
	int64_t a[4], b[4], c[4];
	cdx_rec_explore(100, 10, 4, 60, 99, a);
	cdx_rec_explore(100, 10, 4, 60, 99, b);
	cdx_rec_explore(100, 10, 4, 60, 100, c);
	assert_memory_equal(a, b, sizeof(a));
	assert_memory_not_equal(a, c, sizeof(a));
	assert_true(cdx_rec_query_seed(5, 0) != cdx_rec_query_seed(5, 1));
}

static void
test_takedown_file(void **state)
{
	(void) state;
	char *dir = tu_tmpdir("takedown");
	struct cdx_takedowns t;
	assert_int_equal(cdx_takedowns_load(dir, &t), CDX_OK); /* no file: empty */
	assert_int_equal(t.nids + t.nkeys, 0);
	int64_t add[] = { 9, -4, 9, 100 };
	const char *keys[] = { "spotify:track:b", "spotify:track:a" };
	struct cdx_takedown_change ch = { .add_ids = add, .n_add_ids = 4, .add_keys = keys, .n_add_keys = 2 };
	assert_int_equal(cdx_takedowns_update(dir, &ch, &t, NULL), CDX_OK);
	assert_int_equal(t.nids, 3);
	assert_true(t.ids[0] == -4 && t.ids[1] == 9 && t.ids[2] == 100);
	assert_int_equal(t.nkeys, 2);
	assert_string_equal(t.keys[0], "spotify:track:a");
	cdx_takedowns_fini(&t);
	int64_t rm[] = { 9 };
	const char *rmk[] = { "spotify:track:b" };
	struct cdx_takedown_change ch2
	    = { .remove_ids = rm, .n_remove_ids = 1, .remove_keys = rmk, .n_remove_keys = 1 };
	assert_int_equal(cdx_takedowns_update(dir, &ch2, NULL, NULL), CDX_OK);
	assert_int_equal(cdx_takedowns_load(dir, &t), CDX_OK);
	assert_int_equal(t.nids, 2);
	assert_true(cdx_takedowns_has_id(&t, -4) && !cdx_takedowns_has_id(&t, 9));
	assert_true(
	    cdx_takedowns_has_key(&t, "spotify:track:a") && !cdx_takedowns_has_key(&t, "spotify:track:b"));
	cdx_takedowns_fini(&t);
	/* keys that cannot be stored are refused; a hand-broken file is named */
	const char *badkey[] = { "a\tb" };
	struct cdx_takedown_change ch3 = { .add_keys = badkey, .n_add_keys = 1 };
	assert_int_equal(cdx_takedowns_update(dir, &ch3, NULL, NULL), CDX_EINVAL);
	char *path = tu_path(dir, CDX_TAKEDOWN_FILE);
	FILE *f = fopen(path, "a");
	fputs("ids\t12\n", f);
	fclose(f);
	assert_int_equal(cdx_takedowns_load(dir, &t), CDX_ECORRUPT);
	assert_non_null(strstr(cdx_last_error(), "line 5"));
	free(path);
	tu_rmdir(dir);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_idlist_roundtrip),
		cmocka_unit_test(test_idset_bitmap_and_hash),
		cmocka_unit_test(test_attrs_part_rejects_corruption),
		cmocka_unit_test(test_filter_matches_reference),
		cmocka_unit_test(test_filter_errors),
		cmocka_unit_test(test_explore_propensities),
		cmocka_unit_test(test_takedown_file),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
