"""What a transcript is and how it is written: the neutral Transcription (segments, words, options),
the output formats (json, text, srt, vtt, verbose_json, diarized_json), text rules (joining,
scripts), SenseVoice's rich text, and language codes. The backends produce these types, so this is
the bottom layer above the foundation: it imports only rapl.errors, rapl.settings and itself.
"""
