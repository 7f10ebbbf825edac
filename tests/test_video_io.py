import numpy as np
import pytest
import torch

from vidaccel_train.data.video_io import probe, read_clip, read_frames_at, write_video
from vidaccel_train.errors import VideoDecodeError


def _numbered_frames(count: int, height: int = 32, width: int = 48):
    """Frame i is a flat grey of brightness 7*i: decoded brightness tells which frame came back."""
    return [np.full((height, width, 3), 7 * i, dtype=np.uint8) for i in range(count)]


@pytest.fixture
def numbered_video(tmp_path):
    path = tmp_path / "numbered.mp4"
    write_video(path, _numbered_frames(30), fps=10, qp=0)
    return path


def test_probe_reports_duration_fps_and_size(numbered_video):
    info = probe(numbered_video)
    assert info.fps == pytest.approx(10)
    assert info.duration_s == pytest.approx(3.0, abs=0.11)
    assert (info.width, info.height) == (48, 32)


def test_frames_at_timestamps_are_the_frames_shown_then(numbered_video):
    frames = read_frames_at(numbered_video, [0.0, 0.55, 1.0, 2.95])
    assert frames.shape == (4, 3, 32, 48)
    brightness = frames.float().mean(dim=(1, 2, 3)) / 7
    np.testing.assert_allclose(brightness.numpy(), [0, 5, 10, 29], atol=0.5)


@pytest.mark.parametrize("threads", [1, 2])
def test_decoder_threads_change_nothing_in_the_frames(numbered_video, threads):
    wanted = [0.0, 0.55, 1.0, 2.95]
    frames, _ = read_clip(numbered_video, lambda info: wanted, threads=threads)
    assert torch.equal(frames, read_frames_at(numbered_video, wanted))
    brightness = frames.float().mean(dim=(1, 2, 3)) / 7
    np.testing.assert_allclose(brightness.numpy(), [0, 5, 10, 29], atol=0.5)


def test_timestamps_past_the_end_repeat_the_last_frame(numbered_video):
    frames = read_frames_at(numbered_video, [2.92, 5.0, 9.0])
    brightness = frames.float().mean(dim=(1, 2, 3)) / 7
    np.testing.assert_allclose(brightness.numpy(), [29, 29, 29], atol=0.5)


def test_read_clip_hands_the_video_info_to_the_sampler(numbered_video):
    seen = []
    frames, info = read_clip(numbered_video, lambda info: seen.append(info) or [info.duration_s / 2])
    assert seen == [info] and frames.shape[0] == 1
    assert frames.float().mean() / 7 == pytest.approx(15, abs=0.5)


def test_a_file_that_is_not_video_is_named_in_the_error(tmp_path):
    bogus = tmp_path / "notes.mp4"
    bogus.write_text("not a video")
    with pytest.raises(VideoDecodeError, match="notes.mp4"):
        read_frames_at(bogus, [0.0])


def test_odd_frame_sizes_are_refused_before_encoding(tmp_path):
    with pytest.raises(ValueError, match="even"):
        write_video(tmp_path / "odd.mp4", _numbered_frames(2, height=31), fps=10)


@pytest.mark.parametrize(
    "clips",
    [
        [[0.35, 0.75, 1.15, 1.55], [0.55, 0.95, 1.35, 1.75]],  # overlapping spans, interleaved frames
        [[1.25, 1.65, 2.05, 2.45], [0.05, 0.45, 0.85, 1.25]],  # the later clip asked first, sharing a frame
        [[0.15, 0.95, 1.75, 2.55], [1.05, 1.25, 1.45, 1.65]],  # one span nested in the other
        [[0.65, 0.95, 1.25, 1.55], [0.65, 0.95, 1.25, 1.55]],  # the same clip twice
    ],
)
def test_several_clips_from_one_decode_equal_each_clip_read_alone(numbered_video, clips):
    """Training and multi-view testing read all clips of a video in one pass: each clip must come
    back exactly as reading it alone gives it, its frames in time order."""
    frames, _ = read_clip(numbered_video, lambda info: [t for clip in clips for t in clip])
    for clip, got in zip(clips, frames.split(4)):
        assert torch.equal(got, read_frames_at(numbered_video, clip))
        brightness = got.float().mean(dim=(1, 2, 3)) / 7
        np.testing.assert_allclose(brightness.numpy(), [int(t * 10) for t in clip], atol=0.5)


def test_frames_far_from_a_keyframe_are_exact_with_non_reference_frames_skipped(tmp_path):
    """One keyframe and mostly B-frames, as Kinetics copies have: non-reference frames well before
    a wanted time are skipped, and every wanted frame equals the one a full decode shows then."""
    import av

    from vidaccel_train.data.synthetic import SyntheticSpec, render_clip

    path = tmp_path / "long_gop.mp4"
    frames = render_clip(
        SyntheticSpec(height=64, width=80, duration_s=4.0, fps=30), "move_left", np.random.default_rng(0)
    )
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = 80, 64, "yuv420p"
        stream.options = {"qp": "20", "preset": "veryfast", "g": "250", "x264-params": "b-adapt=0:bframes=3"}
        for array in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")))
        container.mux(stream.encode())
    with av.open(str(path)) as container:
        decoded = [(frame.pts * float(frame.time_base), frame) for frame in container.decode(video=0)]
    assert sum(int(frame.pict_type) == 3 for _, frame in decoded) > len(decoded) // 2  # mostly B-frames
    generator = torch.Generator().manual_seed(0)
    for _ in range(12):
        start = float(torch.rand((), generator=generator)) * 2.3
        wanted = [start + 0.4 * i + 5e-4 for i in range(4)]  # X3D-XS: 4 frames 12 apart at 30 fps
        shown = [max((f for t, f in decoded if t <= w), key=lambda f: f.pts) for w in wanted]
        expected = torch.from_numpy(np.stack([f.to_ndarray(format="rgb24") for f in shown])).permute(0, 3, 1, 2)
        assert torch.equal(read_frames_at(path, wanted), expected)


@pytest.mark.parametrize(
    "clips",
    [
        [[0.35, 0.75, 1.15, 1.55], [9.05, 9.45, 9.85, 10.25]],  # far apart: the second is reached by seeking
        [[9.05, 9.45, 9.85, 10.25], [0.35, 0.75, 1.15, 1.55]],  # the later clip asked first
        [[0.05, 0.35], [3.05, 3.35], [6.05, 6.35], [11.55, 11.85]],  # multi-view: clips spread over the video
        [[0.05, 11.95], [5.05, 5.15]],  # one span around the other
    ],
)
def test_far_apart_clips_of_a_short_keyframe_interval_file_equal_each_clip_read_alone(tmp_path, clips):
    """A file made for random access (12 s, a keyframe every 4 frames, B-frames): clips seconds
    apart in one read skip the frames between them by seeking, and come back exactly as read alone."""
    import av

    path = tmp_path / "short_gop.mp4"
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=5)
        stream.width, stream.height, stream.pix_fmt = 48, 32, "yuv420p"
        stream.options = {"qp": "0", "preset": "veryfast", "x264-params": "keyint=4:min-keyint=4:scenecut=0"}
        for i in range(60):  # frame i has brightness 4 * i
            array = np.full((32, 48, 3), 4 * i, dtype=np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")))
        container.mux(stream.encode())
    frames, _ = read_clip(path, lambda info: [t for clip in clips for t in clip])
    offsets = np.cumsum([0] + [len(clip) for clip in clips])
    for clip, start, end in zip(clips, offsets, offsets[1:]):
        got = frames[start:end]
        assert torch.equal(got, read_frames_at(path, clip))
        brightness = got.float().mean(dim=(1, 2, 3)) / 4
        np.testing.assert_allclose(brightness.numpy(), [min(int(t * 5), 59) for t in clip], atol=0.5)
