"""The command-line client's habits, over fake stubs: UNAVAILABLE retried with one
idempotency key, WaitOperation used when offered and polling when it is not."""

from __future__ import annotations

from typing import Any

import grpc
import pytest

from service.entrypoints.client import connection as client_module
from service.entrypoints.client.connection import ApiClient, ApiError, ApiTarget
from yandex.cloud.baremetal.v1alpha import image_pb2, image_service_pb2
from yandex.cloud.operation import operation_pb2


class Refusal(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str = "") -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


class Scripted:
    """A stub method answering from a script: each item is returned, or raised."""

    def __init__(self, *answers: Any) -> None:
        self.answers = list(answers)
        self.calls: list[dict[str, str]] = []

    def __call__(self, request: Any, *, metadata: Any, timeout: float) -> Any:
        self.calls.append(dict(metadata))
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        return answer


@pytest.fixture
def api(monkeypatch):
    monkeypatch.setattr(client_module, "POLL_SECONDS", 0.0)
    monkeypatch.setattr(client_module.time, "sleep", lambda seconds: None)
    notices: list[str] = []
    with ApiClient(ApiTarget("127.0.0.1:1", "tok.secret"), notices.append) as made:
        made.notices = notices  # type: ignore[attr-defined]
        yield made


def operation(done: bool) -> operation_pb2.Operation:
    op = operation_pb2.Operation(id="opn1", done=done)
    op.metadata.Pack(image_service_pb2.UpdateImageMetadata(image_id="img1"))
    return op


def test_a_mutation_retried_after_unavailable_sends_the_same_idempotency_key(api):
    method = Scripted(Refusal(grpc.StatusCode.UNAVAILABLE, "connect failed"), operation(False))
    assert api.call(method, None, mutation=True).id == "opn1"
    keys = [call["idempotency-key"] for call in method.calls]
    assert len(keys) == 2
    assert keys[0] == keys[1]
    assert all(call["authorization"] == "Bearer tok.secret" for call in method.calls)
    assert api.notices == ["the API is unavailable (connect failed); retrying"]


def test_a_read_carries_no_idempotency_key(api):
    method = Scripted(operation(True))
    api.call(method, None)
    assert "idempotency-key" not in method.calls[0]


def test_a_refusal_other_than_unavailable_is_not_retried(api):
    method = Scripted(Refusal(grpc.StatusCode.NOT_FOUND, "Image img1 not found"))
    with pytest.raises(ApiError) as caught:
        api.call(method, None, mutation=True)
    assert len(method.calls) == 1
    assert str(caught.value) == "NOT_FOUND: Image img1 not found"


def test_unavailable_past_the_retry_time_says_where_it_tried():
    method = Scripted(Refusal(grpc.StatusCode.UNAVAILABLE, "connection refused"))
    with (
        ApiClient(ApiTarget("127.0.0.1:1", "t"), print, retry_seconds=0.0) as api,
        pytest.raises(ApiError, match=r"cannot reach the API at 127\.0\.0\.1:1"),
    ):
        api.call(method, None)
    assert len(method.calls) == 1


REFUSED = (
    "failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:1:"
    " Failed to connect to remote host: Connection refused"
)


class Clock:
    """time.monotonic and time.sleep for the client: sleeping moves the clock."""

    def __init__(self) -> None:
        self.now = 0.0

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    made = Clock()
    monkeypatch.setattr(client_module.time, "monotonic", made.monotonic)
    monkeypatch.setattr(client_module.time, "sleep", made.sleep)
    return made


def test_a_first_call_refused_outright_gives_up_soon_with_one_notice(clock: Clock):
    """A mistyped endpoint: nothing listens there. Not RETRY_SECONDS of identical lines."""
    method = Scripted(Refusal(grpc.StatusCode.UNAVAILABLE, REFUSED))
    notices: list[str] = []
    with (
        ApiClient(ApiTarget("127.0.0.1:1", "t"), notices.append) as api,
        pytest.raises(ApiError, match=r"cannot reach the API at 127\.0\.0\.1:1"),
    ):
        api.call(method, None)
    assert clock.now <= client_module.FIRST_CONTACT_SECONDS
    assert len(method.calls) > 1  # retried meanwhile
    assert notices == [f"the API is unavailable ({REFUSED}); retrying"]


def test_refused_after_the_api_has_answered_is_retried_for_the_whole_retry_time(clock: Clock):
    """The API restarting under a command that already talked to it."""
    method = Scripted(operation(True), *[Refusal(grpc.StatusCode.UNAVAILABLE, REFUSED)] * 3)
    notices: list[str] = []
    with ApiClient(ApiTarget("127.0.0.1:1", "t"), notices.append, retry_seconds=20) as api:
        api.call(method, None)
        with pytest.raises(ApiError):
            api.call(method, None)
    assert client_module.FIRST_CONTACT_SECONDS < clock.now <= 20
    assert len(notices) == 1


def test_a_first_call_cut_off_otherwise_is_retried_for_the_whole_retry_time(clock: Clock):
    """Something listens but the call is lost (a proxy, a restart): not a typo."""
    method = Scripted(Refusal(grpc.StatusCode.UNAVAILABLE, "Socket closed"))
    with (
        ApiClient(ApiTarget("127.0.0.1:1", "t"), print, retry_seconds=20) as api,
        pytest.raises(ApiError),
    ):
        api.call(method, None)
    assert client_module.FIRST_CONTACT_SECONDS < clock.now <= 20


def image(status: int) -> image_pb2.Image:
    return image_pb2.Image(id="img1", status=status)


def test_waiting_uses_wait_operation_and_reports_the_image_status(api):
    api.longrunning = type("L", (), {})()
    api.longrunning.WaitOperation = Scripted(
        type("Answer", (), {"done": False})(), type("Answer", (), {"done": True})()
    )
    api.images = type("I", (), {})()
    api.images.Get = Scripted(image(image_pb2.Image.UPDATING))
    api.operations = type("O", (), {})()
    api.operations.Get = Scripted(operation(True))
    seen: list[str] = []
    done = api.wait(operation(False), seen.append)
    assert done.done
    assert seen == ["UPDATING", "UPDATING"]
    assert len(api.longrunning.WaitOperation.calls) == 2
    assert len(api.operations.Get.calls) == 1  # only to read the finished operation


def test_waiting_polls_get_when_the_server_has_no_wait_operation(api):
    api.longrunning = type("L", (), {})()
    api.longrunning.WaitOperation = Scripted(Refusal(grpc.StatusCode.UNIMPLEMENTED))
    api.images = type("I", (), {})()
    api.images.Get = Scripted(image(image_pb2.Image.CREATING))
    api.operations = type("O", (), {})()
    api.operations.Get = Scripted(operation(False), operation(False), operation(True))
    done = api.wait(operation(False), lambda status: None)
    assert done.done
    assert len(api.longrunning.WaitOperation.calls) == 1  # asked once, then never again
    assert len(api.operations.Get.calls) == 3


def test_waiting_for_a_delete_reports_the_image_gone(api):
    api.longrunning = type("L", (), {})()
    api.longrunning.WaitOperation = Scripted(type("Answer", (), {"done": True})())
    api.images = type("I", (), {})()
    api.images.Get = Scripted(Refusal(grpc.StatusCode.NOT_FOUND, "gone"))
    api.operations = type("O", (), {})()
    api.operations.Get = Scripted(operation(True))
    seen: list[str] = []
    api.wait(operation(False), seen.append)
    assert seen == ["deleted"]
