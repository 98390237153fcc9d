"""Cross-task merging asks a merge to serve two tasks: their label prompts must mean the same
thing in both (a letter is one topic in every BBC task)."""

from __future__ import annotations

from coto_tools.tasks.bbc import SUBSETS, prompt_text


def test_letters_name_one_topic_across_bbc_tasks() -> None:
    topic = {c: prompt_text("letters", c) for c in SUBSETS["topic"]}
    assert len(set(topic.values())) == 5
    for subset in ("a", "b"):
        for c in SUBSETS[subset]:
            assert prompt_text("letters", c) == topic[c]  # same letter as in bbc-topic
    a = {prompt_text("letters", c) for c in SUBSETS["a"]}
    b = {prompt_text("letters", c) for c in SUBSETS["b"]}
    assert not a & b  # no letter is a topic of bbc-a and another topic of bbc-b
    assert prompt_text("plain", "tech") == "This article is about technology."
