from __future__ import annotations

from services.inference.stops import StopMatcher


def run(stops: list[str], pieces: list[str]) -> tuple[str, bool]:
    matcher, out = StopMatcher(stops), []
    for piece in pieces:
        text, hit = matcher.feed(piece)
        out.append(text)
        if hit:
            return "".join(out), True
    return "".join(out) + matcher.flush(), False


def test_no_stops_passes_everything_through() -> None:
    assert run([], ["a", "b"]) == ("ab", False)


def test_stop_inside_one_piece_cuts_before_it() -> None:
    assert run(["END"], ["abcENDxyz"]) == ("abc", True)


def test_stop_split_across_pieces_is_caught_and_never_emitted() -> None:
    matcher = StopMatcher(["END"])
    assert matcher.feed("abcE") == ("abc", False)
    assert matcher.feed("N") == ("", False)
    assert matcher.feed("Dxyz") == ("", True)


def test_false_start_is_released() -> None:
    assert run(["END"], ["abE", "Nx", "y"]) == ("abENxy", False)


def test_held_text_is_flushed_at_the_end() -> None:
    assert run(["END"], ["abEN"]) == ("abEN", False)


def test_earliest_of_several_stops_wins() -> None:
    assert run(["zz", "b"], ["a", "bzz"]) == ("a", True)
