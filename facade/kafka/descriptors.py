"""The descriptor set consumers decode the service's Kafka values with (`ledger kafka schema`)."""

from __future__ import annotations

from importlib import resources

__all__ = ["DESCRIPTOR_SET_FILE", "descriptor_set"]

DESCRIPTOR_SET_FILE = "ledger_v1.binpb"


def descriptor_set() -> bytes:
    """The FileDescriptorSet of every ledger.v1 message (with imports), as shipped in the package."""
    return resources.files("facade.api.gen").joinpath(DESCRIPTOR_SET_FILE).read_bytes()
