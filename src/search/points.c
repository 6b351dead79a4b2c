/*
 * points.c — choosing a request's search settings from the manifest's
 * operating points (see points.h for the rule).
 */
#include <string.h>

#include "search/points.h"

int
cdx_points_reach(const struct cdx_operating_point *p, double target)
{
	if (p->recall_target + 1e-9 >= target)
		return 1;
	return p->recall_se > 0 && cdx_points_lower_bound(p->recall, p->recall_se) + 1e-9 >= target;
}

/* measured_tier: the smallest k some point was measured at that is >= k,
 * else the largest measured k (*above set), 0 when there are no points. */
static uint32_t
measured_tier(const struct cdx_manifest *m, uint32_t k, int *above)
{
	uint32_t best = 0, largest = 0;
	for (uint32_t i = 0; i < m->npoints; i++) {
		uint32_t pk = m->points[i].k;
		if (pk >= k && (best == 0 || pk < best))
			best = pk;
		if (pk > largest)
			largest = pk;
	}
	*above = best == 0 && largest > 0;
	return best ? best : largest;
}

uint32_t
cdx_points_tier(const struct cdx_manifest *m, uint32_t k)
{
	if (m->ntuned_k > 0) {
		for (uint32_t i = 0; i < m->ntuned_k; i++)
			if (m->tuned_k[i] >= k)
				return m->tuned_k[i];
		return k;
	}
	if (m->npoints > 0) {
		int above;
		uint32_t t = measured_tier(m, k, &above);
		return above ? k : t;
	}
	static const uint32_t tiers[] = CDX_POINTS_DEFAULT_TIERS;
	for (size_t i = 0; i < CDX_ARRAY_LEN(tiers); i++)
		if (tiers[i] >= k)
			return tiers[i];
	return k;
}

/* ladder_before: rung order at one k, by measured recall, then target. */
static int
ladder_before(const struct cdx_operating_point *a, const struct cdx_operating_point *b)
{
	if (a->recall != b->recall)
		return a->recall < b->recall;
	return a->recall_target < b->recall_target;
}

void
cdx_points_choose(const struct cdx_manifest *m, uint32_t k, uint32_t nprobe, float refine_factor,
    float recall_target, uint32_t escalate, struct cdx_point_choice *out)
{
	memset(out, 0, sizeof(*out));
	out->nprobe = nprobe;
	out->refine_factor = refine_factor;
	out->tier_k = cdx_points_tier(m, k);
	if (nprobe > 0)
		return;
	float want = recall_target > 0 ? recall_target : (float) m->default_recall_target;
	out->recall_target = want;
	if (want <= 0)
		return;
	int above;
	uint32_t tier = measured_tier(m, k, &above);
	if (tier == 0) {
		out->unmet = 1; /* a target, and nothing measured to meet it with */
		return;
	}
	/* the rungs at this tier, in ladder order (a handful: insertion sort) */
	const struct cdx_operating_point *rung[64];
	uint32_t n = 0;
	for (uint32_t i = 0; i < m->npoints && n < CDX_ARRAY_LEN(rung); i++) {
		const struct cdx_operating_point *p = &m->points[i];
		if (p->k != tier)
			continue;
		uint32_t j = n++;
		while (j > 0 && ladder_before(p, rung[j - 1])) {
			rung[j] = rung[j - 1];
			j--;
		}
		rung[j] = p;
	}
	uint32_t first = n - 1;
	int reached = 0;
	for (uint32_t i = 0; i < n; i++) {
		if (cdx_points_reach(rung[i], want)) {
			first = i;
			reached = 1;
			break;
		}
	}
	uint32_t use = first + escalate < n ? first + escalate : n - 1;
	const struct cdx_operating_point *p = rung[use];
	out->point = p;
	out->rung = use;
	out->rungs = n;
	out->unmet = !reached || above;
	out->tier_k = tier > k ? tier : k;
	out->nprobe = p->nprobe;
	if (refine_factor == 0) /* a rung measured without re-ranking keeps none (< 1) */
		out->refine_factor = p->refine_factor >= 1 ? p->refine_factor : 0.5f;
}
