"""Served model entries in the experiment config: what is refused at load (one line
naming file, line and field), and what is and is not part of the config hash."""

from __future__ import annotations

import pytest
import yaml

from safescale.experiments.config import ConfigError, parse_config


def _text(model: dict, **top) -> str:
    return yaml.safe_dump(
        {"name": "served", "models": [model], "corpus": "radiology-guidelines", **top},
        sort_keys=False,
    )


SERVED = {
    "name": "llama-served",
    "kind": "openai",
    "base_url": "http://127.0.0.1:8000/v1",
    "model": "meta-llama/Meta-Llama-3-8B-Instruct",
    "tokenizer": "smollm2-135m-instruct",
}
CHAT = {"name": "chat", "kind": "openai-chat", "base_url": "https://api.example.org/v1"}


def _problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(text, source="study.yaml")
    return info.value.problems


def test_chat_endpoint_refuses_cloze_with_the_reason():
    (problem,) = _problems(
        _text(CHAT, conditions=["clean_evidence"], answer={"formulation": "cloze_pmi"})
    )
    assert problem.startswith("study.yaml:")
    assert "answer" in problem and "cloze_pmi needs prompt log-probs" in problem
    assert "kind: openai-chat" in problem and "letter" in problem


def test_chat_endpoint_refuses_the_agentic_critic():
    (problem,) = _problems(_text(CHAT))  # default conditions include agentic_rag
    assert "conditions" in problem and "agentic_rag" in problem
    assert "kind: openai-chat" in problem
    config = parse_config(_text(CHAT, conditions=["closed_book", "clean_evidence"]))
    assert config.models[0].kind == "openai-chat"


def test_served_entries_need_their_fields_and_local_ones_refuse_them():
    (problem,) = _problems(_text({"name": "x", "kind": "openai"}))
    assert "needs base_url" in problem
    (problem,) = _problems(_text({k: v for k, v in SERVED.items() if k != "tokenizer"}))
    assert "needs tokenizer" in problem
    (problem,) = _problems(_text({"name": "local", "base_url": "http://x/v1"}))
    assert "base_url: only for a served model" in problem
    (problem,) = _problems(_text({**SERVED, "api_key_env": "sk-abc123"}))
    assert "not an environment variable name" in problem and "never the key" in problem
    (problem,) = _problems(_text({**SERVED, "base_url": "127.0.0.1:8000"}))
    assert "not an http(s) URL" in problem
    (problem,) = _problems(_text(SERVED, reliance={"enabled": True}))
    assert "reliance" in problem and "needs its weights" in problem


def test_where_the_server_is_is_not_part_of_the_config_hash():
    base = parse_config(_text(SERVED))
    moved = parse_config(
        _text(
            {
                **SERVED,
                "base_url": "http://gpu-node-7:9000/v1",
                "max_concurrency": 32,
                "timeout_s": 5,
                "retries": 9,
                "api_key_env": "OPENAI_API_KEY",
            }
        )
    )
    assert moved.config_hash() == base.config_hash()
    for change in ({"model": "other"}, {"tokenizer": "gemma3-270m"}, {"top_logprobs": 5}):
        assert parse_config(_text({**SERVED, **change})).config_hash() != base.config_hash()


def test_a_local_entry_hashes_without_the_served_fields():
    config = parse_config(_text({"name": "smollm2-135m-instruct"}))
    assert config.models[0].kind == "local"
    # the hash of a local run is what it was before served models existed: the value
    # the config hash of this very text had then (a run made then still resumes)
    assert config.config_hash() == (
        "c7a2b1f4c8cbb77c94ddd6ebdaab7884edb221fc2e92aa5daf1270cd0cdd63a7"
    )
    explicit = parse_config(_text({"name": "smollm2-135m-instruct", "kind": "local"}))
    assert explicit.config_hash() == config.config_hash()


def test_a_served_file_checks_its_local_tokenizer_not_its_served_name(tmp_path):
    from safescale.experiments.config import load_config

    path = tmp_path / "served.yaml"
    path.write_text(_text(SERVED))  # the served name is the server's, not a local model
    assert load_config(path).models[0].served
    path.write_text(_text({**SERVED, "tokenizer": "no-such-tokenizer"}))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    (line,) = err.value.problems
    assert line.startswith(f"{path}:") and "models[0].tokenizer" in line
    assert "no-such-tokenizer" in line
