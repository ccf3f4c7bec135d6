"""Wire compatibility with the official public SDK (``yandexcloud`` on PyPI).

The SDK pins protobuf < 7, so its generated stubs run in a virtualenv of their own:
``public_client.py`` is executed by that venv's interpreter against our running stack,
and dumps the public descriptors to compare with the ones we generate.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.compat.public_client import PUBLIC_FILES, describe_files
from tests.compat.sdk_venv import run
from tests.e2e.client import folder
from tests.support import ROOT, BlobServer, ServiceProcess, blob
from yandex.cloud.baremetal.v1alpha import image_pb2, image_service_pb2
from yandex.cloud.endpoint import api_endpoint_pb2, api_endpoint_service_pb2
from yandex.cloud.operation import operation_pb2, operation_service_pb2

pytestmark = pytest.mark.e2e

PUBLIC_CLIENT = Path(__file__).resolve().parent / "public_client.py"


async def test_public_sdk_stubs_run_the_whole_flow(
    public_python: Path,
    api: ServiceProcess,
    workers: list[ServiceProcess],
    blobs: BlobServer,
    admin_token: str,
) -> None:
    size = 1024 * 1024 + 3
    folder_id = folder()
    code, out, err = await run(
        public_python,
        "-I",
        PUBLIC_CLIENT,
        "--target",
        api.address,
        "--folder",
        folder_id,
        "--uri",
        blobs.url(f"/blob/{size}"),
        "--token",
        admin_token,
        timeout=120,
    )
    assert code == 0, f"public client exited with {code}\nstdout:\n{out}\nstderr:\n{err}"
    summary = json.loads(out.strip().splitlines()[-1])
    print(json.dumps(summary, indent=1))  # shown by pytest when an assertion below fails

    assert summary["ok"] is True
    # The flow really ran on the SDK's stubs and protobuf, not on ours.
    assert int(summary["protobuf_version"].split(".")[0]) < 7, summary
    assert not summary["stubs"].startswith(str(ROOT / "gen")), summary
    assert summary["status"] == "READY"
    assert summary["checksum"] == hashlib.md5(blob(size)).hexdigest()
    assert summary["create_response_type_url"] == (
        "type.googleapis.com/yandex.cloud.baremetal.v1alpha.Image"
    )
    assert summary["update_metadata_type_url"] == (
        "type.googleapis.com/yandex.cloud.baremetal.v1alpha.UpdateImageMetadata"
    )
    assert summary["labels"] == {"sdk": "public", "step": "update"}
    assert summary["listed"] == 1
    assert summary["bad_name_error"]["code"] == "INVALID_ARGUMENT"


def keyed(items: list[dict[str, Any]], path: str) -> dict[str, Any]:
    """List elements keyed by what identifies them: a field by number, the rest by name."""
    key = "number" if path.endswith(".fields") else "name"
    return {str(item[key]): item for item in items}


def differences(ours: Any, public: Any, path: str = "") -> Iterator[str]:
    if isinstance(ours, dict) and isinstance(public, dict):
        for k in sorted(ours.keys() | public.keys()):
            where = f"{path}.{k}" if path else k
            if k not in public:
                yield f"{where}: only in ours: {ours[k]!r}"
            elif k not in ours:
                yield f"{where}: only in public: {public[k]!r}"
            else:
                yield from differences(ours[k], public[k], where)
    elif (
        isinstance(ours, list)
        and isinstance(public, list)
        and all(isinstance(i, dict) for i in ours + public)
    ):
        ours_keyed, public_keyed = keyed(ours, path), keyed(public, path)
        yield from differences(ours_keyed, public_keyed, path)
        same_keys = set(ours_keyed) == set(public_keyed)
        if same_keys and list(ours_keyed) != list(public_keyed):
            yield f"{path}: order differs: ours {list(ours_keyed)}, public {list(public_keyed)}"
    elif ours != public:
        yield f"{path}: ours {ours!r}, public {public!r}"


def test_differences_are_reported() -> None:
    """The comparison itself notices a renumbered field, a renamed type and a lost value."""
    ours = describe_files([image_pb2.DESCRIPTOR])
    public = json.loads(json.dumps(ours))
    image = public["yandex/cloud/baremetal/v1alpha/image.proto"]["messages"][0]
    image["fields"][0]["number"] = 3
    image["fields"][1]["type"] = "TYPE_BYTES"
    image["enums"][0]["values"].pop()
    found = list(differences(ours, public))
    assert len(found) == 4, found
    assert any("fields.1: only in ours" in d for d in found)
    assert any("fields.3: only in public" in d for d in found)
    assert any("fields.2.type: ours 'TYPE_STRING', public 'TYPE_BYTES'" in d for d in found)
    assert any("values.UPDATING: only in ours" in d for d in found)


async def test_descriptors_match_the_public_sdk(public_python: Path) -> None:
    code, out, err = await run(public_python, "-I", PUBLIC_CLIENT, "--dump-descriptors", timeout=60)
    assert code == 0, f"--dump-descriptors exited with {code}:\n{err}"
    public = json.loads(out)
    ours = describe_files(
        [
            image_pb2.DESCRIPTOR,
            image_service_pb2.DESCRIPTOR,
            operation_pb2.DESCRIPTOR,
            operation_service_pb2.DESCRIPTOR,
            api_endpoint_pb2.DESCRIPTOR,
            api_endpoint_service_pb2.DESCRIPTOR,
        ]
    )
    # Every proto file we serve, compared with the SDK's.
    assert set(public) == set(ours) == set(PUBLIC_FILES)
    assert set(PUBLIC_FILES) == {
        "yandex/cloud/baremetal/v1alpha/image.proto",
        "yandex/cloud/baremetal/v1alpha/image_service.proto",
        "yandex/cloud/operation/operation.proto",
        "yandex/cloud/operation/operation_service.proto",
        "yandex/cloud/endpoint/api_endpoint.proto",
        "yandex/cloud/endpoint/api_endpoint_service.proto",
    }
    found = list(differences(ours, public))
    assert not found, "our protos differ from the public SDK's:\n" + "\n".join(found)
