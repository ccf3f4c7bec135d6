"""The OpenAPI document of the REST API (``GET /openapi.json``), generated from the protos'
``google.api.http`` rules, and schemathesis run against the live server with it: every
operation, its parameters and bodies, hostile values included; no 5xx, and every answer (errors
too) conforming to the document."""

from __future__ import annotations

import asyncio
import re
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest

from service.entrypoints.http.routes import public_bindings
from tests.e2e.rest import http_port

CONFIG = Path(__file__).with_name("schemathesis.toml")
SCHEMATHESIS = shutil.which("schemathesis", path=str(Path(sys.executable).parent))
# What "conforming" means here: no server error, only the codes, content types and bodies the
# document declares.
CHECKS = ",".join(
    (
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_schema_conformance",
    )
)


async def test_the_document_is_served_without_a_token_and_names_every_route(api, http_session):
    async with http_session.get(f"http://127.0.0.1:{http_port(api)}/openapi.json") as answer:
        assert answer.status == 200
        assert answer.content_type == "application/json"
        document = await answer.json()
    assert document["openapi"].startswith("3.")
    served = {(b.http_method.lower(), b.template.text) for b in public_bindings()}
    described = {(verb, path) for path, ops in document["paths"].items() for verb in ops}
    assert described == served
    create = document["paths"]["/iam/v1/tokens"]["post"]
    assert create["security"] == []  # the exchange needs no token
    assert document["security"] == [{"bearer": []}]


@pytest.mark.skipif(SCHEMATHESIS is None, reason="schemathesis is not installed (scripts/setup)")
async def test_schemathesis_finds_no_server_error_and_no_answer_off_the_document(
    processes: Any, own_stack_env: Any, admin_token: str, tmp_path: Path
) -> None:
    # No workers: what is accepted stays unfinished, and nothing is downloaded.
    env = own_stack_env(HTTP_LISTEN="127.0.0.1:0", RATE_LIMIT_PER_SECOND="100000",
                        RATE_LIMIT_BURST="100000")  # fmt: skip
    api = await processes.start("service", env, "api-schemathesis")
    base = f"http://127.0.0.1:{http_port(api)}"
    assert SCHEMATHESIS is not None
    run = await asyncio.create_subprocess_exec(
        SCHEMATHESIS, "--config-file", str(CONFIG), "run", f"{base}/openapi.json",
        "--header", f"Authorization: Bearer {admin_token}",
        "--checks", CHECKS,
        "--phases", "examples,coverage,fuzzing",
        "--max-examples", "40",
        "--generation-deterministic",
        "--request-timeout", "20",
        "--workers", "2",
        "--suppress-health-check", "all",
        "--report", "junit", "--report-dir", str(tmp_path),
        cwd=tmp_path,  # its own caches (.schemathesis/) go there, not into the checkout
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(run.communicate(), 600)
    text = out.decode(errors="replace")
    print(text[-6000:])
    assert run.returncode == 0, text[-6000:]
    # Every operation of the document was exercised.
    selected = re.search(r"Selected: (\d+)/(\d+)\s+Tested: (\d+)", text)
    assert selected, text[-3000:]
    assert selected.group(1) == selected.group(2) == selected.group(3)
