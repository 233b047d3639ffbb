"""The normalizer (`kycstream process`): the engine over raw partitions, how a batch becomes
durable (commit strategies), partition ownership, restore and the at-least-once anchor."""
