"""The sandbox model server: an offline, OpenAI-compatible peer that plays the configured model.

A test peer and an offline demo, never a silent substitute (its answers say ``model:
sandbox``). It is its own package, left out of the production image.
"""
