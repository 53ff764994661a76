"""capgroup: Kafka consumer groups that know their own limits."""

from capgroup.assignor.model import (
    CapacityAdvertisement,
    MemberSpec,
    OwnedPartition,
    PartitionSpec,
    PendingMove,
    Plan,
)
from capgroup.log import bind_member, configure_logging, get_logger
from capgroup.settings import CapgroupSettings, SettingsError, load_settings
from capgroup.types import TopicPartition

__version__ = "0.1.0"

__all__ = [
    "CapacityAdvertisement",
    "CapgroupSettings",
    "MemberSpec",
    "OwnedPartition",
    "PartitionSpec",
    "PendingMove",
    "Plan",
    "SettingsError",
    "TopicPartition",
    "__version__",
    "bind_member",
    "configure_logging",
    "get_logger",
    "load_settings",
]
