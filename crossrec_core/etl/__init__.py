"""Spark stages that turn raw landing files into clean interactions and model features.

* :mod:`crossrec_core.etl.raw_files`: find and read every raw file of a partition as strings.
* :mod:`crossrec_core.etl.clean`: validate, quarantine, de-duplicate (stage ``clean``).
* :mod:`crossrec_core.etl.keys`: stable integer keys for users and items.
* :mod:`crossrec_core.etl.featurize`: windowed, decayed aggregates with keys and splits
  (stage ``featurize``).

Reading the features back needs no Spark: :func:`crossrec_core.features.load_features`.
"""
