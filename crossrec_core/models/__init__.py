"""Every model module, imported so that each registers its name (models/base.py)."""

from crossrec_core.models import (  # noqa: F401
    emcdr,
    encoders,
    hybrid,
    item_knn,
    mf,
    popularity,
)
from crossrec_core.models.base import Recommender, build_model, dot_scores

__all__ = ["Recommender", "build_model", "dot_scores"]
