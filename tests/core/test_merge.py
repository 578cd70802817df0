from service.core.merge import apply_choices, merge_answers

SCHEMA = {"type": "object", "properties": {
    "title": {"type": "string"}, "total": {"type": ["number", "null"]},
    "items": {"type": "array", "items": {"type": "object", "properties": {"name": {"type": "string"}}}},
    "party": {"type": "object", "properties": {"name": {"type": "string"}, "city": {"type": "string"}}},
}}


def test_scalars_take_the_first_non_null_and_conflicts_are_listed() -> None:
    outcome = merge_answers([{"title": "Lease", "total": None}, {"title": "Annex", "total": 12.5},
                             {"title": "Lease", "total": 12.5}], SCHEMA)
    assert outcome.data["title"] == "Lease" and outcome.data["total"] == 12.5
    assert [(c.path, c.values) for c in outcome.conflicts] == [("/title", ["Lease", "Annex"])]


def test_arrays_concatenate_in_page_order_without_exact_duplicates() -> None:
    outcome = merge_answers([{"items": [{"name": "a"}, {"name": "b"}]},
                             {"items": [{"name": "b"}, {"name": "c"}]}, {"items": []}], SCHEMA)
    assert outcome.data["items"] == [{"name": "a"}, {"name": "b"}, {"name": "c"}]
    assert outcome.conflicts == []


def test_objects_merge_field_by_field() -> None:
    outcome = merge_answers([{"party": {"name": "ACME", "city": None}},
                             {"party": {"name": None, "city": "Oslo"}}], SCHEMA)
    assert outcome.data["party"] == {"name": "ACME", "city": "Oslo"}


def test_one_answer_is_returned_as_it_is() -> None:
    answer = {"title": "x", "items": [{"name": "a"}, {"name": "a"}]}
    assert merge_answers([answer], SCHEMA).data == answer


def test_chosen_values_replace_by_path() -> None:
    data = {"title": "Lease", "party": {"name": "A"}}
    assert apply_choices(data, {"/party/name": "B", "/title": "Annex"}) == {
        "title": "Annex", "party": {"name": "B"}}
