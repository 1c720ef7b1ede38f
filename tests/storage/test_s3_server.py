"""A server whose images live in S3 (SeaweedFS on loopback, auth enforced)."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest

from tests._s3 import S3Server
from tests._server import Server, wait_for

pytestmark = pytest.mark.slow


def test_images_are_stored_served_and_deleted_in_s3(
    make_server: Callable[..., Server], s3_server: S3Server
) -> None:
    bucket = s3_server.new_bucket_name()
    server = make_server(
        blob_store="s3",
        s3_bucket=bucket,
        s3_endpoint_url=s3_server.endpoint_url,
        s3_access_key=s3_server.access_key,
        s3_secret_key=s3_server.secret_key,
        s3_region=s3_server.region,
        s3_prefix="images/",
        s3_create_bucket=True,
        sandbox_duration_s=0.3,
    ).start()
    assert httpx.get(f"{server.base_url}/health").json()["store"]["name"] == "s3"
    with server.client(server.create_key("s3-user")) as client:
        image_id = client.post("/images", json={"prompt": "in a bucket"}).json()["id"]
        ready = wait_for(client, image_id)
        assert ready["status"] == "ready"
        for url in ready["imageVersions"].values():
            assert url.startswith(s3_server.endpoint_url)
            assert "Signature" in url or "X-Amz-Signature" in url
            resp = httpx.get(url)
            assert resp.status_code == 200, resp.text
            assert resp.headers["content-type"] == "image/jpeg"
        keys = {o["Key"] for o in s3_server.client().list_objects_v2(Bucket=bucket)["Contents"]}
        # Each attempt's files have keys of their own: this one was the first.
        assert keys == {f"images/{image_id}/{v}-1.jpg" for v in ready["imageVersions"]}
        # Unsigned, the same objects are refused: the bucket is not public.
        plain = ready["imageVersions"]["original"].split("?", 1)[0]
        assert httpx.get(plain).status_code == 403
        assert client.delete(f"/images/{image_id}").status_code == 204
    assert "Contents" not in s3_server.client().list_objects_v2(Bucket=bucket)
