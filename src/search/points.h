/*
 * points.h — which search settings a request gets. One rule, used by the
 * server and by in-process searches alike (cdx_collection_search calls it):
 *
 *   - a request that names nprobe gets it (and its refine factor, else the
 *     manifest's default factor);
 *   - otherwise it wants a recall: its own recall_target, else the
 *     manifest's default_recall_target. The operating points measured at
 *     the request's k tier (the smallest measured k >= the request's k) are
 *     a ladder ordered by recall; the request gets the first rung that
 *     reaches the target, moved `escalate` rungs up (online adaptation,
 *     bounded by the top). No rung reaching it: the top rung, and the choice
 *     is flagged unmet. A k above every measured k is served at the largest
 *     measured k's ladder and flagged unmet too: nothing measured says what
 *     recall it gets.
 *   - no target and no points (older builds): default_nprobe.
 *
 * The k tier also fixes how many candidates are re-ranked: factor x tier k,
 * not factor x k, so that every k of one tier re-ranks the same candidates
 * and the top j of a request for k >= j equals the answer to a request for j
 * (docs/design.md, "The same answer at every k").
 */
#ifndef CANDEX_POINTS_H
#define CANDEX_POINTS_H

#include <stdint.h>

#include "shard/manifest.h"

/* Tiers of a collection without tuned_k (older builds): the tuner's default. */
#define CDX_POINTS_DEFAULT_TIERS \
	{                        \
		10, 100, 500     \
	}

struct cdx_point_choice {
	uint32_t nprobe;                         /* 0: the manifest's default_nprobe */
	float refine_factor;                     /* 0: the manifest's default factor */
	uint32_t tier_k;                         /* candidates are refine_factor x max(k, tier_k) */
	const struct cdx_operating_point *point; /* the rung used (points into m), or NULL */
	float recall_target;                     /* the target wanted (request or default), 0 = none */
	uint32_t rung, rungs;                    /* the rung used, of how many at tier_k */
	int unmet;                               /* a target was wanted and no measured rung reaches it */
};

/* cdx_points_choose fills out for a request of k with the given nprobe,
 * refine_factor and recall_target (0 = unset each), escalate rungs above
 * the first that reaches the target. */
void cdx_points_choose(const struct cdx_manifest *m, uint32_t k, uint32_t nprobe, float refine_factor,
    float recall_target, uint32_t escalate, struct cdx_point_choice *out);

/* cdx_points_tier returns the k tier of a request for k: the smallest
 * measured k >= k (tuned_k, else the points' k, else the default tiers),
 * or k itself above them all. */
uint32_t cdx_points_tier(const struct cdx_manifest *m, uint32_t k);

/* cdx_points_lower_bound: the recall that queries not used to measure
 * recall (with standard error se over its queries) will see, with 95%
 * confidence, over a sample as large: a one-sided prediction bound,
 * recall - 1.645 x sqrt(2) x se. The sqrt(2) is what separates it from a
 * confidence bound on the mean: the unseen sample has its own error. */
static inline double
cdx_points_lower_bound(double recall, double se)
{
	return recall - 1.645 * 1.41421356 * se;
}

/* cdx_points_reach: whether a rung reaches target: its target is at least
 * target, or its measured recall's lower bound is (when recall_se is known). */
int cdx_points_reach(const struct cdx_operating_point *p, double target);

#endif
