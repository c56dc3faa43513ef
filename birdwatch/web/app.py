"""The page: Starlette routes over the history, the snapshot folder and the live slot.

Every handler is a plain function, which Starlette runs in its thread pool: SQLite and file reads never hold
up the event loop, and nothing here ever waits on a stage thread (the live slot holds references, the history
is read through the page's own connections).
"""

from __future__ import annotations

import io
import logging
import math
import time
from collections.abc import Callable
from collections.abc import Mapping
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse
from starlette.responses import JSONResponse
from starlette.responses import RedirectResponse
from starlette.responses import Response
from starlette.routing import Mount
from starlette.routing import Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from birdwatch.config import LocationConfig
from birdwatch.deliver import corrections
from birdwatch.deliver import export as writer
from birdwatch.deliver import visitbook
from birdwatch.deliver.corrections import NOT_A_BIRD
from birdwatch.errors import BirdwatchError
from birdwatch.types import iso_time
from birdwatch.types import local_day
from birdwatch.web import book
from birdwatch.web import charts
from birdwatch.web import health
from birdwatch.web.auth import COOKIE
from birdwatch.web.auth import SESSION_S
from birdwatch.web.auth import Guard
from birdwatch.web.auth import client_of
from birdwatch.web.live import LatestFrames
from birdwatch.web.live import placeholder_jpeg

log = logging.getLogger(__name__)

HERE = Path(__file__).parent
MAX_BULK = 1000  # visits one correction may name
CHART_DAYS = 30


@dataclass
class Site:
    """What the page serves, whoever runs it (`birdwatch run`, or `birdwatch web` over a history alone)."""

    history: Path
    snapshots: Path
    species: list[str]  # the model's species, for the search
    cameras: list[str]
    guard: Guard
    review_below: float = 0.7
    location: LocationConfig = field(default_factory=LocationConfig)
    live: LatestFrames | None = None  # None: no pipeline in this process
    counters: Callable[[], Mapping[str, Any]] | None = None  # the pipeline's, as /metrics reads them

    def media_url(self, path: str | None) -> str | None:
        """The page's URL of a snapshot file, or None if it is not in the snapshot folder."""
        if not path:
            return None
        try:
            target = Path(path).resolve()
            relative = target.relative_to(self.snapshots.resolve())
            if not target.is_file():
                return None  # retention took it, or no whole frame was kept: no broken picture on the page
        except (ValueError, OSError):
            return None
        return "/media/" + quote(relative.as_posix())


def create_app(site: Site) -> Starlette:
    templates = Jinja2Templates(directory=HERE / "templates")
    templates.env.globals.update(
        media=site.media_url, clock=_clock, iso=iso_time, not_a_bird=NOT_A_BIRD, quote=lambda s: quote(s, safe="")
    )

    def page(request: Request, template: str, **context: Any) -> Response:
        if not site.guard.can_view(request):
            return RedirectResponse(f"/login?next={quote(request.url.path)}", status_code=303)
        session = site.guard.session(request)
        context.update(
            today=local_day(time.time()),
            request=request,
            session=session,
            csrf=session.csrf if session else "",
            has_password=site.guard.has_password,
            cameras=site.cameras,
            species_list=site.species,
        )
        return templates.TemplateResponse(request, template, context)

    def today(request: Request) -> Response:
        day = request.query_params.get("day") or local_day(time.time())
        if not _is_day(day):
            raise HTTPException(400, f"day {day!r} is not a date like 2026-05-01")
        camera = request.query_params.get("camera") or None
        with book.connect(site.history) as db:
            visits = visitbook.on_day(db, day, camera)
        return page(
            request,
            "today.html",
            day=day,
            visits=visits,
            before=visitbook.day_minus(day, 1),
            after=visitbook.day_minus(day, -1),
            is_today=day == local_day(time.time()),
            camera=camera,
        )

    def now(request: Request) -> Response:
        return page(request, "now.html", status=_now_status(site))

    def now_json(request: Request) -> Response:
        if not site.guard.can_view(request):
            return JSONResponse({"error": "sign in"}, status_code=401)
        return JSONResponse(_now_status(site))

    def live(request: Request) -> Response:
        if not site.guard.can_view(request):
            return Response(status_code=401)
        camera = request.path_params["camera"]
        if camera not in site.cameras:
            raise HTTPException(404, f"no camera {camera!r}")
        picture = site.live.jpeg(camera) if site.live is not None else None
        why = "waiting for the first frame" if site.live is not None else "live picture: only from birdwatch run"
        headers = {"Cache-Control": "no-store"}
        return Response(picture or placeholder_jpeg(why), media_type="image/jpeg", headers=headers)

    def visit(request: Request) -> Response:
        with book.connect(site.history) as db:
            found = book.visit_page(db, request.path_params["visit_id"])
        if found is None:
            raise HTTPException(404, "no such visit (retention may have removed it)")
        frame = found.crops[0].replace("_crop.jpg", "_frame.jpg") if found.crops else None
        return page(request, "visit.html", v=found.visit, page=found, frame=frame)

    def alike(request: Request) -> Response:
        visit_id, least = request.path_params["visit_id"], _similarity(request)
        if not site.guard.can_view(request):  # before the comparison, which reads every visit's crop
            return RedirectResponse(f"/login?next={quote(request.url.path)}", status_code=303)
        with book.connect(site.history) as db:
            found = book.visit_page(db, visit_id)
            near = book.alike(db, visit_id, least) if found else None
        if found is None:
            raise HTTPException(404, "no such visit (retention may have removed it)")
        return page(request, "alike.html", v=found.visit, near=near, least=least, limit=book.PAGE)

    def alike_json(request: Request) -> Response:
        if not site.guard.can_view(request):
            return JSONResponse({"error": "sign in"}, status_code=401)
        try:
            least = _similarity(request)
        except HTTPException as exc:
            return JSONResponse({"error": exc.detail}, status_code=exc.status_code)
        with book.connect(site.history) as db:
            near = book.alike(db, request.path_params["visit_id"], least)
        if near is None:
            return JSONResponse({"error": "no such visit, or none of its crops was kept to compare"}, status_code=404)
        return JSONResponse(
            [{"visit_id": a.visit.visit_id, "similarity": round(a.similarity, 4), "name": a.visit.name} for a in near]
        )

    def species(request: Request) -> Response:
        with book.connect(site.history) as db:
            seen = visitbook.species_seen(db)
        return page(request, "species.html", seen=seen)

    def one_species(request: Request) -> Response:
        name = request.path_params["name"]
        with book.connect(site.history) as db:
            visits = book.species_visits(db, name)
        return page(request, "species_one.html", name=name, visits=visits, limit=book.PAGE)

    def charts_page(request: Request) -> Response:
        today_ = local_day(time.time())
        days = [visitbook.day_minus(today_, n) for n in range(CHART_DAYS - 1, -1, -1)]
        with book.connect(site.history) as db:
            rows = visitbook.per_day(db, CHART_DAYS, today=today_)
            hours = visitbook.by_hour(db, CHART_DAYS, today=today_)
        per_day, legend = charts.per_day_svg(rows, days)
        return page(request, "charts.html", per_day=per_day, legend=legend, by_hour=charts.by_hour_svg(hours))

    def review(request: Request) -> Response:
        with book.connect(site.history) as db:
            queue = book.review_queue(db, site.review_below)
        return page(request, "review.html", queue=queue, below=site.review_below)

    def health_page(request: Request) -> Response:
        return page(request, "health.html", h=health.figures(site.counters, site.history, site.snapshots))

    def media(request: Request) -> Response:
        if not site.guard.can_view(request):
            return Response(status_code=401)
        root = site.snapshots.resolve()
        target = (root / request.path_params["path"]).resolve()
        if not target.is_relative_to(root) or target.suffix.lower() not in (".jpg", ".jpeg") or not target.is_file():
            raise HTTPException(404, "no such picture")
        return FileResponse(target, media_type="image/jpeg", headers={"Cache-Control": "max-age=86400"})

    # -- changes --

    async def correct(request: Request) -> Response:
        who = site.guard.writer(request)
        if who is None:
            return _refused(site, request)
        body = await _json(request)
        return await run_in_threadpool(_correct, site, body, who)

    async def undo(request: Request) -> Response:
        who = site.guard.writer(request)
        if who is None:
            return _refused(site, request)
        ids = (await _json(request)).get("corrections")
        if not isinstance(ids, list) or not all(isinstance(i, int) for i in ids):
            return JSONResponse({"error": "name the corrections to undo"}, status_code=400)
        return await run_in_threadpool(_undo, site, ids, who)

    def export(request: Request) -> Response:
        if site.guard.session(request) is None and not site.guard.bearer_ok(request):
            return _refused(site, request)
        kind = request.path_params["kind"]
        out = io.StringIO()
        with book.connect(site.history) as db:
            visits = writer.visits_since(db, None)
            if kind == "visits.csv":
                writer.write_visits_csv(db, visits, out)
            elif kind == "ebird.csv":
                try:
                    writer.write_ebird_csv(visits, site.location, out)
                except BirdwatchError as exc:  # the location is not set: say so, as the CLI does
                    return Response(str(exc), status_code=409, media_type="text/plain")
            else:
                raise HTTPException(404, "exports: visits.csv, ebird.csv")
        name = f"birdwatch-{kind}"
        return Response(
            out.getvalue(),
            media_type="text/csv",
            headers={"Content-Disposition": f'attachment; filename="{name}"'},
        )

    # -- signing in --

    def login_form(request: Request) -> Response:
        return templates.TemplateResponse(
            request, "login.html", {"next": _next(request), "error": None, "has_password": site.guard.has_password}
        )

    async def login(request: Request) -> Response:
        form = await request.form()
        client = client_of(request)
        wait = site.guard.locked_for(client)
        target = _next(request, str(form.get("next", "/")))
        context = {"next": target, "has_password": site.guard.has_password}
        if wait > 0:
            log.warning("login from %s refused: too many wrong passwords, %d s to wait", client, wait)
            return templates.TemplateResponse(
                request,
                "login.html",
                {**context, "error": f"Too many wrong passwords: try again in {int(wait) + 1} s."},
                status_code=429,
                headers={"Retry-After": str(int(wait) + 1)},
            )
        if not site.guard.check_password(client, str(form.get("password", ""))):
            log.warning("wrong password for the page from %s", client)
            return templates.TemplateResponse(
                request, "login.html", {**context, "error": "Wrong password."}, status_code=401
            )
        who = str(form.get("who", "")).strip()[:40] or "household"
        session = site.guard.new_session(who)
        response = RedirectResponse(target, status_code=303)
        response.set_cookie(COOKIE, session.token, max_age=SESSION_S, httponly=True, samesite="strict")
        return response

    async def logout(request: Request) -> Response:
        form = await request.form()
        if site.guard.writer(request, str(form.get("csrf", ""))) is None:
            return _refused(site, request)
        response = RedirectResponse("/", status_code=303)
        response.delete_cookie(COOKIE)
        return response

    routes = [
        Route("/", today),
        Route("/now", now),
        Route("/api/now", now_json),
        Route("/live/{camera}.jpg", live),
        Route("/visit/{visit_id}", visit),
        Route("/visit/{visit_id}/alike", alike),
        Route("/api/alike/{visit_id}", alike_json),
        Route("/species", species),
        Route("/species/{name:path}", one_species),
        Route("/charts", charts_page),
        Route("/review", review),
        Route("/health", health_page),
        Route("/media/{path:path}", media),
        Route("/api/correct", correct, methods=["POST"]),
        Route("/api/undo", undo, methods=["POST"]),
        Route("/export/{kind}", export),
        Route("/login", login_form),
        Route("/login", login, methods=["POST"]),
        Route("/logout", logout, methods=["POST"]),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]
    return Starlette(routes=routes, exception_handlers={HTTPException: _error(templates)})


def _similarity(request: Request) -> float:
    """`?min=`: how alike a visit must be to be listed, a cosine similarity."""
    text = request.query_params.get("min") or str(book.ALIKE_MIN)
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not -1.0 <= value <= 1.0:
        raise HTTPException(400, f"min={text!r}: give a similarity between -1 and 1, like 0.8")
    return value


def _correct(site: Site, body: dict[str, Any], who: str) -> Response:
    ids = body.get("visits")
    if body.get("species_today"):  # "all the visits of this species today"
        with book.connect(site.history) as db:
            ids = book.visit_ids_of(db, str(body["species_today"]), str(body.get("day") or local_day(time.time())))
    name = NOT_A_BIRD if body.get("not_a_bird") else str(body.get("species") or "").strip()
    if not isinstance(ids, list) or not ids or len(ids) > MAX_BULK or not all(isinstance(i, str) for i in ids):
        return JSONResponse({"error": f"name 1 to {MAX_BULK} visits"}, status_code=400)
    if name != NOT_A_BIRD and name not in site.species:
        return JSONResponse({"error": f"{name!r} is not one of the model's species"}, status_code=400)
    with book.connect(site.history, write=True) as db:
        made = corrections.correct(db, ids, name, who)
    log.info("%s corrected %d visit(s) to %s", who, len(made), name)
    return JSONResponse({"corrections": [c.id for c in made], "name": name})


def _undo(site: Site, ids: list[int], who: str) -> Response:
    with book.connect(site.history, write=True) as db:
        done = corrections.undo(db, ids)
    log.info("%s undid %d correction(s)", who, len(done))
    return JSONResponse({"undone": [c.id for c in done]})


def _now_status(site: Site) -> dict[str, Any]:
    snap = site.counters() if site.counters is not None else {}
    cams: Mapping[str, Mapping[str, Any]] = snap.get("cameras", {})
    elapsed = float(snap.get("elapsed_s", 0.0)) or 1.0
    out = {}
    with book.connect(site.history) as db:
        for camera in site.cameras:
            cam = cams.get(camera, {})
            on = book.going_on(db, camera)
            out[camera] = {
                "state": cam.get("state", "not running here" if site.counters is None else "starting"),
                "fps": round(float(cam.get("frames_processed", 0)) / elapsed, 1),
                "visit": None if on is None else {"id": on.visit_id, "species": on.name, "score": round(on.score, 2)},
            }
    return {"cameras": out}


def _refused(site: Site, request: Request) -> Response:
    why = (
        "sign in first (the page's password)"
        if site.guard.has_password
        else "this page has no password: set web.password_file"
    )
    if site.guard.session(request) is not None:
        why = "the form is stale or came from another site: reload the page"
    return JSONResponse({"error": why}, status_code=403)


async def _json(request: Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        raise HTTPException(400, "the body is not JSON") from None
    if not isinstance(body, dict):
        raise HTTPException(400, "the body is not a JSON object")
    return body


def _next(request: Request, given: str | None = None) -> str:
    """Where to go after signing in: a path on this page only (never another site)."""
    target = given if given is not None else request.query_params.get("next", "/")
    return target if target.startswith("/") and not target.startswith("//") and "\\" not in target else "/"


def _is_day(day: str) -> bool:
    try:
        time.strptime(day, "%Y-%m-%d")
    except ValueError:
        return False
    return True


def _clock(ts: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(ts))


def _error(templates: Jinja2Templates) -> Callable[[Request, Exception], Response]:
    def handler(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return templates.TemplateResponse(
            request, "error.html", {"status": exc.status_code, "detail": exc.detail}, status_code=exc.status_code
        )

    return handler
