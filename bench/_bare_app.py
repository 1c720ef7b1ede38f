"""The baseline of bench_get_image: a bare Starlette app whose ``GET /images/{id}``
returns fixed bytes (read from ``--body-file``) as ``application/json``, run by
``uvicorn.run`` with the same arguments ``openletz serve`` uses.

    python bench/_bare_app.py --port 8123 --body-file body.json
"""

from __future__ import annotations

import argparse
from pathlib import Path

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route


def make_app(body: bytes) -> Starlette:
    async def get_image(request: Request) -> Response:
        return Response(body, media_type="application/json")

    return Starlette(routes=[Route("/images/{image_id}", get_image, methods=["GET"])])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--body-file", type=Path, required=True)
    parser.add_argument("--log-level", default="warning")
    args = parser.parse_args()
    # The same call as openletz.cli.serve, with the app swapped.
    uvicorn.run(
        make_app(args.body_file.read_bytes()),
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        proxy_headers=True,
        server_header=False,
    )


if __name__ == "__main__":
    main()
