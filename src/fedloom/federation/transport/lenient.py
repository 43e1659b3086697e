"""Malformed messages get ``INVALID_ARGUMENT`` naming what could not be read, instead of the
``INTERNAL``/``UNKNOWN`` gRPC gives when a request fails to parse before any handler runs.

Each method's parser is wrapped to return a :class:`Malformed` marker instead of raising, and
each handler to refuse the marker (for streams: any message of the stream) with a clear status.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import grpc
from google.protobuf.message import DecodeError


class Malformed:
    """A message that could not be parsed (stands in for it until the handler refuses it)."""

    def __init__(self, what: str, error: Exception) -> None:
        self.text = f"a malformed {what} message: {error}; is the peer a fedloom of the same " \
                    "version?"


def lenient(service: str, handlers: Mapping[str, Any]) -> grpc.GenericRpcHandler:
    """The generic handler of ``service`` from its method handlers, with lenient parsing."""
    return grpc.method_handlers_generic_handler(
        service, {name: _wrapped(handler) for name, handler in handlers.items()})


class Collector:
    """Stands in for a server in the generated ``add_XServicer_to_server``: keeps the method
    handlers it is given."""

    def __init__(self) -> None:
        self.handlers: dict[str, Any] = {}

    def add_generic_rpc_handlers(self, handlers: object) -> None:
        pass  # the same handlers arrive below, by name

    def add_registered_method_handlers(self, service: str, handlers: dict[str, Any]) -> None:
        self.handlers = dict(handlers)


def _parser(parse: Callable[[bytes], Any] | None, what: str) -> Callable[[bytes], Any] | None:
    if parse is None:  # raw bytes: nothing to parse
        return None

    def tolerant(data: bytes) -> Any:
        try:
            return parse(data)
        except (DecodeError, ValueError) as exc:
            return Malformed(what, exc)

    return tolerant


def _wrapped(handler: Any) -> Any:
    parse = handler.request_deserializer
    what = getattr(getattr(parse, "__self__", None), "__name__", "request")
    handler = handler._replace(request_deserializer=_parser(parse, what))
    if handler.request_streaming:
        behaviour = handler.stream_unary or handler.stream_stream
        key = "stream_unary" if handler.stream_unary else "stream_stream"
        return handler._replace(**{key: _stream_request(behaviour)})
    if handler.unary_stream is not None:
        return handler._replace(unary_stream=_unary_stream(handler.unary_stream))
    return handler._replace(unary_unary=_unary(handler.unary_unary))


async def _refuse(context: Any, malformed: Malformed) -> None:
    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, malformed.text)


def _unary(behaviour: Callable[..., Any]) -> Callable[..., Any]:
    async def checked(request: Any, context: Any) -> Any:
        if isinstance(request, Malformed):
            await _refuse(context, request)
        return await behaviour(request, context)
    return checked


def _unary_stream(behaviour: Callable[..., Any]) -> Callable[..., Any]:
    async def checked(request: Any, context: Any) -> AsyncIterator[Any]:
        if isinstance(request, Malformed):
            await _refuse(context, request)
        async for reply in behaviour(request, context):
            yield reply
    return checked


def _stream_request(behaviour: Callable[..., Any]) -> Callable[..., Any]:
    async def checked(requests: AsyncIterator[Any], context: Any) -> Any:
        async def valid() -> AsyncIterator[Any]:
            async for request in requests:
                if isinstance(request, Malformed):
                    await _refuse(context, request)
                yield request
        return await behaviour(valid(), context)
    return checked
