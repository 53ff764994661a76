"""The wire layer: the versioned capacity advertisement carried in JoinGroup member metadata,
the consumer protocol envelope around it, and the assignment info the leader sends back.

Pure functions over bytes; nothing here imports a Kafka client.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from capgroup._lazy import lazy_exports

if TYPE_CHECKING:
    from capgroup.protocol._wire import MetadataDecodeError
    from capgroup.protocol.capacity import (
        MAX_ENCODED_BYTES,
        AdvertisementEncodeError,
        AdvertisementTooLargeError,
        canonical_advertisement,
        decode_advertisement,
        encode_advertisement,
    )
    from capgroup.protocol.consumer import (
        AssignmentInfo,
        MemberSubscription,
        SubscriptionCache,
        decode_assignment_info,
        decode_member_metadata,
        encode_assignment_info,
        encode_member_assignment,
        encode_member_metadata,
    )

__all__ = [
    "MAX_ENCODED_BYTES",
    "AdvertisementEncodeError",
    "AdvertisementTooLargeError",
    "AssignmentInfo",
    "MemberSubscription",
    "MetadataDecodeError",
    "SubscriptionCache",
    "canonical_advertisement",
    "decode_advertisement",
    "decode_assignment_info",
    "decode_member_metadata",
    "encode_advertisement",
    "encode_assignment_info",
    "encode_member_assignment",
    "encode_member_metadata",
]

_EXPORTS = {
    "MetadataDecodeError": "capgroup.protocol._wire",
    "MAX_ENCODED_BYTES": "capgroup.protocol.capacity",
    "AdvertisementEncodeError": "capgroup.protocol.capacity",
    "AdvertisementTooLargeError": "capgroup.protocol.capacity",
    "canonical_advertisement": "capgroup.protocol.capacity",
    "decode_advertisement": "capgroup.protocol.capacity",
    "encode_advertisement": "capgroup.protocol.capacity",
    "AssignmentInfo": "capgroup.protocol.consumer",
    "MemberSubscription": "capgroup.protocol.consumer",
    "SubscriptionCache": "capgroup.protocol.consumer",
    "decode_assignment_info": "capgroup.protocol.consumer",
    "decode_member_metadata": "capgroup.protocol.consumer",
    "encode_assignment_info": "capgroup.protocol.consumer",
    "encode_member_assignment": "capgroup.protocol.consumer",
    "encode_member_metadata": "capgroup.protocol.consumer",
}

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
