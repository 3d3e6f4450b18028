"""One thin entrypoint per stage for people at a checkout; Airflow runs `python -m crossrec_core.jobs STAGE`."""
