/*
 * points_test.c — the rule that turns a request into search settings
 * (src/search/points.c): explicit nprobe, the ladder of operating points at
 * the request's k tier, escalation, the unmet flag, the tiers themselves.
 */
#include "testutil.h"

#include <math.h>
#include <string.h>

#include "search/points.h"

static struct cdx_manifest m;
static struct cdx_operating_point pts[] = {
	/* k = 10: a ladder of three rungs, listed out of order */
	{ .recall_target = 0.97,
	    .recall = 0.975,
	    .k = 10,
	    .nprobe = 16,
	    .refine_factor = 4,
	    .recall_se = 0.003 },
	{ .recall_target = 0.9,
	    .recall = 0.91,
	    .k = 10,
	    .nprobe = 4,
	    .refine_factor = 2,
	    .recall_se = 0.005 },
	{ .recall_target = 0.95,
	    .recall = 0.96,
	    .k = 10,
	    .nprobe = 8,
	    .refine_factor = 0,
	    .recall_se = 0.004 },
	/* k = 100: one rung */
	{ .recall_target = 0.95, .recall = 0.955, .k = 100, .nprobe = 32, .refine_factor = 2 },
};

static int
setup(void **state)
{
	(void) state;
	memset(&m, 0, sizeof(m));
	m.points = pts;
	m.npoints = 4;
	m.default_recall_target = 0.95;
	m.tuned_k[0] = 10;
	m.tuned_k[1] = 100;
	m.ntuned_k = 2;
	m.default_nprobe = 3;
	return 0;
}

static void
test_default_target_and_ladder(void **state)
{
	(void) state;
	struct cdx_point_choice c;
	cdx_points_choose(&m, 10, 0, 0, 0, 0, &c); /* nothing asked: the default 0.95 */
	assert_int_equal(c.nprobe, 8);
	assert_true(c.refine_factor < 1); /* a rung measured without re-ranking keeps none */
	assert_true(fabsf(c.recall_target - 0.95f) < 1e-6f);
	assert_int_equal(c.rung, 1);
	assert_int_equal(c.rungs, 3);
	assert_false(c.unmet);
	assert_int_equal(c.tier_k, 10);

	cdx_points_choose(&m, 7, 0, 0, 0.85f, 0, &c); /* k 7 is in the k 10 tier */
	assert_int_equal(c.nprobe, 4);
	assert_true(c.refine_factor == 2);
	assert_int_equal(c.tier_k, 10);

	/* escalation climbs, and stops at the top */
	cdx_points_choose(&m, 10, 0, 0, 0, 1, &c);
	assert_int_equal(c.nprobe, 16);
	cdx_points_choose(&m, 10, 0, 0, 0, 5, &c);
	assert_int_equal(c.nprobe, 16);
	assert_int_equal(c.rung, 2);
	assert_false(c.unmet);

	/* a request's refine factor wins over the rung's */
	cdx_points_choose(&m, 10, 0, 3, 0, 0, &c);
	assert_true(c.refine_factor == 3);
}

static void
test_unmet(void **state)
{
	(void) state;
	struct cdx_point_choice c;
	/* above every rung: the most accurate, flagged */
	cdx_points_choose(&m, 10, 0, 0, 0.99f, 0, &c);
	assert_int_equal(c.nprobe, 16);
	assert_true(c.unmet);
	/* a rung reaches by its measured recall's prediction bound as well:
	 * 0.975 - 1.645 x 1.414 x 0.003 = 0.968 >= 0.965 */
	cdx_points_choose(&m, 10, 0, 0, 0.965f, 0, &c);
	assert_int_equal(c.nprobe, 16);
	assert_false(c.unmet);
	/* k above every measured k: the largest k's ladder, flagged */
	cdx_points_choose(&m, 200, 0, 0, 0, 0, &c);
	assert_int_equal(c.nprobe, 32);
	assert_true(c.unmet);
	assert_int_equal(c.tier_k, 200);
	/* no points at all, and a target: flagged, default nprobe */
	struct cdx_manifest none = m;
	none.npoints = 0;
	none.ntuned_k = 0;
	cdx_points_choose(&none, 10, 0, 0, 0.9f, 0, &c);
	assert_true(c.unmet);
	assert_int_equal(c.nprobe, 0);
}

static void
test_explicit_nprobe_and_tiers(void **state)
{
	(void) state;
	struct cdx_point_choice c;
	cdx_points_choose(&m, 10, 5, 0, 0.99f, 0, &c); /* an explicit nprobe wins */
	assert_int_equal(c.nprobe, 5);
	assert_null(c.point);
	assert_false(c.unmet);
	assert_int_equal(c.tier_k, 10);
	assert_int_equal(cdx_points_tier(&m, 1), 10);
	assert_int_equal(cdx_points_tier(&m, 11), 100);
	assert_int_equal(cdx_points_tier(&m, 101), 101);
	/* without tuned_k: the points' k, else the default tiers */
	struct cdx_manifest legacy = m;
	legacy.ntuned_k = 0;
	assert_int_equal(cdx_points_tier(&legacy, 50), 100);
	legacy.npoints = 0;
	assert_int_equal(cdx_points_tier(&legacy, 50), 100);
	assert_int_equal(cdx_points_tier(&legacy, 300), 500);
	assert_int_equal(cdx_points_tier(&legacy, 900), 900);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_default_target_and_ladder),
		cmocka_unit_test(test_unmet),
		cmocka_unit_test(test_explicit_nprobe_and_tiers),
	};
	return cmocka_run_group_tests(tests, setup, NULL);
}
