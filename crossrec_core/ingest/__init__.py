"""Getting interaction logs into the lake's raw zone (``raw/domain=D/ds=DAY``).

* :mod:`~crossrec_core.ingest.pairs`: a CDRIB-style cross-domain pair (synthetic times);
* :mod:`~crossrec_core.ingest.recbole`: RecBole atomic files split into domains by genre;
* :mod:`~crossrec_core.ingest.events`: delivered CSV / JSON Lines / Parquet files, as is;
* :mod:`~crossrec_core.ingest.demo_data`: synthetic logs with a learnable cross-domain signal;
* :mod:`~crossrec_core.ingest.landing`: what they share (atomic per-day landing, summaries).
"""
