"""One root for every error kycstream raises on purpose; each says what to do about it."""


class KycstreamError(Exception):
    """Root of kycstream's own errors."""


class ConfigError(KycstreamError):
    """The configuration is invalid; the message names the setting and how to fix it."""


class SerdeError(KycstreamError):
    """A record could not be encoded or decoded."""


class BrokerError(KycstreamError):
    """Kafka could not be reached, or refused an operation."""


class RecordTooLarge(KycstreamError):
    """A record is over what Kafka takes (the producer's message.max.bytes): it can never be written."""
