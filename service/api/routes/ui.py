"""The playground at ``/ui``: plain HTML and a little JavaScript, served from the package (no
build step, nothing loaded from elsewhere: the page's Content-Security-Policy says so)."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles

STATIC = Path(__file__).resolve().parents[1] / "static"
# Everything from this origin only; the key never leaves for anywhere else.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'")

router = APIRouter(include_in_schema=False)


@router.get("/ui")
def playground() -> FileResponse:
    return FileResponse(STATIC / "index.html", headers={
        "Content-Security-Policy": CSP, "Cache-Control": "no-cache",
        "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"})


@router.get("/ui/")
def playground_slash() -> RedirectResponse:
    return RedirectResponse("/ui")


def install(app: FastAPI) -> None:
    app.include_router(router)
    app.mount("/ui/static", StaticFiles(directory=STATIC), name="ui-static")
