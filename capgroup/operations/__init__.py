"""Operations: local Kafka harness, metrics and health endpoints."""
