"""The README's REST/JSON example, run as it is written: the block is read from README.md and
run by bash (with ``set -euo pipefail``, so a step that fails stops it), with only its
addresses replaced by this test's (the API's HTTP port for ``127.0.0.1:8080``, the blob
server for ``http://127.0.0.1:8000/image.bin``) and ``IMAGES_TOKEN`` exported as
"Call the API" exports it."""

from __future__ import annotations

import asyncio
import json
import re

from tests.e2e.rest import http_port
from tests.support import ROOT, BlobServer, base_env, create_token

INTRO = "`tests/e2e/test_readme_rest.py` runs this block as it is"


def readme_block() -> str:
    readme = (ROOT / "README.md").read_text()
    after = readme[readme.index(INTRO) :]
    match = re.search(r"```sh\n(.*?)```", after, re.DOTALL)
    assert match, "no sh block after the REST section's introduction"
    return match.group(1)


async def test_the_readmes_rest_block_runs_as_written(
    api, workers, blobs: BlobServer, database_url
):
    block = readme_block()
    assert "uuidgen" not in block
    assert "$TOKEN" not in block  # the variable "Call the API" exports is IMAGES_TOKEN
    script = block.replace("http://127.0.0.1:8080", f"http://127.0.0.1:{http_port(api)}")
    script = script.replace("http://127.0.0.1:8000/image.bin", blobs.url("/blob/100000"))
    token = create_token(
        database_url, "--subject", "me", "--folder", "my-folder", "--role", "editor"
    )
    proc = await asyncio.create_subprocess_exec(
        "bash", "-euo", "pipefail", "-c", script,
        cwd=ROOT,
        env=base_env(IMAGES_TOKEN=token),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    text = out.decode()
    assert proc.returncode == 0, f"{err.decode()}\n{text}"
    # curl prints each answer as it came, without a newline: read them one after the other.
    answers, at, decoder = [], 0, json.JSONDecoder()
    while (at := text.find("{", at)) != -1:
        answer, at = decoder.raw_decode(text, at)
        answers.append(answer)
    # The poll, the Update, the List, ListOperations, Cancel, Delete, and the refusal.
    assert len(answers) == 7, text
    poll, update, listed, history, cancel, delete, refusal = answers
    assert poll["id"].startswith("opn")
    assert update["description"] == "Update image"
    image_id = update["metadata"]["imageId"]
    assert [i["id"] for i in listed["images"]] == [image_id]
    assert listed["images"][0]["labels"] in ({"os": "linux"}, {"tier": "gold"})
    assert [o["id"] for o in history["operations"]][-1] == poll["id"]
    assert cancel["id"] == poll["id"]
    assert cancel["done"] is True
    assert "error" not in cancel  # it had succeeded: a Cancel changes nothing
    assert delete["description"] == "Delete image"
    assert refusal["code"] == 3
    assert refusal["message"].startswith("Request validation error")
