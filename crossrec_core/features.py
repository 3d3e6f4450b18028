"""Read a features/ds=DS partition into a :class:`~crossrec_core.data.FeatureSet` (no Spark).

The trainer, evaluator and scorer call :func:`load_features`; the partition is written
by the ``featurize`` stage (crossrec_core.etl.featurize).
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import scipy.sparse as sp

from crossrec_core.contracts import FEATURE_INTERACTIONS, ITEM_KEYS, USER_KEYS, ContractError, Segment, Split
from crossrec_core.data import FeatureSet
from crossrec_core.lake import Lake

MANIFEST = "_manifest.json"  # featurize writes it beside the sub-tables: window and days read


def _ids_by_key(ids: pa.ChunkedArray, keys: pa.ChunkedArray, what: str) -> np.ndarray:
    """``result[key] = id``; the keys must be exactly 0..n-1 (they index matrix rows)."""
    key_array = keys.to_numpy()
    n = len(key_array)
    if n and (key_array.min() < 0 or key_array.max() >= n or np.bincount(key_array, minlength=n).max() > 1):
        raise ContractError(f"{what}: keys are not a permutation of 0..{n - 1}")
    result = np.empty(n, dtype=object)
    result[key_array] = ids.to_numpy(zero_copy_only=False)
    return result


def _matrix(rows: pa.Table, n_users: int, n_items: int) -> sp.csr_matrix:
    return sp.csr_matrix(
        (rows["weight"].to_numpy(), (rows["user_key"].to_numpy(), rows["item_key"].to_numpy())),
        shape=(n_users, n_items),
    )


def load_features(lake: Lake, ds: str, source: str, target: str) -> FeatureSet:
    """The FeatureSet of features/ds=DS: train CSR per domain, target holdout per segment."""
    users = lake.read_parquet_partition(USER_KEYS, ds=ds)
    items = lake.read_parquet_partition(ITEM_KEYS, ds=ds)
    interactions = lake.read_parquet_partition(FEATURE_INTERACTIONS, ds=ds)
    known = set(items["domain"].unique().to_pylist()) | set(interactions["domain"].unique().to_pylist())
    if not {source, target} <= known:
        raise ContractError(f"features ds={ds} hold domains {sorted(known)}, not both {source!r} and {target!r}")

    user_ids = _ids_by_key(users["user_id"], users["user_key"], f"features ds={ds} user_keys")
    item_ids = {}
    for domain in (source, target):
        domain_items = items.filter(pc.equal(items["domain"], domain))
        item_ids[domain] = _ids_by_key(domain_items["item_id"], domain_items["item_key"], f"features ds={ds} item_keys[{domain}]")

    def rows(domain: str, split: Split) -> sp.csr_matrix:
        selected = interactions.filter(pc.and_(pc.equal(interactions["domain"], domain), pc.equal(interactions["split"], split.value)))
        return _matrix(selected, len(user_ids), len(item_ids[domain]))

    manifest = lake.partition_path(USER_KEYS, ds=ds).parent / MANIFEST
    window = tuple(json.loads(manifest.read_text())["window"]) if manifest.is_file() else None
    return FeatureSet(
        source=source,
        target=target,
        user_ids=user_ids,
        item_ids=item_ids,
        train={domain: rows(domain, Split.TRAIN) for domain in (source, target)},
        holdout={Segment.WARM: rows(target, Split.VALID_WARM), Segment.COLD_START: rows(target, Split.VALID_COLD)},
        ds=ds,
        window=window,
    )
