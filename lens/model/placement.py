"""Placing a model's blocks over several devices, with CPU or disk offload, by accelerate's big-model dispatch.

The block is the unit. Dispatching gives each block its own parameters
(`Weights.split_layers`) and lets accelerate attach its hooks: they move a block's
inputs (the residual stream and the ForwardContext, via its `.to`) to the block's
device, and for an offloaded block load its weights onto the execution device for
the step only. The embedding, the final norm and the unembedding stay on the main
device. Hook points fire as before, each on its block's device.

A device map names blocks as accelerate does: {"blocks.0": "cuda:0", ..., "blocks.31":
"cuda:1"}, values a device, "cpu" or "disk"; "weights" (embedding and unembedding)
defaults to the first block's execution device.
"""

from __future__ import annotations

import torch

OFFLOAD = ("cpu", "disk")


def even_map(n_layers: int, devices: list[str]) -> dict[str, str]:
    """Consecutive, equal runs of blocks per device (TransformerLens's n_devices)."""
    return {f"blocks.{i}": devices[i * len(devices) // n_layers] for i in range(n_layers)}


def cuda_devices(n_devices: int) -> list[str]:
    available = torch.cuda.device_count()
    if n_devices < 1 or n_devices > available:
        raise ValueError(f"n_devices={n_devices}, but {available} CUDA device(s) are visible")
    return [f"cuda:{i}" for i in range(n_devices)]


def auto_map(model, max_memory: dict | None) -> dict[str, str]:
    """accelerate's plan for the (already split) model under max_memory, per block."""
    from accelerate import infer_auto_device_map
    plan = infer_auto_device_map(model, max_memory=max_memory, no_split_module_classes=["Block"])
    blocks = {}
    for name, device in plan.items():
        if name in ("", "blocks"):
            blocks |= {f"blocks.{i}": device for i in range(model.cfg.n_layers)}
        elif name.startswith("blocks.") or name == "weights":
            blocks[name] = device
    return blocks


def _device_str(device) -> str:
    return f"cuda:{device}" if isinstance(device, int) else str(device)


def checked_map(model, device_map: dict) -> dict[str, str]:
    n = model.cfg.n_layers
    blocks = {f"blocks.{i}" for i in range(n)}
    unknown = set(device_map) - blocks - {"weights"}
    missing = blocks - set(device_map)
    if unknown or missing:
        raise ValueError(f"a device map names each block 'blocks.0'..'blocks.{n - 1}' (and optionally 'weights'); "
                         f"unknown keys {sorted(unknown)}, missing {sorted(missing, key=lambda k: int(k[7:]))}")
    return {k: _device_str(v) for k, v in device_map.items()}


def dispatch(model, device_map: dict | str | None = None, n_devices: int | None = None,
             max_memory: dict | None = None, offload_folder: str | None = None):
    """Split the blocks over devices (see the module docstring); returns the model.

    device_map: a dict, or "auto" for accelerate's plan under max_memory (e.g.
    {0: "20GiB", 1: "20GiB", "cpu": "60GiB"}; what does not fit goes to "disk", which needs
    offload_folder). n_devices: equal runs of blocks over cuda:0..n-1."""
    from accelerate import dispatch_model

    if model.weights.parts:
        raise ValueError("this model is already dispatched")
    if n_devices is not None:
        if device_map is not None:
            raise ValueError("pass device_map or n_devices, not both")
        device_map = even_map(model.cfg.n_layers, cuda_devices(n_devices))
    parts = model.weights.split_layers()
    for block, part in zip(model.blocks, parts, strict=True):
        block.add_module("layer_weights", part)
        for component in block.modules():
            if hasattr(component, "adopt"):
                component.adopt(part, 0)
    device_map = auto_map(model, max_memory) if device_map == "auto" else checked_map(model, device_map)
    executing = [d for k, d in device_map.items() if k != "weights" and d not in OFFLOAD]
    main = executing[0] if executing else "cpu"
    if device_map.get("weights", main) in OFFLOAD:
        device_map["weights"] = main  # the embedding runs outside any block: keep it in memory
    device_map.setdefault("weights", main)
    if "disk" in device_map.values() and offload_folder is None:
        raise ValueError("the device map offloads blocks to disk: pass offload_folder=<a directory>")
    for i in range(len(model.rotary_configs)):
        setattr(model, f"inv_freq_{i}", getattr(model, f"inv_freq_{i}").to(main))
    # A block reads its weights as tensors, not by calling submodules: preload them all at its forward.
    dispatch_model(model, device_map=device_map, main_device=main, offload_dir=offload_folder,
                   preload_module_classes=["Block"])
    for block, part in zip(model.blocks, parts, strict=True):
        hook = getattr(block, "_hf_hook", None)
        if getattr(hook, "offload", False):  # let model.W_Q & co. read an offloaded block's weights
            part.__dict__["offload_store"] = (hook.weights_map, "layer_weights.")
    model.device_map = device_map
    return model
