"""The transcription core: a request's parameters in, a Transcription out, one model thread between.

The service (``service``: one request from decoded audio to transcript), the model worker
(``worker``: the single thread that alone touches a model, its queue and idle unloading), the
pipeline (``pipeline``: chunks, languages, retries, segments snapped to speech), the models of one
server (``models``: MODELS_FILE and the pool that picks one per request), what a request asks for
(``params``), vocabulary, speakers and their voice encoders, and the heap the model thread keeps.
Knows nothing of HTTP. May import rapl.backends, rapl.audio, rapl.transcript and the foundation.
"""
