"""capgroup: Kafka consumer groups that know their own limits."""

from capgroup.assignor.adapter import CapacityAwareAssignor, GroupPlan, plan_group
from capgroup.assignor.balance import assign, headroom
from capgroup.assignor.model import (
    CapacityAdvertisement,
    MemberSpec,
    OwnedPartition,
    PartitionSpec,
    PendingMove,
    Plan,
)
from capgroup.errors import (
    CapgroupError,
    CommitFailedError,
    CommitFencedError,
    FencedInstanceError,
    GroupFatalError,
)
from capgroup.log import bind_member, configure_logging, get_logger
from capgroup.membership.engine import MembershipEngine
from capgroup.membership.model import (
    AssignmentChange,
    AssignmentListener,
    Generation,
    MembershipSnapshot,
    MemberState,
)
from capgroup.operations.http import (
    HealthCheck,
    OperationsServer,
    OperationsServerError,
    liveness,
    readiness,
    serve_operations,
)
from capgroup.operations.metrics import ConsumerCollector, metrics_registry
from capgroup.protocol import (
    AdvertisementEncodeError,
    AdvertisementTooLargeError,
    AssignmentInfo,
    MetadataDecodeError,
    decode_advertisement,
    decode_assignment_info,
    encode_advertisement,
)
from capgroup.runtime.batch import Batch, FlushReason, Record
from capgroup.runtime.consumer import BatchingConsumer, ShutdownForcedError
from capgroup.runtime.policy import RevokeAction
from capgroup.runtime.retry import FailurePolicy
from capgroup.runtime.stats import ConsumerStats, Counters
from capgroup.settings import CapgroupSettings, SettingsError, load_settings
from capgroup.types import TopicPartition

__version__ = "0.1.0"

__all__ = [
    "AdvertisementEncodeError",
    "AdvertisementTooLargeError",
    "AssignmentChange",
    "AssignmentInfo",
    "AssignmentListener",
    "Batch",
    "BatchingConsumer",
    "CapacityAdvertisement",
    "CapacityAwareAssignor",
    "CapgroupError",
    "CapgroupSettings",
    "CommitFailedError",
    "CommitFencedError",
    "ConsumerCollector",
    "ConsumerStats",
    "Counters",
    "FailurePolicy",
    "FencedInstanceError",
    "FlushReason",
    "Generation",
    "GroupFatalError",
    "GroupPlan",
    "HealthCheck",
    "MemberSpec",
    "MemberState",
    "MembershipEngine",
    "MembershipSnapshot",
    "MetadataDecodeError",
    "OperationsServer",
    "OperationsServerError",
    "OwnedPartition",
    "PartitionSpec",
    "PendingMove",
    "Plan",
    "Record",
    "RevokeAction",
    "SettingsError",
    "ShutdownForcedError",
    "TopicPartition",
    "__version__",
    "assign",
    "bind_member",
    "configure_logging",
    "decode_advertisement",
    "decode_assignment_info",
    "encode_advertisement",
    "get_logger",
    "headroom",
    "liveness",
    "load_settings",
    "metrics_registry",
    "plan_group",
    "readiness",
    "serve_operations",
]
