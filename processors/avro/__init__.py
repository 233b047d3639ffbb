"""Avro for kycstream's records, pure (no Kafka): the codec, the compiler behind it, and the
conversion between the model and the dicts the schemas describe."""
