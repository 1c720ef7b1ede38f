"""The POST /images contract field by field, and the list, privacy and interruption routes.

Every case goes through HTTP to the session's real server, as a LetzAI client would.
Accepted bodies are deleted at once (their generation is not needed), so that the
queue stays short for the tests that do wait for an image.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest

from tests._server import wait_for

MAX_SEED = 2**32 - 1
SMALL = {"width": 520, "height": 520, "quality": 1}
FIELDS = [
    *("id", "prompt", "status", "progress", "previewImage", "hasWatermark", "privacy"),
    *("createdAt", "imageVersions", "width", "height", "quality", "creativity"),
    *("systemVersion", "mode", "seed", "baseModel", "webhookUrl", "engine", "sandbox"),
]


def assert_error(resp: httpx.Response, status: int, *needles: str) -> str:
    """``resp`` is the hosted API's error shape with ``status``; its message holds ``needles``."""
    assert resp.status_code == status, (resp.status_code, resp.text)
    assert resp.headers["content-type"].startswith("application/json")
    body = resp.json()
    assert set(body) == {"statusCode", "message", "error"}, body
    assert body["statusCode"] == status
    assert isinstance(body["error"], str)
    assert body["error"]
    message = body["message"]
    assert isinstance(message, str)
    assert message
    for needle in needles:
        assert needle in message, (needle, message)
    return message


@pytest.fixture
def create(client: httpx.Client) -> Iterator[Callable[..., dict[str, Any]]]:
    """POST /images with ``prompt`` plus ``fields``, expect 200; the image is deleted after."""
    made: list[str] = []

    def make(**fields: Any) -> dict[str, Any]:
        resp = client.post("/images", json={"prompt": "a red fox", **fields})
        assert resp.status_code == 200, resp.text
        body: dict[str, Any] = resp.json()
        made.append(body["id"])
        return body

    yield make
    for image_id in made:
        client.delete(f"/images/{image_id}")


# -- POST /images: accepted values ---------------------------------------------------------

ACCEPTED: list[tuple[str, Any, Any]] = [
    # (field, value sent, value echoed)
    ("prompt", "x", "x"),
    ("prompt", "p" * 4000, "p" * 4000),
    ("prompt", "  padded, kept as sent  ", "  padded, kept as sent  "),
    ("prompt", "@someone:0.8 in Paris, ünïcødé ✓ 🦊", "@someone:0.8 in Paris, ünïcødé ✓ 🦊"),
    ("width", 520, 520),
    ("width", 2160, 2160),
    ("width", 1600.0, 1600),
    ("height", 520, 520),
    ("height", 2160, 2160),
    ("height", 1600.0, 1600),
    ("quality", 1, 1),
    ("quality", 5, 5),
    ("quality", 3.0, 3),
    ("creativity", 1, 1),
    ("creativity", 5, 5),
    ("creativity", 4.0, 4),
    ("hasWatermark", False, False),
    ("hasWatermark", True, True),
    ("systemVersion", 2, 2),
    ("systemVersion", 3, 3),
    ("systemVersion", 3.0, 3),
    ("mode", "default", "default"),
    ("mode", "sigma", "sigma"),
    ("mode", "turbo", "turbo"),
    ("webhookUrl", "http://example.com/hook", "http://example.com/hook"),
    (
        "webhookUrl",
        "https://hooks.example.org:8443/a/b?x=1#f",
        "https://hooks.example.org:8443/a/b?x=1#f",
    ),
    ("webhookUrl", "http://127.0.0.1:9/cb", "http://127.0.0.1:9/cb"),
    ("baseModel", "flux-dev", "flux-dev"),
    ("seed", 0, 0),
    ("seed", MAX_SEED, MAX_SEED),
    ("seed", 42.0, 42),
]


@pytest.mark.parametrize(
    ("field", "sent", "echoed"), ACCEPTED, ids=[f"{f}={s!r}"[:60] for f, s, _ in ACCEPTED]
)
def test_accepted_value_is_stored_and_echoed(
    create: Callable[..., dict[str, Any]], client: httpx.Client, field: str, sent: Any, echoed: Any
) -> None:
    body = create(**{field: sent})
    assert body[field] == echoed
    assert type(body[field]) is type(echoed)
    again = client.get(f"/images/{body['id']}").json()
    assert again[field] == echoed


def test_defaults(create: Callable[..., dict[str, Any]]) -> None:
    body = create()
    assert body["width"] == 1600
    assert body["height"] == 1600
    assert body["quality"] == 2
    assert body["creativity"] == 2
    assert body["hasWatermark"] is True
    assert body["systemVersion"] == 3
    assert body["mode"] == "default"
    assert body["webhookUrl"] is None
    assert body["baseModel"] is None
    assert body["privacy"] == "private"
    assert isinstance(body["seed"], int)
    assert 0 <= body["seed"] <= MAX_SEED


def test_null_optional_fields_mean_their_default(create: Callable[..., dict[str, Any]]) -> None:
    body = create(systemVersion=None, webhookUrl=None, baseModel=None, seed=None)
    assert body["systemVersion"] == 3
    assert body["webhookUrl"] is None
    assert body["baseModel"] is None
    assert 0 <= body["seed"] <= MAX_SEED


def test_create_response_is_the_image_object(client: httpx.Client) -> None:
    resp = client.post(
        "/images",
        json={"prompt": "a lighthouse", **SMALL, "webhookUrl": "https://x.test/h", "seed": 7},
        headers={"Accept": "application/json"},
    )
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    body = resp.json()
    try:
        assert set(FIELDS) <= set(body), set(FIELDS) - set(body)
        assert isinstance(body["id"], str)
        assert body["id"]
        assert body["prompt"] == "a lighthouse"
        assert body["status"] in ("new", "in progress")
        assert isinstance(body["progress"], int)
        assert 0 <= body["progress"] < 100
        if body["previewImage"] is not None:
            base64.b64decode(body["previewImage"], validate=True)
        assert body["hasWatermark"] is True
        assert body["privacy"] == "private"
        assert body["imageVersions"] == {}
        assert body["createdAt"].endswith("Z")
        created = datetime.fromisoformat(body["createdAt"].replace("Z", "+00:00"))
        assert created.utcoffset() == timedelta(0)
        assert abs((datetime.now(created.tzinfo) - created).total_seconds()) < 600
        assert (body["width"], body["height"], body["quality"]) == (520, 520, 1)
        assert body["creativity"] == 2
        assert body["seed"] == 7
        assert body["webhookUrl"] == "https://x.test/h"
        assert body["engine"] == "sandbox"
        assert body["sandbox"] is True
    finally:
        client.delete(f"/images/{body['id']}")


def test_json_content_type_with_charset(client: httpx.Client) -> None:
    resp = client.post(
        "/images",
        content=json.dumps({"prompt": "charset"}).encode(),
        headers={"Content-Type": "application/json; charset=utf-8"},
    )
    assert resp.status_code == 200, resp.text
    client.delete(f"/images/{resp.json()['id']}")


# -- systemVersion: the account's own default ---------------------------------------------


@pytest.mark.parametrize("account_default", [2, 3])
def test_system_version_defaults_to_the_account_setting(
    new_client: Callable[..., httpx.Client], account_default: int
) -> None:
    c = new_client(system_version=account_default)
    made = [c.post("/images", json={"prompt": "v"}).json()]
    assert made[0]["systemVersion"] == account_default
    other = 5 - account_default  # 2 <-> 3
    made.append(c.post("/images", json={"prompt": "v", "systemVersion": other}).json())
    assert made[1]["systemVersion"] == other
    for image in made:
        c.delete(f"/images/{image['id']}")


# -- seed ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prompt", "seed"),
    [
        ("a cat [seed:42]", 42),
        ("[seed:0] a cat", 0),
        ("a cat [SEED: 9 ]", 9),
        (f"a cat [seed:{MAX_SEED}]", MAX_SEED),
    ],
)
def test_seed_tag_in_prompt_sets_the_seed(
    create: Callable[..., dict[str, Any]], prompt: str, seed: int
) -> None:
    body = create(prompt=prompt)
    assert body["seed"] == seed
    assert body["prompt"] == prompt


def test_seed_field_wins_over_the_tag(create: Callable[..., dict[str, Any]]) -> None:
    assert create(prompt="a cat [seed:42]", seed=7)["seed"] == 7


def test_same_seed_tag_same_image(client: httpx.Client) -> None:
    req = {"prompt": "twin foxes [seed:99]", **SMALL, "hasWatermark": False}
    a = wait_for(client, client.post("/images", json=req).json()["id"])
    b = wait_for(client, client.post("/images", json=req).json()["id"])
    assert a["status"] == b["status"] == "ready"
    assert a["seed"] == b["seed"] == 99
    assert httpx.get(a["imageVersions"]["original"]).content == (
        httpx.get(b["imageVersions"]["original"]).content
    )


# -- POST /images: rejected values --------------------------------------------------------

RANGES = {
    "width": (520, 2160),
    "height": (520, 2160),
    "quality": (1, 5),
    "creativity": (1, 5),
    "seed": (0, MAX_SEED),
}

REJECTED: list[tuple[str, Any, tuple[str, ...]]] = [
    # (field, value sent, what the message must contain besides the field's name)
    ("prompt", "", ()),
    ("prompt", "   ", ()),
    ("prompt", "\n\t", ()),
    ("prompt", "p" * 4001, ("4000",)),
    ("prompt", 123, ()),
    ("prompt", None, ()),
    ("prompt", ["a cat"], ()),
    ("prompt", {"text": "a cat"}, ()),
    ("prompt", True, ()),
    ("prompt", "\ud800 lone surrogate", ()),
    ("prompt", "a NUL \x00 inside", ("NUL",)),
    ("baseModel", "model\x00", ("NUL",)),
    ("hasWatermark", "false", ()),
    ("hasWatermark", "true", ()),
    ("hasWatermark", 0, ()),
    ("hasWatermark", 1, ()),
    ("hasWatermark", None, ()),
    ("systemVersion", 4, ("2", "3")),
    ("systemVersion", 1, ("2", "3")),
    ("systemVersion", 0, ("2", "3")),
    ("systemVersion", "3", ("2", "3")),
    ("systemVersion", 2.5, ("2", "3")),
    ("systemVersion", True, ("2", "3")),
    ("mode", "fast", ("default", "sigma", "turbo")),
    ("mode", "", ("default", "sigma", "turbo")),
    ("mode", "Turbo", ("default", "sigma", "turbo")),
    ("mode", 1, ("default", "sigma", "turbo")),
    ("mode", None, ("default", "sigma", "turbo")),
    ("webhookUrl", "ftp://example.com/hook", ()),
    ("webhookUrl", "example.com/hook", ()),
    ("webhookUrl", "http://", ()),
    ("webhookUrl", "javascript:alert(1)", ()),
    ("webhookUrl", "http://exa mple.com", ()),
    ("webhookUrl", "https://x.test/" + "a" * 2100, ()),
    ("webhookUrl", 42, ()),
    ("webhookUrl", True, ()),
    ("baseModel", 7, ()),
    ("baseModel", ["flux"], ()),
    ("baseModel", False, ()),
]
for _field, (_lo, _hi) in RANGES.items():
    bounds = (str(_lo), str(_hi))
    REJECTED += [
        (_field, _lo - 1, bounds),
        (_field, _hi + 1, bounds),
        (_field, -1 if _lo > 0 else -(10**12), bounds),
        (_field, 10**40, bounds),
        (_field, str((_lo + _hi) // 2), ()),
        (_field, True, ()),
        (_field, False, ()),
        *([(_field, None, ())] if _field != "seed" else []),  # a null seed means random
        (_field, _lo + 0.5, ()),
        (_field, [_lo], ()),
        (_field, {"value": _lo}, ()),
    ]


@pytest.mark.parametrize(
    ("field", "value", "needles"), REJECTED, ids=[f"{f}={v!r}"[:60] for f, v, _ in REJECTED]
)
def test_rejected_value_is_400_naming_the_field(
    client: httpx.Client, field: str, value: Any, needles: tuple[str, ...]
) -> None:
    # ensure_ascii: a lone surrogate travels as the JSON escape a client would send.
    raw = json.dumps({"prompt": "a red fox", field: value}, ensure_ascii=True).encode()
    resp = client.post("/images", content=raw, headers=_JSON)
    assert_error(resp, 400, field, *needles)


def test_missing_prompt(client: httpx.Client) -> None:
    message = assert_error(client.post("/images", json={"width": 1600}), 400, "prompt")
    assert "required" in message


@pytest.mark.parametrize(
    "field", ["negativePrompt", "aspectRatio", "Prompt", "image_id", "steps", "__proto__"]
)
def test_unknown_field_is_400_naming_it(client: httpx.Client, field: str) -> None:
    assert_error(client.post("/images", json={"prompt": "x", field: "y"}), 400, field)


def test_every_problem_is_named(client: httpx.Client) -> None:
    resp = client.post(
        "/images", json={"width": 10, "quality": 9, "mode": "fast", "negativePrompt": "x"}
    )
    assert_error(resp, 400, "prompt", "width", "quality", "mode", "negativePrompt")


def test_unknown_field_name_is_quoted_safely(client: httpx.Client) -> None:
    # A lone surrogate or a huge name in a property name must still get a JSON 400.
    raw = b'{"prompt": "x", "\\ud800": 1}'
    assert_error(client.post("/images", content=raw, headers=_JSON), 400)
    long_name = "n" * 50_000
    message = assert_error(client.post("/images", json={"prompt": "x", long_name: 1}), 400, "n")
    assert len(message) < 1000


# -- POST /images: bodies that are not a JSON object ---------------------------------------

_JSON = {"Content-Type": "application/json"}


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        (b"{prompt: 'a fox'}", "JSON"),
        (b'{"prompt": "a fox"', "JSON"),
        (b'{"prompt": "a fox"} trailing', "JSON"),
        (b"\xff\xfe\x00garbage", ""),
        (b'[{"prompt": "a fox"}]', "object"),
        (b"[]", "object"),
        (b'"a fox"', "object"),
        (b"42", "object"),
        (b"true", "object"),
        (b"null", ""),
        (b"", "body"),
        (b"   ", ""),
        (b'{"prompt": "x", "width": NaN}', "width"),
        (b'{"prompt": "x", "width": Infinity}', "width"),
        (b'{"prompt": "x", "width": 1e400}', "width"),
        (b'{"prompt": "x", "width": ' + b"9" * 5000 + b"}", ""),
        (b"[" * 100_000 + b"]" * 100_000, ""),
        (b'{"a":' * 50_000 + b"1" + b"}" * 50_000, ""),
    ],
    ids=lambda v: repr(v)[:40] if isinstance(v, bytes) else v,
)
def test_body_that_is_no_json_object_is_400(client: httpx.Client, raw: bytes, needle: str) -> None:
    assert_error(client.post("/images", content=raw, headers=_JSON), 400, needle)


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data"]
)
def test_body_that_is_not_json_content_is_400(client: httpx.Client, content_type: str) -> None:
    resp = client.post("/images", content=b"prompt=a+fox", headers={"Content-Type": content_type})
    assert_error(resp, 400)


def test_no_body_at_all_is_400(client: httpx.Client) -> None:
    assert_error(client.post("/images"), 400)


# -- POST /images: the size limit ----------------------------------------------------------

LIMIT = 1_048_576


def _body_of(size: int) -> bytes:
    """A JSON body of exactly ``size`` bytes (its prompt too long to be accepted)."""
    head, tail = b'{"prompt": "', b'"}'
    return head + b"p" * (size - len(head) - len(tail)) + tail


def test_body_at_the_limit_is_read_and_judged(client: httpx.Client) -> None:
    body = _body_of(LIMIT)
    assert len(body) == LIMIT
    assert_error(client.post("/images", content=body, headers=_JSON), 400, "prompt", "4000")


def test_body_over_the_limit_is_413(client: httpx.Client) -> None:
    resp = client.post("/images", content=_body_of(LIMIT + 1), headers=_JSON)
    assert_error(resp, 413, str(LIMIT))


def test_streamed_body_over_the_limit_is_413(client: httpx.Client) -> None:
    # Chunked: no Content-Length to judge by, the server must count what arrives.
    body = _body_of(2 * LIMIT)

    def chunks() -> Iterator[bytes]:
        for i in range(0, len(body), 64 * 1024):
            yield body[i : i + 64 * 1024]

    resp = client.post("/images", content=chunks(), headers=_JSON)
    assert "content-length" not in resp.request.headers
    assert_error(resp, 413, str(LIMIT))


# -- GET /images ---------------------------------------------------------------------------


@pytest.fixture
def listing(new_client: Callable[..., httpx.Client]) -> tuple[httpx.Client, list[str]]:
    """A user with 12 images (stopped at once: only their rows matter here)."""
    c = new_client()
    ids = [
        c.post("/images", json={"prompt": f"image {i}", **SMALL}).json()["id"] for i in range(12)
    ]
    for image_id in ids:
        assert c.put(f"/images/{image_id}/interruption").status_code == 204
    return c, ids


def _ids(resp: httpx.Response) -> list[str]:
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert isinstance(body, list)
    return [image["id"] for image in body]


def test_list_is_a_bare_array_of_own_images(
    listing: tuple[httpx.Client, list[str]], new_client: Callable[..., httpx.Client]
) -> None:
    c, ids = listing
    stranger = new_client()
    theirs = stranger.post("/images", json={"prompt": "not yours", **SMALL}).json()["id"]
    assert stranger.put(f"/images/{theirs}/privacy", json={"privacy": "public"}).status_code == 200
    everything = c.get("/images", params={"limit": 100})
    assert set(_ids(everything)) == set(ids)
    for image in everything.json():
        assert set(FIELDS) <= set(image)
    assert _ids(stranger.get("/images")) == [theirs]
    stranger.delete(f"/images/{theirs}")


def test_list_of_a_new_user_is_empty(client: httpx.Client) -> None:
    assert _ids(client.get("/images")) == []


def test_list_defaults_to_ten_newest_first(listing: tuple[httpx.Client, list[str]]) -> None:
    c, _ = listing
    everything = c.get("/images", params={"limit": 100}).json()
    first = c.get("/images").json()
    assert [i["id"] for i in first] == [i["id"] for i in everything[:10]]
    stamps = [i["createdAt"] for i in everything]
    assert stamps == sorted(stamps, reverse=True)


def test_list_pagination(listing: tuple[httpx.Client, list[str]]) -> None:
    c, _ = listing
    everything = _ids(c.get("/images", params={"limit": 100}))
    pages = [_ids(c.get("/images", params={"page": p, "limit": 5})) for p in (1, 2, 3, 4)]
    assert [len(p) for p in pages] == [5, 5, 2, 0]
    assert [i for p in pages for i in p] == everything
    assert _ids(c.get("/images", params={"page": 2})) == everything[10:]
    assert _ids(c.get("/images", params={"page": 1_000_000, "limit": 100})) == []
    assert _ids(c.get("/images", params={"limit": 1})) == everything[:1]


@pytest.mark.parametrize("sort_by", ["createdAt", "likes", "regenerations"])
def test_list_sort_orders(listing: tuple[httpx.Client, list[str]], sort_by: str) -> None:
    c, _ = listing
    desc = _ids(c.get("/images", params={"limit": 100, "sortBy": sort_by, "sortOrder": "DESC"}))
    asc = _ids(c.get("/images", params={"limit": 100, "sortBy": sort_by, "sortOrder": "ASC"}))
    assert len(desc) == 12
    assert asc == desc[::-1]
    if sort_by == "createdAt":
        assert desc == _ids(c.get("/images", params={"limit": 100}))


@pytest.mark.parametrize(
    ("param", "value"),
    [
        ("page", "0"),
        ("page", "-1"),
        ("page", "abc"),
        ("page", "1.5"),
        ("page", ""),
        ("limit", "0"),
        ("limit", "101"),
        ("limit", "-5"),
        ("limit", "ten"),
        ("sortBy", "date"),
        ("sortBy", "created_at"),
        ("sortBy", ""),
        ("sortOrder", "UP"),
        ("sortOrder", "descending"),
        ("sortOrder", ""),
    ],
)
def test_list_invalid_query_is_400_naming_it(client: httpx.Client, param: str, value: str) -> None:
    assert_error(client.get("/images", params={param: value}), 400, param)


@pytest.mark.parametrize(
    ("param", "value", "message"),
    [
        ("page", "0", "page must be at least 1"),
        ("limit", "101", "limit must be at most 100"),
        ("limit", "ten", "limit must be an integer"),
        ("page", "1.5", "page must be an integer"),
        ("sortBy", "date", "sortBy must be one of 'createdAt', 'likes' or 'regenerations'"),
    ],
)
def test_list_invalid_query_message_states_the_rule(
    client: httpx.Client, param: str, value: str, message: str
) -> None:
    assert client.get("/images", params={param: value}).json()["message"] == message


@pytest.mark.parametrize(("param", "value"), [("limit", "1"), ("limit", "100"), ("page", "1")])
def test_list_query_bounds_accepted(client: httpx.Client, param: str, value: str) -> None:
    assert _ids(client.get("/images", params={param: value})) == []


# -- GET /images/{id} ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "image_id",
    ["does-not-exist", "00000000-0000-0000-0000-000000000000", "x" * 64, "x" * 65, "a" * 5000],
    ids=["word", "uuid", "64", "65", "5000"],
)
def test_unknown_image_is_404(client: httpx.Client, image_id: str) -> None:
    assert_error(client.get(f"/images/{image_id}"), 404, "not found")
    assert_error(client.put(f"/images/{image_id}/interruption"), 404)
    assert_error(client.put(f"/images/{image_id}/privacy", json={"privacy": "public"}), 404)
    assert_error(client.delete(f"/images/{image_id}"), 404)


# -- PUT /images/{id}/privacy --------------------------------------------------------------


def test_privacy_update_returns_the_image(
    create: Callable[..., dict[str, Any]], client: httpx.Client
) -> None:
    image = create(**SMALL)
    resp = client.put(f"/images/{image['id']}/privacy", json={"privacy": "public"})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert set(FIELDS) <= set(body)
    assert body["id"] == image["id"]
    assert body["privacy"] == "public"
    assert client.get(f"/images/{image['id']}").json()["privacy"] == "public"
    back = client.put(f"/images/{image['id']}/privacy", json={"privacy": "private"})
    assert back.status_code == 200
    assert back.json()["privacy"] == "private"
    again = client.put(f"/images/{image['id']}/privacy", json={"privacy": "private"})
    assert again.status_code == 200, "setting the same value twice is not an error"


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({"privacy": "shared"}, "privacy"),
        ({"privacy": "PUBLIC"}, "privacy"),
        ({"privacy": ""}, "privacy"),
        ({"privacy": True}, "privacy"),
        ({"privacy": 1}, "privacy"),
        ({"privacy": None}, "privacy"),
        ({"privacy": ["public"]}, "privacy"),
        ({}, "privacy"),
        ({"privacy": "public", "extra": 1}, "extra"),
        ({"isPublic": True}, "isPublic"),
        (["public"], "object"),
        ("public", "object"),
    ],
)
def test_privacy_invalid_body_is_400(
    create: Callable[..., dict[str, Any]], client: httpx.Client, body: Any, needle: str
) -> None:
    image = create(**SMALL)
    assert_error(client.put(f"/images/{image['id']}/privacy", json=body), 400, needle)
    assert client.get(f"/images/{image['id']}").json()["privacy"] == "private"


def test_privacy_without_body_is_400(
    create: Callable[..., dict[str, Any]], client: httpx.Client
) -> None:
    image = create(**SMALL)
    assert_error(client.put(f"/images/{image['id']}/privacy"), 400)
    raw = client.put(f"/images/{image['id']}/privacy", content=b"{public", headers=_JSON)
    assert_error(raw, 400, "JSON")


# -- PUT /images/{id}/interruption and DELETE ----------------------------------------------


def test_interrupting_a_ready_image_is_a_no_op(client: httpx.Client) -> None:
    image_id = client.post("/images", json={"prompt": "done", **SMALL}).json()["id"]
    ready = wait_for(client, image_id)
    assert ready["status"] == "ready"
    resp = client.put(f"/images/{image_id}/interruption")
    assert resp.status_code == 204
    assert resp.content == b""
    after = client.get(f"/images/{image_id}").json()
    assert after["status"] == "ready"
    assert after["progress"] == 100
    assert after["imageVersions"].keys() == ready["imageVersions"].keys()
    assert client.put(f"/images/{image_id}/interruption").status_code == 204


def test_interrupting_a_queued_image(client: httpx.Client) -> None:
    image_id = client.post("/images", json={"prompt": "stop me", **SMALL}).json()["id"]
    assert client.put(f"/images/{image_id}/interruption").status_code == 204
    final = wait_for(client, image_id)
    assert final["status"] in ("interrupted", "ready", "failed")
    assert final["progress"] < 100 or final["status"] == "ready"


def test_delete_then_gone(client: httpx.Client) -> None:
    image_id = client.post("/images", json={"prompt": "bye", **SMALL}).json()["id"]
    resp = client.delete(f"/images/{image_id}")
    assert resp.status_code == 204
    assert resp.content == b""
    assert_error(client.get(f"/images/{image_id}"), 404)
    assert_error(client.delete(f"/images/{image_id}"), 404)
    assert_error(client.put(f"/images/{image_id}/interruption"), 404)
    assert image_id not in _ids(client.get("/images", params={"limit": 100}))
