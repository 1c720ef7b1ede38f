"""A bounded run of 100 jobs on a cluster whose processes are killed at random,
while the jobs are still being posted (so that an API server dies between the
insert of a job and its publish now and then), with images in S3."""

from __future__ import annotations

import http.client
import json
import random
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests._cluster import Worker
from tests._server import Server

pytestmark = pytest.mark.slow

JOBS = 100
POST_FOR_S = 20.0  # the jobs arrive over this long, while processes are killed
SETTLE_S = 120.0  # then everything stays up until the jobs settle, at most this long
POSTERS = 4


@pytest.mark.timeout(POST_FOR_S + SETTLE_S + 90)  # + start-up, stops and checks
def test_no_job_is_lost_or_stuck_under_random_kills(
    make_server: Callable[..., Server], cluster_s3_settings: dict[str, object], tmp_path: Path
) -> None:
    rng = random.Random(20261125)
    settings = {**cluster_s3_settings, "sandbox_duration_s": 0.4}
    apis = [make_server(**settings).start() for _ in range(2)]
    key = apis[0].create_key("chaos")
    workers = [Worker(apis[0].env, tmp_path / f"w{i}.log").start() for i in range(2)]
    acknowledged: list[str] = []
    unanswered: list[int] = []  # sent, and the server died before it answered
    lock = threading.Lock()  # apis[i] is replaced while the posters read it

    def post(n: int, target: Server | None = None) -> None:
        for attempt in range(1 if target else 20):
            with lock:
                api = target or apis[(n + attempt) % 2]
            try:
                with api.client(key) as client:
                    resp = client.post("/images", json={"prompt": f"job {n}", "quality": 1})
            except httpx.ConnectError:
                if target:
                    unanswered.append(n)
                    return
                time.sleep(0.1)  # never reached a server: safe to send elsewhere
                continue
            except httpx.TransportError:
                # Its server died with the request: the job may exist or not (it may
                # have died between the insert and the publish). Like a client that
                # cannot know, this one does not send it again.
                unanswered.append(n)
                return
            assert resp.status_code == 200, resp.text
            acknowledged.append(resp.json()["id"])
            return
        raise AssertionError(f"job {n}: no API server answered")

    def post_all(share: range) -> None:
        for n in share:
            time.sleep(rng_post.uniform(0, 2 * POST_FOR_S * POSTERS / JOBS))
            post(n)

    # Several at once, so that a kill often finds a request in flight.
    rng_post = random.Random(7)
    posters = [
        threading.Thread(target=post_all, args=(range(k, JOBS, POSTERS),), daemon=True)
        for k in range(POSTERS)
    ]
    restarts = 0
    extra = 0  # jobs posted at a server as it was killed
    timing = 0  # jobs posted to time a POST just before
    try:
        for poster in posters:
            poster.start()
        while any(p.is_alive() for p in posters):
            time.sleep(rng.uniform(0.5, 2.0))
            if rng.random() < 0.6:
                i = rng.randrange(len(workers))
                workers[i].kill()
                workers[i] = Worker(apis[0].env, tmp_path / f"w{i}-{restarts}.log").start()
            else:
                i = rng.randrange(len(apis))
                # Requests in flight when it dies: sent, then the kill a fraction of a
                # POST's time later, while the job is inserted, or published, or answered.
                with lock:
                    victim = apis[i]
                sent = [_Raw(victim, key) for _ in range(3)]
                took = min(r.timed_post({"prompt": "timing", "quality": 1}) for r in sent)
                acknowledged.extend(r.job_id for r in sent if r.job_id)
                timing += len(sent)
                for r in sent:
                    r.send({"prompt": f"in flight {extra}", "quality": 1})
                    extra += 1
                    time.sleep(rng.uniform(0.1, 0.5) * took)
                with lock:
                    victim.kill()
                for r in sent:
                    r.job_id = None
                    if r.answer():
                        acknowledged.append(r.job_id)
                    else:
                        unanswered.append(-1)
                apis[i].start()
            restarts += 1
        for poster in posters:
            poster.join()

        deadline = time.monotonic() + SETTLE_S
        final: dict[str, dict] = {}
        listed: set[str] = set()
        while time.monotonic() < deadline:
            with apis[0].client(key) as client:
                # Every job that exists, also those whose POST got no answer.
                listed = {
                    b["id"]
                    for page in (1, 2)
                    for b in client.get("/images", params={"limit": 100, "page": page}).json()
                }
                for image_id in listed - set(final):
                    body = client.get(f"/images/{image_id}").json()
                    if body["status"] in ("ready", "failed"):
                        final[image_id] = body
            if set(final) >= listed:
                break
            time.sleep(1)
        stuck = sorted(listed - set(final))
        assert not stuck, f"{len(stuck)} jobs never ended after {restarts} kills"
        assert set(acknowledged) <= listed, "an acknowledged job was lost"
        assert len(acknowledged) + len(unanswered) == JOBS + extra + timing
        assert len(listed) <= JOBS + extra + timing
        failed = [b for b in final.values() if b["status"] == "failed"]
        assert all(b["progressMessage"] for b in failed)
        assert len(failed) < JOBS // 2, "most jobs should survive a kill or two"
        # Images are in S3: the other API server's URLs fetch them.
        ready = [i for i, b in final.items() if b["status"] == "ready"]
        with apis[1].client(key) as client:
            for image_id in rng.sample(ready, min(5, len(ready))):
                url = client.get(f"/images/{image_id}").json()["imageVersions"]["original"]
                assert httpx.get(url).content.startswith(b"\xff\xd8")
        print(
            f"{len(acknowledged)} POSTs answered, {len(unanswered)} lost with their server "
            f"({len(listed) - len(acknowledged)} of those made a job), {len(failed)} failed, "
            f"{restarts} kills"
        )
    finally:
        for w in workers:
            w.stop()


class _Raw:
    """A POST over a connection made beforehand, sent and answered in two steps, so
    that a kill can fall at a known time after the request left."""

    def __init__(self, api: Server, key: str) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", api.port, timeout=30)
        self.conn.connect()
        self.key = key
        self.job_id: str | None = None

    def send(self, body: dict[str, object]) -> None:
        headers = {"Authorization": f"Bearer {self.key}", "Content-Type": "application/json"}
        self.conn.request("POST", "/images", body=json.dumps(body), headers=headers)

    def answer(self) -> bool:
        try:
            resp = self.conn.getresponse()
            data = resp.read()
        except (OSError, http.client.HTTPException):
            return False
        finally:
            self.conn.close()
        assert resp.status == 200, data
        self.job_id = json.loads(data)["id"]
        return True

    def timed_post(self, body: dict[str, object]) -> float:
        started = time.perf_counter()
        self.send(body)
        assert self.answer()
        self.conn.connect()
        return time.perf_counter() - started
