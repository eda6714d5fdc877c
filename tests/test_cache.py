import threading

from dora_reference_mel.cache import ByteLRU


def test_hit_and_lru_eviction_by_bytes():
    cache = ByteLRU(100)
    cache.put("a", "A", 40)
    cache.put("b", "B", 40)
    assert cache.get("a") == "A"  # a is now the most recent
    cache.put("c", "C", 40)  # 120 > 100: evicts b, the least recent
    assert cache.get("b") is None
    assert cache.get("a") == "A" and cache.get("c") == "C"
    assert cache.nbytes == 80 and len(cache) == 2


def test_replacing_a_key_counts_its_bytes_once():
    cache = ByteLRU(100)
    cache.put("a", 1, 60)
    cache.put("a", 2, 60)
    assert cache.nbytes == 60 and cache.get("a") == 2


def test_off_and_oversized():
    off = ByteLRU(0)
    off.put("a", 1, 1)
    assert off.get("a") is None
    small = ByteLRU(10)
    small.put("a", 1, 5)
    small.put("big", 2, 11)  # larger than the whole cache: not kept, nothing evicted
    assert small.get("big") is None and small.get("a") == 1


def test_thread_safe_under_contention():
    cache = ByteLRU(1000)

    def work(offset):
        for i in range(2000):
            cache.put((offset, i % 50), i, 7)
            cache.get((offset, (i * 7) % 50))

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert cache.nbytes <= 1000 and cache.nbytes == 7 * len(cache)
