# Volumes of the Modal test server (filesystem version 1): one directory per
# volume, filled from the content-addressed store by VolumePutFiles, listed,
# read in blocks over HTTP and removed; containers bind it at its mount path,
# so commits and reloads have nothing left to do.
import os
import shutil

import grpclib.const
from google.protobuf import empty_pb2
from grpclib.exceptions import GRPCError
from modal_proto import api_pb2

from store import inside, new_id

Status = grpclib.const.Status
BLOCK = 8 * 1024 * 1024
CREATE = (
    api_pb2.OBJECT_CREATION_TYPE_CREATE_IF_MISSING,
    api_pb2.OBJECT_CREATION_TYPE_CREATE_FAIL_IF_EXISTS,
)


class Volumes:
    def __init__(self):
        self.volume_names = {}  # name -> volume id

    def volume_root(self, volume_id):
        if volume_id not in self.volume_names.values():
            raise GRPCError(Status.NOT_FOUND, "Volume %s not found" % volume_id)
        return self.store.volume_dir(volume_id)

    def path_in(self, volume_id, path):
        try:
            return inside(self.volume_root(volume_id), path)
        except ValueError as e:
            raise GRPCError(Status.INVALID_ARGUMENT, str(e))

    async def VolumeGetOrCreate(self, stream):
        req = await stream.recv_message()
        vid = self.volume_names.get(req.deployment_name)
        if vid is None:
            if req.deployment_name and req.object_creation_type not in CREATE:
                raise GRPCError(Status.NOT_FOUND, "Volume '%s' not found in environment 'main'" % req.deployment_name)
            vid = new_id("vo")
            self.volume_names[req.deployment_name or vid] = vid
            self.store.volume_dir(vid)
        await stream.send_message(api_pb2.VolumeGetOrCreateResponse(
            volume_id=vid,
            version=api_pb2.VOLUME_FS_VERSION_V1,
            metadata=api_pb2.VolumeMetadata(version=api_pb2.VOLUME_FS_VERSION_V1, name=req.deployment_name),
        ))

    async def VolumeHeartbeat(self, stream):
        await stream.recv_message()
        await stream.send_message(empty_pb2.Empty())

    async def VolumeCommit(self, stream):
        await stream.recv_message()
        await stream.send_message(api_pb2.VolumeCommitResponse(skip_reload=True))

    async def VolumeReload(self, stream):
        await stream.recv_message()
        await stream.send_message(empty_pb2.Empty())

    async def VolumePutFiles(self, stream):
        req = await stream.recv_message()
        for f in req.files:
            target = self.path_in(req.volume_id, f.filename)
            if req.disallow_overwrite_existing_files and os.path.exists(target):
                raise GRPCError(Status.ALREADY_EXISTS, "%s exists in the volume" % f.filename)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            tmp = target + ".part"
            shutil.copyfile(self.store.file_path(f.sha256_hex), tmp)
            os.chmod(tmp, (f.mode or 0o644) & 0o777)
            os.replace(tmp, target)
        await stream.send_message(empty_pb2.Empty())

    async def VolumeListFiles(self, stream):
        req = await stream.recv_message()
        root = self.volume_root(req.volume_id)
        start = self.path_in(req.volume_id, req.path or "/")
        entries = []
        for dirpath, dirnames, filenames in os.walk(start):
            for name in sorted(dirnames) + sorted(filenames):
                full = os.path.join(dirpath, name)
                st = os.lstat(full)
                kind = api_pb2.FileEntry.DIRECTORY if os.path.isdir(full) else api_pb2.FileEntry.FILE
                if os.path.islink(full):
                    kind = api_pb2.FileEntry.SYMLINK
                entries.append(api_pb2.FileEntry(
                    path=os.path.relpath(full, root), type=kind, mtime=int(st.st_mtime), size=st.st_size))
            if not req.recursive:
                break
        for i in range(0, len(entries), 100):
            await stream.send_message(api_pb2.VolumeListFilesResponse(entries=entries[i:i + 100]))

    async def VolumeGetFile2(self, stream):
        req = await stream.recv_message()
        target = self.path_in(req.volume_id, req.path)
        if not os.path.isfile(target) or os.path.islink(target):
            raise GRPCError(Status.NOT_FOUND, "No such file: %s" % req.path)
        size = os.path.getsize(target)
        length = req.len or size - req.start
        urls = []
        pos = req.start
        while pos < req.start + length:
            n = min(BLOCK - pos % BLOCK, req.start + length - pos)
            urls.append("%s/volume-files/%s/%d/%d/%s" % (self.store.base_url, req.volume_id, pos, n, req.path.lstrip("/")))
            pos += n
        await stream.send_message(api_pb2.VolumeGetFile2Response(get_urls=urls, size=size, start=req.start, len=length))

    async def VolumeRemoveFile(self, stream):
        req = await stream.recv_message()
        target = self.path_in(req.volume_id, req.path)
        if os.path.isdir(target) and not os.path.islink(target):
            if not req.recursive:
                raise GRPCError(Status.INVALID_ARGUMENT, "%s is a directory" % req.path)
            shutil.rmtree(target)
        elif os.path.lexists(target):
            os.remove(target)
        else:
            raise GRPCError(Status.NOT_FOUND, "No such file: %s" % req.path)
        await stream.send_message(empty_pb2.Empty())
