"""A served model is prompted exactly as the in-process backend: the same prompt text,
ids, letter ids and continuation ids over the same tokenizer (no weights loaded)."""

from __future__ import annotations

from safescale.agents import prompts
from safescale.corpora import load_corpus
from safescale.models.served.prompting import PromptFormat, tokenizer_hash


def test_prompt_format_is_the_backends(tiny_lm):
    fmt = PromptFormat(tiny_lm.tokenizer, name="tiny")
    corpus = load_corpus("radiology-guidelines")
    item = corpus.items[0]
    clean = [corpus.passage(pid) for pid in item.evidence.clean]
    for message in (prompts.answer_message(item, clean), prompts.cloze_message(item, [])):
        for cue in (False, True):
            assert fmt.prompt_text(message, answer_cue=cue) == tiny_lm.prompt_text(
                message, answer_cue=cue
            )
            assert fmt.prompt_ids(message, answer_cue=cue) == tiny_lm.prompt_ids(
                message, answer_cue=cue
            )
    assert fmt.letter_token_ids(item.letters) == tiny_lm.letter_token_ids(item.letters)
    assert fmt.letter_pieces(item.letters) == [f" {x}" for x in item.letters]
    text = item.options[item.gold]
    assert fmt.continuation_ids(text) == tiny_lm.continuation_ids(text)
    assert fmt.count_tokens(text) == tiny_lm.count_tokens(text)
    assert fmt.prompt_format_id == tiny_lm.prompt_format_id
    ids = tiny_lm.continuation_ids(text)
    assert "".join(fmt.piece(ids, i) for i in range(len(ids))) == tiny_lm.tokenizer.decode(ids)
    plain = PromptFormat(tiny_lm.tokenizer, name="tiny", use_chat_template=False)
    assert plain.prompt_format_id != fmt.prompt_format_id
    assert tokenizer_hash(tiny_lm.tokenizer) == tokenizer_hash(tiny_lm.tokenizer)
    assert tokenizer_hash(None) is None
