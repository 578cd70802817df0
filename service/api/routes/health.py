from __future__ import annotations

import asyncio
from collections.abc import Callable

import redis.asyncio as aioredis
from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import text

from schemas.api import HealthOut, NotReadyOut, ReadyOut
from service.api.deps import Services, ServicesDep
from service.store.queue import check_broker

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=HealthOut)
def healthz() -> HealthOut:
    return HealthOut(status="ok")


def _check_db(services: Services) -> None:
    with services.db.engine.connect() as conn:
        conn.execute(text("SELECT 1"))


async def _check(probe: Callable[[], None]) -> str:
    try:
        await asyncio.wait_for(asyncio.to_thread(probe), timeout=3)
        return "ok"
    except Exception as exc:  # noqa: BLE001 - any failure means not ready
        return f"unavailable: {type(exc).__name__}"


@router.get("/readyz", response_model=ReadyOut, responses={503: {"model": NotReadyOut}})
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
    if services.settings.broker_is_amqp:  # otherwise Redis is the broker, checked above
        checks["broker"] = await _check(lambda: check_broker(services.settings))
    checks["storage"] = await _check(services.storage.check)
    if all(v == "ok" for v in checks.values()):
        return JSONResponse({"status": "ready", "checks": checks})
    down = ", ".join(k for k, v in checks.items() if v != "ok")
    return JSONResponse(
        {"error": {"code": "not_ready", "message": f"unavailable: {down}"}, "checks": checks},
        status_code=503, headers={"Retry-After": "5"},
    )
