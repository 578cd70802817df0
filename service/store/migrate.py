"""Applies the Alembic migrations to the configured database."""

from __future__ import annotations

from importlib import resources

from alembic import command
from alembic.config import Config


def alembic_config(url: str | None = None) -> Config:
    ini = resources.files("service.store").joinpath("alembic.ini")
    config = Config(str(ini))
    if url:
        config.set_main_option("sqlalchemy.url", url)
    return config


def upgrade(url: str | None = None) -> None:
    command.upgrade(alembic_config(url), "head")
