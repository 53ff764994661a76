"""Wire layer: the versioned capacity advertisement carried in JoinGroup member metadata."""

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
    "canonical_advertisement",
    "decode_advertisement",
    "decode_assignment_info",
    "decode_member_metadata",
    "encode_advertisement",
    "encode_assignment_info",
    "encode_member_assignment",
    "encode_member_metadata",
]
