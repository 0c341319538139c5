"""The HTTP dialects local apps speak — OpenAI's, Ollama's and Anthropic's — as a front of the application
layer (warmd.app), like warmd.v1 and V2: one module per dialect, what they share in common.py, the ASGI
application and its listener in server.py. Imported only when `http:` is set (the `http` extra: FastAPI,
uvicorn)."""
