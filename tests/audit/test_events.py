"""Event canonical encoding, event hash, leaf data, and the grammar the verifier checks event lines against."""

from __future__ import annotations

import hashlib
import json
import random

import pytest

from audit.verify import _EVENT_RE, ZERO_HASH_HEX, VerificationError, canonical_bytes, event_hash, event_line, leaf_data

BASE = {"v": 1, "chain": 2, "seq": 0, "time": "2026-11-25T09:31:00.123456Z", "actor": "ps_1", "actor_role": "doctor",
        "action": "record.read", "resource_type": "record", "resource_id": "r1", "patient": "pp_1",
        "outcome": "allow", "reason": None, "grant_id": None, "request_id": "req-1", "client_addr": "10.0.0.1",
        "user_agent": "ua", "prev_hash": ZERO_HASH_HEX}


def test_canonical_bytes_and_hash_are_exactly_as_documented():
    c = canonical_bytes(BASE)
    assert c == json.dumps(BASE, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")
    assert c.startswith(b'{"action":"record.read","actor":"ps_1",') and c.endswith(b',"v":1}')
    assert event_hash(c) == hashlib.sha256(b"hv-audit-event/v1\x00" + c).digest()
    assert event_line(c, event_hash(c)) == b'{"event":' + c + b',"hash":"' + event_hash(c).hex().encode() + b'"}\n'
    assert leaf_data(2, 0, event_hash(c)) == b"\x00\x02" + bytes(8) + event_hash(c)
    assert leaf_data(0xFFFF, 2**64 - 1, bytes(32)) == b"\xff" * 10 + bytes(32)


@pytest.mark.parametrize("change", [
    {"extra": 1}, {"v": 3}, {"v": 0}, {"v": True}, {"chain": -1}, {"chain": 65536}, {"seq": 2**64}, {"seq": "1"},
    {"time": "2026-11-25T09:31:00Z"}, {"time": "2026-11-25 09:31:00.123456Z"}, {"prev_hash": "0" * 63},
    {"prev_hash": "A" * 64}, {"reason": 1.5}, {"reason": True}, {"reason": ["x"]},
])
def test_canonical_bytes_refuses_events_outside_format_1(change):
    with pytest.raises(VerificationError):
        canonical_bytes({**BASE, **change})
    with pytest.raises(VerificationError):
        canonical_bytes({k: v for k, v in BASE.items() if k != "actor"})


@pytest.mark.parametrize("args", [(-1, 0, bytes(32)), (65536, 0, bytes(32)), (0, 2**64, bytes(32)), (0, 0, b"x")])
def test_leaf_data_refuses_out_of_range(args):
    with pytest.raises(VerificationError):
        leaf_data(*args)


def _random_text(rng: random.Random) -> str:
    alphabet = ['"', "\\", "/", "\n", "\r", "\t", "\b", "\f", "\x00", "\x0b", "\x1f", "\x7f", "\x80", "\u00e9",
                "\u2014", "\ud800", "\udfff", "\U0001F600", "急", " ", "a", "Z", "~", "{", "}", ",", ":", "'"]
    return "".join(rng.choice(alphabet) for _ in range(rng.randrange(12)))


def test_every_canonical_event_matches_the_verifier_grammar():
    rng = random.Random(3)
    for _ in range(3000):
        event = dict(BASE, chain=rng.randrange(65536), seq=rng.choice([0, 1, rng.randrange(2**64)]))
        for key in ("actor", "reason", "user_agent", "grant_id", "client_addr"):
            event[key] = rng.choice([None, rng.randrange(-10**6, 10**6), _random_text(rng)])
        m = _EVENT_RE.fullmatch(canonical_bytes(event))
        assert m is not None, canonical_bytes(event)
        assert m.groups() == (str(event["chain"]).encode(), event["prev_hash"].encode(), str(event["seq"]).encode())


@pytest.mark.parametrize("variant", [
    lambda c: c.replace(b'"chain":2', b'"chain": 2'),                # whitespace
    lambda c: c.replace(b'"chain":2', b'"chain":02'),                # leading zero
    lambda c: c.replace(b'"ps_1"', b'"ps_\\u0031"'),                 # needless escape
    lambda c: c.replace(b'"ps_1"', b'"ps_\xc3\xa9"'),                # raw non-ASCII
    lambda c: c.replace(b'"ps_1"', b'"ps_\\u00E9"'),                 # upper-case hex escape
    lambda c: c.replace(b'"ps_1"', b'"ps_\\/"'),                     # escaped slash
    lambda c: c.replace(b'"ps_1"', b'"ps\\u000a"'),                  # \u000a instead of \n
    lambda c: c.replace(b'"action":"record.read","actor":"ps_1"', b'"actor":"ps_1","action":"record.read"'),
    lambda c: c.replace(b'"reason":null', b'"reason":1.0'),
    lambda c: c.replace(b'"reason":null', b'"reason":true'),
    lambda c: c.replace(b',"v":1}', b',"v":1,"x":1}'),
])
def test_non_canonical_encodings_are_not_accepted(variant):
    c = canonical_bytes(BASE)
    assert _EVENT_RE.fullmatch(c)
    assert _EVENT_RE.fullmatch(variant(c)) is None
