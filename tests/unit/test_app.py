"""The application layer every front calls (warmd.app), in process: plain data in and out, one lookup per
call, streamed chat with usage, cancellation when the reader goes away, and jobs followed to their end."""
from __future__ import annotations

import threading
from pathlib import Path

import pytest

from waiting import wait_until
from warmd import chat
from warmd.app import App, ChatRequest, select_outputs
from warmd.config import Settings
from warmd.errors import Code, WarmdError
from warmd.providers.base import CallContext, InferRequest, InferResult, Provider


class Instant(Provider):
    """Loads at once, counts 1000 bytes, holds nothing."""

    options_schema = {"type": "object"}

    @classmethod
    def estimate(cls, spec, files):  # type: ignore[no-untyped-def]
        return 1000

    def load(self) -> int:
        return 1000

    def unload(self) -> None:
        pass


class Talker(Instant):
    """A chat model that says options.words one at a time, checking for a cancel between words."""

    name = "talker"
    started = threading.Event()
    stopped: list[str] = []

    def infer(self, request: InferRequest) -> InferResult:
        conversation = chat.messages(request.parameters, request.text)
        words = self.spec.options.get("words", ["a", "b", "c"])
        limit = chat.sampling(request.parameters).max_tokens or len(words)
        ctx = request.context
        Talker.started.set()
        for i, word in enumerate(words[:limit]):
            if self.spec.options.get("wait_for_cancel") and i == 1:
                ctx.cancelled.wait(10)
            try:
                ctx.check()
            except WarmdError:
                Talker.stopped.append(self.spec.name)
                raise
            ctx.emit(word)
        text = "".join(words[:limit])
        return InferResult(json=chat.result(text, "length" if limit < len(words) else "stop", len(conversation), limit))


class Embedder(Instant):
    name = "embedder"

    def infer(self, request: InferRequest) -> InferResult:
        import numpy as np

        return InferResult(tensors={"embedding": np.full((len(request.text), 3), 0.5, np.float32)})


@pytest.fixture
def app(tmp_path: Path):  # type: ignore[no-untyped-def]
    specs = tmp_path / "specs"
    specs.mkdir()
    (specs / "w").write_bytes(b"")
    (specs / "talk.yaml").write_text("provider: talker\ntask: chat\ndevice: cpu\nsource: {path: w}\n"
                                     "options: {words: [Hel, lo, ' there']}\nmax_in_flight: 1\n")
    (specs / "slow.yaml").write_text("provider: talker\ntask: chat\ndevice: cpu\nsource: {path: w}\n"
                                     "options: {wait_for_cancel: true}\nmax_in_flight: 1\nmax_queue: 0\n")
    (specs / "vec.yaml").write_text("provider: embedder\ntask: feature-extraction\ndevice: cpu\nsource: {path: w}\n")
    settings = Settings(specs_dir=specs, data_dir=tmp_path / "data", plugins_dir=tmp_path / "plugins",
                        profiles_dir=tmp_path / "profiles", token_file=tmp_path / "config" / "token",
                        path_roots=[tmp_path])
    app = App(settings, providers={"talker": Talker, "embedder": Embedder})
    app.catalog.rescan()
    app.scheduler.start()
    Talker.started.clear()
    Talker.stopped = []
    yield app
    app.scheduler.shutdown(timeout_s=5)


def test_chat_streams_text_then_the_result_with_usage(app: App) -> None:
    chunks = list(app.chat("talk", ChatRequest([{"role": "user", "content": "hi"}], {"max_tokens": 2})))
    assert [c.text for c in chunks[:-1]] == ["Hel", "lo"]
    done = chunks[-1].result.chat
    assert (done.text, done.stopped, done.usage.prompt_tokens, done.usage.completion_tokens) == ("Hello", "length", 1, 2)
    assert done.usage.total_tokens == 3
    assert app.statistics([app.spec("talk")])[0].stats.success_count == 1      # counted like any request


def test_a_reader_that_goes_away_cancels_the_call_and_frees_the_slot(app: App) -> None:
    stream = app.chat("slow", ChatRequest([{"role": "user", "content": "hi"}]))
    assert next(stream).text == "a"
    stream.close()                           # an HTTP client disconnected: the generator is closed
    wait_until(lambda: Talker.stopped == ["slow"], timeout=10)
    wait_until(lambda: app.inference.queue_depth("slow") == (0, 0), timeout=10)
    # the slot serves again (max_in_flight 1, max_queue 0: a call still running would make this `busy`)
    Talker.started.clear()
    again = app.chat("slow", ChatRequest([{"role": "user", "content": "hi"}]), context=CallContext())
    assert next(again).text == "a"
    again.close()


def test_every_call_looks_the_model_up_once(app: App, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    require = app.catalog.require

    def counting(name: str, listed_by: str = "") -> object:
        calls.append(name)
        return require(name, listed_by) if listed_by else require(name)

    with app.load("vec") as load:            # resident first: a load looks its spec up as it goes
        load.result()
    monkeypatch.setattr(app.catalog, "require", counting)
    target = app.target("vec")
    assert calls == ["vec"]
    for _ in range(3):
        app.infer(target, InferRequest(text=["x"]))
    assert calls == ["vec"]                   # the target is handed on, never looked up again
    assert app.embed("vec", ["a", "b"]).shape == (2, 3)
    assert calls == ["vec", "vec"]


def test_plain_data_errors_and_outputs(app: App) -> None:
    with pytest.raises(WarmdError) as err:
        app.target("tlak")
    assert err.value.code is Code.MODEL_NOT_FOUND and "did you mean 'talk'" in err.value.message
    with pytest.raises(WarmdError) as err:
        ChatRequest([{"role": "user", "content": "x"}], {"temprature": 1}).parameters()
    assert err.value.code is Code.INVALID_ARGUMENT and "temprature" in err.value.message
    with pytest.raises(WarmdError) as err:
        app.embed("talk", ["x"])
    assert err.value.code is Code.INVALID_ARGUMENT and "gives no embedding" in err.value.message
    result = app.infer("vec", InferRequest(text=["x"])).result
    assert select_outputs("vec", result, []) == ["embedding"]
    with pytest.raises(WarmdError) as err:
        select_outputs("vec", result, ["nope"])
    assert err.value.code is Code.INVALID_ARGUMENT and "gives embedding" in err.value.message


def test_a_load_is_followed_to_its_end_and_a_second_one_is_already_resident(app: App) -> None:
    with app.load("vec") as load:
        kinds = [e.kind for e in load.events()]
    assert kinds[0] == "model.loading" and kinds[-1] == "model.loaded"
    with app.load("vec") as load:
        [event] = list(load.events())
    assert (event.kind, event.message) == ("model.loaded", "already resident")
    info = app.model("vec")
    assert (info.state, info.downloadable, info.files.state) == ("ready", False, "complete")
    with app.pull("vec") as pull:        # a local source's files are there: nothing to download
        [event] = list(pull.events())
    assert (event.kind, event.message) == ("download.finished", "already on disk")
