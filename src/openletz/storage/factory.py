"""The blob store the settings name."""

from __future__ import annotations

from openletz.settings import Settings
from openletz.storage.base import BlobStore


def make_blob_store(settings: Settings) -> BlobStore:
    from openletz.storage.local import LocalBlobStore

    return LocalBlobStore(
        settings.blob_dir,
        public_base_url=settings.resolved_public_base_url,
        secret=settings.secret_key,
        url_ttl_s=settings.signed_url_ttl_s,
    )
