# The deploy side of the Modal test server: client hello, apps (create,
# publish, look up by name, stop), functions (precreate, create, get), images
# (built at once: nothing is installed), mounts and the content-addressed
# files behind them, blobs, and secrets.
import time

import grpclib.const
from grpclib.exceptions import GRPCError
from modal_proto import api_pb2

from invocations import Invocations
from store import new_id
from volumes import Volumes

Status = grpclib.const.Status
PICKLE = [api_pb2.DATA_FORMAT_PICKLE]


class Fn:
    def __init__(self, fid, app_id, name):
        self.id = fid
        self.app_id = app_id
        self.name = name
        self.definition = api_pb2.Function()
        self.mount_files = []  # (remote path, sha256, mode)
        self.secret_env = {}
        self.volumes = []  # (mount path, host dir, read only)
        self.stopped = False
        self.metadata = None


class App:
    def __init__(self, app_id, description):
        self.id = app_id
        self.description = description
        self.name = None
        self.state = api_pb2.APP_STATE_INITIALIZING
        self.functions = {}  # tag -> function id


async def unary(stream, handler):
    request = await stream.recv_message()
    await stream.send_message(await handler(request))


class Control(Invocations, Volumes):
    def __init__(self):
        self.apps = {}
        self.deployed = {}  # (environment, name) -> app id
        self.functions = {}
        self.mounts = {}  # mount id -> [(remote, sha256, mode)]
        self.secrets = {}  # secret id -> env
        self.secret_names = {}
        Volumes.__init__(self)

    def inspect_apps(self):
        return [
            {"id": a.id, "name": a.name, "state": api_pb2.AppState.Name(a.state), "functions": sorted(a.functions)}
            for a in self.apps.values()
        ]

    async def ClientHello(self, stream):
        await stream.recv_message()
        await stream.send_message(api_pb2.ClientHelloResponse())

    async def EnvironmentGetOrCreate(self, stream):
        async def handle(req):
            name = req.deployment_name or "main"
            return api_pb2.EnvironmentGetOrCreateResponse(
                environment_id="en-" + name,
                metadata=api_pb2.EnvironmentMetadata(
                    name=name,
                    settings=api_pb2.EnvironmentSettings(image_builder_version="2025.06", webhook_suffix="modal.run"),
                ),
            )
        await unary(stream, handle)

    # Apps.
    async def AppGetByDeploymentName(self, stream):
        async def handle(req):
            app_id = self.deployed.get((req.environment_name or "main", req.name), "")
            return api_pb2.AppGetByDeploymentNameResponse(app_id=app_id)
        await unary(stream, handle)

    async def AppCreate(self, stream):
        async def handle(req):
            app = App(new_id("ap"), req.description)
            self.apps[app.id] = app
            return api_pb2.AppCreateResponse(app_id=app.id)
        await unary(stream, handle)

    async def AppGetLayout(self, stream):
        async def handle(req):
            app = self.app(req.app_id)
            return api_pb2.AppGetLayoutResponse(app_layout=api_pb2.AppLayout(function_ids=dict(app.functions)))
        await unary(stream, handle)

    async def AppPublish(self, stream):
        async def handle(req):
            app = self.app(req.app_id)
            app.name = req.name
            app.state = api_pb2.APP_STATE_DEPLOYED
            app.functions = dict(req.function_ids)
            self.deployed[("main", req.name)] = app.id
            return api_pb2.AppPublishResponse(url="http://127.0.0.1/apps/%s" % app.id, deployed_at=time.time())
        await unary(stream, handle)

    async def AppStop(self, stream):
        async def handle(req):
            app = self.app(req.app_id)
            app.state = api_pb2.APP_STATE_STOPPED
            self.deployed = {k: v for k, v in self.deployed.items() if v != app.id}
            for fid in app.functions.values():
                fn = self.functions.get(fid)
                if fn is not None:
                    await self.calls.stop_function(fn)
            from google.protobuf import empty_pb2
            return empty_pb2.Empty()
        await unary(stream, handle)

    async def AppClientDisconnect(self, stream):
        from google.protobuf import empty_pb2
        await unary(stream, lambda req: _const(empty_pb2.Empty()))

    async def AppHeartbeat(self, stream):
        from google.protobuf import empty_pb2
        await unary(stream, lambda req: _const(empty_pb2.Empty()))

    def app(self, app_id):
        app = self.apps.get(app_id)
        if app is None:
            raise GRPCError(Status.NOT_FOUND, "App %s not found" % app_id)
        return app

    # Functions.
    async def FunctionPrecreate(self, stream):
        async def handle(req):
            fid = req.existing_function_id or new_id("fu")
            return api_pb2.FunctionPrecreateResponse(
                function_id=fid,
                handle_metadata=self.metadata(req.function_name, req.function_type, req.app_id),
            )
        await unary(stream, handle)

    def metadata(self, name, function_type, app_id):
        return api_pb2.FunctionHandleMetadata(
            function_name=name,
            function_type=function_type,
            definition_id=new_id("de"),
            supported_input_formats=PICKLE,
            supported_output_formats=PICKLE,
            app_id=app_id,
        )

    async def FunctionCreate(self, stream):
        async def handle(req):
            # Either one definition, or (GPU fallbacks) ranked copies of it.
            if req.HasField("function_data"):
                data = req.function_data
                d = api_pb2.Function()
                d.CopyFrom(data.ranked_functions[0].function)
            else:
                d = req.function
                data = api_pb2.FunctionData(
                    module_name=d.module_name,
                    function_name=d.function_name,
                    function_type=d.function_type,
                    timeout_secs=d.timeout_secs,
                    ranked_functions=[api_pb2.FunctionData.RankedFunction(rank=0, function=d)],
                )
            fid = req.existing_function_id or new_id("fu")
            fn = self.functions.get(fid)
            if fn is None or fn.app_id != req.app_id:
                fn = Fn(fid, req.app_id, d.function_name)
            fn.definition = d
            fn.mount_files = [f for mid in d.mount_ids for f in self.mounts.get(mid, [])]
            missing = [mid for mid in d.mount_ids if mid not in self.mounts]
            if missing:
                raise GRPCError(Status.NOT_FOUND, "mounts %s not found" % missing)
            fn.secret_env = {}
            for sid in d.secret_ids:
                fn.secret_env.update(self.secrets[sid])
            fn.volumes = [
                (m.mount_path, self.store.volume_dir(m.volume_id), m.read_only) for m in d.volume_mounts
            ]
            fn.metadata = self.metadata(d.function_name, d.function_type, req.app_id)
            fn.data = data
            self.functions[fid] = fn
            self.app(req.app_id).functions[d.function_name] = fid
            return api_pb2.FunctionCreateResponse(function_id=fid, function_data=data, handle_metadata=fn.metadata)
        await unary(stream, handle)

    async def FunctionGet(self, stream):
        async def handle(req):
            env = req.environment_name or "main"
            app_id = self.deployed.get((env, req.app_name))
            fid = self.apps[app_id].functions.get(req.object_tag) if app_id else None
            if fid is None:
                raise GRPCError(
                    Status.NOT_FOUND,
                    "Lookup failed for Function '%s' from the '%s' app: App '%s' not found in environment '%s'."
                    % (req.object_tag, req.app_name, req.app_name, env),
                )
            fn = self.functions[fid]
            return api_pb2.FunctionGetResponse(function_id=fid, handle_metadata=fn.metadata, function=fn.data)
        await unary(stream, handle)

    # Images: "built" at once; the container runs the host's interpreter.
    async def ImageGetOrCreate(self, stream):
        async def handle(req):
            return api_pb2.ImageGetOrCreateResponse(
                image_id=new_id("im"),
                result=api_pb2.GenericResult(status=api_pb2.GenericResult.GENERIC_STATUS_SUCCESS),
                metadata=api_pb2.ImageMetadata(python_version_info="3.11"),
            )
        await unary(stream, handle)

    async def ImageJoinStreaming(self, stream):
        await stream.recv_message()
        await stream.send_message(api_pb2.ImageJoinStreamingResponse(
            result=api_pb2.GenericResult(status=api_pb2.GenericResult.GENERIC_STATUS_SUCCESS), eof=True))

    # Mounts, files and blobs.
    async def MountPutFile(self, stream):
        async def handle(req):
            if req.WhichOneof("data_oneof") == "data":
                self.store.put_file(req.sha256_hex, req.data)
            elif req.WhichOneof("data_oneof") == "data_blob_id":
                self.store.put_file(req.sha256_hex, self.store.read_blob(req.data_blob_id))
            return api_pb2.MountPutFileResponse(exists=self.store.has_file(req.sha256_hex))
        await unary(stream, handle)

    async def MountBatchedCheckExistence(self, stream):
        async def handle(req):
            return api_pb2.MountBatchedCheckExistenceResponse(
                missing_sha256_hex_hashes=[h for h in req.sha256_hex_hashes if not self.store.has_file(h)])
        await unary(stream, handle)

    async def MountGetOrCreate(self, stream):
        async def handle(req):
            missing = [f.filename for f in req.files if not self.store.has_file(f.sha256_hex)]
            if missing:
                raise GRPCError(Status.FAILED_PRECONDITION, "files not uploaded: %s" % missing)
            mid = new_id("mo")
            self.mounts[mid] = [(f.filename, f.sha256_hex, f.mode) for f in req.files]
            return api_pb2.MountGetOrCreateResponse(mount_id=mid)
        await unary(stream, handle)

    async def BlobCreate(self, stream):
        async def handle(req):
            blob_id, url = self.store.new_blob()
            return api_pb2.BlobCreateResponse(
                blob_id=blob_id, blob_ids=[blob_id], upload_urls=api_pb2.UploadUrlList(items=[url]))
        await unary(stream, handle)

    async def BlobGet(self, stream):
        async def handle(req):
            return api_pb2.BlobGetResponse(download_url=self.store.blob_url(req.blob_id))
        await unary(stream, handle)

    # Secrets.
    async def SecretGetOrCreate(self, stream):
        async def handle(req):
            if req.deployment_name and not req.env_dict:
                sid = self.secret_names.get(req.deployment_name)
                if sid is None:
                    raise GRPCError(Status.NOT_FOUND, "Secret '%s' not found in environment 'main'" % req.deployment_name)
            else:
                sid = new_id("st")
                self.secrets[sid] = dict(req.env_dict)
                if req.deployment_name:
                    self.secret_names[req.deployment_name] = sid
            return api_pb2.SecretGetOrCreateResponse(secret_id=sid)
        await unary(stream, handle)


async def _const(value):
    return value
