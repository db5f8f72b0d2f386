"""Pictures people would rather look at than read: contact sheets of extracted faces."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from unmask.datasets import LABEL_NAMES  # noqa: E402
from unmask.store import FaceStore  # noqa: E402
from unmask.util import atomic_path  # noqa: E402


def contact_sheet(store: FaceStore, path: Path, videos_per_class: int = 4, seed: int = 0) -> Path | None:
    """A PNG with one row per video (its faces left to right, as the study showed them),
    ``videos_per_class`` rows of real videos then of fake ones. None when the store is empty."""
    table = store.table
    if table.empty:
        return None
    rng = np.random.default_rng(seed)
    chosen = []
    for label in sorted(table["label"].unique()):
        videos = table.loc[table["label"] == label, "video"].unique()
        picked = rng.choice(videos, size=min(videos_per_class, len(videos)), replace=False)
        chosen.extend((label, video) for video in sorted(picked))
    columns = int(table.groupby("video").size().max())
    figure, axes = plt.subplots(len(chosen), columns, figsize=(max(6.0, 1.3 * columns + 1.6), 1.4 * len(chosen)),
                                squeeze=False)
    for r, (label, video) in enumerate(chosen):
        rows = table[table["video"] == video].sort_values("frame")
        for c in range(columns):
            axis = axes[r][c]
            axis.set_xticks([]), axis.set_yticks([])
            for side in axis.spines.values():
                side.set_visible(False)
            if c < len(rows):
                face = rows.iloc[c]
                axis.imshow(store.faces[int(face["row"])])
                axis.set_title(f"frame {int(face['frame'])}  {face['confidence']:.3f}", fontsize=6)
        first = rows.iloc[0]
        kind = LABEL_NAMES[int(label)].upper() + (f" {first['method']}" if label else "")
        axes[r][0].set_ylabel(f"{kind}\n{first['compression']} {Path(video).name[-22:]}", fontsize=7, rotation=0,
                              ha="right", va="center", color="#b00020" if label else "#1b5e20")
    figure.suptitle(f"{store.root.name}: {len(table)} faces from {table['video'].nunique()} videos "
                    f"(MTCNN confidence shown)", fontsize=9)
    figure.tight_layout()
    with atomic_path(Path(path)) as tmp:
        figure.savefig(tmp, dpi=110, format="png")
    plt.close(figure)
    return Path(path)
