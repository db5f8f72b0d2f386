"""Training augmentation that imitates how deepfakes reach people.

A fake is rarely seen as it left the generator: it is re-encoded by a video platform
(H.264), screenshotted or re-uploaded (JPEG), shown smaller than it was made (downscale,
then upscale for display), and it carries the camera's blur, noise and colour grading.
A detector trained only on pristine FaceForensics++ frames learns compression-fragile
cues; these transforms teach it to ignore them.

Order of the stages, as the degradations happen in the world: flip (label-free), colour
jitter (grading), blur (focus), noise (sensor), then downscale -> H.264 -> JPEG -> upscale
(compression happens at the small size, so its blocks are magnified like those of a
low-resolution video shown full screen).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import av
import cv2
import numpy as np

#: Flipping a face horizontally swaps left and right eye, and left and right mouth corner.
FLIP_KEYPOINT_ORDER = np.array([1, 0, 2, 4, 3])

#: The probability fields of ``AugmentConfig``, one per stage, in the order they are applied.
PROBABILITIES = ("flip_p", "color_p", "blur_p", "noise_p", "resize_p", "h264_p", "jpeg_p")

_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float64)
_RGB_TO_YIQ = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
_YIQ_TO_RGB = np.linalg.inv(_RGB_TO_YIQ)
_DOWN_INTERPOLATIONS = (cv2.INTER_AREA, cv2.INTER_LINEAR, cv2.INTER_CUBIC)
_UP_INTERPOLATIONS = (cv2.INTER_LINEAR, cv2.INTER_CUBIC)


@dataclass(frozen=True)
class AugmentConfig:
    """Probabilities and ranges of each stage; ranges are ``(low, high)``, sampled uniformly.

    A probability of 0 switches a stage off; ``AugmentConfig.none()`` switches all off
    (evaluation), and ``dataclasses.replace(AugmentConfig.none(), jpeg_p=1.0)`` gives one stage.
    """

    flip_p: float = 0.5
    """Horizontal mirror: a mirrored face is as real, or as fake, as the original."""
    color_p: float = 0.8
    """Colour jitter: cameras, white balance and grading differ between videos."""
    brightness: float = 0.2
    """Brightness factor drawn from ``[1 - brightness, 1 + brightness]``."""
    contrast: float = 0.2
    """Contrast factor drawn from ``[1 - contrast, 1 + contrast]`` (around the mean grey)."""
    saturation: float = 0.2
    """Saturation factor drawn from ``[1 - saturation, 1 + saturation]``."""
    hue: float = 0.03
    """Hue rotation, as a fraction of a full turn, drawn from ``[-hue, hue]`` (0.03 is ~11 degrees)."""
    blur_p: float = 0.2
    """Gaussian blur: out-of-focus or motion-softened faces."""
    blur_sigma: tuple[float, float] = (0.3, 1.5)
    """Blur standard deviation in pixels of the face as given."""
    noise_p: float = 0.2
    """Additive Gaussian noise: sensor noise of low-light and phone video."""
    noise_sigma: tuple[float, float] = (2.0, 8.0)
    """Noise standard deviation in grey levels (0-255), independent per channel."""
    resize_p: float = 0.3
    """Downscale then upscale back: the face was smaller in the video than in the crop."""
    resize_scale: tuple[float, float] = (0.35, 0.9)
    """Side of the small image as a fraction of the original side."""
    h264_p: float = 0.2
    """H.264 (x264, all-intra, constant QP) round trip: video platforms re-encode uploads."""
    h264_qps: tuple[int, ...] = (20, 24, 28, 32, 36, 40)
    """Quantiser values to pick from; FF++ c23 frames are around QP 20-26, c40 around 37-42.
    A few discrete values because each needs its own cached encoder (~3 MB each)."""
    jpeg_p: float = 0.5
    """JPEG round trip: screenshots, thumbnails, re-shared stills."""
    jpeg_quality: tuple[int, int] = (30, 95)
    """JPEG quality (1-100), drawn as an integer from the closed range."""

    @classmethod
    def none(cls) -> AugmentConfig:
        """Every stage off: the augmenter returns its input unchanged."""
        return cls(**{name: 0.0 for name in PROBABILITIES})

    def __post_init__(self) -> None:
        for name in PROBABILITIES:
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1]")
        for name in ("brightness", "contrast", "saturation"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1)")
        if not 0.0 <= self.hue <= 0.5:
            raise ValueError("hue must be in [0, 0.5]")
        for name, lowest, highest in (("blur_sigma", 0.1, math.inf), ("noise_sigma", 0.0, math.inf),
                                      ("resize_scale", 0.0, 1.0), ("jpeg_quality", 1, 100)):
            low, high = getattr(self, name)
            if not lowest <= low <= high <= highest:
                raise ValueError(f"{name} must be an ordered (low, high) pair within [{lowest}, {highest}]")
        if not self.h264_qps or any(not 0 <= qp <= 51 for qp in self.h264_qps):
            raise ValueError("h264_qps must be a non-empty tuple of x264 quantisers in [0, 51]")


class _H264Intra:
    """Round-trip an image through x264 and FFmpeg's H.264 decoder.

    Opening an x264 encoder costs ~4 ms, encoding plus decoding a 128x128 frame under 1 ms,
    so encoders are kept, one per (canvas size, QP). Every frame is an IDR frame at constant
    QP, so it is coded independently of the frames before it: the result depends on the
    image, QP and canvas. Images are padded (edge pixels) onto the canvas so that all the
    downscaled sizes of one face size share an encoder; yuv420p needs even sides anyway.
    Not thread-safe; pickling gives a fresh, empty cache (for DataLoader workers).
    """

    def __init__(self) -> None:
        self._encoders: dict[tuple[int, int, int], av.CodecContext] = {}
        self._decoder = av.CodecContext.create("h264", "r")
        self._decoder.thread_count = 1

    def __reduce__(self):
        return type(self), ()

    def _encoder(self, height: int, width: int, qp: int) -> av.CodecContext:
        key = (height, width, qp)
        if key not in self._encoders:
            encoder = av.CodecContext.create("libx264", "w")
            encoder.width, encoder.height = width, height
            encoder.pix_fmt = "yuv420p"
            encoder.gop_size = 1
            # veryfast keeps the deblocking filter and intra modes of real encodes;
            # zerolatency makes every frame come out of encode() at once.
            encoder.options = {"qp": str(qp), "preset": "veryfast", "tune": "zerolatency", "threads": "1"}
            self._encoders[key] = encoder
        return self._encoders[key]

    def __call__(self, image: np.ndarray, qp: int, canvas: tuple[int, int]) -> np.ndarray:
        height, width = image.shape[:2]
        padded = cv2.copyMakeBorder(image, 0, canvas[0] - height, 0, canvas[1] - width, cv2.BORDER_REPLICATE)
        encoder = self._encoder(canvas[0], canvas[1], qp)
        frames = []
        for packet in encoder.encode(av.VideoFrame.from_ndarray(padded, format="rgb24")):
            frames += self._decoder.decode(packet)
        return frames[0].to_ndarray(format="rgb24")[:height, :width]


def jpeg_roundtrip(image: np.ndarray, quality: int) -> np.ndarray:
    """Encode and decode a uint8 image as JPEG (libjpeg, 4:2:0) at ``quality`` (1-100)."""
    # OpenCV takes BGR; swapping keeps libjpeg's luma weights on the right channels.
    bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    _, encoded = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    return cv2.cvtColor(cv2.imdecode(encoded, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def adjust_colors(image: np.ndarray, brightness: float = 1.0, contrast: float = 1.0, saturation: float = 1.0,
                  hue: float = 0.0, shift: tuple[float, float, float] = (0.0, 0.0, 0.0)) -> np.ndarray:
    """Colour-adjust a uint8 RGB image with one affine map per pixel (a single ``cv2.transform``).

    Factors are 1 for no change; ``hue`` is a fraction of a full turn (as in HSV);
    ``shift`` adds grey levels per channel. Brightness scales; contrast blends with the
    image's mean grey; saturation blends with each pixel's grey; hue rotates the chroma
    plane of YIQ. Saturation and hue keep greys grey, so the contrast offset passes
    through them unchanged.
    """
    mean_grey = brightness * float(_LUMA @ np.array(cv2.mean(image)[:3]))
    saturate = saturation * np.eye(3) + (1.0 - saturation) * np.outer(np.ones(3), _LUMA)
    angle = -2.0 * math.pi * hue  # YIQ turns the other way from HSV: red -> yellow -> green for hue > 0
    rotate = np.array([[1.0, 0.0, 0.0],
                       [0.0, math.cos(angle), -math.sin(angle)],
                       [0.0, math.sin(angle), math.cos(angle)]])
    linear = contrast * brightness * (_YIQ_TO_RGB @ rotate @ _RGB_TO_YIQ @ saturate)
    offset = (1.0 - contrast) * mean_grey + np.asarray(shift, dtype=np.float64)
    return cv2.transform(image, np.hstack([linear, offset[:, None]]).astype(np.float32))


class Augmenter:
    """Random degradations of one face per call; reproducible given the ``rng`` state.

    ``augmenter(face, rng)`` for classification; ``augmenter.with_keypoints(face, kps, rng)``
    when the keypoints must follow (only the flip moves them). Each instance caches H.264
    encoders, so give each worker thread its own (copies made by pickling start empty).
    """

    def __init__(self, config: AugmentConfig | None = None) -> None:
        self.config = config or AugmentConfig()
        self._h264 = _H264Intra()

    def __call__(self, face: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return self._apply(face, rng)[0]

    def with_keypoints(self, face: np.ndarray, keypoints: np.ndarray,
                       rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """The same image as ``self(face, rng)`` and the (5, 2) keypoints that go with it:
        mirrored ``x -> W - 1 - x`` and left/right swapped when the face was flipped."""
        out, flipped = self._apply(face, rng)
        keypoints = np.asarray(keypoints, dtype=np.float32)
        if flipped:
            keypoints = keypoints[FLIP_KEYPOINT_ORDER].copy()
            keypoints[:, 0] = face.shape[1] - 1 - keypoints[:, 0]
        return out, keypoints

    def _apply(self, face: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, bool]:
        if face.dtype != np.uint8 or face.ndim != 3 or face.shape[2] != 3:
            raise ValueError(f"expected a uint8 (H, W, 3) face, got {face.dtype} {face.shape}")
        cfg = self.config
        out = np.array(face, order="C")  # a copy even when no stage fires: callers may write to it
        flipped = rng.random() < cfg.flip_p
        if flipped:
            out = cv2.flip(out, 1)
        if rng.random() < cfg.color_p:
            b, c, s = rng.uniform(-1.0, 1.0, 3) * (cfg.brightness, cfg.contrast, cfg.saturation) + 1.0
            out = adjust_colors(out, b, c, s, rng.uniform(-cfg.hue, cfg.hue))
        if rng.random() < cfg.blur_p:
            out = cv2.GaussianBlur(out, (0, 0), rng.uniform(*cfg.blur_sigma))
        if rng.random() < cfg.noise_p:
            noise = rng.standard_normal(out.shape, dtype=np.float32)
            noise *= rng.uniform(*cfg.noise_sigma)
            out = cv2.add(out, noise, dtype=cv2.CV_8U)
        return self._degrade(out, rng), flipped

    def _degrade(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Downscale -> H.264 -> JPEG -> upscale, each stage optional."""
        cfg = self.config
        height, width = image.shape[:2]
        small = image
        if rng.random() < cfg.resize_p:
            scale = rng.uniform(*cfg.resize_scale)
            size = (max(2, round(width * scale)), max(2, round(height * scale)))
            small = cv2.resize(image, size, interpolation=_DOWN_INTERPOLATIONS[rng.integers(3)])
        if rng.random() < cfg.h264_p:
            canvas = (-(-height // 16) * 16, -(-width // 16) * 16)
            small = self._h264(small, int(cfg.h264_qps[rng.integers(len(cfg.h264_qps))]), canvas)
        if rng.random() < cfg.jpeg_p:
            small = jpeg_roundtrip(small, rng.integers(cfg.jpeg_quality[0], cfg.jpeg_quality[1] + 1))
        if small.shape != image.shape:
            small = cv2.resize(small, (width, height), interpolation=_UP_INTERPOLATIONS[rng.integers(2)])
        return small
