"""Model files: ``<lake>/models/ds=DS/model=ID/`` holds ``model.pt`` and ``model_card.json``.

``model.pt`` is a state_dict (tensors only), read back with
``torch.load(..., weights_only=True)``; the card (JSON) says how to rebuild the model
(name, config) and what it is (data window, sizes, validation metrics, the candidates'
scores under ``auto``, code version, creation time).

Model versions are content-addressed: ID is a digest of the model's name, settings and
weights, and the version string, what the recommendations table records, is the
directory relative to the lake root, ``models/ds=DS/model=ID``. So a rerun of a night
that trains the same model (CPU training is bit-repeatable) rewrites the same directory
and serves identical rows, while a rerun that trains a different model (other data or
settings) writes a new directory and never touches the one that serves: a served row
always links to the weights and card that produced it. ``models/ds=DS/candidate.json``
names the model trained last for DS, the one that evaluate, score and publish act on.

A model directory is written aside and swapped into place as one unit
(``Lake.replace_partition``), and the candidate pointer is replaced atomically after it,
so a reader sees the previous model or the new one, never a mix.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import subprocess
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from crossrec_core.config import ModelSettings
from crossrec_core.contracts import MODELS_ROOT, Column, ColumnType, Table, TableFormat
from crossrec_core.lake import Lake, LakeError, MissingPartitionError, write_atomically

if TYPE_CHECKING:  # torch only where weights are read or written: evaluate and publish read cards alone
    import torch

    from crossrec_core.data import FeatureSet
    from crossrec_core.models.base import Recommender

log = logging.getLogger(__name__)

MODEL_FILE = "model.pt"
CARD_FILE = "model_card.json"
CANDIDATE_FILE = "candidate.json"
_VERSION_PATTERN = re.compile(rf"^{MODELS_ROOT}/ds=(?P<ds>[^/]+)/model=(?P<model>[0-9a-f]+)$")

# Not data tables: declared only so that model directories get the lake's partition
# path checks and atomic directory swap. A night holds its models and candidate pointer.
_DS = Column("ds", ColumnType.STRING)
MODEL_NIGHTS = Table(name="model_nights", path=MODELS_ROOT, format=TableFormat.PARQUET, partition_by=(_DS,), columns=())
MODEL_FILES = Table(
    name="models", path=MODELS_ROOT, format=TableFormat.PARQUET, partition_by=(_DS, Column("model", ColumnType.STRING)), columns=()
)


class ModelFileError(LakeError):
    """A model file or card is missing, corrupt, truncated or does not fit; names the file
    (a LakeError: a job exits 2, not retried, crossrec_core.jobs)."""


def model_id(model: Recommender) -> str:
    """12 hex digits identifying the model's name, settings and weights."""
    import torch

    digest = hashlib.blake2b(digest_size=6)
    digest.update(json.dumps([model.name, model.settings.model_dump(mode="json")], sort_keys=True).encode())
    for name, tensor in sorted(model.state_dict().items()):
        tensor = tensor.detach().cpu()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def model_version(ds: str, model: str) -> str:
    """The version string of model ``model`` (an id, :func:`model_id`) of night ``ds``."""
    return f"{MODELS_ROOT}/ds={ds}/model={model}"


def model_dir(lake: Lake, version: str) -> Path:
    match = _VERSION_PATTERN.match(version)
    if not match:
        raise ModelFileError(f"model version {version!r} is not of the form {MODELS_ROOT}/ds=YYYY-MM-DD/model=ID")
    return lake.partition_path(MODEL_FILES, ds=match["ds"], model=match["model"])


def candidate_version(lake: Lake, ds: str) -> str:
    """The version of the model trained last for ``ds`` (what evaluate, score and publish use)."""
    path = lake.partition_path(MODEL_NIGHTS, ds=ds) / CANDIDATE_FILE
    try:
        version = json.loads(path.read_text())["model_version"]
    except FileNotFoundError:
        raise MissingPartitionError(f"no model trained for ds={ds}: {path} does not exist (run the train stage)") from None
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as err:
        raise ModelFileError(f"candidate pointer {path} is damaged ({type(err).__name__}: {err}): re-run the train stage") from err
    model_dir(lake, version)  # a well-formed version
    return version


def _write_candidate(lake: Lake, ds: str, version: str) -> None:
    pointer = json.dumps({"model_version": version})
    write_atomically(lake.partition_path(MODEL_NIGHTS, ds=ds) / CANDIDATE_FILE, lambda staged: staged.write_text(pointer))


def checkpoint_root(lake: Lake, ds: str) -> Path:
    """Where the training runs of ``ds`` checkpoint (``models/_checkpoints/ds=DS``)."""
    return lake.partition_path(MODEL_NIGHTS, ds=ds).parent / "_checkpoints" / f"ds={ds}"


def code_version() -> dict[str, str | None]:
    """The package version and, when run from a git checkout, the commit."""
    try:
        sha = (
            subprocess.run(
                ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=10
            ).stdout.strip()
            or None
        )
    except OSError:
        sha = None
    return {"package": metadata.version("crossrec"), "git_sha": sha}


def data_card(features: FeatureSet) -> dict[str, Any]:
    """What the card says about the data a model was trained on."""
    return {
        "data_window": list(features.window) if features.window else None,
        "source": features.source,
        "target": features.target,
        "n_users": features.n_users,
        "n_items": {domain: features.n_items(domain) for domain in features.domains},
        "train_interactions": {domain: int(features.train[domain].nnz) for domain in features.domains},
    }


def save_model(lake: Lake, ds: str, model: Recommender, card: dict[str, Any]) -> str:
    """Write ``model.pt`` and the card atomically, make the model the candidate of ``ds``;
    return its version.

    ``card`` holds what only the caller knows (data window and sizes, see
    :func:`data_card`, validation metrics, candidates' scores); name, version, config,
    code version and creation time are added here."""
    identity = model_id(model)
    version = model_version(ds, identity)
    full_card = {
        **card,
        "name": model.name,
        "model_version": version,
        "ds": ds,
        "config": model.settings.model_dump(mode="json"),
        "code_version": code_version(),
        "created_at": datetime.now(UTC).isoformat(),
    }
    import torch

    state = {key: value.detach().cpu() for key, value in model.state_dict().items()}
    with lake.replace_partition(MODEL_FILES, ds=ds, model=identity) as staged:
        torch.save(state, staged / MODEL_FILE)
        (staged / CARD_FILE).write_text(json.dumps(full_card, indent=2, sort_keys=True, default=str))
    _write_candidate(lake, ds, version)
    log.info("saved model %s (%s) to %s", model.name, version, model_dir(lake, version))
    return version


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Load a state_dict with ``weights_only=True``; a bad file raises ModelFileError."""
    if not path.is_file():
        raise ModelFileError(f"model file {path} does not exist")
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises RuntimeError, EOFError, UnpicklingError, ...
        raise ModelFileError(f"model file {path} is corrupt or truncated: {type(err).__name__}: {err}") from err
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelFileError(f"model file {path} does not hold a state_dict of tensors")
    return state


def read_card(lake: Lake, version: str) -> dict[str, Any]:
    path = model_dir(lake, version) / CARD_FILE
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ModelFileError(f"model card {path} does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ModelFileError(f"model card {path} is not valid JSON: {err}") from err


def load_model(lake: Lake, version: str, features: FeatureSet) -> tuple[Recommender, dict[str, Any]]:
    """Rebuild the model of ``version`` for ``features`` (histories included)."""
    from crossrec_core.models.base import build_model

    card = read_card(lake, version)
    path = model_dir(lake, version) / MODEL_FILE
    try:
        model = build_model(card["name"], features, ModelSettings(**card["config"]))
    except (KeyError, TypeError, ValueError) as err:
        raise ModelFileError(f"model card {path.with_name(CARD_FILE)} cannot rebuild the model: {err}") from err
    state = read_state_dict(path)
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise ModelFileError(f"model file {path} does not fit these features: {err}") from err
    model.set_histories(features)
    model.eval()
    return model, card
