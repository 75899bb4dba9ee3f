"""The OpenAPI description of RAPL's API, served at /openapi.json."""

from __future__ import annotations

from typing import Any

from ..transcript.formats import FORMATS

_ERROR = {
    "type": "object", "required": ["error"],
    "properties": {"error": {"type": "object", "required": ["message", "type", "param", "code"],
                             "properties": {"message": {"type": "string"}, "type": {"type": "string"},
                                            "param": {"type": ["string", "null"]},
                                            "code": {"type": ["string", "null"]}}}},
}


def _error_responses(*codes: int) -> dict[str, Any]:
    ref = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    return {str(code): {"description": "Error in OpenAI's envelope", **ref} for code in codes}


def _audio_form(transcribe: bool) -> dict[str, Any]:
    properties: dict[str, Any] = {
        "file": {"type": "string", "format": "binary", "description": "Audio or video file, any common format."},
        "model": {"type": "string", "description": "Accepted and ignored: the loaded model serves."},
        "prompt": {"type": "string"},
        "response_format": {"type": "string", "enum": list(FORMATS), "default": "json"},
        "temperature": {"type": "number", "minimum": 0, "maximum": 1},
    }
    if transcribe:
        properties.update({
            "language": {"type": "string", "description": "ISO-639-1 code, or omit to detect."},
            "timestamp_granularities[]": {"type": "array", "items": {"type": "string", "enum": ["segment", "word"]}},
            "stream": {"type": "boolean", "default": False, "description": "Ignored for model=whisper-1."},
            "include[]": {"type": "array", "items": {"type": "string", "enum": ["logprobs"]}},
            "chunking_strategy": {"type": "string", "description": '"auto" or a server_vad object as JSON.'},
            "languages[]": {"type": "array", "items": {"type": "string"}},
            "keywords[]": {"type": "array", "items": {"type": "string", "maxLength": 100}, "maxItems": 100},
            "known_speaker_names[]": {"type": "array", "items": {"type": "string"}, "maxItems": 4},
            "known_speaker_references[]": {"type": "array", "items": {"type": "string"}, "maxItems": 4,
                                           "description": "data: URLs of 2-10 s clips, one per name."},
            "num_speakers": {"type": "integer", "minimum": 1, "maximum": 32,
                             "description": "RAPL extension (diarized_json): the number of voices."},
        })
    return {"required": True, "content": {"multipart/form-data": {
        "schema": {"type": "object", "required": ["file"], "properties": properties}}}}


def _transcription_op(summary: str, transcribe: bool) -> dict[str, Any]:
    return {"post": {
        "summary": summary,
        "requestBody": _audio_form(transcribe),
        "responses": {
            "200": {"description": "The transcript in the requested format", "content": {
                "application/json": {"schema": {"type": "object", "required": ["text"],
                                                "properties": {"text": {"type": "string"}}}},
                "text/plain": {"schema": {"type": "string"}},
                "text/event-stream": {"schema": {"type": "string"}}}},
            **_error_responses(400, 401, 413, 429, 503, 504),
        },
    }}


def spec(version: str) -> dict[str, Any]:
    """The OpenAPI 3.1 document of RAPL ``version``."""
    model = {"type": "object", "required": ["id", "object"],
             "properties": {"id": {"type": "string"}, "object": {"const": "model"},
                            "owned_by": {"type": "string"}, "created": {"type": "integer"}}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "RAPL", "version": version,
                 "description": "Local speech-to-text with OpenAI's audio API."},
        "paths": {
            "/v1/audio/transcriptions": _transcription_op("Transcribe audio", True),
            "/v1/audio/translations": _transcription_op("Translate audio into English text", False),
            "/v1/models": {"get": {"summary": "List the models, their aliases and the OpenAI names", "responses": {
                "200": {"description": "Models", "content": {"application/json": {"schema": {
                    "type": "object", "properties": {"object": {"const": "list"},
                                                     "data": {"type": "array", "items": model}}}}}},
                **_error_responses(401)}}},
            "/v1/models/{model_id}": {
                "parameters": [{"name": "model_id", "in": "path", "required": True, "schema": {"type": "string"}}],
                "get": {"summary": "One model", "responses": {
                    "200": {"description": "The model", "content": {"application/json": {"schema": model}}},
                    **_error_responses(401, 404)}},
                "delete": {"summary": "Unload a model (the next request loads it again)", "responses": {
                    "200": {"description": "Unloading", "content": {"application/json": {"schema": model}}},
                    **_error_responses(401, 404)}}},
            "/v1/models/{model_id}/load": {
                "parameters": [{"name": "model_id", "in": "path", "required": True, "schema": {"type": "string"}}],
                "post": {"summary": "Load a model now (the least recently used one may be unloaded)", "responses": {
                    "200": {"description": "Loaded", "content": {"application/json": {"schema": model}}},
                    **_error_responses(401, 404, 503)}}},
            "/v1/models/{model_id}/download": {
                "parameters": [{"name": "model_id", "in": "path", "required": True, "schema": {"type": "string"}}],
                "post": {"summary": "Download a model into its hub's cache ahead of first use (progress: GET "
                                    "/v1/models/{model_id}, its download field)", "responses": {
                    "200": {"description": "In the cache", "content": {"application/json": {"schema": model}}},
                    "202": {"description": "Downloading", "content": {"application/json": {"schema": model}}},
                    **_error_responses(401, 404, 503)}}},
            "/v1/realtime": {"get": {
                "summary": "Live transcription: OpenAI's Realtime protocol over a WebSocket (Upgrade: websocket)",
                "parameters": [{"name": "intent", "in": "query", "required": False,
                                "schema": {"type": "string", "enum": ["transcription"]}},
                               {"name": "model", "in": "query", "required": False, "schema": {"type": "string"}}],
                "responses": {"101": {"description": "Switching to the WebSocket protocol"},
                              "426": {"description": "Not a WebSocket handshake", "content": {
                                  "application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
                              **_error_responses(400, 401, 403, 503)}}},
            "/health": {"get": {"summary": "Model status and queue depth", "responses": {
                "200": {"description": "Ready", "content": {"application/json": {"schema": {"type": "object"}}}},
                "503": {"description": "Loading or failed", "content": {"application/json": {
                    "schema": {"type": "object"}}}}}}},
        },
        "components": {"schemas": {"Error": _ERROR},
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
    }
