"""One long-lived gRPC channel per service, shared by every request (core.channels)."""

from __future__ import annotations

from core.channels import CHANNEL_OPTIONS, channel_target, open_channel

__all__ = ["CHANNEL_OPTIONS", "channel_target", "open_channel"]
