from dataclasses import replace

import pytest

from ttp.tasks.data import ProfileItem
from ttp.tasks.prompts import QUERY_CHARS, SOURCE_CHARS, PromptBuilder, example_output, retrieve, split_instruction


def test_retrieval_finds_the_profile_item_about_the_query(pep_task):
    query = pep_task.queries[0]
    planted = ProfileItem("planted", "Zebra Quokka Protocol", "zebra quokka marsupial protocol handshake")
    q = replace(query, input="Generate a title for the following abstract of a paper: the zebra quokka "
                             "marsupial protocol handshake", profile=(*query.profile, planted))
    assert retrieve(q, 1) == [planted]
    assert len(retrieve(q, 3)) == 3 and planted in retrieve(q, 3)


def test_personalized_prompt_shows_retrieved_examples_and_plain_shows_none(pep_task):
    query = pep_task.queries[1]
    personalized = PromptBuilder(pep_task.layout, "personalized", k=2)(query)
    plain = PromptBuilder(pep_task.layout, "plain")(query)
    shown = retrieve(query, 2)
    assert all(item.output.strip()[:pep_task.layout.example_chars] in personalized for item in shown)
    assert not any(item.output.strip() in plain for item in query.profile)
    instruction, text = split_instruction(query.input)
    assert instruction.lower().startswith("generate a title") and text[:50] in plain
    for prompt in (personalized, plain):
        assert prompt.startswith(instruction) and prompt.endswith("\nTitle:")
        assert prompt.count("Title:") == (3 if prompt is personalized else 1)


def test_every_text_is_cut_to_its_limit(pep_task):
    query = pep_task.queries[2]
    huge = ProfileItem("huge", "T" * 100_000, "S" * 100_000)
    q = replace(query, input="Generate a title for the following abstract of a paper: " + "w " * 100_000,
                profile=(huge,))
    prompt = PromptBuilder(pep_task.layout, "personalized", k=1)(q)
    limit = pep_task.layout.example_chars
    assert "T" * limit in prompt and "T" * (limit + 1) not in prompt
    assert "S" * SOURCE_CHARS in prompt and "S" * (SOURCE_CHARS + 1) not in prompt
    assert len(prompt) < limit + SOURCE_CHARS + QUERY_CHARS + 200


def test_unknown_policy_is_refused(pep_task):
    with pytest.raises(ValueError, match="policy must be one of"):
        PromptBuilder(pep_task.layout, "chatty")


def test_lamp_retrieval_uses_whitespace_tokens_of_the_text_after_the_instruction(pep_task):
    query = pep_task.queries[0]
    # "Generate" and "title" appear only in the instruction: LaMP's retrieval never sees them,
    # and its whitespace tokens keep case, so "Zebra" does not match "zebra"
    by_instruction = ProfileItem("instr", "Generate title", "generate a title for the following")
    by_case = ProfileItem("case", "zebra", "zebra zebra")
    by_text = ProfileItem("text", "Zebra Handshake", "Zebra Handshake")
    q = replace(query, input="Generate a title for the following abstract of a paper: Zebra Handshake",
                profile=(by_instruction, by_case, by_text, *query.profile[:3]))
    assert retrieve(q, 1, "lamp") == [by_text]
    assert by_instruction not in retrieve(q, 2, "lamp") and by_case not in retrieve(q, 2, "lamp")
    prompt = PromptBuilder(pep_task.layout, "personalized", k=1, convention="lamp")(q)
    assert "Zebra Handshake\n\n" in prompt


@pytest.mark.parametrize("text, expected", [
    ('Generate an abstract for the title "Web Library Enhancements"',
     ("Generate an abstract for the title", "Web Library Enhancements")),
    ('Generate an abstract for the title "A B" using the following items: 1. x 2. y',      # LongLaMP's form
     ("Generate an abstract for the title", "A B using the following items: 1. x 2. y")),
    ('Generate a title for the following abstract of a paper: It adds "x": a colon, quoted',
     ("Generate a title for the following abstract of a paper", 'It adds "x": a colon, quoted')),
    ('No instruction "here"', ("", 'No instruction "here"')),
], ids=["quoted title", "quoted, then items", "LaMP, quotes in the text", "none"])
def test_instructions_are_split_from_lamp_and_longlamp_inputs(text, expected):
    assert split_instruction(text) == expected


def test_a_long_form_prompt_shows_the_title_in_the_example_format(pep_abstracts_dir):
    from ttp.tasks.data import load_task

    task = load_task(pep_abstracts_dir)
    prompt = PromptBuilder(task.layout, "plain")(task.queries[0])
    assert prompt == 'Generate an abstract for the title.\n\nTitle: Web Library Enhancements\nAbstract:'


def test_a_long_example_ends_after_its_last_full_sentence_within_the_limit(pep_abstracts_dir):
    from ttp.tasks.data import load_task

    layout = load_task(pep_abstracts_dir).layout
    sentence = "This PEP proposes one more thing. "
    long = ProfileItem("p", sentence * 40, "T")
    shown = example_output(long, layout)
    assert len(shown) <= layout.example_chars and shown.endswith("thing.") and sentence.strip() in shown
    assert len(shown) > layout.example_chars - len(sentence)
    assert example_output(ProfileItem("p", "x" * 5000, "T"), layout) == "x" * layout.example_chars
    assert example_output(ProfileItem("p", "  short  ", "T"), layout) == "short"


def test_a_profile_leaves_out_the_record_of_the_input_asked_for(pep_task):
    from ttp.tasks.prompts import profile_for

    users = {}
    for query in pep_task.queries:
        users.setdefault(query.user, {}).update({item.id: item for item in query.profile})
    twins = 0
    for query in pep_task.queries:
        union = tuple(users[query.user].values())
        # the task's own profile is the user's other records; its items hold the abstract cut short
        left = {item.id for item in profile_for(union, query.input)}
        assert left <= {item.id for item in query.profile}
        # what else is left out is another record of the same text (PEP 452 repeats PEP 247's abstract)
        twins += len({item.id for item in query.profile} - left)
    assert twins == 3
    item = ProfileItem("short", "Out", "In")
    assert profile_for((item,), "In") == () and profile_for((item,), "In the beginning") == (item,)
