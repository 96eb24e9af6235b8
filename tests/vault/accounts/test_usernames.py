"""Usernames: one normal form (NFKC + casefold), a small ASCII alphabet."""

import pytest

from vault.accounts.usernames import normalize_username
from vault.errors import InvalidUsername


def test_username_variants_collapse_to_one_name():
    assert {normalize_username(v) for v in ("Alice", "alice", "Ａｌｉｃｅ", " ALICE ")} == {"alice"}


@pytest.mark.parametrize("raw", ["ab", "a" * 65, "has space", "-leading", "名字", ""])
def test_invalid_usernames(raw):
    with pytest.raises(InvalidUsername):
        normalize_username(raw)
