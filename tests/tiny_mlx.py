"""Tiny random-weight model directories that mlx-audio's own loader (``mlx_audio.stt.load``) reads.

Each ``make_*`` function writes, with no network, a directory in the layout of the published
checkpoints (config.json with ``model_type``, tokenizer / feature-extractor files, one
``model.safetensors``) but with a few thousand random weights, so tests exercise the real
loader, preprocessing and decoding code in about a second.  The text they produce is noise.

* :func:`make_qwen3_asr`: Qwen3-ASR (``model_type: qwen3_asr``), with a byte-level BPE
  ``tokenizer.json`` trained here by the ``tokenizers`` library and the chat / audio tokens
  the model's prompt uses.  In the tied embedding only the rows of tokens that decode to
  exactly one printable character are non-zero; the rest (the added tokens, lone partial
  UTF-8 bytes, bare whitespace and every multi-character token) are zero, so greedy decoding
  never picks one: the model never emits its end token, always runs to the generation limit
  it is given, and writes printable nonsense one character per token, so the length of
  its text is the number of tokens it generated.
* :func:`make_mlx_sensevoice`: mlx-audio's SenseVoice (``model_type: sensevoice``), with a
  ``tokens.json`` vocabulary and Kaldi-style ``am.mvn`` statistics, as mlx-community ships.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

SEED = 1234

# Token strings Qwen3-ASR's prompt uses (mlx_audio.stt.models.qwen3_asr: _build_prompt).
QWEN_SPECIAL = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|audio_start|>", "<|audio_end|>",
                "<|audio_pad|>")
QWEN_PLAIN_ADDED = ("<asr_text>",)  # an added token that is not special (decode keeps it)
QWEN_LANGUAGES = ("Chinese", "English", "Cantonese", "Arabic", "German", "French", "Spanish",
                  "Portuguese", "Indonesian", "Italian", "Korean", "Russian", "Thai", "Vietnamese",
                  "Japanese", "Turkish", "Hindi", "Malay", "Dutch", "Swedish", "Danish", "Finnish",
                  "Polish", "Czech", "Filipino", "Persian", "Greek", "Romanian", "Hungarian",
                  "Macedonian")
# Qwen2's pre-tokenizer split pattern (as in Qwen's tokenizer.json).
QWEN_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
              r"|\s*[\r\n]+|\s+(?!\S)|\s+")

_CORPUS = (
    "And so, my fellow Americans: ask not what your country can do for you; ask what you can do "
    "for your country. The quick brown fox jumps over the lazy dog. language English<asr_text>"
    "Speech recognition turns spoken words into written text, one token at a time. "
    "我们今天去公园散步，天气很好。你好，世界！ Bonjour tout le monde. Hallo Welt. Hola, mundo. "
    "0123456789 numbers, punctuation; quotes \"like this\" and 'that' - dashes and (brackets)."
)


def make_qwen3_asr(path: Path) -> Path:
    """Write a tiny random Qwen3-ASR model directory at ``path`` and return ``path``."""
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_audio.stt.models.qwen3_asr import Qwen3ASRModel
    from mlx_audio.stt.models.qwen3_asr.config import ModelConfig

    path.mkdir(parents=True, exist_ok=True)
    ids = _write_qwen_tokenizer(path)
    config = _qwen_config(ids)
    _write_json(path / "config.json", config)
    _write_json(path / "preprocessor_config.json", _whisper_features(config["thinker_config"]))

    mx.random.seed(SEED)
    model = Qwen3ASRModel(ModelConfig.from_dict(config))
    weights = dict(tree_flatten(model.parameters()))
    embed = weights["model.embed_tokens.weight"]
    never = [ids[t] for t in QWEN_SPECIAL + QWEN_PLAIN_ADDED] + _not_one_character(path)
    embed[mx.array(never)] = 0.0  # their logits stay 0 while the largest other is > 0: never picked
    weights["model.embed_tokens.weight"] = embed
    mx.save_safetensors(str(path / "model.safetensors"), weights, metadata={"format": "mlx"})
    return path


def make_mlx_sensevoice(path: Path) -> Path:
    """Write a tiny random SenseVoice model directory (mlx-audio's format) and return ``path``."""
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_audio.stt.models.sensevoice import ModelConfig, SenseVoiceSmall

    path.mkdir(parents=True, exist_ok=True)
    tokens = _sensevoice_tokens()
    n_mels, lfr_m = 16, 7
    config = {
        "model_type": "sensevoice",
        "vocab_size": len(tokens),
        "input_size": n_mels * lfr_m,
        "encoder_conf": {"output_size": 32, "attention_heads": 2, "linear_units": 64, "num_blocks": 2,
                         "tp_blocks": 1, "kernel_size": 11, "sanm_shfit": 0, "normalize_before": True},
        "frontend_conf": {"fs": 16000, "window": "hamming", "n_mels": n_mels, "frame_length": 25,
                          "frame_shift": 10, "lfr_m": lfr_m, "lfr_n": 6},
    }
    _write_json(path / "config.json", config)
    _write_json(path / "tokens.json", tokens)
    (path / "am.mvn").write_text(_am_mvn(config["input_size"]), encoding="utf-8")

    mx.random.seed(SEED)
    model = SenseVoiceSmall(ModelConfig.from_dict(dict(config)))
    weights: dict[str, Any] = {}
    for name, value in tree_flatten(model.parameters()):
        if "fsmn_block.weight" in name:
            value = value.transpose(0, 2, 1)  # stored in PyTorch layout; sanitize() converts it
        weights[name.replace("ctc_lo.", "ctc.ctc_lo.")] = value  # FunASR's name; sanitize() maps it
    bias = weights["ctc.ctc_lo.bias"]
    bias[1:3] = -100.0  # <s> and </s>: never emitted, as in the real model
    weights["ctc.ctc_lo.bias"] = bias
    mx.save_safetensors(str(path / "model.safetensors"), weights, metadata={"format": "mlx"})
    return path


def _write_qwen_tokenizer(path: Path) -> dict[str, int]:
    """Train a byte-level BPE like Qwen2's, save tokenizer files; return the added tokens' ids."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=384, min_frequency=1, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([_CORPUS] * 4, trainer=trainer)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in QWEN_SPECIAL])
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in QWEN_PLAIN_ADDED])
    tok.save(str(path / "tokenizer.json"))

    ids = {t: tok.token_to_id(t) for t in QWEN_SPECIAL + QWEN_PLAIN_ADDED}
    added = {str(ids[t]): {"content": t, "lstrip": False, "normalized": False, "rstrip": False,
                           "single_word": False, "special": t in QWEN_SPECIAL}
             for t in QWEN_SPECIAL + QWEN_PLAIN_ADDED}
    _write_json(path / "tokenizer_config.json", {
        "tokenizer_class": "Qwen2Tokenizer", "added_tokens_decoder": added,
        "bos_token": None, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "unk_token": None,
        "errors": "replace", "add_prefix_space": False, "clean_up_tokenization_spaces": False,
        "split_special_tokens": False, "model_max_length": 65536,
    })
    _write_json(path / "special_tokens_map.json", {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"})
    _write_json(path / "generation_config.json", {
        "eos_token_id": [ids["<|im_end|>"], ids["<|endoftext|>"]], "pad_token_id": ids["<|endoftext|>"],
        "do_sample": False})
    ids["vocab_size"] = tok.get_vocab_size(with_added_tokens=True)
    return ids


def _not_one_character(path: Path) -> list[int]:
    """Ids of ``path``'s BPE tokens that do not decode, alone, to one printable character.

    Lone partial UTF-8 bytes (which decode to U+FFFD), whitespace and multi-character tokens:
    the tiny model never emits them, so its text is printable and one character per token.
    """
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(path / "tokenizer.json"))
    size = tok.get_vocab_size(with_added_tokens=False)
    return [i for i in range(size) if not _one_printable(tok.decode([i]))]


def _one_printable(text: str) -> bool:
    return len(text) == 1 and text.isprintable() and not text.isspace() and text != "\ufffd"


def _qwen_config(ids: dict[str, int]) -> dict[str, Any]:
    """A config.json in Qwen's published layout (``thinker_config``), scaled down."""
    hidden = 32
    audio = {"num_mel_bins": 128, "encoder_layers": 1, "encoder_attention_heads": 2, "encoder_ffn_dim": 64,
             "d_model": 32, "max_source_positions": 1500, "n_window": 50, "n_window_infer": 800,
             "conv_chunksize": 500, "downsample_hidden_size": 8, "output_dim": hidden,
             "activation_function": "gelu", "scale_embedding": False}
    text = {"model_type": "qwen3", "vocab_size": ids["vocab_size"], "hidden_size": hidden,
            "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
            "num_key_value_heads": 1, "head_dim": 16, "hidden_act": "silu",
            "max_position_embeddings": 65536, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
            "tie_word_embeddings": True, "attention_bias": False}
    return {
        "architectures": ["Qwen3ASRForConditionalGeneration"],
        "model_type": "qwen3_asr",
        "support_languages": list(QWEN_LANGUAGES),
        "thinker_config": {
            "model_type": "qwen3_asr_thinker", "audio_config": audio, "text_config": text,
            "audio_token_id": ids["<|audio_pad|>"], "audio_start_token_id": ids["<|audio_start|>"],
            "audio_end_token_id": ids["<|audio_end|>"],
        },
    }


def _whisper_features(thinker: dict[str, Any]) -> dict[str, Any]:
    """preprocessor_config.json for transformers' WhisperFeatureExtractor."""
    return {"feature_extractor_type": "WhisperFeatureExtractor",
            "feature_size": thinker["audio_config"]["num_mel_bins"], "sampling_rate": 16000,
            "hop_length": 160, "n_fft": 400, "chunk_length": 30, "n_samples": 480000,
            "nb_max_frames": 3000, "padding_side": "right", "padding_value": 0.0,
            "return_attention_mask": True, "dither": 0.0}


def _sensevoice_tokens() -> list[str]:
    """A small SentencePiece-style vocabulary: blank/<unk>, <s>, </s>, then word pieces."""
    words = ("the a and of to in is it you that he was for on are with as I his they be at one "
             "have this from or had by hot word but what some we can out other were all there "
             "when up use your how said an each she which do their time if will way about many "
             "then them write would like so these her long make thing see him two has look").split()
    pieces = [f"▁{w}" for w in words] + list("abcdefghijklmnopqrstuvwxyz") + ["，", "。", "你", "好"]
    return ["<unk>", "<s>", "</s>", *pieces]


def _am_mvn(dim: int) -> str:
    """Kaldi nnet text with AddShift (negative means) and Rescale (inverse std) of ``dim`` values."""
    shift = " ".join(["-8.0"] * dim)
    scale = " ".join(["0.25"] * dim)
    return (f"<Nnet>\n<Splice> {dim} {dim}\n[ 0 ]\n<AddShift> {dim} {dim}\n"
            f"<LearnRateCoef> 0 [ {shift} ]\n<Rescale> {dim} {dim}\n"
            f"<LearnRateCoef> 0 [ {scale} ]\n</Nnet>\n")


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False), encoding="utf-8")
