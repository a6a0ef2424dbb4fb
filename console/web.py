"""The console's web side (Starlette): pages, the JSON API the pages use, and the live feed (SSE).

Every API answer is JSON; an error is `{"error": "..."}` with a status that says what kind
(401 log in again, 403 not allowed, 404 not there or outside your area, 409 the case's state
forbids it or it changed meanwhile, 413 too big, 422 a field is wrong). Every login, logout and
case step, allowed or refused, goes to the audit log.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote, urlsplit

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from console.areas import Area
from console.auth import Accounts, Session, User
from console.cases import ACTIONS, CaseError, CaseNotFound, CaseStore
from console.config import ConsoleConfig
from console.live import Hub, sse
from console.places import Places
from console.trends import StoreError, TrendReader
from lifeline import __version__
from lifeline.contract.kinds import LEVEL_NAMES, is_valid_id

log = logging.getLogger("lifeline.console.web")

HERE = Path(__file__).resolve().parent
COOKIE: Final = "lifeline_session"
#: Largest request body accepted (a note is at most `max_text_chars`; this leaves room for JSON).
MAX_BODY: Final = 64 * 1024
KEEPALIVE_S: Final = 15.0
#: Failed logins of one user name that lock it for `LOCK_S`.
MAX_FAILURES: Final = 5
LOCK_S: Final = 60.0


@dataclass
class Context:
    """Everything a request may need, built once by the service."""

    config: ConsoleConfig
    accounts: Accounts
    cases: CaseStore
    hub: Hub
    places: Places
    trends: TrendReader
    status: Callable[[], dict[str, Any]] = dict
    failures: dict[str, list[float]] = field(default_factory=dict)


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


class BodyLimit:
    """Refuses request bodies over `limit` bytes with 413 and a message saying so."""

    def __init__(self, app: ASGIApp, limit: int = MAX_BODY) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body = message.get("body", b"")
            size += len(body)
            if size > self.limit:
                response = error(413, f"the request is {_size(int(dict(scope['headers']).get(b'content-length', size)))}: "
                                      f"at most {_size(self.limit)} is accepted (a note holds at most a few "
                                      "thousand characters). Nothing was saved; shorten it and send it again.")
                await response(scope, receive, send)
                return
            chunks.append(body)
            more = message.get("more_body", False)
        replay: list[Message] = [{"type": "http.request", "body": b"".join(chunks), "more_body": False}]

        async def replayed() -> Message:
            return replay.pop() if replay else await receive()

        await self.app(scope, replayed, send)


class CachedStatic:
    """Static files the browser keeps for a day: pages name them with `?v=<tag>` of this build."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_cached(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] == 200:
                message = {**message, "headers": [*message.get("headers", []),
                                                  (b"cache-control", b"public, max-age=86400")]}
            await send(message)

        await self.app(scope, receive, send_cached)


def _static_tag() -> str:
    """Changes whenever a static file does (so a new build's pages fetch the new files)."""
    newest = max((p.stat().st_mtime_ns for p in (HERE / "static").rglob("*") if p.is_file()), default=0)
    return f"{newest:x}"[-10:]


def _size(n: int) -> str:
    return f"{n / 1048576:.1f} MB" if n >= 1048576 else f"{n / 1024:.0f} KB"


def build_app(ctx: Context) -> ASGIApp:
    """The ASGI application of one console instance."""
    env = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape(["html"]))
    env.globals.update(version=__version__, level_names=LEVEL_NAMES, static_tag=_static_tag())

    headers = page_headers(ctx.config.console.tile_url)

    def render(name: str, request: Request, session: Session | None, **values: Any) -> HTMLResponse:
        page = env.get_template(name).render(request=request, session=session,
                                             user=session.user if session else None, **values)
        return HTMLResponse(page, headers=headers)

    async def session_of(request: Request) -> Session | None:
        return await run_in_threadpool(ctx.accounts.session, request.cookies.get(COOKIE))

    def address(request: Request) -> str:
        return request.client.host if request.client else ""

    async def audit(request: Request, user: str | None, action: str, *, target: str = "", outcome: str = "ok",
                    detail: str = "") -> None:
        await run_in_threadpool(ctx.accounts.record, user, action, target=target, outcome=outcome,
                                detail=detail, address=address(request))

    def page(handler: Callable[[Request, Session], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
        async def wrapped(request: Request) -> Response:
            session = await session_of(request)
            if session is None:
                target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
                return RedirectResponse(f"/login?next={quote(target)}", status_code=303)
            return await handler(request, session)
        return wrapped

    def api(handler: Callable[[Request, Session], Awaitable[Any]], *, write: bool = False
            ) -> Callable[[Request], Awaitable[Response]]:
        async def wrapped(request: Request) -> Response:
            session = await session_of(request)
            if session is None:
                return error(401, "not logged in, or the session expired: log in again")
            if write and request.headers.get("x-csrf-token") != session.csrf:
                await audit(request, session.user.username, "csrf", target=request.url.path, outcome="refused")
                return error(403, "missing or wrong X-CSRF-Token header (reload the page)")
            try:
                result = await handler(request, session)
            except ApiError as exc:
                return error(exc.status, exc.message)
            return result if isinstance(result, Response) else JSONResponse(result)
        return wrapped

    # ------------------------------------------------------------------ login

    async def login_page(request: Request) -> Response:
        return render("login.html", request, None, next=_safe_next(request.query_params.get("next", "/")),
                      message="")

    async def login(request: Request) -> Response:
        is_json = request.headers.get("content-type", "").startswith("application/json")
        try:
            data: Any = await request.json() if is_json else dict(await request.form())
        except (ValueError, UnicodeDecodeError):
            data = None
        if not isinstance(data, dict):
            return error(422, "send the user name and password as JSON or a form")
        username, password = str(data.get("username", "")).strip(), str(data.get("password", ""))
        nxt = _safe_next(str(data.get("next", "/")))
        now = time.monotonic()
        recent = [t for t in ctx.failures.get(username, []) if now - t < LOCK_S]
        if len(recent) >= MAX_FAILURES:
            await audit(request, username, "login", outcome="refused", detail="locked after failed logins")
            message = f"too many failed logins for {username!r}: wait a minute and try again"
            return error(429, message) if is_json else render("login.html", request, None, next=nxt, message=message)
        result = await run_in_threadpool(ctx.accounts.login, username, password) if username else None
        if result is None:
            if len(ctx.failures) > 10_000:  # names tried at random must not fill memory
                ctx.failures.clear()
            ctx.failures[username] = [*recent, now]
            await audit(request, username or None, "login", outcome="refused", detail="wrong user name or password")
            message = "wrong user name or password"
            return error(401, message) if is_json else render("login.html", request, None, next=nxt, message=message)
        ctx.failures.pop(username, None)
        token, session = result
        await audit(request, username, "login")
        response: Response = (JSONResponse(_me(session)) if is_json
                              else RedirectResponse(nxt, status_code=303))
        response.set_cookie(COOKIE, token, max_age=ctx.accounts.session_ms // 1000, httponly=True,
                            samesite="lax", secure=ctx.config.console.cookies_secure, path="/")
        return response

    async def logout(request: Request) -> Response:
        session = await session_of(request)
        token = request.cookies.get(COOKIE)
        if session is not None:
            if request.headers.get("x-csrf-token") != session.csrf and \
                    (await request.form()).get("csrf") != session.csrf:
                return error(403, "missing or wrong CSRF token (reload the page)")
            await run_in_threadpool(ctx.accounts.logout, token)
            await audit(request, session.user.username, "logout")
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(COOKIE, path="/")
        return response

    # ------------------------------------------------------------------ pages

    def page_of(template: str, **fixed: Any) -> Callable[[Request], Awaitable[Response]]:
        async def handler(request: Request, session: Session) -> Response:
            values = {**fixed, **request.path_params}
            if template == "board.html" and not request.query_params:
                # the first page of the board comes with the HTML: one round trip less to the first rows
                values["initial"] = json.dumps(await board_data(session, {"category": fixed["category"]}),
                                               separators=(",", ":")).replace("</", "<\\/")
            return render(template, request, session, console=ctx.config.console, **values)
        return page(handler)

    # ------------------------------------------------------------------ API

    async def me(request: Request, session: Session) -> Any:
        return _me(session)

    async def board(request: Request, session: Session) -> Any:
        return await board_data(session, request.query_params)

    async def board_data(session: Session, q: Any) -> dict[str, Any]:
        category = q.get("category", "event")
        if category not in ("event", "fault"):
            raise ApiError(422, "category must be 'event' or 'fault'")
        limit = _int_param(q.get("limit"), ctx.config.console.board_rows, 1, 5000, "limit")
        level = _int_param(q.get("level"), 0, 0, 4, "level")
        def read() -> dict[str, Any]:
            out = ctx.cases.board(session.user, category=category, state=q.get("state", "open"), limit=limit,
                                  district=q.get("district", ""), township=q.get("township", ""),
                                  level=level, domain=q.get("domain", ""), query=q.get("q", "")[:64])
            out["counts"] = ctx.cases.counts(session.user)
            return out

        result = await run_in_threadpool(read)
        result["now"] = int(time.time() * 1000)
        return result

    async def counts(request: Request, session: Session) -> Any:
        return await run_in_threadpool(ctx.cases.counts, session.user)

    async def case_detail(request: Request, session: Session) -> Any:
        case_id = _case_id(request)
        try:
            return await run_in_threadpool(ctx.cases.get, session.user, case_id)
        except CaseError as exc:
            raise ApiError(exc.status, str(exc)) from None

    async def case_action(request: Request, session: Session) -> Any:
        case_id, action = _case_id(request), request.path_params["action"]
        user = session.user
        if action not in ACTIONS:
            raise ApiError(404, f"unknown action {action!r}; expected one of {', '.join(ACTIONS)}")
        try:
            params = await request.json()
        except (ValueError, UnicodeDecodeError):
            params = None
        if not isinstance(params, dict):
            await audit(request, user.username, action, target=f"case {case_id}", outcome="refused",
                        detail="body is not a JSON object")
            raise ApiError(422, "send the step's fields as a JSON object")
        try:
            row = await run_in_threadpool(ctx.cases.act, user, case_id, action, params)
        except CaseError as exc:
            await audit(request, user.username, action, target=f"case {case_id}", outcome="refused", detail=str(exc))
            raise ApiError(exc.status, str(exc)) from None
        await audit(request, user.username, action, target=f"case {case_id}",
                    detail=json.dumps({k: v for k, v in params.items() if k != "version"})[:500])
        ctx.hub.cases(await run_in_threadpool(ctx.cases.rows, [case_id]))
        on_change()
        return row

    async def stream(request: Request, session: Session) -> Any:
        sub = ctx.hub.subscribe(session.user)
        token = request.cookies.get(COOKIE)

        async def events() -> Any:
            try:
                yield "retry: 2000\n\n" + sse("hello", {"user": session.user.username, "now": int(time.time() * 1000)})
                while True:
                    try:
                        message = await asyncio.wait_for(sub.queue.get(), KEEPALIVE_S)
                    except TimeoutError:
                        if await run_in_threadpool(ctx.accounts.session, token) is None:
                            yield sse("expired", {"reason": "the session expired: log in again"})
                            return
                        yield ": keepalive\n\n"
                        continue
                    if message:
                        yield message
                    if sub.overflowed:
                        return
            finally:
                ctx.hub.unsubscribe(sub)

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    async def map_data(request: Request, session: Session) -> Any:
        levels = await run_in_threadpool(ctx.cases.site_levels, session.user)
        area = session.user.area
        for site, (district, township) in ctx.places.all_sites().items():
            if site not in levels and (not area.district or (district and area.contains(district, township))):
                levels[site] = {"site": site, "district": district, "township": township, "level": 0,
                                "open": 0, "faults": 0}
        placed, unplaced = [], []
        for site, info in sorted(levels.items()):
            coords = ctx.places.site(site)
            if coords is None:
                unplaced.append(info)
            else:
                placed.append({**info, "lat": coords[0], "lon": coords[1], "name": ctx.places.site_name(site)})
        c = ctx.config.console
        return {"sites": placed, "unplaced": unplaced, "tile_url": c.tile_url,
                "tile_attribution": c.tile_attribution, "boundaries": ctx.places.boundaries is not None}

    async def boundaries(request: Request, session: Session) -> Any:
        data = ctx.places.boundaries or {"type": "FeatureCollection", "features": []}
        area = session.user.area
        features = [f for f in data["features"]
                    if not area.district or f["properties"].get("district") == area.district]
        return {"type": "FeatureCollection", "features": features}

    async def sensor(request: Request, session: Session) -> Any:
        sensor_id = _sensor_id(request)
        try:
            state = await run_in_threadpool(ctx.cases.sensor_state, session.user, sensor_id)
        except CaseNotFound as exc:
            raise ApiError(404, str(exc)) from None
        state["limits"] = ctx.places.limits.get(sensor_id, {})
        coords = ctx.places.site(state["sensor"]["site"])
        state["coords"] = list(coords) if coords else None
        agent = ctx.places.agents.get(state["sensor"]["agent"])
        state["agent"] = agent.view() if agent else None
        return state

    async def trend(request: Request, session: Session) -> Any:
        sensor_id = _sensor_id(request)
        try:
            await run_in_threadpool(ctx.cases.sensor_state, session.user, sensor_id)
        except CaseNotFound as exc:
            raise ApiError(404, str(exc)) from None
        hours = _int_param(request.query_params.get("hours"), 24, 1, 24 * 31, "hours")
        end = int(time.time() * 1000)
        try:
            return await ctx.trends.trend(sensor_id, end - hours * 3_600_000, end)
        except StoreError as exc:
            raise ApiError(502, f"the time-series store did not answer: {exc}") from None

    async def cockpit(request: Request, session: Session) -> Any:
        data = await run_in_threadpool(ctx.cases.cockpit, session.user)
        area = session.user.area
        data["agents"] = ctx.places.agent_views(area.district, area.township)
        data["console"] = ctx.status()
        return data

    async def agents(request: Request, session: Session) -> Any:
        area = session.user.area
        return {"agents": ctx.places.agent_views(area.district, area.township)}

    async def audit_log(request: Request, session: Session) -> Any:
        if session.user.role != "supervisor":
            raise ApiError(403, "only supervisors read the audit log")
        rows = await run_in_threadpool(ctx.accounts.audit_log, limit=500)
        users = {u.username: u.area for u, _ in await run_in_threadpool(ctx.accounts.list_users)}
        area = session.user.area
        return {"entries": [r for r in rows if r["username"] is None or _within(users.get(str(r["username"])), area)]}

    async def health(request: Request) -> Response:
        return JSONResponse({"ok": True, **ctx.status()})

    on_change: Callable[[], None] = lambda: None  # noqa: E731  (the service sets its wake-up)

    routes = [
        Route("/login", login_page, methods=["GET"]),
        Route("/login", login, methods=["POST"]),
        Route("/logout", logout, methods=["POST"]),
        Route("/", page_of("board.html", category="event", title="Alert board")),
        Route("/maintenance", page_of("board.html", category="fault", title="Maintenance")),
        Route("/case/{case_id:int}", page_of("case.html", title="Case")),
        Route("/map", page_of("map.html", title="Map")),
        Route("/sensor/{sensor_id}", page_of("sensor.html", title="Sensor")),
        Route("/cockpit", page_of("cockpit.html", title="Cockpit")),
        Route("/audit", page_of("audit.html", title="Audit log")),
        Route("/healthz", health),
        Route("/api/me", api(me)),
        Route("/api/board", api(board)),
        Route("/api/counts", api(counts)),
        Route("/api/cases/{case_id}", api(case_detail)),
        Route("/api/cases/{case_id}/{action}", api(case_action, write=True), methods=["POST"]),
        Route("/api/stream", api(stream)),
        Route("/api/map", api(map_data)),
        Route("/api/boundaries", api(boundaries)),
        Route("/api/sensors/{sensor_id}", api(sensor)),
        Route("/api/sensors/{sensor_id}/trend", api(trend)),
        Route("/api/cockpit", api(cockpit)),
        Route("/api/agents", api(agents)),
        Route("/api/audit", api(audit_log)),
        Mount("/static", CachedStatic(StaticFiles(directory=HERE / "static")), name="static"),
    ]
    app = Starlette(routes=routes)

    def set_on_change(callback: Callable[[], None]) -> None:
        nonlocal on_change
        on_change = callback

    app.state.set_on_change = set_on_change
    return BodyLimit(app)


def page_headers(tile_url: str) -> dict[str, str]:
    """Headers of every page: scripts only from the console itself (no CDN), no framing."""
    tiles = ""
    if tile_url:
        parts = urlsplit(tile_url.replace("{s}", "a"))
        tiles = f" {parts.scheme}://{parts.netloc.replace('a.', '*.', 1) if '{s}' in tile_url else parts.netloc}"
    return {
        "Cache-Control": "no-store",
        "Content-Security-Policy": (f"default-src 'self'; script-src 'self'; connect-src 'self'; "
                                    f"img-src 'self' data:{tiles}; style-src 'self' 'unsafe-inline'; "
                                    "frame-ancestors 'none'; base-uri 'none'; form-action 'self'"),
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "same-origin",
    }


def _me(session: Session) -> dict[str, Any]:
    u = session.user
    return {"username": u.username, "name": u.label, "role": u.role, "area": str(u.area), "tier": u.area.tier,
            "min_level": u.area.min_level, "csrf": session.csrf, "expires_at": session.expires_at}


def _within(user_area: Area | None, area: Area) -> bool:
    return user_area is not None and (not area.district or (
        user_area.district == area.district and (not area.township or user_area.township == area.township)))


def _safe_next(target: str) -> str:
    """Only local paths after login (no open redirect)."""
    return target if target.startswith("/") and not target.startswith("//") else "/"


def _int_param(raw: str | None, default: int, lo: int, hi: int, name: str) -> int:
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(422, f"{name} must be an integer, got {raw!r}") from None
    if not lo <= value <= hi:
        raise ApiError(422, f"{name} must be within {lo}..{hi}, got {value}")
    return value


def _case_id(request: Request) -> int:
    raw = request.path_params["case_id"]
    try:
        return int(raw)
    except ValueError:
        raise ApiError(404, f"no case {raw!r}") from None


def _sensor_id(request: Request) -> str:
    sensor_id = request.path_params["sensor_id"]
    if not is_valid_id(sensor_id):
        raise ApiError(404, f"no sensor {sensor_id!r}")
    return sensor_id


__all__ = ["COOKIE", "Context", "User", "build_app"]
