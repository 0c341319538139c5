"""How api/aio.py puts warmd's methods on a grpc.aio server: through one generic handler that finds each
method by its full name, and never as registered methods (grpc.aio's serving loop waits again on one
pending request per registered method for every call that arrives: with ~50 methods, most of the front's
cost over a bare echo under load). And how a call waiting on the loop is woken."""
from __future__ import annotations

import asyncio
import threading
from concurrent import futures
from types import SimpleNamespace
from typing import Any

import grpc

from warmd.api import aio
from warmd.v1 import warmd_pb2, warmd_pb2_grpc
from warmd.v2 import inference_pb2, inference_pb2_grpc


class RecordingServer:
    def __init__(self) -> None:
        self.generic: list[Any] = []
        self.registered: list[str] = []

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        self.generic.extend(handlers)

    def add_registered_method_handlers(self, service: str, handlers: Any) -> None:
        self.registered.append(service)


def _served() -> RecordingServer:
    methods = aio.Methods()
    warmd_pb2_grpc.add_WarmdServicer_to_server(warmd_pb2_grpc.WarmdServicer(), methods)
    inference_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(
        inference_pb2_grpc.GRPCInferenceServiceServicer(), methods)
    server = RecordingServer()
    with futures.ThreadPoolExecutor(max_workers=1) as pool:
        aio.serve(server, methods, pool, lambda method: None, lambda: None, lambda serializer: serializer)
    return server


def _full_names() -> list[str]:
    return [f"/{service.full_name}/{method.name}"
            for descriptor in (warmd_pb2.DESCRIPTOR, inference_pb2.DESCRIPTOR)
            for service in descriptor.services_by_name.values() for method in service.methods]


def test_every_method_of_every_service_is_found_by_one_generic_handler() -> None:
    server = _served()
    assert len(server.generic) == 1
    handler = server.generic[0]
    names = _full_names()
    assert len(names) > 40
    for name in names:
        found = handler.service(SimpleNamespace(method=name, invocation_metadata=()))
        assert isinstance(found, grpc.RpcMethodHandler), name


def test_an_unknown_method_finds_no_handler_so_grpc_answers_unimplemented() -> None:
    handler = _served().generic[0]
    assert handler.service(SimpleNamespace(method="/warmd.v1.Warmd/NoSuchMethod", invocation_metadata=())) is None
    assert handler.service(SimpleNamespace(method="/other.Service/ModelInfer", invocation_metadata=())) is None


def test_no_method_is_registered_with_the_server() -> None:
    assert _served().registered == []


def test_a_grant_on_the_loop_resolves_its_waiter_at_once_and_one_from_a_thread_soon() -> None:
    async def grants() -> tuple[bool, bool]:
        loop = asyncio.get_running_loop()
        here, there = loop.create_future(), loop.create_future()
        aio._wake(loop, here)                # a batch that ran on the loop grants its seats
        at_once = here.done()
        thread = threading.Thread(target=aio._wake, args=(loop, there))     # a worker thread leaving its slot
        thread.start()
        thread.join()
        await asyncio.wait_for(there, timeout=30)
        return at_once, there.done()

    assert asyncio.run(grants()) == (True, True)
