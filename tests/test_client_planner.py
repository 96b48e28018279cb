"""The clients' request planner without a server: chunking, retry delays, error decoding, streams, interruption;
and both transports over one fake server (httpx.MockTransport), which must give the same answers."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import threading
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from mlipserve.clients import AsyncClient, Client, RelaxOptions, RequestFailed, StructureFailed, relaxing
from mlipserve.clients import retrying as retrying_module
from mlipserve.clients.effects import Answer, Call, Done, Emit, Gather, Open, ReadLine, Reply, Send, Sleep
from mlipserve.clients.errors import error_code
from mlipserve.clients.options import ClientOptions, ClientSettings
from mlipserve.clients.planner import Planner
from mlipserve.clients.results import Result
from mlipserve.clients.retrying import request, retry_delay
from mlipserve.errors import ErrorCode


def atoms_dict(n: int) -> dict[str, Any]:
    return {"numbers": [1] * n, "positions": [[float(i), 0.0, 0.0] for i in range(n)]}


def ok(payload: Any, **headers: str) -> Reply:
    return Reply(200, headers, json.dumps(payload).encode())


def refused(status: int, code: str, message: str = "no", **headers: str) -> Reply:
    return Reply(status, headers, json.dumps({"error": {"code": code, "message": message}}).encode())


def entry(energy: float) -> dict[str, Any]:
    return {"energy": energy, "energy_per_atom": energy, "forces": [[0.0, 0.0, 0.0]], "stress": None}


def drive(plan: Any, answer: Callable[[Any], Any], sleep: Callable[[float], Any] = lambda _: None) -> tuple[Any, list]:
    """Run ``plan`` by hand: ``answer(effect)`` answers Send/Open/ReadLine, ``sleep`` Sleep; Gather's plans run in
    order. Returns the plan's value and every effect it asked for (a Gather's plans' effects included)."""
    seen: list[Any] = []
    step = Answer()
    while not isinstance(effect := step.send_to(plan), Done):
        seen.append(effect)
        if isinstance(effect, Gather):
            values = []
            for inner in effect.plans:
                value, inner_seen = drive(inner, answer, sleep)
                values.append(value)
                seen.extend(inner_seen)
            step = Answer(values)
        elif isinstance(effect, Emit):
            step = Answer()
        else:
            try:
                step = Answer(sleep(effect.seconds) if isinstance(effect, Sleep) else answer(effect))
            except BaseException as error:
                step = Answer(error=error)
    return effect.value, seen


# -- chunking -----------------------------------------------------------------------------------------------------


def test_predict_splits_by_structures_and_atoms_and_keeps_global_indices() -> None:
    planner = Planner(ClientSettings(model="m", chunk_size=2, chunk_atoms=8, concurrency=3, progress=False))
    sizes = [3, 3, 3, 10, 1, 1]
    bodies: list[dict[str, Any]] = []

    def answer(effect: Any) -> Reply:
        assert isinstance(effect, Send) and effect.call.path == "/v1/predict"
        body = effect.call.json
        bodies.append(body)
        entries = [entry(-float(len(s["numbers"]))) for s in body["structures"]]
        if len(body["structures"]) == 1 and len(body["structures"][0]["numbers"]) == 10:
            entries = [{"error": {"code": "atoms_too_close", "message": "structure 0: atoms 0 and 1 are close"}}]
        return ok({"model": {"name": "m"}, "results": entries})

    results, seen = drive(planner.predict([atoms_dict(n) for n in sizes], errors="return"), answer)
    [gather] = [e for e in seen if isinstance(e, Gather)]
    assert gather.limit == 3
    assert [[len(s["numbers"]) for s in body["structures"]] for body in bodies] == [[3, 3], [3], [10], [1, 1]]
    assert all(body["model"] == "m" and body["properties"] == ["energy", "forces", "stress"] for body in bodies)
    assert [r.energy for r in results] == [-3.0, -3.0, -3.0, None, -1.0, -1.0]
    failed = results[3].error
    assert failed.index == 3 and failed.message.startswith("structure 3: ") and failed.code is ErrorCode.ATOMS_TOO_CLOSE
    with pytest.raises(StructureFailed, match="structure 3: atoms 0 and 1"):
        drive(planner.predict([atoms_dict(n) for n in sizes]), answer)


def test_one_structure_gives_one_result_and_the_call_uses_the_settings_timeout() -> None:
    planner = Planner(ClientSettings(timeout=12.5, progress=False))
    calls: list[Call] = []

    def answer(effect: Any) -> Reply:
        calls.append(effect.call)
        return ok({"model": {}, "results": [entry(-1.0)]})

    result, _ = drive(planner.predict(atoms_dict(2), ["energy"], model="x"), answer)
    assert isinstance(result, Result) and result.energy == -1.0
    assert calls[0].timeout == 12.5 and calls[0].json["properties"] == ["energy"] and calls[0].json["model"] == "x"


def test_relax_sends_its_options_without_timeout_and_in_small_chunks() -> None:
    planner = Planner(ClientSettings(progress=False))
    calls: list[Call] = []

    def answer(effect: Any) -> Reply:
        calls.append(effect.call)
        return ok({"model": {}, "results": [{"error": {"code": "x", "message": "structure 0: x"}}] * 2})

    structures = [atoms_dict(2) for _ in range(32)]
    results, _ = drive(planner.relax(structures, fmax=0.02, fixed=[[0]] + [None] * 31, errors="return"), answer)
    assert len(calls) == 16 and all(call.timeout is None and call.path == "/v1/relax" for call in calls)
    options = {k: v for k, v in calls[0].json.items() if k not in ("structures", "fixed")}
    assert options == RelaxOptions(fmax=0.02).request()
    assert calls[0].json["fixed"] == [[0], None] and "fixed" not in calls[1].json
    assert [r.error.index for r in results][:3] == [0, 1, 2]
    with pytest.raises(ValueError, match="output must be one of"):
        drive(planner.relax(structures, output="xyz"), answer)
    with pytest.raises(ValueError, match="fixed has 1 entries for 32 structures"):
        drive(planner.relax(structures, fixed=[[0]]), answer)


def test_both_clients_take_the_settings_options() -> None:
    fields = {field.name for field in dataclasses.fields(ClientSettings)}
    assert set(ClientOptions.__annotations__) == fields - {"url", "model"}  # the keyword options, less url, model
    for kind in (Client, AsyncClient):
        client = kind("http://host:1/", "m", chunk_size=3, retries=0)
        assert client.settings == ClientSettings("http://host:1", "m", chunk_size=3, retries=0)
        with pytest.raises(dataclasses.FrozenInstanceError):
            client.settings.retries = 2
        with pytest.raises(TypeError, match="chunk_sise"):
            kind(chunk_sise=3)


def test_long_relaxation_lists_go_through_a_job(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(relaxing, "RELAX_DIRECT_LIMIT", 1)  # read at call time, as test_relax_http relies on
    planner = Planner(ClientSettings(model="m", progress=False))
    sent: list[Call] = []
    relaxed = {**entry(-1.0), "steps": 1, "converged": True, "stop_reason": "converged", "fmax": 0.01}
    relaxed["structure"] = {"numbers": [1], "positions": [[0, 0, 0]], "cell": [0, 0, 0], "pbc": False}
    lines = iter([json.dumps({"index": i, **relaxed}) for i in range(2)])

    def answer(effect: Any) -> Any:
        if isinstance(effect, Send):
            sent.append(effect.call)
            return ok({"id": "j"} if effect.call.method == "POST" else status(total=2, done=2))
        return Reply(200) if isinstance(effect, Open) else next(lines, None)

    atoms, _ = drive(planner.relax([atoms_dict(1), atoms_dict(1)], fmax=0.2, output="ase"), answer)
    assert [(call.method, call.path) for call in sent][:2] == [("POST", "/v1/jobs"), ("GET", "/v1/jobs/j")]
    assert sent[0].json["relax"]["fmax"] == 0.2 and sent[0].json["model"] == "m"
    assert [a.get_potential_energy() for a in atoms] == [-1.0, -1.0]


def test_relax_options_from_a_dict() -> None:
    assert RelaxOptions.of({"fmax": 0.1}) == RelaxOptions(fmax=0.1)
    assert RelaxOptions.of({"fmax": 0.1}).request()["max_steps"] == 500
    with pytest.raises(TypeError, match="unknown relaxation option"):
        RelaxOptions.of({"f_max": 0.1})


# -- retries ------------------------------------------------------------------------------------------------------


def test_retry_delay_honours_retry_after_grows_and_gives_up(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(retrying_module.random, "random", lambda: 0.5)  # jitter factor 1
    settings = ClientSettings(retries=3, backoff=0.25)
    busy = refused(503, "queue_full")
    assert [retry_delay(settings, attempt, busy) for attempt in range(4)] == [0.25, 0.5, 1.0, None]
    assert retry_delay(settings, 0, refused(503, "model_loading", **{"Retry-After": "7"})) == 7.0
    assert retry_delay(settings, 0, refused(503, "x", **{"retry-after": "soon"})) == 0.25  # unparsable: backoff
    assert retry_delay(settings, 1, Reply(None, error=httpx.ConnectError("refused"))) == 0.5
    for status in (502, 504):
        assert retry_delay(settings, 0, Reply(status)) == 0.25
    for final in (refused(404, "unknown_model"), refused(422, "invalid_request"), ok({})):
        assert retry_delay(settings, 0, final) is None


def test_jitter_stays_within_half_and_one_and_a_half_times_the_backoff() -> None:
    settings = ClientSettings(backoff=1.0)
    delays = [retry_delay(settings, 2, Reply(None)) for _ in range(200)]
    assert all(2.0 <= d < 6.0 for d in delays if d is not None) and len(set(delays)) > 1


def test_request_retries_then_answers() -> None:
    replies = iter([refused(503, "model_loading", **{"Retry-After": "2"}), Reply(None), ok({"fine": True})])
    value, seen = drive(request(ClientSettings(backoff=0.0), Call("GET", "/v1/models", 1.0)), lambda _: next(replies))
    assert value == {"fine": True}
    assert [type(e).__name__ for e in seen] == ["Send", "Sleep", "Send", "Sleep", "Send"]
    assert seen[1] == Sleep(2.0)


def test_request_gives_up_after_retries_with_the_servers_error() -> None:
    sends: list[Any] = []

    def answer(effect: Any) -> Reply:
        sends.append(effect)
        return refused(503, "queue_full", "full")

    with pytest.raises(RequestFailed) as raised:
        drive(request(ClientSettings(retries=2, backoff=0.0), Call("POST", "/v1/predict", 1.0)), answer)
    assert len(sends) == 3  # the first try and two retries
    assert (raised.value.status, raised.value.code, raised.value.message) == (503, "queue_full", "full")
    assert raised.value.code is ErrorCode.QUEUE_FULL and str(raised.value) == "full [queue_full, HTTP 503]"


def test_unreachable_server_raises_with_the_connection_error_as_cause() -> None:
    cause = httpx.ConnectError("connection refused")
    settings = ClientSettings("http://nowhere:1/", retries=1, backoff=0.0)
    with pytest.raises(RequestFailed, match="unreachable") as raised:
        drive(request(settings, Call("GET", "/v1/models", 1.0)), lambda _: Reply(None, error=cause))
    assert raised.value.status is None and raised.value.code is ErrorCode.UNREACHABLE
    assert raised.value.__cause__ is cause and raised.value.message == "http://nowhere:1: connection refused"


# -- error decoding -----------------------------------------------------------------------------------------------


def test_error_bodies_are_decoded_and_unknown_codes_kept_as_strings() -> None:
    settings = ClientSettings(retries=0)

    def failed(reply: Reply) -> RequestFailed:
        with pytest.raises(RequestFailed) as raised:
            drive(request(settings, Call("GET", "/x", 1.0)), lambda _: reply)
        return raised.value

    not_json = failed(Reply(500, {}, b"<html>Internal Server Error</html>"))
    assert not_json.code is ErrorCode.HTTP_ERROR and not_json.message.startswith("<html>")
    newer = failed(refused(409, "some_future_code", "later"))
    assert newer.code == "some_future_code" and not isinstance(newer.code, ErrorCode)
    assert error_code("unknown_job") is ErrorCode.UNKNOWN_JOB and error_code("unknown_job") == "unknown_job"
    assert StructureFailed(1, "no_atoms", "m").code is ErrorCode.NO_ATOMS


# -- jobs ---------------------------------------------------------------------------------------------------------


def status(state: str = "done", total: int | None = 3, done: int = 3) -> dict[str, Any]:
    return {"id": "j", "state": state, "total": total, "done": done, "errors": 0, "error": None, "model_info": {}}


def line(index: int, energy: float) -> str:
    return json.dumps({"index": index, **entry(energy)})


def test_job_results_resume_where_a_broken_stream_stopped() -> None:
    planner = Planner(ClientSettings(backoff=0.0))
    broken = Reply(None, error=httpx.ReadError("connection reset"))
    script: Iterator[Any] = iter(
        [ok(status()), Reply(200), line(0, -1.0), "", broken, Reply(200), line(1, -2.0), line(2, -3.0), None]
    )
    opened: list[Call] = []

    def answer(effect: Any) -> Any:
        if isinstance(effect, Open):
            opened.append(effect.call)
        assert isinstance(effect, (Send, Open, ReadLine))
        return next(script)

    _, seen = drive(planner.job_results("j"), answer)
    assert [e.value.energy for e in seen if isinstance(e, Emit)] == [-1.0, -2.0, -3.0]
    assert [call.params for call in opened] == [{"start": 0}, {"start": 1}]
    assert opened[0].path == "/v1/jobs/j/results"


def test_run_job_cancels_the_job_when_interrupted() -> None:
    planner = Planner(ClientSettings(progress=False))
    sent: list[Call] = []

    def interrupt(seconds: float) -> None:
        raise KeyboardInterrupt

    def answer(effect: Any) -> Any:
        sent.append(effect.call)
        if effect.call.method == "POST":
            return ok({"id": "j", "state": "queued"})
        return ok(status("running", done=1) if effect.call.method == "GET" else status("cancelled"))

    with pytest.raises(KeyboardInterrupt):
        drive(planner.run_job([atoms_dict(1)] * 3, relax={"fmax": 0.1}), answer, interrupt)
    assert [(call.method, call.path) for call in sent] == [
        ("POST", "/v1/jobs"),
        ("GET", "/v1/jobs/j"),
        ("DELETE", "/v1/jobs/j"),
    ]
    assert sent[0].json["relax"] == RelaxOptions(fmax=0.1).request()


@pytest.mark.parametrize(("state", "code"), [("failed", "job_failed"), ("cancelled", "job_cancelled")])
def test_a_job_that_did_not_finish_raises(state: str, code: str) -> None:
    planner = Planner(ClientSettings(progress=False))
    replies = iter([ok({"id": "j"}), ok(status(state, done=1))])
    with pytest.raises(RequestFailed) as raised:
        drive(planner.run_job([atoms_dict(1)] * 3), lambda _: next(replies))
    assert raised.value.code == code and isinstance(raised.value.code, ErrorCode)


# -- both transports over one fake server -------------------------------------------------------------------------


class FakeServer:
    """Answers /v1/predict (energy = -atoms; the first request of all gets a 503), /v1/relax, jobs, /readyz."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests: list[tuple[str, str]] = []
        self.jobs: dict[str, list[dict[str, Any]]] = {}

    def __call__(self, request: httpx.Request) -> httpx.Response:
        with self.lock:
            self.requests.append((request.method, request.url.path))
            first = len(self.requests) == 1
        path = request.url.path
        if first:
            return httpx.Response(503, headers={"Retry-After": "0"}, json={"error": {"code": "model_loading"}})
        if path == "/readyz":
            return httpx.Response(200, json={})
        if path in ("/v1/predict", "/v1/relax"):
            body = json.loads(request.content)
            return httpx.Response(200, json={"model": {"name": "fake"}, "results": self.evaluate(body)})
        if path == "/v1/jobs" and request.method == "POST":
            if request.headers["content-type"].startswith("multipart"):
                assert b"frame text" in request.content and b'name="properties"' in request.content
                structures = [atoms_dict(1), atoms_dict(2)]
            else:
                structures = json.loads(request.content)["structures"]
            job_id = f"job{len(self.jobs)}"
            self.jobs[job_id] = self.evaluate({"structures": structures})
            return httpx.Response(202, json={"id": job_id, "state": "queued", "total": len(structures)})
        job_id = path.split("/")[3]
        if path.endswith("/results"):
            start = int(request.url.params["start"])
            lines = [json.dumps({"index": i, **e}) for i, e in enumerate(self.jobs[job_id])][start:]
            return httpx.Response(200, content="\n".join(lines).encode())
        if job_id not in self.jobs:
            return httpx.Response(404, json={"error": {"code": "unknown_job", "message": f"no job {job_id}"}})
        n = len(self.jobs[job_id])
        state = "cancelled" if request.method == "DELETE" else "done"
        model_info = {"name": "fake"}
        return httpx.Response(200, json={**status(state, n, n), "id": job_id, "model_info": model_info})

    @staticmethod
    def evaluate(body: dict[str, Any]) -> list[dict[str, Any]]:
        return [entry(-float(len(s["numbers"]))) for s in body["structures"]]


def calls(client: Any, upload: Path) -> Generator[Any, Any, list[Any]]:
    """The same calls for either client, as a list of plain values: yields what each call returns (a coroutine for
    an AsyncClient) and is sent its value."""
    structures = [atoms_dict(n) for n in (1, 2, 3, 4, 5)]
    return [
        ("predict", [r.energy for r in (yield client.predict(structures))]),
        ("one", (yield client.predict(atoms_dict(2))).energy),
        ("ready", (yield client.ready())),
        ("run_job", [r.energy for r in (yield client.run_job(structures, poll=0.0))]),
        ("file", (yield client.submit_job_file(upload, properties=["energy"]))),
        ("status", (yield client.job("job1"))["state"]),
        ("cancel", (yield client.cancel_job("job1"))["state"]),
    ]


def run_sync(client: Client, upload: Path) -> list[Any]:
    steps = calls(client, upload)
    value = None
    try:
        while True:
            value = steps.send(value)
    except StopIteration as done:
        return done.value


async def run_async(client: AsyncClient, upload: Path) -> list[Any]:
    steps = calls(client, upload)
    value = None
    try:
        while True:
            value = await steps.send(value)
    except StopIteration as done:
        return done.value


def test_sync_and_async_transports_give_the_same_answers(tmp_path: Path) -> None:
    upload = tmp_path / "frames.extxyz"
    upload.write_text("frame text")
    options: dict[str, Any] = {"chunk_size": 2, "backoff": 0.0, "progress": False}
    sync_server, async_server = FakeServer(), FakeServer()
    with Client("http://fake", **options) as client:
        client.transport.http.close()
        client.transport.http = httpx.Client(transport=httpx.MockTransport(sync_server), base_url="http://fake")
        synchronous = run_sync(client, upload)
        streamed = [r.energy for r in client.job_results("job0")]
        with pytest.raises(RequestFailed) as sync_missing:
            client.job("nope")

    async def main() -> tuple[list[Any], list[Any], RequestFailed]:
        async with AsyncClient("http://fake", **options) as client:
            mock = httpx.MockTransport(async_server)
            await client.transport.http.aclose()
            client.transport.http = httpx.AsyncClient(transport=mock, base_url="http://fake")
            answers = await run_async(client, upload)
            streamed = [r.energy async for r in client.job_results("job0")]
            with pytest.raises(RequestFailed) as missing:
                await client.job("nope")
            return answers, streamed, missing.value

    asynchronous, async_streamed, async_missing = asyncio.run(main())
    assert synchronous == asynchronous
    assert synchronous[0] == ("predict", [-1.0, -2.0, -3.0, -4.0, -5.0])
    assert synchronous[3] == ("run_job", [-1.0, -2.0, -3.0, -4.0, -5.0])
    assert streamed == async_streamed == [-1.0, -2.0, -3.0, -4.0, -5.0]
    assert (
        (sync_missing.value.status, sync_missing.value.code)
        == (async_missing.status, async_missing.code)
        == (
            404,
            "unknown_job",
        )
    )
    assert sorted(sync_server.requests) == sorted(async_server.requests)
    assert sync_server.requests.count(("POST", "/v1/predict")) == 1 + 3 + 1  # a 503, three chunks, one structure


def job_server(seen: list[tuple[str, str]], interrupt: bool = False) -> httpx.MockTransport:
    """A job that never ends; the status request raises KeyboardInterrupt if ``interrupt`` (Ctrl-C while waiting)."""

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append((request.method, request.url.path))
        if request.method == "POST":
            return httpx.Response(202, json={"id": "j", "state": "queued", "total": 1})
        if request.method == "DELETE":
            return httpx.Response(200, json=status("cancelled", 1, 0))
        if interrupt:
            raise KeyboardInterrupt
        return httpx.Response(200, json=status("running", 1, 0))

    return httpx.MockTransport(handler)


def test_interrupting_run_job_cancels_the_job_in_both_transports() -> None:
    seen_sync: list[tuple[str, str]] = []
    with Client("http://fake", progress=False) as client, pytest.raises(KeyboardInterrupt):
        client.transport.http.close()
        client.transport.http = httpx.Client(transport=job_server(seen_sync, interrupt=True), base_url="http://fake")
        client.run_job([atoms_dict(1)], poll=0.01)

    seen_async: list[tuple[str, str]] = []

    async def main() -> None:
        async with AsyncClient("http://fake", progress=False) as client:
            await client.transport.http.aclose()
            client.transport.http = httpx.AsyncClient(transport=job_server(seen_async), base_url="http://fake")
            task = asyncio.ensure_future(client.run_job([atoms_dict(1)], poll=0.01))
            while len(seen_async) < 3:
                await asyncio.sleep(0.01)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    asyncio.run(main())
    for seen in (seen_sync, seen_async):
        assert seen[0] == ("POST", "/v1/jobs") and seen[-1] == ("DELETE", "/v1/jobs/j")
        assert seen.count(("DELETE", "/v1/jobs/j")) == 1
