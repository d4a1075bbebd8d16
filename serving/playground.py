"""The playground: `GET /` on the Serve app, one page to try every served model in a browser.

    raygen serve                    # then open http://127.0.0.1:8000/

The page is three files in serving/static (HTML, CSS, a little JavaScript), served
by the gateway itself: no second server, no build step, nothing fetched from the
internet (its Content-Security-Policy allows this origin only). It arrives with a
placeholder per model (names only on a server without a key), lists the models
from `GET /v1/models` and talks to the same `/v1` routes as any client, so what it
shows is what the API answers, errors included; a list that does not come says why. The page and its two files need no
API key; every request the page makes does, and the page asks for it.
"""

from __future__ import annotations

from html import escape
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, Response

STATIC = Path(__file__).parent / "static"
ASSETS = {"/playground.css": "text/css; charset=utf-8", "/playground.js": "text/javascript; charset=utf-8"}
OPEN_PATHS = frozenset({"/", *ASSETS})  # served without the API key: they hold no data

# Only this origin: scripts, styles and requests; pictures and sound also from data: and blob: URLs.
POLICY = ("default-src 'self'; img-src 'self' data: blob:; media-src 'self' data: blob:; "
          "object-src 'none'; base-uri 'self'; frame-ancestors 'none'")


def skeleton(models: list[tuple[str, str]] | None) -> str:
    """The panels' placeholders, in the page before any model is described: one per (name, kind) of a keyless
    server; a server with a key names no model to a page that has not given it."""
    if models is None:
        return ('<section class="panel skeleton" aria-busy="true"><h2>Models</h2><p class="about">This server\'s '
                "models appear here once the page can list them (GET /v1/models, with the API key).</p></section>")
    def a(kind: str) -> str:
        words = kind.replace("_", " ")
        return f"{'An' if words[0] in 'aeiou' else 'A'} {escape(words)}"

    return "".join(f'<section class="panel skeleton" aria-busy="true"><h2>{escape(name)}</h2><p class="about">'
                   f"{a(kind)} model: its form appears once the server describes it (GET /v1/models).</p></section>"
                   for name, kind in models)


def add_routes(app: FastAPI, models: list[tuple[str, str]] | None) -> None:
    """The page and its files; `models`: (name, kind) of each served model, None when the server has a key."""
    page = (STATIC / "playground.html").read_text().replace("{{skeleton}}", skeleton(models))
    assets = {path: (STATIC / path.lstrip("/")).read_bytes() for path in ASSETS}
    headers = {"Content-Security-Policy": POLICY, "Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}

    @app.get("/", include_in_schema=False)
    async def playground(request: Request) -> HTMLResponse:
        # Under a route prefix (/raygen) the page's relative links must resolve below it,
        # with or without the trailing slash the user typed.
        base = request.scope.get("root_path", "").rstrip("/") + "/"
        return HTMLResponse(page.replace("{{base}}", escape(base)), headers=headers)

    for path, media_type in ASSETS.items():
        app.add_api_route(path, _asset(assets[path], media_type, headers), methods=["GET"], include_in_schema=False)


def _asset(content: bytes, media_type: str, headers: dict):
    async def asset() -> Response:
        return Response(content, media_type=media_type, headers=headers)

    return asset
