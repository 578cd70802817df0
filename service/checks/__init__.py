"""Checks of the model endpoint against the model profile: at start-up (the API and the model
workers), ``longdoc models`` and the live ``longdoc check``."""
