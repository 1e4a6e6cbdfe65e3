"""Every implementation of the model interface against the protocols.

For each class (the backend, the cache, the micro-batcher, the served models, the
answer's shared-pass view): it is an instance of the runtime-checkable protocol, every
member the protocol names is defined by the class itself (no ``__getattr__``
delegation), and the wrappers give the backend's results on the tiny model for each
method of the interface.
"""

from __future__ import annotations

import inspect
import threading

import numpy as np
import pytest
import torch

from safescale.agents.lmcache import CachedLM
from safescale.agents.nodes import SharedPrompt
from safescale.models import (
    NEUTRAL_MESSAGE,
    LanguageModel,
    MicroBatchedLM,
    MicroBatcher,
    PromptError,
)
from safescale.models.interface import (
    BlackBoxModel,
    WhiteBoxModel,
    is_whitebox,
    protocol_members,
)
from safescale.models.served.base import ServedModel
from safescale.models.served.chat import OpenAIChatModel
from safescale.models.served.client import ServerClient
from safescale.models.served.openai import OpenAICompletionsModel
from safescale.models.served.settings import ServedSettings
from safescale.models.served.vllm import VLLMModel

MESSAGE = "Question: which imaging first?\nA) CT\nB) MRI\nC) X-ray"
OTHER = "Question: which dose?\nA) low\nB) high"
LETTERS = ["A", "B", "C"]

WHITEBOX_CLASSES = [LanguageModel, CachedLM, MicroBatchedLM]
BLACKBOX_CLASSES = [OpenAICompletionsModel, OpenAIChatModel, VLLMModel, SharedPrompt]


def _defined_on_class(cls: type, name: str) -> bool:
    """``name`` is defined by ``cls`` or a base of it that is not ``object``."""
    return any(name in vars(base) for base in cls.__mro__ if base is not object)


def _instance_attribute(obj: object, name: str) -> bool:
    return name in vars(obj) or _defined_on_class(type(obj), name)


def _served(tiny_lm, kind: str = "openai"):
    """A served model over the tiny tokenizer, pointing at a port nothing listens on
    (its protocol surface needs no server; no request is sent)."""
    settings = ServedSettings(
        kind=kind, name=f"tiny-{kind}", model="tiny", base_url="http://127.0.0.1:9/v1"
    )
    client = ServerClient(settings.base_url, model="tiny")
    cls = OpenAICompletionsModel if kind == "openai" else OpenAIChatModel
    return cls(settings, (tiny_lm.tokenizer, True), client)


@pytest.fixture(scope="module")
def wrappers(tiny_lm):
    batcher = MicroBatcher(tiny_lm)
    batched = MicroBatchedLM(tiny_lm, batcher)
    return {
        "cached": CachedLM(tiny_lm),
        "batched": batched,
        "cached_batched": CachedLM(batched),
    }


@pytest.mark.parametrize("cls", WHITEBOX_CLASSES + BLACKBOX_CLASSES, ids=lambda c: c.__name__)
def test_no_implementation_delegates_by_getattr(cls):
    assert not any("__getattr__" in vars(base) for base in cls.__mro__), cls


@pytest.mark.parametrize("cls", WHITEBOX_CLASSES, ids=lambda c: c.__name__)
def test_whitebox_classes_define_every_member(cls, tiny_lm, wrappers):
    instance = {
        LanguageModel: tiny_lm,
        CachedLM: wrappers["cached"],
        MicroBatchedLM: wrappers["batched"],
    }[cls]
    missing = [n for n in protocol_members(WhiteBoxModel) if not _instance_attribute(instance, n)]
    assert missing == []
    methods = [n for n in protocol_members(WhiteBoxModel) if callable(getattr(WhiteBoxModel, n))]
    assert "open_prompt" in methods and "score_options" in methods
    for name in methods:
        assert _defined_on_class(cls, name), name
        assert inspect.isfunction(inspect.getattr_static(cls, name)), name
    assert isinstance(instance, WhiteBoxModel)
    assert isinstance(instance, BlackBoxModel)
    assert is_whitebox(instance)


@pytest.mark.parametrize("cls", BLACKBOX_CLASSES, ids=lambda c: c.__name__)
def test_blackbox_classes_define_every_member(cls):
    # the class-level check (no server or engine needed): every method and property;
    # the data attributes a served model sets in ServedModel.__init__ (its name,
    # tokenizer, formulations) are checked on instances below
    instance_data = {"name", "tokenizer", "formulations"} if cls is not SharedPrompt else set()
    for name in protocol_members(BlackBoxModel):
        if name not in instance_data:
            assert _defined_on_class(cls, name), name
    for name in instance_data:
        assert not _defined_on_class(cls, name) or name == "formulations", name
    if cls is not SharedPrompt:
        assert issubclass(cls, ServedModel)
        # a served model has no weights here: it does not offer the white-box part
        absent = [n for n in protocol_members(WhiteBoxModel) if not _defined_on_class(cls, n)]
        assert {"feed", "answer_logits", "internals_from", "model"} <= set(absent)
        assert cls.whitebox is False


@pytest.mark.parametrize("kind", ["openai", "openai-chat"])
def test_served_models_are_blackbox_only(tiny_lm, kind):
    served = _served(tiny_lm, kind)
    missing = [n for n in protocol_members(BlackBoxModel) if not _instance_attribute(served, n)]
    assert missing == []
    assert isinstance(served, BlackBoxModel)
    assert not isinstance(served, WhiteBoxModel)
    assert not is_whitebox(served)
    # wrapped, they stay black-box although the wrappers define the white-box methods
    batched = MicroBatchedLM(served, MicroBatcher(served))
    for wrapped in (CachedLM(served), batched, CachedLM(batched)):
        assert isinstance(wrapped, BlackBoxModel)
        assert wrapped.whitebox is False
        assert not is_whitebox(wrapped)
        assert wrapped.model_hash == served.model_hash
        assert wrapped.prompt_ids(MESSAGE) == tiny_lm.prompt_ids(MESSAGE)
        assert wrapped.formulations == served.formulations
        assert wrapped.n_layers is None and wrapped.n_parameters is None
    served.close()


def test_shared_prompt_view_is_blackbox(tiny_lm):
    state = tiny_lm.open_prompt(MESSAGE)
    view = SharedPrompt(CachedLM(tiny_lm), tiny_lm, state)
    assert isinstance(view, BlackBoxModel)
    assert not is_whitebox(view)  # it exposes the answer's black-box calls only
    assert view.whitebox is True  # ... of a model that has its weights
    expected = tiny_lm.score_options([MESSAGE], LETTERS)
    np.testing.assert_allclose(view.score_options([MESSAGE], LETTERS), expected, atol=1e-4)
    np.testing.assert_allclose(
        view.score_options([OTHER], LETTERS[:2]),
        tiny_lm.score_options([OTHER], LETTERS[:2]),
        atol=1e-6,
    )


def _identity(lm):
    return (
        lm.name,
        lm.model_hash,
        lm.whitebox,
        lm.n_layers,
        lm.n_parameters,
        lm.context_length,
        lm.prompt_format_id,
        lm.tokenizer,
        lm.use_chat_template,
        lm.batch_size,
        lm.formulations,
        lm.CUED_SAMPLING_LAYOUT,
        lm.model,
        lm.device,
        lm.pad_token_id,
    )


def _calls(lm, backend):
    """Every method of the interface on ``lm`` (fresh prompt passes opened on it)."""
    out = {
        "prompt_text": lm.prompt_text(MESSAGE, answer_cue=True),
        "prompt_ids": lm.prompt_ids(MESSAGE, answer_cue=True),
        "count_tokens": lm.count_tokens(MESSAGE),
        "letter_token_ids": lm.letter_token_ids(LETTERS),
        "continuation_ids": lm.continuation_ids("CT of the head"),
        "cue_ids": lm.cue_ids(MESSAGE),
        "score_options": lm.score_options([MESSAGE, OTHER], LETTERS[:2]),
        "score_continuations": lm.score_continuations(
            [MESSAGE, NEUTRAL_MESSAGE], ["CT", "MRI of the head"]
        ).logprob,
        "generate": [
            g.token_ids
            for g in lm.generate([MESSAGE], max_new_tokens=4, n=2, temperature=1.0, seed=3)[0]
        ],
        "sequence_logprob": lm.sequence_logprob(MESSAGE, [5, 6, 7], 2),
    }
    internals = lm.internals(MESSAGE, [5, 6, 7], lens="kl")
    out["internals"] = (internals.logits, internals.hidden_states, internals.lens_kl_to_final)
    state = lm.open_prompt(MESSAGE)
    out["open_prompt"] = (state.prompt, state.cache.get_seq_length(), state.fed)
    out["answer_logits"] = lm.answer_logits(state)
    out["score_options_from"] = lm.score_options_from(state, LETTERS)
    out["score_continuations_from"] = lm.score_continuations_from(state, ["CT", "MRI"]).logprob
    out["generate_from"] = [
        g.token_ids for g in lm.generate_from(state, n=2, max_new_tokens=4, temperature=1.0, seed=3)
    ]
    out["last_hidden_from"] = lm.last_hidden_from(state, [[5, 6], [7]], 1)
    fresh = lm.open_prompt(MESSAGE)
    lm.feed(fresh, [fresh.prompt[-1], 9])
    out["feed"] = fresh.row_logits()
    reading = lm.internals_from(fresh, [9, 10, 11], lens="kl")
    out["internals_from"] = (reading.logits, reading.hidden_states)
    out["sequence_logprob_from"] = lm.sequence_logprob_from(fresh, [9, 10, 11, 12], 1)
    cued = lm.prompt_ids(MESSAGE, answer_cue=True)
    conts = [lm.continuation_ids(t) for t in ("CT", "MRI of the head")]
    lm.check_continuation_room(len(cued), conts)
    with pytest.raises(PromptError, match="context limit"):
        lm.check_continuation_room(len(cued), [[5] * lm.context_length])
    out["check_continuation_room"] = True
    with torch.inference_mode():
        last, cache = lm.prefill(cued)
        out["prefill"] = last
        out["continuations_over_cache"] = lm.continuations_over_cache(last, cache, len(cued), conts)
    return out

    return out


def _assert_same(a, b, key):
    if isinstance(a, tuple) and a and not isinstance(a[0], int):
        for x, y in zip(a, b, strict=True):
            _assert_same(x, y, key)
        return
    if isinstance(a, torch.Tensor):
        a, b = a.numpy(), b.numpy()
    if isinstance(a, (np.ndarray, float)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4, err_msg=key)
    else:
        assert a == b, key


@pytest.mark.parametrize("which", ["cached", "batched", "cached_batched"])
def test_wrappers_give_the_backends_results(tiny_lm, wrappers, which):
    wrapped = wrappers[which]
    assert _identity(wrapped) == _identity(tiny_lm)
    expected = _calls(tiny_lm, tiny_lm)
    got = _calls(wrapped, tiny_lm)
    assert set(got) == set(expected)
    methods = {n for n in protocol_members(WhiteBoxModel) if callable(getattr(WhiteBoxModel, n))}
    assert methods - set(got) == set()  # every method of the interface was called
    for key in expected:
        _assert_same(expected[key], got[key], key)
    if which.startswith("cached"):  # the cached calls answer from the cache the second time
        again = _calls(wrapped, tiny_lm)
        for key in ("score_options", "score_continuations", "generate", "generate_from"):
            _assert_same(expected[key], again[key], key)


def test_batched_wrapper_runs_white_box_calls_on_the_model_thread(tiny_lm):
    """An item thread's prompt-pass calls run on the thread that made the batcher, as
    its merged calls do (one torch thread pool in the process)."""
    batcher = MicroBatcher(tiny_lm)
    batched = MicroBatchedLM(tiny_lm, batcher)
    seen: list[tuple[str, int]] = []
    results: dict[str, object] = {}
    ended: list[bool] = []

    class Spy:  # the real model; its pass methods report their thread
        def __getattr__(self, name):
            value = getattr(tiny_lm, name)
            if name in {"open_prompt", "score_options_from", "internals_from"}:

                def recorded(*args, **kwargs):
                    seen.append((name, threading.get_ident()))
                    return value(*args, **kwargs)

                return recorded
            return value

    batched.lm = Spy()

    def item() -> None:
        try:
            with batcher.worker():
                state = batched.open_prompt(MESSAGE)
                results["scores"] = batched.score_options_from(state, LETTERS)
                results["internals"] = batched.internals_from(state, [5, 6], lens="kl")
        finally:
            ended.append(True)
            batcher.wake()

    thread = threading.Thread(target=item, daemon=True)
    thread.start()
    batcher.serve(lambda: bool(ended), timeout=120)
    thread.join(timeout=10)
    assert [name for name, _ in seen] == ["open_prompt", "score_options_from", "internals_from"]
    assert {ident for _, ident in seen} == {threading.get_ident()}
    np.testing.assert_allclose(
        results["scores"], tiny_lm.score_options([MESSAGE], LETTERS)[0], atol=1e-4
    )
