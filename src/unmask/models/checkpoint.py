"""Training checkpoints as one safetensors file: the tensors (weights, optimizer moments, random
generator states) in its body, everything else as JSON in its header.

Why: resuming reads a file that another process wrote, and we never unpickle such a file;
``torch.save`` is pickle. One file also keeps the write atomic (temporary name, then rename).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from unmask.errors import UnmaskError
from unmask.util import atomic_path

META_KEY = "unmask-checkpoint"
SEPARATOR = "/"


def save_checkpoint(path: Path, tensors: dict[str, dict[str, torch.Tensor]], state: dict[str, Any]) -> None:
    """Write groups of named tensors (``{"model": state_dict, ...}``) and a JSON-able ``state``."""
    flat = {f"{group}{SEPARATOR}{name}": tensor.detach().to("cpu").contiguous()
            for group, named in tensors.items() for name, tensor in named.items()}
    with atomic_path(path) as temporary:
        save_file(flat, str(temporary), metadata={META_KEY: json.dumps(state)})


def load_checkpoint(path: Path) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, Any]]:
    """The tensor groups and the state written by ``save_checkpoint``."""
    try:
        with safe_open(str(path), framework="pt") as file:
            meta = (file.metadata() or {}).get(META_KEY)
            groups: dict[str, dict[str, torch.Tensor]] = {}
            for key in file.keys():  # noqa: SIM118 (a safe_open handle is not iterable)
                group, name = key.split(SEPARATOR, 1)
                groups.setdefault(group, {})[name] = file.get_tensor(key)
    except (SafetensorError, OSError, ValueError) as err:
        raise UnmaskError(f"{path} is not a readable checkpoint ({err}); delete it to start over") from None
    if meta is None:
        raise UnmaskError(f"{path} is not an unmask checkpoint; delete it to start over")
    return groups, json.loads(meta)


def split_optimizer_state(state_dict: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """A torch optimizer's ``state_dict`` as (tensors, JSON-able rest)."""
    tensors, scalars = {}, {}
    for param, values in state_dict["state"].items():
        for name, value in values.items():
            (tensors if torch.is_tensor(value) else scalars)[f"{param}.{name}"] = value
    return tensors, {"param_groups": state_dict["param_groups"], "scalars": scalars}


def join_optimizer_state(tensors: dict[str, torch.Tensor], rest: dict[str, Any]) -> dict[str, Any]:
    """The inverse of ``split_optimizer_state``, ready for ``optimizer.load_state_dict``."""
    state: dict[int, dict[str, Any]] = {}
    for key, value in [*tensors.items(), *rest["scalars"].items()]:
        param, name = key.split(".", 1)
        state.setdefault(int(param), {})[name] = value
    return {"state": state, "param_groups": rest["param_groups"]}
