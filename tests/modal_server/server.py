# A Modal-protocol server for tests: the gRPC service the pinned `modal` SDK
# talks to (modal_proto's ModalClient over grpclib, plain HTTP/2 on
# 127.0.0.1), written in this project from the protobuf definitions that ship
# with the SDK. The real `modal` CLI and SDK, given MODAL_SERVER_URL, deploy,
# call, map, spawn, poll, cancel, read logs and sync volumes through their own
# code paths; deployed functions run for real in bubblewrap containers
# (containers.py, runner.py). What it models, and what only a live Modal
# account can show, is listed in README's "Running on Modal".
#
#   python server.py --state DIR --token-id ID --token-secret SECRET
# prints one JSON line {"url": gRPC URL, "http": blob/state URL} once it
# listens, and exits when its stdin closes (killing every container).
import argparse
import asyncio
import json
import os
import sys

import grpclib.const
import grpclib.events
import grpclib.server
from aiohttp import web
from grpclib.exceptions import GRPCError
from modal_proto import api_grpc, api_pb2

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from calls import Calls  # noqa: E402
from control import Control  # noqa: E402
from store import Store  # noqa: E402

Status = grpclib.const.Status


def unimplemented_base():
    """ModalClientBase with every RPC this server does not model answering
    UNIMPLEMENTED by name, so a new SDK code path fails loudly."""
    ns = {}
    for name in api_grpc.ModalClientBase.__abstractmethods__:
        async def handler(self, stream, _name=name):
            raise GRPCError(Status.UNIMPLEMENTED, "the modal test server does not model %s" % _name)
        ns[name] = handler
    return type("Unmodelled", (api_grpc.ModalClientBase,), ns)


class Server(Control, unimplemented_base()):
    def __init__(self, state, token_id, token_secret):
        self.state = state
        self.token = (token_id, token_secret)
        self.store = Store(state)
        self.calls = Calls(self)
        self.containers = {}
        Control.__init__(self)

    async def check_token(self, event):
        md = event.metadata
        if (md.get("x-modal-token-id"), md.get("x-modal-token-secret")) != self.token:
            raise GRPCError(Status.UNAUTHENTICATED, "Token validation failed: invalid token id or secret")

    def inspect(self):
        return {
            "apps": self.inspect_apps(),
            "calls": self.calls.inspect(),
            "containers": len(self.containers),
            "blobs": len(os.listdir(self.store.blobs)),
            "volumes": {name: self.store.volume_dir(vid) for name, vid in self.volume_names.items()},
        }

    async def close(self):
        for container in list(self.containers.values()):
            await container.stop()


async def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--state", required=True)
    parser.add_argument("--token-id", required=True)
    parser.add_argument("--token-secret", required=True)
    args = parser.parse_args()
    os.makedirs(args.state, exist_ok=True)
    servicer = Server(args.state, args.token_id, args.token_secret)

    grpc = grpclib.server.Server([servicer])
    grpclib.events.listen(grpc, grpclib.events.RecvRequest, servicer.check_token)
    await grpc.start("127.0.0.1", 0)
    grpc_port = grpc._server.sockets[0].getsockname()[1]

    runner = web.AppRunner(servicer.store.routes(servicer.inspect), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    http_port = site._server.sockets[0].getsockname()[1]
    servicer.store.base_url = "http://127.0.0.1:%d" % http_port

    print(json.dumps({"url": "http://127.0.0.1:%d" % grpc_port, "http": servicer.store.base_url}), flush=True)
    # Runs until whoever started it closes our stdin (or dies).
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while await reader.read(4096):
        pass
    await servicer.close()
    grpc.close()
    await runner.cleanup()


if __name__ == "__main__":
    asyncio.run(main())
