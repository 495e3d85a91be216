"""Streaming intent processor: Faust agents over a Kafka clickstream, scores in Redis."""

__version__ = "0.1.0"
