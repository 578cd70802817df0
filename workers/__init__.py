"""longdoc workers: the Celery app, its tasks and the pipeline stages."""
