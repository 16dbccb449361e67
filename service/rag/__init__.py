"""The closed-model path: a retrieval proxy in front of an OpenAI-compatible upstream."""
