"""deepseek-exporter: Prometheus exporter and metering proxy for DeepSeek API accounts."""

__version__ = "0.1.0"
