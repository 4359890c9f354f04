# The test server's storage: content-addressed files (mounts, volume
# uploads), blobs behind an HTTP endpoint on 127.0.0.1, and volumes as
# directories. Everything lives under one state directory.
import hashlib
import os
import uuid

from aiohttp import web


def new_id(prefix):
    return "%s-%s" % (prefix, uuid.uuid4().hex[:22])


class Store:
    def __init__(self, root):
        self.root = root
        self.files = os.path.join(root, "files")  # sha256 -> content
        self.blobs = os.path.join(root, "blobs")  # blob id -> content
        self.volumes = os.path.join(root, "volumes")  # volume id -> tree
        for d in (self.files, self.blobs, self.volumes):
            os.makedirs(d, exist_ok=True)
        self.base_url = None  # set once the HTTP side listens

    # Content-addressed files (MountPutFile).
    def has_file(self, sha256_hex):
        return os.path.exists(os.path.join(self.files, safe(sha256_hex)))

    def put_file(self, sha256_hex, data):
        if hashlib.sha256(data).hexdigest() != sha256_hex:
            raise ValueError("content does not match sha256 %s" % sha256_hex)
        write_atomic(os.path.join(self.files, safe(sha256_hex)), data)

    def file_path(self, sha256_hex):
        return os.path.join(self.files, safe(sha256_hex))

    # Blobs (BlobCreate / BlobGet and their URLs).
    def new_blob(self):
        blob_id = new_id("bl")
        return blob_id, "%s/blobs/%s" % (self.base_url, blob_id)

    def blob_url(self, blob_id):
        return "%s/blobs/%s" % (self.base_url, safe(blob_id))

    def read_blob(self, blob_id):
        with open(os.path.join(self.blobs, safe(blob_id)), "rb") as f:
            return f.read()

    def put_blob(self, data):
        blob_id = new_id("bl")
        write_atomic(os.path.join(self.blobs, blob_id), data)
        return blob_id

    def volume_dir(self, volume_id):
        path = os.path.join(self.volumes, safe(volume_id))
        os.makedirs(path, exist_ok=True)
        return path

    # The HTTP side: blob uploads and downloads, volume file blocks, and a
    # read-only view of the server's state for tests.
    def routes(self, inspect):
        async def put_blob(request):
            blob_id = safe(request.match_info["id"])
            data = await request.read()
            write_atomic(os.path.join(self.blobs, blob_id), data)
            return web.Response(status=200, headers={"ETag": '"%s"' % hashlib.md5(data).hexdigest()})

        async def get_blob(request):
            path = os.path.join(self.blobs, safe(request.match_info["id"]))
            if not os.path.exists(path):
                return web.Response(status=404, text="no such blob")
            return web.FileResponse(path)

        async def get_block(request):
            # /volume-files/{volume}/{start}/{len}/{path}
            root = self.volume_dir(request.match_info["volume"])
            path = inside(root, request.match_info["path"])
            start, length = int(request.match_info["start"]), int(request.match_info["len"])
            with open(path, "rb") as f:
                f.seek(start)
                return web.Response(body=f.read(length))

        async def get_state(request):
            return web.json_response(inspect())

        app = web.Application(client_max_size=1 << 31)
        app.router.add_put("/blobs/{id}", put_blob)
        app.router.add_get("/blobs/{id}", get_blob)
        app.router.add_get("/volume-files/{volume}/{start}/{len}/{path:.*}", get_block)
        app.router.add_get("/_state", get_state)
        return app


def safe(name):
    if not name or "/" in name or name in (".", ".."):
        raise ValueError("bad name %r" % name)
    return name


def inside(root, rel):
    """`rel` under `root`, refusing anything that climbs out of it."""
    parts = [p for p in rel.strip("/").split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise ValueError("path %r leaves the volume" % rel)
    return os.path.join(root, *parts) if parts else root


def write_atomic(path, data):
    tmp = "%s.%s.part" % (path, uuid.uuid4().hex[:8])
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
