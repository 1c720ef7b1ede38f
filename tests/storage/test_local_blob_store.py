from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import hmac
import os
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from openletz.storage import _signing
from openletz.storage.base import InvalidKey
from openletz.storage.local import LocalBlobStore

SECRET = "test-secret"
BASE_URL = "https://img.example.test/"
KEY = "job_1/640x640.jpg"


class FakeClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(1_700_000_000.5)


@pytest.fixture
def store(tmp_path: Path, clock: FakeClock) -> LocalBlobStore:
    return LocalBlobStore(
        tmp_path / "blobs", public_base_url=BASE_URL, secret=SECRET, url_ttl_s=3600, clock=clock
    )


def _query(url: str) -> tuple[str, str, str]:
    parts = urlsplit(url)
    query = parse_qs(parts.query, strict_parsing=True)
    key = parts.path.removeprefix("/files/")
    return key, query["expires"][0], query["signature"][0]


async def test_put_get_delete_round_trip(store: LocalBlobStore, tmp_path: Path) -> None:
    await store.put(KEY, b"small", "image/jpeg")
    await store.put("job_1/original.jpg", b"large", "image/jpeg")
    assert await store.get(KEY) == b"small"
    assert (tmp_path / "blobs" / KEY).read_bytes() == b"small"
    assert store.path(KEY) == (tmp_path / "blobs" / KEY).resolve()

    await store.delete_many([KEY, "job_1/original.jpg", "job_1/missing.jpg"])
    with pytest.raises(KeyError):
        await store.get(KEY)
    assert not (tmp_path / "blobs" / "job_1").exists()  # the emptied folder is gone too
    assert (tmp_path / "blobs").is_dir()


async def test_delete_keeps_a_folder_that_still_holds_files(store: LocalBlobStore) -> None:
    await store.put("job_2/a.png", b"a", "image/png")
    await store.put("job_2/b.png", b"b", "image/png")
    await store.delete_many(["job_2/a.png"])
    assert await store.get("job_2/b.png") == b"b"


async def test_delete_of_missing_keys_is_fine(store: LocalBlobStore) -> None:
    await store.delete_many(["nojob/original.jpg", "nojob/original.jpg"])
    await store.delete_many([])


async def test_overwrite_is_atomic_and_leaves_no_temp_files(
    store: LocalBlobStore, tmp_path: Path
) -> None:
    await store.put(KEY, b"first" * 1000, "image/jpeg")
    await store.put(KEY, b"second", "image/jpeg")
    assert await store.get(KEY) == b"second"
    assert os.listdir(tmp_path / "blobs" / "job_1") == ["640x640.jpg"]


async def test_concurrent_puts_never_expose_partial_files(store: LocalBlobStore) -> None:
    payloads = [bytes([n]) * 200_000 for n in range(8)]
    seen: list[bytes] = []

    async def read_while_writing() -> None:
        for _ in range(20):
            with contextlib.suppress(KeyError):
                seen.append(await store.get(KEY))
            await asyncio.sleep(0)

    await asyncio.gather(
        *(store.put(KEY, data, "image/jpeg") for data in payloads), read_while_writing()
    )
    assert all(data in payloads for data in seen)
    assert await store.get(KEY) in payloads


async def test_written_files_are_readable_by_others(store: LocalBlobStore) -> None:
    await store.put(KEY, b"x", "image/jpeg")
    assert store.path(KEY).stat().st_mode & 0o777 == 0o644


async def test_missing_key_is_a_key_error(store: LocalBlobStore) -> None:
    with pytest.raises(KeyError):
        await store.get("nojob/original.jpg")
    await store.put(KEY, b"x", "image/jpeg")
    with pytest.raises(KeyError):
        await store.get("job_1/other.jpg")


BAD_KEYS = [
    "../etc/passwd",
    "a/../../b.jpg",
    "/etc/passwd",
    "/abs/file.jpg",
    "job\\..\\x.jpg",
    "job\\x.jpg",
    "",
    "x/y",
    "x",
    "x.jpg",
    "a/b/c.jpg",
    "%2e%2e/x.jpg",
    "job/%2e%2e.jpg",
    "..%2fetc/passwd.jpg",
    "job/./x.jpg",
    "./x.jpg",
    "job/x.jpg\n",
    "job/x.jpg\x00",
    "job/x.JPG",
    "jöb/x.jpg",
    "j" * 65 + "/x.jpg",
    "job/" + "x" * 65 + ".jpg",
    "job/x." + "j" * 9,
]


@pytest.mark.parametrize("key", BAD_KEYS)
async def test_invalid_keys_are_refused(store: LocalBlobStore, key: str) -> None:
    with pytest.raises(InvalidKey):
        await store.put(key, b"x", "image/jpeg")
    with pytest.raises(InvalidKey):
        await store.get(key)
    with pytest.raises(InvalidKey):
        await store.delete_many([KEY, key])
    with pytest.raises(InvalidKey):
        store.path(key)
    with pytest.raises(InvalidKey):
        store.url(key, public=True)
    assert not store.verify(key, 2_000_000_000, "0" * 64)


async def test_one_bad_key_deletes_nothing(store: LocalBlobStore) -> None:
    await store.put(KEY, b"x", "image/jpeg")
    with pytest.raises(InvalidKey):
        await store.delete_many([KEY, "../etc/passwd"])
    assert await store.get(KEY) == b"x"


async def test_symlinked_job_folder_is_refused(store: LocalBlobStore, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.jpg").write_bytes(b"secret")
    (tmp_path / "blobs" / "evil").symlink_to(outside, target_is_directory=True)

    with pytest.raises(InvalidKey):
        await store.get("evil/secret.jpg")
    with pytest.raises(InvalidKey):
        await store.put("evil/new.jpg", b"x", "image/jpeg")
    with pytest.raises(InvalidKey):
        await store.delete_many(["evil/secret.jpg"])
    with pytest.raises(InvalidKey):
        store.path("evil/secret.jpg")
    assert sorted(os.listdir(outside)) == ["secret.jpg"]
    assert (outside / "secret.jpg").read_bytes() == b"secret"


async def test_symlinked_file_is_refused(store: LocalBlobStore, tmp_path: Path) -> None:
    target = tmp_path / "passwd"
    target.write_bytes(b"root:x:0:0")
    await store.put("job_3/real.jpg", b"x", "image/jpeg")
    (tmp_path / "blobs" / "job_3" / "link.jpg").symlink_to(target)

    with pytest.raises(InvalidKey):
        await store.get("job_3/link.jpg")
    with pytest.raises(InvalidKey):
        await store.put("job_3/link.jpg", b"overwritten", "image/jpeg")
    assert target.read_bytes() == b"root:x:0:0"


def test_root_may_itself_be_a_symlink(tmp_path: Path) -> None:
    real = tmp_path / "volume"
    real.mkdir()
    (tmp_path / "link").symlink_to(real, target_is_directory=True)
    store = LocalBlobStore(tmp_path / "link", public_base_url=BASE_URL, secret=SECRET, url_ttl_s=60)
    assert store.path(KEY) == real / KEY


def test_public_url_is_stable(store: LocalBlobStore, clock: FakeClock) -> None:
    url = store.url(KEY, public=True)
    assert url == "https://img.example.test/files/job_1/640x640.jpg"
    clock.now += 10 * 86_400
    assert store.url(KEY, public=True) == url


def test_private_url_verifies(store: LocalBlobStore, clock: FakeClock) -> None:
    url = store.url(KEY, public=False)
    assert url.startswith("https://img.example.test/files/job_1/640x640.jpg?expires=")
    key, expires, signature = _query(url)
    assert key == KEY
    assert store.verify(key, expires, signature)
    assert store.verify(key, int(expires), signature)
    # The signature is plain HMAC-SHA256 over "key:expires", so others can check it.
    expected = hmac.new(SECRET.encode(), f"{KEY}:{expires}".encode(), hashlib.sha256)
    assert signature == expected.hexdigest()


def test_private_url_expiry_is_rounded_up_to_the_minute(
    store: LocalBlobStore, clock: FakeClock
) -> None:
    _, expires, _ = _query(store.url(KEY, public=False))
    deadline = int(expires)
    assert deadline % 60 == 0
    assert clock.now + 3600 <= deadline < clock.now + 3600 + 60
    # Asked again within the same minute: the very same URL.
    first = store.url(KEY, public=False)
    clock.now += 1
    assert store.url(KEY, public=False) == first


def test_private_url_expires(store: LocalBlobStore, clock: FakeClock) -> None:
    key, expires, signature = _query(store.url(KEY, public=False))
    clock.now = int(expires) - 1
    assert store.verify(key, expires, signature)
    clock.now = int(expires)
    assert not store.verify(key, expires, signature)
    clock.now = int(expires) + 3600
    assert not store.verify(key, expires, signature)


def test_tampering_is_detected(store: LocalBlobStore) -> None:
    key, expires, signature = _query(store.url(KEY, public=False))
    flipped = ("1" if signature[-1] == "0" else "0") + signature[1:]
    assert not store.verify("job_1/original.jpg", expires, signature)
    assert not store.verify("job_2/640x640.jpg", expires, signature)
    assert not store.verify(key, str(int(expires) + 60), signature)
    assert not store.verify(key, expires, flipped)
    assert not store.verify(key, expires, signature.upper())
    assert not store.verify(key, expires, signature[:-1])
    assert not store.verify(key, expires, signature + "0")


@pytest.mark.parametrize(
    ("expires", "signature"),
    [
        (None, "0" * 64),
        ("", "0" * 64),
        ("soon", "0" * 64),
        ("-1", "0" * 64),
        (" 1700003660", "0" * 64),
        ("1_700_003_660", "0" * 64),
        ("١٧٠٠٠٠٣٦٦٠", "0" * 64),  # Arabic-Indic digits: int() takes them, we do not
        ("9" * 5000, "0" * 64),
        (True, "0" * 64),
        (-5, "0" * 64),
        ("2000000000", None),
        ("2000000000", ""),
        ("2000000000", "é" * 64),
    ],
)
def test_malformed_or_missing_parts_fail(
    store: LocalBlobStore, expires: str | int | None, signature: str | None
) -> None:
    assert not store.verify(KEY, expires, signature)


def test_leading_zeros_are_refused(store: LocalBlobStore) -> None:
    key, expires, signature = _query(store.url(KEY, public=False))
    assert not store.verify(key, "0" + expires, signature)


def test_other_secret_fails(tmp_path: Path, store: LocalBlobStore, clock: FakeClock) -> None:
    other = LocalBlobStore(
        tmp_path / "blobs", public_base_url=BASE_URL, secret="other", url_ttl_s=3600, clock=clock
    )
    key, expires, signature = _query(store.url(KEY, public=False))
    assert not other.verify(key, expires, signature)
    assert store.verify(key, expires, signature)


@pytest.mark.parametrize(("secret", "ttl"), [("", 60), ("s", 0), ("s", -1)])
def test_bad_configuration_is_refused(tmp_path: Path, secret: str, ttl: int) -> None:
    with pytest.raises(ValueError, match=r"secret|url_ttl_s"):
        LocalBlobStore(tmp_path, public_base_url=BASE_URL, secret=secret, url_ttl_s=ttl)


def test_store_name() -> None:
    assert LocalBlobStore.name == "local"


@pytest.mark.parametrize(
    ("now", "ttl", "expected"),
    [(0.0, 60, 60), (0.5, 60, 120), (1.0, 59, 60), (100.0, 3600, 3720), (59.0, 1, 60)],
)
def test_expires_at_rounds_up(now: float, ttl: int, expected: int) -> None:
    assert _signing.expires_at(now, ttl) == expected


def test_signing_helpers_round_trip() -> None:
    signature = _signing.sign("k", "job/x.jpg", 120)
    assert _signing.verify("k", "job/x.jpg", "120", signature, now=119.9)
    assert not _signing.verify("k", "job/x.jpg", "120", signature, now=120)
    with pytest.raises(ValueError, match="secret"):
        _signing.sign("", "job/x.jpg", 120)


async def test_put_many_stores_every_item(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path / "blobs", public_base_url="http://x", secret="s", url_ttl_s=60)
    items = {f"job1/{v}.jpg": bytes([i]) * 10 for i, v in enumerate(("original", "640x640"))}
    await store.put_many(items, "image/jpeg")
    for key, data in items.items():
        assert await store.get(key) == data
    with pytest.raises(InvalidKey):
        await store.put_many({"../evil.jpg": b"x"}, "image/jpeg")


async def test_put_many_writes_the_same_bytes_once(store: LocalBlobStore) -> None:
    # A picture no larger than a version's box is that version unchanged: one file,
    # and the other keys are links to it.
    same = os.urandom(5000)
    other = os.urandom(300)
    items = {"job1/original-1.jpg": same, "job1/1920-1.jpg": same, "job1/96-1.jpg": other}
    items["job1/640-1.jpg"] = same
    await store.put_many(items, "image/jpeg")
    for key, data in items.items():
        assert await store.get(key) == data
    inodes = {key: os.stat(store.path(key)).st_ino for key in items}
    assert inodes["job1/original-1.jpg"] == inodes["job1/1920-1.jpg"] == inodes["job1/640-1.jpg"]
    assert inodes["job1/96-1.jpg"] != inodes["job1/original-1.jpg"]
    assert sorted(p.name for p in store.path("job1/96-1.jpg").parent.iterdir()) == sorted(
        key.split("/")[1] for key in items
    )  # no temporary names left behind
    # Each name lives on its own: deleting one or replacing another leaves the rest.
    await store.delete_many(["job1/original-1.jpg"])
    await store.put("job1/1920-1.jpg", b"new", "image/jpeg")
    assert await store.get("job1/640-1.jpg") == same
    assert await store.get("job1/1920-1.jpg") == b"new"


async def test_put_many_writes_copies_where_links_are_refused(
    store: LocalBlobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_links(src: object, dst: object) -> None:
        raise OSError(errno.EPERM, "no hard links here")

    monkeypatch.setattr(os, "link", no_links)
    same = os.urandom(2000)
    items = {"job2/original-1.jpg": same, "job2/1920-1.jpg": same}
    await store.put_many(items, "image/jpeg")
    for key, data in items.items():
        assert await store.get(key) == data
    assert (
        os.stat(store.path("job2/original-1.jpg")).st_ino
        != os.stat(store.path("job2/1920-1.jpg")).st_ino
    )
