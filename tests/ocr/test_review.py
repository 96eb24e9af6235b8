"""Values and review flags: a glued up-arrow read as a trailing digit, and review only on evidence."""
from __future__ import annotations

from ocr.pipeline import arrow_read_as_digit


def test_up_arrow_read_as_trailing_one_is_repaired_only_on_evidence():
    # '46.9↑' read as '46.91': one decimal more than the range prints, and 46.9 is above it
    assert arrow_read_as_digit("46.91", (40.0, 45.0, "range"), "40.0-45.0", (0, 100)) == "46.9"
    # '588↑' read as '5881': impossible for a platelet count, 588 above the range
    assert arrow_read_as_digit("5881", (125.0, 350.0, "range"), "125-350", (1, 2000)) == "588"
    # a real trailing 1: as many decimals as the range prints
    assert arrow_read_as_digit("5.41", (3.5, 5.3, "range"), "3.50-5.30", (1, 10)) is None
    # cutting it would not give a high value: an up-arrow there would be wrong, so it is a digit
    assert arrow_read_as_digit("4.51", (3.5, 9.5, "range"), "3.5-9.5", (0.1, 200)) is None
    # no upper bound: nothing to judge by
    assert arrow_read_as_digit("1.51", (1.04, None, "gt"), ">1.04", (0.1, 5)) is None
