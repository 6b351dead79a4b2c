/*
 * ope.h — off-policy evaluation from the impression log (`candex ope`): the
 * value a new policy would have had, estimated from what the logged policy
 * showed, the propensities it showed it with, and the rewards observed.
 *
 * DESIGN
 * The unit is an impression (one query of one request: request_id, query)
 * and its slots. A policy's value is the expected total reward of an
 * impression, summed over its slots. The estimators are the item-position
 * ones: the logging policy put item a in slot j with propensity mu (logged),
 * the new policy would have with probability pi (the targets file), so each
 * logged (impression i, slot j) gets the weight w = pi / mu and
 *
 *   IPS    V = (1/N) sum_i sum_j w_ij r_ij, unbiased when mu > 0 wherever
 *          pi > 0 (every item the new policy might show in a slot, the old
 *          one showed there with a known, non-zero probability);
 *   SNIPS  V = sum_j (sum_i w_ij r_ij) / (sum_i w_ij), each slot normalised
 *          by its weights: a little bias, much less variance.
 *
 * Confidence intervals are normal: IPS from the standard error of the
 * per-impression sums, SNIPS by the delta method (the same, over each
 * impression's influence sum_j w_ij (r_ij - V_j) / mean_i w_ij). Both
 * assume impressions are independent.
 *
 * Inputs (tab-separated, no header, '#' lines ignored):
 *   rewards  request_id  query  slot  reward        (missing: reward 0)
 *   targets  request_id  query  slot  probability   (missing: probability 0)
 */
#ifndef CANDEX_OPE_H
#define CANDEX_OPE_H

#include <stdint.h>
#include <stdio.h>

struct cdx_ope_options {
	const char *log;     /* an impression log file or directory */
	const char *rewards; /* rewards TSV */
	const char *targets; /* the new policy's probabilities TSV */
	double confidence;   /* of the intervals; 0 = 0.95 */
};

struct cdx_ope_estimate {
	double value, se, lo, hi;
};

struct cdx_ope_result {
	uint64_t impressions;       /* distinct (request_id, query) in the log */
	uint64_t slots;             /* logged (impression, slot) pairs */
	uint64_t duplicates;        /* impressions logged more than once (the first is used) */
	uint64_t truncated;         /* log files that ended in a partial record */
	uint64_t rewards_unmatched; /* reward lines with no logged slot */
	uint64_t targets_unmatched; /* target lines with no logged slot */
	double confidence;
	struct cdx_ope_estimate logged; /* the logging policy's own value (mean reward sum) */
	struct cdx_ope_estimate ips, snips;
	double mean_weight; /* of w over logged slots: near 1 when pi has the same support */
	double ess;         /* effective sample size (sum w)^2 / sum w^2, over slots */
};

/* cdx_ope_run reads the inputs and estimates. Errors name the file and line. */
int cdx_ope_run(const struct cdx_ope_options *o, struct cdx_ope_result *r);

/* cdx_ope_dump writes the log as TSV lines (request_id, query, slot,
 * collection, id, key, score, rank, explore, propensity, index_version):
 * what a team computes its new policy's probabilities from. */
int cdx_ope_dump(const char *log, FILE *out);

/* cdx_ope_z is the two-sided normal quantile of confidence (0.95: 1.96). */
double cdx_ope_z(double confidence);

#endif
