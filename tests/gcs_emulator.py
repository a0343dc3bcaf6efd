"""A Cloud Storage emulator on the loopback that tensorstore (orbax's checkpoint I/O) can use.

gcp-storage-emulator serves the JSON API that gcsfs and google-cloud-storage speak, but keeps no
object generations on the wire: a download carries no `x-goog-generation` header, which
tensorstore's GCS driver reads to version what it read ("Malformed StorageGeneration"), and the
`ifGenerationMatch` / `ifGenerationNotMatch` preconditions, which its OCDBT format writes its
manifests with, are ignored. Real Cloud Storage has both. Here each object request is wrapped
(one at a time) to check those preconditions against the object's generation (0 for an object
that does not exist, as in GCS) and to return the generation of what it served.
"""

import functools
import threading
from http import HTTPStatus

from gcp_storage_emulator import server
from gcp_storage_emulator.exceptions import NotFound
from gcp_storage_emulator.handlers import objects

_ONE_AT_A_TIME = threading.Lock()  # a precondition and the write it guards are one step


def _object_name(request) -> str | None:
    if "object_id" in request.params:
        return request.params["object_id"]
    names = request.query.get("name")
    return names[0] if names else None


def _generation(storage, request, name: str) -> int:
    try:
        return int(storage.get_file_obj(request.params["bucket_name"], name)["generation"])
    except NotFound:
        return 0


def _with_generations(handler, *, reads: bool):
    @functools.wraps(handler)
    def wrapped(request, response, storage, *args, **kwargs):
        with _ONE_AT_A_TIME:
            name = _object_name(request)
            if name is None:
                return handler(request, response, storage, *args, **kwargs)
            generation = _generation(storage, request, name)
            match = request.query.get("ifGenerationMatch")
            if match is not None and int(match[0]) != generation:
                response.status = HTTPStatus.PRECONDITION_FAILED
                return None
            not_match = request.query.get("ifGenerationNotMatch")
            if not_match is not None and int(not_match[0]) == generation:
                response.status = (
                    HTTPStatus.NOT_MODIFIED if reads else HTTPStatus.PRECONDITION_FAILED
                )
                return None
            result = handler(request, response, storage, *args, **kwargs)
            if reads and response.status in (HTTPStatus.OK, HTTPStatus.PARTIAL_CONTENT):
                response["x-goog-generation"] = str(generation)
                response["x-goog-metageneration"] = "1"
            return result

    return wrapped


_WRAPPED = {
    objects.get: _with_generations(objects.get, reads=True),
    objects.download: _with_generations(objects.download, reads=True),
    objects.insert: _with_generations(objects.insert, reads=False),
    objects.delete: _with_generations(objects.delete, reads=False),
}
server.HANDLERS = tuple(
    (route, {method: _WRAPPED.get(handler, handler) for method, handler in handlers.items()})
    for route, handlers in server.HANDLERS
)


def create_server(host: str, port: int, *, default_bucket: str) -> server.Server:
    """An in-memory emulator with object generations, serving `default_bucket`."""
    return server.create_server(host, port, in_memory=True, default_bucket=default_bucket)
