"""WindowSampler on a dataset whose values encode their own position, so every gathered element
can be checked against the index it must have come from."""
import time

import numpy as np
import pytest

from harness.data import Episode, open_dataset, write_dataset
from harness.data.windows import WindowSampler
from harness.errors import UserError
from harness.model.frame import Frame

LENGTHS = (5, 12, 8)
STARTS = np.concatenate([[0], np.cumsum(LENGTHS)[:-1]])


def FRONT(tile):
    return Frame(("front",), tile=tile)


def coded_episodes():
    """Episode e, step t: action = (t, e), state = (e, t, global index); image pixels = 10*t + e."""
    g = 0
    for e, T in enumerate(LENGTHS):
        t = np.arange(T, dtype=np.float32)
        img = np.broadcast_to((10 * np.arange(T) + e).astype(np.uint8)[:, None, None, None],
                              (T, 16, 16, 3)).copy()
        yield Episode(task=f"task {e}", action=np.stack([t, np.full(T, e)], 1),
                      state=np.stack([np.full(T, e), t, g + t], 1).astype(np.float32),
                      images={"front": img})
        g += T


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("w") / "coded"
    return open_dataset(write_dataset(root, coded_episodes(), fps=10, video=False))


def test_shapes_and_len(data):
    ws = WindowSampler(data, frame=FRONT(8), actions=4, frame_stride=2, future_frames=3)
    assert len(ws) == sum(LENGTHS)
    b = ws.sample(np.random.default_rng(0), 16)
    assert b["frames"].shape == (16, 4, 8, 8, 3) and b["frames"].dtype == np.uint8
    assert b["frame_pad"].shape == (16, 4) and b["frame_pad"].dtype == bool
    assert b["actions"].shape == (16, 4, 2) and b["actions"].dtype == np.float32
    assert b["action_pad"].shape == (16, 4) and b["state"].shape == (16, 3)
    assert len(b["task"]) == 16


@pytest.mark.parametrize("stride,future,chunk", [(2, 3, 4), (1, 0, 1), (3, 2, 6)])
def test_alignment_and_padding(data, stride, future, chunk):
    ws = WindowSampler(data, frame=FRONT(16), actions=chunk, frame_stride=stride, future_frames=future)
    b = ws.get(np.arange(len(ws)))
    for flat in range(len(ws)):
        e = int(np.searchsorted(STARTS, flat, side="right") - 1)
        t, T = flat - STARTS[e], LENGTHS[e]
        assert b["task"][flat] == f"task {e}"
        np.testing.assert_array_equal(b["state"][flat], [e, t, flat])
        for k in range(1 + future):
            want_t = min(t + k * stride, T - 1)          # future frame k is frame t + k*s, clamped
            assert b["frames"][flat, k, 0, 0, 0] == 10 * want_t + e
            assert b["frame_pad"][flat, k] == (t + k * stride > T - 1)
        for j in range(chunk):
            want_t = min(t + j, T - 1)                   # action j is the action at t + j, clamped
            np.testing.assert_array_equal(b["actions"][flat, j], [want_t, e])
            assert b["action_pad"][flat, j] == (t + j > T - 1)
    assert not b["frame_pad"][:, 0].any() and not b["action_pad"][:, 0].any()


def test_last_step_of_episode_is_all_padding(data):
    ws = WindowSampler(data, frame=FRONT(16), actions=3, frame_stride=1, future_frames=2)
    last = LENGTHS[0] - 1
    b = ws.get([last])
    assert b["frame_pad"][0].tolist() == [False, True, True]
    assert b["action_pad"][0].tolist() == [False, True, True]
    np.testing.assert_array_equal(b["actions"][0], [[last, 0]] * 3)  # never leaks into episode 1


def test_resize_keeps_content(data):
    ws = WindowSampler(data, frame=FRONT(4), actions=1, frame_stride=1, future_frames=0)
    b = ws.get([STARTS[1] + 3])
    assert b["frames"].shape == (1, 1, 4, 4, 3) and (b["frames"] == 31).all()


def test_sample_is_fast(data):
    ws = WindowSampler(data, frame=FRONT(32), actions=8, frame_stride=2, future_frames=4)
    rng = np.random.default_rng(0)
    ws.sample(rng, 16)
    t0 = time.perf_counter()
    for _ in range(200):
        ws.sample(rng, 16)
    per_call_ms = (time.perf_counter() - t0) / 200 * 1e3
    assert per_call_ms < 2.0, f"sample() took {per_call_ms:.2f} ms"


def test_bad_arguments(data):
    with pytest.raises(UserError, match="no camera 'wrist'.*front"):
        WindowSampler(data, frame=Frame(("front", "wrist"), tile=16), actions=2, frame_stride=1, future_frames=1)
    with pytest.raises(UserError, match="frame_stride"):
        WindowSampler(data, frame=FRONT(16), actions=2, frame_stride=0, future_frames=1)
    ws = WindowSampler(data, frame=FRONT(16), actions=2, frame_stride=1, future_frames=1)
    with pytest.raises(IndexError):
        ws.get([len(ws)])


def test_decoded_arrays_are_cached_and_a_damaged_cache_is_rebuilt(tmp_path):
    root = write_dataset(tmp_path / "c", coded_episodes(), fps=10, video=True)
    kw = dict(frame=FRONT(8), actions=4, frame_stride=2, future_frames=1)
    first = WindowSampler(open_dataset(root), **kw)
    cached = list((root / "cache").glob("windows-front-8-*.npz"))
    assert len(cached) == 1
    again = WindowSampler(open_dataset(root), **kw)  # from the cache
    idx = np.arange(len(first))
    for k, v in first.get(idx).items():
        assert np.array_equal(v, again.get(idx)[k]), k
    assert again.tasks == first.tasks
    cached[0].write_bytes(b"not a zip")  # damaged: decoded again, and rewritten
    rebuilt = WindowSampler(open_dataset(root), **kw)
    assert np.array_equal(rebuilt.frames, first.frames)
    assert np.load(cached[0])["frames"].shape == first.frames.shape


def test_windows_of_a_dataset_rendered_every_k_steps_start_at_rendered_rows(tmp_path):
    """`demos --image-stride 4`: rows between rendered ones hold the last rendered frame. Windows
    start only at rendered rows, so every frame a window shows (not padding) is its own step's
    frame; a frame stride the image stride does not divide is refused in one line."""
    K = 4
    held = []
    for ep in coded_episodes():  # the coded frame 10*t + e held from the last multiple of K
        t = np.arange(len(ep))
        held.append(Episode(ep.task, ep.state, ep.action, {"front": ep.images["front"][t - t % K]}))
    data = open_dataset(write_dataset(tmp_path / "held", held, fps=10, video=False, info_extra={"image_stride": K}))
    assert data.image_stride == K
    for stride in (4, 8):
        ws = WindowSampler(data, frame=FRONT(16), actions=3, frame_stride=stride, future_frames=2)
        b = ws.get(np.arange(len(ws)))
        assert len(ws) == sum(-(-T // K) for T in LENGTHS)   # ceil(T / K) windows an episode
        t0 = b["state"][:, 1]                                 # the window's first step
        assert (t0 % K == 0).all() and sorted(map(tuple, b["state"][:, :2])) == sorted(
            (e, t) for e, T in enumerate(LENGTHS) for t in range(0, T, K))
        for w in range(len(ws)):
            e, t = int(b["state"][w, 0]), int(t0[w])
            for k in range(3):
                if not b["frame_pad"][w, k]:                  # a real frame: rendered at its own step
                    assert b["frames"][w, k, 0, 0, 0] == 10 * (t + k * stride) + e
    for stride in (2, 6):
        with pytest.raises(UserError, match=f"every {K} steps; frame_stride {stride} is not a multiple"):
            WindowSampler(data, frame=FRONT(16), actions=3, frame_stride=stride, future_frames=2)
