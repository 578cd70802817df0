"""The longdoc Python client: long documents to JSON that matches your schema.

    from longdoc import Client

    with Client() as client:  # LONGDOC_URL and LONGDOC_API_KEY, or pass them
        result = client.extract("contract.pdf", schema="schema.json")
        print(result.data)

``AsyncClient`` mirrors ``Client``; ``longdoc.webhooks.verify`` checks a webhook in a receiver.
This package holds only the client: it talks to a longdoc server over HTTP.
"""

from longdoc import webhooks
from longdoc._common import __version__
from longdoc.aio import AsyncClient
from longdoc.client import Client
from longdoc.errors import APIError, ConfigurationError, JobFailed, LongdocError
from schemas.api import (
    DocumentOut,
    DryRunOut,
    JobEventOut,
    JobOut,
    JobStatus,
    PageOut,
    ResultOut,
)

__all__ = [
    "APIError",
    "AsyncClient",
    "Client",
    "ConfigurationError",
    "DocumentOut",
    "DryRunOut",
    "JobEventOut",
    "JobFailed",
    "JobOut",
    "JobStatus",
    "LongdocError",
    "PageOut",
    "ResultOut",
    "__version__",
    "webhooks",
]
