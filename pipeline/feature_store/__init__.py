"""One Zarr v3 store per teacher: its token features for every data set, written chunk by chunk, resumable.

Layout (one group per data set; every array has zarr v3 dimension names, so xarray sees named dims):

    data/features/<teacher>.zarr/             root attrs["manifest"]: schemas.manifest.FeatureStoreManifest
      <data set>/                             attrs: token_rate, sampling_rate
        features     (segment, token, feature)  float16|float32, NaN beyond n_tokens,
                                                chunks (chunk_segments, max_tokens, feature_dim)
        n_tokens     (segment,)        int32    valid tokens of each segment
        segment_id   (segment,)        <U..     the series store's segment ids, in its order
        token_start  (token,)          float64  seconds; token i covers [i, i + 1) / token_rate
        token_end    (token,)          float64
        chunk_done   (chunk,)          bool     completion record, one flag per segment chunk
        stat_count   (chunk,)          int64    valid tokens in the chunk
        stat_mean    (chunk, feature)  float64  their per-feature mean
        stat_m2      (chunk, feature)  float64  their per-feature sum of squared deviations from it

Why it looks like this:
- Writing, resuming and loading all go by whole segment chunks. A chunk's flag is written only after its
  features and its statistics, and zarr replaces each file atomically, so a killed run leaves at worst a
  chunk whose features are written but whose flag is not; it is written again on resume, with the same
  bytes. A finished store therefore equals an uninterrupted run's.
- The statistics the distillation loss standardises with are kept per chunk and merged at the end (Chan et
  al.), so they need no second pass over the features and survive a resume unchanged.
- A store lives at a local path or any fsspec URL (s3://bucket/features/x.zarr, memory://, file://); see
  data_catalog.storage. Every write replaces one whole file or object, atomically on local disks (zarr's
  LocalStore renames a temporary file) and on object stores (a PUT), which is what resuming relies on.
- Only one process may write a store. On a local filesystem it holds a non-blocking flock on the store
  directory itself (a lock file inside would make zarr and xarray warn about an unknown object; one beside
  it would litter data/features/). Object stores have no locks, and a lock object would outlive a killed
  run and block its resume, so there the single writer is the user's responsibility (one extraction per
  store, e.g. one DVC stage or one cluster job); create_or_open logs a warning saying so. Readers take no lock.
- Zarr extensions used knowingly: fixed-length UTF-32 segment ids, numcodecs BitRound/Quantize filters and
  consolidated metadata. zarr warns that each is outside the v3 spec; we silence those warnings around our
  own calls, and other zarr implementations may not read lossy stores.

The package, by job (imports run one way: store -> manifest, layout, chunks; inspection -> store):
  manifest.py    opening safely: location, manifest validation, trusted dtypes/codecs, the writer's lock
  layout.py      a data set group's arrays and codecs, and checking a layout request
  chunks.py      one chunk padded, checked and summarised; merging the summaries (merge_moments)
  store.py       the FeatureStore class, which uses the three above
  inspection.py  describe_store and plot_store (`step-pipeline inspect`)
"""

from pipeline.feature_store.chunks import merge_moments
from pipeline.feature_store.inspection import describe_store, plot_store
from pipeline.feature_store.manifest import StoreLockedError, StoreMismatchError, store_location
from pipeline.feature_store.store import FeatureStore
from schemas.manifest import config_hash

__all__ = [
    "FeatureStore",
    "store_location",
    "StoreLockedError",
    "StoreMismatchError",
    "config_hash",
    "describe_store",
    "merge_moments",
    "plot_store",
]
