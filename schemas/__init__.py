"""The contract between API, workers and clients: Pydantic models and JSON-Schema rules."""
