"""A real local upstream for the gateway's transport tests: it answers with what it received.

Routes (any method): ``/echo…`` echo as JSON; ``/status/{code}`` answers that status with a JSON error body;
``/redirect/{code}?to=/path`` redirects (``?loop`` to itself); ``/gzip`` a gzip-compressed JSON body;
``/slow?seconds=`` waits first; ``/sse`` three events one by one; ``/plain`` a text body;
``/words?say=a,b`` one chunk per word; ``/tgi_cut`` a TGI stream cut short;
``/cut`` a body broken off; ``/cors`` the upstream's own CORS headers.
"""

from __future__ import annotations

import asyncio
import gzip

import orjson
from aiohttp import web


async def echo(request: web.Request) -> web.Response:
    body = await request.read()
    data = {
        "method": request.method,
        "path": request.path,
        "query": request.raw_path.partition("?")[2],
        "headers": {str(k): v for k, v in request.headers.items()},
        "body": body.decode("utf-8", "replace"),
    }
    return web.Response(body=orjson.dumps(data), content_type="application/json", headers={"X-Upstream": "echo"})


async def status(request: web.Request) -> web.Response:
    code = int(request.match_info["code"])
    body = {"error": f"upstream says {code}", "error_type": "test"}
    return web.Response(status=code, body=orjson.dumps(body), content_type="application/json")


async def redirect(request: web.Request) -> web.Response:
    code = int(request.match_info["code"])
    location = request.raw_path if "loop" in request.query else request.query.get("to", "/echo")
    return web.Response(status=code, headers={"Location": location})


async def gzipped(request: web.Request) -> web.Response:
    await request.read()
    raw = orjson.dumps({"compressed": True, "text": "x" * 200})
    return web.Response(
        body=gzip.compress(raw), headers={"Content-Type": "application/json", "Content-Encoding": "gzip"}
    )


async def slow(request: web.Request) -> web.Response:
    await asyncio.sleep(float(request.query.get("seconds", "1")))
    return web.json_response({"slow": True})


async def sse(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    for i in range(3):
        await response.write(f"data: {i}\n\n".encode())
        await asyncio.sleep(0.05)
    await response.write_eof()
    return response


async def plain(request: web.Request) -> web.Response:
    return web.Response(text="just text", content_type="text/plain")


def echo_app() -> web.Application:
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_route("*", "/status/{code}", status)
    app.router.add_route("*", "/redirect/{code}", redirect)
    app.router.add_route("*", "/gzip", gzipped)
    app.router.add_route("*", "/slow", slow)
    app.router.add_route("*", "/sse", sse)
    app.router.add_route("*", "/plain", plain)
    app.router.add_route("*", "/words", words)
    app.router.add_route("*", "/tgi_cut", tgi_cut)
    app.router.add_route("*", "/cut", cut)
    app.router.add_route("*", "/cors", cors)
    app.router.add_route("*", "/{tail:.*}", echo)
    return app


async def words(request: web.Request) -> web.StreamResponse:
    """``/words?say=a,b,c``: each word its own chunk, 50 ms apart (``&accept``: first the Accept-Encoding seen)."""
    await request.read()
    response = web.StreamResponse(headers={"Content-Type": "text/plain"})
    await response.prepare(request)
    said = request.query.get("say", "").split(",")
    if "accept" in request.query:
        said.insert(0, request.headers.get("Accept-Encoding", "-"))
    for word in said:
        await response.write(word.encode() + b" ")
        await asyncio.sleep(0.05)
    await response.write_eof()
    return response


async def tgi_cut(request: web.Request) -> web.StreamResponse:
    """A TGI stream that breaks off after one token, without its final event."""
    await request.read()
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    token = {"id": 5, "text": "Half", "logprob": -0.1, "special": False}
    await response.write(b"data: " + orjson.dumps({"index": 1, "token": token, "generated_text": None}) + b"\n\n")
    await asyncio.sleep(0.05)
    await response.write_eof()
    return response


async def cut(request: web.Request) -> web.StreamResponse:
    """Promises 100 bytes, sends 10, then drops the connection."""
    response = web.StreamResponse(headers={"Content-Type": "text/plain"})
    response.content_length = 100
    await response.prepare(request)
    await response.write(b"0123456789")
    await asyncio.sleep(0.05)
    assert request.transport is not None
    request.transport.close()
    return response


async def cors(request: web.Request) -> web.Response:
    """An upstream with its own, too generous, CORS answer."""
    headers = {"Access-Control-Allow-Origin": "*", "Access-Control-Allow-Credentials": "true"}
    return web.json_response({"cors": "upstream"}, headers=headers)
