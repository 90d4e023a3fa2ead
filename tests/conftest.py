"""Project-wide pytest plugins: the real Kafka broker fixtures."""

pytest_plugins = ["tests.kafka_fixtures"]
