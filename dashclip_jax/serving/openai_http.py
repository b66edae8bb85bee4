"""The HTTP edge the OpenAI-compatible servers share: OpenAI-style error
bodies, a request-body limit judged before the body is read, the error
handlers that turn every client mistake into a 4xx (never a 500), and
optional bearer-token auth.

Used by the labeling server (`curation/serve`) and the embeddings server
(`serving/endpoints`).
"""

from __future__ import annotations

import contextlib
import hmac
import json
from typing import Any, Iterable

import fastapi
from fastapi import exceptions as fastapi_exceptions
from fastapi import responses
from starlette import exceptions as starlette_exceptions


class RequestError(ValueError):
  """A request this server cannot answer: HTTP `status`, OpenAI-style."""

  def __init__(self, message: str, param: str | None = None,
               status: int = 400, code: str | None = None):
    super().__init__(message)
    self.param, self.status, self.code = param, status, code


def error_body(message: str, param: str | None = None,
               code: str | None = None,
               kind: str = "invalid_request_error") -> dict[str, Any]:
  return {"error": {"message": message, "type": kind, "param": param,
                    "code": code}}


async def _send_error(send, status: int, body: dict[str, Any],
                      headers: Iterable[tuple[bytes, bytes]] = ()) -> None:
  """An error response straight on the ASGI channel (no app involved)."""
  data = json.dumps(body).encode()
  await send({"type": "http.response.start", "status": status,
              "headers": [(b"content-type", b"application/json"),
                          (b"content-length", str(len(data)).encode()),
                          *headers]})
  await send({"type": "http.response.body", "body": data})


class BodyLimit:
  """ASGI middleware: 413 for a request body over `limit` bytes.

  Judged from Content-Length before any byte is read; without one (chunked
  uploads) the bytes are counted as the app reads them.
  """

  def __init__(self, app: Any, limit: int):
    self.app, self.limit = app, limit
    self.message = (f"the request body is over this server's limit of "
                    f"{limit} bytes (--max_request_bytes)")

  async def __call__(self, scope, receive, send) -> None:
    if scope["type"] != "http":
      return await self.app(scope, receive, send)
    length = dict(scope["headers"]).get(b"content-length", b"")
    if length.isdigit() and int(length) > self.limit:
      return await _send_error(send, 413, error_body(self.message))
    seen = 0

    async def counted():
      nonlocal seen
      message = await receive()
      seen += len(message.get("body", b""))
      if seen > self.limit:  # FastAPI passes an HTTPException through.
        raise starlette_exceptions.HTTPException(413, self.message)
      return message

    return await self.app(scope, counted, send)


class BearerAuth:
  """ASGI middleware: 401 unless `Authorization: Bearer <token>` matches
  (compared in constant time); `open_paths` need no token."""

  def __init__(self, app: Any, token: str, open_paths: Iterable[str] = ()):
    if not token:
      raise ValueError("BearerAuth needs a non-empty token")
    self.app, self.open_paths = app, frozenset(open_paths)
    self._want = f"Bearer {token}".encode()

  async def __call__(self, scope, receive, send) -> None:
    if scope["type"] != "http" or scope["path"] in self.open_paths:
      return await self.app(scope, receive, send)
    got = dict(scope["headers"]).get(b"authorization", b"")
    if hmac.compare_digest(got, self._want):
      return await self.app(scope, receive, send)
    return await _send_error(
        send, 401, error_body(
            "missing or wrong API key: send 'Authorization: Bearer <key>'",
            code="invalid_api_key"),
        [(b"www-authenticate", b"Bearer")])


def app_serving(title: str, batcher: Any,
                max_request_bytes: int) -> fastapi.FastAPI:
  """A FastAPI app that starts `batcher` (start(), async stop()) with it
  and stops it after, with `install`'s body limit and error handlers."""

  @contextlib.asynccontextmanager
  async def lifespan(_):
    batcher.start()
    yield
    await batcher.stop()

  api = fastapi.FastAPI(title=title, lifespan=lifespan)
  install(api, max_request_bytes)
  return api


def install(api: Any, max_request_bytes: int) -> None:
  """The body limit and OpenAI-style error handlers on a FastAPI app:
  validation errors and bad JSON -> 400 naming the field, `RequestError`
  -> its status, HTTP errors (404, 405, 413) -> their status."""
  api.add_middleware(BodyLimit, limit=max_request_bytes)

  def failure(status: int, message: str, param=None, code=None):
    kind = "invalid_request_error" if status < 500 else "server_error"
    return responses.JSONResponse(error_body(message, param, code, kind),
                                  status_code=status)

  @api.exception_handler(fastapi_exceptions.RequestValidationError)
  async def invalid(_, exc):
    first = exc.errors()[0]
    if first.get("type") == "json_invalid":
      return failure(400, "the request body is not valid JSON: "
                     f"{first.get('ctx', {}).get('error', first['msg'])}")
    where = ".".join(str(x) for x in first.get("loc", ())[1:])
    return failure(400, f"{where + ': ' if where else ''}{first['msg']}",
                   where or None)

  @api.exception_handler(RequestError)
  async def refused(_, exc):
    return failure(exc.status, str(exc), exc.param, exc.code)

  @api.exception_handler(starlette_exceptions.HTTPException)
  async def http_error(_, exc):
    return failure(exc.status_code, str(exc.detail))
