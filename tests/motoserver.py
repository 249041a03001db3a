"""moto's S3 server for the suite (``python tests/motoserver.py -H 127.0.0.1 -p PORT``), with one
test-server artifact taken out.

moto's ``ListObjectVersions`` deep-copies every version of every key of the bucket — bodies
included — before it filters by prefix, so one listing of ``.claims/x/`` in a bucket holding a
200 MiB input costs seconds, longer than the daemon's claim timeout. B2's listings do not read
bodies, and the ``versions`` claim protocol lists versions for every claim, so on the B2-faithful
server (every bucket versioned) a test with large inputs measured moto, not the daemon. The copies
exist only so that moto can set ``is_latest`` without touching the stored keys; here they copy
the attributes and leave the body behind, which gives the same answer. Nothing else of moto
changes.
"""

from __future__ import annotations

import copy
import io
import sys
import types


def _shallow(value: object) -> object:
    """A copy of a FakeKey (or delete marker) for a listing: its attributes, not its body. The
    ETag is computed on the stored key first (moto computes it lazily from the body); the copy gets
    an empty body of its own, since moto closes a key's body when the key is collected."""
    if hasattr(value, "_value_buffer"):
        value.etag  # noqa: B018 - computed and cached on the stored key
    clone = object.__new__(type(value))
    clone.__dict__.update(value.__dict__)
    if hasattr(value, "_value_buffer"):
        clone.__dict__.update(_value_buffer=io.BytesIO(), multipart=None, disposed=True)
    return clone


class _CopyForListings:
    """Stands for the ``copy`` module inside ``list_object_versions`` only."""

    def __getattr__(self, name: str) -> object:
        return getattr(copy, name)

    @staticmethod
    def deepcopy(value: object, memo: dict | None = None) -> object:
        if isinstance(value, list) and all(hasattr(v, "__dict__") for v in value):
            return [_shallow(v) for v in value]
        return copy.deepcopy(value, memo)


def patch_list_object_versions() -> None:
    from moto.s3 import models

    original = models.S3Backend.list_object_versions
    # The same code with ``copy`` bound to _CopyForListings (a moto that no longer deep-copies
    # there is left as it is: every other name still means the real module).
    patched = types.FunctionType(
        original.__code__,
        {**original.__globals__, "copy": _CopyForListings()},
        original.__name__,
        original.__defaults__,
        original.__closure__,
    )
    patched.__kwdefaults__ = original.__kwdefaults__
    models.S3Backend.list_object_versions = patched


if __name__ == "__main__":
    patch_list_object_versions()
    from moto.server import main

    main(sys.argv[1:])
