"""One thin entrypoint per stage: spark-submit jobs/<stage>.py or python -m jobs.<stage>."""
