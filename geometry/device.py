"""The ``--device`` option of every command line: ``cpu``, ``cuda`` or ``cuda:N``."""

from __future__ import annotations

import re

from geometry.errors import UserError

DEVICE_HELP = "cpu, cuda or cuda:N (the N-th GPU)."
_DEVICE = re.compile(r"^(cpu|cuda(:\d+)?)$")


def check_device(device: str, flag: str = "--device") -> str:
    """``device`` if it is spelled ``cpu``, ``cuda`` or ``cuda:N`` and exists here.

    Raises:
        UserError: another spelling, no CUDA, or no GPU N.
    """
    if not _DEVICE.match(device):
        raise UserError(f"{flag} {device} is not a device; use cpu, cuda or cuda:N.")
    if device == "cpu":
        return device
    import torch

    if not torch.cuda.is_available():
        raise UserError(f"{flag} {device} needs a CUDA GPU and PyTorch with CUDA; use "
                        f"{flag} cpu.")
    index = int(device.split(":")[1]) if ":" in device else 0
    if index >= torch.cuda.device_count():
        raise UserError(f"{flag} {device}: this machine has {torch.cuda.device_count()} "
                        f"GPU(s); use cuda:0 to cuda:{torch.cuda.device_count() - 1}.")
    return device


def module_device(module: object):
    """The ``torch.device`` of ``module``'s first parameter; the CPU for a module without
    parameters, or for a stand-in that is not a ``torch.nn.Module``."""
    import torch

    param = next(module.parameters(), None) if isinstance(module, torch.nn.Module) else None
    return param.device if param is not None else torch.device("cpu")
