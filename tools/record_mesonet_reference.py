"""Record what the authors' original Keras MesoNet models output, as the fixture that proves
the PyTorch port in ``unmask.models.nets.mesonet`` exact (tests/models/test_mesonet.py).

Run it in a THROWAWAY environment, never the project's (TensorFlow is not a dependency):

    python -m venv /tmp/venv-keras
    /tmp/venv-keras/bin/pip install tensorflow-cpu pillow h5py scikit-image
    /tmp/venv-keras/bin/python tools/record_mesonet_reference.py [H5_DIR]

The Keras graphs are rebuilt as in DariusAf/MesoNet ``classifiers.py``, each layer named as
Keras 2.1.5 named it when the authors saved the weights, and weights are assigned by those
names with h5py: Keras' own legacy .h5 loading goes by layer order, and the inception
branches' 1x1 convs share shapes, so a wrong order would load silently; by name it cannot.

Only outputs and the recipe are written (no image data): for each net, the Keras sigmoid
P(real) and the logit (Keras' input to the last Dense, times its weights, in float64).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import h5py  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
import PIL  # noqa: E402
import skimage  # noqa: E402
import tensorflow as tf  # noqa: E402
from keras import layers  # noqa: E402
from skimage.transform import resize  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEFAULT_H5_DIR = REPO.parent / "shared" / "data" / "pretrained" / "mesonet"
FIXTURE = REPO / "tests" / "models" / "fixtures" / "mesonet_reference.json"

SIZE = 256
REFERENCE_IMAGES = ["df/df00204.jpg", "df/df01254.jpg", "real/real00240.jpg", "real/real00772.jpg"]
ASTRONAUT_BOX = (10, 210, 125, 325)  # top, bottom, left, right in skimage.data.astronaut() (512x512): the face
RANDOM_SEED, RANDOM_COUNT = 0, 4


def _conv(filters, kernel, name, dilation=1):
    return layers.Conv2D(filters, kernel, padding="same", activation="relu", dilation_rate=dilation, name=name)


def _head(x, dense_names):
    y = layers.Flatten()(x)
    y = layers.Dropout(0.5)(y)
    y = layers.Dense(16, name=dense_names[0])(y)
    y = layers.LeakyReLU(negative_slope=0.1)(y)
    y = layers.Dropout(0.5)(y)
    return layers.Dense(1, activation="sigmoid", name=dense_names[1])(y)


def _conv_block(x, filters, kernel, pool, conv_name, bn_name):
    """Conv(ReLU) -> BN -> MaxPool, named as in the .h5."""
    x = _conv(filters, kernel, conv_name)(x)
    x = layers.BatchNormalization(name=bn_name)(x)
    return layers.MaxPooling2D(pool_size=pool, padding="same")(x)


def build_meso4() -> keras.Model:
    """Meso4 of classifiers.py; it was the second model built in the authors' session (suffix +4)."""
    inputs = keras.Input((SIZE, SIZE, 3))
    x = inputs
    for i, (filters, kernel, pool) in enumerate([(8, 3, 2), (8, 5, 2), (16, 5, 2), (16, 5, 4)], start=5):
        x = _conv_block(x, filters, kernel, pool, f"conv2d_{i}", f"batch_normalization_{i}")
    return keras.Model(inputs, _head(x, ("dense_3", "dense_4")))


def _inception(x, a, b, c, d, first):
    """InceptionLayer(a, b, c, d) of classifiers.py; its convs, in creation order, are conv2d_{first..first+6}."""
    names = [f"conv2d_{first + i}" for i in range(7)]
    x1 = _conv(a, 1, names[0])(x)
    x2 = _conv(b, 3, names[2])(_conv(b, 1, names[1])(x))
    x3 = _conv(c, 3, names[4], dilation=2)(_conv(c, 1, names[3])(x))
    x4 = _conv(d, 3, names[6], dilation=3)(_conv(d, 1, names[5])(x))
    return layers.Concatenate(axis=-1)([x1, x2, x3, x4])


def build_mesoinception4() -> keras.Model:
    """MesoInception4 of classifiers.py, layer names as in MesoInception_DF.h5."""
    inputs = keras.Input((SIZE, SIZE, 3))
    x = _inception(inputs, 1, 4, 4, 2, first=1)
    x = layers.BatchNormalization(name="batch_normalization_1")(x)
    x = layers.MaxPooling2D(pool_size=2, padding="same")(x)
    x = _inception(x, 2, 4, 4, 2, first=8)
    x = layers.BatchNormalization(name="batch_normalization_2")(x)
    x = layers.MaxPooling2D(pool_size=2, padding="same")(x)
    x = _conv_block(x, 16, 5, 2, "conv2d_15", "batch_normalization_3")
    x = _conv_block(x, 16, 5, 4, "conv2d_16", "batch_normalization_4")
    return keras.Model(inputs, _head(x, ("dense_1", "dense_2")))


MODELS = {"meso4": (build_meso4, "Meso4_DF.h5"), "mesoinception4": (build_mesoinception4, "MesoInception_DF.h5")}


def load_by_name(model: keras.Model, path: Path) -> None:
    """Assign every saved weight to the model variable of the same layer and name; all must match."""
    with h5py.File(path, "r") as h5:
        saved = {n.decode() for n in h5.attrs["layer_names"] if len(h5[n.decode()].attrs["weight_names"])}
        built = {layer.name for layer in model.layers if layer.weights}
        if saved != built:
            raise ValueError(f"{path.name}: saved layers {sorted(saved)} != built {sorted(built)}")
        for name in saved:
            layer, group = model.get_layer(name), h5[name]
            arrays = {w.decode().split("/")[-1].removesuffix(":0"): np.asarray(group[w.decode()])
                      for w in group.attrs["weight_names"]}
            layer.set_weights([arrays[v.name] for v in layer.weights])


def reference_images(h5_dir: Path) -> tuple[np.ndarray, list[str]]:
    """As the authors' example.py read them: ImageDataGenerator(rescale=1/255).flow_from_directory
    with target_size 256, i.e. PIL decode, RGB, nearest-neighbour resize, times 1/255."""
    arrays = [keras.utils.img_to_array(keras.utils.load_img(h5_dir / "reference-images" / f, target_size=(SIZE, SIZE),
                                                            interpolation="nearest"), dtype="float32")
              for f in REFERENCE_IMAGES]
    digests = [hashlib.sha256(a.astype(np.uint8).tobytes()).hexdigest() for a in arrays]
    return np.stack(arrays) * np.float32(1 / 255), digests


def astronaut() -> np.ndarray:
    top, bottom, left, right = ASTRONAUT_BOX
    crop = skimage.data.astronaut()[top:bottom, left:right]
    return resize(crop, (SIZE, SIZE), order=1, anti_aliasing=False).astype(np.float32)[None]


def random_inputs() -> np.ndarray:
    return np.random.default_rng(RANDOM_SEED).random((RANDOM_COUNT, SIZE, SIZE, 3), dtype=np.float32)


def record(model: keras.Model, x: np.ndarray) -> dict[str, list[float]]:
    p_real = model.predict(x, verbose=0)[:, 0]
    last = model.layers[-1]
    features = keras.Model(model.inputs, last.input).predict(x, verbose=0).astype(np.float64)
    kernel, bias = (w.astype(np.float64) for w in last.get_weights())
    logit = (features @ kernel + bias)[:, 0]
    return {"p_real": [float(v) for v in p_real], "logit": [float(v) for v in logit]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("h5_dir", nargs="?", type=Path, default=DEFAULT_H5_DIR,
                        help="folder with the two .h5 files and reference-images/ (default: %(default)s)")
    args = parser.parse_args()
    images, digests = reference_images(args.h5_dir)
    inputs = {"reference_images": images, "astronaut": astronaut(), "random": random_inputs()}
    outputs = {}
    for name, (build, filename) in MODELS.items():
        model = build()
        load_by_name(model, args.h5_dir / filename)
        outputs[name] = {"weights": filename, **{k: record(model, x) for k, x in inputs.items()}}
    fixture = {
        "recipe": {
            "produced_by": "tools/record_mesonet_reference.py",
            "versions": {"python": platform.python_version(), "tensorflow": tf.__version__, "keras": keras.__version__,
                         "numpy": np.__version__, "pillow": PIL.__version__, "scikit-image": skimage.__version__,
                         "h5py": h5py.__version__},
            "layout": "Keras NHWC float32, RGB in [0, 1]; p_real is the Keras model output, logit its pre-sigmoid value",
            "reference_images": {
                "files": REFERENCE_IMAGES,
                "preprocessing": "keras.utils.load_img(target_size=(256, 256), interpolation='nearest') "
                                 "(PIL decode, RGB, NEAREST resize), float32 * (1/255)",
                "sha256_uint8_rgb": digests,
            },
            "astronaut": {
                "source": "skimage.data.astronaut() (public domain, NASA)",
                "box_top_bottom_left_right": list(ASTRONAUT_BOX),
                "preprocessing": "skimage.transform.resize(crop, (256, 256), order=1, anti_aliasing=False), float32",
            },
            "random": {"recipe": f"np.random.default_rng({RANDOM_SEED}).random(({RANDOM_COUNT}, 256, 256, 3), "
                                 "dtype=np.float32)"},
        },
        "outputs": outputs,
    }
    FIXTURE.parent.mkdir(parents=True, exist_ok=True)
    FIXTURE.write_text(json.dumps(fixture, indent=2) + "\n")
    print(f"wrote {FIXTURE}")


if __name__ == "__main__":
    main()
