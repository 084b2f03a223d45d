"""The ASGI ceiling: the same route answered with 204 by a bare Starlette app, no work."""

from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route


async def delete_session(request):
    return Response(status_code=204)


app = Starlette(routes=[Route("/sessions/{session_id}", delete_session, methods=["DELETE"])])
