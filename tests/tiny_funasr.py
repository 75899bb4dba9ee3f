"""Tiny FunASR model directories for tests, in the on-disk layout of the real hub models.

Each builder writes what ModelScope serves for the real model (``config.yaml`` with the
real keys but tiny sizes, ``configuration.json``, ``model.pt``, the tokenizer file and
``am.mvn``), so ``funasr.AutoModel(model=str(path), disable_update=True, device="cpu")``
loads it with FunASR's own code and ``generate()`` runs FunASR's real inference path.

The weights are chosen by hand, not trained, so the output is known in advance:

* ``make_sensevoice``: the model's four query frames (language, event, emotion, text
  norm) each map to one tag, so the output always starts with the requested language
  (``auto`` answers ``en``), ``<|NEUTRAL|><|Speech|>`` (or the emotion and event
  given) and ``<|withitn|>`` or ``<|woitn|>`` as asked.  The audio frames then say "hello world hello world ...",
  switching word about every 0.6 s.
* ``make_paraformer``: a Paraformer whose CIF predictor fires at a fixed rate (about one
  token every 0.25 s) and whose decoder only ever picks "hello" or "world".

Both models ignore the sound itself (their CMVN scale is zero), which makes them
deterministic: the text depends only on the audio's length and the request.
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

SAMPLE_RATE = 16000
N_MELS = 80
LFR_M = 7
INPUT_SIZE = N_MELS * LFR_M  # 560: what the encoders see per (low frame rate) frame

SENSEVOICE_TAGS = (
    "<|zh|>", "<|en|>", "<|yue|>", "<|ja|>", "<|ko|>", "<|nospeech|>",
    "<|HAPPY|>", "<|SAD|>", "<|ANGRY|>", "<|NEUTRAL|>", "<|FEARFUL|>", "<|DISGUSTED|>",
    "<|SURPRISED|>", "<|EMO_UNKNOWN|>",
    "<|Speech|>", "<|BGM|>", "<|Applause|>", "<|Laughter|>", "<|Cry|>", "<|Sneeze|>",
    "<|Breath|>", "<|Cough|>", "<|Sing|>", "<|Speech_Noise|>", "<|Event_UNK|>", "<|GBG|>",
    "<|withitn|>", "<|woitn|>",
)
SENSEVOICE_VOCAB_SIZE = 64
SENSEVOICE_BPE = "chn_jpn_yue_eng_ko_spectok.bpe.model"  # the file name the real model uses
# SenseVoiceSmall's query embedding rows (model.lid_dict, textnorm_dict; 1 and 2 are the
# event and emotion queries) -> the tag the tiny model answers for each.
SENSEVOICE_QUERY_TAGS = {
    0: "<|en|>", 3: "<|zh|>", 4: "<|en|>", 7: "<|yue|>", 11: "<|ja|>", 12: "<|ko|>",
    13: "<|nospeech|>", 1: "<|NEUTRAL|>", 2: "<|Speech|>", 14: "<|withitn|>", 15: "<|woitn|>",
}
WORDS = ("hello", "world")
_TEXT = [  # both "hello" and "▁hello" (and the same for "world") must become single pieces
    "we say hello world", "hello there world", "world says hello", "a small world",
    "say hello again and again", "world of words", "hello to the whole world",
]

PARAFORMER_TOKENS = ("<blank>", "<s>", "</s>", "hello", "world", "你", "好", "<unk>")

_CONFIGURATION_JSON = {
    "framework": "pytorch",
    "task": "auto-speech-recognition",
    "model": {"type": "funasr"},
    "pipeline": {"type": "funasr-pipeline"},
    "model_name_in_hub": {"ms": "", "hf": ""},
}

_FRONTEND_CONF = """\
frontend: WavFrontend
frontend_conf:
    fs: 16000
    window: hamming
    n_mels: 80
    frame_length: 25
    frame_shift: 10
    lfr_m: 7
    lfr_n: 6
"""

_SPECAUG_CONF = """\
specaug: SpecAugLFR
specaug_conf:
    apply_time_warp: false
    time_warp_window: 5
    time_warp_mode: bicubic
    apply_freq_mask: true
    freq_mask_width_range:
    - 0
    - 30
    lfr_rate: 6
    num_freq_mask: 1
    apply_time_mask: true
    time_mask_width_range:
    - 0
    - 12
    num_time_mask: 1
"""

SENSEVOICE_CONFIG = f"""\
encoder: SenseVoiceEncoderSmall
encoder_conf:
    output_size: 32
    attention_heads: 4
    linear_units: 32
    num_blocks: 2
    tp_blocks: 1
    dropout_rate: 0.1
    positional_dropout_rate: 0.1
    attention_dropout_rate: 0.1
    input_layer: pe
    pos_enc_class: SinusoidalPositionEncoder
    normalize_before: true
    kernel_size: 11
    sanm_shfit: 0
    selfattention_layer_type: sanm

model: SenseVoiceSmall
model_conf:
    length_normalized_loss: true
    sos: 1
    eos: 2
    ignore_id: -1

tokenizer: SentencepiecesTokenizer
tokenizer_conf:
  bpemodel: null
  unk_symbol: <unk>
  split_with_space: true

{_FRONTEND_CONF}    cmvn_file: null

dataset: SenseVoiceCTCDataset
dataset_conf:
  index_ds: IndexDSJsonl
  batch_sampler: EspnetStyleBatchSampler
  batch_type: token
  batch_size: 14000
  max_token_length: 2000
  min_token_length: 60
  max_source_length: 2000
  min_source_length: 60
  max_target_length: 200
  min_target_length: 0
  shuffle: true
  num_workers: 4
  sos: ${{model_conf.sos}}
  eos: ${{model_conf.eos}}
  IndexDSJsonl: IndexDSJsonl
  retry: 20

train_conf:
  accum_grad: 1
  grad_clip: 5
  max_epoch: 20
  keep_nbest_models: 10
  log_interval: 100

optim: adamw
optim_conf:
  lr: 0.00002
scheduler: warmuplr
scheduler_conf:
  warmup_steps: 25000

{_SPECAUG_CONF}"""

PARAFORMER_CONFIG = f"""\
model: Paraformer
model_conf:
    ctc_weight: 0.0
    lsm_weight: 0.1
    length_normalized_loss: true
    predictor_weight: 1.0
    predictor_bias: 1
    sampling_ratio: 0.75

encoder: SANMEncoder
encoder_conf:
    output_size: 16
    attention_heads: 2
    linear_units: 16
    num_blocks: 2
    dropout_rate: 0.1
    positional_dropout_rate: 0.1
    attention_dropout_rate: 0.1
    input_layer: pe
    pos_enc_class: SinusoidalPositionEncoder
    normalize_before: true
    kernel_size: 11
    sanm_shfit: 0
    selfattention_layer_type: sanm

decoder: ParaformerSANMDecoder
decoder_conf:
    attention_heads: 2
    linear_units: 16
    num_blocks: 2
    dropout_rate: 0.1
    positional_dropout_rate: 0.1
    self_attention_dropout_rate: 0.1
    src_attention_dropout_rate: 0.1
    att_layer_num: 2
    kernel_size: 11
    sanm_shfit: 0

predictor: CifPredictorV2
predictor_conf:
    idim: 16
    threshold: 1.0
    l_order: 1
    r_order: 1
    tail_threshold: 0.45

{_FRONTEND_CONF}
{_SPECAUG_CONF}
train_conf:
  accum_grad: 1
  grad_clip: 5
  max_epoch: 150
  keep_nbest_models: 10
  log_interval: 50

optim: adam
optim_conf:
   lr: 0.0005
scheduler: warmuplr
scheduler_conf:
   warmup_steps: 30000

dataset: AudioDataset
dataset_conf:
    index_ds: IndexDSJsonl
    batch_sampler: EspnetStyleBatchSampler
    batch_type: length
    batch_size: 25000
    max_token_length: 2048
    buffer_size: 500
    shuffle: true
    num_workers: 0

tokenizer: CharTokenizer
tokenizer_conf:
  unk_symbol: <unk>

ctc_conf:
    dropout_rate: 0.0
    ctc_type: builtin
    reduce: true
    ignore_nan_grad: true
normalize: null
"""


def make_sensevoice(path: Path, emotion: str = "NEUTRAL", event: str = "Speech") -> Path:
    """Write a tiny SenseVoiceSmall directory at ``path`` (created) and return ``path``.

    ``emotion`` and ``event`` name the tags (without ``<|...|>``) the model always answers
    for its emotion and event queries: ``HAPPY`` and ``Laughter`` make it say
    ``<|en|><|HAPPY|><|Laughter|><|withitn|> hello world ...``.
    """
    import sentencepiece as spm
    import yaml

    query_tags = {**SENSEVOICE_QUERY_TAGS, 1: f"<|{emotion}|>", 2: f"<|{event}|>"}
    unknown = sorted(set(query_tags.values()) - set(SENSEVOICE_TAGS))
    if unknown:
        raise ValueError(f"SenseVoice has no tag {unknown[0]}")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.yaml").write_text(SENSEVOICE_CONFIG, encoding="utf-8")
    _write_configuration(path, {"tokenizer_conf": {"bpemodel": SENSEVOICE_BPE},
                                "frontend_conf": {"cmvn_file": "am.mvn"}})
    _write_cmvn(path / "am.mvn")

    proto = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_TEXT * 20), model_writer=proto,
        vocab_size=SENSEVOICE_VOCAB_SIZE, model_type="bpe", character_coverage=1.0,
        user_defined_symbols=list(SENSEVOICE_TAGS), add_dummy_prefix=False,
        unk_id=0, bos_id=-1, eos_id=-1, num_threads=1, minloglevel=2)
    (path / SENSEVOICE_BPE).write_bytes(proto.getvalue())
    sp = spm.SentencePieceProcessor(model_proto=proto.getvalue())
    pieces = {p: sp.piece_to_id(p) for p in (*SENSEVOICE_TAGS, *WORDS, *(f"▁{w}" for w in WORDS))}
    missing = [p for p, i in pieces.items() if sp.id_to_piece(i) != p]
    if missing:  # a tag or word split in pieces would break the scripted output
        raise RuntimeError(f"tiny SenseVoice tokenizer lacks {missing}")

    config = yaml.safe_load(SENSEVOICE_CONFIG)
    model = _build("SenseVoiceSmall", config, vocab_size=sp.get_piece_size())
    _script_sensevoice(model, pieces, config["encoder_conf"]["output_size"], query_tags)
    _save(model, path / "model.pt")
    return path


def make_paraformer(path: Path) -> Path:
    """Write a tiny Paraformer directory at ``path`` (created) and return ``path``."""
    import yaml

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.yaml").write_text(PARAFORMER_CONFIG, encoding="utf-8")
    _write_configuration(path, {"tokenizer_conf": {"token_list": "tokens.json"},
                                "frontend_conf": {"cmvn_file": "am.mvn"}})
    _write_cmvn(path / "am.mvn")
    (path / "tokens.json").write_text(json.dumps(list(PARAFORMER_TOKENS), ensure_ascii=False),
                                      encoding="utf-8")
    config = yaml.safe_load(PARAFORMER_CONFIG)
    model = _build("Paraformer", config, vocab_size=len(PARAFORMER_TOKENS))
    _script_paraformer(model)
    _save(model, path / "model.pt")
    return path


def _write_configuration(path: Path, metas: dict) -> None:
    conf = dict(_CONFIGURATION_JSON)
    conf["file_path_metas"] = {"init_param": "model.pt", "config": "config.yaml", **metas}
    (path / "configuration.json").write_text(json.dumps(conf, indent=2), encoding="utf-8")


def _write_cmvn(path: Path) -> None:
    """Kaldi nnet-text CMVN as FunASR's WavFrontend reads it; scale 0 silences the audio."""
    shift = " ".join(["-8.0"] * INPUT_SIZE)
    scale = " ".join(["0.0"] * INPUT_SIZE)
    path.write_text(
        "<Nnet>\n"
        f"<Splice> {INPUT_SIZE} {INPUT_SIZE}\n[ 0 ]\n"
        f"<AddShift> {INPUT_SIZE} {INPUT_SIZE}\n<LearnRateCoef> 0 [ {shift} ]\n"
        f"<Rescale> {INPUT_SIZE} {INPUT_SIZE}\n<LearnRateCoef> 0 [ {scale} ]\n"
        "</Nnet>\n", encoding="utf-8")


def _build(name: str, config: dict, vocab_size: int):
    """Instantiate FunASR's own model class, as AutoModel.build_model does."""
    import torch
    from funasr.register import tables

    torch.manual_seed(0)
    conf = {**config.get("model_conf", {}), **config, "input_size": INPUT_SIZE,
            "vocab_size": vocab_size}
    model = tables.model_classes.get(name)(**conf)
    return model.eval()


def _save(model, path: Path) -> None:
    import torch

    torch.save({k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}, path)


def _script_sensevoice(model, pieces: dict[str, int], dim: int,
                       query_tags: dict[int, str] = SENSEVOICE_QUERY_TAGS) -> None:
    """Hand-set the weights so each frame's output token is known (see module doc).

    Every encoder layer but the first becomes an identity (its residual branches are
    zero); the first keeps only its per-frame value projection.  Query rows of
    ``model.embed`` are spikes on input dims 0..15, which that projection sends to one
    "code" dim per tag; audio frames (all zero after CMVN) carry only the positional
    encoding, whose sin(pos * pi / 10) dim votes between the "hello" and "world" codes.
    The CTC layer maps each code dim to its token.
    """
    import torch

    state = model.state_dict()
    with torch.no_grad():
        for key, value in state.items():
            value.fill_(1.0 if key.endswith("norm1.weight") or key.endswith("norm2.weight")
                        or key.endswith("_norm.weight") else 0.0)
        tokens = sorted(set(query_tags.values())) + [f"▁{w}" for w in WORDS]
        code = {tok: i for i, tok in enumerate(tokens)}
        for row in query_tags:
            state["embed.weight"][row, row] = 100.0
        v_weight = state["encoder.encoders0.0.self_attn.linear_q_k_v.weight"][2 * dim:]
        v_bias = state["encoder.encoders0.0.self_attn.linear_q_k_v.bias"][2 * dim:]
        for row, tag in query_tags.items():
            v_weight[code[tag], row] = 1.0
        wave, flat = _sin_dim(math.pi / 10), INPUT_SIZE // 2 - 1  # slow dim ~ sin(0) = 0
        for sign, word in ((1.0, "▁hello"), (-1.0, "▁world")):
            v_bias[code[word]] = 5.0
            v_weight[code[word], wave] = 2.0 * sign
            v_weight[code[word], flat] = -2.0 * sign
        ctc = state["ctc.ctc_lo.weight"]
        for tok, i in code.items():
            ctc[pieces[tok], i] = 10.0
        for word in WORDS:  # FunASR re-encodes words without "▁" to align timestamps
            ctc[pieces[word], code[f"▁{word}"]] = 9.5
    model.load_state_dict(state)


def _sin_dim(frequency: float) -> int:
    """The SinusoidalPositionEncoder sin dim whose angular frequency is nearest ``frequency``."""
    half = INPUT_SIZE // 2
    step = math.log(10000) / (half - 1)
    return min(range(half), key=lambda k: abs(math.exp(-k * step) - frequency))


def _script_paraformer(model) -> None:
    """Fix the CIF firing rate and restrict the decoder's choice to "hello" and "world"."""
    import torch

    state = model.state_dict()
    with torch.no_grad():
        state["predictor.cif_output.weight"].zero_()
        state["predictor.cif_output.bias"].fill_(math.log(0.25 / 0.75))  # alpha = 0.25
        out_w, out_b = state["decoder.output_layer.weight"], state["decoder.output_layer.bias"]
        out_w.mul_(0.1)
        out_b.fill_(-10.0)
        for word in WORDS:
            out_b[PARAFORMER_TOKENS.index(word)] = 5.0
    model.load_state_dict(state)
