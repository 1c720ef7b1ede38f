"""The blob store the settings name."""

from __future__ import annotations

from openletz.settings import Settings
from openletz.storage.base import BlobStore


def make_blob_store(settings: Settings) -> BlobStore:
    if settings.blob_store == "s3":
        from openletz.storage.s3 import S3BlobStore

        return S3BlobStore(
            bucket=settings.s3_bucket,
            endpoint_url=settings.s3_endpoint_url or None,
            presign_endpoint_url=settings.s3_presign_endpoint_url or None,
            region=settings.s3_region,
            access_key=settings.s3_access_key or None,
            secret_key=settings.s3_secret_key or None,
            prefix=settings.s3_prefix,
            public_base_url=settings.s3_public_base_url or None,
            url_ttl_s=settings.signed_url_ttl_s,
            addressing_style=settings.s3_addressing_style,
            create_bucket=settings.s3_create_bucket,
        )
    from openletz.storage.local import LocalBlobStore

    return LocalBlobStore(
        settings.blob_dir,
        public_base_url=settings.resolved_public_base_url,
        secret=settings.secret_key,
        url_ttl_s=settings.signed_url_ttl_s,
    )
