from __future__ import annotations

import asyncio

import redis.asyncio as aioredis
from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import text

from service.api.deps import Services, ServicesDep

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


def _check_db(services: Services) -> None:
    with services.db.engine.connect() as conn:
        conn.execute(text("SELECT 1"))


@router.get("/readyz")
async def readyz(services: ServicesDep) -> JSONResponse:
    checks: dict[str, str] = {}
    try:
        await asyncio.wait_for(asyncio.to_thread(_check_db, services), timeout=3)
        checks["database"] = "ok"
    except Exception as exc:  # noqa: BLE001 - any failure means not ready
        checks["database"] = f"unavailable: {type(exc).__name__}"
    client = aioredis.from_url(services.settings.redis_url, socket_connect_timeout=2,
                               socket_timeout=2)
    try:
        await asyncio.wait_for(client.ping(), timeout=3)
        checks["redis"] = "ok"
    except Exception as exc:  # noqa: BLE001
        checks["redis"] = f"unavailable: {type(exc).__name__}"
    finally:
        await client.aclose()
    if all(v == "ok" for v in checks.values()):
        return JSONResponse({"status": "ready", "checks": checks})
    down = ", ".join(k for k, v in checks.items() if v != "ok")
    return JSONResponse(
        {"error": {"code": "not_ready", "message": f"unavailable: {down}"}, "checks": checks},
        status_code=503, headers={"Retry-After": "5"},
    )
