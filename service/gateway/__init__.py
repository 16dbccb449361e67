"""The OpenAI-compatible gateway in front of the vLLM replicas (model name ``lethe``)."""
