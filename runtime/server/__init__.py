"""The HTTP server: OpenAI-compatible and SGLang-native APIs over the engine."""
