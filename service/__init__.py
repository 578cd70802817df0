"""longdoc service: API, persistence, storage, settings, tokens, the sandbox model."""
