"""candle: Hugging Face models on a Ray cluster behind one OpenAI-compatible API."""

__version__ = "0.1.0"
