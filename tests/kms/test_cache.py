import threading

import pytest

from kms import DataKey, KeyCache


def test_hit_and_miss():
    cache = KeyCache()
    key = DataKey.generate()
    cache.put("a", key, now=0)
    assert cache.get("a", now=1) is key
    assert cache.get("b", now=1) is None
    assert len(cache) == 1


def test_max_age_with_controlled_clock():
    cache = KeyCache(max_age=10)
    key = DataKey.generate()
    cache.put("a", key, now=100.0)
    assert cache.get("a", now=109.9) is key
    assert cache.get("a", now=110.0) is None
    assert key.wiped and len(cache) == 0


def test_max_uses():
    cache = KeyCache(max_uses=3)
    key = DataKey.generate()
    cache.put("a", key, now=0)
    assert [cache.get("a", now=0) is key for _ in range(3)] == [True] * 3
    assert cache.get("a", now=0) is None
    assert key.wiped


def test_max_entries_evicts_least_recently_used_and_wipes_it():
    cache = KeyCache(max_entries=2)
    a, b, c = DataKey.generate(), DataKey.generate(), DataKey.generate()
    cache.put("a", a, now=0)
    cache.put("b", b, now=0)
    assert cache.get("a", now=0) is a  # a is now most recent
    cache.put("c", c, now=0)
    assert len(cache) == 2
    assert b.wiped and not a.wiped and not c.wiped
    assert cache.get("b", now=0) is None


def test_put_replacing_wipes_the_old_key_but_not_the_same_key():
    cache = KeyCache()
    a, b = DataKey.generate(), DataKey.generate()
    cache.put("k", a, now=0)
    cache.put("k", a, now=0)
    assert not a.wiped
    cache.put("k", b, now=0)
    assert a.wiped and cache.get("k", now=0) is b


def test_evict_evict_where_clear_wipe():
    cache = KeyCache()
    keys = {name: DataKey.generate() for name in ("p1", "p2", "q1")}
    for name, key in keys.items():
        cache.put(("kek", name), key, now=0)
    cache.evict(("kek", "q1"))
    assert keys["q1"].wiped and len(cache) == 2
    cache.evict(("kek", "absent"))
    cache.evict_where(lambda k: k[1] == "p1")
    assert keys["p1"].wiped and not keys["p2"].wiped
    cache.clear()
    assert keys["p2"].wiped and len(cache) == 0


def test_bad_limits():
    for kwargs in (dict(max_entries=0), dict(max_uses=0), dict(max_age=0)):
        with pytest.raises(ValueError):
            KeyCache(**kwargs)


def test_repr_shows_no_keys():
    cache = KeyCache()
    key = DataKey.generate()
    cache.put("a", key, now=0)
    assert key.material().hex() not in repr(cache) and key.key_id.hex() not in repr(cache)


def test_threads_hammering_stay_within_bounds():
    cache = KeyCache(max_entries=50, max_uses=1_000_000)
    errors = []

    def worker(seed):
        try:
            for i in range(2000):
                name = (seed * 7 + i) % 80
                if cache.get(name, now=0) is None:
                    cache.put(name, DataKey.generate(), now=0)
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(cache) <= 50
