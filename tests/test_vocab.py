"""Shared vocabularies: interests, style bands, and the counting behind them."""

import pytest

from data.vocab import (
    INTERESTS,
    check_interests,
    count_sentences,
    count_words,
    interests_in,
    split_sentences,
    style_problems,
)


@pytest.mark.parametrize(
    "text, n",
    [("A fact.", 1), ("No full stop at the end", 1), ("One. Two! Three?", 3),
     ("A bequest from J. F. Archibald funded it. It opened in 1932.", 2),
     ("St. James' Church is old. Mr. Greenway designed it.", 2), ("", 0), ("It spans 503.5 metres.", 1)],
)
def test_sentences_are_counted_as_a_reader_would(text, n):
    assert count_sentences(text) == n


def test_sentences_split_where_a_reader_would_and_keep_their_words():
    text = "A bequest from J. F. Archibald funded it.  It opened in 1932! St. James' is near"
    assert split_sentences(text) == ["A bequest from J. F. Archibald funded it.", "It opened in 1932!",
                                     "St. James' is near"]


def test_words_count_hyphenated_and_accented_words_once():
    assert count_words("Jørn Utzon's sail-like roof, 1973.") == 5


def test_style_bands():
    assert style_problems("The Opera House opened in 1973.", "brief") == []
    assert [p.split(":")[0] for p in style_problems("One here. Two here. And three more words.", "brief")] == ["sentences"]
    flat = " ".join(["The great hall has more than two thousand seats."] * 4)
    assert any(p.startswith("engagement:") for p in style_problems(flat, "stimulate"))
    assert style_problems(flat + " What will you hear?", "stimulate") == []
    assert style_problems("Short text here.", "detailed")[0].startswith("length:")


@pytest.mark.parametrize(
    "text, expected",
    [("Designed by the architect Jørn Utzon.", {"architecture"}), ("Art Deco facade.", {"architecture"}),
     ("A public art gallery.", {"art"}), ("The pub has a bar.", {"food", "nightlife"}),
     ("Sandstone warehouse on Hickson Road.", {"architecture"}), ("A street of shops.", {"shopping"}),
     ("Swim at the beach.", {"beaches"})],
)
def test_interest_cues_match_whole_word_starts_only(text, expected):
    assert set(interests_in(text)) == expected


def test_interests_are_checked_and_put_in_vocabulary_order():
    assert check_interests(["views", "history", "views"]) == ("history", "views")
    with pytest.raises(ValueError, match="karaoke"):
        check_interests(["karaoke"])
    with pytest.raises(ValueError, match="empty"):
        check_interests([])
    assert len(INTERESTS) == 12
