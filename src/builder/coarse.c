/*
 * coarse.c — training the coarse quantizer of a cosine collection, shared by
 * the train step and the self-tuning build.
 */
#include <faiss/c_api/Clustering_c.h>
#include <faiss/c_api/IndexIVF_c.h>

#include "builder/build.h"
#include "faissx/error.h"

/* cdx_build_train_spherical trains an IVF index's coarse quantizer with
 * spherical k-means (unit centroids), as Faiss does by itself for inner
 * product; Faiss's train() then sees a trained quantizer and only trains the
 * codes. Cosine indexes are L2 over unit vectors (train.c, faiss_metric): plain
 * k-means there leaves centroids inside the sphere and probes worse lists
 * (glove100, nprobe 64, refine x16: 10-recall@10 0.940 against 0.954 with
 * spherical centroids). Not an IVF index (small collections): nothing to do. */
int
cdx_build_train_spherical(
    FaissIndex *index, uint64_t n, const float *x, int niter, int max_points_per_centroid)
{
	FaissIndexIVF *ivf = faiss_IndexIVF_cast(index);
	if (ivf == NULL)
		return CDX_OK;
	FaissClusteringParameters cp;
	faiss_ClusteringParameters_init(&cp); /* IndexIVF's defaults, seed 1234 */
	cp.spherical = 1;
	if (niter > 0)
		cp.niter = niter;
	if (max_points_per_centroid > 0)
		cp.max_points_per_centroid = max_points_per_centroid;
	FaissClustering *clus = NULL;
	int frc = faiss_Clustering_new_with_params(
	    &clus, faiss_Index_d(index), (int) faiss_IndexIVF_nlist(ivf), &cp);
	if (frc == 0)
		frc = faiss_Clustering_train(clus, (idx_t) n, x, faiss_IndexIVF_quantizer(ivf));
	faiss_Clustering_free(clus);
	return frc == 0 ? CDX_OK : cdx_error_faiss("spherical k-means of the coarse quantizer");
}
