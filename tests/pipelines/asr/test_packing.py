"""Packing segments into shared windows, and splitting aligned words back to their segments."""
import numpy as np

from pipelines.asr.packing import pack_windows, split_words, window_audio, words_logprob, words_text


def _word(text, start, end, probability=0.9, tokens=(1,)):
    return {"word": text, "start": start, "end": end, "probability": probability, "tokens": list(tokens)}


def test_windows_fill_up_to_capacity_with_gaps_and_keep_order():
    windows = pack_windows([10.0, 10.0, 8.0, 29.0, 2.0], capacity=29.0, gap=1.0)
    layouts = [[(p.index, p.start, p.end) for p in w.placed] for w in windows]
    assert layouts == [
        [(0, 0.0, 10.0), (1, 11.0, 21.0)],  # 21 + 1 + 8 = 30 > 29: the third starts a new window
        [(2, 0.0, 8.0)],
        [(3, 0.0, 29.0)],
        [(4, 0.0, 2.0)],
    ]


def test_open_windows_let_a_later_short_segment_fill_an_earlier_tail():
    lengths = [20.0, 15.0, 5.0, 15.0, 3.0, 9.0]
    strict = pack_windows(lengths, capacity=29.0, gap=1.0)
    assert [[p.index for p in w.placed] for w in strict] == [[0], [1, 2], [3, 4, 5]]
    # two open windows: the 5 s segment fills the first window's tail (20 + 1 + 5 <= 29); the 3 s one
    # joins the 15 s one, as the first window is no longer open once the third opens
    windows = pack_windows(lengths, capacity=29.0, gap=1.0, open_windows=2)
    layouts = [[(p.index, p.start, p.end) for p in w.placed] for w in windows]
    assert layouts == [[(0, 0.0, 20.0), (2, 21.0, 26.0)], [(1, 0.0, 15.0), (4, 16.0, 19.0), (5, 20.0, 29.0)],
                       [(3, 0.0, 15.0)]]
    assert sum(p.end - p.start for w in windows for p in w.placed) == sum(lengths)  # each segment once


def test_window_audio_places_samples_with_silence_between():
    audios = [np.ones(4, np.float32), np.full(2, 2.0, np.float32)]
    (window,) = pack_windows([0.4, 0.2], capacity=29.0, gap=0.3)
    out = window_audio(window, audios, rate=10)
    assert out.tolist() == [1, 1, 1, 1, 0, 0, 0, 2, 2]


def test_words_go_to_the_segment_around_their_midpoint_punctuation_follows():
    (window,) = pack_windows([2.0, 2.0], capacity=29.0, gap=1.0)  # segments at 0-2 and 3-5
    words = [_word(" Hello", 0.1, 0.6), _word(" world", 0.6, 2.4), _word(".", 2.4, 2.9),
             _word(" Next", 3.0, 3.5), _word(" one", 3.5, 4.0)]
    split = split_words(window, words, slack=0.2)
    assert not split.unresolved
    assert words_text(split.words[0]) == "Hello world." and words_text(split.words[1]) == "Next one"


def test_a_word_in_the_gap_is_left_for_a_solo_decode():
    (window,) = pack_windows([2.0, 2.0, 2.0], capacity=29.0, gap=1.0)  # 0-2, 3-5, 6-8
    stray = split_words(window, [_word(" a", 0.0, 1.0), _word(" lost", 2.2, 2.9), _word(" b", 6.0, 7.0)], 0.2)
    assert stray.unresolved == {0, 1}  # 'lost' sits mid-gap, nearest to segment 1
    assert words_text(stray.words[2]) == "b"


def test_words_drifted_into_a_neighbour_send_both_segments_to_a_solo_decode():
    """The alignment put the first clip's words inside the second clip's span: the first gets
    nothing, and the second must not keep them (a real failure: 'in 1813' prefixed to JFK)."""
    (window,) = pack_windows([2.0, 5.0, 2.0, 2.0], capacity=29.0, gap=1.0)  # 0-2, 3-8, 9-11, 12-14
    drifted = [_word(" in", 3.1, 3.3), _word(" 1813", 3.3, 3.9), _word(" and", 4.0, 4.3), _word(" so", 4.3, 4.6),
               _word(" x", 9.2, 9.8), _word(" y", 12.2, 12.8)]
    split = split_words(window, drifted, slack=0.2)
    assert split.unresolved == {0, 1} and split.reasons == {"no_words": 1, "beside_empty": 1}
    assert words_text(split.words[2]) == "x" and words_text(split.words[3]) == "y"


def test_logprob_is_the_token_weighted_mean():
    words = [_word(" a", 0, 1, probability=0.5, tokens=(1, 2)), _word(" b", 1, 2, probability=1.0)]
    assert np.isclose(words_logprob(words), 2 * np.log(0.5) / 3)
    assert words_logprob([]) == 0.0


def test_a_word_stretched_across_segments_unresolves_them():
    (window,) = pack_windows([2.0, 2.0, 2.0], capacity=29.0, gap=1.0)  # 0-2, 3-5, 6-8
    split = split_words(window, [_word(" Hello", 0.0, 4.5), _word(" there", 6.1, 7.0)], 0.2)
    assert split.unresolved == {0, 1, 2}  # 2: beside segment 1, which got no word of its own
    assert words_text(split.words[2]) == "there"
