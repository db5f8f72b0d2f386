import av
import numpy as np
import pytest

from unmask import video
from unmask.config import FrameSampling
from unmask.video import VideoError, probe, read_frames, write_video

BITS = 9


def numbered_frames(count, width=144, height=48):
    """Each frame shows its own index as black/white bars, readable after lossy compression."""
    frames = []
    bar = width // BITS
    for i in range(count):
        image = np.zeros((height, width, 3), np.uint8)
        for b in range(BITS):
            if (i >> b) & 1:
                image[:, b * bar:(b + 1) * bar] = 255
        frames.append(image)
    return frames


def read_number(image, width=144):
    bar = width // BITS
    return sum(1 << b for b in range(BITS) if image[:, b * bar + bar // 2].mean() > 127)


@pytest.mark.parametrize("gop", [250, 12])
def test_frame_indices_are_exact(tmp_path, gop):
    path = tmp_path / "numbers.mp4"
    write_video(path, numbered_frames(300), gop=gop)
    wanted = FrameSampling().indices(None)
    info, frames = read_frames(path, wanted)
    assert info.frame_count == 300
    assert [i for i, _ in frames] == [0, 30, 60, 90, 120, 150, 180]
    assert [read_number(image) for _, image in frames] == [0, 30, 60, 90, 120, 150, 180]
    _, frames = read_frames(path, [299, 7, 100, 250])
    assert [(i, read_number(image)) for i, image in frames] == [(7, 7), (100, 100), (250, 250), (299, 299)]


def test_mpeg_program_stream_gives_every_wanted_frame(tmp_path):
    """FFmpeg's MPEG-PS demuxer lands a GOP late after a seek and labels the frames after it one
    off (GRID corpus clips are such files): every wanted frame must still come, each the frame asked for."""
    path = tmp_path / "numbers.mpg"
    write_video(path, numbered_frames(75), codec="mpeg1video", gop=12)
    wanted = FrameSampling(step=6, max_frames=13).indices(None)
    info, frames = read_frames(path, wanted)
    assert info.frame_count == 75
    assert [(i, read_number(image)) for i, image in frames] == [(i, i) for i in wanted]
    _, frames = read_frames(path, [73, 5, 30, 31])
    assert [(i, read_number(image)) for i, image in frames] == [(5, 5), (30, 30), (31, 31), (73, 73)]


def test_short_video_gives_fewer_frames(tmp_path):
    path = tmp_path / "short.mp4"
    write_video(path, numbered_frames(70))
    info, frames = read_frames(path, FrameSampling(step=30, max_frames=7).indices(None))
    assert [read_number(image) for _, image in frames] == [0, 30, 60]
    assert FrameSampling().indices(info.frame_count) == [0, 30, 60]


@pytest.mark.parametrize("rotation, shape", [(90, (96, 64, 3)), (-90, (96, 64, 3)), (180, (64, 96, 3))])
def test_rotation_metadata_turns_frames_upright(tmp_path, rotation, shape):
    image = np.zeros((64, 96, 3), np.uint8)
    image[:16, :16] = 255  # mark the stored top-left corner
    path = tmp_path / "rotated.mp4"
    write_video(path, [image] * 3, rotation=rotation)
    info, frames = read_frames(path, [0])
    upright = frames[0][1]
    assert upright.shape == shape and (info.height, info.width) == shape[:2]
    corner = np.argwhere(upright[..., 0] > 128).mean(axis=0)
    expected = {90: (shape[0] - 8, 8), -90: (8, shape[1] - 8), 180: (shape[0] - 8, shape[1] - 8)}[rotation]
    assert np.allclose(corner, expected, atol=2)


def test_odd_frame_size(tmp_path):
    path = tmp_path / "odd.mp4"
    write_video(path, [np.full((99, 151, 3), 90, np.uint8)] * 3)
    info = probe(path)
    assert (info.width, info.height) == (150, 98)
    _, frames = read_frames(path, [0, 2])
    assert frames[1][1].shape == (98, 150, 3)


@pytest.mark.parametrize("kind, message", [
    ("empty", "empty file"), ("text", "not a readable video"), ("garbage", "not a readable video"),
])
def test_unreadable_files_say_why(broken_files, kind, message):
    with pytest.raises(VideoError, match=message):
        read_frames(broken_files[kind], [0])


def test_truncated_video_is_an_error_or_gives_the_frames_it_has(broken_files):
    try:
        info, frames = read_frames(broken_files["truncated"], list(range(0, 200, 30)))
    except VideoError as err:
        assert "truncated" in str(err) or "not a readable video" in str(err)
    else:
        assert len(frames) < 7


def test_missing_file():
    with pytest.raises(VideoError, match="no such file"):
        probe("does/not/exist.mp4")


def test_what_is_not_a_regular_file_is_named_and_never_opened(tmp_path):
    import os

    broken = tmp_path / "gone.mp4"
    broken.symlink_to(tmp_path / "nowhere.mp4")
    pipe = tmp_path / "pipe.mp4"
    os.mkfifo(pipe)  # opened for reading, it would wait for a writer forever
    (tmp_path / "folder.mp4").mkdir()
    for path, message in ((broken, f"a broken link (to {tmp_path / 'nowhere.mp4'}, which does not exist)"),
                          (pipe, "a named pipe (FIFO), not a video file"),
                          (tmp_path / "folder.mp4", "a folder, not a video file")):
        with pytest.raises(VideoError) as refused:
            probe(path)
        assert str(refused.value) == f"{path}: {message}"


def test_a_frame_size_ffmpeg_refuses_is_said_to_be_the_reason(tmp_path):
    """FFmpeg refuses a YUV4MPEG2 stream declaring 100000x100000 with a bare EBUSY ("Device or
    resource busy"); the header says why, so the message does."""
    huge, fine = tmp_path / "huge.y4m", tmp_path / "fine.y4m"
    huge.write_bytes(b"YUV4MPEG2 W100000 H100000 F25:1 Ip A1:1 C420jpeg\nFRAME\n" + bytes(3000))
    with pytest.raises(VideoError) as refused:
        probe(huge)
    assert str(refused.value) == f"{huge}: its frame size, 100000x100000, is refused (larger than FFmpeg decodes)"
    fine.write_bytes(b"YUV4MPEG2 W64 H48 F25:1 Ip A1:1 C420jpeg\n" + (b"FRAME\n" + bytes(64 * 48 * 3 // 2)) * 3)
    assert probe(fine).frame_count == 3  # a size FFmpeg takes is read as ever


def moving_texture(count, width=144, height=96):
    """A seeded noise texture sliding a pixel per frame, so the encoder predicts across frames."""
    texture = np.random.default_rng(0).integers(0, 256, (height, width + count, 3), np.uint8)
    return [np.ascontiguousarray(texture[:, i:i + width]) for i in range(count)]


def test_skipping_unreferenced_pictures_leaves_every_frame_as_decoded(tmp_path, monkeypatch):
    """x264 writes non-reference B-frames; frames read without decoding them (except the ones
    wanted) must equal frames read by decoding every picture."""
    path = tmp_path / "texture.mp4"
    write_video(path, moving_texture(120), gop=60)
    with av.open(str(path)) as container:
        unreferenced = video._index(container, container.streams.video[0]).unreferenced
    assert 0 < len(unreferenced) < 120
    wanted = [0, 7, 30, 31, 59, 60, 90, 119]
    _, skipping = read_frames(path, wanted)
    monkeypatch.setattr(video, "_unreferenced", lambda data, length_size: False)
    _, decoding_all = read_frames(path, wanted)
    assert [i for i, _ in skipping] == [i for i, _ in decoding_all] == wanted
    for (_, a), (_, b) in zip(skipping, decoding_all):
        assert np.array_equal(a, b)


def test_only_streams_with_nal_lengths_are_scanned(tmp_path):
    path = tmp_path / "mpeg4.mp4"
    write_video(path, moving_texture(20), codec="mpeg4")
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert video._nal_length_size(stream) is None
        assert video._index(container, stream).unreferenced == frozenset()


@pytest.mark.parametrize("data, expected", [
    (b"\x00\x00\x00\x03\x01\xaa\xbb", True),                      # one slice, nal_ref_idc 0
    (b"\x00\x00\x00\x01\x09\x00\x00\x00\x02\x01\xaa", True),      # access unit delimiter + slice
    (b"\x00\x00\x00\x03\x21\xaa\xbb", False),                     # a reference slice
    (b"\x00\x00\x00\x03\x06\xaa\xbb", False),                     # SEI: keep
    (b"\x00\x00\x00\x01\x09", False),                             # no slice at all
    (b"\x00\x00\x00\x09\x01\xaa", False),                         # length runs past the packet
    (b"", False),
])
def test_unreferenced_packet_parsing(data, expected):
    assert video._unreferenced(data, 4) is expected


@pytest.mark.parametrize("pix_fmt,size", [("yuv420p", (144, 96)), ("yuvj420p", (144, 96)),
                                          ("yuv422p", (144, 96)), ("yuv444p", (143, 95))])
def test_partial_frames_convert_regions_to_the_pixels_of_the_whole_frame(tmp_path, pix_fmt, size):
    """A region of a frame kept in its own format equals the same region of the frame converted
    whole, at any position and size (odd bounds, chroma rows and columns split, the frame's edges)."""
    width, height = size
    path = tmp_path / f"{pix_fmt}.mp4"
    write_video(path, moving_texture(12, width, height), pix_fmt=pix_fmt)
    wanted = [0, 5, 11]
    _, whole = read_frames(path, wanted)
    partial = list(video.stream_frames(path, wanted, partial=lambda i: i != 5).frames)
    assert [i for i, _ in partial] == wanted
    assert isinstance(partial[1][1], np.ndarray) and np.array_equal(partial[1][1], whole[1][1])
    rng = np.random.default_rng(0)
    for (_, frame), (_, image) in zip(partial[::2], whole[::2]):
        assert isinstance(frame, video.PartialFrame) and frame.shape == image.shape
        regions = [(0, 0, width, height), (1, 1, 2, 2), (width - 1, height - 1, width, height)]
        for _ in range(40):
            left, top = int(rng.integers(0, width - 1)), int(rng.integers(0, height - 1))
            regions.append((left, top, int(rng.integers(left + 1, width + 1)), int(rng.integers(top + 1, height + 1))))
        for left, top, right, bottom in regions:
            assert np.array_equal(frame.region(left, top, right, bottom), image[top:bottom, left:right])
            assert np.array_equal(frame[top:bottom, left:right], image[top:bottom, left:right])
        assert np.array_equal(frame[:, :], image) and np.array_equal(frame[-3:, 2:-1], image[-3:, 2:-1])
        with pytest.raises(TypeError, match="plain slices"):
            frame[::2, :]


def test_frames_that_cannot_be_cut_by_region_come_whole(tmp_path):
    """Rotated or scaled frames, and formats outside CHROMA_SHIFT, are converted whole, as before."""
    rotated, plain, deep = tmp_path / "rotated.mp4", tmp_path / "plain.mp4", tmp_path / "10bit.mp4"
    write_video(rotated, moving_texture(3), rotation=90)
    write_video(plain, moving_texture(3))
    write_video(deep, moving_texture(3), pix_fmt="yuv420p10le")
    for path, max_side in ((rotated, None), (plain, 100), (deep, None)):
        frames = video.stream_frames(path, [0, 2], max_side=max_side, partial=lambda i: True).frames
        assert all(isinstance(image, np.ndarray) for _, image in frames)
