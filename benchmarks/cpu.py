"""The CPU a benchmark ran on, named well enough to tell machines of one vendor apart."""

from __future__ import annotations

from pathlib import Path


def cpu_name() -> str:
    """'AMD EPYC (family 25, model 17)': /proc/cpuinfo's model name, which a virtual machine
    may shorten to the vendor's brand, with the family and model numbers that identify the core."""
    fields: dict[str, str] = {}
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    name = fields.get("model name", "unknown CPU")
    if "cpu family" in fields and "model" in fields:
        name += f" (family {fields['cpu family']}, model {fields['model']})"
    return name
