"""Placement: ranking workers for a request, the indexed PoolState, and the explanation."""

import random

import pytest

from tf_jupyter.placement import Candidate, DeviceView, PoolState, Request, explain, fits, place

GiB = 2**30


def dev(worker, uuid, total_gib=80, free_gib=None, capacity=100, compute_free=None, name="NVIDIA H100", up=True):
    free = total_gib if free_gib is None else free_gib
    return DeviceView(worker, uuid, name, total_gib * GiB, free * GiB, capacity,
                      capacity if compute_free is None else compute_free, up)


def test_request_validation():
    with pytest.raises(ValueError, match="count must be at least 1"):
        Request(GiB, 10, count=0)
    with pytest.raises(ValueError, match="vram must be a non-negative integer"):
        Request(-1, 10)
    with pytest.raises(ValueError, match="compute must be a non-negative integer"):
        Request(GiB, True)
    with pytest.raises(ValueError, match="unknown placement policy 'worst'"):
        place(Request(GiB, 1), [], policy="worst")


def test_fits():
    d = dev("w", "a", 24, free_gib=8, compute_free=20)
    assert fits(d, Request(8 * GiB, 20))
    assert not fits(d, Request(8 * GiB + 1, 20))
    assert not fits(d, Request(GiB, 21))
    assert not fits(d, Request(0, 100, whole_device=True))
    assert fits(dev("w", "b", 24), Request(0, 100, whole_device=True))
    assert not fits(dev("w", "c", up=False), Request(GiB, 1))
    assert fits(d, Request(GiB, 1, model="h100")) and not fits(d, Request(GiB, 1, model="A100"))


def test_binpack_prefers_the_tightest_used_device():
    devices = [
        dev("w1", "a", 80, free_gib=40),
        dev("w2", "b", 80, free_gib=10),
        dev("w3", "c", 80, free_gib=6),  # too small for 8 GiB
        dev("w4", "d", 24),  # untouched
    ]
    ranked = place(Request(8 * GiB, 10), devices)
    assert ranked == [Candidate("w2", ("b",)), Candidate("w1", ("a",)), Candidate("w4", ("d",))]


def test_binpack_breaks_vram_ties_on_compute_then_order():
    devices = [dev("w1", "a", 80, 40, compute_free=60), dev("w2", "b", 80, 40, compute_free=30),
               dev("w3", "c", 80, 40, compute_free=30)]
    assert [c.worker for c in place(Request(GiB, 10), devices)] == ["w2", "w3", "w1"]


def test_binpack_opens_the_untouched_device_left_most_evenly_when_no_used_one_fits():
    devices = [dev("w1", "a", 24), dev("w2", "b", 141, name="NVIDIA H200"), dev("w3", "c", 80, free_gib=1)]
    # Heavy on VRAM: the big-memory device (141 GiB left 125/141 vs compute 98/100; 24 GiB: 8/24).
    assert place(Request(16 * GiB, 2), devices)[0] == Candidate("w2", ("b",))
    # Heavy on compute: the small one (24 GiB left 22/24 vs compute 91/100; 141 GiB: 139/141).
    assert place(Request(2 * GiB, 9), devices)[0] == Candidate("w1", ("a",))
    # Equal scores: the largest.
    twins = [dev("w1", "a", 40), dev("w2", "b", 80)]
    assert place(Request(0, 0), twins)[0] == Candidate("w2", ("b",))


def test_spread_prefers_the_most_free():
    devices = [dev("w1", "a", 80, free_gib=40), dev("w2", "b", 80, free_gib=10), dev("w3", "c", 24)]
    assert [c.worker for c in place(Request(8 * GiB, 10), devices, policy="spread")] == ["w1", "w3", "w2"]


def test_candidate_devices_are_the_workers_own_best_fit():
    # The worker picks by least VRAM left: its untouched 24 GiB device, even though the Jupyter side
    # ranked the worker by its used 80 GiB one.
    devices = [dev("w1", "big", 80, free_gib=30), dev("w1", "small", 24), dev("w2", "x", 80, free_gib=50)]
    assert place(Request(4 * GiB, 10), devices)[0] == Candidate("w1", ("small",))


def test_count_needs_distinct_devices_on_one_worker():
    devices = [dev("w1", "a"), dev("w2", "b"), dev("w2", "c", free_gib=2), dev("w3", "d"), dev("w3", "e")]
    assert place(Request(8 * GiB, 10, count=2), devices) == [Candidate("w3", ("d", "e"))]
    assert place(Request(8 * GiB, 10, count=3), devices) == []


def test_whole_device_needs_an_untouched_device_and_takes_the_smallest():
    devices = [dev("w1", "a", 80, free_gib=79), dev("w2", "b", 141), dev("w3", "c", 40),
               dev("w4", "d", 80, compute_free=99)]
    assert place(Request(0, 100, whole_device=True), devices) == [Candidate("w3", ("c",)), Candidate("w2", ("b",))]


def test_whole_devices_on_one_worker_are_the_smallest_untouched_ones():
    """The devices placement expects are those the worker's line takes: smallest untouched first."""
    devices = [dev("w1", "a", 80), dev("w1", "b", 40), dev("w1", "c", 80), dev("w1", "d", 24, free_gib=20),
               dev("w1", "e", 48)]
    assert place(Request(0, 100, whole_device=True), devices) == [Candidate("w1", ("b",))]
    assert place(Request(0, 100, count=2, whole_device=True), devices) == [Candidate("w1", ("b", "e"))]


def test_down_workers_and_models_are_excluded():
    devices = [dev("w1", "a", up=False), dev("w2", "b", name="NVIDIA A100"), dev("w3", "c", name="NVIDIA L4")]
    assert [c.worker for c in place(Request(GiB, 1), devices)] == ["w2", "w3"]
    assert [c.worker for c in place(Request(GiB, 1, model="a100"), devices)] == ["w2"]
    assert place(Request(GiB, 1, model="H100"), devices) == []


def test_explain_says_what_was_asked_and_what_the_pool_had():
    devices = [dev("w1", "GPU-a", 80, free_gib=6, compute_free=30), dev("w2", "GPU-b", 24, free_gib=2),
               dev("w3", "GPU-c", up=False)]
    text = explain(Request(8 * GiB, 25), devices, down_workers=["w9"])
    assert text == ("Asked for 8 GiB VRAM and 25 % compute on 1 device; the largest free slice is 6 GiB and 30 % "
                    "on NVIDIA H100 GPU-a at worker w1 (2 workers up, 2 down (w3, w9)).")
    assert "no device up" in explain(Request(GiB, 1), [dev("w3", "x", up=False)])
    assert "matching 'A100'" in explain(Request(GiB, 1, model="A100"), devices)
    assert "0 untouched devices out of 2" in explain(Request(0, 100, whole_device=True), devices)
    assert "at most 1 device on one worker" in explain(Request(GiB, 1, count=2), devices)


def random_pool(rng, workers=6, per_worker=4):
    out = []
    for w in range(workers):
        size = rng.choice([24, 40, 80])
        for k in range(per_worker):
            out.append(dev(f"w{w}", f"u{w}-{k}", size, name=rng.choice(["NVIDIA L4", "NVIDIA A100"]),
                           up=rng.random() > 0.1))
    return out


@pytest.mark.parametrize("seed", range(20))
def test_pool_state_fast_path_agrees_with_place(seed):
    rng = random.Random(seed)
    state = PoolState(random_pool(rng))
    live = []
    for _ in range(300):
        if live and rng.random() < 0.3:
            cand, req = live.pop(rng.randrange(len(live)))
            state.free(cand, req)
            continue
        req = Request(rng.choice([1, 2, 4, 8, 16]) * GiB, rng.randint(1, 40), model=rng.choice(["", "", "a100"]))
        expected = place(req, state.devices)
        assert state.place(req) == expected
        got = state.place_and_commit(req)
        assert got == (expected[0] if expected else None)
        if got is not None:
            live.append((got, req))
    for cand, req in live:
        state.free(cand, req)
    assert state.devices_used() == 0


def test_pool_state_updates():
    state = PoolState([dev("w1", "a", 24), dev("w2", "b", 80)])
    req = Request(20 * GiB, 50)
    assert state.place_and_commit(req) == Candidate("w2", ("b",))
    assert state.device("b").vram_free == 60 * GiB and state.device("b").compute_free == 50
    assert state.devices_used() == 1
    with pytest.raises(ValueError, match="no longer fits on device b"):
        state.apply(Candidate("w2", ("b",)), Request(70 * GiB, 1))
    state.set_up("w2", False)
    assert state.place_and_commit(req) == Candidate("w1", ("a",))
    assert state.place_and_commit(req) is None  # nothing left up: unchanged
    state.set_up("w2", True)
    assert state.place_and_commit(req) == Candidate("w2", ("b",))
    state.update(dev("w2", "b", 80))  # fresh inventory: the worker says b is empty again
    state.update(dev("w3", "c", 141))
    assert state.place_and_commit(Request(100 * GiB, 10)) == Candidate("w3", ("c",))
    assert state.place_and_commit(Request(0, 100, whole_device=True)) == Candidate("w2", ("b",))
    assert state.device("b").vram_free == 0
    state.free(Candidate("w2", ("b",)), Request(0, 100, whole_device=True))
    assert state.device("b").untouched
    with pytest.raises(ValueError, match="appears twice on worker w1"):
        PoolState([dev("w1", "a"), dev("w1", "a")])


def test_pool_state_tells_apart_workers_that_report_the_same_uuid():
    # Two workers on one host both report the host device as "host-vm".
    state = PoolState([dev("w1", "host-vm", 8, free_gib=2), dev("w2", "host-vm", 8)])
    assert state.place_and_commit(Request(4 * GiB, 10)) == Candidate("w2", ("host-vm",))
    assert state.device("host-vm", "w2").vram_free == 4 * GiB
    assert state.device("host-vm", "w1").vram_free == 2 * GiB
    with pytest.raises(KeyError, match="2 devices with uuid host-vm"):
        state.device("host-vm")


def test_pool_state_copies_its_input():
    d = dev("w1", "a")
    PoolState([d]).place_and_commit(Request(GiB, 1))
    assert d.vram_free == d.vram_total


def test_pool_state_fills_a_large_pool_completely():
    rng = random.Random(1)
    pool = [dev(f"w{w}", f"u{w}-{k}", 80) for w in range(50) for k in range(8)]
    state = PoolState(pool)
    placed = sum(state.place_and_commit(Request(rng.choice([1, 2, 4]) * GiB, rng.randint(1, 5))) is not None
                 for _ in range(4000))
    assert placed == 4000
    # Demand is about 9,300 GiB and 12,000 % compute: at least 120 devices. Used devices come first,
    # so the pool is packed, not spread over all 400.
    assert 120 <= state.devices_used() <= 130
