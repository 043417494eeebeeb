"""The recurring schedules API: create, list, read and delete (``/v1/schedules``)."""

from __future__ import annotations

from aiohttp import web

from app.api.common import json_response, path_id, read_json
from app.auth.access import conversation_for, principal_of, require_write
from app.errors import shutting_down
from app.ids import scoped
from app.schedules.scheduler import SCHEDULER
from app.state import STATE
from protocol.schedules import CreateScheduleRequest, ScheduleList

routes = web.RouteTableDef()


@routes.post("/v1/schedules")
async def create_schedule(request: web.Request) -> web.Response:
    st = request.app[STATE]
    principal = principal_of(request)
    require_write(principal)
    body = await read_json(request, CreateScheduleRequest, st.settings.max_body)
    if st.shutting_down:
        raise shutting_down()
    if body.conversation_id is not None and await st.engine.conversation(
            scoped(principal.owner, body.conversation_id)):
        await conversation_for(st.engine, principal, body.conversation_id, write=True)
    schedule = await request.app[SCHEDULER].create(body, owner=principal.owner,
                                                    admin=principal.admin)
    return json_response(schedule, status=201)


@routes.get("/v1/schedules")
async def list_schedules(request: web.Request) -> web.Response:
    return json_response(ScheduleList(request.app[SCHEDULER].list(principal_of(request))))


@routes.get("/v1/schedules/{schedule_id}")
async def get_schedule(request: web.Request) -> web.Response:
    scheduler = request.app[SCHEDULER]
    return json_response(scheduler.get(path_id(request, "schedule_id"), principal_of(request)))


@routes.delete("/v1/schedules/{schedule_id}")
async def delete_schedule(request: web.Request) -> web.Response:
    principal = principal_of(request)
    require_write(principal)
    await request.app[SCHEDULER].delete(path_id(request, "schedule_id"), principal)
    return web.Response(status=204)
