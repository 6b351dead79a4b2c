/*
 * cmd_ope.c — `candex ope`: off-policy evaluation of a new policy from the
 * impression log, observed rewards and the new policy's probabilities
 * (src/recommend/ope.h); `--dump` prints the log as TSV.
 */
#define _GNU_SOURCE
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "cli.h"
#include "common/common.h"
#include "recommend/ope.h"

static const char usage_text[]
    = "usage: candex ope --log DIR|FILE --rewards FILE --targets FILE [--confidence C] [--json]\n"
      "       candex ope --log DIR|FILE --dump\n"
      "\n"
      "Estimates the value a new policy would have had (the expected total reward of an\n"
      "impression, over its slots) from a server's impression log (candex serve\n"
      "--impression-log DIR), with inverse propensity scoring (IPS) and self-normalised\n"
      "IPS (SNIPS), and normal confidence intervals. docs/recommenders.md has the formats.\n"
      "\n"
      "  --log DIR|FILE     the impression log (every *.implog file of DIR, in name order)\n"
      "  --rewards FILE     request_id<TAB>query<TAB>slot<TAB>reward lines (missing: 0)\n"
      "  --targets FILE     request_id<TAB>query<TAB>slot<TAB>probability lines: how likely the\n"
      "                     new policy shows the logged item in that slot (missing: 0)\n"
      "  --confidence C     of the intervals [0.95]\n"
      "  --json             one JSON document on stdout\n"
      "  --dump             print the log as TSV: request_id query slot collection id key score\n"
      "                     rank explore propensity index_version\n"
      "\n"
      "Exit status: 0 done, 1 bad input or I/O error, 2 usage.\n";

static json_t *
estimate_json(const struct cdx_ope_estimate *e)
{
	return json_pack("{s:f, s:f, s:f, s:f}", "value", e->value, "se", e->se, "lo", e->lo, "hi", e->hi);
}

int
cmd_ope(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "log", required_argument, NULL, 'l' },
		{ "rewards", required_argument, NULL, 'r' },
		{ "targets", required_argument, NULL, 't' },
		{ "confidence", required_argument, NULL, 'c' },
		{ "json", no_argument, NULL, 'j' },
		{ "dump", no_argument, NULL, 'd' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	struct cdx_ope_options o = { 0 };
	int json = 0, dump = 0, c;
	optind = 1;
	while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
		switch (c) {
		case 'l':
			o.log = optarg;
			break;
		case 'r':
			o.rewards = optarg;
			break;
		case 't':
			o.targets = optarg;
			break;
		case 'c': {
			char *end;
			o.confidence = strtod(optarg, &end);
			if (*end != '\0' || !(o.confidence > 0 && o.confidence < 1)) {
				fprintf(
				    stderr, "candex ope: --confidence %s: want a number in (0, 1)\n", optarg);
				return CLI_EXIT_USAGE;
			}
			break;
		}
		case 'j':
			json = 1;
			break;
		case 'd':
			dump = 1;
			break;
		case 'h':
			fputs(usage_text, stdout);
			return CLI_EXIT_OK;
		default:
			fputs(usage_text, stderr);
			return CLI_EXIT_USAGE;
		}
	}
	if (optind < argc || o.log == NULL || (!dump && (o.rewards == NULL || o.targets == NULL))) {
		fputs(usage_text, stderr);
		return CLI_EXIT_USAGE;
	}
	if (dump) {
		if (cdx_ope_dump(o.log, stdout) != CDX_OK) {
			fprintf(stderr, "candex ope: %s\n", cdx_last_error());
			return CLI_EXIT_FAIL;
		}
		return CLI_EXIT_OK;
	}
	struct cdx_ope_result r;
	if (cdx_ope_run(&o, &r) != CDX_OK) {
		fprintf(stderr, "candex ope: %s\n", cdx_last_error());
		return CLI_EXIT_FAIL;
	}
	if (json) {
		json_t *root = json_pack("{s:I, s:I, s:I, s:I, s:I, s:I, s:f, s:f, s:f}", "impressions",
		    (json_int_t) r.impressions, "slots", (json_int_t) r.slots, "duplicates",
		    (json_int_t) r.duplicates, "truncated_files", (json_int_t) r.truncated,
		    "rewards_unmatched", (json_int_t) r.rewards_unmatched, "targets_unmatched",
		    (json_int_t) r.targets_unmatched, "confidence", r.confidence, "mean_weight",
		    r.mean_weight, "ess", r.ess);
		json_object_set_new(root, "logged", estimate_json(&r.logged));
		json_object_set_new(root, "ips", estimate_json(&r.ips));
		json_object_set_new(root, "snips", estimate_json(&r.snips));
		char *text = json_dumps(root, JSON_INDENT(2) | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(10));
		json_decref(root);
		if (text == NULL)
			return CLI_EXIT_FAIL;
		puts(text);
		free(text);
		return CLI_EXIT_OK;
	}
	int pct = (int) (r.confidence * 100 + 0.5);
	printf("impressions %llu, slots %llu (duplicates %llu, truncated files %llu, unmatched rewards %llu, "
	       "unmatched targets %llu)\n",
	    (unsigned long long) r.impressions, (unsigned long long) r.slots,
	    (unsigned long long) r.duplicates, (unsigned long long) r.truncated,
	    (unsigned long long) r.rewards_unmatched, (unsigned long long) r.targets_unmatched);
	printf("%-16s %12s %12s   %d%% interval\n", "estimator", "value", "std error", pct);
	const struct {
		const char *name;
		const struct cdx_ope_estimate *e;
	} rows[] = { { "logged policy", &r.logged }, { "IPS", &r.ips }, { "SNIPS", &r.snips } };
	for (size_t i = 0; i < CDX_ARRAY_LEN(rows); i++)
		printf("%-16s %12.6f %12.6f   [%.6f, %.6f]\n", rows[i].name, rows[i].e->value, rows[i].e->se,
		    rows[i].e->lo, rows[i].e->hi);
	printf("mean weight pi/mu %.4f (about 1 when the new policy shows only what the old one could), "
	       "effective sample size %.0f of %llu slots\n",
	    r.mean_weight, r.ess, (unsigned long long) r.slots);
	return CLI_EXIT_OK;
}
