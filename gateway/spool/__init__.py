"""The spool: a spooling source's deliveries journaled on local disk while Kafka is away
(journal.py), forwarded to Kafka in order as soon as it answers (forwarder.py)."""
