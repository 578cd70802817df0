"""The pipeline, one module per stage: ingest → plan → extract → finalize → deliver, and the
sweep that beat runs. Each stage takes ids, works in short units of work, and sends its
follow-ups only once their unit has committed."""
